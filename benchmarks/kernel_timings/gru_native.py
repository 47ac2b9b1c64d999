"""Native GRU vs scan, interleaved: training step jit(grad) and inference, medians of rounds.

Run from the repo root: ``PYTHONPATH=. python benchmarks/kernel_timings/gru_native.py`` (``REPS=9``,
``CONFIGS="8,512,32,64;..."``). Prints wall-clock and process CPU-time medians per
configuration and the load average before and after. ``native1`` is ``native`` with
``LSTM_JAX_NATIVE_THREADS=1`` (the C++ reads it per call), ``native`` uses XLA's pool.
"""

import os
import statistics
import time

import jax
import jax.numpy as jnp

import lstm_jax as lj
from lstm_jax.kernels.native_ops import native_isa

CONFIGS = [(8, 512, 32, 64), (64, 128, 128, 256), (32, 256, 64, 128), (128, 64, 256, 512)]
if os.environ.get("CONFIGS"):
    CONFIGS = [tuple(int(v) for v in c.split(",")) for c in os.environ["CONFIGS"].split(";")]
REPS = int(os.environ.get("REPS", "9"))
BACKENDS = os.environ.get("BACKENDS", "scan,native,native1").split(",")


def cases(name, params, xs):
    backend = name.rstrip("1")

    def forward(p, x):
        return lj.gru(p, x, backend=backend)[0]

    def threads(fn):
        def run():
            if name == "native1":
                os.environ["LSTM_JAX_NATIVE_THREADS"] = "1"
            try:
                return jax.block_until_ready(fn())
            finally:
                os.environ.pop("LSTM_JAX_NATIVE_THREADS", None)

        return run

    train = jax.jit(jax.grad(lambda p, x: jnp.sum(forward(p, x)), (0, 1)))
    infer = jax.jit(forward)
    return {
        "train": threads(lambda: train(params, xs)),
        "infer": threads(lambda: infer(params, xs)),
    }


def main():
    print(f"load average at start {os.getloadavg()}, isa {native_isa()}", flush=True)
    for B, T, I, H in CONFIGS:
        params = lj.init_gru(jax.random.key(0), I, H)
        xs = jax.random.normal(jax.random.key(1), (B, T, I))
        runs = {}
        for backend in BACKENDS:
            for mode, fn in cases(backend, params, xs).items():
                jax.block_until_ready(fn())
                jax.block_until_ready(fn())
                runs[backend, mode] = fn
        for mode in ("train", "infer"):  # same function: results agree with scan's
            want = jax.tree_util.tree_leaves(runs["scan", mode]())
            for backend in BACKENDS:
                for a, b in zip(jax.tree_util.tree_leaves(runs[backend, mode]()), want):
                    err = float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
                    assert err < 1e-4, (backend, mode, err)
        wall = {k: [] for k in runs}
        cpu = {k: [] for k in runs}
        for _ in range(REPS):
            for key, fn in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                jax.block_until_ready(fn())
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
        for mode in ("train", "infer"):
            med = {b: statistics.median(wall[b, mode]) * 1e3 for b in BACKENDS}
            cmed = {b: statistics.median(cpu[b, mode]) * 1e3 for b in BACKENDS}
            line = "  ".join(
                f"{b} {med[b]:.2f} ms (cpu {cmed[b]:.2f}, {med['scan'] / med[b]:.2f}x)"
                for b in BACKENDS
            )
            print(f"({B}, {T}, {I}, {H}) {mode}: {line}", flush=True)
    print(f"load average at end {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
