"""Masked losses and pooling: padded positions (``seq_lengths``) never contribute.

Padding is selected away (``jnp.where``) before any arithmetic, not multiplied
by a zero mask: NaN or inf in padded predictions, targets or logits (NaN marks
missing values in real series) and out-of-range padded labels reach neither a
loss value nor a gradient, and the result equals that of the same batch with
zeros in the padding.

Notation: B = batch, T = time, F = features, V = vocabulary, C = classes.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import jax.numpy as jnp
import optax
from jax import Array

from lstm_jax import validation

__all__ = [
    "sequence_mask",
    "masked_mean",
    "last_valid",
    "masked_mean_pool",
    "softmax_cross_entropy",
    "accuracy",
    "regression_loss",
    "next_token_loss",
    "bits_per_token",
]


def sequence_mask(seq_lengths: Optional[Array], num_steps: int) -> Optional[Array]:
    """``(B, T)`` float mask, 1 where ``t < seq_lengths[b]``; None without lengths."""
    if seq_lengths is None:
        return None
    return (jnp.arange(num_steps)[None, :] < jnp.asarray(seq_lengths)[:, None]).astype(
        jnp.float32
    )


def _select(values: Array, keep: Array) -> Array:
    """``values`` where ``keep``, else 0; ``keep`` is a prefix of ``values``' shape.

    Selecting (not multiplying by a 0/1 mask) keeps NaN and inf at dropped
    positions out of the result and, since ``where``'s gradient is 0 there, out
    of every gradient: ``0 * nan`` is NaN, ``where(False, nan, 0)`` is 0.
    """
    keep = keep.reshape(keep.shape + (1,) * (values.ndim - keep.ndim))
    return jnp.where(keep, values, jnp.zeros((), values.dtype))


def masked_mean(values: Array, mask: Optional[Array] = None) -> Array:
    """Mean of ``values`` over the positions where ``mask`` is nonzero.

    ``mask`` has the shape of ``values`` or a prefix of it (trailing axes are
    averaged too); nonzero entries weight their position. With no valid
    position the result is 0, not NaN. Values where ``mask`` is 0 (NaN and inf
    included) change neither the result nor its gradient.

    >>> float(masked_mean(jnp.array([1.0, 3.0, jnp.nan]), jnp.array([1.0, 1.0, 0.0])))
    2.0
    """
    if mask is None:
        return jnp.mean(values)
    values = _select(values, mask != 0)
    mask = mask.astype(values.dtype)
    extra = values.ndim - mask.ndim
    mask = mask.reshape(mask.shape + (1,) * extra)
    mask = jnp.broadcast_to(mask, values.shape)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def last_valid(ys: Array, seq_lengths: Optional[Array] = None) -> Array:
    """``(B, T, F) -> (B, F)``: the output at each sequence's last valid step.

    For a unidirectional network this equals the final state ``h`` of the
    top layer. Lengths must lie in ``1..T``: concrete lengths outside raise a
    ``ValueError``; traced ones (under ``jit``) cannot be read, and a row whose
    length is outside (e.g. 0: no valid step) comes back as zeros.

    >>> ys = jnp.arange(6.0).reshape(1, 3, 2)
    >>> last_valid(ys, jnp.array([2])).tolist()
    [[2.0, 3.0]]
    """
    if seq_lengths is None:
        return ys[:, -1]
    num_steps = ys.shape[1]
    validation.check_length_values(seq_lengths, num_steps, checked=False)
    lengths = jnp.asarray(seq_lengths, jnp.int32)  # [B]
    index = jnp.clip(lengths - 1, 0, num_steps - 1)
    last = jnp.take_along_axis(ys, index[:, None, None], axis=1)[:, 0]  # [B, F]
    valid = (lengths >= 1) & (lengths <= num_steps)
    return jnp.where(valid[:, None], last, jnp.zeros_like(last))


def masked_mean_pool(ys: Array, seq_lengths: Optional[Array] = None) -> Array:
    """``(B, T, F) -> (B, F)``: mean over each sequence's valid steps.

    Values at padded steps (NaN and inf included) change neither the result
    nor its gradient.

    >>> ys = jnp.array([[[1.0], [3.0], [jnp.nan]]])
    >>> masked_mean_pool(ys, jnp.array([2])).tolist()
    [[2.0]]
    """
    if seq_lengths is None:
        return jnp.mean(ys, axis=1)
    keep = sequence_mask(seq_lengths, ys.shape[1]) > 0  # [B, T]
    total = jnp.sum(_select(ys, keep), axis=1)  # [B, F]
    count = jnp.sum(keep, axis=1, keepdims=True).astype(ys.dtype)  # [B, 1]
    return total / jnp.maximum(count, 1.0)


def softmax_cross_entropy(
    logits: Array, labels: Array, mask: Optional[Array] = None
) -> Array:
    """Mean cross-entropy (nats) of integer ``labels`` over valid positions.

    Args:
      logits: ``(..., C)``.
      labels: ``(...)`` integers in ``0..C-1``; any integer where ``mask`` is 0
        (e.g. PyTorch's ``ignore_index`` -100).
      mask: optional ``(...)`` weights (1 valid, 0 padding). Logits where it is
        0 (NaN and inf included) change neither the loss nor its gradient.

    >>> float(softmax_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3])))  # log 4
    1.3862943649291992
    """
    if mask is not None:
        keep = mask != 0
        logits, labels = _select(logits, keep), _select(labels, keep)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return masked_mean(losses, mask)


def accuracy(logits: Array, labels: Array, mask: Optional[Array] = None) -> Array:
    """Fraction of valid positions where ``argmax(logits) == labels``."""
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return masked_mean(correct, mask)


def regression_loss(
    preds: Array,
    targets: Array,
    seq_lengths: Optional[Array] = None,
    *,
    kind: str = "mse",
) -> Array:
    """Per-step regression loss averaged over valid steps and features.

    Args:
      preds, targets: ``(B, T, F)`` (or ``(B, F)`` without a time axis).
      seq_lengths: optional ``(B,)`` lengths; steps at or past them are ignored:
        their values (NaN and inf included) change neither the loss nor its
        gradient.
      kind: ``"mse"``, ``"mae"`` or ``"huber"``.

    >>> p = jnp.zeros((1, 3, 1)); y = jnp.array([[[1.0], [1.0], [jnp.nan]]])
    >>> float(regression_loss(p, y, jnp.array([2])))
    1.0
    """
    mask = None if seq_lengths is None else sequence_mask(seq_lengths, preds.shape[1])
    if mask is not None:
        preds, targets = _select(preds, mask > 0), _select(targets, mask > 0)
    diff = preds - targets
    if kind == "mse":
        errors = jnp.square(diff)
    elif kind == "mae":
        errors = jnp.abs(diff)
    elif kind == "huber":
        errors = optax.huber_loss(preds, targets)
    else:
        raise ValueError(f"kind must be one of ('mse', 'mae', 'huber'), got {kind!r}.")
    return masked_mean(errors, mask)


def next_token_loss(
    logits: Array, tokens: Array, seq_lengths: Optional[Array] = None
) -> Array:
    """Masked next-token cross-entropy (nats per predicted token).

    ``logits[:, t]`` predicts ``tokens[:, t + 1]``; the last position has no
    target. With ``seq_lengths`` only targets inside the sequence count: padded
    logits (NaN and inf included) and padded tokens (any integer, e.g. an
    out-of-range pad id) change neither the loss nor its gradient.

    Args:
      logits: ``(B, T, V)`` outputs for ``tokens`` fed as inputs.
      tokens: ``(B, T)`` integer tokens.
      seq_lengths: optional ``(B,)`` valid lengths of ``tokens``.

    >>> float(next_token_loss(jnp.zeros((1, 3, 4)), jnp.array([[0, 1, 2]])))  # log 4
    1.3862943649291992
    """
    targets = tokens[:, 1:]
    mask = None
    if seq_lengths is not None:
        mask = sequence_mask(jnp.asarray(seq_lengths) - 1, targets.shape[1])
    return softmax_cross_entropy(logits[:, :-1], targets, mask)


def bits_per_token(nats: Union[float, Array]) -> Union[float, Array]:
    """Convert a cross-entropy in nats to bits (bits per character for a char LM)."""
    return nats / math.log(2.0)

