"""How much of a native training step the weight-gradient GEMMs after the backward loop cost.

    taskset -c 0 env PYTHONPATH=. LSTM_JAX_NATIVE_THREADS=1 \\
        python benchmarks/kernel_timings/wgrad_share.py

Per cell and ``(B, T, I, H)``: the single-core CPU time (median of ``REPS``
``time.process_time`` samples after two warm-up calls) of the jitted training
step (``grad`` of ``sum(ys)`` w.r.t. params and xs, ``backend="native"``), and
of the after-loop operations alone on arrays of the same shapes, as
``native.py`` / ``native_gru.py`` write them: ``dw_hh`` (with ``h_prev``
assembled from ``h0`` and ``ys``) and ``db``, ``dw_ih``, and ``dx``; beside each,
its share of the step's time and of the step's FLOPs (forward GEMM
``2BT(I+H)G``, backward loop ``2BTHG``, ``dw_hh`` ``2BTHG``, ``dw_ih`` and ``dx``
``2BTIG`` each; ``G = 4H`` LSTM, ``3H`` GRU). ``CELLS``, ``CONFIGS``, ``REPS`` as
``cpu_time.py``.
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
NETWORKS = {"lstm": (lj.init_lstm, lj.lstm, 4), "gru": (lj.init_gru, lj.gru, 3)}


def cpu_ms(fn, *args) -> float:
    """Median process CPU time of ``fn(*args)`` in ms, after two warm-up calls."""
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(REPS):
        start = time.process_time()
        jax.block_until_ready(fn(*args))
        times.append(1e3 * (time.process_time() - start))
    return statistics.median(times)


def recurrent_columns(rows, hidden, gates):
    """The dz columns that multiply w_hh: all of the LSTM's, the GRU's [dr, dz, dhn]."""
    if gates == 4:
        return rows
    return jnp.concatenate([rows[:, : 2 * hidden], rows[:, 3 * hidden :]], axis=1)


def after_loop(gates):
    """The jitted after-loop operations of native.py / native_gru.py, by name."""

    def dw_hh(dz, ys, h0):  # dz (T, B, 4H) time-major, ys (B, T, H) batch-major (the LSTM's)
        steps, batch, acts = dz.shape
        hidden = acts // 4
        rows = dz.reshape(steps * batch, acts)
        h_prev = jnp.concatenate([h0[None], jnp.swapaxes(ys, 0, 1)[:-1]])
        d_rec = recurrent_columns(rows, hidden, gates)
        return h_prev.reshape(steps * batch, hidden).T @ d_rec, jnp.sum(rows, axis=0)

    def dw_ih(dz, xs):
        steps, batch, acts = dz.shape
        rows = dz.reshape(steps * batch, acts)[:, : gates * (acts // 4)]
        return jnp.swapaxes(xs, 0, 1).reshape(steps * batch, -1).T @ rows

    def dx(dz, w_ih):
        steps, batch, acts = dz.shape
        rows = dz.reshape(steps * batch, acts)[:, : gates * (acts // 4)]
        return jnp.swapaxes((rows @ w_ih.T).reshape(steps, batch, -1), 0, 1)

    return {"dw_hh+db": jax.jit(dw_hh), "dw_ih": jax.jit(dw_ih), "dx": jax.jit(dx)}


def main():
    print(f"isa {native_isa()}, load average {os.getloadavg()}", flush=True)
    for cell in CELLS:
        init, run, gates = NETWORKS[cell]
        ops = after_loop(gates)
        for B, T, I, H in CONFIGS:
            G = gates * H
            keys = jax.random.split(jax.random.key(1), 5)
            params = init(jax.random.key(0), I, H)
            xs = jax.random.normal(keys[0], (B, T, I))
            loss = lambda p, x: jnp.sum(run(p, x, backend="native")[0])  # noqa: E731
            step = cpu_ms(jax.jit(jax.grad(loss, (0, 1))), params, xs)
            dz = jax.random.normal(keys[1], (T, B, 4 * H))
            ys = jax.random.normal(keys[2], (B, T, H))
            h0 = jax.random.normal(keys[3], (B, H))
            w_ih = jax.random.normal(keys[4], (I, G))
            times = {"dw_hh+db": cpu_ms(ops["dw_hh+db"], dz, ys, h0), "dw_ih": cpu_ms(ops["dw_ih"], dz, xs),
                     "dx": cpu_ms(ops["dx"], dz, w_ih)}  # fmt: skip
            macs = {"dw_hh+db": H, "dw_ih": I, "dx": I}
            total_macs = (I + H) + H + H + I + I
            parts = "  ".join(f"{name} {ms:7.2f} ms ({100 * ms / step:4.1f}% time, "
                              f"{100 * macs[name] / total_macs:4.1f}% flops)"
                              for name, ms in times.items())  # fmt: skip
            print(f"{cell} ({B},{T},{I},{H}) step {step:8.2f} ms  {parts}", flush=True)
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
