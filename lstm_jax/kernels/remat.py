"""Rematerialisation: checkpoint a layer every ``k`` steps (``remat=`` in ``lj.lstm``).

A layer over ``T`` steps is cut into ``N = T // k`` blocks of ``k`` steps and,
when ``k`` does not divide ``T``, one last block of ``T - N k < k`` steps. An
outer ``lax.scan`` runs the full blocks under ``jax.checkpoint``: the forward
pass keeps only the carry at each block boundary, and the backward pass
recomputes one block's forward (input projection included) right before
differentiating it. Activation memory is then ``O(T / k + k)`` per layer
instead of ``O(T)``; ``k = ceil(sqrt(T))`` (``remat=True``) gives
``O(sqrt(T))`` for every ``T`` at the price of one extra forward pass.

No ``(T, B, ...)`` copy of the inputs is made: each block reads its ``k``
steps from ``xs`` in the caller's layout (a slice, or for the reverse
direction a gather of each sequence's valid part, right to left) and
transposes them itself. Works with any layer function of the
kernel (:mod:`lstm_jax.kernels.call`); ragged batches pass each block its
own clipped lengths (a block past a sequence's end has length 0: its carry
passes through unchanged and its outputs are zeros).

``mask`` is read block by block like ``xs``; ``resets`` become their
processing-order flags (:func:`lstm_jax.sequence.segment_starts`, ``(T, B)``
bools) sliced per block. In reverse the final carry is the last segment's,
which is processed first: a second run of each block, masked to that
segment and without resets, carries it (twice the forward work, only for
reverse with ``resets``).
"""

from __future__ import annotations

import math
from typing import Any, Union

import jax
import jax.numpy as jnp

from lstm_jax.kernels.call import Kernel, LayerCall
from lstm_jax.sequence import reverse_sequences, segment_starts

__all__ = ["block_size", "check_remat", "remat_kernel"]


def block_size(remat: Union[bool, int], num_steps: int) -> int:
    """Steps per checkpointed block: ``ceil(sqrt(T))`` for True, else ``remat``."""
    if remat is True:
        return max(1, math.isqrt(num_steps - 1) + 1) if num_steps > 1 else 1
    return int(remat)


def check_remat(remat: Any) -> None:
    """``remat`` must be a bool or a positive integer block size."""
    if isinstance(remat, bool) or remat is None:
        return
    if not isinstance(remat, int) or remat < 1:
        raise ValueError(
            f"remat must be False, True (blocks of ceil(sqrt(T)) steps) or a positive "
            f"integer block size, got {remat!r}."
        )


def _read_block(xs, start, size, *, time_major, reverse, seq_lengths):
    """Steps ``start .. start + size`` of the (reversed) sequences, time-major ``(size, B, I)``.

    For ``reverse``, step ``t`` of sequence ``b`` is ``xs[b, L_b - 1 - t]``
    inside its valid part and ``xs[b, t]`` (padding, never used) past it.
    """
    time_axis = 0 if time_major else 1
    if not reverse:
        block = jax.lax.dynamic_slice_in_dim(xs, start, size, axis=time_axis)
    else:
        num_steps = xs.shape[time_axis]
        lengths = (
            jnp.full((xs.shape[1 - time_axis],), num_steps, jnp.int32)
            if seq_lengths is None else seq_lengths
        )  # fmt: skip
        t = start + jnp.arange(size, dtype=jnp.int32)[:, None]  # [size, 1]
        index = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # [size, B]
        if not time_major:
            index = index.T  # [B, size]
        block = jnp.take_along_axis(xs, index[..., None], axis=time_axis)
    return block if time_major else jnp.swapaxes(block, 0, 1)  # [size, B, I]


def remat_kernel(kernel: Kernel, remat: Union[bool, int]) -> Kernel:
    """Wrap ``kernel`` so that it checkpoints every ``block_size(remat, T)`` steps."""
    check_remat(remat)

    def run_remat(call: LayerCall):
        options = call.options
        xs, seq_lengths, reverse, time_major = call.xs, options.seq_lengths, options.reverse, options.time_major
        mask, resets = options.mask, options.resets
        num_steps = xs.shape[0 if time_major else 1]
        k = min(block_size(remat, num_steps), num_steps)
        num_blocks, remainder = divmod(num_steps, k)
        read = dict(time_major=time_major, reverse=reverse, seq_lengths=seq_lengths)
        starts = in_last = None  # [T, B] processing order
        if resets is not None:
            starts = segment_starts(resets if time_major else resets.T, seq_lengths, reverse)
            if reverse:
                in_last = jnp.cumsum(starts, axis=0) == 0

        def run(carries, start, size):
            """Steps ``start .. start + size`` (processing order) from ``carries``."""
            carry, final = carries
            lengths = None if seq_lengths is None else jnp.clip(seq_lengths - start, 0, size)
            block = call._replace(xs=_read_block(xs, start, size, **read), initial_carry=carry,
                                  options=options._replace(seq_lengths=lengths, reverse=False,
                                                           time_major=True, mask=None, resets=None,
                                                           reset_to=None))  # fmt: skip
            per_step = {}  # only what is given: plain kernels take neither
            if mask is not None:
                per_step["mask"] = _read_block(mask[..., None], start, size, **read)[..., 0]
            if starts is not None:
                per_step["resets"] = jax.lax.dynamic_slice_in_dim(starts, start, size)
                per_step["reset_to"] = call.initial_carry
            ys, carry = kernel(block._replace(options=block.options._replace(**per_step)))
            if in_last is not None:
                last = jax.lax.dynamic_slice_in_dim(in_last, start, size)
                last = last if mask is None else last & per_step["mask"]
                _, final = kernel(block._replace(initial_carry=final,
                                                 options=block.options._replace(mask=last)))  # fmt: skip
            return (carry, final), ys  # ys [size, B, O]

        run_block = jax.checkpoint(lambda carry, start: run(carry, start, k), prevent_cse=False)
        block_starts = jnp.arange(num_blocks, dtype=jnp.int32) * k  # [N]
        # (carry, final): final is the carry unless reverse with resets
        initial_carry = call.initial_carry
        carries = (initial_carry, initial_carry if in_last is not None else None)
        carries, ys = jax.lax.scan(run_block, carries, block_starts)  # ys [N, k, B, O]
        ys = ys.reshape((num_blocks * k,) + ys.shape[2:])  # [N k, B, O]
        if remainder:
            last_block = jax.checkpoint(lambda carries: run(carries, num_blocks * k, remainder))
            carries, ys_last = last_block(carries)
            ys = jnp.concatenate([ys, ys_last])  # [T, B, O]
        final = carries[0] if in_last is None else carries[1]
        if reverse:
            ys = reverse_sequences(ys, seq_lengths)
        if not time_major:
            ys = jnp.swapaxes(ys, 0, 1)  # [B, T, O]
        return ys, final

    return run_remat
