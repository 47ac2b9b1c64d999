"""ONNX export and import through the standard ``LSTM``, ``GRU`` and ``RNN`` operators.

:func:`to_onnx` writes one ONNX recurrent node per layer (both directions in one
node, ``direction="bidirectional"``), so any runtime runs its own optimised RNN
kernel; :func:`from_onnx` reads such nodes back into params. ``onnx`` is
imported only when they are called (``pip install 'lstm_jax[onnx]'``).

ONNX layouts (operator spec, opset 14+), against ours (:mod:`lstm_jax.params`):

* ``W (D, G*H, I)``, ``R (D, G*H, H)``: output-major, so ours transposed.
* ``B (D, 2*G*H)`` is ``[Wb, Rb]``; our LSTM and RNN biases are one sum (written
  as ``Wb``, with ``Rb = 0``; read back as ``Wb + Rb``), our GRU keeps both.
* Gate order: LSTM ``i, o, f, c`` (ours ``i, f, g, o``); GRU ``z, r, h`` (ours
  ``r, z, n``) with ``linear_before_reset=1``, which is PyTorch's (and our)
  ``n = tanh(x @ w_in + b_in + r * (h @ w_hn + b_hn))``.
* ``P (D, 3H)``: peepholes in the order ``i, o, f`` (ours ``w_peep (3, H)``,
  ``i, f, o``), ``c_{t-1}`` onto i and f, ``c_t`` onto o, as ours.
* ``X (T, B, I)``, ``Y (T, D, B, H)``, ``Y_h`` / ``Y_c (D, B, H)``: the nodes
  stay time-major (``layout=0``; onnxruntime's CPU kernels reject ``layout=1``),
  and the graph transposes once at each end.

The graph's inputs and outputs follow the functional API's contract
(:func:`lstm_jax.lstm`): ``ys`` is zero at and past each sequence's length
(an explicit ``Where`` in the graph, whatever a runtime leaves there), ``h_n`` /
``c_n`` hold each sequence's state at its last valid step, and the reverse
direction runs over the valid part only (``sequence_lens``).
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from lstm_jax import validation
from lstm_jax._optional import require
from lstm_jax.params import AnyParams, GRUWeights, LSTMWeights, RNNWeights, params_from_layers

__all__ = ["OPSET", "to_onnx", "from_onnx"]

OPSET = 17  # the default ONNX domain's opset the exported graphs import
_IR_VERSION = 8  # the ONNX IR version of opset 17 (onnx 1.12); older runtimes load it

_KINDS = {LSTMWeights: "LSTM", GRUWeights: "GRU", RNNWeights: "RNN"}  # by a layer's weights
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# ONNX gate block k holds our block _TO_ONNX[kind][k]; _FROM_ONNX is the inverse.
_TO_ONNX = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}
_FROM_ONNX = {kind: tuple(int(k) for k in np.argsort(perm)) for kind, perm in _TO_ONNX.items()}
_PEEP_TO_ONNX = (0, 2, 1)  # ours i, f, o -> ONNX i, o, f (its own inverse)
# activations per direction that equal our cells (ONNX's defaults)
_ACTIVATIONS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh")}
_NONLINEARITIES = ("tanh", "relu")


def _reorder(a: np.ndarray, order: tuple, axis: int = -1) -> np.ndarray:
    """The gate blocks of ``a`` along ``axis`` in ``order`` (block k of the result is
    block ``order[k]`` of ``a``)."""
    blocks = np.split(a, len(order), axis=axis)
    return np.concatenate([blocks[k] for k in order], axis=axis)


def _onnx_weights(kind: str, directions: tuple) -> dict[str, np.ndarray]:
    """One layer's ``W, R, B`` (and ``P`` for peepholes) in ONNX layout, float32."""
    order = _TO_ONNX[kind]

    def f32(a):
        return np.asarray(a, np.float32)

    w = np.stack([_reorder(f32(d.w_ih), order).T for d in directions])  # [D, G*H, I]
    r = np.stack([_reorder(f32(d.w_hh), order).T for d in directions])  # [D, G*H, H]
    if kind == "GRU":
        b = [np.concatenate([_reorder(f32(d.b_ih), order), _reorder(f32(d.b_hh), order)])
             for d in directions]  # fmt: skip
    else:
        b = [np.concatenate([_reorder(f32(d.b), order), np.zeros_like(f32(d.b))])
             for d in directions]  # fmt: skip
    weights = {"W": w, "R": r, "B": np.stack(b)}  # B: [D, 2*G*H]
    if kind == "LSTM" and any(d.w_peep is not None for d in directions):
        hidden = r.shape[-1]
        peep = [  # a direction without peepholes has zero ones
            np.zeros(3 * hidden, np.float32) if d.w_peep is None
            else f32(d.w_peep)[list(_PEEP_TO_ONNX)].reshape(-1)
            for d in directions
        ]  # fmt: skip
        weights["P"] = np.stack(peep)  # [D, 3H], gates i, o, f
    return weights


def _check_exportable(params: Any, kind: str, nonlinearity: str) -> None:
    if kind == "RNN":
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(
                f"nonlinearity must be one of {_NONLINEARITIES}, got {nonlinearity!r}."
            )
    elif nonlinearity != "tanh":
        raise ValueError(
            f"nonlinearity={nonlinearity!r} applies to RNNParams only; an {kind} has fixed "
            "activations."
        )
    if kind != "LSTM":
        return
    for layer, directions in enumerate(params.layers):
        for direction, w in enumerate(directions):
            name = f"params.layers[{layer}][{direction}]"
            if w.w_hr is not None:
                raise ValueError(
                    f"to_onnx: {name} has a projection (proj_size > 0, w_hr), which the ONNX "
                    "LSTM operator cannot express; export an LSTM without proj_size."
                )
            if w.ln is not None:
                raise ValueError(
                    f"to_onnx: {name} has layer norm (layer_norm=True, ln), which the ONNX "
                    "LSTM operator cannot express; export an LSTM without layer_norm."
                )


def to_onnx(
    params: AnyParams,
    *,
    initial_state: bool = False,
    nonlinearity: str = "tanh",
    graph_name: str = "lstm_jax",
) -> Any:
    """An ONNX model of the network: one standard ``LSTM``/``GRU``/``RNN`` node per layer.

    Inputs: ``xs`` float32 ``(B, T, I)`` with dynamic ``B`` and ``T``,
    ``seq_lengths`` int32 ``(B,)`` in ``1..T`` (pass ``T`` for every sequence
    when none is padded), and with ``initial_state=True`` also ``h_0``
    ``(L*D, B, H)`` (and ``c_0`` for the LSTM). Outputs: ``ys`` ``(B, T, D*H)``,
    ``h_n`` ``(L*D, B, H)`` and, for the LSTM, ``c_n``, with
    :func:`lstm_jax.lstm`'s semantics for ``seq_lengths``. Weights are stored
    as float32 initializers; the graph computes in float32. Peepholes become
    the LSTM node's ``P`` input; the GRU uses ``linear_before_reset=1``
    (PyTorch's). Opset :data:`OPSET`.

    Args:
      params: ``LSTMParams``, ``GRUParams`` or ``RNNParams`` (checked first).
      initial_state: add the ``h_0`` (and ``c_0``) inputs; else the state starts at zero.
      nonlinearity: the RNN's, ``"tanh"`` or ``"relu"`` (what you pass to ``lj.rnn``).
      graph_name: the ONNX graph's name.

    Returns:
      An ``onnx.ModelProto`` (``onnx.save(model, "model.onnx")`` writes it).

    Raises:
      ValueError: for an LSTM with a projection (``proj_size``) or layer norm,
        which the ONNX operator cannot express, or a nonlinearity other than
        the RNN's ``"tanh"`` / ``"relu"``.

    >>> import jax, numpy as np, lstm_jax as lj
    >>> import onnxruntime as ort
    >>> params = lj.init_lstm(jax.random.key(0), 3, 8, bidirectional=True)
    >>> model = lj.to_onnx(params)
    >>> session = ort.InferenceSession(model.SerializeToString())
    >>> xs, lengths = np.ones((2, 5, 3), np.float32), np.array([5, 2], np.int32)
    >>> ys, h_n, c_n = session.run(None, {"xs": xs, "seq_lengths": lengths})
    >>> ys.shape, h_n.shape
    ((2, 5, 16), (2, 2, 8))
    """
    onnx = require("onnx", "onnx", "lstm_jax.to_onnx")
    helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto
    sizes = validation.check_params(params)
    kind = _KINDS[type(params.layers[0][0])]
    _check_exportable(params, kind, nonlinearity)
    num_layers, num_directions = sizes.num_layers, sizes.num_directions
    hidden, inputs = sizes.hidden_size, sizes.input_size
    states = num_layers * num_directions
    direction = "bidirectional" if num_directions == 2 else "forward"

    nodes, initializers = [], []

    def const(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, ins: list, outs: list, **attrs) -> None:
        nodes.append(helper.make_node(op, ins, outs, name=f"{outs[0]}/{op}", **attrs))

    graph_inputs = [
        helper.make_tensor_value_info("xs", TensorProto.FLOAT, ["batch", "time", inputs]),
        helper.make_tensor_value_info("seq_lengths", TensorProto.INT32, ["batch"]),
    ]
    state_names = ["h"] + (["c"] if kind == "LSTM" else [])
    if initial_state:
        graph_inputs += [
            helper.make_tensor_value_info(f"{s}_0", TensorProto.FLOAT, [states, "batch", hidden])
            for s in state_names
        ]
    flat = const("shape_time_batch_flat", np.array([0, 0, -1], np.int64))  # [T, B, D*H]
    axis_0 = const("axis_0", np.array([0], np.int64)) if initial_state else None
    node("Transpose", ["xs"], ["xs_time_major"], perm=[1, 0, 2])  # [T, B, I]
    x = "xs_time_major"
    final = {s: [] for s in state_names}
    for layer, directions in enumerate(params.layers):
        weights = {k: const(f"{k}_l{layer}", v) for k, v in _onnx_weights(kind, directions).items()}
        initial = {s: "" for s in state_names}
        if initial_state:  # this layer's rows of h_0 (c_0): [D, B, H]
            start = const(f"start_l{layer}", np.array([layer * num_directions], np.int64))
            stop = const(f"stop_l{layer}", np.array([(layer + 1) * num_directions], np.int64))
            for s in state_names:
                node("Slice", [f"{s}_0", start, stop, axis_0], [f"{s}_0_l{layer}"])
                initial[s] = f"{s}_0_l{layer}"
        ins = [x, weights["W"], weights["R"], weights["B"], "seq_lengths", initial["h"]]
        attrs = dict(hidden_size=hidden, direction=direction)
        if kind == "LSTM":
            ins += [initial["c"], weights.get("P", "")]
        elif kind == "GRU":
            attrs["linear_before_reset"] = 1
        else:
            attrs["activations"] = [nonlinearity.capitalize()] * num_directions
        while ins[-1] == "":  # trailing optional inputs are left out
            ins.pop()
        outs = [f"y_l{layer}"] + [f"{s}_n_l{layer}" for s in state_names]
        node(kind, ins, outs, **attrs)  # y: [T, D, B, H]; h, c: [D, B, H]
        for s in state_names:
            final[s].append(f"{s}_n_l{layer}")
        if layer + 1 < num_layers:
            node("Transpose", [outs[0]], [f"y_l{layer}_tbdh"], perm=[0, 2, 1, 3])  # [T, B, D, H]
            node("Reshape", [f"y_l{layer}_tbdh", flat], [f"x_l{layer + 1}"])  # [T, B, D*H]
            x = f"x_l{layer + 1}"
    node("Transpose", [outs[0]], ["ys_btdh"], perm=[2, 0, 1, 3])  # [B, T, D, H]
    node("Reshape", ["ys_btdh", flat], ["ys_padded"])  # [B, T, D*H]
    # zero at and past each length: [B, T, 1] = range(T) < seq_lengths[:, None]
    node("Shape", ["xs"], ["xs_shape"])
    node("Gather", ["xs_shape", const("time_axis", np.array(1, np.int64))], ["time"], axis=0)
    node("Range", [const("zero_i64", np.array(0, np.int64)), "time",
                   const("one_i64", np.array(1, np.int64))], ["steps"])  # fmt: skip
    node("Cast", ["seq_lengths"], ["seq_lengths_i64"], to=TensorProto.INT64)
    node("Unsqueeze", ["seq_lengths_i64", const("axis_1", np.array([1], np.int64))], ["lengths_b1"])
    node("Less", ["steps", "lengths_b1"], ["valid_bt"])  # [B, T]
    node("Unsqueeze", ["valid_bt", const("axis_2", np.array([2], np.int64))], ["valid_bt1"])
    node("Where", ["valid_bt1", "ys_padded", const("zero_f32", np.array(0, np.float32))], ["ys"])
    graph_outputs = [helper.make_tensor_value_info(
        "ys", TensorProto.FLOAT, ["batch", "time", num_directions * hidden])]  # fmt: skip
    for s in state_names:
        if num_layers == 1:
            node("Identity", final[s], [f"{s}_n"])
        else:
            node("Concat", final[s], [f"{s}_n"], axis=0)  # [L*D, B, H], layer-major
        graph_outputs.append(
            helper.make_tensor_value_info(f"{s}_n", TensorProto.FLOAT, [states, "batch", hidden])
        )
    graph = helper.make_graph(nodes, graph_name, graph_inputs, graph_outputs, initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=_IR_VERSION,
        producer_name="lstm_jax",
    )
    onnx.checker.check_model(model, full_check=True)  # shape inference included
    return model


# ----------------------------------------------------------------------- import


def _load_model(onnx: Any, model: Any) -> Any:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    raise TypeError(
        f"model must be an onnx.ModelProto, the bytes of one or a path to a .onnx file, got "
        f"{type(model).__name__}."
    )


def _constants(onnx: Any, graph: Any) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` nodes' tensors, by name."""
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    return values


def _depends_on(graph: Any, name: str, source: str) -> bool:
    """Whether tensor ``name`` is computed from tensor ``source``."""
    producer = {out: n for n in graph.node for out in n.output}
    todo, seen = [name], set()
    while todo:
        current = todo.pop()
        if current == source:
            return True
        if current in seen or current not in producer:
            continue
        seen.add(current)
        todo.extend(i for i in producer[current].input if i)
    return False


def _attributes(onnx: Any, n: Any) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_attributes(kind: str, label: str, attrs: dict, nonlinearity: str) -> int:
    """Reject what our cells do not compute; return the number of directions."""
    direction = _text(attrs.get("direction", "forward"))
    if direction not in ("forward", "bidirectional"):
        raise ValueError(
            f"{label} has direction={direction!r}: lstm_jax layers run forward, or both ways "
            "(bidirectional); a reverse-only layer has no counterpart."
        )
    num_directions = 2 if direction == "bidirectional" else 1
    for name in ("clip", "activation_alpha", "activation_beta"):
        if name in attrs:
            raise ValueError(
                f"{label} has the attribute {name}, which lstm_jax's cells do not have."
            )
    if attrs.get("input_forget", 0):
        raise ValueError(
            f"{label} has input_forget=1 (coupled gates), which lstm_jax's LSTM has not."
        )
    if kind == "GRU" and attrs.get("linear_before_reset", 0) != 1:
        raise ValueError(
            f"{label} has linear_before_reset=0; lstm_jax's GRU (PyTorch's) applies the reset "
            "gate after the recurrent matmul, which is linear_before_reset=1."
        )
    expected = _ACTIVATIONS.get(kind, (nonlinearity,))
    activations = tuple(_text(a).lower() for a in attrs.get("activations", ()))
    if activations and activations != expected * num_directions:
        hint = " (pass nonlinearity='relu' for a ReLU RNN)" if kind == "RNN" else ""
        raise ValueError(
            f"{label} has activations {list(activations)}, expected "
            f"{list(expected * num_directions)}{hint}."
        )
    if kind == "RNN" and not activations and nonlinearity != "tanh":
        raise ValueError(f"{label} uses ONNX's default tanh, but nonlinearity={nonlinearity!r}.")
    return num_directions


def _node_weights(kind, label, n, constants, attrs, num_directions, input_size, dtype):
    """``W, R, B, P`` of node ``n`` (``B``, ``P`` possibly None), shapes checked."""
    gates = _GATES[kind]
    names = {"W": 1, "R": 2, "B": 3} | ({"P": 7} if kind == "LSTM" else {})
    arrays = {}
    for key, index in names.items():
        source = n.input[index] if len(n.input) > index else ""
        if not source:
            if key in ("W", "R"):
                raise ValueError(f"{label} has no {key} input.")
            arrays[key] = None
            continue
        if source not in constants:
            raise ValueError(
                f"{label}'s {key} input {source!r} is not an initializer or Constant: "
                "from_onnx reads weights stored in the model."
            )
        arrays[key] = constants[source]
    r = arrays["R"]
    if r.ndim != 3 or r.shape[1] % gates:
        raise ValueError(
            f"{label}: R has shape {r.shape}, expected (num_directions, {gates} * hidden_size, "
            "hidden_size)."
        )
    hidden = attrs.get("hidden_size", r.shape[2])
    if input_size is None:
        w_shape = arrays["W"].shape
        input_size = w_shape[2] if len(w_shape) == 3 else "input_size"
        input_label = "input_size"
    else:
        input_label = "the layer below's num_directions * hidden_size"
    d, g = num_directions, gates * hidden
    expected = {
        "W": ((d, g, input_size), f"(num_directions, {gates} * hidden_size, {input_label})"),
        "R": ((d, g, hidden), f"(num_directions, {gates} * hidden_size, hidden_size)"),
        "B": ((d, 2 * g), f"(num_directions, 2 * {gates} * hidden_size)"),
        "P": ((d, 3 * hidden), "(num_directions, 3 * hidden_size)"),
    }
    problems = [
        f"{key} has shape {a.shape}, expected {expected[key][0]} = {expected[key][1]}"
        for key, a in arrays.items()
        if a is not None and a.shape != expected[key][0]
    ]
    if problems:
        raise ValueError(
            f"{label} (hidden_size={hidden}, num_directions={d}): " + "; ".join(problems) + "."
        )
    for key, a in arrays.items():
        if a is None:
            continue
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"{label}: {key} has dtype {a.dtype}, expected a floating dtype.")
        if dtype is not None and a.dtype != dtype:
            raise TypeError(
                f"{label}: {key} has dtype {a.dtype}, expected {dtype} like the others."
            )
        dtype = a.dtype
    if arrays["B"] is None:
        arrays["B"] = np.zeros((d, 2 * g), dtype)
    return arrays, hidden, dtype


def _our_direction(kind: str, arrays: dict, k: int):
    order = _FROM_ONNX[kind]
    w_ih = jnp.asarray(_reorder(arrays["W"][k], order, axis=0).T)  # (I, G*H)
    w_hh = jnp.asarray(_reorder(arrays["R"][k], order, axis=0).T)  # (H, G*H)
    w_b, r_b = np.split(arrays["B"][k], 2)
    w_b, r_b = _reorder(w_b, order), _reorder(r_b, order)
    if kind == "GRU":
        return GRUWeights(w_ih, w_hh, jnp.asarray(w_b), jnp.asarray(r_b))
    if kind == "RNN":
        return RNNWeights(w_ih, w_hh, jnp.asarray(w_b + r_b))
    peep = None
    if arrays["P"] is not None:
        peep = jnp.asarray(arrays["P"][k].reshape(3, -1)[list(_PEEP_TO_ONNX)])  # (3, H): i, f, o
    return LSTMWeights(w_ih, w_hh, jnp.asarray(w_b + r_b), w_peep=peep)


def from_onnx(model: Any, *, nonlinearity: str = "tanh") -> AnyParams:
    """Params from an ONNX model whose recurrent layers are ``LSTM``, ``GRU`` or ``RNN`` nodes.

    The model's top-level ``LSTM``/``GRU``/``RNN`` nodes, in graph order, are
    the layers of one stack (e.g. a ``torch.onnx.export`` of an ``nn.LSTM``, or
    :func:`to_onnx`'s output): all of one kind, each layer's input computed
    from the layer below's output, weights (``W``, ``R``, optional ``B``, and
    ``P`` peepholes) stored in the model as initializers or ``Constant`` nodes.
    Checked strictly: a ``ValueError`` names the node and what is wrong (a
    shape against the expected one, an attribute lstm_jax does not compute:
    ``clip``, ``input_forget``, a reverse-only direction, other activations, a
    GRU with ``linear_before_reset=0``). Weights keep their dtype.

    Args:
      model: an ``onnx.ModelProto``, its serialised bytes, or a path to a ``.onnx`` file.
      nonlinearity: for an RNN, the nonlinearity you will pass to ``lj.rnn``
        (``"tanh"`` or ``"relu"``); the nodes' ``activations`` must match it.

    Returns:
      ``LSTMParams``, ``GRUParams`` or ``RNNParams``.

    >>> import jax, lstm_jax as lj
    >>> params = lj.init_gru(jax.random.key(0), 3, 8, num_layers=2)
    >>> back = lj.from_onnx(lj.to_onnx(params))
    >>> type(back).__name__, back.layers[1][0].w_ih.shape
    ('GRUParams', (8, 24))
    """
    onnx = require("onnx", "onnx", "lstm_jax.from_onnx")
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {_NONLINEARITIES}, got {nonlinearity!r}.")
    model = _load_model(onnx, model)
    graph = model.graph
    recurrent = [n for n in graph.node if n.op_type in _GATES and n.domain in ("", "ai.onnx")]
    if not recurrent:
        ops = sorted({n.op_type for n in graph.node})
        raise ValueError(f"the model has no LSTM, GRU or RNN node; its operators: {ops}.")
    kinds = [n.op_type for n in recurrent]
    if len(set(kinds)) > 1:
        raise ValueError(
            f"the model mixes recurrent operators {kinds}; lstm_jax params hold one kind."
        )
    kind = kinds[0]
    if kind != "RNN" and nonlinearity != "tanh":
        raise ValueError(f"nonlinearity={nonlinearity!r} applies to RNN nodes only, got {kind}.")
    constants = _constants(onnx, graph)
    layers, input_size, dtype, below = [], None, None, None
    for layer, n in enumerate(recurrent):
        label = f"{kind} node {n.name or n.output[0]!r} (layer {layer})"
        if below is not None and not _depends_on(graph, n.input[0], below.output[0]):
            raise ValueError(
                f"{label}: its input X is not computed from the output Y of the node before "
                f"it ({below.name or below.output[0]!r}): the graph holds separate recurrent "
                "networks, not one stack."
            )
        attrs = _attributes(onnx, n)
        num_directions = _check_attributes(kind, label, attrs, nonlinearity)
        if layers and num_directions != len(layers[0]):
            raise ValueError(
                f"{label} has {num_directions} direction(s), the first layer {len(layers[0])}."
            )
        arrays, hidden, dtype = _node_weights(
            kind, label, n, constants, attrs, num_directions, input_size, dtype
        )
        layers.append(tuple(_our_direction(kind, arrays, k) for k in range(num_directions)))
        input_size, below = num_directions * hidden, n
    return params_from_layers(layers)  # checks the stack once more, in our layout
