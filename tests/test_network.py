"""Network features: initial state, dropout, recurrent dropout, checked lengths, unroll."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import lstm_jax as lj

XS = jax.random.normal(jax.random.key(1), (3, 6, 4))


def test_initial_state_is_used_and_state_chains():
    params = lj.init_lstm(jax.random.key(0), 4, 5, num_layers=2)
    ys, state = lj.lstm(params, XS)
    ys_a, state_a = lj.lstm(params, XS[:, :4])
    ys_b, state_b = lj.lstm(params, XS[:, 4:], initial_state=state_a)
    np.testing.assert_allclose(jnp.concatenate([ys_a, ys_b], axis=1), ys, atol=1e-6)
    np.testing.assert_allclose(state_b.h, state.h, atol=1e-6)
    np.testing.assert_allclose(state_b.c, state.c, atol=1e-6)


def test_gru_state_chains():
    params = lj.init_gru(jax.random.key(0), 4, 5, num_layers=2)
    ys, h = lj.gru(params, XS)
    _, h_a = lj.gru(params, XS[:, :2])
    ys_b, h_b = lj.gru(params, XS[:, 2:], initial_state=h_a)
    np.testing.assert_allclose(ys_b, ys[:, 2:], atol=1e-6)
    np.testing.assert_allclose(h_b, h, atol=1e-6)


def test_no_key_means_no_dropout_and_rate_zero_is_identity():
    params = lj.init_lstm(jax.random.key(0), 4, 5, num_layers=2)
    ys, _ = lj.lstm(params, XS)
    ys0, _ = lj.lstm(params, XS, dropout=0.0, recurrent_dropout=0.0, key=jax.random.key(3))
    np.testing.assert_array_equal(ys, ys0)


def test_dropout_is_between_layers_and_driven_by_the_key():
    one_layer = lj.init_lstm(jax.random.key(0), 4, 5)
    ys, _ = lj.lstm(one_layer, XS)
    ys_d, _ = lj.lstm(one_layer, XS, dropout=0.5, key=jax.random.key(3))
    np.testing.assert_array_equal(ys, ys_d)  # no layer above the first: nothing to drop
    two_layers = lj.init_lstm(jax.random.key(0), 4, 5, num_layers=2)
    a, _ = lj.lstm(two_layers, XS, dropout=0.5, key=jax.random.key(3))
    b, _ = lj.lstm(two_layers, XS, dropout=0.5, key=jax.random.key(3))
    c, _ = lj.lstm(two_layers, XS, dropout=0.5, key=jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_recurrent_dropout_uses_one_mask_for_all_steps():
    params = lj.init_gru(jax.random.key(0), 4, 5)
    key = jax.random.key(7)
    ys, _ = lj.gru(params, XS, recurrent_dropout=0.4, key=key)
    # reconstruct the mask the network draws, and rerun the cell by hand
    mask_key = jax.random.fold_in(jax.random.fold_in(key, 0), 1)
    mask = jax.random.bernoulli(mask_key, 0.6, (3, 5)).astype(jnp.float32) / 0.6
    w = params.layers[0][0]
    h = jnp.zeros((3, 5))
    for t in range(XS.shape[1]):
        h = jax.vmap(lambda h, x, m: lj.gru_cell(w, h, x, recurrent_mask=m))(h, XS[:, t], mask)
        np.testing.assert_allclose(ys[:, t], h, atol=1e-6)


def test_unroll_does_not_change_results():
    params = lj.init_lstm(jax.random.key(0), 4, 5, bidirectional=True)
    lengths = jnp.array([6, 1, 4])
    a = lj.lstm(params, XS, seq_lengths=lengths)
    b = lj.lstm(params, XS, seq_lengths=lengths, unroll=4)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_checked_mode_reports_bad_traced_lengths():
    params = lj.init_lstm(jax.random.key(0), 4, 5)
    run = checkify.checkify(jax.jit(functools.partial(lj.lstm, check_lengths=True)))
    err, _ = run(params, XS, seq_lengths=jnp.array([6, 2, 3]))
    err.throw()  # valid lengths: no error
    err, _ = run(params, XS, seq_lengths=jnp.array([6, 0, 9]))
    with pytest.raises(checkify.JaxRuntimeError, match=r"seq_lengths must lie in 1\.\.6"):
        err.throw()


def test_bidirectional_layer_output_layout():
    params = lj.init_lstm(jax.random.key(0), 4, 5, bidirectional=True)
    ys, state = lj.lstm(params, XS)
    fwd, _ = lj.lstm(lj.LSTMParams(((params.layers[0][0],),)), XS)
    bwd, _ = lj.lstm(lj.LSTMParams(((params.layers[0][1],),)), XS[:, ::-1])
    np.testing.assert_allclose(ys[..., :5], fwd, atol=1e-6)
    np.testing.assert_allclose(ys[..., 5:], bwd[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(state.h[1], bwd[:, -1], atol=1e-6)
