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
restores silently as a wrong value). Every other damage to a saved step that
changes what it restores (a file of it truncated, deleted, zero-filled or
overwritten, the checksums included) raises the same error, naming the step
and, where the underlying error says, the array, with that error chained as
``__cause__``; the message also names the newest other step that restores
intact, or says that none does. Damage to files Orbax does not read on restore
leaves the restored state exactly as saved (tested file by file).

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
import re
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
    """A saved step cannot be restored as it was saved.

    Raised by :func:`restore` when a file of the step is missing, truncated or
    damaged (the error of Orbax, TensorStore or the JSON reader is chained as
    ``__cause__``) or when a restored array's bytes differ from their checksum.
    The message names the step, the array where known, and the newest other
    saved step that restores intact (or says that none does).
    """


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
      CorruptCheckpointError: the step cannot be restored as it was saved: a
        file of it is missing, truncated or damaged, or an array's bytes differ
        from their checksum. The message names the step and, where known, the
        array; the original error is chained (``__cause__``). It also names the
        newest other step that restores intact (found by restoring the other
        steps, newest first), or says that none does.
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
    try:
        return _restore_step(manager, template, step)
    except CorruptCheckpointError as error:
        advice = _other_steps_advice(manager, template, step)
        raise CorruptCheckpointError(f"{error}; {advice}") from error.__cause__


def _restore_step(manager: ocp.CheckpointManager, template: TrainState, step: int) -> TrainState:
    """Restore and verify one saved step; unreadable data raises CorruptCheckpointError."""
    storable = _to_storable(template)
    sums = _read_checksums(manager, step)
    if sums is not None:
        _check_template(storable, sums, step)
    else:
        warnings.warn(
            f"checkpoint step {step} in {manager.directory} has no checksums (saved by an "
            "older lstm_jax); it is restored unverified.",
            stacklevel=3,
        )
    restored = _read_state(manager, storable, step, verified=sums is not None)
    if sums is not None:
        _verify(restored, sums, manager, step)
    if _is_typed_key(template.key):
        impl = jax.random.key_impl(template.key)
        restored = restored._replace(key=jax.random.wrap_key_data(restored.key, impl=impl))
    return restored


def _corrupt(
    manager: ocp.CheckpointManager, step: int, what: str, error: BaseException | None = None
) -> CorruptCheckpointError:
    """The error for ``step``: ``what`` is wrong, and the first line of ``error``."""
    message = f"checkpoint step {step} in {manager.directory} is corrupt: {what}"
    if error is not None:
        lines = str(error).strip().splitlines() or [""]
        first = lines[0] if len(lines[0]) <= 300 else lines[0][:300] + "..."
        message += f" ({type(error).__name__}: {first})"
    return CorruptCheckpointError(message)


def _read_checksums(manager: ocp.CheckpointManager, step: int) -> dict | None:
    """The step's checksums item, or None when it has none (saved by an older lstm_jax)."""
    try:
        sums = manager.restore(
            step, args=ocp.args.Composite(**{_CHECKSUMS: ocp.args.JsonRestore()})
        )[_CHECKSUMS]
    except Exception as error:  # a missing, truncated or garbled file: any error of any reader
        if isinstance(error, KeyError) and "was not found" in str(error):
            return None  # Orbax: 'Item "checksums" was not found in the checkpoint'
        raise _corrupt(manager, step, "its checksums could not be read", error) from error
    if not _well_formed(sums):
        raise _corrupt(manager, step, "its checksums file holds no valid checksums")
    return sums


def _well_formed(sums: Any) -> bool:
    """``sums`` is ``{path: {"dtype": str, "shape": [int, ...], "crc32": int (optional)}}``."""
    if not isinstance(sums, dict):
        return False
    for entry in sums.values():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)):
            return False
        shape = entry.get("shape")
        if not (isinstance(shape, list) and all(type(n) is int for n in shape)):
            return False
        if "crc32" in entry and type(entry["crc32"]) is not int:
            return False
    return True


def _read_state(
    manager: ocp.CheckpointManager, storable: TrainState, step: int, *, verified: bool
) -> TrainState:
    """The state item of ``step`` read into ``storable``'s structure, shapes and dtypes."""
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), storable
    )
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)})
        )[_STATE]
    except Exception as error:  # Orbax and TensorStore raise many types; all mean "unreadable"
        path = _array_named_in(error, storable)
        what = "its arrays could not be read" if path is None else (
            f"the array state{path} could not be read"
        )
        if not verified:
            what += " (it has no checksums, so a template that does not match it fails here too)"
        raise _corrupt(manager, step, what, error) from error
    return TrainState(*restored) if not isinstance(restored, TrainState) else restored


def _array_named_in(error: BaseException, storable: TrainState) -> str | None:
    """The path (``.params['w']``) of the array whose storage name the error quotes, if any.

    Orbax stores the array at ``.params['w']`` under ``"params.w"``; TensorStore's
    errors quote it (``Error reading "params.w/.zarray"``).
    """
    names = {}
    for path, _ in jax.tree_util.tree_leaves_with_path(storable):
        parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        names[".".join(parts)] = jax.tree_util.keystr(path)
    for quoted in re.findall(r'"([^"/]+)/', str(error)):
        if quoted in names:
            return names[quoted]
    return None


def _verify(restored: TrainState, sums: dict, manager: ocp.CheckpointManager, step: int) -> None:
    """Raise CorruptCheckpointError if a restored array differs from what was saved."""
    # Orbax restores the template's shapes and dtypes (or fails), so the bytes are what can differ
    for path, entry in _checksums(restored).items():
        saved = sums[path]
        if "crc32" in entry and "crc32" in saved and entry["crc32"] != saved["crc32"]:
            raise _corrupt(
                manager, step,
                f"the array state{path} does not match the checksum stored when it was "
                f"saved (crc32 {entry['crc32']:#010x}, saved {saved['crc32']:#010x})",
            )  # fmt: skip


def _other_steps_advice(manager: ocp.CheckpointManager, template: TrainState, step: int) -> str:
    """Which other saved step restores intact (the newest one), and how to use it.

    Restores the other steps, newest first, until one succeeds: this reads
    whole checkpoints, but only after ``step`` failed.
    """
    others = sorted((s for s in manager.all_steps() if s != step), reverse=True)
    if not others:
        return "it is the only saved step, so no intact step is left."
    unreadable = []
    for other in others:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a step without checksums would warn again
                _restore_step(manager, template, other)
        except ValueError:  # corrupt, or saved with other arrays than the template's
            unreadable.append(other)
            continue
        advice = f"{_steps(unreadable)} could not be restored either; " if unreadable else ""
        advice += f"step {other} is intact: restore(manager, template, step={other})"
        if other < step:  # every saved step newer than it is unreadable
            advice += (
                f", or delete {_steps(sorted([step, *unreadable], reverse=True))} "
                f"(manager.delete(step)) so that restore(manager, template) finds step {other}"
            )
        return advice + "."
    return f"no other saved step is intact either ({_steps(unreadable)} could not be restored)."


def _steps(steps: list[int]) -> str:
    """``"step 3"`` or ``"steps 5, 4"``."""
    return ("step " if len(steps) == 1 else "steps ") + ", ".join(map(str, steps))


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
