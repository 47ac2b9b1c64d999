"""Cells and variants against the NumPy reference; numerical gradient checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import lstm_jax as lj
from lstm_jax.scan import scan_layer
from lstm_jax.cells import lstm_kind
from tests import reference

INPUT, HIDDEN, TIME, BATCH = 3, 5, 6, 2

VARIANTS = {
    "plain": {},
    "peephole": {"peephole": True},
    "layer_norm": {"layer_norm": True},
    "projection": {"proj_size": 2},
    "all": {"peephole": True, "layer_norm": True, "proj_size": 3},
}


def _perturbed(params, key):
    """Move every leaf off its initial value so that LN gains and offsets matter."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lstm_variants_match_reference(variant):
    with jax.enable_x64(True):
        params = lj.init_lstm(
            jax.random.key(0), INPUT, HIDDEN, num_layers=2, bidirectional=True,
            dtype=jnp.float64, **VARIANTS[variant],
        )  # fmt: skip
        params = _perturbed(params, jax.random.key(1))
        xs = jax.random.normal(jax.random.key(2), (BATCH, TIME, INPUT), jnp.float64)
        ys, state = lj.lstm(params, xs)
        for b in range(BATCH):
            ys_ref, h_ref, c_ref = reference.run_lstm(params, np.asarray(xs[b]))
            np.testing.assert_allclose(ys[b], ys_ref, atol=1e-12)
            np.testing.assert_allclose(state.h[:, b], h_ref, atol=1e-12)
            np.testing.assert_allclose(state.c[:, b], c_ref, atol=1e-12)


def test_gru_and_rnn_cells_match_reference():
    with jax.enable_x64(True):
        g = lj.init_gru(jax.random.key(0), INPUT, HIDDEN, dtype=jnp.float64).layers[0][0]
        r = lj.init_rnn(jax.random.key(1), INPUT, HIDDEN, dtype=jnp.float64).layers[0][0]
        x = jax.random.normal(jax.random.key(2), (INPUT,), jnp.float64)
        h = jax.random.normal(jax.random.key(3), (HIDDEN,), jnp.float64)
        np.testing.assert_allclose(lj.gru_cell(g, h, x), reference.gru_step(g, np.asarray(h), np.asarray(x)), atol=1e-12)
        np.testing.assert_allclose(lj.rnn_cell(r, h, x), reference.rnn_step(r, np.asarray(h), np.asarray(x)), atol=1e-12)


def test_recurrent_mask_multiplies_h_only_in_the_recurrent_matmul():
    w = lj.init_lstm(jax.random.key(0), INPUT, HIDDEN).layers[0][0]
    h, c, x = (jax.random.normal(jax.random.key(k), (n,)) for k, n in ((1, HIDDEN), (2, HIDDEN), (3, INPUT)))
    mask = jnp.array([0.0, 2.0, 2.0, 0.0, 2.0])
    np.testing.assert_allclose(
        lj.lstm_cell(w, (h, c), x, recurrent_mask=mask), lj.lstm_cell(w, (h * mask, c), x), atol=1e-6
    )


@pytest.mark.parametrize("variant", ["plain", "all"])
def test_lstm_cell_gradients_numerically(variant):
    with jax.enable_x64(True):
        w = lj.init_lstm(jax.random.key(0), INPUT, HIDDEN, dtype=jnp.float64, **VARIANTS[variant])
        w = _perturbed(w, jax.random.key(1)).layers[0][0]
        out = w.w_hh.shape[0]
        h = jax.random.normal(jax.random.key(2), (out,), jnp.float64)
        c = jax.random.normal(jax.random.key(3), (HIDDEN,), jnp.float64)
        x = jax.random.normal(jax.random.key(4), (INPUT,), jnp.float64)
        check_grads(lambda w, h, c, x: lj.lstm_cell(w, (h, c), x), (w, h, c, x), order=2, modes=["rev", "fwd"])


def test_gru_and_rnn_cell_gradients_numerically():
    with jax.enable_x64(True):
        g = lj.init_gru(jax.random.key(0), INPUT, HIDDEN, dtype=jnp.float64).layers[0][0]
        r = lj.init_rnn(jax.random.key(1), INPUT, HIDDEN, dtype=jnp.float64).layers[0][0]
        h = jax.random.normal(jax.random.key(2), (HIDDEN,), jnp.float64)
        x = jax.random.normal(jax.random.key(3), (INPUT,), jnp.float64)
        check_grads(lj.gru_cell, (g, h, x), order=2, modes=["rev"])
        check_grads(lj.rnn_cell, (r, h, x), order=2, modes=["rev"])


@pytest.mark.parametrize("reverse", [False, True])
def test_layer_gradients_numerically(reverse):
    with jax.enable_x64(True):
        w = lj.init_lstm(jax.random.key(0), INPUT, HIDDEN, dtype=jnp.float64).layers[0][0]
        xs = jax.random.normal(jax.random.key(1), (BATCH, TIME, INPUT), jnp.float64)
        carry = (jnp.zeros((BATCH, HIDDEN), jnp.float64), jnp.ones((BATCH, HIDDEN), jnp.float64))
        lengths = jnp.array([TIME, 3])

        def layer(w, xs, carry):
            return scan_layer(lstm_kind(), w, xs, carry, seq_lengths=lengths, reverse=reverse)

        check_grads(layer, (w, xs, carry), order=1, modes=["rev", "fwd"])


def test_bfloat16_smoke():
    params = lj.init_lstm(jax.random.key(0), INPUT, HIDDEN, num_layers=2)
    xs = jax.random.normal(jax.random.key(1), (BATCH, TIME, INPUT))
    ys32, _ = lj.lstm(params, xs)
    ys_mixed, state = lj.lstm(params, xs, compute_dtype=jnp.bfloat16)
    assert ys_mixed.dtype == jnp.float32 and state.c.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(ys_mixed - ys32))) < 3e-2
    params16 = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
    ys16, state16 = lj.lstm(params16, xs.astype(jnp.bfloat16))
    assert ys16.dtype == jnp.bfloat16 and state16.h.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(ys16.astype(jnp.float32))))
    assert float(jnp.max(jnp.abs(ys16.astype(jnp.float32) - ys32))) < 5e-2


def test_init_options():
    p = lj.init_lstm(jax.random.key(0), 3, 4, forget_bias=1.0)
    q = lj.init_lstm(jax.random.key(0), 3, 4, forget_bias=0.0)
    np.testing.assert_allclose(p.layers[0][0].b[4:8] - q.layers[0][0].b[4:8], 1.0, atol=1e-6)
    np.testing.assert_array_equal(p.layers[0][0].b[:4], q.layers[0][0].b[:4])
    w_hh = lj.init_lstm(jax.random.key(0), 3, 4, recurrent_init="orthogonal").layers[0][0].w_hh
    for block in jnp.split(w_hh, 4, axis=1):
        np.testing.assert_allclose(block.T @ block, jnp.eye(4), atol=1e-5)
    assert lj.init_gru(jax.random.key(0), 3, 4, dtype=jnp.bfloat16).layers[0][0].w_ih.dtype == jnp.bfloat16
    bound = 1 / np.sqrt(4)
    leaves = jax.tree_util.tree_leaves(lj.init_rnn(jax.random.key(0), 3, 4, num_layers=2))
    assert all(float(jnp.max(jnp.abs(x))) <= bound for x in leaves)


def test_params_are_pytrees_of_arrays():
    params = lj.init_lstm(jax.random.key(0), 3, 4, num_layers=2, bidirectional=True, peephole=True, layer_norm=True, proj_size=2)
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, params)
    assert isinstance(doubled, lj.LSTMParams)
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(params))
    assert len(params.layers) == 2 and len(params.layers[0]) == 2
