"""The native backward's weight gradients in its loop vs XLA's GEMMs after it, in one process.

Two jitted training steps (``grad`` of ``sum(ys)``) of the same build, one with
``native_ops.IN_LOOP_MAX_HIDDEN`` set to accumulate ``dw_hh``/``db`` in the loop, one
without; interleaved rounds, the median over ``ROUNDS`` of the median of ``REPS`` calls,
process CPU time (``WALL=1``: wall time). Run pinned to one core::

    taskset -c 0 env PYTHONPATH=. LSTM_JAX_NATIVE_THREADS=1 LSTM_JAX_NATIVE_ISA=avx2 \
        python benchmarks/kernel_timings/wgrad_ab.py

``CONFIGS="8,512,32,64;..."``, ``CELLS=lstm,gru``; ``EMULATE=avx2``: XLA's GEMMs and the
kernels narrowed to AVX2 too (``benchmarks.isa_emulation``, as ``--isa avx2``). Prints ``loop/xla`` (< 1: the loop is
faster) and the largest difference between the two steps' gradients.
"""
import os, time, statistics
if os.environ.get("EMULATE"):
    from benchmarks import isa_emulation
    isa_emulation.emulate(os.environ["EMULATE"])
import jax, jax.numpy as jnp
import lstm_jax as lj
from lstm_jax.kernels import native_ops as no
CONFIGS = [tuple(int(v) for v in c.split(",")) for c in os.environ.get("CONFIGS", "8,512,32,64;32,256,64,128;64,128,128,256;128,64,256,512").split(";")]
CELLS = os.environ.get("CELLS", "lstm,gru").split(",")
ROUNDS, REPS = int(os.environ.get("ROUNDS", 5)), int(os.environ.get("REPS", 3))
clock = time.perf_counter if os.environ.get("WALL") else time.process_time
isa = no.native_isa()
print("isa", isa, "load", os.getloadavg(), "clock", clock.__name__, flush=True)
for cell in CELLS:
    init, run = (lj.init_lstm, lj.lstm) if cell == "lstm" else (lj.init_gru, lj.gru)
    for B, T, I, H in CONFIGS:
        params = init(jax.random.key(0), I, H); xs = jax.random.normal(jax.random.key(1), (B, T, I))
        fns = {}
        for name, limit in (("xla", -1), ("loop", 4096)):
            no.IN_LOOP_MAX_HIDDEN[(isa, cell)] = limit
            f = jax.jit(jax.grad(lambda p, x: jnp.sum(run(p, x, backend="native")[0]), (0, 1)))
            jax.block_until_ready(f(params, xs)); fns[name] = f
        ga, gb = fns["xla"](params, xs), fns["loop"](params, xs)
        err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)))
        meds = {k: [] for k in fns}
        for r in range(ROUNDS):
            for k, f in fns.items():
                ts = []
                for _ in range(REPS):
                    t0 = clock(); jax.block_until_ready(f(params, xs)); ts.append(clock() - t0)
                meds[k].append(statistics.median(ts) * 1e3)
        a, b = statistics.median(meds["xla"]), statistics.median(meds["loop"])
        print(f"{cell} {(B,T,I,H)} xla {a:8.2f} loop {b:8.2f} loop/xla {b/a:.3f}  maxdiff {err:.1e}  load {os.getloadavg()[0]:.2f}", flush=True)
