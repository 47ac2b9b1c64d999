"""Which calls run the native kernels, which raise, and what ``"auto"`` runs instead."""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import pytest
from jax import export

import lstm_jax as lj
from lstm_jax.cells import rnn_kind
from lstm_jax.kernels import dispatch, native_ops, select_layer
from lstm_jax.kernels.native_ops import native_unavailable
from lstm_jax.kernels.native_rnn import native_rnn_layer
from tests.backends import NETWORKS
from tests.native_cases import CELLS, LENGTHS, ONE_PER_KIND, B, H, I, T, assert_trees_close, inputs

pytestmark = pytest.mark.skipif(
    native_unavailable() is not None, reason=f"native kernels unavailable: {native_unavailable()}"
)

# each kind's custom call targets
CALLS = {kind: tuple(f"lstm_jax_native{infix}_{call}" for call in
                     ("forward_infer", "forward_train", "backward"))
         for kind, infix in (("lstm", ""), ("gru", "_gru"), ("rnn", "_rnn"))}  # fmt: skip


@pytest.mark.parametrize("kind", CALLS)
def test_targets_are_registered(kind):
    assert set(CALLS[kind]) <= set(native_ops.FFI_TARGETS)


@pytest.mark.parametrize("kind", CALLS)
def test_select_layer_native(kind):
    assert select_layer("native", kind).kernel == dispatch.KERNELS[kind, "native"].run


def test_fused_does_not_implement_gru():
    with pytest.raises(ValueError, match="does not implement gru"):
        select_layer("fused", "gru")


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


def test_auto_runs_native_on_cpu_for_the_plain_gru():
    params = lj.init_gru(jax.random.key(12), I, H, bidirectional=True)
    xs = jax.random.normal(jax.random.key(13), (B, T, I))
    assert "lstm_jax_native_gru_forward" in str(jax.make_jaxpr(lambda p: lj.gru(p, xs))(params))

    def value_and_grad(backend):
        def loss(params):
            ys, h = lj.gru(params, xs, seq_lengths=LENGTHS, backend=backend)
            return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(h * 0.7), (ys, h)

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    assert_trees_close(value_and_grad("auto"), value_and_grad("native"), atol=0, rtol=0)
    bf16 = str(jax.make_jaxpr(lambda p: lj.gru(p, xs, compute_dtype=jnp.bfloat16))(params))
    assert ("lstm_jax_native_gru_forward" in bf16) == native_ops.native_has_bf16()
    for name in ("mask", "resets"):  # per-step masks and resets stay on the kernel
        kw = {name: jnp.ones((B, T), bool)}
        text = str(jax.make_jaxpr(lambda p, kw=kw: lj.gru(p, xs, **kw))(params))
        assert "lstm_jax_native_gru_forward" in text, name
    wide = lj.init_gru(jax.random.key(12), I, 513)  # no size limit: faster than scan at H = 512
    assert "lstm_jax_native_gru" in str(jax.make_jaxpr(lambda p: lj.gru(p, xs))(wide))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_auto_runs_native_on_cpu_with_the_cells_nonlinearity(nonlinearity):
    params = lj.init_rnn(jax.random.key(3), I, H)
    xs = jax.random.normal(jax.random.key(4), (B, T, I))
    run = functools.partial(lj.rnn, nonlinearity=nonlinearity)
    assert "lstm_jax_native_rnn_forward_infer" in str(jax.make_jaxpr(run)(params, xs))
    assert_trees_close(run(params, xs), run(params, xs, backend="scan"))


def test_auto_export_for_cpu_and_cuda_runs_here():
    """A two-platform export of "auto" carries the native calls for cpu (scan for cuda)."""
    params = lj.init_gru(jax.random.key(14), I, H)
    xs = jax.random.normal(jax.random.key(15), (B, T, I))
    checks = [export.DisabledSafetyCheck.custom_call(c) for c in CALLS["gru"]]
    fn = jax.jit(lambda p, x: lj.gru(p, x, seq_lengths=LENGTHS))
    exported = export.export(fn, platforms=["cpu", "cuda"], disabled_checks=checks)(params, xs)
    assert_trees_close(
        exported.call(params, xs), lj.gru(params, xs, seq_lengths=LENGTHS, backend="scan")
    )


@pytest.mark.parametrize(
    "kwargs, call, message",
    [
        (dict(peephole=True), {}, "peephole"),
        (dict(layer_norm=True), {}, "layer norm"),
        (dict(proj_size=3), {}, "proj"),
        ({}, dict(compute_dtype=jnp.float16), "float32 or bfloat16"),
    ],
)
def test_unsupported_lstm_variants_raise(kwargs, call, message):
    params = lj.init_lstm(jax.random.key(13), I, H, **kwargs)
    with pytest.raises(ValueError, match=message):
        lj.lstm(params, jnp.ones((B, T, I)), backend="native", **call)


def test_gru_in_bfloat16_raises():
    params = lj.init_gru(jax.random.key(16), I, H)
    with pytest.raises(ValueError, match="backend='native': it computes in float32 or bfloat16 only"):
        lj.gru(params, jnp.ones((B, T, I)), backend="native", compute_dtype=jnp.float16)


def test_unknown_rnn_nonlinearity_raises():
    w, xs, h0, _ = inputs(CELLS["rnn-tanh"])
    cell = rnn_kind()._replace(nonlinearity="gelu")
    with pytest.raises(ValueError, match="backend='native': it runs the nonlinearities"):
        native_rnn_layer(cell, w, xs, h0)


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_non_float32_parameters_raise_and_auto_declines(kind):
    init, run = NETWORKS[kind]
    params = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.bfloat16), init(jax.random.key(17), I, H)
    )
    xs = jnp.ones((B, T, I), jnp.bfloat16)
    with pytest.raises(
        ValueError, match="backend='native': it needs float32 parameters, got bfloat16"
    ):
        run(params, xs, backend="native")
    assert "lstm_jax_native" not in str(jax.make_jaxpr(lambda p: run(p, xs))(params))


# (cell, the backend "auto" runs on CPU without the extension)
FALLBACKS = [(CELLS["lstm"], "fused"), (CELLS["gru"], "scan"), (CELLS["rnn-tanh"], "scan")]


@pytest.mark.parametrize("cell, fallback", FALLBACKS, ids=[c.kind for c, _ in FALLBACKS])
def test_unbuilt_extension_falls_back(monkeypatch, caplog, auto_native, cell, fallback):
    monkeypatch.setattr(native_ops, "library", lambda: (None, "the C++ extension is not built"))
    native_ops.log_unavailable_once.cache_clear()
    init, run = NETWORKS[cell.kind]
    params = init(jax.random.key(14), I, H)
    xs = jnp.ones((B, T, I))
    with pytest.raises(ValueError, match="backend='native': the C.. extension is not built"):
        run(params, xs, backend="native")
    with caplog.at_level(logging.INFO, logger="lstm_jax.kernels.native_ops"):
        auto = run(params, xs)
        run(params, xs)
    (logged,) = [r.message for r in caplog.records if "instead of 'native'" in r.message]
    assert f"'{fallback}'" in logged
    assert_trees_close(auto, run(params, xs, backend=fallback), atol=0, rtol=0)
    native_ops.log_unavailable_once.cache_clear()


def test_one_cell_per_kind_has_a_native_kernel():
    natives = {kind for kind, backend in dispatch.KERNELS if backend == "native"}
    assert {cell.kind for cell in ONE_PER_KIND} == natives
