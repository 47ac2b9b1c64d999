"""Does ``--isa avx2`` narrow XLA and PyTorch? Throughputs with and without it.

Each measurement runs in a fresh process (the emulation is per process and must
come first), the two modes interleaved over ``ROUNDS`` rounds; prints the median
GFLOP/s of each:

* ``xla_gemm``: a jitted 2048³ float32 GEMM (YNNPACK).
* ``xla_dw``: a jitted ``a.T @ b``, (8192, 256) and (8192, 1024): the weight
  gradient's layout, a plain XLA dot.
* ``torch_gemm``: ``torch.mm`` 2048³ (MKL).
* ``torch_lstm``: ``nn.LSTM(256, 512)`` inference on (T, B) = (128, 64) (oneDNN).

    ROUNDS=3 python benchmarks/kernel_timings/isa_emulation_check.py
"""

import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r"""
import json, os, sys, time
if sys.argv[1] == "avx2":
    from benchmarks import isa_emulation
    isa_emulation.emulate("avx2")
import jax, jax.numpy as jnp, torch
torch.set_num_threads(len(os.sched_getaffinity(0)))

def best_median(fn, reps=9):
    fn(); times = []
    for _ in range(reps):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return sorted(times)[reps // 2]

out = {}
a = jnp.ones((2048, 2048))
gemm = jax.jit(lambda x: x @ x)
out["xla_gemm"] = 2 * 2048**3 / best_median(lambda: gemm(a).block_until_ready()) / 1e9
x, dz = jnp.ones((8192, 256)), jnp.ones((8192, 1024))
dw = jax.jit(lambda x, dz: x.T @ dz)
out["xla_dw"] = 2 * 8192 * 256 * 1024 / best_median(lambda: dw(x, dz).block_until_ready()) / 1e9
t = torch.ones(2048, 2048)
out["torch_gemm"] = 2 * 2048**3 / best_median(lambda: torch.mm(t, t)) / 1e9
lstm, xs = torch.nn.LSTM(256, 512), torch.randn(128, 64, 256)
with torch.no_grad():
    out["torch_lstm"] = 8 * 128 * 64 * 512 * (256 + 512) / best_median(lambda: lstm(xs), 5) / 1e9
print(json.dumps(out))
"""


def main() -> None:
    rounds = int(os.environ.get("ROUNDS", "3"))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LSTM_JAX_NATIVE_ISA", None)
    seen = {"default": [], "avx2": []}
    print(f"load average {os.getloadavg()}", flush=True)
    for _ in range(rounds):
        for mode in seen:
            child = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True,
                                   text=True, env=env, cwd=ROOT, check=True)  # fmt: skip
            seen[mode].append(json.loads(child.stdout.splitlines()[-1]))
    print(f"load average {os.getloadavg()}; GFLOP/s, median of {rounds} processes per mode")
    print("| measurement | default | --isa avx2 | ratio |\n|---|---:|---:|---:|")
    for key in seen["default"][0]:
        default = statistics.median(r[key] for r in seen["default"])
        narrowed = statistics.median(r[key] for r in seen["avx2"])
        print(f"| {key} | {default:.0f} | {narrowed:.0f} | {narrowed / default:.2f} |")


if __name__ == "__main__":
    main()
