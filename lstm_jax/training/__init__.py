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

One module per job; every name is importable from ``lstm_jax.training``:

* ``state``: :class:`TrainState`, the one update (:func:`state.apply_gradients`)
  and the one jit (:func:`compile_step`);
* ``optim``: :func:`make_optimizer`;
* ``steps``: :func:`make_train_step`, :func:`make_eval_step`, :func:`evaluate`;
* ``tbptt``: :func:`make_tbptt_train_step`, :func:`split_chunks`;
* ``loop``: :func:`fit`, :class:`TrainingInterrupted`;
* ``losses``: masked losses and pooling;
* ``model``: :class:`Dense`, :func:`apply_network`, :func:`count_params`;
* ``streaming``: :func:`init_stream_state`, :func:`stream_step`;
* ``metrics``: :class:`MetricsWriter`, :func:`write_json`.

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

from lstm_jax.training.state import TrainState
from lstm_jax.training.state import init_train_state
from lstm_jax.training.state import compile_step
from lstm_jax.training.optim import make_optimizer
from lstm_jax.training.steps import make_train_step
from lstm_jax.training.steps import make_eval_step
from lstm_jax.training.steps import evaluate
from lstm_jax.training.tbptt import make_tbptt_train_step
from lstm_jax.training.tbptt import split_chunks
from lstm_jax.training.loop import fit
from lstm_jax.training.loop import TrainingInterrupted
from lstm_jax.training.losses import sequence_mask
from lstm_jax.training.losses import masked_mean
from lstm_jax.training.losses import last_valid
from lstm_jax.training.losses import masked_mean_pool
from lstm_jax.training.losses import softmax_cross_entropy
from lstm_jax.training.losses import accuracy
from lstm_jax.training.losses import regression_loss
from lstm_jax.training.losses import next_token_loss
from lstm_jax.training.losses import bits_per_token
from lstm_jax.training.model import Dense
from lstm_jax.training.model import init_dense
from lstm_jax.training.model import dense
from lstm_jax.training.model import apply_network
from lstm_jax.training.model import count_params
from lstm_jax.training.streaming import init_stream_state
from lstm_jax.training.streaming import stream_step
from lstm_jax.training.metrics import MetricsWriter
from lstm_jax.training.metrics import write_json

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
