"""The native CPU Elman RNN (``native_rnn_layer``) against ``scan`` and PyTorch's nn.RNN.

Shapes hit the kernels' edge cases as in ``test_native.py``: H = 21 is one
full panel of 16 units and a partial one (AVX-512), B = 7 one block of 6 rows
and a remainder; ``LSTM_JAX_NATIVE_SPLIT_MACS=0`` splits even these tiny
steps across threads. Every test runs both nonlinearities where they differ.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from lstm_jax.cells import rnn_kind
from lstm_jax.kernels import native_ops
from lstm_jax.kernels.native_ops import native_unavailable
from lstm_jax.kernels.native_rnn import native_rnn_layer
from lstm_jax.scan import scan_layer
from tests.test_native import assert_trees_close

pytestmark = pytest.mark.skipif(
    native_unavailable() is not None, reason=f"native kernels unavailable: {native_unavailable()}"
)

B, T, I, H = 7, 9, 5, 21
LENGTHS = jnp.array([9, 3, 1, 9, 5, 2, 8], jnp.int32)
CALLS = ("lstm_jax_native_rnn_forward_infer", "lstm_jax_native_rnn_forward_train",
         "lstm_jax_native_rnn_backward")  # fmt: skip
NONLINEARITIES = ("tanh", "relu")


# (native, scan); the cell, ``rnn_kind(nonlinearity=...)``, carries the nonlinearity
LAYERS = (native_rnn_layer, scan_layer)


def _inputs(seed=0, batch=B, steps=T, hidden=H):
    keys = jax.random.split(jax.random.key(seed), 5)
    w = lj.init_rnn(keys[0], I, hidden).layers[0][0]
    w = w._replace(b=0.3 * jax.random.normal(keys[4], w.b.shape))
    xs = jax.random.normal(keys[1], (batch, steps, I))
    h0 = jax.random.normal(keys[2], (batch, hidden))
    mask = jax.random.bernoulli(keys[3], 0.7, (batch, hidden)).astype(jnp.float32) / 0.7
    return w, xs, h0, mask


def _value_and_grads_fn(layer, *, seq_lengths, reverse, masked, nonlinearity, time_major=False):
    """jit(value_and_grad) of a loss weighing the outputs and the final state differently."""

    def loss(w, xs, h0, mask):
        ys, h = layer(
            rnn_kind(nonlinearity=nonlinearity), w, xs, h0, seq_lengths=seq_lengths,
            reverse=reverse, recurrent_mask=mask if masked else None, time_major=time_major,
        )  # fmt: skip
        return jnp.sum(ys * jnp.sin(ys)) + jnp.sum(1.3 * h * h), (ys, h)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


def _value_and_grads(layer, args, **options):
    return _value_and_grads_fn(layer, **options)(*args)


def _both(args, nonlinearity, **options):
    """(native, scan) values and gradients."""
    return tuple(
        _value_and_grads(layer, args, nonlinearity=nonlinearity, **options)
        for layer in LAYERS
    )


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize(
    "reverse, ragged, masked, split",
    [(False, False, False, None), (True, True, True, None), (False, True, True, "units"),
     (True, False, False, "units"), (True, True, True, "rows")],
)  # fmt: skip
def test_layer_matches_scan(monkeypatch, reverse, ragged, masked, split, nonlinearity):
    if split is not None:  # threads split hidden units, or batch rows
        monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
        monkeypatch.setenv("LSTM_JAX_NATIVE_MIN_ROWS", "1" if split == "rows" else "100")
    options = dict(seq_lengths=LENGTHS if ragged else None, reverse=reverse, masked=masked)
    got, want = _both(_inputs(), nonlinearity, **options)
    assert_trees_close(got, want)
    if not masked:  # the mask's gradient is only defined with a mask
        assert float(jnp.max(jnp.abs(got[1][3]))) == 0.0


@pytest.mark.parametrize("min_rows", ["100", "1"])  # 5 partitions of units, or of rows
def test_time_major_and_more_threads_than_panels(monkeypatch, min_rows):
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
    monkeypatch.setenv("LSTM_JAX_NATIVE_MIN_ROWS", min_rows)
    monkeypatch.setenv("LSTM_JAX_NATIVE_THREADS", "5")
    w, xs, h0, mask = _inputs(1)
    args = (w, jnp.swapaxes(xs, 0, 1), h0, mask)
    options = dict(seq_lengths=LENGTHS, reverse=True, masked=True, time_major=True)
    assert_trees_close(*_both(args, "tanh", **options))


def _nan_inputs():
    """Sequence 0 holds a NaN at step 1, which is valid."""
    w, xs, h0, _ = _inputs(1)
    return w, xs.at[0, 1, 0].set(jnp.nan), h0


def _assert_nan_where_scan_has_nan(got, nonlinearity):
    w, xs, h0 = _nan_inputs()
    ref = scan_layer(rnn_kind(nonlinearity=nonlinearity), w, xs, h0, seq_lengths=LENGTHS)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        assert np.isnan(np.asarray(b)).any()
        np.testing.assert_array_equal(np.isnan(np.asarray(a)), np.isnan(np.asarray(b)))


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_nan_at_a_valid_step_propagates(nonlinearity):
    got = native_rnn_layer(rnn_kind(nonlinearity=nonlinearity), *_nan_inputs(), seq_lengths=LENGTHS)
    _assert_nan_where_scan_has_nan(got, nonlinearity)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_nan_in_padding_changes_nothing(nonlinearity):
    w, xs, h0, mask = _inputs(8)
    padded = jnp.arange(T)[None, :, None] >= LENGTHS[:, None, None]
    options = dict(seq_lengths=LENGTHS, reverse=True, masked=True, nonlinearity=nonlinearity)
    layer = native_rnn_layer
    clean = _value_and_grads(layer, (w, jnp.where(padded, 0.0, xs), h0, mask), **options)
    dirty = _value_and_grads(layer, (w, jnp.where(padded, jnp.nan, xs), h0, mask), **options)
    (_, aux_clean), (gw, gx, gh, gm) = clean
    (_, aux_dirty), (dw, dx, dh, dm) = dirty
    assert_trees_close(aux_dirty, aux_clean, atol=0, rtol=0)
    assert_trees_close((dw, dh, dm), (gw, gh, gm), atol=0, rtol=0)
    np.testing.assert_array_equal(np.asarray(jnp.where(padded, 0.0, dx)), np.asarray(gx))
    assert bool(jnp.all(jnp.isfinite(dx)))


ISA_OPTIONS = dict(seq_lengths=LENGTHS, reverse=True, masked=True)


@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_other_instruction_sets(isa, tmp_path):
    """The AVX2 and portable paths (chosen at process start) against scan (run here)."""
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        import jax
        import numpy as np
        from lstm_jax.kernels.native_ops import native_isa
        from lstm_jax.cells import rnn_kind
        from lstm_jax.kernels.native_rnn import native_rnn_layer
        from tests.test_native_rnn import (ISA_OPTIONS, LENGTHS, NONLINEARITIES, _inputs,
                                           _nan_inputs, _value_and_grads)
        assert native_isa() == sys.argv[2], native_isa()
        leaves = []
        for nl in NONLINEARITIES:
            nan = native_rnn_layer(rnn_kind(nonlinearity=nl), *_nan_inputs(), seq_lengths=LENGTHS)
            got = _value_and_grads(native_rnn_layer, _inputs(2), nonlinearity=nl, **ISA_OPTIONS)
            leaves += jax.tree_util.tree_leaves((nan, got))
        np.savez(sys.argv[3], *[np.asarray(a) for a in leaves])
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, LSTM_JAX_NATIVE_ISA=isa, LSTM_JAX_NATIVE_SPLIT_MACS="0")
    out = tmp_path / "leaves.npz"
    result = subprocess.run(
        [sys.executable, "-c", script, root, isa, str(out)], env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as saved:
        leaves = [saved[f"arr_{k}"] for k in range(len(saved.files))]
    per = len(leaves) // len(NONLINEARITIES)
    for k, nl in enumerate(NONLINEARITIES):
        mine = leaves[k * per : (k + 1) * per]
        _assert_nan_where_scan_has_nan(mine[:2], nl)
        want = _value_and_grads(scan_layer, _inputs(2), nonlinearity=nl, **ISA_OPTIONS)
        assert_trees_close(mine[2:], jax.tree_util.tree_leaves(want))


@pytest.mark.parametrize("batch, steps", [(0, 4), (3, 1), (3, 0)])
def test_batch_zero_and_one_step(batch, steps):
    args = _inputs(7, batch=batch, steps=steps)
    assert_trees_close(*_both(args, "tanh", seq_lengths=None, reverse=False, masked=True))


def test_vmap_over_inputs_and_weights():
    w, xs, h0, mask = _inputs(9)
    ws = jax.tree_util.tree_map(lambda a: jnp.stack([a, 0.5 * a]), w)
    xss = jnp.stack([xs, -xs])

    def run(layer):
        def one(w, xs):
            ys, h = layer(rnn_kind(), w, xs, h0, seq_lengths=LENGTHS, recurrent_mask=mask)
            return jnp.sum(ys**2) + jnp.sum(h), (ys, h)

        return jax.jit(jax.vmap(jax.value_and_grad(one, argnums=(0, 1), has_aux=True)))(ws, xss)

    assert_trees_close(run(native_rnn_layer), run(scan_layer))


def test_two_python_threads_at_once(monkeypatch):
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
    inputs = [_inputs(seed) for seed in (10, 11)]
    options = dict(seq_lengths=LENGTHS, reverse=False, masked=True, nonlinearity="tanh")
    fn = _value_and_grads_fn(native_rnn_layer, **options)  # compiled once, then run concurrently
    want = [fn(*args) for args in inputs]
    got = [[None] * 20 for _ in inputs]

    def worker(k):
        for r in range(20):
            got[k][r] = fn(*inputs[k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(2):
        for result in got[k]:
            assert_trees_close(result, want[k], atol=0, rtol=0)


def _second_order_loss(w, xs, h0, mask, layer, nonlinearity="tanh"):
    lengths = jnp.array([3, 2], jnp.int32)
    ys, h = layer(rnn_kind(nonlinearity=nonlinearity), w, xs, h0, seq_lengths=lengths,
                  reverse=True, recurrent_mask=mask)  # fmt: skip
    return jnp.sum(ys**2) + jnp.sum(h * h0)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_grad_of_grad_matches_scan(nonlinearity):
    """Reverse over reverse goes through the JAX reference of the gradients."""
    w, xs, h0, mask = _inputs(16, batch=2, steps=3, hidden=3)

    def grad_of_grad(layer):
        inner = jax.grad(_second_order_loss, 1)
        outer = lambda w: jnp.sum(inner(w, xs, h0, mask, layer, nonlinearity) ** 2)  # noqa: E731
        return jax.jit(jax.grad(outer))(w)

    assert_trees_close(*(grad_of_grad(layer) for layer in LAYERS))


@pytest.mark.slow  # grad of grad above runs by default
def test_hessian_matches_scan():
    """Hessians (forward over reverse) go through the JAX reference of the forward too."""
    w, xs, h0, mask = _inputs(16, batch=2, steps=3, hidden=3)
    hessian = jax.jit(jax.hessian(_second_order_loss, (0, 1, 2)), static_argnums=4)
    assert_trees_close(
        hessian(w, xs, h0, mask, native_rnn_layer), hessian(w, xs, h0, mask, scan_layer)
    )


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_matches_torch_rnn(nonlinearity):
    """nn.RNN's outputs, final state and every gradient on converted weights (float32):
    one bidirectional layer, each direction a native_rnn_layer call."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.RNN(I, 6, nonlinearity=nonlinearity, bidirectional=True, batch_first=True)
    lengths = [5, 2, 1, 4]
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((4, 5, I)).astype(np.float32)
    h0_np = rng.standard_normal((2, 4, 6)).astype(np.float32)
    ys_w = rng.standard_normal((4, 5, 12)).astype(np.float32)

    x_t, h0_t = torch.tensor(x_np, requires_grad=True), torch.tensor(h0_np, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x_t, torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    out, h_t = module(packed, h0_t)
    ys_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=5)
    ((ys_t * torch.tensor(ys_w)).sum() + (h_t**2).sum()).backward()

    def loss(params, xs, h0):
        outputs = [
            native_rnn_layer(rnn_kind(nonlinearity=nonlinearity), w, xs, h0[d],
                             seq_lengths=jnp.asarray(lengths), reverse=bool(d))  # fmt: skip
            for d, w in enumerate(params.layers[0])
        ]
        ys = jnp.concatenate([o[0] for o in outputs], axis=-1)
        h = jnp.stack([o[1] for o in outputs])
        return jnp.sum(ys * ys_w) + jnp.sum(h**2), (ys, h)

    params = lj.from_torch(module.state_dict())
    assert isinstance(params, lj.RNNParams)
    grads, (ys, h) = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(
        params, jnp.asarray(x_np), jnp.asarray(h0_np)
    )
    np.testing.assert_allclose(ys, ys_t.detach().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(h, h_t.detach().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(grads[1], x_t.grad.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(grads[2], h0_t.grad.numpy(), atol=1e-5, rtol=0)
    theirs = dict(module.named_parameters())
    for d, g in enumerate(grads[0].layers[0]):
        tag = "_l0" + ("_reverse" if d else "")
        for name, ours in (("weight_ih", g.w_ih.T), ("weight_hh", g.w_hh.T),
                           ("bias_ih", g.b), ("bias_hh", g.b)):  # fmt: skip
            np.testing.assert_allclose(
                ours, theirs[name + tag].grad.numpy(), atol=1e-5, rtol=0, err_msg=name + tag
            )


def test_targets_are_registered():
    assert set(CALLS) <= set(native_ops.FFI_TARGETS)


def test_unknown_nonlinearity_raises():
    w, xs, h0, _ = _inputs()
    cell = rnn_kind()._replace(nonlinearity="gelu")
    with pytest.raises(ValueError, match="backend='native': it runs the nonlinearities"):
        native_rnn_layer(cell, w, xs, h0)


def test_non_float32_parameters_raise():
    w, xs, h0, _ = _inputs()
    w = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), w)
    with pytest.raises(
        ValueError, match="backend='native': it needs float32 parameters, got bfloat16"
    ):
        native_rnn_layer(rnn_kind(), w, xs.astype(jnp.bfloat16), h0)


@pytest.mark.slow
def test_long_sequence():
    steps = 100_000
    args = _inputs(19, batch=2, steps=steps, hidden=4)
    lengths = jnp.array([steps, steps - 777], jnp.int32)
    options = dict(seq_lengths=lengths, reverse=True, masked=True)
    got, want = _both(args, "tanh", **options)
    assert_trees_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_auto_runs_native_on_cpu_with_the_cells_nonlinearity(nonlinearity):
    params = lj.init_rnn(jax.random.key(3), I, H)
    xs = jax.random.normal(jax.random.key(4), (B, T, I))
    run = functools.partial(lj.rnn, nonlinearity=nonlinearity)
    assert "lstm_jax_native_rnn_forward_infer" in str(jax.make_jaxpr(run)(params, xs))
    assert_trees_close(run(params, xs), run(params, xs, backend="scan"))

