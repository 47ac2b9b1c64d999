"""Stacked, bidirectional recurrent networks: ``lstm``, ``gru`` and ``rnn``.

The data path (:func:`_network`, for all three): validate the arguments, move to
a batched layout, then for each layer and direction call the kernel chosen by
``backend`` (:func:`lstm_jax.kernels.dispatch.select_kernel`) with a
:class:`~lstm_jax.kernels.call.LayerCall`, apply dropout between layers, and
gather the final states in PyTorch's ``(num_layers * num_directions, batch,
features)`` layout.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax import validation
from lstm_jax.cells import Cell, gru_kind, lstm_kind, rnn_kind
from lstm_jax.kernels.call import LayerCall, LayerOptions
from lstm_jax.kernels.dispatch import select_kernel
from lstm_jax.params import GRUParams, LSTMParams, LSTMState, RNNParams

__all__ = ["lstm", "gru", "rnn"]


def _dropout(key: Array, x: Array, rate: float) -> Array:
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _recurrent_mask(key: Array, shape: tuple, rate: float, dtype) -> Array:
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(dtype) / (1.0 - rate)


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


def _initial_states(
    params: Any, initial_state: Optional[tuple], names: tuple[str, ...], batch: int, batched: bool
) -> tuple[Array, ...]:
    """The initial state arrays named ``names``, each ``(L*D, B, F)``: ``initial_state``'s,
    checked, or zeros."""
    num_states = len(params.layers) * len(params.layers[0])
    w_hh = params.layers[0][0].w_hh
    features = (w_hh.shape[0], w_hh.shape[1] // 4)  # h: R (H without a projection); LSTM's c: H
    shapes = [(num_states, batch, f) for f in features[: len(names)]]
    if initial_state is None:
        return tuple(jnp.zeros(shape, w_hh.dtype) for shape in shapes)
    return tuple(_state_arrays(name, state, shape, batched, w_hh.dtype)
                 for name, shape, state in zip(names, shapes, initial_state))  # fmt: skip


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


def _network(
    cell: Cell,
    kind: str,
    params: Any,
    params_type: type,
    init_name: str,
    xs: Any,
    *,
    initial_state: Optional[tuple],
    state_names: tuple[str, ...],
    seq_lengths: Optional[Array],
    resets: Optional[Array],
    mask: Optional[Array],
    dropout: float,
    recurrent_dropout: float,
    key: Optional[Array],
    compute_dtype: Any,
    unroll: int,
    time_major: bool,
    backend: str,
    check_lengths: bool,
    remat: bool | int,
) -> tuple[Array, tuple[Array, ...]]:
    """Check the arguments, run every layer and direction, gather the final states.

    ``state_names`` names the state arrays (``"initial_state.h"``, ...);
    ``initial_state`` is a tuple of them, ``(L*D, B, F)`` each (``(L*D, F)``
    unbatched), or None for zeros. A cell's carry is the
    tuple of its arrays' rows, or the one row for a single array. Returns
    ``ys`` and the final state arrays in the caller's layout.
    """
    xs, seq_lengths, resets, mask, batched = _prepare(
        params, params_type, init_name, xs, seq_lengths,
        dropout=dropout, recurrent_dropout=recurrent_dropout, key=key,
        unroll=unroll, time_major=time_major, check_lengths=check_lengths,
        resets=resets, mask=mask,
    )  # fmt: skip
    kernel = select_kernel(backend, kind, remat=remat)
    batch = xs.shape[1] if time_major else xs.shape[0]
    states = _initial_states(params, initial_state, state_names, batch, batched)
    num_directions = len(params.layers[0])
    finals = []  # [L*D] lists of the final state arrays' rows
    layer_input = xs
    for layer, layer_weights in enumerate(params.layers):
        layer_key = None if key is None else jax.random.fold_in(key, layer)
        if layer > 0 and dropout > 0.0:
            layer_input = _dropout(jax.random.fold_in(layer_key, 0), layer_input, dropout)
        outputs = []
        for direction, weights in enumerate(layer_weights):
            rows = tuple(state[layer * num_directions + direction] for state in states)
            carry = rows if len(rows) > 1 else rows[0]
            dropout_mask = None
            if recurrent_dropout > 0.0:
                h = cell.output(carry)
                mask_key = jax.random.fold_in(layer_key, 1 + direction)
                dropout_mask = _recurrent_mask(mask_key, h.shape, recurrent_dropout, h.dtype)
            options = LayerOptions(
                seq_lengths=seq_lengths, reverse=direction == 1, recurrent_mask=dropout_mask,
                unroll=unroll, time_major=time_major, mask=mask, resets=resets,
                compute_dtype=compute_dtype,
            )  # fmt: skip
            ys, carry = kernel(LayerCall(cell, weights, layer_input, carry, options))
            outputs.append(ys)
            finals.append(jax.tree.leaves(carry))
        layer_input = outputs[0] if num_directions == 1 else jnp.concatenate(outputs, axis=-1)
    final_states = tuple(jnp.stack(rows) for rows in zip(*finals))  # each [L*D, B, F]
    if not batched:
        final_states = tuple(state[:, 0] for state in final_states)
    return _unbatch_outputs(layer_input, batched, time_major), final_states


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
        ignored. Runs inside the ``"scan"``, ``"fused"`` (LSTM) and ``"native"``
        loops; ``"auto"`` keeps such calls on them.
      mask: optional bool, shaped like ``resets``. Where False the step leaves
        the state unchanged and outputs zeros, whatever ``xs`` holds there
        (``seq_lengths`` is a prefix mask; both may be given). A reset at a
        masked step still applies. Runs where ``resets`` does.
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
    is_pair = isinstance(initial_state, tuple) and len(initial_state) == 2
    if initial_state is not None and not is_pair:
        raise TypeError(
            f"initial_state must be an LSTMState(h, c), got {type(initial_state).__name__}."
        )
    ys, (h, c) = _network(
        lstm_kind(compute_dtype=compute_dtype), "lstm", params, LSTMParams, "init_lstm", xs,
        initial_state=initial_state,
        state_names=("initial_state.h", "initial_state.c"),
        seq_lengths=seq_lengths, resets=resets, mask=mask, dropout=dropout,
        recurrent_dropout=recurrent_dropout, key=key, compute_dtype=compute_dtype, unroll=unroll,
        time_major=time_major, backend=backend, check_lengths=check_lengths, remat=remat,
    )  # fmt: skip
    return ys, LSTMState(h, c)


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
    ys, (h,) = _network(
        gru_kind(compute_dtype=compute_dtype), "gru", params, GRUParams, "init_gru", xs,
        initial_state=None if initial_state is None else (initial_state,),
        state_names=("initial_state",), seq_lengths=seq_lengths, resets=resets, mask=mask,
        dropout=dropout, recurrent_dropout=recurrent_dropout, key=key,
        compute_dtype=compute_dtype, unroll=unroll, time_major=time_major, backend=backend,
        check_lengths=check_lengths, remat=remat,
    )  # fmt: skip
    return ys, h


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
    ys, (h,) = _network(
        rnn_kind(nonlinearity=nonlinearity, compute_dtype=compute_dtype), "rnn",
        params, RNNParams, "init_rnn", xs,
        initial_state=None if initial_state is None else (initial_state,),
        state_names=("initial_state",), seq_lengths=seq_lengths, resets=resets, mask=mask,
        dropout=dropout, recurrent_dropout=recurrent_dropout, key=key,
        compute_dtype=compute_dtype, unroll=unroll, time_major=time_major, backend=backend,
        check_lengths=check_lengths, remat=remat,
    )  # fmt: skip
    return ys, h
