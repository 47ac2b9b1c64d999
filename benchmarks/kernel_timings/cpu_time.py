"""Single-core CPU time of the native kernels: for judging a kernel change on a noisy machine.

Run from the repo root, pinned to one core, once per build to compare (e.g. two
copies of the package, interleaved by the caller)::

    taskset -c 0 env PYTHONPATH=. LSTM_JAX_NATIVE_THREADS=1 \\
        python benchmarks/kernel_timings/cpu_time.py

Prints, per cell and ``(B, T, I, H)``, the median over ``REPS`` calls of the
process CPU time (``time.process_time``) of a jitted training step
(``grad`` of ``sum(ys)``) and of inference, after two warm-up calls, with the
ISA and the load average. ``CELLS=lstm,gru``, ``CONFIGS="8,512,32,64;..."``,
``REPS=15``, ``BACKEND=native`` (``CELLS`` may include ``rnn``),
``COMPUTE_DTYPE=bfloat16`` (default float32).
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
CELLS = os.environ.get("CELLS", "lstm,gru").split(",")
REPS = int(os.environ.get("REPS", "15"))
BACKEND = os.environ.get("BACKEND", "native")
COMPUTE_DTYPE = os.environ.get("COMPUTE_DTYPE") or None
NETWORKS = {"lstm": (lj.init_lstm, lj.lstm), "gru": (lj.init_gru, lj.gru), "rnn": (lj.init_rnn, lj.rnn)}


def cpu_ms(fn) -> float:
    """Median process CPU time of ``fn()`` in ms, after two warm-up calls."""
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
    times = []
    for _ in range(REPS):
        start = time.process_time()
        jax.block_until_ready(fn())
        times.append(1e3 * (time.process_time() - start))
    return statistics.median(times)


def main():
    print(f"isa {native_isa()}, compute dtype {COMPUTE_DTYPE or 'float32'}, load average "
          f"{os.getloadavg()}", flush=True)  # fmt: skip
    for cell in CELLS:
        init, run = NETWORKS[cell]
        for B, T, I, H in CONFIGS:
            params = init(jax.random.key(0), I, H)
            xs = jax.random.normal(jax.random.key(1), (B, T, I))

            def forward(p, x):
                return run(p, x, backend=BACKEND, compute_dtype=COMPUTE_DTYPE)[0]

            train = jax.jit(jax.grad(lambda p, x: jnp.sum(forward(p, x)), (0, 1)))
            infer = jax.jit(forward)
            t_train = cpu_ms(lambda: train(params, xs))
            t_infer = cpu_ms(lambda: infer(params, xs))
            print(f"{cell} ({B},{T},{I},{H}) train {t_train:8.2f} ms  infer {t_infer:8.2f} ms",
                  flush=True)  # fmt: skip
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
