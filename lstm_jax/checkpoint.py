"""Checkpoints of a :class:`~lstm_jax.training.TrainState` with Orbax.

A thin layer over ``orbax.checkpoint.CheckpointManager``: save every N steps,
keep the last k, restore the newest (or a given) step. Everything a run needs
to continue exactly is saved: params, optimizer state, step and PRNG key.
Typed PRNG keys (``jax.random.key``) are stored as their raw ``key_data`` and
re-wrapped on restore, since Orbax stores plain arrays.

Beside the arrays each checkpoint holds a small JSON item, ``checksums``: the
dtype, shape and CRC-32 of every array's bytes at save time. :func:`restore`
checks them and raises :class:`CorruptCheckpointError`, naming the step and
the array, when a stored array was altered (a flipped bit on disk otherwise
restores silently as a wrong value).

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
import warnings
import zlib
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lstm_jax.training.state import TrainState

__all__ = ["make_manager", "save", "restore", "latest_step", "wait", "CorruptCheckpointError"]

# Orbax item names: the state keeps the name ("default") it had in checkpoints
# saved before checksums existed, so those still restore.
_STATE = "default"
_CHECKSUMS = "checksums"


class CorruptCheckpointError(ValueError):
    """A restored array's bytes differ from those saved (checksum mismatch)."""


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
    return ocp.CheckpointManager(directory, item_names=(_STATE, _CHECKSUMS), options=options)


def _is_typed_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(state: TrainState) -> TrainState:
    key = state.key
    if _is_typed_key(key):
        key = jax.random.key_data(key)
    return state._replace(key=key)


def _checksums(storable: TrainState) -> dict:
    """``{path: {"dtype", "shape", "crc32"}}`` for every array, path like ``.params['w']``.

    Arrays spread over several processes (not fully addressable here) get no
    checksum.
    """
    sums = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(storable):
        entry = {"dtype": str(leaf.dtype), "shape": list(np.shape(leaf))}
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            data = np.ascontiguousarray(np.asarray(leaf)).reshape(-1).view(np.uint8)
            entry["crc32"] = zlib.crc32(data)
        sums[jax.tree_util.keystr(path)] = entry
    return sums


def save(manager: ocp.CheckpointManager, state: TrainState, *, force: bool = False) -> bool:
    """Save ``state`` at ``state.step`` if the manager's interval says so (or ``force``).

    Returns True when a checkpoint was written (asynchronously; :func:`wait`
    blocks until it is on disk). A step that is already saved is skipped.
    ``manager`` must come from :func:`make_manager`.
    """
    step = int(state.step)
    if step in manager.all_steps():
        return False
    if not (force or manager.should_save(step)):
        return False
    storable = _to_storable(state)
    args = ocp.args.Composite(
        **{
            _STATE: ocp.args.StandardSave(storable),
            _CHECKSUMS: ocp.args.JsonSave(_checksums(storable)),
        }
    )
    return manager.save(step, args=args, force=force)


def latest_step(manager: ocp.CheckpointManager) -> Optional[int]:
    """The newest saved step, or None."""
    return manager.latest_step()


def wait(manager: ocp.CheckpointManager) -> None:
    """Block until pending asynchronous saves are finished."""
    manager.wait_until_finished()


def restore(
    manager: ocp.CheckpointManager, template: TrainState, *, step: Optional[int] = None
) -> TrainState:
    """Restore a :class:`TrainState` saved by :func:`save`, checking every array's checksum.

    Args:
      manager: the manager the state was saved with (or one on the same directory,
        from :func:`make_manager`).
      template: a state with the same structure, shapes and dtypes (e.g. a fresh
        ``init_train_state``); only its structure is used. A typed PRNG key in
        the template gets a typed key back, with the same implementation.
      step: which step; the newest when None.

    Returns:
      The restored state.

    Raises:
      FileNotFoundError: no checkpoint at all, or none for ``step`` (the message
        lists the saved steps).
      ValueError: the template's arrays differ from the saved ones in path,
        dtype or shape.
      CorruptCheckpointError: a restored array's bytes differ from those saved.
    """
    saved = manager.all_steps()
    if step is None:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {manager.directory}.")
    elif step not in saved:
        raise FileNotFoundError(
            f"no checkpoint for step {step} in {manager.directory}; saved steps: {sorted(saved)}."
        )
    storable = _to_storable(template)
    try:
        sums = manager.restore(
            step, args=ocp.args.Composite(**{_CHECKSUMS: ocp.args.JsonRestore()})
        )[_CHECKSUMS]
    except KeyError:  # Orbax: 'Item "checksums" was not found in the checkpoint'
        sums = None
    if sums is not None:
        _check_template(storable, sums, step)
    else:
        warnings.warn(
            f"checkpoint step {step} in {manager.directory} has no checksums (saved by an "
            "older lstm_jax); it is restored unverified.",
            stacklevel=2,
        )
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), storable
    )
    restored = manager.restore(
        step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)})
    )[_STATE]
    restored = TrainState(*restored) if not isinstance(restored, TrainState) else restored
    if sums is not None:
        for path, entry in _checksums(restored).items():
            if "crc32" in entry and "crc32" in sums[path] and entry["crc32"] != sums[path]["crc32"]:
                raise CorruptCheckpointError(
                    f"checkpoint step {step} in {manager.directory} is corrupt: the array "
                    f"state{path} does not match the checksum stored when it was saved "
                    f"(crc32 {entry['crc32']:#010x}, saved {sums[path]['crc32']:#010x}); "
                    f"restore another step (saved steps: {sorted(saved)})."
                )
    if _is_typed_key(template.key):
        impl = jax.random.key_impl(template.key)
        restored = restored._replace(key=jax.random.wrap_key_data(restored.key, impl=impl))
    return restored


def _check_template(storable: TrainState, sums: dict, step: int) -> None:
    """Raise ValueError if the template's arrays differ from those saved (path, dtype, shape)."""
    paths = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(storable):
        paths[jax.tree_util.keystr(path)] = (str(leaf.dtype), list(np.shape(leaf)))
    missing, unexpected = sorted(set(sums) - set(paths)), sorted(set(paths) - set(sums))
    if missing or unexpected:
        raise ValueError(
            f"template does not match checkpoint step {step}: arrays saved but not in the "
            f"template: {missing}; in the template but not saved: {unexpected}."
        )
    for path, (dtype, shape) in paths.items():
        if (dtype, shape) != (sums[path]["dtype"], sums[path]["shape"]):
            raise ValueError(
                f"template state{path} has dtype {dtype} and shape {tuple(shape)}, but "
                f"checkpoint step {step} saved dtype {sums[path]['dtype']} and shape "
                f"{tuple(sums[path]['shape'])}."
            )
