"""The default optimizer: Adam(W), global-norm clipping, warm-up and cosine decay."""

from __future__ import annotations

from typing import Optional, Union

import optax

from lstm_jax.training._checks import check_int, check_real

__all__ = [
    "make_optimizer",
]


def make_optimizer(
    learning_rate: Union[float, optax.Schedule] = 1e-3,
    *,
    clip_norm: Optional[float] = 1.0,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    decay_steps: Optional[int] = None,
    end_lr_fraction: float = 0.0,
) -> optax.GradientTransformation:
    """Adam(W) with gradient clipping by global norm and an optional schedule.

    Args:
      learning_rate: peak learning rate, or any ``optax`` schedule.
      clip_norm: clip the gradients' global norm to this value (None: no clipping).
      weight_decay: decoupled weight decay (AdamW) when > 0.
      warmup_steps: linear warm-up from 0 to the peak over this many steps.
      decay_steps: with a float ``learning_rate``, cosine decay over this many
        steps (warm-up included) down to ``end_lr_fraction * learning_rate``.
      end_lr_fraction: final learning rate as a fraction of the peak.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: for a value outside the ranges above (e.g. ``clip_norm=-1``,
        which would turn every update into gradient ascent).

    >>> import jax.numpy as jnp
    >>> opt = make_optimizer(1e-3, clip_norm=1.0, warmup_steps=10, decay_steps=100)
    >>> opt.init({"w": jnp.zeros(2)}) is not None
    True
    """
    if not callable(learning_rate):
        check_real("learning_rate", learning_rate, "a number > 0 or an optax schedule", low=0.0)
    if clip_norm is not None:
        check_real("clip_norm", clip_norm, "a number > 0 or None", low=0.0)
    check_real("weight_decay", weight_decay, "a number >= 0", low=0.0, low_ok=True)
    check_int("warmup_steps", warmup_steps, low=0)
    if decay_steps is not None:
        check_int("decay_steps", decay_steps, low=1)
    check_real("end_lr_fraction", end_lr_fraction, "a number in [0, 1]", low=0.0, low_ok=True,
                high=1.0)  # fmt: skip
    schedule = learning_rate
    if not callable(learning_rate):
        if decay_steps is not None:
            # a warm-up longer than the run is shortened to leave one decay step
            warmup = min(warmup_steps, decay_steps - 1)
            schedule = optax.warmup_cosine_decay_schedule(
                0.0, learning_rate, warmup, decay_steps,
                end_value=learning_rate * end_lr_fraction,
            )  # fmt: skip
        elif warmup_steps > 0:
            schedule = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    parts = []
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(clip_norm))
    if weight_decay > 0.0:
        parts.append(optax.adamw(schedule, weight_decay=weight_decay))
    else:
        parts.append(optax.adam(schedule))
    return optax.chain(*parts)

