"""The train state and its update: :class:`TrainState`, one optimizer step, the one jit.

:func:`apply_gradients` is the only place an update is applied, and the place
a non-finite update is skipped; :func:`compile_step` is the only place a step
is jitted.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

from lstm_jax import validation

__all__ = [
    "TrainState",
    "init_train_state",
    "compile_step",
    "apply_gradients",
]


class TrainState(NamedTuple):
    """Everything a training run carries from step to step (a pytree of arrays)."""

    params: Any  # model parameters, any pytree
    opt_state: Any  # optax state for params
    step: Array  # shape=(), int32; train steps taken (skipped ones included)
    key: Array  # PRNG key, split once per step (dropout etc.)


def init_train_state(
    params: Any, optimizer: optax.GradientTransformation, key: Array
) -> TrainState:
    """A :class:`TrainState` at step 0.

    The state gets its own copies of ``params`` and ``key``: train steps donate
    the state's buffers, which must not invalidate the caller's arrays.

    >>> state = init_train_state({"w": jnp.zeros(3)}, optax.sgd(0.1), jax.random.key(0))
    >>> int(state.step)
    0
    """
    validation.check_key(key)
    params = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params)
    key = jnp.array(key, copy=True)
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), key)


def compile_step(fn: Callable, *, donate_state: bool = True, **jit_kwargs) -> Callable:
    """The one place train/eval steps are jitted.

    ``fn``'s first argument is the state; with ``donate_state`` its buffers are
    donated, so the update happens in place. Extra keyword arguments go to
    ``jax.jit`` unchanged (``in_shardings``, ``out_shardings`` for data
    parallelism with a ``Mesh``).
    """
    return jax.jit(fn, donate_argnums=(0,) if donate_state else (), **jit_kwargs)


def _all_finite(tree: Any) -> Array:
    """A scalar bool: every floating-point leaf of ``tree`` is finite."""
    flags = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def apply_gradients(
    state: TrainState, optimizer, loss: Array, grads: Any, new_key: Array
) -> tuple[TrainState, Array]:
    """One optimizer update, skipped when the loss, a gradient or an update is not finite.

    A skipped step leaves ``params`` and ``opt_state`` exactly as they were;
    ``step`` and ``key`` still advance, so step n still trains on batch n.
    Returns the new state and ``skipped``, an int32 scalar (1 when skipped).
    """
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.all(jnp.isfinite(loss)) & _all_finite(grads) & _all_finite(updates)
    keep_if_bad = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
    params = jax.tree_util.tree_map(keep_if_bad, params, state.params)
    opt_state = jax.tree_util.tree_map(keep_if_bad, opt_state, state.opt_state)
    skipped = jnp.logical_not(ok).astype(jnp.int32)
    return TrainState(params, opt_state, state.step + 1, new_key), skipped

