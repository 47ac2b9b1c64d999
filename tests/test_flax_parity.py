"""Equality with Flax linen's LSTM and GRU cells on converted weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj

BATCH, TIME, INPUT, HIDDEN = 3, 6, 4, 5


@pytest.mark.parametrize("cell_type", [nn.LSTMCell, nn.OptimizedLSTMCell])
def test_lstm_matches_flax_rnn(cell_type):
    xs = jax.random.normal(jax.random.key(0), (BATCH, TIME, INPUT))
    flax_rnn = nn.RNN(cell_type(HIDDEN), return_carry=True)
    flax_params = flax_rnn.init(jax.random.key(1), xs)
    (c_f, h_f), ys_f = flax_rnn.apply(flax_params, xs)
    params = lj.LSTMParams(((lj.from_flax(flax_params),),))
    ys, state = lj.lstm(params, xs)
    np.testing.assert_allclose(ys, ys_f, atol=1e-5)
    np.testing.assert_allclose(state.h[0], h_f, atol=1e-5)
    np.testing.assert_allclose(state.c[0], c_f, atol=1e-5)


def test_lstm_matches_flax_with_seq_lengths_and_reverse():
    xs = jax.random.normal(jax.random.key(0), (BATCH, TIME, INPUT))
    lengths = jnp.array([6, 2, 4])
    flax_rnn = nn.RNN(nn.OptimizedLSTMCell(HIDDEN), return_carry=True, reverse=True, keep_order=True)
    flax_params = flax_rnn.init(jax.random.key(1), xs)
    (c_f, h_f), ys_f = flax_rnn.apply(flax_params, xs, seq_lengths=lengths)
    # our bidirectional network with a throwaway forward direction: its reverse
    # half must equal Flax's reverse RNN on each valid part
    w = lj.from_flax(flax_params)
    params = lj.LSTMParams(((w, w),))
    ys, state = lj.lstm(params, xs, seq_lengths=lengths)
    valid = np.arange(TIME)[None, :] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(
        np.asarray(ys[..., HIDDEN:])[valid], np.asarray(ys_f)[valid], atol=1e-5
    )
    np.testing.assert_allclose(state.h[1], h_f, atol=1e-5)
    np.testing.assert_allclose(state.c[1], c_f, atol=1e-5)


def test_lstm_cell_matches_flax_cell():
    cell = nn.OptimizedLSTMCell(HIDDEN)
    x = jax.random.normal(jax.random.key(0), (INPUT,))
    h = jax.random.normal(jax.random.key(1), (HIDDEN,))
    c = jax.random.normal(jax.random.key(2), (HIDDEN,))
    flax_params = cell.init(jax.random.key(3), (c, h), x)
    (c_f, h_f), _ = cell.apply(flax_params, (c, h), x)
    h_new, c_new = lj.lstm_cell(lj.from_flax(flax_params), (h, c), x)
    np.testing.assert_allclose(h_new, h_f, atol=1e-6)
    np.testing.assert_allclose(c_new, c_f, atol=1e-6)


def test_gru_matches_flax_rnn():
    xs = jax.random.normal(jax.random.key(0), (BATCH, TIME, INPUT))
    flax_rnn = nn.RNN(nn.GRUCell(HIDDEN), return_carry=True)
    flax_params = flax_rnn.init(jax.random.key(1), xs)
    flax_params = jax.tree_util.tree_map(  # Flax initialises biases at zero: make them count
        lambda a: a + 0.1 * jax.random.normal(jax.random.key(5), a.shape), flax_params
    )
    h_f, ys_f = flax_rnn.apply(flax_params, xs)
    ys, h = lj.gru(lj.GRUParams(((lj.from_flax(flax_params),),)), xs)
    np.testing.assert_allclose(ys, ys_f, atol=1e-5)
    np.testing.assert_allclose(h[0], h_f, atol=1e-5)


@pytest.mark.parametrize("init", [lj.init_lstm, lj.init_gru])
def test_to_flax_runs_in_flax(init):
    params = init(jax.random.key(0), INPUT, HIDDEN)
    w = params.layers[0][0]
    if isinstance(w, lj.GRUWeights):  # Flax has no hidden bias on r, z: fold it into b_ih
        b_hh = w.b_hh.at[: 2 * HIDDEN].set(0.0)
        w = w._replace(b_ih=w.b_ih + w.b_hh - b_hh, b_hh=b_hh)
        params = lj.GRUParams(((w,),))
    cell = nn.OptimizedLSTMCell(HIDDEN) if isinstance(w, lj.LSTMWeights) else nn.GRUCell(HIDDEN)
    xs = jax.random.normal(jax.random.key(1), (BATCH, TIME, INPUT))
    _, ys_f = nn.RNN(cell, return_carry=True).apply({"params": {"cell": lj.to_flax(w)}}, xs)
    ys, _ = (lj.lstm if isinstance(w, lj.LSTMWeights) else lj.gru)(params, xs)
    np.testing.assert_allclose(ys, ys_f, atol=1e-5)
