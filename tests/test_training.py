"""Tests of lstm_jax.training: train step, optimizers, masked losses, TBPTT, streaming, metrics."""

import csv
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lstm_jax as lj
from lstm_jax import training as tr


def assert_trees_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _regression_setup(hidden=8):
    params = {
        "rnn": lj.init_lstm(jax.random.key(0), 2, hidden),
        "head": tr.init_dense(jax.random.key(1), hidden, 1),
    }

    def loss_fn(params, batch, key):
        del key
        ys, _ = lj.lstm(params["rnn"], batch["x"], seq_lengths=batch["lengths"])
        preds = tr.dense(params["head"], ys)
        return tr.regression_loss(preds, batch["y"], batch["lengths"]), {}

    x = jax.random.normal(jax.random.key(2), (8, 6, 2))
    batch = {"x": x, "y": jnp.cumsum(x[..., :1], axis=1), "lengths": jnp.array([6, 5, 4, 3, 6, 2, 1, 6])}
    return params, loss_fn, batch


def test_train_step_decreases_loss_and_counts_steps():
    params, loss_fn, batch = _regression_setup()
    opt = tr.make_optimizer(1e-2, clip_norm=1.0)
    state = tr.init_train_state(params, opt, jax.random.key(3))
    step = tr.make_train_step(loss_fn, opt)
    first = None
    for _ in range(30):
        state, metrics = step(state, batch)
        first = float(metrics["loss"]) if first is None else first
    assert int(state.step) == 30
    assert set(metrics) == {"loss", "grad_norm", "skipped"}
    assert float(metrics["loss"]) < 0.5 * first
    assert step._cache_size() == 1  # no recompilation after the first call


def test_train_step_matches_a_hand_written_update():
    params, loss_fn, batch = _regression_setup()
    opt = optax.sgd(0.1)
    state = tr.init_train_state(params, opt, jax.random.key(3))
    new_state, metrics = tr.make_train_step(loss_fn, opt, jit=False)(state, batch)
    loss, grads = jax.value_and_grad(lambda p: loss_fn(p, batch, None)[0])(params)
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), new_state.params, expected
    )
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-6)


def test_clipping_and_warmup_are_applied():
    params, loss_fn, batch = _regression_setup()
    # warm-up starts at learning rate 0: the first update changes nothing
    opt = tr.make_optimizer(1e-2, warmup_steps=10)
    state = tr.init_train_state(params, opt, jax.random.key(0))
    new_state, _ = tr.make_train_step(loss_fn, opt, jit=False)(state, batch)
    assert_trees_equal(new_state.params, params)
    # clipping to a tiny norm bounds an SGD step by lr * clip_norm
    clipped = optax.chain(optax.clip_by_global_norm(1e-3), optax.sgd(1.0))
    state = tr.init_train_state(params, clipped, jax.random.key(0))
    new_state, metrics = tr.make_train_step(loss_fn, clipped, jit=False)(state, batch)
    delta = jax.tree_util.tree_map(lambda a, b: a - b, new_state.params, params)
    assert float(metrics["grad_norm"]) > 1e-2
    np.testing.assert_allclose(optax.tree.norm(delta), 1e-3, rtol=1e-4)


def test_step_key_changes_every_step_and_feeds_the_loss():
    seen = []

    def loss_fn(params, batch, key):
        del batch
        return jnp.sum(params["w"]) * 0.0, {"draw": jax.random.uniform(key)}

    opt = optax.sgd(0.1)
    state = tr.init_train_state({"w": jnp.zeros(2)}, opt, jax.random.key(0))
    step = tr.make_train_step(loss_fn, opt)
    for _ in range(3):
        state, metrics = step(state, None)
        seen.append(float(metrics["draw"]))
    assert len(set(seen)) == 3


def test_masked_losses_ignore_padding():
    logits = jax.random.normal(jax.random.key(0), (2, 4, 5))
    tokens = jnp.array([[1, 2, 3, 4], [0, 1, 9, 9]]) % 5
    lengths = jnp.array([4, 2])
    loss = tr.next_token_loss(logits, tokens, lengths)
    # explicit: targets tokens[b, t+1] for t + 1 < length
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    terms = [-logp[0, t, tokens[0, t + 1]] for t in range(3)] + [-logp[1, 0, tokens[1, 1]]]
    np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-6)
    # changing values at padded positions changes nothing
    other = tokens.at[1, 2:].set(3)
    np.testing.assert_allclose(tr.next_token_loss(logits, other, lengths), loss, rtol=1e-6)
    preds, targets = jnp.zeros((2, 3, 1)), jnp.ones((2, 3, 1))
    assert float(tr.regression_loss(preds, targets.at[1, 2].set(100.0), jnp.array([3, 2]))) == 1.0
    assert float(tr.regression_loss(preds, targets, kind="mae")) == 1.0
    with pytest.raises(ValueError, match="kind must be one of"):
        tr.regression_loss(preds, targets, kind="l3")
    assert math.isclose(tr.bits_per_token(math.log(2.0)), 1.0)


def test_pooling_matches_the_network_final_state():
    params = lj.init_lstm(jax.random.key(0), 3, 4)
    xs = jax.random.normal(jax.random.key(1), (3, 5, 3))
    lengths = jnp.array([5, 2, 3])
    ys, state = lj.lstm(params, xs, seq_lengths=lengths)
    np.testing.assert_allclose(tr.last_valid(ys, lengths), state.h[0], rtol=1e-6)
    expected = np.stack([np.asarray(ys[b, : int(n)]).mean(0) for b, n in enumerate(lengths)])
    np.testing.assert_allclose(tr.masked_mean_pool(ys, lengths), expected, rtol=1e-6)
    labels = jnp.array([0, 3, 1])
    logits = jax.random.normal(jax.random.key(2), (3, 4))
    np.testing.assert_allclose(
        tr.softmax_cross_entropy(logits, labels),
        optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(),
        rtol=1e-6,
    )
    assert float(tr.accuracy(jnp.eye(3), jnp.array([0, 1, 0]))) == pytest.approx(2 / 3)


# ------------------------------- NaN / inf in padding reaches no value or gradient

_PAD_LENGTHS = jnp.array([5, 3])
_FILLS = pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])


def _fill_padding(x, lengths, value, offset=0):
    """``x`` (B, T, ...) with ``value`` at the steps ``t >= lengths[b] + offset``."""
    steps = jnp.arange(x.shape[1]).reshape((1, -1) + (1,) * (x.ndim - 2))
    padded = steps >= (lengths + offset).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(padded, jnp.asarray(value, x.dtype), x)


def _normal(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape)


def _regression_case(kind):
    def loss(floats, ints):
        del ints
        return tr.regression_loss(*floats, _PAD_LENGTHS, kind=kind)

    return loss, (_normal(0, (2, 5, 3)), _normal(1, (2, 5, 3))), None, 0


def _masked_mean_case():
    mask = tr.sequence_mask(_PAD_LENGTHS, 5)
    return lambda floats, ints: tr.masked_mean(floats[0], mask), (_normal(0, (2, 5, 3)),), None, 0


def _pool_case():
    weights = _normal(1, (2, 3))  # a scalar of the pooled (B, F) with a gradient per feature

    def loss(floats, ints):
        return jnp.sum(tr.masked_mean_pool(floats[0], _PAD_LENGTHS) * weights)

    return loss, (_normal(0, (2, 5, 3)),), None, 0


def _cross_entropy_case():
    mask = tr.sequence_mask(_PAD_LENGTHS, 5)

    def loss(floats, labels):
        return tr.softmax_cross_entropy(floats[0], labels, mask)

    return loss, (_normal(0, (2, 5, 4)),), jnp.array([[0, 1, 2, 3, 0], [1, 2, 3, 0, 0]]), 0


def _next_token_case():
    def loss(floats, tokens):
        return tr.next_token_loss(floats[0], tokens, _PAD_LENGTHS)

    # logits[:, t] predicts tokens[:, t + 1]: the padded logits start one step earlier
    return loss, (_normal(0, (2, 5, 4)),), jnp.array([[0, 1, 2, 3, 1], [1, 2, 3, 0, 0]]), -1


_PADDED_CASES = {
    "regression_mse": lambda: _regression_case("mse"),
    "regression_mae": lambda: _regression_case("mae"),
    "regression_huber": lambda: _regression_case("huber"),
    "masked_mean": _masked_mean_case,
    "masked_mean_pool": _pool_case,
    "softmax_cross_entropy": _cross_entropy_case,
    "next_token_loss": _next_token_case,
}


@_FILLS
@pytest.mark.parametrize("case", sorted(_PADDED_CASES))
def test_non_finite_padding_reaches_no_loss_value_or_gradient(case, fill):
    loss, floats, ints, offset = _PADDED_CASES[case]()

    def padded(value, int_value):
        out = tuple(_fill_padding(x, _PAD_LENGTHS, value, offset) for x in floats)
        return out, None if ints is None else _fill_padding(ints, _PAD_LENGTHS, int_value)

    # the same batch with zeros in the padding is the reference; padded labels/tokens
    # out of range (-100, PyTorch's ignore_index) must not reach a value either
    value, grads = jax.value_and_grad(loss)(*padded(fill, -100))
    expected, expected_grads = jax.value_and_grad(loss)(*padded(0.0, 0))
    assert np.isfinite(float(value))
    np.testing.assert_array_equal(value, expected)
    for g, e in zip(grads, expected_grads):
        assert np.all(np.isfinite(g))
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("fill", [np.nan, np.inf], ids=["nan", "inf"])
def test_a_batch_with_non_finite_padding_trains(fill):
    # NaN marks missing values in real series: here in the padded inputs and targets
    params, loss_fn, batch = _regression_setup()
    pad = lambda v: {**batch, "x": _fill_padding(batch["x"], batch["lengths"], v),
                     "y": _fill_padding(batch["y"], batch["lengths"], v)}
    bad, zero = pad(fill), pad(0.0)
    opt = optax.sgd(0.1)
    step = tr.make_train_step(loss_fn, opt, donate=False)
    state = tr.init_train_state(params, opt, jax.random.key(3))
    trained, metrics = step(state, bad)
    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))
    assert not np.array_equal(trained.params["head"].w, state.params["head"].w)
    expected, expected_metrics = step(state, zero)
    np.testing.assert_array_equal(metrics["loss"], expected_metrics["loss"])
    assert_trees_equal(trained.params, expected.params)


def test_evaluate_weights_batches_by_count():
    def metric_fn(params, batch):
        return {"err": jnp.mean(batch), "count": jnp.asarray(batch.size, jnp.float32)}

    out = tr.evaluate(tr.make_eval_step(metric_fn), None, [jnp.zeros(3), jnp.ones(1)])
    assert out == {"err": 0.25, "count": 4.0}
    with pytest.raises(ValueError, match="no batches"):
        tr.evaluate(metric_fn, None, [])


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_stream_step_equals_the_network(kind):
    init = {"lstm": lj.init_lstm, "gru": lj.init_gru, "rnn": lj.init_rnn}[kind]
    params = init(jax.random.key(0), 3, 5, num_layers=2)
    xs = jax.random.normal(jax.random.key(1), (2, 6, 3))
    ys, final = tr.apply_network(params, xs)
    state = tr.init_stream_state(params, (2,))
    step = jax.jit(tr.stream_step)
    outs = []
    for t in range(6):
        y, state = step(params, state, xs[:, t])
        outs.append(y)
    np.testing.assert_allclose(jnp.stack(outs, 1), ys, rtol=1e-5, atol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), state, final)
    # unbatched: one sequence, state without a batch axis
    state = tr.init_stream_state(params)
    for t in range(6):
        y, state = tr.stream_step(params, state, xs[1, t])
    np.testing.assert_allclose(y, ys[1, -1], rtol=1e-5, atol=1e-6)


def test_stream_step_rejects_bidirectional():
    params = lj.init_lstm(jax.random.key(0), 3, 5, bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        tr.init_stream_state(params)


def test_tbptt_carries_the_state_exactly_and_stops_its_gradient():
    params = {"rnn": lj.init_lstm(jax.random.key(0), 2, 4), "head": tr.init_dense(jax.random.key(1), 4, 1)}
    xs = jax.random.normal(jax.random.key(2), (3, 12, 2))
    targets = jnp.sin(xs[..., :1])

    def chunk_loss(params, chunk, carry, key):
        del key
        ys, new_carry = lj.lstm(params["rnn"], chunk["x"], initial_state=carry)
        return tr.regression_loss(tr.dense(params["head"], ys), chunk["y"]), (new_carry, {})

    chunks = [{"x": a, "y": b} for a, b in zip(tr.split_chunks(xs, 4), tr.split_chunks(targets, 4))]
    assert len(chunks) == 3
    # forward: chunked losses with the carried state equal the full-sequence per-chunk losses
    ys, _ = lj.lstm(params["rnn"], xs)
    full = jnp.square(tr.dense(params["head"], ys) - targets)  # [B, T, 1]
    opt = optax.sgd(0.0)  # no update: the params stay fixed across chunks
    state = tr.init_train_state(params, opt, jax.random.key(0))
    step = tr.make_tbptt_train_step(chunk_loss, opt, donate=False)
    carry = lj.LSTMState(jnp.zeros((1, 3, 4)), jnp.zeros((1, 3, 4)))
    carries = [carry]
    for k, chunk in enumerate(chunks):
        state, carry, metrics = step(state, carry, chunk)
        carries.append(carry)
        np.testing.assert_allclose(metrics["loss"], jnp.mean(full[:, 4 * k : 4 * k + 4]), rtol=1e-5)
    # backward: the gradient on chunk 2 is that of its loss with the incoming carry a constant
    _, _, metrics = tr.make_tbptt_train_step(chunk_loss, opt, jit=False)(state, carries[1], chunks[1])
    const = carries[1]
    grads = jax.grad(lambda p: chunk_loss(p, chunks[1], const, None)[0])(params)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-6)
    with pytest.raises(ValueError, match="longer than the stream"):
        tr.split_chunks(xs, 13)


def test_fit_logs_and_writes_metrics(tmp_path):
    params, loss_fn, batch = _regression_setup()
    opt = tr.make_optimizer(1e-2)
    state = tr.init_train_state(params, opt, jax.random.key(0))
    writer = tr.MetricsWriter(tmp_path)
    state, history = tr.fit(
        state, tr.make_train_step(loss_fn, opt), lambda step: batch, num_steps=6, log_every=2,
        eval_every=3, eval_fn=lambda p: {"loss": loss_fn(p, batch, None)[0]}, writer=writer,
        progress=False,
    )
    assert [r["step"] for r in history] == [2, 3, 4, 6]
    assert "val_loss" in history[1] and "loss" not in history[1]
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows == history
    with open(tmp_path / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4
    assert set(table[0]) == {"step", "time_s", "loss", "grad_norm", "skipped", "val_loss"}
    tr.write_json(tmp_path / "x.json", {"a": jnp.ones(2), "b": np.float32(1.5)})
    assert json.load(open(tmp_path / "x.json")) == {"a": [1.0, 1.0], "b": 1.5}


# ------------------------------------------------- non-finite steps are skipped


def _nan_batch(batch):
    return {**batch, "x": batch["x"].at[0, 1, 0].set(jnp.nan)}


@pytest.mark.parametrize("clip_norm", [None, 1.0])
def test_a_nan_batch_is_skipped_and_training_goes_on(clip_norm):
    params, loss_fn, batch = _regression_setup()
    opt = tr.make_optimizer(1e-2, clip_norm=clip_norm)
    step = tr.make_train_step(loss_fn, opt, donate=False)
    state = tr.init_train_state(params, opt, jax.random.key(0))
    state, _ = step(state, batch)  # a real update first: Adam's moments are nonzero
    skipped_state, metrics = step(state, _nan_batch(batch))
    assert int(metrics["skipped"]) == 1 and not np.isfinite(float(metrics["loss"]))
    assert_trees_equal(skipped_state.params, state.params)
    assert_trees_equal(skipped_state.opt_state, state.opt_state)
    assert int(skipped_state.step) == 2  # the step counter and key still advance
    assert not np.array_equal(jax.random.key_data(skipped_state.key), jax.random.key_data(state.key))
    next_state, metrics = step(skipped_state, batch)
    assert int(metrics["skipped"]) == 0
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(next_state.params))
    assert not np.array_equal(next_state.params["head"].w, state.params["head"].w)


def test_the_sharded_train_step_skips_a_nan_batch_too():
    from lstm_jax import parallel

    params, loss_fn, batch = _regression_setup()
    mesh = parallel.make_mesh(jax.devices()[:1])
    opt = tr.make_optimizer(1e-2)
    step = tr.make_train_step(loss_fn, opt, mesh=mesh, donate=False)
    state = parallel.shard_params(tr.init_train_state(params, opt, jax.random.key(0)), mesh)
    new_state, metrics = step(state, parallel.shard_batch(_nan_batch(batch), mesh))
    assert int(metrics["skipped"]) == 1
    assert_trees_equal(new_state.params, state.params)


def test_a_finite_loss_with_a_nan_gradient_is_skipped():
    def loss_fn(params, batch, key):
        del key  # sqrt'(0) = inf, times 0: the loss is 0 and the gradient NaN
        return jnp.sum(jnp.sqrt(jnp.abs(params["w"]) * batch)), {}

    opt = optax.sgd(0.1)
    state = tr.init_train_state({"w": jnp.ones(3)}, opt, jax.random.key(0))
    new_state, metrics = tr.make_train_step(loss_fn, opt, jit=False)(state, jnp.zeros(3))
    assert float(metrics["loss"]) == 0.0 and np.isnan(float(metrics["grad_norm"]))
    assert int(metrics["skipped"]) == 1
    assert_trees_equal(new_state.params, {"w": jnp.ones(3)})


def test_tbptt_skips_a_nan_chunk_and_keeps_the_carry():
    params = {"rnn": lj.init_lstm(jax.random.key(0), 2, 4), "head": tr.init_dense(jax.random.key(1), 4, 1)}

    def chunk_loss(params, chunk, carry, key):
        del key
        ys, new_carry = lj.lstm(params["rnn"], chunk["x"], initial_state=carry)
        return tr.regression_loss(tr.dense(params["head"], ys), chunk["y"]), (new_carry, {})

    opt = tr.make_optimizer(1e-2)
    state = tr.init_train_state(params, opt, jax.random.key(0))
    step = tr.make_tbptt_train_step(chunk_loss, opt, donate=False)
    carry = lj.LSTMState(jnp.full((1, 3, 4), 0.5), jnp.full((1, 3, 4), -0.5))
    chunk = {"x": jnp.ones((3, 4, 2)).at[1, 2, 0].set(jnp.inf), "y": jnp.zeros((3, 4, 1))}
    new_state, new_carry, metrics = step(state, carry, chunk)
    assert int(metrics["skipped"]) == 1
    assert_trees_equal(new_state.params, state.params)
    assert_trees_equal(new_state.opt_state, state.opt_state)
    assert_trees_equal(new_carry, carry)


def test_fit_stops_after_too_many_consecutive_skips():
    params, loss_fn, batch = _regression_setup()
    opt = tr.make_optimizer(1e-2)
    step = tr.make_train_step(loss_fn, opt)
    # every other batch is bad: training goes on, the rows count the skipped steps
    state = tr.init_train_state(params, opt, jax.random.key(0))
    get_batch = lambda s: _nan_batch(batch) if s % 2 else batch  # noqa: E731
    state, history = tr.fit(state, step, get_batch, num_steps=8, log_every=4,
                            max_consecutive_skips=2, progress=False)  # fmt: skip
    assert [r["skipped"] for r in history] == [2, 2]
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.params))
    # from step 3 on every batch is bad: stop after 3 skips in a row, naming the steps
    state = tr.init_train_state(params, opt, jax.random.key(0))
    get_batch = lambda s: _nan_batch(batch) if s >= 3 else batch  # noqa: E731
    with pytest.raises(FloatingPointError, match=r"3 consecutive train steps \(the batches of steps 3..5\)"):
        tr.fit(state, step, get_batch, num_steps=20, max_consecutive_skips=3, progress=False)
    # the last step counts too
    state = tr.init_train_state(params, opt, jax.random.key(0))
    with pytest.raises(FloatingPointError, match="steps 3..4"):
        tr.fit(state, step, get_batch, num_steps=5, max_consecutive_skips=2, progress=False)
    state = tr.init_train_state(params, opt, jax.random.key(0))
    state, _ = tr.fit(state, step, get_batch, num_steps=6, max_consecutive_skips=None, progress=False)
    assert int(state.step) == 6
    with pytest.raises(ValueError, match="max_consecutive_skips must be an integer >= 1, got 0"):
        tr.fit(state, step, get_batch, num_steps=7, max_consecutive_skips=0, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clip_norm": -1.0}, "clip_norm must be a number > 0 or None, got -1.0"),
        ({"clip_norm": 0.0}, "clip_norm must be a number > 0"),
        ({"learning_rate": 0.0}, "learning_rate must be a number > 0 or an optax schedule, got 0.0"),
        ({"learning_rate": -1e-3}, "learning_rate must be a number > 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be a number > 0"),
        ({"learning_rate": "1e-3"}, "learning_rate must be a number > 0"),
        ({"weight_decay": -0.1}, "weight_decay must be a number >= 0, got -0.1"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0, got -1"),
        ({"warmup_steps": 2.5}, "warmup_steps must be an integer >= 0, got 2.5"),
        ({"decay_steps": 0}, "decay_steps must be an integer >= 1, got 0"),
        ({"end_lr_fraction": 1.5}, r"end_lr_fraction must be a number in \[0, 1\], got 1.5"),
    ],
)
def test_make_optimizer_rejects_invalid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tr.make_optimizer(**kwargs)


def test_make_optimizer_accepts_numpy_and_jax_scalars_and_schedules():
    tr.make_optimizer(jnp.float32(1e-3), clip_norm=np.float32(1.0), warmup_steps=np.int64(2),
                      decay_steps=10, end_lr_fraction=1)  # fmt: skip
    tr.make_optimizer(optax.constant_schedule(1e-3), clip_norm=None, weight_decay=0.0)


def test_metrics_writer_appends_and_rewinds(tmp_path):
    writer = tr.MetricsWriter(tmp_path)
    for step in (1, 2, 3):
        writer.write({"step": step, "loss": 1.0 / step})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a write cut short by a killed process
    writer = tr.MetricsWriter(tmp_path)  # a resumed run keeps the history
    assert [r["step"] for r in writer.rows] == [1, 2, 3]
    writer.rewind(2)
    writer.write({"step": 3, "loss": 0.5, "val_loss": 0.7})
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.5, "val_loss": 0.7}]
    with open(tmp_path / "metrics.csv") as f:
        assert [r["val_loss"] for r in csv.DictReader(f)] == ["", "", "0.7"]
    assert tr.MetricsWriter(tmp_path, start_step=0).rows == []  # a new run starts a new log
    assert open(tmp_path / "metrics.jsonl").read() == "" and open(tmp_path / "metrics.csv").read() == ""
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl, line 2: not JSON"):
        tr.MetricsWriter(tmp_path)


def test_apply_network_and_count_params():
    p = lj.init_rnn(jax.random.key(0), 3, 4)
    assert tr.count_params(p) == 3 * 4 + 4 * 4 + 4
    with pytest.raises(TypeError, match="LSTMParams, GRUParams or RNNParams"):
        tr.apply_network({"w": 1}, jnp.ones((1, 2, 3)))


# ------------------------------------------------------------- data helpers

from lstm_jax import data  # noqa: E402


def test_adding_problem_layout_and_baseline():
    batch = data.adding_problem(np.random.default_rng(0), 4000, 50)
    x, y, lengths = batch["x"], batch["y"], batch["lengths"]
    assert x.shape == (4000, 55, 2) and lengths.min() >= 50 and lengths.max() <= 55
    assert np.all(x[..., 1].sum(1) == 2)  # exactly two markers
    for b in range(20):
        marked = np.flatnonzero(x[b, :, 1])
        n = lengths[b]
        assert marked[0] < n // 2 <= marked[1] < n
        np.testing.assert_allclose(x[b, marked, 0].sum(), y[b], rtol=1e-6)
        assert np.all(x[b, n:] == 0)
    assert abs(np.mean((y - 1.0) ** 2) - 1 / 6) < 0.01  # the baseline MSE


def test_memory_task_layout():
    batch = data.memory_task(np.random.default_rng(0), 64, 30, num_symbols=4, num_distractors=3)
    x, y, lengths = batch["x"], batch["y"], batch["lengths"]
    assert x.shape == (64, 33, 8)
    np.testing.assert_array_equal(x[:, 0].argmax(-1), y)
    rows = np.arange(64)
    assert np.all(x[rows, lengths - 1, 7] == 1)  # the query marker at the last valid step
    assert np.all(x[:, 1:-1, :4].sum(-1)[np.arange(1, 32)[None] < lengths[:, None] - 1] == 0)


def test_windows_vocab_and_batches():
    x, y = data.make_windows(np.arange(6.0), 3)
    assert x.shape == (3, 3, 1)
    np.testing.assert_array_equal(y[:, :, 0], x[:, :, 0] + 1)
    vocab = data.CharVocab.from_text("hello world")
    assert vocab.decode(vocab.encode("hello")) == "hello" and vocab.size == 8
    get_batch = data.make_batch_fn({"i": np.arange(10)}, 3, seed=1)
    epoch = np.concatenate([get_batch(s)["i"] for s in range(3)])
    assert len(set(epoch.tolist())) == 9  # one epoch: distinct examples, a remainder dropped
    np.testing.assert_array_equal(get_batch(4)["i"], get_batch(4)["i"])
    assert not np.array_equal(get_batch(0)["i"], get_batch(3)["i"])  # the next epoch reshuffles
    assert [len(b["i"]) for b in data.iterate_batches({"i": np.arange(7)}, 3)] == [3, 3, 1]
    with pytest.raises(ValueError, match="too short"):
        data.make_windows(np.arange(3.0), 3)


def test_loaders_read_local_data():
    splits = data.load_digits_sequences()
    assert splits["train"]["x"].shape[1:] == (8, 8) and splits["test"]["x"].shape[0] == 450
    assert splits["train"]["x"].max() <= 1.0
    years, values = data.load_sunspots()
    assert years[0] == 1700 and len(years) == len(values) == 309
    text, files = data.load_text(max_chars=10_000)
    assert len(text) == 10_000 and files == sorted(files) and files[0].endswith(".py")
