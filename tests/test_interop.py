"""Converter round trips (exact) and the Keras layouts against their equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from tests.reference import sigmoid


def _assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "params",
    [
        lj.init_lstm(jax.random.key(0), 3, 4),
        lj.init_lstm(jax.random.key(1), 3, 4, num_layers=3, bidirectional=True),
        lj.init_lstm(jax.random.key(2), 3, 6, num_layers=2, bidirectional=True, proj_size=2),
        lj.init_gru(jax.random.key(3), 3, 4, num_layers=2, bidirectional=True),
        lj.init_rnn(jax.random.key(4), 3, 4, num_layers=2),
    ],
    ids=["lstm", "lstm-3-bi", "lstm-proj", "gru-bi", "rnn"],
)
def test_torch_round_trip_is_exact(params):
    _assert_trees_equal(lj.from_torch(lj.to_torch(params)), params)


def test_to_torch_names_and_shapes_load_into_torch():
    torch = pytest.importorskip("torch")
    params = lj.init_lstm(jax.random.key(0), 3, 6, num_layers=2, bidirectional=True, proj_size=2)
    module = torch.nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2)
    state_dict = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in lj.to_torch(params).items()}
    module.load_state_dict(state_dict, strict=True)


def test_flax_round_trip_is_exact():
    w = lj.init_lstm(jax.random.key(0), 3, 4).layers[0][0]
    _assert_trees_equal(lj.from_flax(lj.to_flax(w)), w)
    _assert_trees_equal(lj.from_flax({"params": {"cell": lj.to_flax(w)}}), w)


def test_keras_round_trip_is_exact():
    w = lj.init_lstm(jax.random.key(0), 3, 4).layers[0][0]
    _assert_trees_equal(lj.from_keras(lj.to_keras(w)), w)
    g = lj.init_gru(jax.random.key(1), 3, 4).layers[0][0]
    _assert_trees_equal(lj.from_keras(lj.to_keras(g)), g)


def test_keras_lstm_layout_matches_keras_equations():
    rng = np.random.default_rng(0)
    hidden, inputs = 4, 3
    kernel = rng.standard_normal((inputs, 4 * hidden)).astype(np.float32)
    recurrent = rng.standard_normal((hidden, 4 * hidden)).astype(np.float32)
    bias = rng.standard_normal(4 * hidden).astype(np.float32)
    x, h, c = rng.standard_normal(inputs), rng.standard_normal(hidden), rng.standard_normal(hidden)
    # Keras LSTMCell: z = x K + h R + b; gates i, f, c, o in that order
    z = x @ kernel + h @ recurrent + bias
    zi, zf, zc, zo = np.split(z, 4)
    c_ref = sigmoid(zf) * c + sigmoid(zi) * np.tanh(zc)
    h_ref = sigmoid(zo) * np.tanh(c_ref)
    w = lj.from_keras([kernel, recurrent, bias])
    h_new, c_new = lj.lstm_cell(w, (jnp.asarray(h, jnp.float32), jnp.asarray(c, jnp.float32)), jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(h_new, h_ref, atol=1e-5)
    np.testing.assert_allclose(c_new, c_ref, atol=1e-5)


def test_keras_gru_layout_matches_keras_equations():
    rng = np.random.default_rng(1)
    hidden, inputs = 4, 3
    kernel = rng.standard_normal((inputs, 3 * hidden)).astype(np.float32)
    recurrent = rng.standard_normal((hidden, 3 * hidden)).astype(np.float32)
    bias = rng.standard_normal((2, 3 * hidden)).astype(np.float32)
    x, h = rng.standard_normal(inputs), rng.standard_normal(hidden)
    # Keras GRUCell, reset_after=True: gates z, r, h in that order
    mx = x @ kernel + bias[0]
    mh = h @ recurrent + bias[1]
    z = sigmoid(mx[:hidden] + mh[:hidden])
    r = sigmoid(mx[hidden : 2 * hidden] + mh[hidden : 2 * hidden])
    hh = np.tanh(mx[2 * hidden :] + r * mh[2 * hidden :])
    h_ref = z * h + (1 - z) * hh
    w = lj.from_keras([kernel, recurrent, bias])
    h_new = lj.gru_cell(w, jnp.asarray(h, jnp.float32), jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(h_new, h_ref, atol=1e-5)


def test_from_torch_rejects_unknown_keys():
    with pytest.raises(ValueError, match="not a PyTorch nn.LSTM/nn.GRU/nn.RNN parameter"):
        lj.from_torch({"weight": np.zeros((4, 4))})


def test_from_torch_rejects_wrong_gate_count():
    with pytest.raises(ValueError, match="not 4, 3 or 1 gate blocks"):
        lj.from_torch({"weight_ih_l0": np.zeros((10, 3)), "weight_hh_l0": np.zeros((10, 5))})


def test_to_torch_rejects_peepholes():
    params = lj.init_lstm(jax.random.key(0), 3, 4, peephole=True)
    with pytest.raises(ValueError, match="no peepholes or layer norm"):
        lj.to_torch(params)


def test_from_flax_rejects_other_dicts():
    with pytest.raises(ValueError, match="not a Flax LSTMCell"):
        lj.from_flax({"dense": {"kernel": np.zeros((2, 2))}})


def test_from_keras_rejects_wrong_list():
    with pytest.raises(ValueError, match=r"\[kernel, recurrent_kernel, bias\]"):
        lj.from_keras([np.zeros((3, 8))])
