"""Tests of lstm_jax.checkpoint: round trip, retention, and bitwise-exact resume."""

import json
import shutil

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


def _rows_without_time(path):
    rows = [json.loads(line) for line in open(path)]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def test_resumed_log_equals_the_uninterrupted_log(tmp_path):
    params, loss_fn, get_batch, opt = _setup()
    step_fn = tr.make_train_step(loss_fn, opt)
    fit = lambda state, num_steps, writer, **kw: tr.fit(  # noqa: E731
        state, step_fn, get_batch, num_steps=num_steps, log_every=2, eval_every=3,
        eval_fn=lambda p: {"w": jnp.sum(p["head"].w)}, writer=writer, progress=False, **kw)
    fit(tr.init_train_state(params, opt, jax.random.key(9)), 10, tr.MetricsWriter(tmp_path / "a"))

    def crash_at_7(step):
        if step == 7:
            raise RuntimeError("killed")
        return get_batch(step)

    # the first run logs steps 2, 3, 4, 6 and dies in step 8; its newest checkpoint is step 4
    manager = ckpt.make_manager(tmp_path / "ckpt", save_every=4)
    with pytest.raises(RuntimeError, match="killed"):
        tr.fit(tr.init_train_state(params, opt, jax.random.key(9)), step_fn, crash_at_7,
               num_steps=10, log_every=2, eval_every=3, eval_fn=lambda p: {"w": jnp.sum(p["head"].w)},
               writer=tr.MetricsWriter(tmp_path / "b"), checkpoint_manager=manager, progress=False)
    ckpt.wait(manager)
    assert [r["step"] for r in _rows_without_time(tmp_path / "b" / "metrics.jsonl")] == [2, 3, 4, 6]
    # a fresh process: a new writer on the same directory, the state restored at step 4
    manager = ckpt.make_manager(tmp_path / "ckpt", save_every=4)
    resumed = ckpt.restore(manager, tr.init_train_state(params, opt, jax.random.key(0)))
    assert int(resumed.step) == 4
    fit(resumed, 10, tr.MetricsWriter(tmp_path / "b"), checkpoint_manager=manager)
    expected = _rows_without_time(tmp_path / "a" / "metrics.jsonl")
    assert [r["step"] for r in expected] == [2, 3, 4, 6, 8, 9, 10]
    assert _rows_without_time(tmp_path / "b" / "metrics.jsonl") == expected
    with open(tmp_path / "a" / "metrics.csv") as a, open(tmp_path / "b" / "metrics.csv") as b:
        assert len(a.readlines()) == len(b.readlines()) == 8


def test_ctrl_c_saves_a_checkpoint_and_the_resumed_run_is_exact(tmp_path):
    params, loss_fn, get_batch, opt = _setup()
    step_fn = tr.make_train_step(loss_fn, opt)
    uninterrupted, _ = tr.fit(tr.init_train_state(params, opt, jax.random.key(9)), step_fn,
                              get_batch, num_steps=9, progress=False)

    def ctrl_c_at_5(step):
        if step == 5:
            raise KeyboardInterrupt
        return get_batch(step)

    manager = ckpt.make_manager(tmp_path / "ckpt", save_every=100)
    writer = tr.MetricsWriter(tmp_path, start_step=0)
    with pytest.raises(tr.TrainingInterrupted, match="checkpoint saved at step 5") as info:
        tr.fit(tr.init_train_state(params, opt, jax.random.key(9)), step_fn, ctrl_c_at_5,
               num_steps=9, log_every=1, writer=writer, checkpoint_manager=manager, progress=False)
    assert isinstance(info.value, KeyboardInterrupt)
    assert int(info.value.state.step) == 5 and [r["step"] for r in info.value.history] == [1, 2, 3, 4, 5]
    assert ckpt.latest_step(manager) == 5
    resumed = ckpt.restore(ckpt.make_manager(tmp_path / "ckpt"),
                           tr.init_train_state(params, opt, jax.random.key(0)))
    assert_trees_equal(resumed, info.value.state)
    resumed, _ = tr.fit(resumed, step_fn, get_batch, num_steps=9, log_every=1,
                        writer=tr.MetricsWriter(tmp_path), progress=False)
    assert_trees_equal(resumed, uninterrupted)
    assert [r["step"] for r in _rows_without_time(tmp_path / "metrics.jsonl")] == list(range(1, 10))
    # Ctrl-C just after a train step consumed its donated input: nothing left to save
    def interrupted_step(state, batch):
        step_fn(state, batch)
        raise KeyboardInterrupt

    with pytest.raises(tr.TrainingInterrupted, match=r"cannot be saved \(newest checkpoint: step 5\)"):
        tr.fit(tr.init_train_state(params, opt, jax.random.key(9)), interrupted_step, get_batch,
               num_steps=9, checkpoint_manager=ckpt.make_manager(tmp_path / "ckpt"), progress=False)
    # without a manager nothing is saved, and the message says so
    with pytest.raises(tr.TrainingInterrupted, match="not saved"):
        tr.fit(tr.init_train_state(params, opt, jax.random.key(9)), step_fn, ctrl_c_at_5,
               num_steps=9, progress=False)


def test_a_flipped_bit_in_a_stored_array_is_detected(tmp_path):
    params, _, _, opt = _setup()
    state = tr.init_train_state(params, opt, jax.random.key(0))._replace(step=jnp.asarray(3, jnp.int32))
    bits = np.array(state.params["head"].w).view(np.uint32)
    bits[1, 0] ^= 1 << 30  # one bit of the exponent: the value becomes ~1e38
    flipped = state._replace(params={**state.params, "head": state.params["head"]._replace(
        w=jnp.asarray(bits.view(np.float32)))})
    for name, s in (("good", state), ("flipped", flipped)):
        manager = ckpt.make_manager(tmp_path / name, save_every=1)
        ckpt.save(manager, s)
        ckpt.wait(manager)
    # the arrays of the flipped state, stored under the good state's checksums: the
    # bytes on disk changed after the save, as a bit flip on the disk would change them
    shutil.rmtree(tmp_path / "good" / "3" / "default")
    shutil.copytree(tmp_path / "flipped" / "3" / "default", tmp_path / "good" / "3" / "default")
    with pytest.raises(ckpt.CorruptCheckpointError,
                       match=r"checkpoint step 3 in .* is corrupt: the array state\.params\['head'\]\.w "):
        ckpt.restore(ckpt.make_manager(tmp_path / "good"), state)
    restored = ckpt.restore(ckpt.make_manager(tmp_path / "flipped"), state)  # intact: restores
    assert_trees_equal(restored.params, flipped.params)


def test_restore_checks_the_step_and_the_template(tmp_path):
    params, _, _, opt = _setup()
    state = tr.init_train_state(params, opt, jax.random.key(0))
    manager = ckpt.make_manager(tmp_path, save_every=2)
    for step in (2, 4):
        ckpt.save(manager, state._replace(step=jnp.asarray(step, jnp.int32)))
    ckpt.wait(manager)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 3 .*saved steps: \[2, 4\]"):
        ckpt.restore(manager, state, step=3)
    half = state._replace(params={**params, "head": jax.tree_util.tree_map(
        lambda x: x.astype(jnp.bfloat16), params["head"])})
    with pytest.raises(ValueError, match=r"template state\.params\['head'\]\.w has dtype bfloat16"):
        ckpt.restore(manager, half)
    other = tr.init_train_state(params, tr.make_optimizer(1e-2, clip_norm=None, weight_decay=0.1),
                                jax.random.key(0))
    with pytest.raises(ValueError, match="template does not match checkpoint step 4"):
        ckpt.restore(manager, other)
