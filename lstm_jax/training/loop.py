"""The training loop: :func:`fit` (logging, evaluation, checkpoints, Ctrl-C, skipped steps)."""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
from jax import Array

from lstm_jax.training._checks import check_int
from lstm_jax.training.metrics import MetricsWriter
from lstm_jax.training.state import TrainState

__all__ = [
    "fit",
    "TrainingInterrupted",
]


def fit(
    state: TrainState,
    train_step: Callable,
    get_batch: Callable[[int], Any],
    *,
    num_steps: int,
    log_every: int = 50,
    eval_every: int = 0,
    eval_fn: Optional[Callable[[Any], Mapping[str, float]]] = None,
    writer: Optional["MetricsWriter"] = None,
    checkpoint_manager: Any = None,
    max_consecutive_skips: Optional[int] = 10,
    progress: bool = True,
    desc: str = "train",
) -> tuple[TrainState, list[dict]]:
    """Run ``train_step`` until ``state.step == num_steps``, with a tqdm bar.

    Batches come from ``get_batch(step)``, a function of the step number, so a
    run resumed from a checkpoint sees exactly the batches it would have seen.

    Args:
      state: the starting (possibly restored) :class:`TrainState`.
      train_step: from :func:`make_train_step`.
      get_batch: ``step -> batch``.
      num_steps: total steps of the run (not steps still to go).
      log_every: average the train metrics over this many steps, then log.
      eval_every: call ``eval_fn(params)`` every this many steps (and at the end).
      eval_fn: ``params -> dict`` of validation metrics.
      writer: a :class:`MetricsWriter` receiving every logged row; its rows
        past the starting step are dropped first (:meth:`MetricsWriter.rewind`),
        so a resumed run's log equals an uninterrupted run's.
      checkpoint_manager: an ``lstm_jax.checkpoint`` manager; the state is
        offered to it after every step (it saves every N steps) and at the end.
      max_consecutive_skips: stop with ``FloatingPointError`` once this many
        steps in a row were skipped for a non-finite loss or gradient
        (``metrics["skipped"]``, see :func:`make_train_step`); None never stops.
        Logged rows hold ``skipped``, the number of skipped steps they cover.
      progress: show a tqdm progress bar.
      desc: the progress bar's label.

    Returns:
      ``(state, history)``: the final state and the logged rows.

    Raises:
      TrainingInterrupted: on Ctrl-C (``KeyboardInterrupt``), after saving the
        last completed step with ``checkpoint_manager``. The metrics of steps
        not yet logged are lost, so after resuming, the first row averages
        only the steps run since (exact when the step resumed from is a
        multiple of ``log_every``).
      FloatingPointError: after ``max_consecutive_skips`` skipped steps in a row.
    """
    from tqdm.auto import tqdm  # imported here: only the loop needs it

    if checkpoint_manager is not None:
        from lstm_jax import checkpoint as ckpt  # imported here: Orbax only with a manager

    if max_consecutive_skips is not None:
        check_int("max_consecutive_skips", max_consecutive_skips, low=1)
    start = int(state.step)
    if writer is not None:
        writer.rewind(start)
    history: list[dict] = []
    pending: list[dict] = []
    skips = _SkipCounter(max_consecutive_skips)
    t0 = time.perf_counter()
    bar = tqdm(total=num_steps, initial=start, desc=desc, disable=not progress, leave=True)
    try:
        for step in range(start, num_steps):
            state, metrics = train_step(state, get_batch(step))
            skips.push(step, metrics)
            pending.append(metrics)
            done = step + 1
            is_last = done == num_steps
            if checkpoint_manager is not None:
                ckpt.save(checkpoint_manager, state, force=is_last)
            row: dict = {}
            if pending and (done % max(log_every, 1) == 0 or is_last):
                row.update(_summarize(jax.device_get(pending)))
                pending = []
            if eval_fn is not None and ((eval_every and done % eval_every == 0) or is_last):
                row.update({f"val_{k}": float(v) for k, v in eval_fn(state.params).items()})
            if row:
                row = {"step": done, "time_s": round(time.perf_counter() - t0, 3), **row}
                history.append(row)
                if writer is not None:
                    writer.write(row)
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in ("step",)})
            bar.update(1)
        skips.flush()
    except KeyboardInterrupt:
        raise _interrupted(state, history, checkpoint_manager) from None
    finally:
        bar.close()
        if checkpoint_manager is not None:  # also on an error: finish the saves under way
            ckpt.wait(checkpoint_manager)
    return state, history


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :func:`fit` on Ctrl-C, once the state is checkpointed.

    A ``KeyboardInterrupt``, so the program still stops; ``state`` and
    ``history`` hold the last completed step's state and the rows logged.
    """

    def __init__(self, message: str, state: TrainState, history: list[dict]):
        super().__init__(message)
        self.state = state
        self.history = history


def _interrupted(state: TrainState, history: list[dict], manager: Any) -> TrainingInterrupted:
    """Save ``state`` (when a manager is given) and describe where training stopped."""
    leaves = jax.tree_util.tree_leaves(state)
    if any(isinstance(x, jax.Array) and x.is_deleted() for x in leaves):
        # Ctrl-C landed inside a train step that had already consumed its donated input
        message = (
            "training interrupted inside a train step; its input state was donated, so "
            "it cannot be saved"
        )
        if manager is not None:
            message += f" (newest checkpoint: step {manager.latest_step()})"
        return TrainingInterrupted(message + ".", state, history)
    step = int(state.step)
    if manager is None:
        message = f"training interrupted after step {step} (no checkpoint_manager: not saved)."
    else:
        from lstm_jax import checkpoint as ckpt  # imported here: Orbax only with a manager

        ckpt.save(manager, state, force=True)
        ckpt.wait(manager)
        message = (
            f"training interrupted after step {step}; checkpoint saved at step {step} in "
            f"{manager.directory}: restore it and call fit again to resume."
        )
    return TrainingInterrupted(message, state, history)


def _summarize(metrics: list[dict]) -> dict:
    """One log row from per-step metrics: means, except ``skipped`` which is summed."""
    return {
        k: int(np.sum([m[k] for m in metrics])) if k == "skipped"
        else float(np.mean([m[k] for m in metrics]))
        for k in metrics[0]
    }  # fmt: skip


class _SkipCounter:
    """Counts consecutive skipped steps in :func:`fit` and stops the run after ``limit``.

    A step's ``skipped`` flag is read once the next step is dispatched, so
    waiting for it does not leave the device idle.
    """

    def __init__(self, limit: Optional[int]):
        self.limit = limit
        self.run = 0  # consecutive skipped steps so far
        self.unread: Optional[tuple[int, Array]] = None  # (step, flag) not read yet

    def push(self, step: int, metrics: Mapping[str, Array]) -> None:
        if self.limit is None or "skipped" not in metrics:
            return
        previous, self.unread = self.unread, (step, metrics["skipped"])
        if previous is not None:
            self._count(*previous)

    def flush(self) -> None:
        if self.unread is not None:
            previous, self.unread = self.unread, None
            self._count(*previous)

    def _count(self, step: int, flag: Array) -> None:
        self.run = self.run + 1 if int(flag) else 0
        if self.run >= self.limit:
            raise FloatingPointError(
                f"{self.run} consecutive train steps (the batches of steps "
                f"{step - self.run + 1}..{step}) had a non-finite loss, gradient or update "
                f"and were skipped; stopping (max_consecutive_skips={self.limit}). The "
                "params are those before the first of them: look for NaN/inf in those "
                "batches, or lower the learning rate."
            )

