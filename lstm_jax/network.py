"""Stacked, bidirectional recurrent networks: ``lstm``, ``gru`` and ``rnn``.

The data path: validate the arguments, move to a batched layout, then for each
layer and direction call one layer function (``scan.scan_layer`` or a kernel
chosen by ``backend``), apply dropout between layers, and gather the final
states in PyTorch's ``(num_layers * num_directions, batch, features)`` layout.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax import validation
from lstm_jax.cells import Cell, gru_kind, lstm_kind, rnn_kind
from lstm_jax.kernels import select_layer
from lstm_jax.params import GRUParams, LSTMParams, LSTMState, RNNParams

__all__ = ["lstm", "gru", "rnn"]


def _dropout(key: Array, x: Array, rate: float) -> Array:
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _recurrent_mask(key: Array, shape: tuple, rate: float, dtype) -> Array:
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(dtype) / (1.0 - rate)


def _run_stack(
    cell: Cell,
    params: Any,
    xs: Array,
    initial_carries: list,
    *,
    layer_fn: Callable,
    seq_lengths: Optional[Array],
    dropout: float,
    recurrent_dropout: float,
    key: Optional[Array],
    unroll: int,
    time_major: bool,
    resets: Optional[Array] = None,
    mask: Optional[Array] = None,
) -> tuple[Array, list]:
    """Run every layer and direction; returns the top layer's ys and the final carries.

    ``initial_carries[layer * D + direction]`` is that layer-direction's carry
    with a leading batch axis; the final carries come back in the same order.
    ``resets`` and ``mask`` go to every layer function when given.
    """
    per_step = {k: v for k, v in (("resets", resets), ("mask", mask)) if v is not None}
    num_directions = len(params.layers[0])
    finals = []
    layer_input = xs
    for layer, layer_weights in enumerate(params.layers):
        layer_key = None if key is None else jax.random.fold_in(key, layer)
        if layer > 0 and dropout > 0.0:
            layer_input = _dropout(jax.random.fold_in(layer_key, 0), layer_input, dropout)
        outputs = []
        for direction, weights in enumerate(layer_weights):
            carry = initial_carries[layer * num_directions + direction]
            dropout_mask = None
            if recurrent_dropout > 0.0:
                h = cell.output(carry)
                mask_key = jax.random.fold_in(layer_key, 1 + direction)
                dropout_mask = _recurrent_mask(mask_key, h.shape, recurrent_dropout, h.dtype)
            ys, carry = layer_fn(
                cell,
                weights,
                layer_input,
                carry,
                seq_lengths=seq_lengths,
                reverse=direction == 1,
                recurrent_mask=dropout_mask,
                unroll=unroll,
                time_major=time_major,
                **per_step,
            )
            outputs.append(ys)
            finals.append(carry)
        layer_input = outputs[0] if num_directions == 1 else jnp.concatenate(outputs, axis=-1)
    return layer_input, finals


def _prepare(
    params: Any,
    params_type: type,
    init_name: str,
    xs: Any,
    seq_lengths: Any,
    *,
    dropout: float,
    recurrent_dropout: float,
    key: Any,
    unroll: int,
    time_major: bool,
    check_lengths: bool,
    resets: Any = None,
    mask: Any = None,
):
    """Shared checks; returns ``(xs, seq_lengths, resets, mask, batched)`` with a batch axis added."""
    validation.check_params_type(params, params_type, init_name)
    validation.check_params(params)
    validation.check_inputs(xs, params.layers[0][0].w_ih.shape[0])
    if key is not None:
        validation.check_key(key)
    validation.check_rate("dropout", dropout, key)
    validation.check_rate("recurrent_dropout", recurrent_dropout, key)
    validation.check_unroll(unroll)
    batched = xs.ndim == 3
    time_axis = 0 if (time_major or not batched) else 1
    num_steps = xs.shape[time_axis]
    validation.check_num_steps(num_steps)
    batch = xs.shape[1 - time_axis] if batched else None
    if seq_lengths is not None:
        validation.check_seq_lengths(seq_lengths, batch)
        validation.check_length_values(seq_lengths, num_steps, check_lengths)
        seq_lengths = jnp.asarray(seq_lengths, jnp.int32).reshape(-1)
    if batch is None:
        layout, flag_shape = "(time,)", (num_steps,)
    elif time_major:
        layout, flag_shape = "(time, batch)", (num_steps, batch)
    else:
        layout, flag_shape = "(batch, time)", (batch, num_steps)
    per_step = []
    for name, flags in (("resets", resets), ("mask", mask)):
        if flags is not None:
            validation.check_step_flags(name, flags, flag_shape, layout)
            flags = jnp.asarray(flags)
            if not batched:
                flags = flags[None] if not time_major else flags[:, None]
        per_step.append(flags)
    if not batched:
        xs = xs[None] if not time_major else xs[:, None]
    return xs, seq_lengths, per_step[0], per_step[1], batched


def _batch_size(xs: Array, time_major: bool) -> int:
    return xs.shape[1] if time_major else xs.shape[0]


def _param_dtype(params: Any):
    return params.layers[0][0].w_hh.dtype


def _state_arrays(
    name: str, state: Any, shape: tuple, batched: bool, dtype
) -> Array:
    """Check one state array against ``(L*D, B, F)`` (``(L*D, F)`` unbatched); batch it."""
    expected = shape if batched else (shape[0], shape[2])
    validation.check_state(name, state, expected)
    state = jnp.asarray(state, dtype)
    return state if batched else state[:, None]


def _unbatch_outputs(ys: Array, batched: bool, time_major: bool) -> Array:
    if batched:
        return ys
    return ys[:, 0] if time_major else ys[0]


def lstm(
    params: LSTMParams,
    xs: Array,
    *,
    initial_state: Optional[LSTMState] = None,
    seq_lengths: Optional[Array] = None,
    resets: Optional[Array] = None,
    mask: Optional[Array] = None,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    key: Optional[Array] = None,
    compute_dtype=None,
    unroll: int = 1,
    time_major: bool = False,
    backend: str = "auto",
    check_lengths: bool = False,
    remat: bool | int = False,
) -> tuple[Array, LSTMState]:
    """A stacked, optionally bidirectional LSTM over a batch of sequences.

    Args:
      params: an :class:`LSTMParams` (``init_lstm``, ``from_torch``, ...).
      xs: ``(B, T, I)`` inputs, or ``(T, I)`` for one unbatched sequence
        (``(T, B, I)`` with ``time_major``).
      initial_state: optional :class:`LSTMState`, ``h: (L*D, B, R)``,
        ``c: (L*D, B, H)`` (no batch axis for unbatched ``xs``); zeros if None.
      seq_lengths: optional ``(B,)`` integers in ``1..T``. Outputs at or past a
        sequence's length are exactly zero, the final state is the state at
        its last valid step, and the reverse direction runs over each
        sequence's valid part only, right to left.
      resets: optional ``(B, T)`` bool (``(T,)`` unbatched, ``(T, B)`` with
        ``time_major``). Where True the state is reset to ``initial_state``
        (zeros if None) before step ``t``: each segment runs as its own
        sequence (the reverse direction right to left within it) and the final
        state is the last segment's. Resets at or past ``seq_lengths`` are
        ignored. Runs on ``"scan"`` (``"auto"`` routes there).
      mask: optional bool, shaped like ``resets``. Where False the step leaves
        the state unchanged and outputs zeros, whatever ``xs`` holds there
        (``seq_lengths`` is a prefix mask; both may be given). A reset at a
        masked step still applies. Runs on ``"scan"`` (``"auto"`` routes there).
      dropout: rate of dropout on the inputs of layers 2..L (PyTorch semantics).
      recurrent_dropout: rate of variational dropout on ``h`` where it enters
        the recurrent matmul (one mask per sequence, the same at every step).
      key: PRNG key for dropout; no dropout is applied without rates > 0.
      compute_dtype: matmul input dtype (e.g. ``jnp.bfloat16``); gate math and
        the cell state stay in the parameters' dtype.
      unroll: time steps per loop iteration of ``lax.scan``.
      time_major: ``xs`` and ``ys`` are ``(T, B, ...)``.
      backend: which layer implementation runs the recurrence (see
        ``lstm_jax.kernels.BACKENDS``); ``"auto"`` (default) picks the fastest measured one
        that supports the weights, ``"scan"`` is the reference.
      check_lengths: under ``jit`` the values of ``seq_lengths`` cannot be read
        at trace time; with True a ``checkify`` check is inserted (wrap the
        function with ``jax.experimental.checkify.checkify`` and call
        ``err.throw()``). Concrete lengths are always checked.
      remat: rematerialisation for long sequences: False (off), True
        (checkpoint every ``ceil(sqrt(T))`` steps, so activation memory grows
        like ``sqrt(T)``) or an integer block size; costs one extra forward pass.

    Returns:
      ``(ys, state)``: ``ys`` is ``(B, T, D * R)`` and ``state`` an
      :class:`LSTMState` with ``h: (L*D, B, R)``, ``c: (L*D, B, H)``.

    >>> import lstm_jax as lj
    >>> params = lj.init_lstm(jax.random.key(0), 3, 8, num_layers=2, bidirectional=True)
    >>> ys, state = lj.lstm(params, jnp.ones((4, 5, 3)))
    >>> ys.shape, state.h.shape
    ((4, 5, 16), (4, 4, 8))
    """
    xs, seq_lengths, resets, mask, batched = _prepare(
        params, LSTMParams, "init_lstm", xs, seq_lengths,
        dropout=dropout, recurrent_dropout=recurrent_dropout, key=key,
        unroll=unroll, time_major=time_major, check_lengths=check_lengths,
        resets=resets, mask=mask,
    )  # fmt: skip
    num_directions = len(params.layers[0])
    num_states = len(params.layers) * num_directions
    first = params.layers[0][0]
    hidden = first.w_hh.shape[1] // 4
    out_size = first.w_hh.shape[0]
    batch = _batch_size(xs, time_major)
    dtype = _param_dtype(params)
    if initial_state is None:
        h0 = jnp.zeros((num_states, batch, out_size), dtype)
        c0 = jnp.zeros((num_states, batch, hidden), dtype)
    else:
        if not (isinstance(initial_state, tuple) and len(initial_state) == 2):
            raise TypeError(
                f"initial_state must be an LSTMState(h, c), got {type(initial_state).__name__}."
            )
        h0 = _state_arrays("initial_state.h", initial_state[0], (num_states, batch, out_size), batched, dtype)
        c0 = _state_arrays("initial_state.c", initial_state[1], (num_states, batch, hidden), batched, dtype)
    ys, finals = _run_stack(
        lstm_kind(compute_dtype=compute_dtype), params, xs,
        [(h0[k], c0[k]) for k in range(num_states)],
        layer_fn=select_layer(backend, "lstm", compute_dtype=compute_dtype, remat=remat),
        seq_lengths=seq_lengths, resets=resets, mask=mask,
        dropout=dropout, recurrent_dropout=recurrent_dropout, key=key,
        unroll=unroll, time_major=time_major,
    )  # fmt: skip
    h = jnp.stack([f[0] for f in finals])
    c = jnp.stack([f[1] for f in finals])
    if not batched:
        h, c = h[:, 0], c[:, 0]
    return _unbatch_outputs(ys, batched, time_major), LSTMState(h, c)


def _single_state_network(
    cell: Cell,
    kind: str,
    params: Any,
    params_type: type,
    init_name: str,
    xs: Any,
    *,
    initial_state: Optional[Array],
    seq_lengths: Optional[Array],
    resets: Optional[Array],
    mask: Optional[Array],
    dropout: float,
    recurrent_dropout: float,
    key: Optional[Array],
    unroll: int,
    time_major: bool,
    backend: str,
    check_lengths: bool,
    remat: bool | int = False,
    compute_dtype=None,
) -> tuple[Array, Array]:
    """GRU and RNN: networks whose state is a single array ``h``."""
    xs, seq_lengths, resets, mask, batched = _prepare(
        params, params_type, init_name, xs, seq_lengths,
        dropout=dropout, recurrent_dropout=recurrent_dropout, key=key,
        unroll=unroll, time_major=time_major, check_lengths=check_lengths,
        resets=resets, mask=mask,
    )  # fmt: skip
    num_states = len(params.layers) * len(params.layers[0])
    hidden = params.layers[0][0].w_hh.shape[0]
    batch = _batch_size(xs, time_major)
    dtype = _param_dtype(params)
    shape = (num_states, batch, hidden)
    if initial_state is None:
        h0 = jnp.zeros(shape, dtype)
    else:
        h0 = _state_arrays("initial_state", initial_state, shape, batched, dtype)
    ys, finals = _run_stack(
        cell, params, xs, [h0[k] for k in range(num_states)],
        layer_fn=select_layer(backend, kind, compute_dtype=compute_dtype, remat=remat),
        seq_lengths=seq_lengths,
        resets=resets, mask=mask, dropout=dropout, recurrent_dropout=recurrent_dropout, key=key,
        unroll=unroll, time_major=time_major,
    )  # fmt: skip
    h = jnp.stack(finals)
    return _unbatch_outputs(ys, batched, time_major), h if batched else h[:, 0]


def gru(
    params: GRUParams,
    xs: Array,
    *,
    initial_state: Optional[Array] = None,
    seq_lengths: Optional[Array] = None,
    resets: Optional[Array] = None,
    mask: Optional[Array] = None,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    key: Optional[Array] = None,
    compute_dtype=None,
    unroll: int = 1,
    time_major: bool = False,
    backend: str = "auto",
    check_lengths: bool = False,
    remat: bool | int = False,
) -> tuple[Array, Array]:
    """A stacked, optionally bidirectional GRU (PyTorch ``nn.GRU`` semantics).

    Arguments as for :func:`lstm`, except that the state is one array:
    ``initial_state`` and the returned ``h`` are ``(L*D, B, H)``.

    Returns:
      ``(ys, h)`` with ``ys: (B, T, D * H)``.

    >>> import lstm_jax as lj
    >>> ys, h = lj.gru(lj.init_gru(jax.random.key(0), 3, 8), jnp.ones((4, 5, 3)))
    >>> ys.shape, h.shape
    ((4, 5, 8), (1, 4, 8))
    """
    return _single_state_network(
        gru_kind(compute_dtype=compute_dtype), "gru", params, GRUParams, "init_gru", xs,
        initial_state=initial_state, seq_lengths=seq_lengths, resets=resets, mask=mask,
        dropout=dropout,
        recurrent_dropout=recurrent_dropout, key=key, unroll=unroll,
        time_major=time_major, backend=backend, check_lengths=check_lengths,
        remat=remat, compute_dtype=compute_dtype,
    )  # fmt: skip


def rnn(
    params: RNNParams,
    xs: Array,
    *,
    nonlinearity: str = "tanh",
    initial_state: Optional[Array] = None,
    seq_lengths: Optional[Array] = None,
    resets: Optional[Array] = None,
    mask: Optional[Array] = None,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    key: Optional[Array] = None,
    compute_dtype=None,
    unroll: int = 1,
    time_major: bool = False,
    backend: str = "auto",
    check_lengths: bool = False,
    remat: bool | int = False,
) -> tuple[Array, Array]:
    """A stacked, optionally bidirectional Elman RNN (PyTorch ``nn.RNN`` semantics).

    Arguments as for :func:`gru`; ``nonlinearity`` is ``"tanh"`` or ``"relu"``.

    >>> import lstm_jax as lj
    >>> ys, h = lj.rnn(lj.init_rnn(jax.random.key(0), 3, 8), jnp.ones((5, 3)))
    >>> ys.shape, h.shape
    ((5, 8), (1, 8))
    """
    return _single_state_network(
        rnn_kind(nonlinearity=nonlinearity, compute_dtype=compute_dtype), "rnn",
        params, RNNParams, "init_rnn", xs,
        initial_state=initial_state, seq_lengths=seq_lengths, resets=resets, mask=mask,
        dropout=dropout,
        recurrent_dropout=recurrent_dropout, key=key, unroll=unroll,
        time_major=time_major, backend=backend, check_lengths=check_lengths,
        remat=remat, compute_dtype=compute_dtype,
    )  # fmt: skip
