"""Tests of lstm_jax.checkpoint: round trip, retention, and bitwise-exact resume."""

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


# ------------------------------------- any damage to a saved step: CorruptCheckpointError


def _tiny_state(step):
    state = tr.init_train_state({"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)},
                                optax.sgd(0.1), jax.random.key(0))
    return state._replace(step=jnp.asarray(step, jnp.int32))


def _overwrite(path, data):
    with open(path, "r+b") as f:
        f.write(data)


_DAMAGES = {
    "truncate": lambda path: os.truncate(path, os.path.getsize(path) // 2),
    "delete": os.remove,
    "zero_fill": lambda path: _overwrite(path, bytes(os.path.getsize(path))),
    "random_bytes": lambda path: _overwrite(
        path, np.random.default_rng(0).bytes(os.path.getsize(path))),
}


# After a failed read Orbax's background event loop may print "Event loop is closed"
# from another thread; pytest reports that as an unraisable-exception warning.
_ORBAX_THREAD_NOISE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _save(directory, states, **kwargs):
    manager = ckpt.make_manager(directory, save_every=1, **kwargs)
    for state in states:
        ckpt.save(manager, state)
    ckpt.wait(manager)
    return manager


def _data_file(directory, step):
    """The one OCDBT data file holding the arrays of ``step``."""
    (path,) = (directory / str(step) / "default" / "d").iterdir()
    return path


@pytest.fixture(scope="module")
def saved_step(tmp_path_factory):
    """A pristine checkpoint directory holding step 2 of a tiny state, and that state."""
    directory = tmp_path_factory.mktemp("pristine")
    state = _tiny_state(2)
    _save(directory, [state])
    return directory, state


@_ORBAX_THREAD_NOISE
@pytest.mark.parametrize("damage", sorted(_DAMAGES))
def test_any_damage_to_any_file_of_a_step_raises_corrupt_checkpoint_error(saved_step, damage, tmp_path):
    pristine, state = saved_step
    files = sorted(p.relative_to(pristine) for p in (pristine / "2").rglob("*") if p.is_file())
    assert len(files) >= 5
    raised = []
    for number, name in enumerate(files):
        copy = tmp_path / str(number)
        shutil.copytree(pristine, copy)
        _DAMAGES[damage](copy / name)
        try:
            restored = ckpt.restore(ckpt.make_manager(copy), state)
        except ckpt.CorruptCheckpointError as error:
            assert re.match(r"checkpoint step 2 in \S+ is corrupt: ", str(error)), (name, error)
            assert str(error).endswith("it is the only saved step, so no intact step is left.")
            assert error.__cause__ is not None, name  # the error of Orbax, TensorStore or json
            raised.append(name.as_posix())
        else:  # a file Orbax does not read on restore: the state must be exactly the saved one
            assert_trees_equal(restored, state)
    # the checksums and the file holding the arrays are always read
    assert "2/checksums/metadata" in raised
    assert any(name.startswith("2/default/d/") for name in raised)


@pytest.mark.parametrize("content", ["[1, 2]", '{".step": {"dtype": "int32"}}'])
def test_checksums_that_parse_but_are_not_checksums_are_corrupt(saved_step, content, tmp_path):
    pristine, state = saved_step
    shutil.copytree(pristine, tmp_path / "c")
    (tmp_path / "c" / "2" / "checksums" / "metadata").write_text(content)
    with pytest.raises(ckpt.CorruptCheckpointError,
                       match=r"checkpoint step 2 in .* is corrupt: its checksums file holds no valid"):
        ckpt.restore(ckpt.make_manager(tmp_path / "c"), state)


def test_a_step_without_checksums_restores_unverified_with_a_warning(saved_step, tmp_path):
    # checkpoints saved before checksums existed have no checksums item at all
    pristine, state = saved_step
    shutil.copytree(pristine, tmp_path / "c")
    shutil.rmtree(tmp_path / "c" / "2" / "checksums")
    with pytest.warns(UserWarning, match="checkpoint step 2 in .* has no checksums"):
        restored = ckpt.restore(ckpt.make_manager(tmp_path / "c"), state)
    assert_trees_equal(restored, state)


def _tiny_run():
    """A linear model whose loss depends on the step's key: ``(state, step_fn, get_batch)``."""
    opt = optax.adam(1e-2)

    def loss_fn(params, batch, key):
        noise = 0.1 * jax.random.normal(key, batch["y"].shape)
        return jnp.mean(jnp.square(batch["x"] @ params["w"] + params["b"][None] - batch["y"] - noise)), {}

    def get_batch(step):
        rng = np.random.default_rng([7, step])
        return {"x": rng.normal(size=(4, 2)).astype(np.float32),
                "y": rng.normal(size=(4, 3)).astype(np.float32)}

    state = tr.init_train_state({"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}, opt, jax.random.key(9))
    return state, tr.make_train_step(loss_fn, opt, donate=False), get_batch


@_ORBAX_THREAD_NOISE
def test_an_unreadable_newest_step_names_the_newest_intact_one_and_resuming_from_it_is_exact(tmp_path):
    start, step_fn, get_batch = _tiny_run()
    uninterrupted, _ = tr.fit(start, step_fn, get_batch, num_steps=4, progress=False)
    manager = ckpt.make_manager(tmp_path, save_every=1, keep=3)
    tr.fit(start, step_fn, get_batch, num_steps=3, checkpoint_manager=manager, progress=False)
    _DAMAGES["truncate"](_data_file(tmp_path, 3))
    os.remove(tmp_path / "2" / "checksums" / "metadata")
    # a fresh process resumes: restore the newest step
    manager = ckpt.make_manager(tmp_path, save_every=1, keep=3)
    with pytest.raises(ckpt.CorruptCheckpointError, match=(
            r"checkpoint step 3 in .* is corrupt: the array state\S+ could not be read \(.*\); "
            r"step 2 could not be restored either; step 1 is intact: restore\(manager, template, "
            r"step=1\), or delete steps 3, 2 \(manager\.delete\(step\)\) so that "
            r"restore\(manager, template\) finds step 1\.$")) as info:
        ckpt.restore(manager, start)
    assert isinstance(info.value.__cause__, ValueError)  # TensorStore's OUT_OF_RANGE
    # following the advice resumes from step 1 and ends exactly as the uninterrupted run
    manager.delete(3)
    manager.delete(2)
    resumed = ckpt.restore(manager, start)
    assert int(resumed.step) == 1
    resumed, _ = tr.fit(resumed, step_fn, get_batch, num_steps=4, progress=False)
    assert_trees_equal(resumed, uninterrupted)


@_ORBAX_THREAD_NOISE
def test_the_message_says_when_no_other_step_is_intact(tmp_path):
    manager = _save(tmp_path, [_tiny_state(1), _tiny_state(2)])
    _DAMAGES["zero_fill"](_data_file(tmp_path, 2))
    # an older step asked for explicitly: the newer intact one is named, nothing to delete
    with pytest.raises(ckpt.CorruptCheckpointError, match=(
            r"checkpoint step 2 in .* is corrupt: .*; step 1 is intact: "
            r"restore\(manager, template, step=1\), or delete step 2 ")):
        ckpt.restore(manager, _tiny_state(0))
    _DAMAGES["zero_fill"](_data_file(tmp_path, 1))
    with pytest.raises(ckpt.CorruptCheckpointError, match=(
            r"checkpoint step 2 in .* is corrupt: .*; no other saved step is intact either "
            r"\(step 1 could not be restored\)\.$")):
        ckpt.restore(manager, _tiny_state(0))
