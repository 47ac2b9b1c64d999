"""One-step streaming for online prediction with a stacked unidirectional network."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax import cells, validation
from lstm_jax.params import GRUParams, LSTMParams, LSTMState, RNNParams

__all__ = [
    "init_stream_state",
    "stream_step",
]


def _stream_layers(params: Any) -> tuple[str, Any]:
    if isinstance(params, LSTMParams):
        kind = "lstm"
    elif isinstance(params, GRUParams):
        kind = "gru"
    elif isinstance(params, RNNParams):
        kind = "rnn"
    else:
        raise TypeError(
            f"params must be LSTMParams, GRUParams or RNNParams, got {type(params).__name__}."
        )
    validation.check_params(params)
    if len(params.layers[0]) != 1:
        raise ValueError(
            "stream_step needs a unidirectional network: a reverse direction must see "
            "the whole sequence before its first output."
        )
    return kind, params.layers


def init_stream_state(params: Any, batch_shape: Sequence[int] = ()) -> Any:
    """Zero state for :func:`stream_step`, laid out like the networks' final state.

    LSTM: ``LSTMState(h: (L, *batch_shape, R), c: (L, *batch_shape, H))``;
    GRU / RNN: ``h: (L, *batch_shape, H)``.

    >>> import lstm_jax as lj
    >>> init_stream_state(lj.init_lstm(jax.random.key(0), 2, 4, num_layers=2), (3,)).c.shape
    (2, 3, 4)
    """
    kind, layers = _stream_layers(params)
    validation.check_stream(params, state, x_t)
    batch_shape = tuple(batch_shape)
    first = layers[0][0]
    dtype = first.w_hh.dtype
    num_layers = len(layers)
    if kind == "lstm":
        hidden = first.w_hh.shape[1] // 4
        out = first.w_hh.shape[0]
        return LSTMState(
            jnp.zeros((num_layers, *batch_shape, out), dtype),
            jnp.zeros((num_layers, *batch_shape, hidden), dtype),
        )
    return jnp.zeros((num_layers, *batch_shape, first.w_hh.shape[0]), dtype)


def stream_step(
    params: Any, state: Any, x_t: Array, *, nonlinearity: str = "tanh"
) -> tuple[Array, Any]:
    """One time step of a stacked unidirectional network, for online prediction.

    Feeding a sequence one step at a time gives the outputs and final state of
    ``lj.lstm`` / ``lj.gru`` / ``lj.rnn`` on the whole sequence (tested).

    Args:
      params: ``LSTMParams``, ``GRUParams`` or ``RNNParams`` (one direction).
      state: the previous state (:func:`init_stream_state`, or a network's
        final state to continue from).
      x_t: ``(I,)`` or ``(B, I)`` input at this step.
      nonlinearity: for RNN params, ``"tanh"`` or ``"relu"``.

    Returns:
      ``(y_t, state)``: the top layer's output ``(R,)`` or ``(B, R)`` and the new state.

    >>> import lstm_jax as lj
    >>> p = lj.init_lstm(jax.random.key(0), 2, 4)
    >>> y, s = stream_step(p, init_stream_state(p), jnp.ones(2))
    >>> y.shape
    (4,)
    """
    kind, layers = _stream_layers(params)
    if kind == "lstm":
        step = lambda w, s, x: cells.lstm_cell(w, s, x)  # noqa: E731
    elif kind == "gru":
        step = lambda w, s, x: cells.gru_cell(w, s, x)  # noqa: E731
    else:
        step = lambda w, s, x: cells.rnn_cell(w, s, x, nonlinearity=nonlinearity)  # noqa: E731
    if x_t.ndim == 2:
        step = jax.vmap(step, in_axes=(None, 0, 0))
    new_states = []
    inputs = x_t
    for layer, layer_weights in enumerate(layers):
        w = layer_weights[0]
        if kind == "lstm":
            carry = step(w, (state.h[layer], state.c[layer]), inputs)
            inputs = carry[0]
        else:
            carry = step(w, state[layer], inputs)
            inputs = carry
        new_states.append(carry)
    if kind == "lstm":
        new_state = LSTMState(
            jnp.stack([s[0] for s in new_states]), jnp.stack([s[1] for s in new_states])
        )
    else:
        new_state = jnp.stack(new_states)
    return inputs, new_state

