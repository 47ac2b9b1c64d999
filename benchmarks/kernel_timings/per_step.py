"""What per-step ``mask`` and ``resets`` cost next to the plain call (issue 21's 1.2x target).

Run from the repo root: ``PYTHONPATH=. python benchmarks/kernel_timings/per_step.py``
(``REPS=9``, ``CONFIGS="256,128,32,128;64,64,64,256"``, ``CELLS=lstm,gru``); on a shared
machine pinned to one core, where the CPU time is the figure to judge:
``taskset -c 0 env LSTM_JAX_NATIVE_THREADS=1 PYTHONPATH=. python ...`` (and
``LSTM_JAX_NATIVE_ISA=avx2`` for the AVX2 kernels). Per cell and
``(B, T, I, H)``: a jitted training step (``grad`` of a loss over ``ys`` w.r.t. params and
xs) with the default backend, plain, with a mask dropping 5% of the steps, and with resets at
2% of them; the same weights and inputs; rounds interleaved in a shuffled order after a
warm-up. Prints medians of wall time and of process CPU time, each as a ratio to the plain
step, the backend's custom calls in the HLO (so a fall-back to ``scan`` shows), the native
kernels' instruction set and the load average before and after.
"""

import os
import random
import statistics
import time

import jax
import jax.numpy as jnp

import lstm_jax as lj
from lstm_jax.kernels.native_ops import native_isa

CONFIGS = [(256, 128, 32, 128), (64, 64, 64, 256)]
if os.environ.get("CONFIGS"):
    CONFIGS = [tuple(int(v) for v in c.split(",")) for c in os.environ["CONFIGS"].split(";")]
CELLS = os.environ.get("CELLS", "lstm,gru").split(",")
REPS = int(os.environ.get("REPS", "9"))


def steps(cell, B, T, I, H):
    init, run = (lj.init_lstm, lj.lstm) if cell == "lstm" else (lj.init_gru, lj.gru)
    keys = jax.random.split(jax.random.key(0), 4)
    params = init(keys[0], I, H)
    xs = jax.random.normal(keys[1], (B, T, I))
    options = {
        "plain": {},
        "mask 5%": {"mask": jax.random.uniform(keys[2], (B, T)) >= 0.05},
        "resets 2%": {"resets": jax.random.uniform(keys[3], (B, T)) < 0.02},
    }
    fns = {}
    for name, kw in options.items():
        def loss(p, x, kw=kw):
            return jnp.sum(jnp.tanh(run(p, x, **kw)[0]))

        fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
        calls = fn.lower(params, xs).as_text().count("lstm_jax_native")
        fns[name] = (lambda fn=fn: jax.block_until_ready(fn(params, xs)), calls)
    return fns


def main():
    threads = os.environ.get("LSTM_JAX_NATIVE_THREADS", "default")
    print(f"isa {native_isa()}, native threads {threads}, load average at start "
          f"{os.getloadavg()}", flush=True)  # fmt: skip
    for cell in CELLS:
        for config in CONFIGS:
            fns = steps(cell, *config)
            for fn, _ in fns.values():
                fn()
                fn()
            wall = {k: [] for k in fns}
            cpu = {k: [] for k in fns}
            order = list(fns)
            for _ in range(REPS):
                random.shuffle(order)
                for name in order:
                    w0, c0 = time.perf_counter(), time.process_time()
                    fns[name][0]()
                    wall[name].append(time.perf_counter() - w0)
                    cpu[name].append(time.process_time() - c0)
            base_w, base_c = statistics.median(wall["plain"]), statistics.median(cpu["plain"])
            for name in fns:
                w, c = statistics.median(wall[name]), statistics.median(cpu[name])
                print(f"{cell} {config} {name:10s} wall {1e3 * w:8.1f} ms ({w / base_w:.2f}x) "
                      f"cpu {1e3 * c:8.1f} ms ({c / base_c:.2f}x) native calls {fns[name][1]}",
                      flush=True)  # fmt: skip
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
