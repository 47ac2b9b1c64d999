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

from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.cells import Cell
from lstm_jax.sequence import over_time

__all__ = ["scan_layer"]


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
