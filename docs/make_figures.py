"""Make the tutorial's figures (docs/img/*.png) from this library, on data available offline.

    python docs/make_figures.py            # about a minute on 2 CPU cores

* ``gradient_flow.png``: ``||dL/dh_t||`` over t for a tanh RNN and an LSTM at
  initialisation, for a loss at the last step of the adding problem (T=100),
  with ``diagnostics.state_gradients``; plus a tanh RNN whose recurrent
  weights are scaled up (exploding) and the LSTM's ``||dL/dc_t||``.
* ``clipping.png``: the global gradient norm of that exploding RNN over the
  first training steps, and the norm after ``optax.clip_by_global_norm(1.0)``.
* ``sunspot_gates.png``: a small LSTM trained to forecast the yearly sunspot
  numbers (statsmodels, 1700-2008); its input, forget and output gates and
  its cell state over the whole series (``diagnostics.trace_gates``).

Every number printed and plotted is computed here; the figures use
matplotlib's object API (no pyplot state), so importing this does not change a
notebook's backend.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import lstm_jax as lj  # noqa: E402
from lstm_jax import data, diagnostics as dg, training as tr  # noqa: E402

IMG = os.path.join(ROOT, "docs", "img")
T = 100


def adding_batch(batch=128, length=T, seed=0):
    b = data.adding_problem(np.random.default_rng(seed), batch, length, variable=False)
    return jnp.asarray(b["x"]), jnp.asarray(b["y"])


def last_step_loss(head, y):
    def loss(ys, final_state):
        del final_state
        return jnp.mean(jnp.square(tr.dense(head, ys[:, -1])[:, 0] - y))

    return loss


def exploding_rnn(key, hidden, scale=1.5):
    """A tanh RNN whose w_hh is ``scale`` times an orthogonal matrix."""
    p = lj.init_rnn(key, 2, hidden)
    w = p.layers[0][0]
    q = jax.random.orthogonal(jax.random.fold_in(key, 1), hidden)
    return p._replace(layers=((w._replace(w_hh=scale * q),),))


def gradient_curves(hidden=64):
    xs, y = adding_batch()
    head = tr.init_dense(jax.random.key(9), hidden, 1)
    loss = last_step_loss(head, y)
    nets = {
        "tanh RNN (PyTorch init)": lj.init_rnn(jax.random.key(0), 2, hidden),
        "tanh RNN, w_hh = 1.5 x orthogonal": exploding_rnn(jax.random.key(0), hidden),
        "LSTM (PyTorch init, forget bias +1)": lj.init_lstm(jax.random.key(0), 2, hidden),
        "LSTM, forget bias +5": lj.init_lstm(jax.random.key(0), 2, hidden, forget_bias=5.0),
    }
    curves = {}
    for name, params in nets.items():
        _, grads = dg.state_gradients(loss, params, xs)
        norms = dg.gradient_norms(grads)
        curves[f"{name}: ||dL/dh_t||"] = norms["h"][0]
        if "c" in norms:
            curves[f"{name}: ||dL/dc_t||"] = norms["c"][0]
    return curves


def plot_gradient_flow(curves, path):
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for label, values in curves.items():
        shown = np.where(values > 0, values, np.nan)  # 0 = underflow (float32): left out
        ax.semilogy(np.arange(len(values)), shown, label=label,
                    ls="--" if "dc" in label else "-")  # fmt: skip
    ax.set_xlabel("time step t (the loss reads the output at t = 99)")
    ax.set_ylabel("gradient norm, mean of 128 sequences")
    ax.set_title(f"Gradient of a last-step loss w.r.t. the state at step t (adding problem, T={T})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    for label, values in curves.items():  # dL/dc at the last step is 0: h_t is read before it
        print(f"  {label}: t=0 {values[0]:.3g}, t=50 {values[50]:.3g}, t=98 {values[-2]:.3g}, "
              f"t=99 {values[-1]:.3g}")  # fmt: skip


def clipping_curve(hidden=64, steps=60):
    """Global gradient norm of the exploding RNN per step, raw and after clipping."""
    key = jax.random.key(0)
    params = {"rnn": exploding_rnn(key, hidden),
              "head": tr.init_dense(jax.random.key(9), hidden, 1)}

    def loss_fn(params, batch):
        ys, _ = lj.rnn(params["rnn"], batch[0])
        return jnp.mean(jnp.square(tr.dense(params["head"], ys[:, -1])[:, 0] - batch[1]))

    clip = optax.clip_by_global_norm(1.0)
    opt = optax.chain(clip, optax.sgd(0.05))
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch):
        grads = jax.grad(loss_fn)(params, batch)
        clipped, _ = clip.update(grads, clip.init(params))
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, optax.global_norm(grads), \
            optax.global_norm(clipped)  # fmt: skip

    raw, after = [], []
    for k in range(steps):
        params, state, g, c = step(params, state, adding_batch(32, seed=k + 1))
        raw.append(float(g))
        after.append(float(c))
    return np.array(raw), np.array(after)


def plot_clipping(raw, after, path):
    fig = Figure(figsize=(7, 3.8))
    ax = fig.add_subplot()
    ax.semilogy(raw, label="global norm of the gradient")
    ax.semilogy(after, label="after optax.clip_by_global_norm(1.0)")
    ax.set_xlabel("training step (SGD, lr 0.05, batch 32)")
    ax.set_ylabel("global gradient norm (log)")
    ax.set_title("Exploding gradients of a tanh RNN (w_hh = 1.5 x orthogonal), T=100")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"  gradient norm: median {np.median(raw):.3g}, max {raw.max():.3g}; "
          f"after clipping max {after.max():.3g}")


def sunspot_model(hidden=16, steps=1500, window=40):
    """A small LSTM trained on 1700-1949 for one-year-ahead forecasts (sqrt scale)."""
    years, values = data.load_sunspots()
    series = np.sqrt(values)
    first_test = int(np.searchsorted(years, 1950))
    mean, std = series[:first_test].mean(), series[:first_test].std()
    z = ((series - mean) / std).astype(np.float32)
    xs, ys = data.make_windows(z[:first_test], window)
    key = jax.random.key(0)
    params = {"rnn": lj.init_lstm(key, 1, hidden),
              "head": tr.init_dense(jax.random.key(1), hidden, 1)}

    def loss_fn(params, batch, key):
        del key
        out, _ = lj.lstm(params["rnn"], batch["x"])
        return tr.regression_loss(tr.dense(params["head"], out), batch["y"]), {}

    opt = tr.make_optimizer(3e-3, clip_norm=1.0)
    state = tr.init_train_state(params, opt, jax.random.key(2))
    get_batch = data.make_batch_fn({"x": xs, "y": ys}, 32, seed=0)
    state, history = tr.fit(state, tr.make_train_step(loss_fn, opt), get_batch, num_steps=steps,
                            progress=False)  # fmt: skip
    print(f"  sunspot LSTM: final training loss {history[-1]['loss']:.3f} "
          "(standardised sqrt scale)")
    return state.params, years, values, z


def plot_sunspot_gates(params, years, values, z, path, units=(0, 1, 2, 3)):
    xs = jnp.asarray(z)[None, :, None]  # the whole series as one sequence: (1, 309, 1)
    _, trace = dg.trace_gates(params["rnn"], xs)
    gates = {name: np.asarray(a[0, 0]) for name, a in trace.gates.items()}  # [T, H] each
    c = np.zeros_like(gates["f"])  # c_t = f_t * c_{t-1} + i_t * g_t, from the recorded gates
    for t in range(len(c)):
        c[t] = gates["f"][t] * (c[t - 1] if t else 0.0) + gates["i"][t] * gates["g"][t]
    panels = [("sunspot number", None), ("input gate i_t", "i"), ("forget gate f_t", "f"),
              ("output gate o_t", "o"), ("cell state c_t", "c")]  # fmt: skip
    fig = Figure(figsize=(10, 9))
    axes = fig.subplots(len(panels), 1, sharex=True)
    axes[0].plot(years, values, color="k", lw=1)
    for ax, (label, name) in zip(axes[1:], panels[1:]):
        trace_values = c if name == "c" else gates[name]
        for u in units:
            ax.plot(years, trace_values[:, u], lw=1, label=f"unit {u}")
        if name != "c":
            ax.set_ylim(0, 1)
    for ax, (label, _) in zip(axes, panels):
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7, ncol=len(units), loc="upper right")
    axes[-1].set_xlabel("year (the LSTM reads one year per step, 1700-2008)")
    fig.suptitle("Gates and cell state of a 16-unit LSTM trained to forecast sunspots")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    stats = dg.saturation(trace)
    print("  saturation: "
          + ", ".join(f"{k} {100 * v['saturated']:.0f}%" for k, v in stats.items()))


def main():
    os.makedirs(IMG, exist_ok=True)
    print(f"jax {jax.__version__} on {jax.devices()[0]}")
    print("gradient_flow.png")
    plot_gradient_flow(gradient_curves(), os.path.join(IMG, "gradient_flow.png"))
    print("clipping.png")
    plot_clipping(*clipping_curve(), os.path.join(IMG, "clipping.png"))
    print("sunspot_gates.png")
    plot_sunspot_gates(*sunspot_model(), os.path.join(IMG, "sunspot_gates.png"))
    print(f"figures written to {IMG}")


if __name__ == "__main__":
    main()
