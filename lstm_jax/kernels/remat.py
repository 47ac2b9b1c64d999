"""Rematerialisation: checkpoint a layer every ``k`` steps (``remat=`` in ``lj.lstm``).

A layer over ``T`` steps is cut into ``ceil(T / k)`` blocks of ``k`` steps. An
outer ``lax.scan`` runs the blocks under ``jax.checkpoint``: the forward pass
keeps only the carry at each block boundary, and the backward pass recomputes
one block's forward (input projection included) right before differentiating
it. Activation memory is then ``O(T / k + k)`` per layer instead of ``O(T)``;
``k = ceil(sqrt(T))`` (``remat=True``) gives ``O(sqrt(T))`` at the price of one
extra forward pass.

Works with any layer function of the :func:`lstm_jax.scan.scan_layer`
signature. Reverse directions reverse each sequence's valid part once, up
front, and then run left to right; ragged batches pass each block its own
clipped lengths (a block past a sequence's end has length 0: its carry passes
through unchanged and its outputs are zeros).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.cells import Cell
from lstm_jax.scan import reverse_sequences

__all__ = ["block_size", "remat_layer"]


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


def remat_layer(layer_fn: Callable, remat: Union[bool, int]) -> Callable:
    """Wrap ``layer_fn`` so that it checkpoints every ``block_size(remat, T)`` steps."""
    check_remat(remat)

    def layer(
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
        **options,
    ):
        if not time_major:
            xs = jnp.swapaxes(xs, 0, 1)  # [T, B, I]
        num_steps, batch = xs.shape[0], xs.shape[1]
        k = block_size(remat, num_steps)
        num_blocks = -(-num_steps // k)
        if reverse:
            xs = reverse_sequences(xs, seq_lengths)
        lengths = seq_lengths
        padding = num_blocks * k - num_steps
        if padding:
            xs = jnp.concatenate([xs, jnp.zeros((padding,) + xs.shape[1:], xs.dtype)])
            if lengths is None:  # the padded steps must not touch the carry
                lengths = jnp.full((batch,), num_steps, jnp.int32)
        blocks = xs.reshape((num_blocks, k) + xs.shape[1:])  # [N, k, B, I]
        starts = jnp.arange(num_blocks, dtype=jnp.int32) * k  # [N]

        def run_block(carry, inputs):
            x_block, start = inputs
            block_lengths = None if lengths is None else jnp.clip(lengths - start, 0, k)
            ys, carry = layer_fn(
                cell, weights, x_block, carry,
                seq_lengths=block_lengths, reverse=False, recurrent_mask=recurrent_mask,
                unroll=unroll, time_major=True, **options,
            )  # fmt: skip
            return carry, ys

        final, ys = jax.lax.scan(
            jax.checkpoint(run_block, prevent_cse=False),
            initial_carry,
            (blocks, starts),
        )  # ys [N, k, B, O]
        ys = ys.reshape((num_blocks * k,) + ys.shape[2:])[:num_steps]  # [T, B, O]
        if reverse:
            ys = reverse_sequences(ys, seq_lengths)
        if not time_major:
            ys = jnp.swapaxes(ys, 0, 1)  # [B, T, O]
        return ys, final

    return layer
