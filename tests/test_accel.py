"""Accelerator paths checked on CPU: lowering-time dispatch, cuDNN, the Pallas kernels.

Lowering for ``cuda`` / ``tpu`` runs on a CPU machine
(``jit(f).trace(...).lower(lowering_platforms=...)`` and ``jax.export``),
including the Pallas Mosaic TPU and GPU lowerings; the TPU kernel's numerics
run in Pallas interpret mode. Where the CUDA plugin is installed (a GPU
machine) cuDNN's lowering is the real one, not the stub.
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
from lstm_jax.cells import lstm_kind
from lstm_jax.kernels import dispatch
from lstm_jax.kernels.call import layer_call
from lstm_jax.kernels.cudnn import AUTO_MIN_HIDDEN, _cuda_rnn_available
from lstm_jax.kernels.native_ops import native_unavailable

# "auto" on CPU runs the native kernel where its extension is built (pip install builds it)
CPU_KERNEL = "native" if native_unavailable() is None else "fused"
NATIVE_CALLS = ("lstm_jax_native_forward_infer", "lstm_jax_native_forward_train",
                "lstm_jax_native_backward")  # fmt: skip
# jax.export refuses custom calls without a compatibility guarantee unless told
NATIVE_CHECKS = [export.DisabledSafetyCheck.custom_call(c) for c in NATIVE_CALLS]

B, T, I, H = 4, 6, 5, 8
LENGTHS = jnp.array([6, 3, 1, 5], jnp.int32)


def custom_calls(text: str) -> set[str]:
    """Custom-call targets in StableHLO text (pretty and generic forms)."""
    found = re.findall(r'custom_call @([\w$.]+)|call_target_name = "([\w$.]+)"', text)
    return {a or b for a, b in found}


def lowered_calls(fn, *args, platform: str) -> set[str]:
    return custom_calls(jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text())


@pytest.fixture
def stub_cuda_rnn(monkeypatch):
    """Stand in for jaxlib's CUDA plugin where it is not installed.

    The cuDNN call asks the plugin for cuDNN's workspace sizes while tracing
    and for an opaque descriptor while lowering; both are stubbed, so lowering
    for ``cuda`` emits the real cuDNN custom calls (never run with the stub).
    """
    from jax._src.lib import gpu_rnn

    if _cuda_rnn_available():
        return  # the real plugin
    fake = types.SimpleNamespace(build_rnn_descriptor=lambda *args: b"stub")
    monkeypatch.setattr(
        gpu_rnn, "compute_rnn_workspace_reserve_space_sizes", lambda *args: (1024, 4096), raising=False
    )
    for name, lowering in (("cudnn_rnn_lowering", gpu_rnn._rnn_fwd_lowering),
                           ("cudnn_rnn_bwd_lowering", gpu_rnn._rnn_bwd_lowering)):  # fmt: skip
        monkeypatch.setattr(gpu_rnn, name, functools.partial(lowering, fake, "cu"))


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


# backend="cudnn" off a GPU warns that it runs scan here; these tests lower it for cuda
quiet_cudnn = pytest.mark.filterwarnings("ignore:backend='cudnn' cannot run this layer:RuntimeWarning")
CUDNN_CALLS = {"forward": {"cudnn_rnn_ffi"}, "grad": {"cudnn_rnn_ffi", "cudnn_rnn_bwd_ffi"}}


@quiet_cudnn
@pytest.mark.parametrize("make", [_forward, _grad], ids=["forward", "grad"])
def test_auto_picks_kernel_per_platform_at_lowering(stub_cuda_rnn, make):
    """One jitted function: the native kernel on cpu; on cuda cuDNN from AUTO_MIN_HIDDEN
    hidden units and XLA (fused) below; XLA on tpu (until the TPU kernel is measured on a
    TPU); backend="cudnn" gives cuDNN's calls on cuda, backend="pallas" Mosaic's on tpu."""
    args = (_network(), *_args())
    native = {"lstm_jax_native_forward_infer"} if make is _forward else set(NATIVE_CALLS[1:])
    expected = {"cpu": native if CPU_KERNEL == "native" else set(), "cuda": set(), "tpu": set()}
    for platform, calls in expected.items():
        assert lowered_calls(make(), *args, platform=platform) == calls, platform
    cudnn_calls = CUDNN_CALLS[make.__name__[1:]]
    assert lowered_calls(make("cudnn"), *args, platform="cuda") == cudnn_calls
    assert lowered_calls(make("pallas"), *args, platform="tpu") == {"tpu_custom_call"}
    wide = (_network(num_layers=1, hidden=AUTO_MIN_HIDDEN), *_args())
    assert lowered_calls(make(), *wide, platform="cuda") == cudnn_calls
    narrow = (_network(num_layers=1, hidden=AUTO_MIN_HIDDEN - 1), *_args())
    assert lowered_calls(make(), *narrow, platform="cuda") == set()


@quiet_cudnn
@pytest.mark.parametrize("time_major", [False, True])
def test_cudnn_calls_are_row_major(stub_cuda_rnn, time_major):
    """cuDNN reads and writes row-major buffers: its custom calls name row-major layouts for
    every operand and result, so XLA cannot fold a transpose in front of them into a layout
    (on an H200, without them, time-major and reversed ragged inputs gave wrong results)."""
    params, (xs, lengths) = _network(), _args()
    xs = jnp.swapaxes(xs, 0, 1) if time_major else xs
    fn = _grad("cudnn", time_major=time_major)
    text = jax.jit(fn).trace(params, xs, lengths).lower(lowering_platforms=("cuda",)).as_text()
    calls = [line for line in text.splitlines() if re.search(r"custom_call @cudnn_rnn", line)]
    assert len(calls) == 2 * 2 * 2  # 2 layers x 2 directions x (forward, backward)
    for line in calls:
        for kind in ("operand_layouts", "result_layouts"):
            layouts = re.search(kind + r" = \[(.*?)\]\s*[,}]", line)
            assert layouts, (kind, line)
            for dims in re.findall(r"dense<\[?([\d, ]*)\]?>", layouts.group(1)):
                order = [int(d) for d in dims.split(",")]
                assert order == sorted(order, reverse=True), line


def test_auto_on_cpu_equals_the_cpu_kernel_exactly(stub_cuda_rnn):
    """The CPU branch is the CPU kernel (native where built, else fused), bit for bit, though
    cuda and tpu branches are traced too."""
    args = (_network(), *_args())
    for make in (_forward, _grad):
        got, ref = jax.jit(make("auto"))(*args), jax.jit(make(CPU_KERNEL))(*args)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.skipif(_cuda_rnn_available(), reason="the CUDA plugin is installed here")
def test_cudnn_without_cuda_plugin_runs_scan():
    """Without the CUDA plugin cuDNN's call cannot even be traced: backend="cudnn" warns and
    runs scan on every platform."""
    args = (_network(), *_args())
    call = layer_call(lstm_kind(), args[0].layers[0][0], args[1], None)
    assert dispatch.KERNELS["lstm", "cudnn"].declines(call) is not None
    with pytest.warns(RuntimeWarning, match="CUDA plugin is not installed"):
        assert lowered_calls(_grad("cudnn"), *args, platform="cuda") == set()


def test_export_for_cpu_and_cuda_runs_here():
    """A two-platform export carries the per-platform choice and runs on CPU like fused."""
    args = (_network(), *_args())
    exported = export.export(jax.jit(_forward()), platforms=["cpu", "cuda"],
                             disabled_checks=NATIVE_CHECKS)(*args)  # fmt: skip
    assert exported.platforms == ("cpu", "cuda")
    got = exported.call(*args)
    np.testing.assert_allclose(got[0], jax.jit(_forward("fused"))(*args)[0], atol=1e-5)


@quiet_cudnn
@pytest.mark.parametrize("make", [_forward, _grad], ids=["forward", "grad"])
def test_export_for_cpu_cuda_tpu(stub_cuda_rnn, make):
    """One export for three platforms runs on CPU exactly like the CPU kernel; backend="cudnn"
    exports cuDNN's calls (lowered for cuda only) and runs scan on CPU; backend="pallas"
    exports the TPU kernel's."""
    args = (_network(), *_args())
    checks = [export.DisabledSafetyCheck.custom_call(c) for c in ("cudnn_rnn_ffi", "cudnn_rnn_bwd_ffi")]
    checks += NATIVE_CHECKS
    for backend, reference in (("auto", CPU_KERNEL), ("cudnn", "scan")):
        exported = export.export(jax.jit(make(backend)), platforms=["cpu", "cuda", "tpu"],
                                 disabled_checks=checks)(*args)  # fmt: skip
        assert ("cudnn_rnn_ffi" in custom_calls(exported.mlir_module())) == (backend == "cudnn")
        if jax.default_backend() != "cpu":
            continue
        for a, b in zip(jax.tree_util.tree_leaves(exported.call(*args)),
                        jax.tree_util.tree_leaves(jax.jit(make(reference))(*args))):  # fmt: skip
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    pallas = export.export(jax.jit(make("pallas")), platforms=["cpu", "tpu"])(*args)
    assert "tpu_custom_call" in custom_calls(pallas.mlir_module())


@pytest.mark.parametrize(
    "kwargs",
    [dict(recurrent_dropout=0.3, key=jax.random.key(0)), dict(compute_dtype=jnp.bfloat16)],
    ids=["recurrent_dropout", "bf16"],
)
def test_cudnn_declines_what_it_cannot_run(stub_cuda_rnn, kwargs):
    with pytest.warns(RuntimeWarning, match="backend='cudnn' cannot run this layer"):
        fn = _grad("cudnn", **kwargs)
        assert lowered_calls(fn, _network(), *_args(), platform="cuda") == set()


@pytest.fixture
def reference_cudnn(monkeypatch):
    """cuDNN's two primitives replaced by ``jax.experimental.rnn.lstm_ref`` (and its VJP),
    run on every platform: the wrapper around them (layouts of the inputs, reversal, length-0
    sequences, the custom VJP and JVPs) is then checked on CPU. A length 0 reaching the
    forward makes its outputs NaN, as cuDNN fails on it."""
    from jax.experimental import rnn

    from lstm_jax.kernels import cudnn

    def reference(sizes, x, h0, c0, w, lengths):
        weights = rnn.unpack_lstm_weights(w, *sizes, 1, False)
        return rnn.lstm_ref(x, h0, c0, *weights, lengths, *sizes, 1, 0.0, False)

    def forward(x, h0, c0, w, lengths, *, input_size, hidden_size, **_):
        ys, h, c = reference((input_size, hidden_size), x, h0, c0, w, lengths)
        return jnp.where(jnp.all(lengths >= 1), ys, jnp.nan), h, c, jnp.zeros(1)

    def backward(dy, dh, dc, x, h0, c0, w, ys, reserve, lengths, *, input_size, hidden_size, **_):
        sizes = (input_size, hidden_size)
        return jax.vjp(lambda *a: reference(sizes, *a, lengths), x, h0, c0, w)[1]((dy, dh, dc))

    monkeypatch.setattr(cudnn, "_rnn_fwd_p", types.SimpleNamespace(bind=forward))
    monkeypatch.setattr(cudnn, "_rnn_bwd_p", types.SimpleNamespace(bind=backward))
    monkeypatch.setattr(cudnn, "platform_only", lambda platform, fn, *args: fn(*args))


@pytest.mark.parametrize("lengths", [None, [6, 2, 0]], ids=["full", "ragged_with_0"])
@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_cudnn_wrapper_equals_scan(reference_cudnn, reverse, time_major, lengths):
    """The cuDNN kernel's wrapper with reference primitives equals scan: outputs, final states,
    every gradient (jitted), and the Hessian (forward over reverse, through its JVPs)."""
    from lstm_jax.kernels.call import scan_kernel
    from lstm_jax.kernels.cudnn import cudnn_kernel

    w = lj.init_lstm(jax.random.key(0), I, H).layers[0][0]
    xs = jax.random.normal(jax.random.key(1), (T, 3, I) if time_major else (3, T, I))
    h0, c0 = jax.random.normal(jax.random.key(2), (2, 3, H))
    seq_lengths = None if lengths is None else jnp.array(lengths, jnp.int32)

    def loss(kernel, w, xs, h0, c0):
        call = layer_call(lstm_kind(), w, xs, (h0, c0), seq_lengths=seq_lengths, reverse=reverse,
                          time_major=time_major)  # fmt: skip
        ys, (h, c) = kernel(call)
        return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(h * h0) + jnp.sum(c**2), (ys, h, c)

    with jax.default_matmul_precision("float32"):
        got, want = (jax.jit(jax.value_and_grad(functools.partial(loss, k), (0, 1, 2, 3), has_aux=True))
                     (w, xs, h0, c0) for k in (cudnn_kernel, scan_kernel))  # fmt: skip
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
        hessian = [jax.hessian(lambda x, k=k: loss(k, w, x, h0, c0)[0])(xs)
                   for k in (cudnn_kernel, scan_kernel)]  # fmt: skip
    np.testing.assert_allclose(hessian[0], hessian[1], atol=1e-5)


@pytest.mark.parametrize("time_major", [False, True])
def test_cudnn_declines_batch_0(stub_cuda_rnn, time_major):
    """cuDNN's descriptors take no batch of size 0: backend="cudnn" warns and runs scan."""
    params = _network(num_layers=1, bidirectional=False)
    xs = jnp.zeros((T, 0, I) if time_major else (0, T, I))
    with pytest.warns(RuntimeWarning, match="no empty batch"):
        ys, state = lj.lstm(params, xs, backend="cudnn", time_major=time_major)
    ref = lj.lstm(params, xs, backend="scan", time_major=time_major)
    for a, b in zip(jax.tree_util.tree_leaves((ys, state)), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cudnn_under_vmap_runs_scan(stub_cuda_rnn):
    """cuDNN's call has no parallel batching rule; under vmap backend="cudnn" runs scan."""
    params = _network(num_layers=1, bidirectional=False)
    xs = jax.random.normal(jax.random.key(2), (2, B, T, I))
    fn = jax.vmap(lambda x: lj.lstm(params, x, backend="cudnn")[0])
    with pytest.warns(RuntimeWarning, match="no vmap rule"):
        assert lowered_calls(fn, xs, platform="cuda") == set()


@quiet_cudnn
def test_vmap_of_jitted_cudnn(stub_cuda_rnn):
    """vmap of an already-jitted lj.lstm batches every platform branch, cuDNN's too: its
    sequential batching rule keeps it working (and exact on CPU, where scan runs)."""
    params = _network(num_layers=1, bidirectional=True)
    xs = jax.random.normal(jax.random.key(2), (2, B, T, I))

    def loss(p, x, backend):
        inner = jax.jit(lambda x: lj.lstm(p, x, seq_lengths=LENGTHS, backend=backend)[0])
        return jnp.sum(jax.vmap(inner)(x) ** 2)

    grad = jax.grad(functools.partial(loss, backend="cudnn"))
    assert {"cudnn_rnn_ffi", "cudnn_rnn_bwd_ffi"} <= lowered_calls(grad, params, xs, platform="cuda")
    got = jax.jit(jax.value_and_grad(functools.partial(loss, backend="cudnn")))(params, xs)
    ref = jax.jit(jax.value_and_grad(functools.partial(loss, backend="scan")))(params, xs)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the native GRU is the CPU's choice")
def test_auto_routes_unknown_per_step_options_to_scan(monkeypatch):
    """A keyword a cell's kernels lack (here ``resets``, taken away from the GRU's) goes to
    scan when set, is dropped when None."""
    from lstm_jax import kernels
    from lstm_jax.cells import gru_kind
    from lstm_jax.kernels import call, dispatch

    seen = []
    native_gru = dispatch.KERNELS["gru", "native"]
    monkeypatch.setitem(dispatch.KERNELS, ("gru", "native"), native_gru._replace(per_step=("mask",)))
    monkeypatch.setattr(call, "scan_layer", lambda *a, **kw: seen.append(kw) or "scan")
    w, (xs, _) = lj.init_gru(jax.random.key(0), I, H).layers[0][0], _args()
    layer = kernels.select_layer("auto", "gru")
    assert layer(gru_kind(), w, xs, jnp.zeros((B, H)), resets=jnp.zeros((B, T), bool)) == "scan"
    assert "resets" in seen[0]
    ys, _ = layer(gru_kind(), w, xs, jnp.zeros((B, H)), resets=None)
    assert ys.shape == (B, T, H) and len(seen) == 1


def test_auto_peephole_is_scan_on_every_platform(stub_cuda_rnn):
    params = _network(peephole=True)
    for platform in ("cuda", "tpu"):
        assert lowered_calls(_forward(), params, *_args(), platform=platform) == set()


# ------------------------------------------------------------ 3. the TPU kernel


@pytest.fixture
def small_tpu_tiles(monkeypatch):
    """Blocks of 4 steps and batch tiles of 8 rows, so tiny shapes span several of each."""
    from lstm_jax.kernels import pallas_tpu

    monkeypatch.setattr(pallas_tpu, "TIME_BLOCKS", (4,))
    monkeypatch.setattr(pallas_tpu, "MAX_BATCH_TILE", 8)
    monkeypatch.setattr(pallas_tpu, "BATCH_TILE", 8)


def _layer_grads(layer, w, xs, h0, c0, mask, lengths, reverse, **kwargs):
    from lstm_jax.cells import lstm_kind

    def loss(w, xs, h0, c0, mask):
        ys, (h, c) = layer(lstm_kind(), w, xs, (h0, c0), seq_lengths=lengths, reverse=reverse,
                           recurrent_mask=mask, **kwargs)  # fmt: skip
        return jnp.sum(ys * jnp.sin(ys)) + jnp.sum(1.3 * h) + jnp.sum(c * c), (ys, h, c)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(w, xs, h0, c0, mask)


@pytest.mark.parametrize("reverse, ragged, masked", [(False, False, False), (True, True, True)])
def test_tpu_kernel_interpret_matches_scan(small_tpu_tiles, reverse, ragged, masked):
    """12 sequences (2 batch tiles after padding to 16), 11 steps (3 time blocks, padded), H=6 (padded to 128)."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call
    from jax.experimental.pallas import tpu as pltpu

    from lstm_jax.kernels.pallas import pallas_lstm_layer
    from lstm_jax.scan import scan_layer

    batch, steps, hidden = 12, 11, 6
    keys = jax.random.split(jax.random.key(3), 5)
    w = lj.init_lstm(keys[0], I, hidden).layers[0][0]
    xs = jax.random.normal(keys[1], (batch, steps, I))
    h0, c0 = (jax.random.normal(k, (batch, hidden)) for k in keys[2:4])
    mask = jax.random.bernoulli(keys[4], 0.7, (batch, hidden)).astype(jnp.float32) / 0.7
    lengths = jnp.array([11, 3, 1, 5, 7, 11, 2, 4, 9, 10, 6, 8], jnp.int32) if ragged else None
    args = (w, xs, h0, c0, mask if masked else None, lengths, reverse)
    pltpu.reset_tpu_interpret_mode_state()
    params = pltpu.InterpretParams(detect_races=True, num_cores_or_threads=2)
    got = _layer_grads(functools.partial(pallas_lstm_layer, interpret=params), *args)
    assert interpret_pallas_call.races is not None and not interpret_pallas_call.races.races_found
    ref = _layer_grads(scan_layer, *args)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_tpu_plan_and_vmem_limit():
    from lstm_jax.kernels import pallas_tpu

    p = pallas_tpu.plan(8, 2048, 768, 4)
    assert (p.batch, p.hidden, p.time_block) == (8, 768, 32) and p.vmem_bytes <= pallas_tpu.VMEM_BUDGET
    assert pallas_tpu.plan(300, 10, 100, 4)[:5] == (384, 128, 10, 128, 2)  # 128-row tiles, no padded steps
    assert pallas_tpu.plan(8, 10, 2048, 4) is None  # w_hh alone is 64 MiB
    w = lj.init_lstm(jax.random.key(0), 4, 2048).layers[0][0]
    reason = pallas_tpu.tpu_unsupported(w, jnp.zeros((8, 10, 4)))
    assert "VMEM_BUDGET = 32 MiB" in reason and "hidden size 2048" in reason


def test_tpu_too_big_for_vmem_auto_falls_back_pallas_raises_on_tpu_only():
    params = lj.init_lstm(jax.random.key(0), 4, 2048)
    xs = jnp.zeros((8, 3, 4))

    def lower(backend, platform="tpu"):
        fn = jax.jit(lambda p, x: lj.lstm(p, x, backend=backend))
        return fn.trace(params, xs).lower(lowering_platforms=(platform,))

    assert custom_calls(lower("auto").as_text()) == set()
    with pytest.raises(ValueError, match="backend='pallas' on TPU: hidden size 2048 needs at least .* VMEM_BUDGET"):
        lower("pallas")
    # raised when lowered for TPU only: the same function still lowers for cuda
    assert custom_calls(lower("pallas", "cuda").as_text()) == {"__gpu$xla.gpu.triton"}


def _export_tpu(shape, grad):
    batch, steps, inputs, hidden = shape
    params = lj.init_lstm(jax.random.key(0), inputs, hidden)
    xs = jax.ShapeDtypeStruct((batch, steps, inputs), jnp.float32)
    lengths = jax.ShapeDtypeStruct((batch,), jnp.int32)
    fn = _grad("pallas") if grad else _forward("pallas")
    exported = export.export(jax.jit(fn), platforms=["tpu"])(params, xs, lengths)
    return custom_calls(exported.mlir_module())


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "grad"])
def test_tpu_kernel_lowers_at_16x1024x256x256(grad):
    assert _export_tpu((16, 1024, 256, 256), grad) == {"tpu_custom_call"}


@pytest.mark.slow
@pytest.mark.parametrize("grad", [False, True], ids=["forward", "grad"])
def test_tpu_kernel_lowers_at_8x2048x512x768(grad):
    assert _export_tpu((8, 2048, 512, 768), grad) == {"tpu_custom_call"}


# ------------------------------------------------------------ 4. the GPU kernel


def test_gpu_kernel_interpret_matches_scan():
    """18 sequences (2 programs of 16 after padding), H=70 (2 chunks of 64 after padding), ragged, reverse, mask."""
    from lstm_jax.kernels.pallas_gpu import gpu_forward
    from lstm_jax.kernels.call import layer_call
    from lstm_jax.kernels.shared import projected, shared_vjp_layer
    from lstm_jax.scan import scan_layer

    batch, steps, hidden = 18, 3, 70
    keys = jax.random.split(jax.random.key(4), 5)
    w = lj.init_lstm(keys[0], I, hidden).layers[0][0]
    xs = jax.random.normal(keys[1], (batch, steps, I))
    h0, c0 = (jax.random.normal(k, (batch, hidden)) for k in keys[2:4])
    mask = jax.random.bernoulli(keys[4], 0.7, (batch, hidden)).astype(jnp.float32) / 0.7
    lengths = jnp.arange(batch, dtype=jnp.int32) % steps + 1
    forward = projected(functools.partial(gpu_forward, interpret=True))

    def layer(cell, w, xs, carry, **kwargs):
        return shared_vjp_layer({None: forward}, layer_call(cell, w, xs, carry, **kwargs))

    args = (w, xs, h0, c0, mask, lengths, True)
    got, ref = _layer_grads(layer, *args), _layer_grads(scan_layer, *args)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def _lower_cuda(shape, grad):
    batch, steps, inputs, hidden = shape
    params = lj.init_lstm(jax.random.key(0), inputs, hidden)
    xs = jax.ShapeDtypeStruct((batch, steps, inputs), jnp.float32)
    lengths = jax.ShapeDtypeStruct((batch,), jnp.int32)
    fn = _grad("pallas") if grad else _forward("pallas")
    return lowered_calls(fn, params, xs, lengths, platform="cuda")


@pytest.mark.parametrize("shape", [(16, 1024, 256, 256), (64, 512, 128, 128)], ids=str)
@pytest.mark.parametrize("grad", [False, True], ids=["forward", "grad"])
def test_gpu_kernel_lowers_for_cuda(shape, grad):
    """The Triton lowering runs here (the previous whole-sequence Mosaic GPU kernel failed at
    (8, 16, 32, 64): 'Mosaic GPU kernel exceeds available shared memory')."""
    assert _lower_cuda(shape, grad) == {"__gpu$xla.gpu.triton"}


def test_gpu_kernel_sizes_it_cannot_serve_raise(monkeypatch):
    from lstm_jax.kernels import pallas_gpu

    with pytest.raises(ValueError, match=r"more than Triton's int32 offsets reach \(2147483647\)"):
        _lower_cuda((16, 2**17, 8, 256), False)
    monkeypatch.setattr(pallas_gpu, "MAX_SMEM_BYTES", 1000)
    with pytest.raises(ValueError, match=r"bytes of shared memory, more than MAX_SMEM_BYTES = 1000"):
        _lower_cuda((16, 8, 8, 64), False)
