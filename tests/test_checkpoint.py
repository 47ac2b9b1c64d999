"""Tests of lstm_jax.checkpoint: round trip, retention, and bitwise-exact resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from lstm_jax import checkpoint as ckpt
from lstm_jax import training as tr


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _setup():
    params = {
        "rnn": lj.init_lstm(jax.random.key(0), 3, 6, num_layers=2, peephole=True),
        "head": tr.init_dense(jax.random.key(1), 6, 2),
    }

    def loss_fn(params, batch, key):
        # recurrent dropout makes the result depend on the PRNG key carried in the state
        ys, _ = lj.lstm(params["rnn"], batch["x"], seq_lengths=batch["lengths"],
                        recurrent_dropout=0.2, dropout=0.1, key=key)
        logits = tr.dense(params["head"], tr.last_valid(ys, batch["lengths"]))
        return tr.softmax_cross_entropy(logits, batch["y"]), {}

    def get_batch(step):
        rng = np.random.default_rng([7, step])
        return {
            "x": rng.normal(size=(4, 5, 3)).astype(np.float32),
            "y": rng.integers(0, 2, size=4).astype(np.int32),
            "lengths": rng.integers(1, 6, size=4).astype(np.int32),
        }

    opt = tr.make_optimizer(1e-2, clip_norm=0.5, warmup_steps=3, decay_steps=20)
    return params, loss_fn, get_batch, opt


def test_round_trip_keeps_structure_dtypes_and_typed_key(tmp_path):
    params, _, _, opt = _setup()
    state = tr.init_train_state(params, opt, jax.random.key(42))
    state = state._replace(step=jnp.asarray(5, jnp.int32))
    manager = ckpt.make_manager(tmp_path, save_every=5, keep=2)
    assert ckpt.save(manager, state)
    ckpt.wait(manager)
    assert ckpt.latest_step(manager) == 5
    template = tr.init_train_state(params, opt, jax.random.key(0))
    restored = ckpt.restore(manager, template)
    assert_trees_equal(restored, state)
    assert restored.params["rnn"].layers[0][0].w_hr is None  # optional fields stay None


def test_saves_every_n_and_keeps_the_last_k(tmp_path):
    params, loss_fn, get_batch, opt = _setup()
    state = tr.init_train_state(params, opt, jax.random.key(0))
    manager = ckpt.make_manager(tmp_path, save_every=2, keep=2)
    state, _ = tr.fit(state, tr.make_train_step(loss_fn, opt), get_batch, num_steps=7,
                      checkpoint_manager=manager, progress=False)
    # steps 2, 4, 6 by the interval and 7 at the end; only the last two kept
    assert manager.all_steps() == [6, 7]
    assert_trees_equal(ckpt.restore(manager, state), state)
    assert int(ckpt.restore(manager, state, step=6).step) == 6


def test_resumed_run_equals_uninterrupted_run_bitwise(tmp_path):
    params, loss_fn, get_batch, opt = _setup()
    step_fn = tr.make_train_step(loss_fn, opt)
    uninterrupted, _ = tr.fit(tr.init_train_state(params, opt, jax.random.key(9)), step_fn,
                              get_batch, num_steps=10, progress=False)
    # first run: "killed" after step 6 (checkpoints every 3 steps)
    manager = ckpt.make_manager(tmp_path, save_every=3, keep=1)
    tr.fit(tr.init_train_state(params, opt, jax.random.key(9)), step_fn, get_batch,
           num_steps=6, checkpoint_manager=manager, progress=False)
    # second run: a fresh process would rebuild the template and restore
    manager = ckpt.make_manager(tmp_path, save_every=3, keep=1)
    template = tr.init_train_state(params, opt, jax.random.key(123))
    resumed = ckpt.restore(manager, template)
    assert int(resumed.step) == 6
    resumed, _ = tr.fit(resumed, step_fn, get_batch, num_steps=10, progress=False)
    assert_trees_equal(resumed, uninterrupted)


def test_errors(tmp_path):
    params, _, _, opt = _setup()
    template = tr.init_train_state(params, opt, jax.random.key(0))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.restore(ckpt.make_manager(tmp_path / "empty"), template)
    with pytest.raises(ValueError, match="save_every must be >= 1"):
        ckpt.make_manager(tmp_path, save_every=0)
    with pytest.raises(ValueError, match="keep must be >= 1"):
        ckpt.make_manager(tmp_path, keep=0)
