"""The input weights' gradient ``dw_ih`` in the native backward's loop vs XLA's GEMM after it.

Two jitted training steps of the same build (``grad`` over the parameters of
``mean((ys - target)**2)``, then Adam, as ``python -m benchmarks``), one with
``native_ops.IN_LOOP_INPUT_WEIGHTS`` on, one off; ``dw_hh`` and ``db`` stay in the loop in
both (``IN_LOOP_MAX_HIDDEN``). Interleaved rounds, the order flipped each round; a round's
sample is the mean over back-to-back calls lasting 0.3 s. Both threads (the question is
whether the loop's threads beat XLA's GEMM running after it), so run it quiet::

    PYTHONPATH=. LSTM_JAX_NATIVE_ISA=avx2 python benchmarks/kernel_timings/dw_ih_ab.py lstm 8,512,32,64 32,256,64,128

Prints per configuration the gradients' largest difference, the median wall and CPU
time of each step and the median over rounds of ``loop/xla`` wall time (< 1: the loop
is faster).
"""

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

import lstm_jax as lj
from lstm_jax.kernels import native_ops

ROUNDS = int(os.environ.get("ROUNDS", 15))
NETWORKS = {"lstm": (lj.init_lstm, lj.lstm), "gru": (lj.init_gru, lj.gru)}


def training_step(run, target, opt):
    def step(params, state, xs):
        loss = lambda p: jnp.mean((run(p, xs, backend="native")[0] - target) ** 2)  # noqa: E731
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, grads

    return step


def main():
    cell, shapes = sys.argv[1], sys.argv[2:]
    init, run = NETWORKS[cell]
    print(f"isa {native_ops.native_isa()}, load {os.getloadavg()}", flush=True)
    for shape in shapes:
        batch, steps, inputs, hidden = (int(v) for v in shape.split(","))
        params = init(jax.random.key(0), inputs, hidden)
        xs = jax.random.normal(jax.random.key(1), (batch, steps, inputs))
        target = jax.random.normal(jax.random.key(2), (batch, steps, hidden))
        opt = optax.adam(1e-3)
        state = opt.init(params)
        assert native_ops.weight_gradients_in_loop(cell, steps, batch, hidden), shape
        steps_by_name = {}
        for name, in_loop in (("xla", False), ("loop", True)):
            native_ops.IN_LOOP_INPUT_WEIGHTS = in_loop  # read when the step is traced
            step = jax.jit(training_step(run, target, opt))
            steps_by_name[name] = step.lower(params, state, xs).compile()
        native_ops.IN_LOOP_INPUT_WEIGHTS = True
        grads = {k: f(params, state, xs)[2] for k, f in steps_by_name.items()}
        leaves = zip(jax.tree.leaves(grads["xla"]), jax.tree.leaves(grads["loop"]))
        err = max(float(jnp.max(jnp.abs(a - b))) for a, b in leaves)
        samples = {k: [] for k in steps_by_name}
        for r in range(ROUNDS):
            order = list(steps_by_name.items())
            for name, f in order if r % 2 else order[::-1]:
                cpu0, wall0, calls = time.process_time(), time.perf_counter(), 0
                while time.perf_counter() - wall0 < 0.3:
                    jax.block_until_ready(f(params, state, xs))
                    calls += 1
                wall = (time.perf_counter() - wall0) / calls
                samples[name].append((wall * 1e3, (time.process_time() - cpu0) / calls * 1e3))
        med = {k: [statistics.median(s[i] for s in v) for i in (0, 1)] for k, v in samples.items()}
        ratio = statistics.median(a[0] / b[0] for a, b in zip(samples["loop"], samples["xla"]))
        print(f"{cell} {shape:16s} max|dgrad| {err:.1e}  xla {med['xla'][0]:7.2f} ms wall "
              f"({med['xla'][1]:7.2f} CPU)  loop {med['loop'][0]:7.2f} ms wall ({med['loop'][1]:7.2f} CPU)"
              f"  loop/xla wall {ratio:.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
