"""Sequence plumbing every layer implementation shares: time-major views, reversal of each
sequence's valid part, validity masks, reset flags and the carry behind masked steps.

:func:`prepare_steps` is the one place a layer's batch-major or time-major,
ragged, reversed, masked or reset call is turned into a time-major run over
``(T, B, ...)``, and :func:`restore_outputs` the one place its outputs are
turned back; every kernel calls the two around its recurrence, or
:func:`over_time`, which calls them around a function (``scan.scan_layer``,
the reference). Nothing here knows about cells, layers or PyTorch.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import Array

__all__ = [
    "Steps",
    "carried_outputs",
    "over_time",
    "prepare_steps",
    "restore_outputs",
    "reverse_sequences",
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


class Steps(NamedTuple):
    """A layer's inputs in processing order (:func:`prepare_steps`), and how its outputs go back."""

    xs: Array  # (T, B, I), valid parts reversed for reverse; (B, T, I) if batch_major
    valid: Optional[Array]  # (T, B) bool, None where every step is valid
    starts: Optional[Array]  # (T, B) bool, segment_starts of resets; None without resets
    batch_major: bool  # xs, and the outputs the run returns, are (B, T, ...)
    time_major: bool  # the caller's layout
    reverse: bool
    seq_lengths: Optional[Array]  # (B,) int


def prepare_steps(
    xs: Array,
    *,
    seq_lengths: Optional[Array],
    reverse: bool,
    time_major: bool,
    mask: Optional[Array] = None,
    resets: Optional[Array] = None,
    batch_major_ok: bool = False,
) -> Steps:
    """The sequence plumbing before a layer's recurrence.

    ``xs`` becomes time-major ``(T, B, I)`` with, for ``reverse``, each
    sequence's valid part reversed; ``valid`` is the ``(T, B)`` mask of
    :func:`valid_mask` and-ed with ``mask`` (None without either); ``starts``
    the :func:`segment_starts` of ``resets`` (None without). ``mask`` and
    ``resets`` are ``(B, T)`` bool (``(T, B)`` with ``time_major``). The
    recurrence returns time-major ``ys (T, B, O)`` in that processing order,
    which :func:`restore_outputs` turns back into the caller's layout.

    Reversing a sequence's whole valid part is right for any ``mask``: a
    masked step leaves the carry unchanged wherever it sits.

    Inputs at invalid steps are replaced by zeros, so that whatever they hold
    (NaN, inf) every layer computes finite values there: the mask after the
    cell selects the old carry, but its backward multiplies the discarded
    branch's derivatives by zero, and ``0 * NaN`` is NaN. The gradient w.r.t.
    those inputs is then exactly zero.

    With ``batch_major_ok`` (a recurrence that reads either layout), batch-major
    calls without ``reverse``, ``mask`` or ``resets`` skip the two transposed
    copies: ``xs`` stays ``(B, T, I)`` (``valid`` is still ``(T, B)``), the
    recurrence returns ``ys (B, T, O)``, and ``batch_major`` is True.
    """
    layout = dict(time_major=time_major, reverse=reverse, seq_lengths=seq_lengths)
    if batch_major_ok and not time_major and not reverse and mask is None and resets is None:
        valid = valid_mask(xs.shape[1], seq_lengths)
        if valid is not None:
            xs = jnp.where(valid.T[:, :, None], xs, jnp.zeros_like(xs))
        return Steps(xs, valid, None, batch_major=True, **layout)
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
    starts = None if resets is None else segment_starts(resets, seq_lengths, reverse)
    return Steps(xs, valid, starts, batch_major=False, **layout)


def restore_outputs(steps: Steps, ys: Array) -> Array:
    """The recurrence's outputs ``ys`` (in ``steps``' processing order and layout) in the
    caller's layout, each sequence's valid part reversed back for ``reverse``."""
    if steps.batch_major:
        return ys
    if steps.reverse:
        ys = reverse_sequences(ys, steps.seq_lengths)
    if not steps.time_major:
        ys = jnp.swapaxes(ys, 0, 1)  # [B, T, O]
    return ys


def over_time(
    run: Callable[..., tuple[Array, Any]],
    xs: Array,
    *,
    seq_lengths: Optional[Array],
    reverse: bool,
    time_major: bool,
    mask: Optional[Array] = None,
    resets: Optional[Array] = None,
) -> tuple[Array, Any]:
    """``run`` between :func:`prepare_steps` and :func:`restore_outputs`.

    Calls ``run(xs, valid)`` (``run(xs, valid, starts)`` with ``resets``) on the
    prepared :class:`Steps`; ``run`` returns time-major ``ys (T, B, O)`` and its
    final carry.
    """
    steps = prepare_steps(xs, seq_lengths=seq_lengths, reverse=reverse, time_major=time_major,
                          mask=mask, resets=resets)  # fmt: skip
    per_step = (steps.valid,) if steps.starts is None else (steps.valid, steps.starts)
    ys, final = run(steps.xs, *per_step)
    return restore_outputs(steps, ys), final
