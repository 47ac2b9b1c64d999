"""Accelerator paths checked on CPU: lowering-time dispatch, cuDNN, the Pallas kernels.

No GPU or TPU is available here. Lowering for ``cuda`` / ``tpu`` runs on this
machine (``jit(f).trace(...).lower(lowering_platforms=...)`` and
``jax.export``), including the Pallas Mosaic TPU and GPU lowerings; the TPU
kernel's numerics run in Pallas interpret mode.
"""

from __future__ import annotations

import functools
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import lstm_jax as lj
from lstm_jax.kernels import dispatch

B, T, I, H = 4, 6, 5, 8
LENGTHS = jnp.array([6, 3, 1, 5], jnp.int32)


def custom_calls(text: str) -> set[str]:
    """Custom-call targets in StableHLO text (pretty and generic forms)."""
    found = re.findall(r'custom_call @(\w+)|call_target_name = "(\w+)"', text)
    return {a or b for a, b in found}


def lowered_calls(fn, *args, platform: str) -> set[str]:
    return custom_calls(jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text())


@pytest.fixture
def stub_cuda_rnn(monkeypatch):
    """Stand in for jaxlib's CUDA plugin, which is not installed here.

    ``jax.experimental.rnn`` asks the plugin for cuDNN's workspace sizes while
    tracing and for an opaque descriptor while lowering; both are stubbed, so
    lowering for ``cuda`` emits the real cuDNN custom calls (never run here).
    """
    from jax._src.interpreters import mlir
    from jax._src.lib import gpu_rnn
    from jax.experimental import rnn

    fake = types.SimpleNamespace(build_rnn_descriptor=lambda *args: b"stub")
    monkeypatch.setattr(
        gpu_rnn, "compute_rnn_workspace_reserve_space_sizes", lambda *args: (1024, 4096), raising=False
    )
    rules = mlir._platform_specific_lowerings["cuda"]
    for prim, lowering in ((rnn.rnn_fwd_p, gpu_rnn._rnn_fwd_lowering), (rnn.rnn_bwd_p, gpu_rnn._rnn_bwd_lowering)):
        monkeypatch.setitem(rules, prim, mlir.LoweringRuleEntry(functools.partial(lowering, fake, "cu"), False))


def _network(num_layers=2, bidirectional=True, hidden=H, inputs=I, seed=0, **kwargs):
    return lj.init_lstm(jax.random.key(seed), inputs, hidden, num_layers=num_layers,
                        bidirectional=bidirectional, **kwargs)  # fmt: skip


def _forward(backend="auto", **kwargs):
    return lambda p, x, lengths: lj.lstm(p, x, seq_lengths=lengths, backend=backend, **kwargs)


def _grad(backend="auto", **kwargs):
    def loss(p, x, lengths):
        ys, state = lj.lstm(p, x, seq_lengths=lengths, backend=backend, **kwargs)
        return jnp.sum(ys * jnp.sin(ys)) + jnp.sum(state.h) + jnp.sum(state.c**2)

    return jax.grad(loss, argnums=(0, 1))


def _args(batch=B, steps=T, inputs=I, seed=1):
    xs = jax.random.normal(jax.random.key(seed), (batch, steps, inputs))
    lengths = jnp.minimum(jnp.arange(batch, dtype=jnp.int32) % steps + 1, steps)
    return xs, lengths


# ------------------------------------------------------------ 1. dispatch


@pytest.mark.parametrize("make", [_forward, _grad], ids=["forward", "grad"])
def test_auto_picks_kernel_per_platform_at_lowering(stub_cuda_rnn, make):
    """One jitted function: cuDNN's custom calls on cuda, the Mosaic kernel on tpu, XLA on cpu."""
    fn = make()
    args = (_network(), *_args())
    expected = {
        "cpu": set(),
        "cuda": {"cudnn_rnn_ffi"} | ({"cudnn_rnn_bwd_ffi"} if make is _grad else set()),
        "tpu": {"tpu_custom_call"},
    }
    for platform, calls in expected.items():
        assert lowered_calls(fn, *args, platform=platform) == calls, platform


def test_auto_on_cpu_equals_fused_exactly(stub_cuda_rnn):
    """The CPU branch is the fused kernel, bit for bit, though cuda and tpu branches are traced too."""
    args = (_network(), *_args())
    for make in (_forward, _grad):
        got, ref = jax.jit(make("auto"))(*args), jax.jit(make("fused"))(*args)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_auto_without_cuda_plugin_runs_fused_on_cuda():
    """This jaxlib has no CUDA plugin: jax.experimental.rnn cannot even be traced, so cuda gets fused."""
    args = (_network(), *_args())
    assert dispatch.KERNELS["cudnn"].unsupported(args[0].layers[0][0], args[1]) is not None
    assert lowered_calls(_grad(), *args, platform="cuda") == set()


def test_export_for_cpu_and_cuda_runs_here():
    """A two-platform export carries the per-platform choice and runs on CPU like fused."""
    args = (_network(), *_args())
    exported = export.export(jax.jit(_forward()), platforms=["cpu", "cuda"])(*args)
    assert exported.platforms == ("cpu", "cuda")
    got = exported.call(*args)
    np.testing.assert_allclose(got[0], jax.jit(_forward("fused"))(*args)[0], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [dict(recurrent_dropout=0.3, key=jax.random.key(0)), dict(compute_dtype=jnp.bfloat16)],
    ids=["recurrent_dropout", "bf16"],
)
def test_auto_routes_calls_cudnn_cannot_run_to_fused(stub_cuda_rnn, kwargs):
    assert lowered_calls(_grad(**kwargs), _network(), *_args(), platform="cuda") == set()


def test_auto_under_vmap_avoids_cudnn(stub_cuda_rnn):
    """jax.experimental.rnn has no batching rule; under vmap cuda runs the fused kernel."""
    params = _network(num_layers=1, bidirectional=False)
    xs = jax.random.normal(jax.random.key(2), (2, B, T, I))
    fn = jax.vmap(lambda x: lj.lstm(params, x)[0])
    assert lowered_calls(fn, xs, platform="cuda") == set()
    np.testing.assert_allclose(jax.jit(fn)(xs), jax.vmap(lambda x: lj.lstm(params, x, backend="scan")[0])(xs), atol=1e-5)


def test_auto_peephole_is_scan_on_every_platform(stub_cuda_rnn):
    params = _network(peephole=True)
    for platform in ("cuda", "tpu"):
        assert lowered_calls(_forward(), params, *_args(), platform=platform) == set()
