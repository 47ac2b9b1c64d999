"""ONNX export (run in onnxruntime against lj.lstm / gru / rnn) and import (from_onnx)."""

from __future__ import annotations

import io
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

I, H = 3, 5
CELLS = {
    "lstm": (lj.init_lstm, lj.lstm),
    "gru": (lj.init_gru, lj.gru),
    "rnn": (lj.init_rnn, lj.rnn),
}


def _session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a shared 2-core machine
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _inputs(batch, steps, seed=1):
    xs = np.asarray(jax.random.normal(jax.random.key(seed), (batch, steps, I)), np.float32)
    lengths = (np.arange(batch, dtype=np.int32) * 3) % steps + 1  # ragged, 1..steps
    lengths[0] = steps
    return xs, lengths


def _expected(kind, fn, params, xs, lengths, **kwargs):
    ys, state = fn(params, jnp.asarray(xs), seq_lengths=jnp.asarray(lengths), **kwargs)
    return [ys, *state] if kind == "lstm" else [ys, state]


def _assert_matches(got, expected, lengths):
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, np.asarray(b), atol=2e-6, rtol=2e-6)
    steps = got[0].shape[1]
    padded = np.arange(steps)[None, :] >= lengths[:, None]  # [B, T]
    assert np.all(got[0][padded] == 0.0)  # exactly zero, as the contract says


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)], ids=["1x1", "2x2"])
def test_onnxruntime_matches_lstm_jax(kind, num_layers, bidirectional):
    """Ragged batches; one model for several batch and time sizes."""
    init, fn = CELLS[kind]
    params = init(jax.random.key(0), I, H, num_layers=num_layers, bidirectional=bidirectional)
    model = lj.to_onnx(params)
    assert [n.op_type for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN")] == (
        [kind.upper()] * num_layers
    )
    session = _session(model)
    for batch, steps in ((4, 7), (1, 1), (6, 3)):
        xs, lengths = _inputs(batch, steps, seed=batch)
        got = session.run(None, {"xs": xs, "seq_lengths": lengths})
        _assert_matches(got, _expected(kind, fn, params, xs, lengths), lengths)


@pytest.mark.parametrize("kind", list(CELLS))
def test_initial_state(kind):
    init, fn = CELLS[kind]
    params = init(jax.random.key(0), I, H, num_layers=2, bidirectional=True)
    model = lj.to_onnx(params, initial_state=True)
    xs, lengths = _inputs(3, 6)
    keys = jax.random.split(jax.random.key(2), 2)
    h0, c0 = (np.asarray(jax.random.normal(k, (4, 3, H)), np.float32) for k in keys)
    feeds = {"xs": xs, "seq_lengths": lengths, "h_0": h0}
    if kind == "lstm":
        feeds["c_0"] = c0
        state = lj.LSTMState(jnp.asarray(h0), jnp.asarray(c0))
    else:
        state = jnp.asarray(h0)
    got = _session(model).run(None, feeds)
    _assert_matches(got, _expected(kind, fn, params, xs, lengths, initial_state=state), lengths)


def test_lstm_peepholes_and_relu_rnn():
    xs, lengths = _inputs(3, 6)
    params = lj.init_lstm(jax.random.key(0), I, H, num_layers=2, bidirectional=True, peephole=True)
    got = _session(lj.to_onnx(params)).run(None, {"xs": xs, "seq_lengths": lengths})
    _assert_matches(got, _expected("lstm", lj.lstm, params, xs, lengths), lengths)

    params = lj.init_rnn(jax.random.key(0), I, H, num_layers=2, bidirectional=True)
    model = lj.to_onnx(params, nonlinearity="relu")
    got = _session(model).run(None, {"xs": xs, "seq_lengths": lengths})
    _assert_matches(
        got, _expected("rnn", lj.rnn, params, xs, lengths, nonlinearity="relu"), lengths
    )
    back = lj.from_onnx(model, nonlinearity="relu")
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, back, params))
    with pytest.raises(
        ValueError,
        match=r"activations \['relu', 'relu'\], expected \['tanh', 'tanh'\] "
        r"\(pass nonlinearity='relu'",
    ):
        lj.from_onnx(model)


def test_graph_interface():
    params = lj.init_lstm(jax.random.key(0), I, H, num_layers=2, bidirectional=True)

    def dims(values):
        return {
            v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in values
        }

    model = lj.to_onnx(params, initial_state=True)
    assert dims(model.graph.input) == {
        "xs": ["batch", "time", I],
        "seq_lengths": ["batch"],
        "h_0": [4, "batch", H],
        "c_0": [4, "batch", H],
    }
    assert dims(model.graph.output) == {
        "ys": ["batch", "time", 2 * H],
        "h_n": [4, "batch", H],
        "c_n": [4, "batch", H],
    }
    assert model.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert model.opset_import[0].version == lj.onnx_interop.OPSET


@pytest.mark.parametrize("kind", list(CELLS))
def test_from_onnx_inverts_to_onnx(kind, tmp_path):
    """From the model, its bytes or its file, with or without the initial-state inputs."""
    init, _ = CELLS[kind]
    params = init(jax.random.key(0), I, H, num_layers=3, bidirectional=True)
    if kind == "lstm":
        params = lj.init_lstm(
            jax.random.key(0), I, H, num_layers=3, bidirectional=True, peephole=True
        )
    model = lj.to_onnx(params)
    onnx.save(model, tmp_path / "model.onnx")
    sources = (model, model.SerializeToString(), tmp_path / "model.onnx",
               lj.to_onnx(params, initial_state=True))  # fmt: skip
    for source in sources:
        back = lj.from_onnx(source)
        assert type(back) is type(params)
        assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
        for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_variants_onnx_cannot_express_raise():
    with pytest.raises(
        ValueError, match=r"params.layers\[0\]\[0\] has a projection \(proj_size > 0, w_hr\)"
    ):
        lj.to_onnx(lj.init_lstm(jax.random.key(0), I, H, proj_size=2))
    with pytest.raises(ValueError, match=r"has layer norm \(layer_norm=True, ln\)"):
        lj.to_onnx(lj.init_lstm(jax.random.key(0), I, H, layer_norm=True))
    with pytest.raises(ValueError, match="nonlinearity='relu' applies to RNNParams only"):
        lj.to_onnx(lj.init_gru(jax.random.key(0), I, H), nonlinearity="relu")
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        lj.to_onnx(lj.init_rnn(jax.random.key(0), I, H), nonlinearity="gelu")
    with pytest.raises(TypeError, match="params must be LSTMParams, GRUParams or RNNParams"):
        lj.to_onnx({"w": np.zeros(3)})


# ------------------------------------------------------------------ from PyTorch


def _torch_onnx(module, steps=5):
    """``torch.onnx.export`` of ``module`` with the TorchScript exporter (offline: the dynamo
    exporter of torch 2.13 needs onnxscript)."""
    torch = pytest.importorskip("torch")
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(2, steps, module.input_size),),
            f,
            dynamo=False,
            input_names=["xs"],
            dynamic_axes={"xs": {0: "batch", 1: "time"}},
        )
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_from_onnx_of_torch_export_equals_from_torch(name):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = getattr(torch.nn, name)(I, H, num_layers=2, bidirectional=True, batch_first=True)
    model = _torch_onnx(module)
    got, want = lj.from_onnx(model), lj.from_torch(module.state_dict())
    assert type(got) is type(want)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------- import errors


def _model(nodes, initializers, inputs=("xs",)):
    helper = onnx.helper
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in inputs],
        [
            helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, None)
            for n in nodes[-1:]
        ],
        [onnx.numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    return helper.make_model(graph)


def _lstm_node(x="xs", y="y", w="W", r="R", name="lstm", **attrs):
    return onnx.helper.make_node("LSTM", [x, w, r], [y], name=name, hidden_size=H, **attrs)


def _lstm_weights(inputs=I, suffix=""):
    return {
        "W" + suffix: np.zeros((1, 4 * H, inputs), np.float32),
        "R" + suffix: np.zeros((1, 4 * H, H), np.float32),
    }


def test_from_onnx_errors():
    with pytest.raises(ValueError, match=r"no LSTM, GRU or RNN node; its operators: \['Relu'\]"):
        lj.from_onnx(_model([onnx.helper.make_node("Relu", ["xs"], ["y"])], {}))
    with pytest.raises(TypeError, match="model must be an onnx.ModelProto"):
        lj.from_onnx(42)
    wide = _lstm_weights()
    wide["W"] = np.zeros((1, 4 * H, I + 1), np.float32)
    assert lj.from_onnx(_model([_lstm_node()], wide)).layers[0][0].w_ih.shape == (I + 1, 4 * H)
    bad = _lstm_weights()
    bad["R"] = np.zeros((1, 4 * H, H + 1), np.float32)
    with pytest.raises(
        ValueError,
        match=r"R has shape \(1, 20, 6\), expected \(1, 20, 5\) = "
        r"\(num_directions, 4 \* hidden_size, hidden_size\)",
    ):
        lj.from_onnx(_model([_lstm_node()], bad))
    with pytest.raises(ValueError, match=r"'lstm' \(layer 0\)'s W input 'W' is not an initializer"):
        lj.from_onnx(_model([_lstm_node()], {"R": _lstm_weights()["R"]}, inputs=("xs", "W")))
    two = {**_lstm_weights(), **_lstm_weights(H, "1")}
    separate = [_lstm_node(), _lstm_node(x="xs", y="y1", w="W1", r="R1", name="other")]
    with pytest.raises(ValueError, match="not computed from the output Y of the node before it"):
        lj.from_onnx(_model(separate, two))
    wrong_input = {**_lstm_weights(), **_lstm_weights(H + 1, "1")}
    stacked = [_lstm_node(), _lstm_node(x="y", y="y1", w="W1", r="R1", name="top")]
    lj.from_onnx(_model(stacked, two))  # the same stack with fitting weights loads
    with pytest.raises(
        ValueError,
        match=r"'top' \(layer 1\).*W has shape \(1, 20, 6\), expected "
        r"\(1, 20, 5\) = .*the layer below's num_directions",
    ):
        lj.from_onnx(_model(stacked, wrong_input))
    for attrs, message in (
        (dict(direction="reverse"), "direction='reverse'"),
        (dict(clip=3.0), "the attribute clip"),
        (dict(input_forget=1), "input_forget=1"),
        (dict(activations=["Sigmoid", "Tanh", "Relu"]), "activations"),
    ):
        with pytest.raises(ValueError, match=message):
            lj.from_onnx(_model([_lstm_node(**attrs)], _lstm_weights()))
    gru = onnx.helper.make_node("GRU", ["xs", "W", "R"], ["y"], name="gru", hidden_size=H)
    gru_weights = {
        "W": np.zeros((1, 3 * H, I), np.float32),
        "R": np.zeros((1, 3 * H, H), np.float32),
    }
    with pytest.raises(ValueError, match="linear_before_reset=0"):
        lj.from_onnx(_model([gru], gru_weights))
    mixed = [
        _lstm_node(),
        onnx.helper.make_node(
            "GRU", ["y", "W1", "R1"], ["y1"], hidden_size=H, linear_before_reset=1
        ),
    ]
    with pytest.raises(ValueError, match=r"mixes recurrent operators \['LSTM', 'GRU'\]"):
        lj.from_onnx(_model(mixed, {**_lstm_weights(), **gru_weights}))
    with pytest.raises(ValueError, match="nonlinearity='relu' applies to RNN nodes only"):
        lj.from_onnx(_model([_lstm_node()], _lstm_weights()), nonlinearity="relu")
