"""Weight converters to and from PyTorch, Flax linen and Keras.

None of these libraries is imported here: PyTorch tensors are read through
``.detach().cpu().numpy()`` when they have it, anything else through
``numpy.asarray``.

Layouts:

* PyTorch ``nn.LSTM``/``nn.GRU``/``nn.RNN`` state dicts store
  ``weight_ih_l{k}{_reverse}`` as ``(G*H, I)`` (output-major), two biases, and
  ``weight_hr_l{k}`` ``(P, H)`` for projections. Gate order i, f, g, o / r, z, n
  as ours; we store ``x @ w`` so every matrix is transposed, and the LSTM/RNN
  biases are summed (``to_torch`` returns the sum as ``bias_ih`` and zeros as
  ``bias_hh``, so ``from_torch(to_torch(p))`` is exact).
* Flax linen ``LSTMCell`` and ``OptimizedLSTMCell`` share one layout: per gate
  ``i{gate}/kernel (I, H)`` without bias and ``h{gate}/kernel (H, H)`` with
  ``h{gate}/bias``, gates ``i, f, g, o``. Flax's carry is ``(c, h)``, ours is
  ``(h, c)``. ``GRUCell``: ``i{r,z,n}`` with kernel and bias, ``h{r,z}`` kernel
  only, ``hn`` kernel and bias.
* Keras ``LSTM.get_weights()`` is ``[kernel (I, 4H), recurrent_kernel (H, 4H),
  bias (4H,)]`` with gate order i, f, c, o (= i, f, g, o). Keras ``GRU`` with
  ``reset_after=True`` is ``[kernel (I, 3H), recurrent_kernel (H, 3H),
  bias (2, 3H)]`` with gate order z, r, h.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

from lstm_jax import validation
from lstm_jax.params import AnyParams, GRUWeights, LSTMWeights, RNNWeights, params_from_layers

__all__ = ["from_torch", "to_torch", "from_flax", "to_flax", "from_keras", "to_keras"]

_TORCH_NAME = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")
# The same names at the end of a module's state dict key, e.g. "encoder.lstm.weight_ih_l0".
_TORCH_TAIL = re.compile(
    r"(?:^|\.)((?:weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l\d+(?:_reverse)?)$"
)
_TORCH_MODULES = {"lstm": "nn.LSTM", "gru": "nn.GRU", "rnn": "nn.RNN"}
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _to_numpy(value: Any, name: str = "value") -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16; float32 holds it exactly
            return value.float().numpy().astype(jnp.bfloat16)
        try:
            return value.numpy()
        except TypeError as error:
            raise TypeError(
                f"{name} is a tensor of dtype {value.dtype}, which numpy cannot hold ({error}); "
                "convert it to float32 first."
            ) from None
    return np.asarray(value)


def _check_arrays(
    arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple], what: str
) -> None:
    """Every array has its expected shape and all share one floating dtype.

    ``expected[name] = (shape, layout)``; every problem is listed in one ``ValueError``.
    """
    problems = [
        f"{name} has shape {arrays[name].shape}, expected {shape} = {layout}"
        for name, (shape, layout) in expected.items()
        if arrays[name].shape != shape
    ]
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems) + ".")
    first = next(iter(expected))
    for name in expected:
        dtype = arrays[name].dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{what}: {name} has dtype {dtype}, expected a floating dtype.")
        if dtype != arrays[first].dtype:
            raise TypeError(
                f"{what}: {name} has dtype {dtype}, expected {arrays[first].dtype} like "
                f"{first} (all arrays must share one dtype)."
            )


def _key_problems(found: Iterable[str], expected: Iterable[str], label=str) -> list[str]:
    """``['missing keys [...]', 'unexpected keys [...]']`` (only the non-empty ones)."""
    found, expected = list(found), list(expected)
    missing = [label(k) for k in expected if k not in found]
    unknown = [label(k) for k in found if k not in expected]
    return [
        f"{what} keys {keys}"
        for what, keys in (("missing", missing), ("unexpected", unknown))
        if keys
    ]


def _torch_prefix(names: list[str], prefix: Optional[str]) -> str:
    """The module prefix of the recurrent weights: given, or the single one found."""
    candidates = sorted({name[: m.start(1)] for name in names if (m := _TORCH_TAIL.search(name))})
    if prefix is not None:
        if prefix and not prefix.endswith("."):
            prefix += "."
        if not any(name.startswith(prefix) for name in names):
            raise ValueError(
                f"state_dict has no key starting with prefix={prefix!r}; recurrent weights "
                f"were found under the prefixes {candidates}."
            )
        return prefix
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError(
            "state_dict holds no PyTorch nn.LSTM/nn.GRU/nn.RNN parameter (names like "
            f"'weight_ih_l0', possibly under a module prefix like 'lstm.'); its keys: "
            f"{names[:8]}{' ...' if len(names) > 8 else ''}."
        )
    raise ValueError(
        f"state_dict holds recurrent weights under several prefixes {candidates}: pass "
        "prefix=... to choose one, e.g. from_torch(state_dict, prefix="
        f"{candidates[0]!r})."
    )


def _torch_kind(arrays: Mapping[str, np.ndarray], p: str) -> tuple[str, int, int]:
    """``(kind, hidden_size, output_size)`` from ``weight_hh_l0`` and any ``weight_hr_*``."""
    if "weight_hh_l0" not in arrays:
        raise ValueError(
            f"state_dict has no {p + 'weight_hh_l0'!r}, which tells an LSTM, GRU or RNN and its "
            f"hidden size apart; keys found: {sorted(p + k for k in arrays)}."
        )
    shape = arrays["weight_hh_l0"].shape
    if len(shape) != 2 or 0 in shape:
        raise ValueError(
            f"{p + 'weight_hh_l0'!r} has shape {shape}, expected a non-empty matrix "
            "(gates * hidden_size, hidden_size)."
        )
    rows, cols = shape
    if any(name.startswith("weight_hr") for name in arrays):
        if rows % 4 or not cols < rows // 4:
            raise ValueError(
                f"state_dict has weight_hr_* keys, which only a projection LSTM (proj_size > 0) "
                f"has, but {p + 'weight_hh_l0'!r} has shape {shape}: a projection LSTM's is "
                "(4 * hidden_size, proj_size) with proj_size < hidden_size."
            )
        return "lstm", rows // 4, cols
    for kind, gates in _GATES.items():
        if rows == gates * cols:
            return kind, cols, cols
    raise ValueError(
        f"{p + 'weight_hh_l0'!r} has shape {shape}: not 4, 3 or 1 gate blocks of "
        "size hidden, so not an LSTM, GRU or RNN."
    )


def from_torch(
    state_dict: Mapping[str, Any], *, prefix: Optional[str] = None
) -> AnyParams:
    """Convert a PyTorch ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN`` state dict.

    The kind is recognised from shapes: ``weight_hr_l*`` (projection) or
    ``weight_hh_l0`` with 4 gate blocks is an LSTM, 3 a GRU, 1 an RNN. The set of
    keys must be complete (every layer and direction; the biases of all or, for
    ``bias=False``, of none, which then become zeros) and every shape right:
    otherwise a ``ValueError`` lists the missing and unexpected keys, or each
    key with its shape and the expected one. Tensors of any floating dtype
    (bfloat16 included) keep their dtype. An ``nn.RNN``'s nonlinearity is not in
    its state dict: pass ``nonlinearity="relu"`` to ``lj.rnn`` if needed.

    Args:
      state_dict: mapping from PyTorch names to tensors or numpy arrays: the
        RNN module's own ``state_dict()``, or that of a model holding it.
      prefix: the RNN's key prefix in a model's state dict (``"lstm."`` for a
        submodule ``self.lstm``); keys outside it are ignored. Without it, the
        prefix is detected when exactly one module holds recurrent weights.

    Returns:
      ``LSTMParams``, ``GRUParams`` or ``RNNParams``.

    >>> import numpy as np
    >>> sd = {"weight_ih_l0": np.zeros((8, 3)), "weight_hh_l0": np.zeros((8, 2))}
    >>> type(from_torch(sd)).__name__
    'LSTMParams'
    >>> from_torch({"lstm.weight_ih_l0": np.zeros((8, 3)), "lstm.weight_hh_l0": np.zeros((8, 2)),
    ...             "fc.weight": np.zeros((1, 2))}).layers[0][0].w_hh.shape
    (2, 8)
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}."
        )
    p = _torch_prefix(list(state_dict), prefix)
    arrays = {
        name[len(p) :]: _to_numpy(value, repr(name))
        for name, value in state_dict.items()
        if name.startswith(p)
    }
    kind, hidden, out = _torch_kind(arrays, p)
    gates = _GATES[kind]
    matched = [m for m in map(_TORCH_NAME.match, arrays) if m]
    num_layers = 1 + max(int(m.group(2)) for m in matched)
    suffixes = ("", "_reverse") if any(m.group(3) for m in matched) else ("",)
    bias = any(m.group(1).startswith("bias") for m in matched)
    projection = out != hidden
    input_shape = arrays["weight_ih_l0"].shape if "weight_ih_l0" in arrays else ()
    input_size = input_shape[1] if len(input_shape) == 2 else "input_size"
    gate_rows = f"{gates} * hidden_size" if gates > 1 else "hidden_size"
    out_label = "proj_size" if projection else "hidden_size"
    expected = {}
    for layer in range(num_layers):
        if layer == 0:
            layer_input, input_label = input_size, "input_size"
        else:
            layer_input = len(suffixes) * out
            input_label = f"{len(suffixes)} * {out_label}" if len(suffixes) > 1 else out_label
        for suffix in suffixes:
            tag = f"_l{layer}{suffix}"
            expected["weight_ih" + tag] = (
                (gates * hidden, layer_input),
                f"({gate_rows}, {input_label})",
            )
            expected["weight_hh" + tag] = ((gates * hidden, out), f"({gate_rows}, {out_label})")
            if bias:
                expected["bias_ih" + tag] = ((gates * hidden,), f"({gate_rows},)")
                expected["bias_hh" + tag] = ((gates * hidden,), f"({gate_rows},)")
            if projection:
                expected["weight_hr" + tag] = ((out, hidden), "(proj_size, hidden_size)")
    module = (
        f"{_TORCH_MODULES[kind]}(input_size={input_size}, hidden_size={hidden}, "
        f"num_layers={num_layers}, bias={bias}, bidirectional={len(suffixes) == 2}"
        + (f", proj_size={out})" if projection else ")")
    )
    problems = _key_problems(arrays, expected, label=lambda k: p + k)
    if problems:
        raise ValueError(
            f"state_dict does not match the {module} that its keys and the shape of "
            f"{p + 'weight_hh_l0'!r} describe: " + "; ".join(problems) + "."
        )
    _check_arrays(
        {p + k: v for k, v in arrays.items()},
        {p + k: v for k, v in expected.items()},
        f"state_dict of {module}",
    )

    def direction(tag: str):
        w_ih, w_hh = arrays["weight_ih" + tag].T, arrays["weight_hh" + tag].T
        zeros = np.zeros((gates * hidden,), w_ih.dtype)
        b_ih = arrays.get("bias_ih" + tag, zeros)
        b_hh = arrays.get("bias_hh" + tag, zeros)
        if kind == "gru":
            return GRUWeights(*map(jnp.asarray, (w_ih, w_hh, b_ih, b_hh)))
        if kind == "rnn":
            return RNNWeights(*map(jnp.asarray, (w_ih, w_hh, b_ih + b_hh)))
        w_hr = arrays["weight_hr" + tag].T if projection else None
        return LSTMWeights(
            jnp.asarray(w_ih),
            jnp.asarray(w_hh),
            jnp.asarray(b_ih + b_hh),
            None if w_hr is None else jnp.asarray(w_hr),
        )

    layers = tuple(
        tuple(direction(f"_l{layer}{suffix}") for suffix in suffixes) for layer in range(num_layers)
    )
    return params_from_layers(layers)


def _torch_tensor(torch: Any, array: np.ndarray) -> Any:
    array = np.ascontiguousarray(array)
    if array.dtype == jnp.bfloat16:  # torch.from_numpy knows no bfloat16: share the bits
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def to_torch(
    params: AnyParams, *, tensors: bool = False
) -> dict[str, Any]:
    """Convert params to a PyTorch state dict under ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` names.

    LSTM and RNN biases are stored summed, so ``bias_ih`` holds the sum and
    ``bias_hh`` zeros. Peepholes and layer norm have no PyTorch counterpart.

    Args:
      params: ``LSTMParams``, ``GRUParams`` or ``RNNParams`` (checked first).
      tensors: return ``torch.Tensor`` values (same dtype, bfloat16 included),
        ready for ``module.load_state_dict``; needs PyTorch (the ``[torch]``
        extra). By default the values are numpy arrays and PyTorch is not needed.

    >>> import jax, lstm_jax as lj
    >>> sd = to_torch(lj.init_lstm(jax.random.key(0), 3, 2))
    >>> sorted(sd), sd["weight_ih_l0"].shape
    (['bias_hh_l0', 'bias_ih_l0', 'weight_hh_l0', 'weight_ih_l0'], (8, 3))
    """
    validation.check_params(params)
    state_dict = {}
    for layer, directions in enumerate(params.layers):
        for direction, w in enumerate(directions):
            tag = f"_l{layer}" + ("_reverse" if direction else "")
            state_dict["weight_ih" + tag] = np.array(w.w_ih).T
            state_dict["weight_hh" + tag] = np.array(w.w_hh).T
            if isinstance(w, GRUWeights):
                state_dict["bias_ih" + tag] = np.array(w.b_ih)
                state_dict["bias_hh" + tag] = np.array(w.b_hh)
                continue
            if isinstance(w, LSTMWeights) and (w.w_peep is not None or w.ln is not None):
                raise ValueError("to_torch: PyTorch's nn.LSTM has no peepholes or layer norm.")
            state_dict["bias_ih" + tag] = np.array(w.b)
            state_dict["bias_hh" + tag] = np.zeros_like(np.asarray(w.b))
            if isinstance(w, LSTMWeights) and w.w_hr is not None:
                state_dict["weight_hr" + tag] = np.array(w.w_hr).T
    if not tensors:
        return state_dict
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "to_torch(params, tensors=True) needs PyTorch: install the extra with "
            "`pip install 'lstm_jax[torch]'`, or call to_torch(params) for numpy arrays."
        ) from error
    return {name: _torch_tensor(torch, array) for name, array in state_dict.items()}


def _split(x: np.ndarray, parts: int) -> list[np.ndarray]:
    return np.split(np.asarray(x), parts, axis=-1)


_FLAX_LSTM_GATES = ("i", "f", "g", "o")
_FLAX_GRU_GATES = ("r", "z", "n")


def _unwrap_flax(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept ``{'params': {'cell': {...}}}``, ``{'cell': {...}}`` or the cell dict."""
    for key in ("params", "cell"):
        if key in params:
            params = params[key]
    return params


# Flax cell layouts: module -> {parameter: its shape's name}.
_FLAX_LSTM = {
    **{"i" + g: {"kernel": "input"} for g in _FLAX_LSTM_GATES},
    **{"h" + g: {"kernel": "hidden", "bias": "bias"} for g in _FLAX_LSTM_GATES},
}
_FLAX_GRU = {
    **{"i" + g: {"kernel": "input", "bias": "bias"} for g in _FLAX_GRU_GATES},
    "hr": {"kernel": "hidden"},
    "hz": {"kernel": "hidden"},
    "hn": {"kernel": "hidden", "bias": "bias"},
}


def _flax_arrays(p: Mapping[str, Any], layout: dict, cell: str) -> dict[str, np.ndarray]:
    """``{'ii/kernel': array, ...}``, after checking the keys and shapes against ``layout``."""
    what = f"cell_params of a Flax {cell}"
    problems = _key_problems(p, layout)
    for module, entries in layout.items():
        if module in p:
            if not isinstance(p[module], Mapping):
                got = type(p[module]).__name__
                raise TypeError(f"{what}: [{module!r}] must be a dict of arrays, got {got}.")
            problems += _key_problems(p[module], entries, label=lambda k, m=module: f"{m}/{k}")
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems) + ".")
    arrays = {f"{m}/{k}": _to_numpy(p[m][k]) for m, entries in layout.items() for k in entries}
    first = next(iter(layout)) + "/kernel"
    shape = arrays[first].shape
    if len(shape) != 2:
        raise ValueError(f"{what}: {first} has shape {shape}, expected (input_size, hidden_size).")
    inputs, hidden = shape
    shapes = {
        "input": ((inputs, hidden), "(input_size, hidden_size)"),
        "hidden": ((hidden, hidden), "(hidden_size, hidden_size)"),
        "bias": ((hidden,), "(hidden_size,)"),
    }
    expected = {
        f"{m}/{k}": shapes[kind] for m, entries in layout.items() for k, kind in entries.items()
    }
    _check_arrays(arrays, expected, what)
    return arrays


def from_flax(cell_params: Mapping[str, Any]) -> Union[LSTMWeights, GRUWeights]:
    """Convert the params of a Flax linen ``LSTMCell``/``OptimizedLSTMCell`` or ``GRUCell``.

    Accepts the cell's own dict, or one wrapped as ``{'params': {'cell': ...}}``
    (what ``nn.RNN(cell).init`` returns). Every gate's kernel (and bias) must be
    present with consistent shapes; a ``ValueError`` lists missing and unexpected
    entries or names the entry with the wrong shape. Returns one layer-direction's
    weights: pass it to :func:`lstm_jax.lstm_cell`, or build a network with
    ``lj.params_from_layers([w])`` (several layers: ``[w0, w1, ...]``).
    """
    if not isinstance(cell_params, Mapping):
        raise TypeError(
            f"cell_params must be a dict of Flax params, got {type(cell_params).__name__}."
        )
    p = _unwrap_flax(cell_params)
    if "ii" in p:
        a = _flax_arrays(p, _FLAX_LSTM, "LSTMCell")
        gates = _FLAX_LSTM_GATES
        return LSTMWeights(
            w_ih=jnp.asarray(np.concatenate([a[f"i{g}/kernel"] for g in gates], axis=1)),
            w_hh=jnp.asarray(np.concatenate([a[f"h{g}/kernel"] for g in gates], axis=1)),
            b=jnp.asarray(np.concatenate([a[f"h{g}/bias"] for g in gates])),
        )
    if "ir" in p:
        a = _flax_arrays(p, _FLAX_GRU, "GRUCell")
        gates = _FLAX_GRU_GATES
        zeros = np.zeros_like(a["hn/bias"])
        return GRUWeights(
            w_ih=jnp.asarray(np.concatenate([a[f"i{g}/kernel"] for g in gates], axis=1)),
            w_hh=jnp.asarray(np.concatenate([a[f"h{g}/kernel"] for g in gates], axis=1)),
            b_ih=jnp.asarray(np.concatenate([a[f"i{g}/bias"] for g in gates])),
            b_hh=jnp.asarray(np.concatenate([zeros, zeros, a["hn/bias"]])),
        )
    raise ValueError(
        f"cell_params has keys {sorted(p)}: not a Flax LSTMCell/OptimizedLSTMCell "
        "(keys ii, hi, ...) or GRUCell (keys ir, hr, ...)."
    )


def to_flax(weights: Union[LSTMWeights, GRUWeights]) -> dict:
    """Convert one layer-direction's weights to a Flax linen cell's ``params`` dict.

    The result is the cell's own dict; ``{'params': to_flax(w)}`` is what
    ``cell.apply`` takes and ``{'params': {'cell': to_flax(w)}}`` what
    ``nn.RNN(cell).apply`` takes. A GRU's r and z hidden biases must be zero to
    be representable (Flax has none); fold them first with
    ``b_ih + b_hh`` on those gates if they are not.
    """
    if isinstance(weights, LSTMWeights):
        validation.check_lstm_weights(weights, "weights")
        if weights.w_hr is not None or weights.w_peep is not None or weights.ln is not None:
            raise ValueError(
                "to_flax: Flax's LSTM cells have no projection, peepholes or layer norm."
            )
        out = {}
        for g, w_i, w_h, b in zip(
            _FLAX_LSTM_GATES, _split(weights.w_ih, 4), _split(weights.w_hh, 4), _split(weights.b, 4)
        ):
            out["i" + g] = {"kernel": w_i}
            out["h" + g] = {"kernel": w_h, "bias": b}
        return out
    if isinstance(weights, GRUWeights):
        validation.check_gru_weights(weights, "weights")
        b_hr, b_hz, b_hn = _split(weights.b_hh, 3)
        if np.any(b_hr != 0) or np.any(b_hz != 0):
            raise ValueError(
                "to_flax: Flax's GRUCell has no hidden bias on gates r and z; these are "
                "non-zero. Move them into b_ih first (the sum is what the cell uses)."
            )
        out = {}
        for g, w_i, w_h, b in zip(
            _FLAX_GRU_GATES,
            _split(weights.w_ih, 3),
            _split(weights.w_hh, 3),
            _split(weights.b_ih, 3),
        ):
            out["i" + g] = {"kernel": w_i, "bias": b}
            out["h" + g] = {"kernel": w_h}
        out["hn"]["bias"] = b_hn
        return out
    raise TypeError(f"weights must be LSTMWeights or GRUWeights, got {type(weights).__name__}.")


def _keras_gru_order(x: np.ndarray) -> np.ndarray:
    """Swap the first two gate blocks: Keras z, r, h <-> our r, z, n."""
    a, b, c = _split(x, 3)
    return np.concatenate([b, a, c], axis=-1)


def from_keras(weights: Sequence[Any]) -> Union[LSTMWeights, GRUWeights]:
    """Convert Keras ``LSTM`` or ``GRU(reset_after=True)`` weights (``layer.get_weights()``).

    The kind comes from ``recurrent_kernel`` ``(H, 4H)`` (LSTM) or ``(H, 3H)``
    (GRU); the kernel and bias must then have the matching shapes, or a
    ``ValueError`` names the entry, its shape and the expected one.

    >>> import numpy as np
    >>> w = from_keras([np.zeros((3, 8)), np.zeros((2, 8)), np.zeros(8)])
    >>> w.w_hh.shape
    (2, 8)
    """
    if not isinstance(weights, (list, tuple)):
        raise TypeError(
            "weights must be the list [kernel, recurrent_kernel, bias] from "
            f"layer.get_weights(), got {type(weights).__name__}."
        )
    if len(weights) != 3:
        raise ValueError(
            f"weights must be [kernel, recurrent_kernel, bias] from layer.get_weights(), "
            f"got a list of {len(weights)}."
        )
    names = ("weights[0] (kernel)", "weights[1] (recurrent_kernel)", "weights[2] (bias)")
    arrays = dict(zip(names, (_to_numpy(w, name) for w, name in zip(weights, names))))
    kernel, recurrent, bias = arrays.values()
    shape = recurrent.shape
    if len(shape) != 2 or shape[0] == 0 or shape[1] not in (4 * shape[0], 3 * shape[0]):
        raise ValueError(
            f"{names[1]} has shape {shape}: expected (H, 4H) for LSTM or (H, 3H) for GRU."
        )
    hidden, cols = shape
    cell = "LSTM" if cols == 4 * hidden else "GRU"
    gates_label = "4 * units" if cell == "LSTM" else "3 * units"
    inputs = kernel.shape[0] if kernel.ndim == 2 else "input_size"
    expected = {
        names[0]: ((inputs, cols), f"(input_size, {gates_label})"),
        names[1]: ((hidden, cols), f"(units, {gates_label})"),
        names[2]: ((cols,), f"({gates_label},)")
        if cell == "LSTM"
        else ((2, cols), f"(2, {gates_label})"),
    }
    if cell == "GRU" and bias.shape == (cols,):
        raise ValueError(
            f"{names[2]} has shape {bias.shape}: a Keras GRU with reset_after=False, whose "
            "equations differ from PyTorch's; only reset_after=True (bias (2, 3 * units)) converts."
        )
    _check_arrays(arrays, expected, f"Keras {cell} weights")
    if cell == "LSTM":
        return LSTMWeights(jnp.asarray(kernel), jnp.asarray(recurrent), jnp.asarray(bias))
    return GRUWeights(
        jnp.asarray(_keras_gru_order(kernel)),
        jnp.asarray(_keras_gru_order(recurrent)),
        jnp.asarray(_keras_gru_order(bias[0])),
        jnp.asarray(_keras_gru_order(bias[1])),
    )


def to_keras(weights: Union[LSTMWeights, GRUWeights]) -> list[np.ndarray]:
    """Convert one layer-direction's weights to a Keras ``set_weights`` list."""
    if isinstance(weights, LSTMWeights):
        validation.check_lstm_weights(weights, "weights")
        if weights.w_hr is not None or weights.w_peep is not None or weights.ln is not None:
            raise ValueError("to_keras: Keras' LSTM has no projection, peepholes or layer norm.")
        return [np.asarray(weights.w_ih), np.asarray(weights.w_hh), np.asarray(weights.b)]
    if isinstance(weights, GRUWeights):
        validation.check_gru_weights(weights, "weights")
        bias = np.stack([np.asarray(weights.b_ih), np.asarray(weights.b_hh)])
        return [
            _keras_gru_order(weights.w_ih),
            _keras_gru_order(weights.w_hh),
            _keras_gru_order(bias),
        ]
    raise TypeError(f"weights must be LSTMWeights or GRUWeights, got {type(weights).__name__}.")
