"""The native CPU kernels (``backend="native"``) against the ``scan`` reference.

Shapes are chosen to hit the kernels' edge cases: H = 21 is one full panel of
16 units and a partial one (AVX-512), B = 7 is one block of 6 rows and a
remainder. ``LSTM_JAX_NATIVE_SPLIT_MACS=0`` makes even these tiny steps run
split across threads: by hidden units (B = 7 is below 2 x the default 4 rows
per thread), or by batch rows with ``LSTM_JAX_NATIVE_MIN_ROWS=1``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from lstm_jax.cells import lstm_kind
from lstm_jax.kernels import dispatch, native_ops, select_layer
from lstm_jax.kernels.native_ops import native_unavailable
from lstm_jax.kernels.native import native_lstm_layer
from lstm_jax.scan import scan_layer

pytestmark = pytest.mark.skipif(
    native_unavailable() is not None, reason=f"native kernels unavailable: {native_unavailable()}"
)

B, T, I, H = 7, 9, 5, 21
LENGTHS = jnp.array([9, 3, 1, 9, 5, 2, 8], jnp.int32)
CASES = [(False, False, False), (True, True, True), (False, True, True), (True, False, False)]


def assert_trees_close(a, b, atol=2e-5, rtol=2e-5):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


def _inputs(seed=0, batch=B, steps=T, hidden=H):
    keys = jax.random.split(jax.random.key(seed), 5)
    w = lj.init_lstm(keys[0], I, hidden).layers[0][0]
    xs = jax.random.normal(keys[1], (batch, steps, I))
    h0 = jax.random.normal(keys[2], (batch, hidden))
    c0 = jax.random.normal(keys[3], (batch, hidden))
    mask = jax.random.bernoulli(keys[4], 0.7, (batch, hidden)).astype(jnp.float32) / 0.7
    return w, xs, h0, c0, mask


def _value_and_grads(layer, args, *, seq_lengths, reverse, masked, time_major=False):
    """Outputs, final state and the gradients of a loss weighing all of them differently."""

    def loss(w, xs, h0, c0, mask):
        ys, (h, c) = layer(
            lstm_kind(), w, xs, (h0, c0), seq_lengths=seq_lengths, reverse=reverse,
            recurrent_mask=mask if masked else None, time_major=time_major,
        )  # fmt: skip
        return jnp.sum(ys * jnp.sin(ys)) + jnp.sum(1.3 * h) + jnp.sum(c * c), (ys, h, c)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(*args)


@pytest.mark.parametrize(
    "reverse, ragged, masked, split",
    [(*case, None) for case in CASES] + [(True, True, True, "units"), (True, True, True, "rows")],
)
def test_layer_matches_scan(monkeypatch, reverse, ragged, masked, split):
    if split is not None:
        monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
        monkeypatch.setenv("LSTM_JAX_NATIVE_MIN_ROWS", "1" if split == "rows" else "100")
    args = _inputs()
    options = dict(seq_lengths=LENGTHS if ragged else None, reverse=reverse, masked=masked)
    got = _value_and_grads(native_lstm_layer, args, **options)
    want = _value_and_grads(scan_layer, args, **options)
    assert_trees_close(got, want)
    if not masked:  # the mask's gradient is only defined with a mask
        assert float(jnp.max(jnp.abs(got[1][4]))) == 0.0


@pytest.mark.parametrize("min_rows", ["100", "1"])  # 5 partitions of units, or of rows
def test_time_major_and_more_threads_than_panels(monkeypatch, min_rows):
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
    monkeypatch.setenv("LSTM_JAX_NATIVE_MIN_ROWS", min_rows)
    monkeypatch.setenv("LSTM_JAX_NATIVE_THREADS", "5")
    w, xs, h0, c0, mask = _inputs(1)
    args = (w, jnp.swapaxes(xs, 0, 1), h0, c0, mask)
    options = dict(seq_lengths=LENGTHS, reverse=True, masked=True, time_major=True)
    assert_trees_close(
        _value_and_grads(native_lstm_layer, args, **options),
        _value_and_grads(scan_layer, args, **options),
    )


def check_nan_propagates():
    """A NaN at a valid step gives NaN exactly where scan gives NaN (it is not clamped away)."""
    w, xs, h0, c0, _ = _inputs(1)
    xs = xs.at[0, 1, 0].set(jnp.nan)  # sequence 0 is valid at step 1
    got = native_lstm_layer(None, w, xs, (h0, c0), seq_lengths=LENGTHS)
    ref = scan_layer(lstm_kind(), w, xs, (h0, c0), seq_lengths=LENGTHS)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        assert np.isnan(np.asarray(b)).any()
        np.testing.assert_array_equal(np.isnan(np.asarray(a)), np.isnan(np.asarray(b)))


def test_nan_at_a_valid_step_propagates():
    check_nan_propagates()


@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_other_instruction_sets(isa):
    """The AVX2 and portable paths (chosen at process start) against scan."""
    script = textwrap.dedent(
        """
        import os, sys
        sys.path.insert(0, sys.argv[1])
        import jax.numpy as jnp
        from lstm_jax.kernels.native_ops import native_isa
        from lstm_jax.kernels.native import native_lstm_layer
        from lstm_jax.scan import scan_layer
        from tests.test_native import _inputs, _value_and_grads, assert_trees_close, LENGTHS
        from tests.test_native import check_nan_propagates
        assert native_isa() == sys.argv[2], native_isa()
        check_nan_propagates()
        for min_rows, hidden in (("100", 3), ("100", 21), ("1", 21)):  # units or rows split
            os.environ["LSTM_JAX_NATIVE_MIN_ROWS"] = min_rows
            args = _inputs(2, hidden=hidden)
            options = dict(seq_lengths=LENGTHS, reverse=True, masked=True)
            assert_trees_close(
                _value_and_grads(native_lstm_layer, args, **options),
                _value_and_grads(scan_layer, args, **options),
            )
        print("ok")
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, LSTM_JAX_NATIVE_ISA=isa, LSTM_JAX_NATIVE_SPLIT_MACS="0")
    result = subprocess.run(
        [sys.executable, "-c", script, root, isa], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def _network_loss(backend, **kwargs):
    def loss(params, xs, state):
        ys, out = lj.lstm(params, xs, initial_state=state, backend=backend, **kwargs)
        return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(out.h * 0.7) + jnp.sum(out.c**2), (ys, out)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.parametrize("remat", [False, 4])
def test_network_bidirectional_multilayer(remat):
    keys = jax.random.split(jax.random.key(3), 4)
    params = lj.init_lstm(keys[0], I, 10, num_layers=2, bidirectional=True)
    xs = jax.random.normal(keys[1], (B, T, I))
    state = lj.LSTMState(
        h=jax.random.normal(keys[2], (4, B, 10)), c=jax.random.normal(keys[3], (4, B, 10))
    )
    kwargs = dict(seq_lengths=LENGTHS, remat=remat)
    assert_trees_close(
        _network_loss("native", **kwargs)(params, xs, state),
        _network_loss("scan", **kwargs)(params, xs, state),
    )


def test_recurrent_dropout_matches_scan():
    params = lj.init_lstm(jax.random.key(4), I, H, num_layers=2)
    xs = jax.random.normal(jax.random.key(5), (B, T, I))
    kwargs = dict(recurrent_dropout=0.3, dropout=0.2, key=jax.random.key(6), seq_lengths=LENGTHS)
    assert_trees_close(
        _network_loss("native", **kwargs)(params, xs, None),
        _network_loss("scan", **kwargs)(params, xs, None),
    )


@pytest.mark.parametrize("batch, steps", [(0, 4), (3, 1), (1, 1)])
def test_batch_zero_and_one_step(batch, steps):
    args = _inputs(7, batch=batch, steps=steps)
    options = dict(seq_lengths=None, reverse=False, masked=True)
    got = _value_and_grads(native_lstm_layer, args, **options)
    want = _value_and_grads(scan_layer, args, **options)
    assert_trees_close(got, want)


def test_nan_in_padding_changes_nothing():
    w, xs, h0, c0, mask = _inputs(8)
    padded = jnp.arange(T)[None, :, None] >= LENGTHS[:, None, None]
    options = dict(seq_lengths=LENGTHS, reverse=True, masked=True)
    clean = _value_and_grads(native_lstm_layer, (w, jnp.where(padded, 0.0, xs), h0, c0, mask), **options)
    dirty = _value_and_grads(native_lstm_layer, (w, jnp.where(padded, jnp.nan, xs), h0, c0, mask), **options)
    (_, aux_clean), (gw, gx, gh, gc, gm) = clean
    (_, aux_dirty), (dw, dx, dh, dc, dm) = dirty
    assert_trees_close(aux_dirty, aux_clean, atol=0, rtol=0)
    assert_trees_close((dw, dh, dc, dm), (gw, gh, gc, gm), atol=0, rtol=0)
    np.testing.assert_array_equal(np.asarray(jnp.where(padded, 0.0, dx)), np.asarray(gx))
    assert bool(jnp.all(jnp.isfinite(dx)))


def test_vmap_over_inputs_and_weights():
    w, xs, h0, c0, mask = _inputs(9)
    ws = jax.tree_util.tree_map(lambda a: jnp.stack([a, 0.5 * a]), w)
    xss = jnp.stack([xs, -xs])

    def run(layer):
        def one(w, xs):
            ys, (h, c) = layer(lstm_kind(), w, xs, (h0, c0), seq_lengths=LENGTHS, recurrent_mask=mask)
            return jnp.sum(ys**2) + jnp.sum(h) + jnp.sum(c), (ys, h, c)

        return jax.jit(jax.vmap(jax.value_and_grad(one, argnums=(0, 1), has_aux=True)))(ws, xss)

    assert_trees_close(run(native_lstm_layer), run(scan_layer))


def test_two_python_threads_at_once(monkeypatch):
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
    inputs = [_inputs(seed) for seed in (10, 11)]
    options = dict(seq_lengths=LENGTHS, reverse=False, masked=True)
    want = [_value_and_grads(native_lstm_layer, args, **options) for args in inputs]
    got = [[None] * 20 for _ in inputs]

    def worker(k):
        for r in range(20):
            got[k][r] = _value_and_grads(native_lstm_layer, inputs[k], **options)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(2):
        for result in got[k]:
            assert_trees_close(result, want[k], atol=0, rtol=0)


@pytest.fixture
def auto_native(monkeypatch):
    """``"auto"`` with "native" as the CPU kernel (not the default; see dispatch.AUTO["lstm"])."""
    monkeypatch.setitem(dispatch.AUTO["lstm"], "cpu", "native")


def test_auto_can_pick_native_on_cpu_for_the_plain_lstm(auto_native):
    params = lj.init_lstm(jax.random.key(12), I, H)
    xs = jnp.ones((B, T, I))
    text = str(jax.make_jaxpr(lambda p: lj.lstm(p, xs))(params))
    assert "lstm_jax_native_forward" in text
    assert_trees_close(lj.lstm(params, xs), lj.lstm(params, xs, backend="scan"))
    peephole = lj.init_lstm(jax.random.key(12), I, H, peephole=True)
    text = str(jax.make_jaxpr(lambda p: lj.lstm(p, xs))(peephole))
    assert "lstm_jax_native" not in text
    text = str(jax.make_jaxpr(lambda p: lj.lstm(p, xs, compute_dtype=jnp.float16))(params))
    assert "lstm_jax_native" not in text
    wide = lj.init_lstm(jax.random.key(12), I, 513)  # no size limit: measured faster at H = 1024
    assert "lstm_jax_native" in str(jax.make_jaxpr(lambda p: lj.lstm(p, xs))(wide))


@pytest.mark.parametrize(
    "kwargs, call, message",
    [
        (dict(peephole=True), {}, "peephole"),
        (dict(layer_norm=True), {}, "layer norm"),
        (dict(proj_size=3), {}, "proj"),
        ({}, dict(compute_dtype=jnp.float16), "float32 or bfloat16"),
    ],
)
def test_unsupported_variants_raise(kwargs, call, message):
    params = lj.init_lstm(jax.random.key(13), I, H, **kwargs)
    with pytest.raises(ValueError, match=message):
        lj.lstm(params, jnp.ones((B, T, I)), backend="native", **call)


def test_unbuilt_extension_falls_back(monkeypatch, caplog, auto_native):
    monkeypatch.setattr(native_ops, "library", lambda: (None, "the C++ extension is not built"))
    native_ops.log_unavailable_once.cache_clear()
    params = lj.init_lstm(jax.random.key(14), I, H)
    xs = jnp.ones((B, T, I))
    with pytest.raises(ValueError, match="backend='native': the C.. extension is not built"):
        lj.lstm(params, xs, backend="native")
    with caplog.at_level(logging.INFO, logger="lstm_jax.kernels.native_ops"):
        auto = lj.lstm(params, xs)
        lj.lstm(params, xs)
    assert sum("uses 'fused' instead of 'native'" in r.message for r in caplog.records) == 1
    assert_trees_close(auto, lj.lstm(params, xs, backend="fused"))
    native_ops.log_unavailable_once.cache_clear()


def test_select_layer_native():
    assert select_layer("native", "lstm").kernel == dispatch.KERNELS["lstm", "native"].run
    with pytest.raises(ValueError, match="does not implement gru"):
        select_layer("fused", "gru")


@pytest.mark.slow
def test_long_sequence():
    steps, hidden = 100_000, 4
    args = _inputs(15, batch=2, steps=steps, hidden=hidden)
    lengths = jnp.array([steps, steps - 777], jnp.int32)
    options = dict(seq_lengths=lengths, reverse=True, masked=True)
    assert_trees_close(
        _value_and_grads(native_lstm_layer, args, **options),
        _value_and_grads(scan_layer, args, **options),
        atol=1e-4, rtol=1e-4,
    )


@pytest.mark.slow  # 20 s each; test_higher_order covers hessians of the other kernels by default
@pytest.mark.parametrize("reverse", [True, False])  # time-major / batch-major custom calls
def test_second_order_derivatives_match_scan(reverse):
    """Hessians (forward over reverse) and grad of grad go through JAX references."""
    w, xs, h0, _, mask = _inputs(16, batch=2, steps=4)
    lengths = jnp.array([4, 2], jnp.int32)

    def loss(w, xs, h0, layer):
        ys, (h, c) = layer(
            lstm_kind(), w, xs, (h0, h0), seq_lengths=lengths, reverse=reverse, recurrent_mask=mask
        )
        return jnp.sum(ys**2) + jnp.sum(h * c)

    for layer_args in ((0,), (1,)):
        assert_trees_close(
            jax.hessian(loss, layer_args)(w, xs, h0, native_lstm_layer),
            jax.hessian(loss, layer_args)(w, xs, h0, scan_layer),
        )

    def grad_of_grad(layer):
        return jax.grad(lambda w: jnp.sum(jax.grad(loss, 1)(w, xs, h0, layer) ** 2))(w)

    assert_trees_close(grad_of_grad(native_lstm_layer), grad_of_grad(scan_layer))
