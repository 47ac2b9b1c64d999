"""One layer, one direction, over a batch of sequences: the reference recurrence.

``scan_layer`` is the single place the recurrence runs with ``jax.lax.scan``.
Faster kernels (``lstm_jax.kernels``) implement the same signature and are
tested against it. Nothing here knows about layers, directions or PyTorch.

Each loop step runs the cell's input projection and its step, both
``vmap``-ped over the batch: ``x_t @ w_ih`` is computed inside the loop rather
than for all steps in one GEMM before it. On XLA:CPU the hoisted form was
measured 2.0-2.6x slower for inference (LSTM, GRU, peephole LSTM at
(B, T, I, H) = (32, 256, 64, 128)) and no faster for training: reading column
slices of a ``(T, B, G)`` array per step is slow there
(``docs/TIMINGS.md``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.cells import Cell

__all__ = [
    "carried_outputs",
    "over_time",
    "reverse_sequences",
    "scan_layer",
    "segment_starts",
    "valid_mask",
]


def reverse_sequences(xs: Array, seq_lengths: Optional[Array]) -> Array:
    """Reverse each sequence's valid part along the time axis 0; padding stays put.

    Args:
      xs: ``(T, B, ...)`` time-major values.
      seq_lengths: ``(B,)`` lengths, or None for full-length sequences.

    Returns:
      ``(T, B, ...)``; applying it twice gives ``xs`` back.
    """
    if seq_lengths is None:
        return xs[::-1]
    time = jnp.arange(xs.shape[0])[:, None]  # [T, 1]
    lengths = seq_lengths[None, :]  # [1, B]
    index = jnp.where(time < lengths, lengths - 1 - time, time)  # [T, B]
    index = index.reshape(index.shape + (1,) * (xs.ndim - 2))
    return jnp.take_along_axis(xs, index, axis=0)


def valid_mask(num_steps: int, seq_lengths: Optional[Array]) -> Optional[Array]:
    """``(T, B)`` bool, True where ``t < seq_lengths[b]``; None without lengths."""
    if seq_lengths is None:
        return None
    return jnp.arange(num_steps)[:, None] < seq_lengths[None, :]


def carried_outputs(ys: Array, h0: Array, valid: Optional[Array], starts: Optional[Array] = None,
                    reset_h: Optional[Array] = None) -> Array:  # fmt: skip
    """The hidden carry after each step, from the outputs: ``ys`` where a step is valid,
    else the carry before it (``h0`` before the first valid step), or ``reset_h`` after a
    reset at an invalid step.

    A kernel's backward needs ``h_{t-1}``, the carry entering step ``t``. It is
    ``ys[t - 1]`` only where step ``t - 1`` was valid: a masked step outputs
    zeros but passes the carry on. (With ``seq_lengths`` alone the invalid
    steps are a suffix, where the gradients are zero anyway.)

    Args:
      ys: ``(T, B, H)`` time-major outputs, zero at invalid steps.
      h0: ``(B, H)`` the initial carry.
      valid: ``(T, B)`` bool, or None (every step valid: ``ys`` itself).
      starts: optional ``(T, B)`` bool: the carry is reset to ``reset_h (B, H)``
        before these steps (:func:`segment_starts`).

    Returns:
      ``(T, B, H)``: the carry after step ``t`` at ``[t]``.
    """
    if valid is None:
        return ys
    steps = jnp.arange(ys.shape[0])[:, None]  # [T, 1]
    events = valid if starts is None else valid | starts  # steps that set the carry
    last = jax.lax.cummax(jnp.where(events, steps, -1), axis=0)  # [T, B]
    stacked = jnp.concatenate([h0[None], ys])  # [T + 1, B, H]: h0 at -1 + 1
    carried = jnp.take_along_axis(stacked, (last + 1)[:, :, None], axis=0)
    if starts is None:
        return carried
    # the last event was a reset at an invalid step: the carry is the reset carry
    reset = jnp.take_along_axis(starts & ~valid, jnp.maximum(last, 0), axis=0) & (last >= 0)
    return jnp.where(reset[:, :, None], reset_h, carried)


def segment_starts(resets: Array, seq_lengths: Optional[Array], reverse: bool) -> Array:
    """Where the carry is reset, in processing order: ``(T, B)`` bool, time-major.

    ``resets[t, b]`` (forward time) starts a segment at step ``t``; resets at or
    past a sequence's length are ignored. Forward, the carry is reset before
    step ``t``. In reverse each segment runs right to left, so the carry is
    reset before the step that *ends* a forward segment: step ``t`` is flagged
    when ``t + 1`` starts one (``resets[t + 1]``; never the last valid step,
    where the reversed run starts from the initial carry anyway). The flags are
    then laid out like :func:`reverse_sequences` lays out ``xs``.
    """
    valid = valid_mask(resets.shape[0], seq_lengths)
    if valid is not None:
        resets = resets & valid
    if not reverse:
        return resets
    ends = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])])  # [T, B]
    return reverse_sequences(ends, seq_lengths)


def over_time(
    run: Callable[..., tuple[Array, Any]],
    xs: Array,
    *,
    seq_lengths: Optional[Array],
    reverse: bool,
    time_major: bool,
    mask: Optional[Array] = None,
    resets: Optional[Array] = None,
    run_batch_major: bool = False,
) -> tuple[Array, Any]:
    """The sequence plumbing every layer implementation shares.

    Calls ``run(xs, valid)`` with ``xs`` time-major ``(T, B, I)`` and, for
    ``reverse``, each sequence's valid part reversed; ``valid`` is the
    ``(T, B)`` mask of :func:`valid_mask` and-ed with ``mask`` (None without
    either). With ``resets``, calls ``run(xs, valid, starts)`` instead, with
    ``starts`` from :func:`segment_starts`. ``mask`` and ``resets`` are
    ``(B, T)`` bool (``(T, B)`` with ``time_major``). ``run`` returns
    time-major ``ys (T, B, O)`` and its final carry; ``ys`` is reversed back
    and returned in the caller's layout.

    Reversing a sequence's whole valid part is right for any ``mask``: a
    masked step leaves the carry unchanged wherever it sits.

    Inputs at invalid steps are replaced by zeros before ``run`` sees them, so
    that whatever they hold (NaN, inf) every layer computes finite values
    there: the mask after the cell selects the old carry, but its backward
    multiplies the discarded branch's derivatives by zero, and ``0 * NaN`` is
    NaN. The gradient w.r.t. those inputs is then exactly zero.

    With ``run_batch_major`` (a kernel that reads either layout), batch-major
    calls without ``reverse``, ``mask`` or ``resets`` skip the two transposed
    copies: ``run(xs, valid, batch_major=True)`` gets ``xs (B, T, I)`` (``valid``
    still ``(T, B)``) and returns ``ys (B, T, O)``.
    """
    if run_batch_major and not time_major and not reverse and mask is None and resets is None:
        valid = valid_mask(xs.shape[1], seq_lengths)
        if valid is not None:
            xs = jnp.where(valid.T[:, :, None], xs, jnp.zeros_like(xs))
        return run(xs, valid, batch_major=True)
    if not time_major:
        xs = jnp.swapaxes(xs, 0, 1)  # [T, B, I]
        mask = None if mask is None else mask.T  # [T, B]
        resets = None if resets is None else resets.T  # [T, B]
    if reverse:
        xs = reverse_sequences(xs, seq_lengths)
    valid = valid_mask(xs.shape[0], seq_lengths)
    if mask is not None:
        mask = reverse_sequences(mask, seq_lengths) if reverse else mask
        valid = mask if valid is None else valid & mask
    if valid is not None:
        xs = jnp.where(valid[:, :, None], xs, jnp.zeros_like(xs))
    if resets is None:
        ys, final = run(xs, valid)
    else:
        ys, final = run(xs, valid, segment_starts(resets, seq_lengths, reverse))
    if reverse:
        ys = reverse_sequences(ys, seq_lengths)
    if not time_major:
        ys = jnp.swapaxes(ys, 0, 1)  # [B, T, O]
    return ys, final


def scan_layer(
    cell: Cell,
    weights: Any,
    xs: Array,
    initial_carry: Any,
    *,
    seq_lengths: Optional[Array] = None,
    reverse: bool = False,
    recurrent_mask: Optional[Array] = None,
    unroll: int = 1,
    time_major: bool = False,
    resets: Optional[Array] = None,
    mask: Optional[Array] = None,
    reset_to: Any = None,
) -> tuple[Array, Any]:
    """Run ``cell`` over a batch of sequences with ``jax.lax.scan``.

    Args:
      cell: a :class:`lstm_jax.cells.Cell` (project, step, output).
      weights: that cell's weights for this layer and direction.
      xs: ``(B, T, I)`` inputs, or ``(T, B, I)`` with ``time_major``.
      initial_carry: the cell's carry with a leading batch axis, e.g. ``(h, c)``
        with ``h: (B, R)`` and ``c: (B, H)``.
      seq_lengths: optional ``(B,)`` integer lengths in ``1..T``. Steps at or past
        a sequence's length leave its carry unchanged and output zeros.
      reverse: run right to left over each sequence's valid part.
      recurrent_mask: optional ``(B, R)`` mask on ``h`` before the recurrent
        matmul, the same at every step (variational dropout).
      unroll: steps per loop iteration, passed to ``jax.lax.scan``.
      time_major: ``xs`` and the returned ``ys`` are ``(T, B, ...)``.
      resets: optional ``(B, T)`` bool (``(T, B)`` with ``time_major``): where
        True the carry is reset to ``initial_carry`` before step ``t``, so each
        segment runs as its own sequence (``reverse``: right to left within it).
      mask: optional ``(B, T)`` bool (``(T, B)`` with ``time_major``): where
        False the step leaves the carry unchanged and outputs zeros.
      reset_to: the carry ``resets`` restore, ``initial_carry`` if None (a
        caller that splits the time axis, e.g. remat, continues mid-sequence).

    Returns:
      ``(ys, final_carry)``: ``ys`` is ``(B, T, O)`` (or ``(T, B, O)``), the final
      carry is the carry after each sequence's last valid step; with ``resets``
      it is the last segment's final carry (for ``reverse``, the carry after
      that segment's first step).
    """
    project = jax.vmap(lambda x: cell.project(weights, x))  # [B, I] -> [B, G]
    step = jax.vmap(cell.step, in_axes=(None, 0, 0, None if recurrent_mask is None else 0))

    reset_carry = initial_carry if reset_to is None else reset_to

    def select(flag, new, old):  # flag [B]
        return jax.tree_util.tree_map(lambda a, b: jnp.where(flag[:, None], a, b), new, old)

    def body(carry, inputs):
        x_t, valid_t = inputs  # [B, I], [B] or None
        new_carry = step(weights, carry, project(x_t), recurrent_mask)
        y = cell.output(new_carry)  # [B, O]
        if valid_t is not None:
            new_carry = select(valid_t, new_carry, carry)
            y = jnp.where(valid_t[:, None], y, jnp.zeros_like(y))
        return new_carry, y

    def segment_body(carries, inputs):
        # final: the carry after the last segment's last processed step; in
        # reverse that segment is processed first, so final stops following
        # carry at the first reset
        carry, final = carries
        x_t, valid_t, start_t, in_last_t = inputs  # [B, I], [B] or None, [B], [B]
        carry, y = body(select(start_t, reset_carry, carry), (x_t, valid_t))
        return (carry, select(in_last_t, carry, final)), y

    def run(xs, valid, starts=None):
        if starts is None:
            final_carry, ys = jax.lax.scan(body, initial_carry, (xs, valid), unroll=unroll)
            return ys, final_carry
        if reverse:
            in_last = jnp.cumsum(starts, axis=0) == 0  # [T, B]: no reset so far
        else:
            in_last = jnp.ones_like(starts)
        (_, final_carry), ys = jax.lax.scan(
            segment_body, (initial_carry, initial_carry), (xs, valid, starts, in_last),
            unroll=unroll,
        )  # fmt: skip
        return ys, final_carry

    return over_time(
        run, xs, seq_lengths=seq_lengths, reverse=reverse, time_major=time_major,
        mask=mask, resets=resets,
    )  # fmt: skip
