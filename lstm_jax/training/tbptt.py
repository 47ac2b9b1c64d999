"""Truncated BPTT over long streams: chunks, and a train step that carries the state."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax import Array

from lstm_jax.training.state import TrainState, apply_gradients, compile_step

__all__ = [
    "make_tbptt_train_step",
    "split_chunks",
]


def make_tbptt_train_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    jit: bool = True,
    donate: bool = True,
    **jit_kwargs,
) -> Callable:
    """Truncated BPTT: ``(state, carry, chunk) -> (state, carry, metrics)``.

    A long stream is cut into chunks (:func:`split_chunks`); each call trains
    on one chunk starting from the recurrent ``carry`` left by the previous
    chunk. The carry enters and leaves behind ``lax.stop_gradient``, so
    gradients flow back at most one chunk while the forward state is exact.

    Args:
      loss_fn: ``loss_fn(params, chunk, carry, key) -> (loss, (new_carry, metrics))``.
      optimizer: any ``optax.GradientTransformation``.
      jit, donate, jit_kwargs: as for :func:`make_train_step` (the carry is not
        donated).

    A chunk with a non-finite loss, gradient or update is skipped as in
    :func:`make_train_step` (``metrics["skipped"] == 1``), and the carry it
    returns is the carry it got.
    """

    def tbptt_step(state: TrainState, carry: Any, chunk: Any):
        carry = jax.lax.stop_gradient(carry)
        key, step_key = jax.random.split(state.key)
        (loss, (new_carry, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, chunk, carry, step_key
        )
        new_state, skipped = apply_gradients(state, optimizer, loss, grads, key)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux, "skipped": skipped}
        # a skipped chunk also leaves the carry as it was (a NaN carry would poison the stream)
        new_carry = jax.tree_util.tree_map(
            lambda new, old: jnp.where(skipped == 1, old, new), new_carry, carry
        )
        return new_state, jax.lax.stop_gradient(new_carry), metrics

    if not jit:
        return tbptt_step
    return compile_step(tbptt_step, donate_state=donate, **jit_kwargs)


def split_chunks(xs: Array, chunk_len: int, *, axis: int = 1) -> list[Array]:
    """Cut ``xs`` along ``axis`` (time) into consecutive chunks of ``chunk_len``
    steps; a shorter remainder is dropped so every chunk has one shape (one compile).

    >>> [c.shape for c in split_chunks(jnp.zeros((2, 7, 3)), 3)]
    [(2, 3, 3), (2, 3, 3)]
    """
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}.")
    num = xs.shape[axis] // chunk_len
    if num == 0:
        raise ValueError(
            f"chunk_len={chunk_len} is longer than the stream ({xs.shape[axis]} steps)."
        )
    return [
        jax.lax.slice_in_dim(xs, k * chunk_len, (k + 1) * chunk_len, axis=axis)
        for k in range(num)
    ]

