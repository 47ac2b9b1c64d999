"""Train and eval steps for whole batches: ``(state, batch) -> (state, metrics)``."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import optax
from jax import Array

from lstm_jax.training.state import TrainState, apply_gradients, compile_step

__all__ = [
    "make_train_step",
    "make_eval_step",
    "evaluate",
]


LossFn = Callable[[Any, Any, Array], tuple[Array, Mapping[str, Array]]]


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    jit: bool = True,
    donate: bool = True,
    mesh: Any = None,
    **jit_kwargs,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """A train step ``(state, batch) -> (state, metrics)`` for any Optax optimizer.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)`` where ``loss``
        is a scalar and ``metrics`` a dict of scalars (may be empty). ``key``
        is a fresh PRNG key for this step (for dropout).
      optimizer: any ``optax.GradientTransformation`` (clipping and schedules
        are part of it, see :func:`make_optimizer`).
      jit: return the jitted step (default) or the pure function.
      donate: donate the input state's buffers (the caller must not reuse it).
      mesh: a ``jax.sharding.Mesh`` from ``lstm_jax.parallel.make_mesh``: the
        step is jitted with the state laid out by ``parallel.param_sharding``
        and the batch split over ``data`` (see ``parallel.shard_train_step``);
        place them with ``parallel.shard_params`` / ``parallel.shard_batch``.
      **jit_kwargs: passed to ``jax.jit`` (e.g. shardings; not with ``mesh``).

    Returns:
      ``train_step``; its metrics hold ``loss``, ``grad_norm`` (before
      clipping), the loss function's own metrics and ``skipped`` (int32, 1
      when the step was skipped). A step whose loss, gradients or optimizer
      updates are not all finite is skipped: ``params`` and ``opt_state``
      stay unchanged (``step`` and ``key`` advance), so one bad batch cannot
      turn the parameters into NaN. :func:`fit` stops after too many skips
      in a row.
    """

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        key, step_key = jax.random.split(state.key)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, step_key
        )
        new_state, skipped = apply_gradients(state, optimizer, loss, grads, key)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux, "skipped": skipped}
        return new_state, metrics

    if not jit:
        return train_step
    if mesh is not None:
        if jit_kwargs:
            raise ValueError(f"pass mesh or jax.jit shardings, not both; got {sorted(jit_kwargs)}.")
        from lstm_jax import parallel  # imported here: only sharded steps need it

        return parallel.shard_train_step(train_step, mesh, donate_state=donate)
    return compile_step(train_step, donate_state=donate, **jit_kwargs)


def make_eval_step(
    metric_fn: Callable[[Any, Any], Mapping[str, Array]], *, jit: bool = True, **jit_kwargs
) -> Callable[[Any, Any], dict]:
    """``eval_step(params, batch) -> metrics``; ``metric_fn`` must return a ``count``
    entry (the batch's weight, e.g. valid examples or tokens) beside per-batch means."""
    if not jit:
        return metric_fn
    return compile_step(metric_fn, donate_state=False, **jit_kwargs)


def evaluate(eval_step: Callable, params: Any, batches: Iterable[Any]) -> dict:
    """Weighted mean of every metric of ``eval_step`` over ``batches`` (weights: ``count``).

    >>> import jax.numpy as jnp
    >>> f = lambda p, b: {"err": jnp.mean(b), "count": jnp.asarray(b.size, jnp.float32)}
    >>> evaluate(f, None, [jnp.zeros(3), jnp.ones(1)])["err"]
    0.25
    """
    totals: dict[str, float] = {}
    weight = 0.0
    for batch in batches:
        metrics = jax.device_get(eval_step(params, batch))
        count = float(metrics["count"])
        weight += count
        for name, value in metrics.items():
            if name != "count":
                totals[name] = totals.get(name, 0.0) + float(value) * count
    if weight == 0.0:
        raise ValueError("evaluate got no batches (or only batches with count 0).")
    out = {name: total / weight for name, total in totals.items()}
    out["count"] = weight
    return out

