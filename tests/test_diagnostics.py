"""Tests of lstm_jax.diagnostics against a hand-unrolled reference.

The reference for dL/dh_t "restarts" the computation: it unrolls the cells
step by step in Python, replaces the state of layer l at step t by a free
variable s, and differentiates the loss with respect to s at the true state.
This is independent of the probe mechanism used by ``state_gradients``
(which adds a zero to the state and runs through ``scan_layer``).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from lstm_jax import cells
from lstm_jax import diagnostics as dg
from lstm_jax.sequence import reverse_sequences

INITS = {"lstm": lj.init_lstm, "gru": lj.init_gru, "rnn": lj.init_rnn}
CELLS = {"lstm": cells.lstm_cell, "gru": cells.gru_cell, "rnn": cells.rnn_cell}


def _zero_state(kind, w):
    if kind == "lstm":
        return (jnp.zeros(w.w_hh.shape[0]), jnp.zeros(w.w_hh.shape[1] // 4))
    return jnp.zeros(w.w_hh.shape[0])


def _h(kind, s):
    return s[0] if kind == "lstm" else s


def unrolled(kind, params, x, length, select=None, replacement=None):
    """One example through a unidirectional stack, unrolled step by step in Python.

    Where ``select[l, t]`` is True the state of layer l after step t is
    *replaced* by ``replacement``. Steps at or past ``length`` keep the state
    and output zeros. Returns the top outputs (T, R), the final state of every
    layer and the history ``states[t][l]``.
    """
    states = [_zero_state(kind, layer[0]) for layer in params.layers]
    ys, history = [], []
    for t in range(x.shape[0]):
        valid = t < length
        inp = x[t]
        for l, layer in enumerate(params.layers):
            new = CELLS[kind](layer[0], states[l], inp)
            if select is not None:
                new = jax.tree_util.tree_map(
                    lambda r, n: jnp.where(select[l, t], r, n), replacement, new)
            states[l] = jax.tree_util.tree_map(lambda n, o: jnp.where(valid, n, o), new, states[l])
            inp = _h(kind, new)
        ys.append(jnp.where(valid, inp, jnp.zeros_like(inp)))
        history.append(list(states))
    return jnp.stack(ys), states, history


def _setup(kind, num_layers=2, bidirectional=False, peephole=False):
    extra = {"peephole": True} if peephole else {}
    params = INITS[kind](jax.random.key(0), 3, 4, num_layers=num_layers,
                         bidirectional=bidirectional, **extra)
    xs = jax.random.normal(jax.random.key(1), (3, 5, 3))
    lengths = jnp.array([5, 3, 1])
    width = 4 * (2 if bidirectional else 1)
    a = jax.random.normal(jax.random.key(2), (3, 5, width))
    v = jax.random.normal(jax.random.key(3), (3, 4))
    return params, xs, lengths, a, v


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_state_gradients_equal_the_unrolled_reference(kind):
    params, xs, lengths, a, v = _setup(kind)

    def loss_one(ys, final_h, b):
        return jnp.sum(jnp.sin(ys) * a[b]) + jnp.sum(final_h * v[b])

    def loss_fn(ys, state):  # the batch loss, in the networks' layout
        top = state.h[-1] if kind == "lstm" else state[-1]
        return sum(loss_one(ys[b], top[b], b) for b in range(3))

    loss, grads = jax.jit(lambda p: dg.state_gradients(loss_fn, p, xs, seq_lengths=lengths))(params)
    ys_net, state_net = (lj.lstm if kind == "lstm" else lj.gru if kind == "gru" else lj.rnn)(
        params, xs, seq_lengths=lengths)
    np.testing.assert_allclose(loss, loss_fn(ys_net, state_net), rtol=1e-5)
    assert grads.h.shape == (2, 3, 5, 4)
    assert (grads.c is not None) == (kind == "lstm")
    @jax.jit
    def reference(b, select, replacement):
        def restarted(r):
            ys, states, _ = unrolled(kind, params, xs[b], lengths[b], select, r)
            return loss_one(ys, _h(kind, states[-1]), b)

        return jax.grad(restarted)(replacement)

    history = jax.jit(lambda b: unrolled(kind, params, xs[b], lengths[b])[2])
    for b in range(3):
        n = int(lengths[b])
        states = history(b)
        for l in range(2):
            for t in range(5):
                if t >= n:  # past the sequence's end: no influence on the loss
                    np.testing.assert_array_equal(grads.h[l, b, t], 0.0)
                    continue
                select = jnp.zeros((2, 5), bool).at[l, t].set(True)
                ref = reference(b, select, states[t][l])
                if kind == "lstm":
                    np.testing.assert_allclose(grads.h[l, b, t], ref[0], rtol=2e-4, atol=2e-6)
                    np.testing.assert_allclose(grads.c[l, b, t], ref[1], rtol=2e-4, atol=2e-6)
                else:
                    np.testing.assert_allclose(grads.h[l, b, t], ref, rtol=2e-4, atol=2e-6)


def test_reverse_direction_gradients_are_in_input_order():
    """A loss on the reverse half of a bidirectional layer: its dL/dh_t equals a
    unidirectional run on each sequence's reversed valid part, read back reversed."""
    params, xs, lengths, a, _ = _setup("lstm", num_layers=1, bidirectional=True)
    loss_fn = lambda ys, state: jnp.sum(jnp.sin(ys[..., 4:]) * a[..., 4:])  # noqa: E731
    _, grads = jax.jit(lambda p: dg.state_gradients(loss_fn, p, xs, seq_lengths=lengths))(params)
    np.testing.assert_array_equal(grads.h[0], 0.0)  # the forward half does not reach the loss
    backward = lj.LSTMParams(((params.layers[0][1],),))
    rev = lambda z: jnp.swapaxes(reverse_sequences(jnp.swapaxes(z, 0, 1), lengths), 0, 1)  # noqa: E731
    a_rev = rev(a[..., 4:])
    _, ref = jax.jit(lambda p: dg.state_gradients(
        lambda ys, s: jnp.sum(jnp.sin(ys) * a_rev), p, rev(xs), seq_lengths=lengths))(backward)
    np.testing.assert_allclose(grads.h[1], rev(ref.h[0]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads.c[1], rev(ref.c[0]), rtol=1e-5, atol=1e-7)


def test_gradient_norms_average_over_valid_examples():
    h = jnp.zeros((1, 2, 3, 2)).at[0, 0, :, 0].set(3.0).at[0, 1, 0, 1].set(4.0)
    norms = dg.gradient_norms(dg.StateGradients(h, None), jnp.array([3, 1]))
    np.testing.assert_allclose(norms["h"], [[3.5, 3.0, 3.0]])
    assert set(norms) == {"h"}
    np.testing.assert_allclose(dg.gradient_norms(dg.StateGradients(h, h))["c"], [[3.5, 1.5, 1.5]])


@pytest.mark.parametrize("peephole", [False, True])
def test_lstm_gate_trace_reproduces_the_recurrence(peephole):
    params, xs, lengths, _, _ = _setup("lstm", num_layers=1, peephole=peephole)
    ys, trace = dg.trace_gates(params, xs, seq_lengths=lengths)
    ys_net, state = lj.lstm(params, xs, seq_lengths=lengths)
    np.testing.assert_allclose(ys, ys_net, rtol=1e-6, atol=1e-7)
    i, f, g, o = (np.asarray(trace.gates[k][0]) for k in "ifgo")
    for b in range(3):
        c = np.zeros(4)
        for t in range(int(lengths[b])):
            c = f[b, t] * c + i[b, t] * g[b, t]
            np.testing.assert_allclose(o[b, t] * np.tanh(c), ys_net[b, t], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c, state.c[0, b], rtol=1e-5, atol=1e-6)
        assert np.all(i[b, int(lengths[b]):] == 0.0)


def test_gru_and_rnn_traces():
    params, xs, lengths, _, _ = _setup("gru", num_layers=2)
    ys, trace = dg.trace_gates(params, xs, seq_lengths=lengths)
    np.testing.assert_allclose(ys, lj.gru(params, xs, seq_lengths=lengths)[0], rtol=1e-6, atol=1e-7)
    assert set(trace.gates) == {"r", "z", "n"} and trace.gates["z"].shape == (2, 3, 5, 4)
    z, n = np.asarray(trace.gates["z"][1]), np.asarray(trace.gates["n"][1])
    h = np.zeros(4)
    for t in range(5):  # example 0 has full length
        h = (1 - z[0, t]) * n[0, t] + z[0, t] * h
        np.testing.assert_allclose(h, ys[0, t], rtol=1e-5, atol=1e-6)
    params, xs, lengths, _, _ = _setup("rnn", num_layers=1)
    ys, trace = dg.trace_gates(params, xs, seq_lengths=lengths)
    np.testing.assert_allclose(trace.gates["h"][0], ys, rtol=1e-6)
    assert trace.ranges["h"] == (-0.9, 0.9)


def test_saturation_counts_valid_steps_only():
    gates = {"f": jnp.array([[[[0.05, 0.5], [0.95, 0.99]], [[0.5, 0.5], [0.0, 0.0]]]])}  # [1, 2, 2, 2]
    trace = dg.GateTrace(gates, {"f": (0.1, 0.9)}, jnp.array([2, 1]))
    stats = dg.saturation(trace)["f"]
    assert stats["low"] == pytest.approx(1 / 6) and stats["high"] == pytest.approx(2 / 6)
    assert stats["saturated"] == pytest.approx(0.5)
    assert stats["mean"] == pytest.approx((0.05 + 0.5 + 0.95 + 0.99 + 1.0) / 6)


def test_plots_write_png(tmp_path):
    params, xs, lengths, _, _ = _setup("lstm", num_layers=1)
    _, trace = dg.trace_gates(params, xs, seq_lengths=lengths)
    path = dg.plot_gates(trace, tmp_path / "gates.png")
    flow = dg.plot_gradient_flow({"a": np.array([1.0, 0.1, 0.0]), "b": [1, 2, 3]}, tmp_path / "g.png")
    for p in (path, flow):
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(p) > 1000


def test_rejects_unbatched_inputs_and_unknown_params():
    params = lj.init_rnn(jax.random.key(0), 3, 4)
    with pytest.raises(ValueError, match="batch-major"):
        dg.state_gradients(lambda ys, s: jnp.sum(ys), params, jnp.ones((5, 3)))
    with pytest.raises(TypeError, match="LSTMParams, GRUParams or RNNParams"):
        dg.trace_gates({"w": 1}, jnp.ones((1, 5, 3)))


def test_plots_keep_the_matplotlib_backend(tmp_path):
    # a notebook's backend must survive a plot call; run apart so this process keeps its own
    code = f"""
import matplotlib
matplotlib.use("svg")
import numpy as np
from lstm_jax import diagnostics as dg
dg.plot_gradient_flow({{"a": np.ones(3)}}, {str(tmp_path / "g.png")!r})
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
