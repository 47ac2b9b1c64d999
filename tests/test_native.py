"""The native CPU kernels (``backend="native"``) of every cell against ``scan`` and PyTorch.

Each test runs for every cell it applies to (``tests/native_cases.py``: the
LSTM, the GRU and the Elman RNN with each nonlinearity where they differ).
Tests marked ``isa`` rerun under the AVX2 and portable kernels
(``tests/test_native_isas.py``).
"""

from __future__ import annotations

import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from lstm_jax.kernels import native_ops
from lstm_jax.kernels.native_ops import native_unavailable
from lstm_jax.scan import scan_layer
from tests.backends import NETWORKS
from tests.native_cases import (
    CELLS,
    EVERY_CELL,
    LENGTHS,
    ONE_PER_KIND,
    B,
    H,
    I,
    T,
    assert_nan_where_scan_has_nan,
    assert_trees_close,
    inputs,
    nan_inputs,
    native_and_scan,
    value_and_grads_fn,
)  # fmt: skip

pytestmark = pytest.mark.skipif(
    native_unavailable() is not None, reason=f"native kernels unavailable: {native_unavailable()}"
)
isa = pytest.mark.isa

# (reverse, ragged, masked, threads split hidden "units" or batch "rows", hidden size)
LAYER_CASES = [
    (False, False, False, None, H),
    (True, True, True, None, H),
    (False, True, True, None, H),
    (True, False, False, None, H),
    (False, True, True, "units", H),
    (True, False, False, "units", H),
    pytest.param(True, True, True, "units", H, marks=isa),
    pytest.param(True, True, True, "units", 3, marks=isa),  # a partial panel only
    pytest.param(True, True, True, "rows", H, marks=isa),
    # more than 16 panels, the last one partial (8 units)
    pytest.param(True, True, True, None, 264, marks=isa),
    (False, False, False, "rows", 264),
]


def split_threads(monkeypatch, split):
    """Split even these tiny steps across threads, by hidden units or by batch rows."""
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
    monkeypatch.setenv("LSTM_JAX_NATIVE_MIN_ROWS", "1" if split == "rows" else "100")


@pytest.mark.parametrize("cell", EVERY_CELL, ids=str)
@pytest.mark.parametrize("reverse, ragged, masked, split, hidden", LAYER_CASES)
def test_layer_matches_scan(monkeypatch, cell, reverse, ragged, masked, split, hidden):
    if split is not None:
        split_threads(monkeypatch, split)
    options = dict(ragged=ragged, reverse=reverse, masked=masked)
    got, want = native_and_scan(
        cell, inputs(cell, 0 if hidden == H else 2, hidden=hidden), **options
    )
    assert_trees_close(got, want)
    if not masked:  # the mask's gradient is only defined with a mask
        assert float(jnp.max(jnp.abs(got[1][3]))) == 0.0


@pytest.mark.parametrize("cell", ONE_PER_KIND, ids=str)
@pytest.mark.parametrize("min_rows", ["100", "1"])  # 5 partitions of units, or of rows
def test_time_major_and_more_threads_than_panels(monkeypatch, cell, min_rows):
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
    monkeypatch.setenv("LSTM_JAX_NATIVE_MIN_ROWS", min_rows)
    monkeypatch.setenv("LSTM_JAX_NATIVE_THREADS", "5")
    w, xs, carry, mask = inputs(cell, 1)
    args = (w, jnp.swapaxes(xs, 0, 1), carry, mask)
    options = dict(ragged=True, reverse=True, masked=True, time_major=True)
    assert_trees_close(*native_and_scan(cell, args, **options))


@isa
@pytest.mark.parametrize("cell", EVERY_CELL, ids=str)
def test_nan_at_a_valid_step_propagates(cell):
    got = cell.native_layer(cell.cell, *nan_inputs(cell), seq_lengths=LENGTHS)
    assert_nan_where_scan_has_nan(cell, got)


@pytest.mark.parametrize("cell", EVERY_CELL, ids=str)
def test_nan_in_padding_changes_nothing(cell):
    w, xs, carry, mask = inputs(cell, 8)
    padded = jnp.arange(T)[None, :, None] >= LENGTHS[:, None, None]
    fn = value_and_grads_fn(cell, cell.native_layer, ragged=True, reverse=True, masked=True)
    (_, aux_clean), (gw, gx, gc, gm) = fn(w, jnp.where(padded, 0.0, xs), carry, mask)
    (_, aux_dirty), (dw, dx, dc, dm) = fn(w, jnp.where(padded, jnp.nan, xs), carry, mask)
    assert_trees_close(aux_dirty, aux_clean, atol=0, rtol=0)
    assert_trees_close((dw, dc, dm), (gw, gc, gm), atol=0, rtol=0)
    np.testing.assert_array_equal(np.asarray(jnp.where(padded, 0.0, dx)), np.asarray(gx))
    assert bool(jnp.all(jnp.isfinite(dx)))


# (batch, steps) at the edges, zero steps with rows included
EDGES = {
    "lstm": [(0, 4), (3, 1), (1, 1), (3, 0)],
    "gru": [(0, 4), (3, 1), (3, 0)],
    "rnn-tanh": [(0, 4), (3, 1), (3, 0)],
}


@pytest.mark.parametrize(
    "cell, batch, steps", [(CELLS[name], *edge) for name, edges in EDGES.items() for edge in edges]
)
def test_batch_zero_and_one_step(cell, batch, steps):
    args = inputs(cell, 7, batch=batch, steps=steps)
    assert_trees_close(*native_and_scan(cell, args, ragged=False, reverse=False, masked=True))


@pytest.mark.parametrize("in_loop", [True, False], ids=["weight-grads-in-loop", "weight-grads-by-xla"])
@pytest.mark.parametrize("cell", ONE_PER_KIND, ids=str)
def test_vmap_over_inputs_and_weights(cell, in_loop, monkeypatch):
    """Also both layouts of the GRU's saved activations (one array, or one per gate where XLA
    computes the weight gradients): each vmap index at its offset in every array."""
    for key in list(native_ops.IN_LOOP_MAX_HIDDEN):
        monkeypatch.setitem(native_ops.IN_LOOP_MAX_HIDDEN, key, 4096 if in_loop else -1)
    w, xs, carry, mask = inputs(cell, 9)
    ws = jax.tree_util.tree_map(lambda a: jnp.stack([a, 0.5 * a]), w)
    xss = jnp.stack([xs, -xs])

    def run(layer):
        def one(w, xs):
            ys, final = layer(cell.cell, w, xs, carry, seq_lengths=LENGTHS, recurrent_mask=mask)
            return jnp.sum(ys**2) + sum(jnp.sum(s) for s in jax.tree_util.tree_leaves(final)), (
                ys, final)  # fmt: skip

        return jax.jit(jax.vmap(jax.value_and_grad(one, argnums=(0, 1), has_aux=True)))(ws, xss)

    assert_trees_close(run(cell.native_layer), run(scan_layer))


@pytest.mark.parametrize("cell", ONE_PER_KIND, ids=str)
def test_two_python_threads_at_once(monkeypatch, cell):
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
    args = [inputs(cell, seed) for seed in (10, 11)]
    fn = value_and_grads_fn(cell, cell.native_layer, ragged=True, reverse=False, masked=True)
    want = [fn(*a) for a in args]  # compiled once, then run concurrently
    got = [[None] * 20 for _ in args]

    def worker(k):
        for r in range(20):
            got[k][r] = fn(*args[k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(2):
        for result in got[k]:
            assert_trees_close(result, want[k], atol=0, rtol=0)


def _second_order_loss(w, xs, carry, mask, layer, cell, reverse=True):
    lengths = jnp.array([xs.shape[1], 2], jnp.int32)
    ys, final = layer(cell.cell, w, xs, carry, seq_lengths=lengths, reverse=reverse,
                      recurrent_mask=mask)  # fmt: skip
    h = jax.tree_util.tree_leaves(final)
    return jnp.sum(ys**2) + sum(jnp.sum(s * jax.tree_util.tree_leaves(carry)[0]) for s in h)


# by default reverse only, and not the LSTM's (as before the files were merged: its hessians
# and both directions are slow tests)
GRAD_OF_GRAD = [
    pytest.param(cell, reverse, marks=[pytest.mark.slow] * (cell.kind == "lstm" or not reverse))
    for cell in EVERY_CELL
    for reverse in (True, False)
]


@pytest.mark.parametrize("cell, reverse", GRAD_OF_GRAD, ids=str)
def test_grad_of_grad_matches_scan(cell, reverse):
    """Reverse over reverse goes through the JAX reference of the gradients."""
    w, xs, carry, mask = inputs(cell, 16, batch=2, steps=3, hidden=3)

    def grad_of_grad(layer):
        inner = jax.grad(_second_order_loss, 1)
        outer = lambda w: jnp.sum(inner(w, xs, carry, mask, layer, cell, reverse) ** 2)  # noqa: E731
        return jax.jit(jax.grad(outer))(w)

    assert_trees_close(grad_of_grad(cell.native_layer), grad_of_grad(scan_layer))


@pytest.mark.slow  # 15-20 s each; grad of grad above runs by default
@pytest.mark.parametrize("cell", EVERY_CELL, ids=str)
@pytest.mark.parametrize("reverse", [True, False])  # time-major / batch-major custom calls
def test_hessian_matches_scan(cell, reverse):
    """Hessians (forward over reverse) go through the JAX reference of the forward too."""
    w, xs, carry, mask = inputs(cell, 16, batch=2, steps=4, hidden=3)
    hessian = jax.jit(jax.hessian(_second_order_loss, (0, 1, 2)), static_argnums=(4, 5, 6))
    assert_trees_close(
        hessian(w, xs, carry, mask, cell.native_layer, cell, reverse),
        hessian(w, xs, carry, mask, scan_layer, cell, reverse),
    )


@pytest.mark.slow
@pytest.mark.parametrize("cell", ONE_PER_KIND, ids=str)
def test_long_sequence(cell):
    steps = 100_000
    w, xs, carry, mask = inputs(cell, 19, batch=2, steps=steps, hidden=4)
    lengths = jnp.array([steps, steps - 777], jnp.int32)

    def run(layer):
        def loss(w, xs, carry, mask):
            ys, final = layer(cell.cell, w, xs, carry, seq_lengths=lengths, reverse=True,
                              recurrent_mask=mask)  # fmt: skip
            leaves = jax.tree_util.tree_leaves(final)
            return jnp.sum(ys * jnp.sin(ys)) + sum(jnp.sum(s * s) for s in leaves), (ys, final)

        return jax.jit(jax.value_and_grad(loss, (0, 1, 2, 3), has_aux=True))(w, xs, carry, mask)

    assert_trees_close(run(cell.native_layer), run(scan_layer), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ networks


@functools.cache
def _network_fn(cell, backend, remat):
    """jit(value_and_grad) over (params, xs, initial state) of a two-layer bidirectional
    network with ragged lengths, dropout between the layers and recurrent dropout."""
    run = NETWORKS[cell.kind][1]
    kwargs = dict(seq_lengths=LENGTHS, dropout=0.2, recurrent_dropout=0.3, key=jax.random.key(6))

    def loss(params, xs, state):
        ys, out = run(params, xs, initial_state=state, backend=backend, remat=remat,
                      **cell.network_kwargs(), **kwargs)  # fmt: skip
        leaves = jax.tree_util.tree_leaves(out)
        weighted = sum(jnp.sum(s * (0.7 + k)) for k, s in enumerate(leaves))
        return jnp.sum(ys * jnp.cos(ys)) + weighted, (ys, out)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.parametrize("cell", ONE_PER_KIND, ids=str)
@pytest.mark.parametrize("remat", [False, 4])
def test_network_matches_scan(cell, remat):
    """Two layers, both directions, an initial state, ragged lengths, dropout between the
    layers and recurrent dropout, with or without checkpoints every 4 steps (remat changes
    no value)."""
    keys = jax.random.split(jax.random.key(3), 4)
    params = cell.init(keys[0], I, 10, num_layers=2, bidirectional=True)
    xs = jax.random.normal(keys[1], (B, T, I))
    h, c = (jax.random.normal(k, (4, B, 10)) for k in keys[2:])
    state = lj.LSTMState(h=h, c=c) if cell.kind == "lstm" else h
    args = (params, xs, state)
    assert_trees_close(
        _network_fn(cell, "native", remat)(*args), _network_fn(cell, "scan", False)(*args)
    )


# (torch module, our params -> torch's gradient names and our gradients)
def _torch_module(torch, cell, **kwargs):
    if cell.kind == "gru":
        return torch.nn.GRU(I, 6, **kwargs)
    return torch.nn.RNN(I, 6, nonlinearity=cell.nonlinearity, **kwargs)


def _bias_grads(cell, g):
    """Our bias gradients under torch's names: the RNN's one bias is both of torch's."""
    return (g.b_ih, g.b_hh) if cell.kind == "gru" else (g.b, g.b)


@pytest.mark.parametrize("cell", [c for c in EVERY_CELL if c.kind != "lstm"], ids=str)
def test_matches_torch(cell):
    """nn.GRU's / nn.RNN's outputs, final state and every gradient on converted weights
    (float32), two bidirectional layers of native calls (the LSTM: test_torch_parity)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = _torch_module(torch, cell, num_layers=2, bidirectional=True, batch_first=True)
    lengths = [5, 2, 1, 4]
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((4, 5, I)).astype(np.float32)
    h0_np = rng.standard_normal((4, 4, 6)).astype(np.float32)
    ys_w = rng.standard_normal((4, 5, 12)).astype(np.float32)

    x_t, h0_t = torch.tensor(x_np, requires_grad=True), torch.tensor(h0_np, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x_t, torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    out, h_t = module(packed, h0_t)
    ys_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=5)
    ((ys_t * torch.tensor(ys_w)).sum() + (h_t**2).sum()).backward()

    run = NETWORKS[cell.kind][1]

    def loss(params, xs, h0):
        ys, h = run(params, xs, initial_state=h0, seq_lengths=jnp.asarray(lengths),
                    backend="native", **cell.network_kwargs())  # fmt: skip
        return jnp.sum(ys * ys_w) + jnp.sum(h**2), (ys, h)

    text = str(jax.make_jaxpr(loss)(lj.from_torch(module.state_dict()), x_np, h0_np))
    assert f"lstm_jax_native_{cell.kind}_forward" in text
    grads, (ys, h) = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(
        lj.from_torch(module.state_dict()), jnp.asarray(x_np), jnp.asarray(h0_np)
    )
    np.testing.assert_allclose(ys, ys_t.detach().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(h, h_t.detach().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(grads[1], x_t.grad.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(grads[2], h0_t.grad.numpy(), atol=1e-5, rtol=0)
    theirs = dict(module.named_parameters())
    for layer, directions in enumerate(grads[0].layers):
        for d, g in enumerate(directions):
            tag = f"_l{layer}" + ("_reverse" if d else "")
            for name, ours in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                                  (g.w_ih.T, g.w_hh.T, *_bias_grads(cell, g))):  # fmt: skip
                np.testing.assert_allclose(
                    ours, theirs[name + tag].grad.numpy(), atol=1e-5, rtol=0, err_msg=name + tag
                )
