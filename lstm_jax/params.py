"""Parameter and state pytrees, and their initialisers.

Notation used in shapes throughout the package:
  B = batch, T = time, I = input features, H = hidden units,
  P = projection size (LSTMP), R = size of the recurrent input (P or H),
  L = layers, D = directions (1 or 2).

Every container here is a ``NamedTuple`` of arrays (optional parts are
``None``, which is an empty pytree), so ``jax.tree_util.tree_map``,
``optax`` and ``orbax`` see arrays only. Sizes are read off array shapes.

Weights are stored input-major (``x @ w``). Gate order along every gate axis:
LSTM i, f, g, o; GRU r, z, n (both as in PyTorch / cuDNN).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax import validation

__all__ = [
    "LayerNormWeights",
    "LSTMWeights",
    "LSTMParams",
    "LSTMState",
    "GRUWeights",
    "GRUParams",
    "RNNWeights",
    "RNNParams",
    "AnyParams",
    "AnyWeights",
    "init_lstm",
    "init_gru",
    "init_rnn",
    "params_from_layers",
]


class LayerNormWeights(NamedTuple):
    """Layer-norm gains of a layer-normalised LSTM (Ba et al. 2016)."""

    ih_scale: Array  # (4H,) gain of LN(x @ w_ih)
    hh_scale: Array  # (4H,) gain of LN(h @ w_hh)
    c_scale: Array  # (H,) gain of LN(c) before the output tanh
    c_offset: Array  # (H,) offset of LN(c)


class LSTMWeights(NamedTuple):
    """One direction of one LSTM layer."""

    w_ih: Array  # (I, 4H)
    w_hh: Array  # (R, 4H); R = P with a projection, else H
    b: Array  # (4H,) the sum of PyTorch's b_ih and b_hh
    w_hr: Optional[Array] = None  # (H, P) output projection (LSTMP)
    w_peep: Optional[Array] = None  # (3, H) peepholes onto gates i, f, o
    ln: Optional[LayerNormWeights] = None


class LSTMParams(NamedTuple):
    """``layers[layer][direction]`` is an :class:`LSTMWeights`."""

    layers: tuple[tuple[LSTMWeights, ...], ...]


class LSTMState(NamedTuple):
    """Final or initial state, laid out like PyTorch's ``(h_n, c_n)``."""

    h: Array  # (L * D, B, R)
    c: Array  # (L * D, B, H)


class GRUWeights(NamedTuple):
    """One direction of one GRU layer (PyTorch semantics, gates r, z, n)."""

    w_ih: Array  # (I, 3H)
    w_hh: Array  # (H, 3H)
    b_ih: Array  # (3H,)
    b_hh: Array  # (3H,) kept apart: the n gate applies r to (h @ w_hn + b_hn)


class GRUParams(NamedTuple):
    layers: tuple[tuple[GRUWeights, ...], ...]


class RNNWeights(NamedTuple):
    """One direction of one Elman RNN layer."""

    w_ih: Array  # (I, H)
    w_hh: Array  # (H, H)
    b: Array  # (H,) the sum of PyTorch's b_ih and b_hh


class RNNParams(NamedTuple):
    layers: tuple[tuple[RNNWeights, ...], ...]


AnyParams = Union[LSTMParams, GRUParams, RNNParams]  # a network's params, any cell
AnyWeights = Union[LSTMWeights, GRUWeights, RNNWeights]  # one layer-direction, any cell


_INITIALISERS = ("uniform", "orthogonal")


def _check_init(key, input_size, hidden_size, num_layers, proj_size=0):
    """Check the common initialiser arguments; sizes come back as Python ints."""
    validation.check_key(key)
    sizes = tuple(
        validation.check_size(name, value, lowest)
        for name, value, lowest in (
            ("input_size", input_size, 1),
            ("hidden_size", hidden_size, 1),
            ("num_layers", num_layers, 1),
            ("proj_size", proj_size, 0),
        )
    )
    if sizes[3] >= sizes[1]:
        raise ValueError(
            f"proj_size must be smaller than hidden_size ({sizes[1]}), got {sizes[3]}."
        )
    return sizes


def _check_initialiser(recurrent_init):
    if recurrent_init not in _INITIALISERS:
        raise ValueError(
            f"recurrent_init must be one of {_INITIALISERS}, got {recurrent_init!r}."
        )


def _uniform(key, shape, bound, dtype):
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _recurrent(key, shape, num_gates, bound, recurrent_init, dtype):
    """(R, G*H) recurrent matrix: uniform, or one orthogonal block per gate."""
    if recurrent_init == "uniform":
        return _uniform(key, shape, bound, dtype)
    rows, cols = shape
    hidden = cols // num_gates
    orthogonal = jax.nn.initializers.orthogonal()
    blocks = [orthogonal(k, (rows, hidden), dtype) for k in jax.random.split(key, num_gates)]
    return jnp.concatenate(blocks, axis=1)


def _build_layers(key, input_size, output_size, num_layers, bidirectional, make_direction):
    """``layers[l][d] = make_direction(key, layer_input_size)`` for every layer and direction."""
    num_directions = 2 if bidirectional else 1
    sizes = [input_size] + [output_size * num_directions] * (num_layers - 1)
    return tuple(
        tuple(make_direction(k, layer_input) for k in jax.random.split(layer_key, num_directions))
        for layer_key, layer_input in zip(jax.random.split(key, num_layers), sizes)
    )


def init_lstm(
    key: Array,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    proj_size: int = 0,
    peephole: bool = False,
    layer_norm: bool = False,
    forget_bias: float = 1.0,
    recurrent_init: str = "uniform",
    dtype=jnp.float32,
) -> LSTMParams:
    """Initialise a (stacked, optionally bidirectional) LSTM.

    Weights are drawn like PyTorch's, uniform in ``±1/sqrt(H)``; with
    ``recurrent_init="orthogonal"`` each gate's block of ``w_hh`` is orthogonal.
    ``forget_bias`` is added to the forget-gate bias (Jozefowicz et al. 2015).

    Args:
      key: PRNG key.
      input_size: I, features of the input.
      hidden_size: H, units of the cell state.
      num_layers: stacked layers, >= 1.
      bidirectional: add a right-to-left direction to every layer.
      proj_size: P > 0 projects the output ``h`` to P features (PyTorch LSTMP).
      peephole: add peephole connections from ``c`` to gates i, f, o.
      layer_norm: layer-normalise both gate projections and the cell state.
      forget_bias: constant added to the forget-gate bias.
      recurrent_init: ``"uniform"`` or ``"orthogonal"``.
      dtype: parameter dtype.

    Returns:
      An :class:`LSTMParams`.

    >>> params = init_lstm(jax.random.key(0), 3, 8, num_layers=2)
    >>> params.layers[1][0].w_ih.shape
    (8, 32)
    """
    input_size, hidden_size, num_layers, proj_size = _check_init(
        key, input_size, hidden_size, num_layers, proj_size
    )
    _check_initialiser(recurrent_init)
    output_size = proj_size or hidden_size
    bound = 1.0 / math.sqrt(hidden_size)

    def make_direction(key, layer_input):
        k_ih, k_hh, k_b, k_hr, k_peep = jax.random.split(key, 5)
        b = _uniform(k_b, (4 * hidden_size,), bound, dtype)
        ln = None
        if layer_norm:
            ones4, ones = jnp.ones((4 * hidden_size,), dtype), jnp.ones((hidden_size,), dtype)
            ln = LayerNormWeights(ones4, ones4, ones, jnp.zeros((hidden_size,), dtype))
        return LSTMWeights(
            w_ih=_uniform(k_ih, (layer_input, 4 * hidden_size), bound, dtype),
            w_hh=_recurrent(k_hh, (output_size, 4 * hidden_size), 4, bound, recurrent_init, dtype),
            b=b.at[hidden_size : 2 * hidden_size].add(forget_bias),
            w_hr=_uniform(k_hr, (hidden_size, proj_size), bound, dtype) if proj_size else None,
            w_peep=_uniform(k_peep, (3, hidden_size), bound, dtype) if peephole else None,
            ln=ln,
        )

    return LSTMParams(
        _build_layers(key, input_size, output_size, num_layers, bidirectional, make_direction)
    )


def init_gru(
    key: Array,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    recurrent_init: str = "uniform",
    dtype=jnp.float32,
) -> GRUParams:
    """Initialise a GRU like PyTorch's ``nn.GRU`` (uniform in ``±1/sqrt(H)``).

    >>> init_gru(jax.random.key(0), 3, 8).layers[0][0].w_hh.shape
    (8, 24)
    """
    input_size, hidden_size, num_layers, _ = _check_init(key, input_size, hidden_size, num_layers)
    _check_initialiser(recurrent_init)
    bound = 1.0 / math.sqrt(hidden_size)

    def make_direction(key, layer_input):
        k_ih, k_hh, k_bi, k_bh = jax.random.split(key, 4)
        return GRUWeights(
            w_ih=_uniform(k_ih, (layer_input, 3 * hidden_size), bound, dtype),
            w_hh=_recurrent(k_hh, (hidden_size, 3 * hidden_size), 3, bound, recurrent_init, dtype),
            b_ih=_uniform(k_bi, (3 * hidden_size,), bound, dtype),
            b_hh=_uniform(k_bh, (3 * hidden_size,), bound, dtype),
        )

    return GRUParams(
        _build_layers(key, input_size, hidden_size, num_layers, bidirectional, make_direction)
    )


def init_rnn(
    key: Array,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    recurrent_init: str = "uniform",
    dtype=jnp.float32,
) -> RNNParams:
    """Initialise an Elman RNN like PyTorch's ``nn.RNN``.

    >>> init_rnn(jax.random.key(0), 3, 8).layers[0][0].w_hh.shape
    (8, 8)
    """
    input_size, hidden_size, num_layers, _ = _check_init(key, input_size, hidden_size, num_layers)
    _check_initialiser(recurrent_init)
    bound = 1.0 / math.sqrt(hidden_size)

    def make_direction(key, layer_input):
        k_ih, k_hh, k_b = jax.random.split(key, 3)
        return RNNWeights(
            w_ih=_uniform(k_ih, (layer_input, hidden_size), bound, dtype),
            w_hh=_recurrent(k_hh, (hidden_size, hidden_size), 1, bound, recurrent_init, dtype),
            b=_uniform(k_b, (hidden_size,), bound, dtype),
        )

    return RNNParams(
        _build_layers(key, input_size, hidden_size, num_layers, bidirectional, make_direction)
    )


_PARAMS_OF = {LSTMWeights: LSTMParams, GRUWeights: GRUParams, RNNWeights: RNNParams}
_WEIGHTS = tuple(_PARAMS_OF)


def _directions(layer: Any) -> Any:
    """One layer as a tuple of directions; anything else is left for the checks to name."""
    if isinstance(layer, _WEIGHTS):
        return (layer,)
    return tuple(layer) if isinstance(layer, (list, tuple)) else layer


def params_from_layers(layers: Sequence[Any]) -> AnyParams:
    """Build a network's params from per-layer (per-direction) weights, and check them.

    Each entry of ``layers`` is one layer: a weights object (one direction) or a
    sequence ``(forward, reverse)`` for a bidirectional layer. Weights from
    ``from_flax`` / ``from_keras`` / ``params.layers[l][d]`` fit directly. All
    entries must be of one kind and fit together (a layer's input size is
    ``num_directions * R`` of the layer below); errors name the entry, as in
    ``layers[1][0].w_ih has shape (3, 16), expected (4, 16) = ...``.

    Args:
      layers: ``[w0, w1, ...]`` or ``[[w0_fwd, w0_bwd], [w1_fwd, w1_bwd], ...]``.

    Returns:
      ``LSTMParams``, ``GRUParams`` or ``RNNParams``, by the weights' type.

    >>> w0 = init_lstm(jax.random.key(0), 3, 4).layers[0][0]
    >>> w1 = init_lstm(jax.random.key(1), 4, 4).layers[0][0]
    >>> [len(layer) for layer in params_from_layers([w0, w1]).layers]
    [1, 1]
    """
    if isinstance(layers, _WEIGHTS) or not isinstance(layers, (list, tuple)):
        raise TypeError(
            f"layers must be a list with one entry per layer, got {type(layers).__name__}; "
            "for a single layer write params_from_layers([w])."
        )
    if not layers:
        raise ValueError("layers is empty: a network needs at least one layer.")
    stacked = tuple(_directions(layer) for layer in layers)
    first = stacked[0][0] if isinstance(stacked[0], tuple) and stacked[0] else stacked[0]
    if not isinstance(first, _WEIGHTS):
        raise TypeError(
            "layers[0] must be LSTMWeights, GRUWeights or RNNWeights (or a list of 1 or 2 "
            f"of them), got {type(first).__name__}."
        )
    params = _PARAMS_OF[type(first)](stacked)
    validation.check_params(params, name="layers")
    return params
