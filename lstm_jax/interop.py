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
from typing import Any, Mapping, Union

import jax.numpy as jnp
import numpy as np

from lstm_jax.params import (
    GRUParams,
    GRUWeights,
    LSTMParams,
    LSTMWeights,
    RNNParams,
    RNNWeights,
)

__all__ = ["from_torch", "to_torch", "from_flax", "to_flax", "from_keras", "to_keras"]

_TORCH_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _torch_layout(state_dict: Mapping[str, Any]) -> tuple[int, int]:
    """``(num_layers, num_directions)`` of a PyTorch RNN state dict."""
    layers, reverse = set(), False
    for name in state_dict:
        match = _TORCH_KEY.match(name)
        if match is None:
            raise ValueError(
                f"state_dict key {name!r} is not a PyTorch nn.LSTM/nn.GRU/nn.RNN parameter "
                "(expected names like 'weight_ih_l0' or 'bias_hh_l1_reverse')."
            )
        layers.add(int(match.group(2)))
        reverse |= match.group(3) is not None
    if not layers or layers != set(range(len(layers))):
        raise ValueError(f"state_dict has no complete set of layers: found layers {sorted(layers)}.")
    return len(layers), 2 if reverse else 1


def from_torch(state_dict: Mapping[str, Any]) -> Union[LSTMParams, GRUParams, RNNParams]:
    """Convert a PyTorch ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN`` state dict.

    The kind is recognised from shapes: ``weight_hr_l0`` (projection) or
    ``weight_hh_l0`` with 4 gate blocks is an LSTM, 3 a GRU, 1 an RNN. Missing
    biases (``bias=False``) become zeros. An ``nn.RNN``'s nonlinearity is not
    in its state dict: pass ``nonlinearity="relu"`` to ``lj.rnn`` if needed.

    Args:
      state_dict: mapping from PyTorch names to tensors or numpy arrays.

    Returns:
      ``LSTMParams``, ``GRUParams`` or ``RNNParams``.

    >>> import numpy as np
    >>> sd = {"weight_ih_l0": np.zeros((8, 3)), "weight_hh_l0": np.zeros((8, 2))}
    >>> type(from_torch(sd)).__name__
    'LSTMParams'
    """
    arrays = {name: _to_numpy(value) for name, value in state_dict.items()}
    num_layers, num_directions = _torch_layout(arrays)
    if "weight_hh_l0" not in arrays:
        raise ValueError("state_dict has no 'weight_hh_l0'.")
    rows, cols = arrays["weight_hh_l0"].shape
    if "weight_hr_l0" in arrays or rows == 4 * cols:
        kind = "lstm"
    elif rows == 3 * cols:
        kind = "gru"
    elif rows == cols:
        kind = "rnn"
    else:
        raise ValueError(
            f"weight_hh_l0 has shape {(rows, cols)}: not 4, 3 or 1 gate blocks of "
            "size hidden, so not an LSTM, GRU or RNN."
        )

    def direction(layer: int, suffix: str):
        tag = f"_l{layer}{suffix}"
        w_ih = arrays["weight_ih" + tag]
        w_hh = arrays["weight_hh" + tag]
        gates = w_ih.shape[0]
        zeros = np.zeros((gates,), w_ih.dtype)
        b_ih = arrays.get("bias_ih" + tag, zeros)
        b_hh = arrays.get("bias_hh" + tag, zeros)
        if kind == "lstm":
            w_hr = arrays.get("weight_hr" + tag)
            return LSTMWeights(
                w_ih=jnp.asarray(w_ih.T),
                w_hh=jnp.asarray(w_hh.T),
                b=jnp.asarray(b_ih + b_hh),
                w_hr=None if w_hr is None else jnp.asarray(w_hr.T),
            )
        if kind == "gru":
            return GRUWeights(
                jnp.asarray(w_ih.T), jnp.asarray(w_hh.T), jnp.asarray(b_ih), jnp.asarray(b_hh)
            )
        return RNNWeights(jnp.asarray(w_ih.T), jnp.asarray(w_hh.T), jnp.asarray(b_ih + b_hh))

    suffixes = ("", "_reverse")[:num_directions]
    layers = tuple(
        tuple(direction(layer, suffix) for suffix in suffixes) for layer in range(num_layers)
    )
    return {"lstm": LSTMParams, "gru": GRUParams, "rnn": RNNParams}[kind](layers)


def to_torch(params: Union[LSTMParams, GRUParams, RNNParams]) -> dict[str, np.ndarray]:
    """Convert params to a PyTorch state dict of numpy arrays (``torch.from_numpy`` each).

    LSTM and RNN biases are stored summed, so ``bias_ih`` holds the sum and
    ``bias_hh`` zeros. Peepholes and layer norm have no PyTorch counterpart.

    >>> import jax, lstm_jax as lj
    >>> sd = to_torch(lj.init_lstm(jax.random.key(0), 3, 2))
    >>> sorted(sd), sd["weight_ih_l0"].shape
    (['bias_hh_l0', 'bias_ih_l0', 'weight_hh_l0', 'weight_ih_l0'], (8, 3))
    """
    if not isinstance(params, (LSTMParams, GRUParams, RNNParams)):
        raise TypeError(
            f"params must be LSTMParams, GRUParams or RNNParams, got {type(params).__name__}."
        )
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
    return state_dict


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


def from_flax(cell_params: Mapping[str, Any]) -> Union[LSTMWeights, GRUWeights]:
    """Convert the params of a Flax linen ``LSTMCell``/``OptimizedLSTMCell`` or ``GRUCell``.

    Accepts the cell's own dict, or one wrapped as ``{'params': {'cell': ...}}``
    (what ``nn.RNN(cell).init`` returns). Returns one layer-direction's weights;
    wrap it as ``LSTMParams(((w,),))`` for :func:`lstm_jax.lstm`.
    """
    p = _unwrap_flax(cell_params)
    if "ii" in p:
        gates = _FLAX_LSTM_GATES
        return LSTMWeights(
            w_ih=jnp.asarray(np.concatenate([p["i" + g]["kernel"] for g in gates], axis=1)),
            w_hh=jnp.asarray(np.concatenate([p["h" + g]["kernel"] for g in gates], axis=1)),
            b=jnp.asarray(np.concatenate([p["h" + g]["bias"] for g in gates])),
        )
    if "ir" in p:
        gates = _FLAX_GRU_GATES
        zeros = np.zeros_like(np.asarray(p["ir"]["bias"]))
        return GRUWeights(
            w_ih=jnp.asarray(np.concatenate([p["i" + g]["kernel"] for g in gates], axis=1)),
            w_hh=jnp.asarray(np.concatenate([p["h" + g]["kernel"] for g in gates], axis=1)),
            b_ih=jnp.asarray(np.concatenate([p["i" + g]["bias"] for g in gates])),
            b_hh=jnp.asarray(np.concatenate([zeros, zeros, p["hn"]["bias"]])),
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
        if weights.w_hr is not None or weights.w_peep is not None or weights.ln is not None:
            raise ValueError("to_flax: Flax's LSTM cells have no projection, peepholes or layer norm.")
        out = {}
        for g, w_i, w_h, b in zip(
            _FLAX_LSTM_GATES, _split(weights.w_ih, 4), _split(weights.w_hh, 4), _split(weights.b, 4)
        ):
            out["i" + g] = {"kernel": w_i}
            out["h" + g] = {"kernel": w_h, "bias": b}
        return out
    if isinstance(weights, GRUWeights):
        b_hr, b_hz, b_hn = _split(weights.b_hh, 3)
        if np.any(b_hr != 0) or np.any(b_hz != 0):
            raise ValueError(
                "to_flax: Flax's GRUCell has no hidden bias on gates r and z; these are "
                "non-zero. Move them into b_ih first (the sum is what the cell uses)."
            )
        out = {}
        for g, w_i, w_h, b in zip(
            _FLAX_GRU_GATES, _split(weights.w_ih, 3), _split(weights.w_hh, 3), _split(weights.b_ih, 3)
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


def from_keras(weights: list) -> Union[LSTMWeights, GRUWeights]:
    """Convert Keras ``LSTM`` or ``GRU(reset_after=True)`` weights (``layer.get_weights()``).

    >>> import numpy as np
    >>> w = from_keras([np.zeros((3, 8)), np.zeros((2, 8)), np.zeros(8)])
    >>> w.w_hh.shape
    (2, 8)
    """
    if len(weights) != 3:
        raise ValueError(
            f"weights must be [kernel, recurrent_kernel, bias] from layer.get_weights(), "
            f"got a list of {len(weights)}."
        )
    kernel, recurrent, bias = (_to_numpy(w) for w in weights)
    rows, cols = recurrent.shape
    if cols == 4 * rows:
        return LSTMWeights(jnp.asarray(kernel), jnp.asarray(recurrent), jnp.asarray(bias))
    if cols == 3 * rows:
        if bias.shape != (2, cols):
            raise ValueError(
                f"Keras GRU bias must have shape (2, {cols}) (reset_after=True), got {bias.shape}."
            )
        return GRUWeights(
            jnp.asarray(_keras_gru_order(kernel)),
            jnp.asarray(_keras_gru_order(recurrent)),
            jnp.asarray(_keras_gru_order(bias[0])),
            jnp.asarray(_keras_gru_order(bias[1])),
        )
    raise ValueError(
        f"recurrent_kernel has shape {(rows, cols)}: expected (H, 4H) for LSTM or (H, 3H) for GRU."
    )


def to_keras(weights: Union[LSTMWeights, GRUWeights]) -> list[np.ndarray]:
    """Convert one layer-direction's weights to a Keras ``set_weights`` list."""
    if isinstance(weights, LSTMWeights):
        if weights.w_hr is not None or weights.w_peep is not None or weights.ln is not None:
            raise ValueError("to_keras: Keras' LSTM has no projection, peepholes or layer norm.")
        return [np.asarray(weights.w_ih), np.asarray(weights.w_hh), np.asarray(weights.b)]
    if isinstance(weights, GRUWeights):
        bias = np.stack([np.asarray(weights.b_ih), np.asarray(weights.b_hh)])
        return [
            _keras_gru_order(weights.w_ih),
            _keras_gru_order(weights.w_hh),
            _keras_gru_order(bias),
        ]
    raise TypeError(f"weights must be LSTMWeights or GRUWeights, got {type(weights).__name__}.")
