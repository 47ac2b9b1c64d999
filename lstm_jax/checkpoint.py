"""Checkpoints of a :class:`~lstm_jax.training.TrainState` with Orbax.

A thin layer over ``orbax.checkpoint.CheckpointManager``: save every N steps,
keep the last k, restore the newest (or a given) step. Everything a run needs
to continue exactly is saved: params, optimizer state, step and PRNG key.
Typed PRNG keys (``jax.random.key``) are stored as their raw ``key_data`` and
re-wrapped on restore, since Orbax stores plain arrays.

A run resumed from a checkpoint, with batches that depend only on the step
(``training.fit``'s ``get_batch(step)``), ends with bitwise the same
parameters as an uninterrupted run (tested).

>>> import tempfile, jax, jax.numpy as jnp, optax
>>> from lstm_jax import training as tr
>>> state = tr.init_train_state({"w": jnp.ones(3)}, optax.adam(1e-3), jax.random.key(0))
>>> manager = make_manager(tempfile.mkdtemp(), save_every=1, keep=2)
>>> save(manager, state, force=True)
True
>>> restored = restore(manager, state)
>>> bool(jnp.all(restored.params["w"] == state.params["w"]))
True
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lstm_jax.training import TrainState

__all__ = ["make_manager", "save", "restore", "latest_step", "wait"]


def make_manager(
    directory: Union[str, os.PathLike],
    *,
    save_every: int = 1000,
    keep: Optional[int] = 3,
) -> ocp.CheckpointManager:
    """A ``CheckpointManager`` saving every ``save_every`` steps and keeping the last ``keep``.

    Args:
      directory: where the step folders go (created if missing; made absolute).
      save_every: save when ``step % save_every == 0`` (``save(..., force=True)``
        saves regardless).
      keep: number of most recent checkpoints kept (None keeps all).
    """
    if save_every < 1:
        raise ValueError(f"save_every must be >= 1, got {save_every}.")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 or None, got {keep}.")
    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=keep, create=True
    )
    return ocp.CheckpointManager(directory, options=options)


def _is_typed_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(state: TrainState) -> TrainState:
    key = state.key
    if _is_typed_key(key):
        key = jax.random.key_data(key)
    return state._replace(key=key)


def save(manager: ocp.CheckpointManager, state: TrainState, *, force: bool = False) -> bool:
    """Save ``state`` at ``state.step`` if the manager's interval says so (or ``force``).

    Returns True when a checkpoint was written (asynchronously; :func:`wait`
    blocks until it is on disk). A step that is already saved is skipped.
    """
    step = int(state.step)
    if step in manager.all_steps():
        return False
    if not (force or manager.should_save(step)):
        return False
    return manager.save(step, args=ocp.args.StandardSave(_to_storable(state)), force=force)


def latest_step(manager: ocp.CheckpointManager) -> Optional[int]:
    """The newest saved step, or None."""
    return manager.latest_step()


def wait(manager: ocp.CheckpointManager) -> None:
    """Block until pending asynchronous saves are finished."""
    manager.wait_until_finished()


def restore(
    manager: ocp.CheckpointManager, template: TrainState, *, step: Optional[int] = None
) -> TrainState:
    """Restore a :class:`TrainState` saved by :func:`save`.

    Args:
      manager: the manager the state was saved with (or one on the same directory).
      template: a state with the same structure, shapes and dtypes (e.g. a fresh
        ``init_train_state``); only its structure is used. A typed PRNG key in
        the template gets a typed key back, with the same implementation.
      step: which step; the newest when None.

    Returns:
      The restored state.
    """
    if step is None:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {manager.directory}.")
    storable = _to_storable(template)
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), storable
    )
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    restored = TrainState(*restored) if not isinstance(restored, TrainState) else restored
    if _is_typed_key(template.key):
        impl = jax.random.key_impl(template.key)
        restored = restored._replace(key=jax.random.wrap_key_data(restored.key, impl=impl))
    return restored
