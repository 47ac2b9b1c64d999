"""Training with Optax: train state, jitted train step, losses, metrics, long streams.

The pieces are pure functions over pytrees, so they compose with ``jit``,
``grad`` and sharding:

* :class:`TrainState` is a NamedTuple of ``params``, ``opt_state``, ``step``
  and the PRNG ``key``; it is the only thing a train step carries.
* :func:`make_train_step` turns ``loss_fn(params, batch, key) -> (loss,
  metrics)`` and any ``optax.GradientTransformation`` into a pure
  ``train_step(state, batch) -> (state, metrics)``, jitted in one place
  (:func:`compile_step`) with the state's buffers donated. Data-parallel
  sharding only needs ``in_shardings``/``out_shardings`` passed there.
* Losses are masked so that ragged batches (``seq_lengths``) and padded
  positions never contribute: sequence classification (last valid step or
  masked mean over valid steps), per-step regression, next-token
  cross-entropy for language models.
* Long streams: truncated BPTT over chunks with the recurrent state carried
  between chunks behind ``lax.stop_gradient`` (:func:`make_tbptt_train_step`),
  and a one-step streaming API for online prediction (:func:`stream_step`).

Notation: B = batch, T = time, F = features, V = vocabulary, C = classes.

>>> import jax, jax.numpy as jnp, optax, lstm_jax as lj
>>> from lstm_jax import training as tr
>>> params = {"rnn": lj.init_lstm(jax.random.key(0), 2, 8), "head": tr.init_dense(jax.random.key(1), 8, 1)}
>>> def loss_fn(params, batch, key):
...     ys, _ = lj.lstm(params["rnn"], batch["x"])
...     loss = tr.regression_loss(tr.dense(params["head"], ys), batch["y"])
...     return loss, {}
>>> opt = tr.make_optimizer(1e-2, clip_norm=1.0)
>>> state = tr.init_train_state(params, opt, jax.random.key(2))
>>> step = tr.make_train_step(loss_fn, opt)
>>> state, metrics = step(state, {"x": jnp.ones((4, 5, 2)), "y": jnp.zeros((4, 5, 1))})
>>> int(state.step)
1
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from lstm_jax import cells, validation
from lstm_jax.network import gru, lstm, rnn
from lstm_jax.params import GRUParams, LSTMParams, LSTMState, RNNParams

__all__ = [
    "TrainState",
    "init_train_state",
    "make_optimizer",
    "make_train_step",
    "make_eval_step",
    "make_tbptt_train_step",
    "compile_step",
    "evaluate",
    "fit",
    "TrainingInterrupted",
    "Dense",
    "init_dense",
    "dense",
    "apply_network",
    "count_params",
    "sequence_mask",
    "masked_mean",
    "last_valid",
    "masked_mean_pool",
    "softmax_cross_entropy",
    "accuracy",
    "regression_loss",
    "next_token_loss",
    "bits_per_token",
    "split_chunks",
    "init_stream_state",
    "stream_step",
    "MetricsWriter",
    "write_json",
]

LossFn = Callable[[Any, Any, Array], tuple[Array, Mapping[str, Array]]]


# ------------------------------------------------------------------ the state


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

    >>> opt = make_optimizer(1e-3, clip_norm=1.0, warmup_steps=10, decay_steps=100)
    >>> opt.init({"w": jnp.zeros(2)}) is not None
    True
    """
    if not callable(learning_rate):
        _check_real("learning_rate", learning_rate, "a number > 0 or an optax schedule", low=0.0)
    if clip_norm is not None:
        _check_real("clip_norm", clip_norm, "a number > 0 or None", low=0.0)
    _check_real("weight_decay", weight_decay, "a number >= 0", low=0.0, low_ok=True)
    _check_int("warmup_steps", warmup_steps, low=0)
    if decay_steps is not None:
        _check_int("decay_steps", decay_steps, low=1)
    _check_real("end_lr_fraction", end_lr_fraction, "a number in [0, 1]", low=0.0, low_ok=True,
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


def _check_real(
    name: str, value: Any, expected: str, *, low: float, low_ok: bool = False,
    high: Optional[float] = None,
) -> None:
    """Raise ValueError unless ``value`` is a finite real in ``(low, high]`` (``[low, ...`` with low_ok)."""
    array = np.asarray(value) if isinstance(value, (int, float, np.generic, jax.Array)) else None
    is_real = array is not None and array.ndim == 0 and array.dtype.kind in "iuf"  # not bool
    if (
        not is_real
        or not math.isfinite(array)
        or array < low
        or (array == low and not low_ok)
        or (high is not None and array > high)
    ):
        raise ValueError(f"{name} must be {expected}, got {value!r}.")


def _check_int(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


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


def _apply_gradients(
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
        new_state, skipped = _apply_gradients(state, optimizer, loss, grads, key)
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
        new_state, skipped = _apply_gradients(state, optimizer, loss, grads, key)
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

    from lstm_jax import checkpoint as ckpt  # imported here: checkpoint imports this module

    if max_consecutive_skips is not None:
        _check_int("max_consecutive_skips", max_consecutive_skips, low=1)
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
    if checkpoint_manager is not None:
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
    from lstm_jax import checkpoint as ckpt

    leaves = jax.tree_util.tree_leaves(state)
    if any(isinstance(x, jax.Array) and x.is_deleted() for x in leaves):
        # Ctrl-C landed inside a train step that had already consumed its donated input
        saved = None if manager is None else ckpt.latest_step(manager)
        message = (
            "training interrupted inside a train step; its input state was donated, so "
            f"it cannot be saved (newest checkpoint: step {saved})."
        )
        return TrainingInterrupted(message, state, history)
    step = int(state.step)
    if manager is None:
        message = f"training interrupted after step {step} (no checkpoint_manager: not saved)."
    else:
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


# ------------------------------------------------------------ model helpers


class Dense(NamedTuple):
    """A dense (affine) layer: ``x @ w + b``."""

    w: Array  # (F_in, F_out)
    b: Array  # (F_out,)


def init_dense(key: Array, in_size: int, out_size: int, *, dtype=jnp.float32) -> Dense:
    """Uniform in ``±1/sqrt(in_size)`` like PyTorch's ``nn.Linear``; zero bias.

    >>> init_dense(jax.random.key(0), 8, 3).w.shape
    (8, 3)
    """
    bound = 1.0 / math.sqrt(in_size)
    w = jax.random.uniform(key, (in_size, out_size), dtype, -bound, bound)
    return Dense(w, jnp.zeros((out_size,), dtype))


def dense(params: Dense, x: Array) -> Array:
    """``(..., F_in) -> (..., F_out)``."""
    y = jnp.matmul(x, params.w)
    return y + params.b.reshape((1,) * (y.ndim - 1) + params.b.shape)  # explicit rank


def apply_network(params: Any, xs: Array, **kwargs) -> tuple[Array, Any]:
    """``lj.lstm``, ``lj.gru`` or ``lj.rnn``, chosen by the type of ``params``.

    >>> import lstm_jax as lj
    >>> ys, h = apply_network(lj.init_gru(jax.random.key(0), 2, 4), jnp.ones((3, 5, 2)))
    >>> ys.shape
    (3, 5, 4)
    """
    if isinstance(params, LSTMParams):
        return lstm(params, xs, **kwargs)
    if isinstance(params, GRUParams):
        return gru(params, xs, **kwargs)
    if isinstance(params, RNNParams):
        return rnn(params, xs, **kwargs)
    raise TypeError(
        f"params must be LSTMParams, GRUParams or RNNParams, got {type(params).__name__}."
    )


def count_params(params: Any) -> int:
    """Number of scalars in a pytree."""
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


# ------------------------------------------------------------------- losses


def sequence_mask(seq_lengths: Optional[Array], num_steps: int) -> Optional[Array]:
    """``(B, T)`` float mask, 1 where ``t < seq_lengths[b]``; None without lengths."""
    if seq_lengths is None:
        return None
    return (jnp.arange(num_steps)[None, :] < jnp.asarray(seq_lengths)[:, None]).astype(
        jnp.float32
    )


def masked_mean(values: Array, mask: Optional[Array] = None) -> Array:
    """Mean of ``values`` over the positions where ``mask`` is nonzero.

    ``mask`` has the shape of ``values`` or a prefix of it (trailing axes are
    averaged too). With no valid position the result is 0, not NaN.

    >>> float(masked_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([1.0, 1.0, 0.0])))
    2.0
    """
    if mask is None:
        return jnp.mean(values)
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
    """``(B, T, F) -> (B, F)``: mean over each sequence's valid steps."""
    if seq_lengths is None:
        return jnp.mean(ys, axis=1)
    mask = sequence_mask(seq_lengths, ys.shape[1]).astype(ys.dtype)  # [B, T]
    total = jnp.einsum("btf,bt->bf", ys, mask)
    return total / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0)


def softmax_cross_entropy(
    logits: Array, labels: Array, mask: Optional[Array] = None
) -> Array:
    """Mean cross-entropy (nats) of integer ``labels`` over valid positions.

    Args:
      logits: ``(..., C)``.
      labels: ``(...)`` integers in ``0..C-1``.
      mask: optional ``(...)`` weights (1 valid, 0 padding).

    >>> float(softmax_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3])))  # log 4
    1.3862943649291992
    """
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
      seq_lengths: optional ``(B,)`` lengths; steps at or past them are ignored.
      kind: ``"mse"``, ``"mae"`` or ``"huber"``.

    >>> p = jnp.zeros((1, 3, 1)); y = jnp.array([[[1.0], [1.0], [9.0]]])
    >>> float(regression_loss(p, y, jnp.array([2])))
    1.0
    """
    diff = preds - targets
    if kind == "mse":
        errors = jnp.square(diff)
    elif kind == "mae":
        errors = jnp.abs(diff)
    elif kind == "huber":
        errors = optax.huber_loss(preds, targets)
    else:
        raise ValueError(f"kind must be one of ('mse', 'mae', 'huber'), got {kind!r}.")
    mask = None if seq_lengths is None else sequence_mask(seq_lengths, preds.shape[1])
    return masked_mean(errors, mask)


def next_token_loss(
    logits: Array, tokens: Array, seq_lengths: Optional[Array] = None
) -> Array:
    """Masked next-token cross-entropy (nats per predicted token).

    ``logits[:, t]`` predicts ``tokens[:, t + 1]``; the last position has no
    target. With ``seq_lengths`` only targets inside the sequence count.

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


# ------------------------------------------------------------ streaming API


def _stream_layers(params: Any) -> tuple[str, Any]:
    if isinstance(params, LSTMParams):
        kind = "lstm"
    elif isinstance(params, GRUParams):
        kind = "gru"
    elif isinstance(params, RNNParams):
        kind = "rnn"
    else:
        raise TypeError(
            f"params must be LSTMParams, GRUParams or RNNParams, got {type(params).__name__}."
        )
    validation.check_params(params)
    if len(params.layers[0]) != 1:
        raise ValueError(
            "stream_step needs a unidirectional network: a reverse direction must see "
            "the whole sequence before its first output."
        )
    return kind, params.layers


def init_stream_state(params: Any, batch_shape: Sequence[int] = ()) -> Any:
    """Zero state for :func:`stream_step`, laid out like the networks' final state.

    LSTM: ``LSTMState(h: (L, *batch_shape, R), c: (L, *batch_shape, H))``;
    GRU / RNN: ``h: (L, *batch_shape, H)``.

    >>> import lstm_jax as lj
    >>> init_stream_state(lj.init_lstm(jax.random.key(0), 2, 4, num_layers=2), (3,)).c.shape
    (2, 3, 4)
    """
    kind, layers = _stream_layers(params)
    batch_shape = tuple(batch_shape)
    first = layers[0][0]
    dtype = first.w_hh.dtype
    num_layers = len(layers)
    if kind == "lstm":
        hidden = first.w_hh.shape[1] // 4
        out = first.w_hh.shape[0]
        return LSTMState(
            jnp.zeros((num_layers, *batch_shape, out), dtype),
            jnp.zeros((num_layers, *batch_shape, hidden), dtype),
        )
    return jnp.zeros((num_layers, *batch_shape, first.w_hh.shape[0]), dtype)


def stream_step(
    params: Any, state: Any, x_t: Array, *, nonlinearity: str = "tanh"
) -> tuple[Array, Any]:
    """One time step of a stacked unidirectional network, for online prediction.

    Feeding a sequence one step at a time gives the outputs and final state of
    ``lj.lstm`` / ``lj.gru`` / ``lj.rnn`` on the whole sequence (tested).

    Args:
      params: ``LSTMParams``, ``GRUParams`` or ``RNNParams`` (one direction).
      state: the previous state (:func:`init_stream_state`, or a network's
        final state to continue from).
      x_t: ``(I,)`` or ``(B, I)`` input at this step.
      nonlinearity: for RNN params, ``"tanh"`` or ``"relu"``.

    Returns:
      ``(y_t, state)``: the top layer's output ``(R,)`` or ``(B, R)`` and the new state.

    >>> import lstm_jax as lj
    >>> p = lj.init_lstm(jax.random.key(0), 2, 4)
    >>> y, s = stream_step(p, init_stream_state(p), jnp.ones(2))
    >>> y.shape
    (4,)
    """
    kind, layers = _stream_layers(params)
    validation.check_stream(params, state, x_t)
    if kind == "lstm":
        step = lambda w, s, x: cells.lstm_cell(w, s, x)  # noqa: E731
    elif kind == "gru":
        step = lambda w, s, x: cells.gru_cell(w, s, x)  # noqa: E731
    else:
        step = lambda w, s, x: cells.rnn_cell(w, s, x, nonlinearity=nonlinearity)  # noqa: E731
    if x_t.ndim == 2:
        step = jax.vmap(step, in_axes=(None, 0, 0))
    new_states = []
    inputs = x_t
    for layer, layer_weights in enumerate(layers):
        w = layer_weights[0]
        if kind == "lstm":
            carry = step(w, (state.h[layer], state.c[layer]), inputs)
            inputs = carry[0]
        else:
            carry = step(w, state[layer], inputs)
            inputs = carry
        new_states.append(carry)
    if kind == "lstm":
        new_state = LSTMState(
            jnp.stack([s[0] for s in new_states]), jnp.stack([s[1] for s in new_states])
        )
    else:
        new_state = jnp.stack(new_states)
    return inputs, new_state


# ------------------------------------------------------------------ metrics


def _to_builtin(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(v) for v in value]
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        arr = np.asarray(value)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    return value


def write_json(path: Union[str, os.PathLike], obj: Any) -> None:
    """Write ``obj`` (arrays become numbers or lists) as indented JSON."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_to_builtin(obj), f, indent=2, sort_keys=True)
        f.write("\n")


class MetricsWriter:
    """Appends metric rows to ``<out>/<name>.jsonl`` and rewrites ``<out>/<name>.csv``.

    The CSV's columns are the union of the keys seen so far (rows missing a
    key leave it empty), so training and validation rows share one file.

    Rows already in the JSONL file are kept, so a resumed run continues its
    log. :meth:`rewind` drops the rows logged after a step; :func:`fit` calls
    it with the step it starts from, so a run from step 0 starts a new log and
    a run resumed from a checkpoint at step s first drops what the interrupted
    run logged after s. Outside :func:`fit`, pass ``start_step`` (0 for a new
    run, the restored step when resuming).
    """

    def __init__(
        self,
        out_dir: Union[str, os.PathLike],
        name: str = "metrics",
        *,
        start_step: Optional[int] = None,
    ):
        os.makedirs(out_dir, exist_ok=True)
        self.jsonl_path = os.path.join(out_dir, f"{name}.jsonl")
        self.csv_path = os.path.join(out_dir, f"{name}.csv")
        self.rows: list[dict] = self._read_jsonl()
        if start_step is not None:
            self.rewind(start_step)

    def _read_jsonl(self) -> list[dict]:
        if not os.path.exists(self.jsonl_path):
            return []
        with open(self.jsonl_path) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                if number == len(lines):  # a write cut short by a killed process
                    break
                raise ValueError(f"{self.jsonl_path}, line {number}: not JSON ({error}).") from None
        return rows

    def rewind(self, step: int) -> None:
        """Drop the rows whose ``step`` is past ``step`` (and rows without one), in both files."""
        kept = [r for r in self.rows if isinstance(r.get("step"), int) and r["step"] <= step]
        if kept == self.rows and os.path.exists(self.jsonl_path):
            return
        self.rows = kept
        tmp = self.jsonl_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in self.rows)
        os.replace(tmp, self.jsonl_path)  # a kill mid-write leaves the old log whole
        self._write_csv()

    def write(self, row: Mapping[str, Any]) -> None:
        row = _to_builtin(dict(row))
        self.rows.append(row)
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for r in self.rows:
            columns.extend(k for k in r if k not in columns)
        with open(self.csv_path, "w", newline="") as f:
            if self.rows:
                out = csv.DictWriter(f, fieldnames=columns)
                out.writeheader()
                out.writerows(self.rows)
