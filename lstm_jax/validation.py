"""Input checks shared by the public functions.

Every check runs at trace time on shapes and dtypes, and raises a
``ValueError`` or ``TypeError`` that names the argument, what was expected and
what was given. Values of traced arrays (``seq_lengths`` under ``jit``) cannot
be read at trace time; :func:`check_length_values` checks them when they are
concrete, and with ``checked=True`` inserts a ``checkify`` check otherwise.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

# A module import, not ``from ... import``: params.py imports this module too.
from lstm_jax import params as _p

_WEIGHTS_OF = {"LSTMParams": "LSTMWeights", "GRUParams": "GRUWeights", "RNNParams": "RNNWeights"}


def check_params_type(params: Any, expected: type, init_name: str) -> None:
    if isinstance(params, expected):
        return
    got = type(params).__name__
    hint = ""
    if got == _WEIGHTS_OF[expected.__name__]:
        hint = (
            f": one layer-direction's weights (what from_flax / from_keras return). "
            f"Wrap it with lstm_jax.params_from_layers([w]) (or {expected.__name__}(((w,),))); "
            f"several layers: params_from_layers([w0, w1]), bidirectional: "
            f"params_from_layers([[w_fwd, w_bwd], ...])"
        )
    raise TypeError(
        f"params must be a {expected.__name__} (from lstm_jax.{init_name} or "
        f"lstm_jax.from_torch), got {got}{hint}."
    )


def check_inputs(xs: Any, input_size: int) -> None:
    """``xs`` must be a floating array of rank 2 or 3 with ``input_size`` features."""
    shape = getattr(xs, "shape", None)
    if shape is None:
        raise TypeError(f"xs must be an array, got {type(xs).__name__}.")
    if len(shape) not in (2, 3):
        raise ValueError(
            "xs must have rank 3 (batch, time, features) or rank 2 (time, features), "
            f"got rank {len(shape)} with shape {tuple(shape)}."
        )
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"xs must have a floating dtype, got {xs.dtype}.")
    if shape[-1] != input_size:
        raise ValueError(
            f"xs has {shape[-1]} features (last axis) but the params expect "
            f"input_size={input_size}; xs has shape {tuple(shape)}."
        )


def check_num_steps(num_steps: int) -> None:
    if num_steps < 1:
        raise ValueError("xs has 0 time steps; at least 1 is required.")


def check_seq_lengths(seq_lengths: Any, batch: Optional[int]) -> None:
    """Shape ``(batch,)`` (or ``()`` for one unbatched sequence) and an integer dtype."""
    expected = () if batch is None else (batch,)
    if not hasattr(seq_lengths, "dtype"):
        seq_lengths = np.asarray(seq_lengths)
    shape = tuple(seq_lengths.shape)
    if shape != expected:
        raise ValueError(
            f"seq_lengths must have shape {expected} (one length per sequence), got {shape}."
        )
    if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
        raise TypeError(f"seq_lengths must have an integer dtype, got {seq_lengths.dtype}.")


def check_step_flags(name: str, flags: Any, expected: tuple, layout: str) -> None:
    """``resets`` / ``mask``: a bool array of shape ``expected`` (``layout`` names its axes)."""
    if not hasattr(flags, "dtype"):
        flags = np.asarray(flags)
    shape = tuple(flags.shape)
    if shape != tuple(expected):
        raise ValueError(
            f"{name} must have shape {tuple(expected)} {layout}, like xs's batch and time "
            f"axes, got {shape}."
        )
    if flags.dtype != np.bool_:
        raise TypeError(f"{name} must have dtype bool, got {flags.dtype}.")


def check_length_values(seq_lengths: jax.Array, num_steps: int, checked: bool) -> None:
    """Lengths must lie in ``1..num_steps``.

    Concrete lengths are always checked here. Traced lengths (under ``jit``) are
    checked only with ``checked=True``, through ``jax.experimental.checkify``:
    the caller then wraps the function in ``checkify.checkify`` and calls
    ``err.throw()`` on the error it returns.
    """
    message = f"seq_lengths must lie in 1..{num_steps} (the number of time steps)"
    if isinstance(seq_lengths, jax.core.Tracer):
        if checked:
            ok = jnp.all((seq_lengths >= 1) & (seq_lengths <= num_steps))
            checkify.check(ok, message + ", got {lengths}.", lengths=seq_lengths)
        return
    values = np.asarray(seq_lengths)
    if values.size and (values.min() < 1 or values.max() > num_steps):
        raise ValueError(f"{message}, got {values.tolist()}.")


def check_state(name: str, value: Any, expected_shape: tuple) -> None:
    shape = getattr(value, "shape", None)
    if shape is None:
        raise TypeError(
            f"{name} must be an array of shape {expected_shape}, got {type(value).__name__}."
        )
    if tuple(shape) != tuple(expected_shape):
        raise ValueError(
            f"{name} must have shape {tuple(expected_shape)} "
            "(num_layers * num_directions, batch, features), "
            f"got {tuple(shape)}."
        )


def check_rate(name: str, rate: float, key: Any) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {rate}.")
    if rate > 0.0 and key is None:
        raise ValueError(f"{name}={rate} needs a PRNG key: pass key=jax.random.key(...).")


def check_unroll(unroll: Any) -> None:
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be an integer >= 1, got {unroll!r}.")


# ------------------------------------------------------------ keys and sizes


def check_key(key: Any, name: str = "key") -> None:
    """``key`` must be one PRNG key: ``jax.random.key(seed)`` or ``jax.random.PRNGKey(seed)``."""
    shape, dtype = getattr(key, "shape", None), getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if tuple(shape) == ():
            return
        raise ValueError(
            f"{name} must be a single PRNG key (shape ()), got a key array of shape "
            f"{tuple(shape)}; index or split it first."
        )
    if dtype == np.uint32 and shape is not None and len(shape) == 1:
        return  # raw key data, as jax.random.PRNGKey returns
    if shape is None or shape == ():
        got = f"{type(key).__name__} {key!r}"
    else:
        got = f"an array of shape {tuple(shape)} and dtype {dtype}"
    raise TypeError(
        f"{name} must be a PRNG key from jax.random.key(seed) (or jax.random.PRNGKey(seed)), "
        f"got {got}."
    )


def check_size(name: str, value: Any, lowest: int) -> int:
    """An integer (Python or numpy, not bool) ``>= lowest``, returned as a Python int."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or value < lowest
    ):
        raise ValueError(f"{name} must be an integer >= {lowest}, got {value!r}.")
    return int(value)


# ------------------------------------------------------------------- params


class NetworkSizes(NamedTuple):
    """Sizes read off validated params (notation of :mod:`lstm_jax.params`)."""

    num_layers: int  # L
    num_directions: int  # D
    input_size: int  # I
    hidden_size: int  # H
    output_size: int  # R: P with a projection, else H
    dtype: Any


class _Expected(NamedTuple):
    """What one layer-direction's weights must match, and where it was read."""

    input_size: int
    input_label: str  # how input_size is named in messages
    hidden: int
    output: int
    output_label: str  # "hidden_size" or "proj_size"
    projection: bool
    dtype: Any
    source: str  # the weights the sizes and the dtype were read from


@functools.cache
def _is_floating(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)  # cached: eager calls check every array


def _array_shape(name: str, value: Any) -> tuple:
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"{name} must be an array, got {type(value).__name__}.")
    if not _is_floating(dtype):
        raise TypeError(f"{name} must have a floating dtype, got {dtype}.")
    return tuple(shape)


def _expect(name: str, value: Any, expected: tuple, layout: str, ref: _Expected) -> None:
    shape = _array_shape(name, value)
    if shape != expected:
        raise ValueError(f"{name} has shape {shape}, expected {expected} = {layout}.")
    if value.dtype != ref.dtype:
        raise TypeError(
            f"{name} has dtype {value.dtype}, expected {ref.dtype} like {ref.source}.w_hh "
            "(all weights must share one dtype)."
        )


def _matrix(name: str, value: Any, layout: str) -> tuple:
    shape = _array_shape(name, value)
    if len(shape) != 2:
        raise ValueError(f"{name} has shape {shape}, expected a matrix {layout}.")
    return shape


def _check_weights_type(w: Any, expected: type, name: str) -> None:
    if not isinstance(w, expected):
        raise TypeError(f"{name} must be an {expected.__name__}, got {type(w).__name__}.")


def _reference(name: str, w: Any, gates: int, gate_names: str, output: Optional[int] = None):
    """Sizes read off ``w`` itself: H from ``w_hh``'s gate axis, I from ``w_ih``."""
    w_hh = _matrix(f"{name}.w_hh", w.w_hh, f"(R, {gates} * hidden_size)")
    if w_hh[1] == 0 or w_hh[1] % gates:
        raise ValueError(
            f"{name}.w_hh has shape {w_hh}: its last axis must be {gates} * hidden_size "
            f"(gates {gate_names})."
        )
    hidden = w_hh[1] // gates
    w_ih = _matrix(f"{name}.w_ih", w.w_ih, f"(input_size, {gates} * hidden_size)")
    projection = output is not None
    return _Expected(
        input_size=w_ih[0],
        input_label="input_size",
        hidden=hidden,
        output=hidden if output is None else output,
        output_label="proj_size" if projection else "hidden_size",
        projection=projection,
        dtype=w.w_hh.dtype,
        source=name,
    )


def check_lstm_weights(w: Any, name: str = "w", ref: Optional[_Expected] = None) -> _Expected:
    """Every field of one LSTM layer-direction; sizes from ``w`` itself unless ``ref`` is given."""
    _check_weights_type(w, _p.LSTMWeights, name)
    if ref is None:
        output = None
        if w.w_hr is not None:
            output = _matrix(f"{name}.w_hr", w.w_hr, "(hidden_size, proj_size)")[1]
        ref = _reference(name, w, 4, "i, f, g, o", output)
    hidden, gates = ref.hidden, 4 * ref.hidden
    gates_label = "4 * hidden_size"
    _expect(
        f"{name}.w_hh", w.w_hh, (ref.output, gates), f"({ref.output_label}, {gates_label})", ref
    )
    _expect(
        f"{name}.w_ih", w.w_ih, (ref.input_size, gates), f"({ref.input_label}, {gates_label})", ref
    )
    _expect(f"{name}.b", w.b, (gates,), f"({gates_label},)", ref)
    if ref.projection != (w.w_hr is not None):
        has, lacks = (name, ref.source) if w.w_hr is not None else (ref.source, name)
        raise ValueError(
            f"{has} has a projection (w_hr) and {lacks} has none (w_hr is None); every "
            "layer and direction must have one, or none."
        )
    if w.w_hr is not None:
        _expect(f"{name}.w_hr", w.w_hr, (hidden, ref.output), "(hidden_size, proj_size)", ref)
    if w.w_peep is not None:
        _expect(f"{name}.w_peep", w.w_peep, (3, hidden), "(3, hidden_size), gates i, f, o", ref)
    if w.ln is not None:
        _check_weights_type(w.ln, _p.LayerNormWeights, f"{name}.ln")
        for field, size, label in (
            ("ih_scale", gates, gates_label),
            ("hh_scale", gates, gates_label),
            ("c_scale", hidden, "hidden_size"),
            ("c_offset", hidden, "hidden_size"),
        ):
            _expect(f"{name}.ln.{field}", getattr(w.ln, field), (size,), f"({label},)", ref)
    return ref


def check_gru_weights(w: Any, name: str = "w", ref: Optional[_Expected] = None) -> _Expected:
    """Every field of one GRU layer-direction; sizes from ``w`` itself unless ``ref`` is given."""
    _check_weights_type(w, _p.GRUWeights, name)
    ref = ref or _reference(name, w, 3, "r, z, n")
    gates, gates_label = 3 * ref.hidden, "3 * hidden_size"
    _expect(f"{name}.w_hh", w.w_hh, (ref.hidden, gates), f"(hidden_size, {gates_label})", ref)
    _expect(
        f"{name}.w_ih", w.w_ih, (ref.input_size, gates), f"({ref.input_label}, {gates_label})", ref
    )
    _expect(f"{name}.b_ih", w.b_ih, (gates,), f"({gates_label},)", ref)
    _expect(f"{name}.b_hh", w.b_hh, (gates,), f"({gates_label},)", ref)
    return ref


def check_rnn_weights(w: Any, name: str = "w", ref: Optional[_Expected] = None) -> _Expected:
    """Every field of one RNN layer-direction; sizes from ``w`` itself unless ``ref`` is given."""
    _check_weights_type(w, _p.RNNWeights, name)
    ref = ref or _reference(name, w, 1, "h")
    hidden = ref.hidden
    _expect(f"{name}.w_hh", w.w_hh, (hidden, hidden), "(hidden_size, hidden_size)", ref)
    _expect(
        f"{name}.w_ih", w.w_ih, (ref.input_size, hidden), f"({ref.input_label}, hidden_size)", ref
    )
    _expect(f"{name}.b", w.b, (hidden,), "(hidden_size,)", ref)
    return ref


def _check_directions(name: str, layer: Any, expected: Optional[int]) -> int:
    if hasattr(layer, "_fields") or not isinstance(layer, (tuple, list)):
        raise TypeError(
            f"{name} must be a tuple of 1 or 2 directions (forward, reverse), got "
            f"{type(layer).__name__}; build params with lstm_jax.params_from_layers."
        )
    if expected is None and len(layer) not in (1, 2):
        raise ValueError(
            f"{name} must hold 1 or 2 directions (forward, reverse), got {len(layer)}."
        )
    if expected is not None and len(layer) != expected:
        raise ValueError(
            f"{name} has {len(layer)} direction(s), expected {expected} like "
            f"{name.rsplit('[', 1)[0]}[0]."
        )
    return len(layer)


def _check_stack(layers: Any, name: str, check_weights: Callable) -> NetworkSizes:
    """``layers[l][d]``: every layer and direction against ``name[0][0]``."""
    if not isinstance(layers, (tuple, list)) or hasattr(layers, "_fields"):
        raise TypeError(
            f"{name} must be a tuple of layers, each a tuple of 1 or 2 directions, got "
            f"{type(layers).__name__}."
        )
    if not layers:
        raise ValueError(f"{name} is empty: params must hold at least one layer (num_layers >= 1).")
    num_directions = _check_directions(f"{name}[0]", layers[0], None)
    ref = check_weights(layers[0][0], f"{name}[0][0]")
    stacked = ref._replace(
        input_size=num_directions * ref.output,
        input_label=f"{num_directions} * {ref.output_label}"
        if num_directions > 1
        else ref.output_label,
    )
    for layer, directions in enumerate(layers):
        _check_directions(f"{name}[{layer}]", directions, num_directions)
        for direction, w in enumerate(directions):
            check_weights(w, f"{name}[{layer}][{direction}]", ref if layer == 0 else stacked)
    return NetworkSizes(
        len(layers), num_directions, ref.input_size, ref.hidden, ref.output, ref.dtype
    )


def check_lstm_params(params: Any, name: str = "params.layers") -> NetworkSizes:
    """Type, every layer and direction, directions per layer, layer input sizes, dtypes.

    ``name`` names ``params.layers`` in messages, e.g. ``params.layers[1][0].w_hh has
    shape (5, 16), expected (4, 16) = (hidden_size, 4 * hidden_size)``.
    """
    check_params_type(params, _p.LSTMParams, "init_lstm")
    return _check_stack(params.layers, name, check_lstm_weights)


def check_gru_params(params: Any, name: str = "params.layers") -> NetworkSizes:
    """As :func:`check_lstm_params`, for :class:`GRUParams`."""
    check_params_type(params, _p.GRUParams, "init_gru")
    return _check_stack(params.layers, name, check_gru_weights)


def check_rnn_params(params: Any, name: str = "params.layers") -> NetworkSizes:
    """As :func:`check_lstm_params`, for :class:`RNNParams`."""
    check_params_type(params, _p.RNNParams, "init_rnn")
    return _check_stack(params.layers, name, check_rnn_weights)


def check_params(params: Any, name: str = "params.layers") -> NetworkSizes:
    """Any of ``LSTMParams``, ``GRUParams``, ``RNNParams``, checked by its own function."""
    for params_type, check in (
        (_p.LSTMParams, check_lstm_params),
        (_p.GRUParams, check_gru_params),
        (_p.RNNParams, check_rnn_params),
    ):
        if isinstance(params, params_type):
            return check(params, name)
    raise TypeError(
        f"params must be LSTMParams, GRUParams or RNNParams, got {type(params).__name__}."
    )


# -------------------------------------------------------- cells and streams


def _check_float_array(name: str, value: Any, expected: tuple, layout: str) -> None:
    shape = _array_shape(name, value)
    if shape != expected:
        raise ValueError(f"{name} must have shape {expected} {layout}, got {shape}.")


def _cell_batch(x: Any, input_size: int) -> tuple:
    """Leading axes of a cell input ``x: (..., I)`` (``()`` for one example)."""
    shape = _array_shape("x", x)
    if not shape or shape[-1] != input_size:
        raise ValueError(
            f"x must have shape ({input_size},) (input_size,), got {shape}; the weights "
            f"expect input_size={input_size}."
        )
    return shape[:-1]


def check_lstm_cell(w: Any, state: Any, x: Any, recurrent_mask: Any = None) -> None:
    """``lstm_cell``'s arguments: weights, ``state = (h: (R,), c: (H,))``, ``x: (I,)``.

    Leading batch axes are allowed if ``x``, ``h``, ``c`` share them.
    """
    ref = check_lstm_weights(w, "w")
    if not isinstance(state, tuple) or len(state) != 2:
        raise TypeError(f"state must be a pair (h, c), got {type(state).__name__}.")
    batch = _cell_batch(x, ref.input_size)
    r_label = f"({ref.output_label},)"
    _check_float_array("state[0] (h)", state[0], batch + (ref.output,), r_label)
    _check_float_array("state[1] (c)", state[1], batch + (ref.hidden,), "(hidden_size,)")
    if recurrent_mask is not None:
        _check_float_array("recurrent_mask", recurrent_mask, batch + (ref.output,), r_label)


def check_single_state_cell(
    check_weights: Callable, w: Any, h: Any, x: Any, recurrent_mask: Any = None
) -> None:
    """``gru_cell`` / ``rnn_cell``: weights (by ``check_weights``), ``h: (H,)``, ``x: (I,)``."""
    ref = check_weights(w, "w")
    batch = _cell_batch(x, ref.input_size)
    _check_float_array("h", h, batch + (ref.hidden,), "(hidden_size,)")
    if recurrent_mask is not None:
        _check_float_array(
            "recurrent_mask", recurrent_mask, batch + (ref.hidden,), "(hidden_size,)"
        )


def check_stream(params: Any, state: Any, x_t: Any) -> None:
    """``stream_step``'s arguments: params, ``x_t: (I,)`` or ``(B, I)``, and a matching state.

    The state is laid out like ``init_stream_state``'s: LSTM ``LSTMState(h: (L, *B, R),
    c: (L, *B, H))``, GRU / RNN ``h: (L, *B, H)``.
    """
    sizes = check_params(params)
    shape = _array_shape("x_t", x_t)
    if len(shape) not in (1, 2) or shape[-1] != sizes.input_size:
        raise ValueError(
            f"x_t must have shape ({sizes.input_size},) or (batch, {sizes.input_size}) "
            f"(input_size={sizes.input_size}), got {shape}."
        )
    batch = shape[:-1]
    layout = "(num_layers, *batch, {})"
    if isinstance(params, _p.LSTMParams):
        if not isinstance(state, tuple) or len(state) != 2:
            raise TypeError(f"state must be an LSTMState(h, c), got {type(state).__name__}.")
        expected_h = (sizes.num_layers, *batch, sizes.output_size)
        _check_float_array("state.h", state[0], expected_h, layout.format("output_size"))
        expected_c = (sizes.num_layers, *batch, sizes.hidden_size)
        _check_float_array("state.c", state[1], expected_c, layout.format("hidden_size"))
    else:
        expected = (sizes.num_layers, *batch, sizes.hidden_size)
        _check_float_array("state", state, expected, layout.format("hidden_size"))
