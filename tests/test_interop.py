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


def test_from_torch_rejects_dicts_without_recurrent_weights():
    with pytest.raises(ValueError, match=r"holds no PyTorch nn.LSTM/nn.GRU/nn.RNN parameter .*\['weight'\]"):
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


# ------------------------------------------- converters check every key and shape


def _torch_lstm_state_dict(**kwargs):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch.nn.LSTM(3, 4, **kwargs).state_dict()


def _without(state_dict, key):
    return {k: v for k, v in state_dict.items() if k != key}


def test_from_torch_rejects_a_missing_bias():
    sd = _torch_lstm_state_dict(num_layers=2)
    with pytest.raises(ValueError, match=r"missing keys \['bias_hh_l1'\]"):
        lj.from_torch(_without(sd, "bias_hh_l1"))


def test_from_torch_rejects_a_missing_reverse_weight():
    sd = _torch_lstm_state_dict(num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match=r"bidirectional=True.*missing keys \['weight_hh_l1_reverse'\]"):
        lj.from_torch(_without(sd, "weight_hh_l1_reverse"))


def test_from_torch_rejects_a_broadcastable_bias():
    torch = pytest.importorskip("torch")
    sd = {**_torch_lstm_state_dict(), "bias_ih_l0": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"bias_ih_l0 has shape \(1,\), expected \(16,\)"):
        lj.from_torch(sd)


@pytest.mark.parametrize("shape", [(4, 4), (2, 4)])
def test_from_torch_rejects_weight_hr_on_a_plain_lstm(shape):
    torch = pytest.importorskip("torch")
    sd = {**_torch_lstm_state_dict(), "weight_hr_l0": torch.zeros(shape)}
    with pytest.raises(ValueError, match=r"only a projection LSTM .* 'weight_hh_l0' has shape \(16, 4\)"):
        lj.from_torch(sd)


def test_from_torch_rejects_a_missing_projection():
    torch = pytest.importorskip("torch")
    sd = torch.nn.LSTM(3, 6, num_layers=2, proj_size=2).state_dict()
    with pytest.raises(ValueError, match=r"proj_size=2\).*missing keys \['weight_hr_l1'\]"):
        lj.from_torch(_without(sd, "weight_hr_l1"))


def test_from_torch_lists_unknown_keys_and_wrong_shapes():
    torch = pytest.importorskip("torch")
    sd = {**_torch_lstm_state_dict(), "weight_ih_l0_extra": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"unexpected keys \['weight_ih_l0_extra'\]"):
        lj.from_torch(sd)
    sd = {**torch.nn.GRU(3, 4, num_layers=2).state_dict(), "weight_ih_l1": torch.zeros(12, 5)}
    with pytest.raises(ValueError, match=r"weight_ih_l1 has shape \(12, 5\), expected \(12, 4\) = \(3 \* hidden_size, hidden_size\)"):
        lj.from_torch(sd)


def test_from_torch_rejects_mixed_and_integer_dtypes():
    sd = _torch_lstm_state_dict()
    with pytest.raises(TypeError, match="bias_ih_l0 has dtype float64, expected float32 like weight_ih_l0"):
        lj.from_torch({**sd, "bias_ih_l0": sd["bias_ih_l0"].double()})
    with pytest.raises(TypeError, match="weight_ih_l0 has dtype int64, expected a floating dtype"):
        lj.from_torch({k: v.long() for k, v in sd.items()})


class _Model:
    """Builds torch modules holding recurrent submodules, as a user's model would."""

    @staticmethod
    def one():
        torch = pytest.importorskip("torch")

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
                self.head = torch.nn.Linear(8, 2)

        torch.manual_seed(0)
        return Model()

    @staticmethod
    def two():
        torch = pytest.importorskip("torch")

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = torch.nn.LSTM(3, 4)
                self.decoder = torch.nn.GRU(4, 5)

        return Model()


def test_from_torch_takes_a_model_state_dict_with_a_prefix():
    model = _Model.one()
    expected = lj.from_torch(model.lstm.state_dict())
    _assert_trees_equal(lj.from_torch(model.state_dict(), prefix="lstm."), expected)
    _assert_trees_equal(lj.from_torch(model.state_dict(), prefix="lstm"), expected)
    _assert_trees_equal(lj.from_torch(model.state_dict()), expected)  # the one prefix, detected
    with pytest.raises(ValueError, match=r"no key starting with prefix='rnn.'.*\['lstm.'\]"):
        lj.from_torch(model.state_dict(), prefix="rnn.")


def test_from_torch_names_the_prefix_in_errors():
    sd = _without(_Model.one().state_dict(), "lstm.bias_hh_l1_reverse")
    with pytest.raises(ValueError, match=r"missing keys \['lstm.bias_hh_l1_reverse'\]"):
        lj.from_torch(sd)


def test_from_torch_asks_for_a_prefix_when_ambiguous():
    model = _Model.two()
    with pytest.raises(ValueError, match=r"several prefixes \['decoder.', 'encoder.'\]: pass prefix="):
        lj.from_torch(model.state_dict())
    assert isinstance(lj.from_torch(model.state_dict(), prefix="decoder."), lj.GRUParams)


def test_from_torch_converts_bfloat16_tensors():
    torch = pytest.importorskip("torch")
    module = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).to(torch.bfloat16)
    params = lj.from_torch(module.state_dict())
    w = params.layers[1][1]
    assert w.w_hh.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(w.w_hh, np.float32), module.weight_hh_l1_reverse.detach().float().numpy().T
    )
    b = module.bias_ih_l0.detach().float().numpy() + module.bias_hh_l0.detach().float().numpy()
    np.testing.assert_array_equal(
        np.asarray(params.layers[0][0].b, np.float32), b.astype(jnp.bfloat16).astype(np.float32)
    )
    _assert_trees_equal(lj.from_torch(lj.to_torch(params)), params)


def _flax_lstm_params():
    from flax import linen as nn

    cell = nn.LSTMCell(4)
    carry = cell.initialize_carry(jax.random.key(1), (3,))
    return dict(cell.init(jax.random.key(0), carry, jnp.ones(3))["params"])


def test_from_flax_rejects_mismatched_gates():
    p = _flax_lstm_params()
    p["hf"] = {"kernel": jnp.zeros((4, 5)), "bias": jnp.zeros(5)}
    with pytest.raises(ValueError, match=r"hf/kernel has shape \(4, 5\), expected \(4, 4\) .*hf/bias has shape \(5,\), expected \(4,\)"):
        lj.from_flax(p)
    p = _flax_lstm_params()
    p["ig"] = {"kernel": jnp.zeros((2, 4))}
    with pytest.raises(ValueError, match=r"ig/kernel has shape \(2, 4\), expected \(3, 4\) = \(input_size, hidden_size\)"):
        lj.from_flax(p)


def test_from_flax_lists_missing_and_unexpected_entries():
    p = _flax_lstm_params()
    del p["io"]
    p["ii"] = {**p["ii"], "bias": jnp.zeros(4)}
    with pytest.raises(ValueError, match=r"missing keys \['io'\]; unexpected keys \['ii/bias'\]"):
        lj.from_flax({"params": {"cell": p}})


def test_from_keras_rejects_wrong_bias_lengths():
    kernel, recurrent = np.zeros((3, 16), np.float32), np.zeros((4, 16), np.float32)
    with pytest.raises(ValueError, match=r"weights\[2\] \(bias\) has shape \(12,\), expected \(16,\)"):
        lj.from_keras([kernel, recurrent, np.zeros(12, np.float32)])
    kernel, recurrent = np.zeros((3, 12), np.float32), np.zeros((4, 12), np.float32)
    with pytest.raises(ValueError, match=r"weights\[2\] \(bias\) has shape \(2, 8\), expected \(2, 12\)"):
        lj.from_keras([kernel, recurrent, np.zeros((2, 8), np.float32)])
    with pytest.raises(ValueError, match="reset_after=False"):
        lj.from_keras([kernel, recurrent, np.zeros(12, np.float32)])


def test_from_keras_rejects_a_wrong_kernel():
    with pytest.raises(ValueError, match=r"weights\[0\] \(kernel\) has shape \(3, 12\), expected \(3, 16\)"):
        lj.from_keras([np.zeros((3, 12)), np.zeros((4, 16)), np.zeros(16)])


def test_to_converters_check_their_weights():
    bad = lj.LSTMWeights(jnp.zeros((3, 16)), jnp.zeros((4, 16)), jnp.zeros(12))
    with pytest.raises(ValueError, match=r"weights.b has shape \(12,\), expected \(16,\)"):
        lj.to_keras(bad)
    with pytest.raises(ValueError, match=r"weights.b has shape \(12,\), expected \(16,\)"):
        lj.to_flax(bad)
    with pytest.raises(ValueError, match=r"params.layers\[0\]\[0\].b has shape \(12,\)"):
        lj.to_torch(lj.LSTMParams(((bad,),)))


# -------------------------------------------- single-layer weights, params_from_layers


def test_a_single_layer_weights_object_says_how_to_wrap_it():
    from flax import linen as nn

    xs = jax.random.normal(jax.random.key(2), (2, 5, 3))
    flax_rnn = nn.RNN(nn.LSTMCell(4))
    variables = flax_rnn.init(jax.random.key(0), xs)
    w = lj.from_flax(variables)
    with pytest.raises(TypeError, match=r"got LSTMWeights: one layer-direction's weights .*params_from_layers\(\[w\]\)"):
        lj.lstm(w, xs)
    ys, _ = lj.lstm(lj.params_from_layers([w]), xs)
    np.testing.assert_allclose(ys, flax_rnn.apply(variables, xs), atol=1e-5)
    with pytest.raises(TypeError, match=r"got GRUWeights: .*params_from_layers\(\[w\]\)"):
        lj.gru(lj.init_gru(jax.random.key(0), 3, 4).layers[0][0], xs)


@pytest.mark.parametrize(
    "params",
    [
        lj.init_lstm(jax.random.key(1), 3, 4, num_layers=3, bidirectional=True),
        lj.init_lstm(jax.random.key(2), 3, 6, num_layers=2, proj_size=2),
        lj.init_gru(jax.random.key(3), 3, 4, num_layers=2, bidirectional=True),
        lj.init_rnn(jax.random.key(4), 3, 4, num_layers=2),
    ],
    ids=["lstm-3-bi", "lstm-proj", "gru-bi", "rnn"],
)
def test_params_from_layers_rebuilds_the_network(params):
    _assert_trees_equal(lj.params_from_layers([list(layer) for layer in params.layers]), params)
    if len(params.layers[0]) == 1:  # one weights object per layer is a unidirectional layer
        _assert_trees_equal(lj.params_from_layers([layer[0] for layer in params.layers]), params)


def test_params_from_layers_stacks_converted_weights():
    p = lj.init_lstm(jax.random.key(0), 3, 4, num_layers=2, bidirectional=True)
    layers = [[lj.from_keras(lj.to_keras(w)) for w in layer] for layer in p.layers]
    _assert_trees_equal(lj.params_from_layers(layers), p)
    g = lj.init_gru(jax.random.key(1), 3, 4, num_layers=2)
    _assert_trees_equal(lj.params_from_layers([lj.from_keras(lj.to_keras(l[0])) for l in g.layers]), g)


def test_params_from_layers_checks_what_it_stacks():
    w0 = lj.init_lstm(jax.random.key(0), 3, 4).layers[0][0]
    w1 = lj.init_lstm(jax.random.key(1), 4, 4).layers[0][0]
    with pytest.raises(TypeError, match=r"for a single layer write params_from_layers\(\[w\]\)"):
        lj.params_from_layers(w0)
    with pytest.raises(ValueError, match=r"layers\[1\]\[0\].w_ih has shape \(3, 16\), expected \(4, 16\)"):
        lj.params_from_layers([w0, w0])
    with pytest.raises(ValueError, match=r"layers\[1\]\[0\].w_ih has shape \(4, 16\), expected \(8, 16\)"):
        lj.params_from_layers([[w0, w0], [w1, w1]])
    with pytest.raises(ValueError, match=r"layers\[1\] has 1 direction\(s\), expected 2"):
        lj.params_from_layers([[w0, w0], w1])
    g = lj.init_gru(jax.random.key(0), 4, 4).layers[0][0]
    with pytest.raises(TypeError, match=r"layers\[1\]\[0\] must be an LSTMWeights, got GRUWeights"):
        lj.params_from_layers([w0, g])
    with pytest.raises(ValueError, match="layers is empty"):
        lj.params_from_layers([])


# ------------------------------------------------------------ to_torch(tensors=True)


@pytest.mark.parametrize(
    "kind, kwargs",
    [("LSTM", dict(num_layers=2, bidirectional=True, proj_size=2)), ("GRU", dict(num_layers=2, bidirectional=True))],
)
def test_to_torch_tensors_load_into_torch_and_give_equal_outputs(kind, kwargs):
    torch = pytest.importorskip("torch")
    init = {"LSTM": lj.init_lstm, "GRU": lj.init_gru}[kind]
    run = {"LSTM": lj.lstm, "GRU": lj.gru}[kind]
    params = init(jax.random.key(0), 3, 5, **kwargs)
    module = getattr(torch.nn, kind)(3, 5, batch_first=True, **kwargs)
    state_dict = lj.to_torch(params, tensors=True)
    assert all(isinstance(v, torch.Tensor) for v in state_dict.values())
    module.load_state_dict(state_dict, strict=True)
    xs = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    with torch.no_grad():
        torch_ys, _ = module(torch.from_numpy(xs))
    ys, _ = run(params, jnp.asarray(xs))
    np.testing.assert_allclose(ys, torch_ys.numpy(), atol=1e-5)


def test_to_torch_tensors_keep_bfloat16():
    torch = pytest.importorskip("torch")
    params = lj.init_lstm(jax.random.key(0), 3, 4, dtype=jnp.bfloat16)
    state_dict = lj.to_torch(params, tensors=True)
    assert state_dict["weight_hh_l0"].dtype == torch.bfloat16
    np.testing.assert_array_equal(
        state_dict["weight_hh_l0"].float().numpy(), np.asarray(params.layers[0][0].w_hh, np.float32).T
    )
    _assert_trees_equal(lj.from_torch(state_dict), params)


def test_to_torch_tensors_without_torch_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'lstm_jax\[torch\]'"):
        lj.to_torch(lj.init_lstm(jax.random.key(0), 3, 4), tensors=True)
    assert isinstance(lj.to_torch(lj.init_lstm(jax.random.key(0), 3, 4))["weight_ih_l0"], np.ndarray)
