"""The GRU in bfloat16: native bf16 vs scan bf16 vs native float32, single-core CPU time.

Training = a jitted ``grad`` of ``mean((ys - target)^2)`` w.r.t. the params and
``xs`` (1 layer, float32 params); inference = the jitted forward. Before
timing, each implementation's outputs and input gradient are compared with
float32 ``scan`` (max abs error printed). Then two warm-up calls each and
``REPS`` rounds, every round calling each implementation once in turn
(interleaved); the median process CPU time (``time.process_time``) per
implementation is printed with the load average. Run pinned to one core::

    taskset -c 0 env PYTHONPATH=. LSTM_JAX_NATIVE_THREADS=1 \\
        python benchmarks/kernel_timings/gru_bf16.py

``CONFIGS="8,512,32,64;..."``, ``REPS=7``.
"""

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax as lj
from lstm_jax.kernels.native_ops import native_bf16_isa, native_isa

CONFIGS = [(8, 512, 32, 64), (64, 128, 128, 256), (32, 256, 64, 128), (128, 64, 256, 512)]
if os.environ.get("CONFIGS"):
    CONFIGS = [tuple(int(v) for v in c.split(",")) for c in os.environ["CONFIGS"].split(";")]
REPS = int(os.environ.get("REPS", "7"))
IMPLS = {
    "native bf16": dict(backend="native", compute_dtype=jnp.bfloat16),
    "scan bf16": dict(backend="scan", compute_dtype=jnp.bfloat16),
    "native f32": dict(backend="native"),
}


def _functions(params, xs, target, kw):
    """The jitted training step and inference of one implementation."""

    def loss(p, x):
        return jnp.mean((lj.gru(p, x, **kw)[0] - target) ** 2)

    return jax.jit(jax.grad(loss, (0, 1))), jax.jit(lambda p, x: lj.gru(p, x, **kw)[0])


def _check(params, xs, target, functions):
    """Max abs error of ys and of the input gradient against float32 scan."""
    train, infer = _functions(params, xs, target, dict(backend="scan"))
    ys, dx = np.asarray(infer(params, xs)), np.asarray(train(params, xs)[1])
    for name, (train, infer) in functions.items():
        print(f"  check {name}: |ys - scan f32| {np.max(np.abs(np.asarray(infer(params, xs)) - ys)):.2e}, "
              f"|dx - scan f32| {np.max(np.abs(np.asarray(train(params, xs)[1]) - dx)):.2e}")  # fmt: skip


def _cpu_ms(fn) -> float:
    start = time.process_time()
    jax.block_until_ready(fn())
    return 1e3 * (time.process_time() - start)


def main():
    print(f"jax {jax.__version__}, isa {native_isa()}, bf16 {native_bf16_isa()}, reps {REPS}, "
          f"load average {os.getloadavg()}", flush=True)  # fmt: skip
    for B, T, I, H in CONFIGS:
        keys = jax.random.split(jax.random.key(0), 3)
        params = lj.init_gru(keys[0], I, H)
        xs = jax.random.normal(keys[1], (B, T, I))
        target = jax.random.normal(keys[2], (B, T, H))
        functions = {name: _functions(params, xs, target, kw) for name, kw in IMPLS.items()}
        print(f"(B, T, I, H) = {(B, T, I, H)}", flush=True)
        _check(params, xs, target, functions)
        calls = {}
        for name, (train, infer) in functions.items():
            calls[f"{name} train"] = lambda f=train: f(params, xs)
            calls[f"{name} infer"] = lambda f=infer: f(params, xs)
        for call in calls.values():
            _cpu_ms(call), _cpu_ms(call)
        times = {name: [] for name in calls}
        for _ in range(REPS):
            for name, call in calls.items():
                times[name].append(_cpu_ms(call))
        for name, t in times.items():
            print(f"  {name:18s} {statistics.median(t):9.2f} ms  (min {min(t):.2f}, max {max(t):.2f})",
                  flush=True)  # fmt: skip
        print(f"  load average {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
