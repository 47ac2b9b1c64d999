"""Every layer kernel against the ``scan`` reference: values, final states, gradients."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from lstm_jax.cells import lstm_kind
from lstm_jax.kernels import BACKENDS, select_layer
from lstm_jax.kernels.cudnn import cudnn_lstm_layer, to_cudnn_weights
from lstm_jax.kernels import fused
from lstm_jax.kernels.fused import fused_lstm_layer
from lstm_jax.kernels.pallas import PALLAS, pallas_lstm_layer
from lstm_jax.kernels.call import as_layer
from lstm_jax.kernels.remat import block_size, remat_kernel
from lstm_jax.scan import scan_layer

B, T, I, H = 3, 7, 5, 6
LENGTHS = jnp.array([7, 3, 1], jnp.int32)
LAYERS = {"fused": fused_lstm_layer, "pallas": pallas_lstm_layer}


def assert_trees_close(a, b, atol=1e-5, rtol=1e-5):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


def _inputs(seed=0, hidden=H):
    keys = jax.random.split(jax.random.key(seed), 5)
    w = lj.init_lstm(keys[0], I, hidden).layers[0][0]
    xs = jax.random.normal(keys[1], (B, T, I))
    h0 = jax.random.normal(keys[2], (B, hidden))
    c0 = jax.random.normal(keys[3], (B, hidden))
    mask = jax.random.bernoulli(keys[4], 0.7, (B, hidden)).astype(jnp.float32) / 0.7
    return w, xs, h0, c0, mask


def _layer_loss(layer, *, seq_lengths, reverse, time_major=False, **kwargs):
    """A loss that weighs every output and both final states differently."""

    def loss(w, xs, h0, c0, mask):
        ys, (h, c) = layer(
            lstm_kind(), w, xs, (h0, c0), seq_lengths=seq_lengths, reverse=reverse,
            recurrent_mask=mask, time_major=time_major, **kwargs,
        )  # fmt: skip
        return jnp.sum(ys * jnp.sin(ys)) + jnp.sum(1.3 * h) + jnp.sum(c * c), (ys, h, c)

    return loss


# (reverse, ragged, masked): the plain path, and every option at once in both directions
CASES = [(False, False, False), (True, True, True), (False, True, True), (True, False, False)]


@functools.lru_cache(maxsize=None)
def _layer_grads(backend, reverse, ragged, masked):
    w, xs, h0, c0, mask = _inputs()
    lengths = LENGTHS if ragged else None
    loss = _layer_loss(
        LAYERS.get(backend, scan_layer), seq_lengths=lengths, reverse=reverse
    )
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(
        w, xs, h0, c0, mask if masked else None
    )


@pytest.mark.parametrize("backend", sorted(LAYERS))
@pytest.mark.parametrize("reverse, ragged, masked", CASES)
def test_layer_matches_scan(backend, reverse, ragged, masked):
    g_ref, out_ref = _layer_grads("scan", reverse, ragged, masked)
    g, out = _layer_grads(backend, reverse, ragged, masked)
    assert_trees_close(out, out_ref)
    assert_trees_close(g, g_ref)
    if ragged:  # padding outputs are exact zeros
        ys = out[0]
        assert float(jnp.max(jnp.abs(ys[2, 1:]))) == 0.0


@pytest.mark.parametrize("block", [1, 3, 7])
@pytest.mark.parametrize("reverse, ragged, masked", CASES)
def test_fused_backward_blocks_match_scan(monkeypatch, block, reverse, ragged, masked):
    """The backward walks time in blocks: several full blocks plus a remainder, one exact block."""
    monkeypatch.setattr(fused, "BLOCK", block)
    w, xs, h0, c0, mask = _inputs()
    loss = _layer_loss(fused_lstm_layer, seq_lengths=LENGTHS if ragged else None, reverse=reverse)
    g, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(
        w, xs, h0, c0, mask if masked else None
    )
    g_ref, out_ref = _layer_grads("scan", reverse, ragged, masked)
    assert_trees_close(out, out_ref)
    assert_trees_close(g, g_ref)


def test_fused_time_major_and_unroll():
    w, xs, h0, c0, _ = _inputs(1)
    xs_t = jnp.swapaxes(xs, 0, 1)
    ref = _layer_loss(scan_layer, seq_lengths=LENGTHS, reverse=True, time_major=True)
    got = _layer_loss(fused_lstm_layer, seq_lengths=LENGTHS, reverse=True, time_major=True, unroll=3)
    args = (w, xs_t, h0, c0, None)
    grad = lambda f: jax.jit(jax.grad(f, (0, 1, 2, 3), has_aux=True))(*args)  # noqa: E731
    assert_trees_close(grad(got), grad(ref))


def _network_loss(backend, **kwargs):
    def loss(params, xs, state):
        ys, out = lj.lstm(params, xs, initial_state=state, backend=backend, **kwargs)
        return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(out.h) + jnp.sum(out.c**2)

    return loss


@pytest.mark.parametrize("backend", ["auto"])
def test_network_bidirectional_ragged(backend):
    params = lj.init_lstm(jax.random.key(2), I, H, num_layers=2, bidirectional=True)
    xs = jax.random.normal(jax.random.key(3), (B, T, I))
    state = lj.LSTMState(
        jax.random.normal(jax.random.key(4), (4, B, H)), jax.random.normal(jax.random.key(5), (4, B, H))
    )
    kwargs = dict(seq_lengths=LENGTHS, dropout=0.3, recurrent_dropout=0.2, key=jax.random.key(6))
    run = lambda b: jax.jit(jax.value_and_grad(_network_loss(b, **kwargs), (0, 1, 2)))  # noqa: E731
    ref, got = run("scan")(params, xs, state), run(backend)(params, xs, state)
    assert_trees_close(got, ref, atol=2e-5)


def test_auto_long_ragged_sequence():
    """``auto`` (the fused kernel) equals scan on a long, ragged, bidirectional batch."""
    params = lj.init_lstm(jax.random.key(23), I, H, bidirectional=True)
    xs = jax.random.normal(jax.random.key(24), (B, 37, I))
    lengths = jnp.array([37, 20, 1], jnp.int32)
    run = lambda b: jax.jit(jax.value_and_grad(_network_loss(b, seq_lengths=lengths), (0, 1, 2)))  # noqa: E731
    assert_trees_close(run("auto")(params, xs, None), run("scan")(params, xs, None), atol=2e-5)


def test_fused_under_vmap_and_unbatched():
    params = lj.init_lstm(jax.random.key(7), I, H)
    xs = jax.random.normal(jax.random.key(8), (2, B, T, I))
    run = lambda backend: jax.jit(jax.vmap(  # noqa: E731
        jax.grad(lambda p, x: jnp.sum(lj.lstm(p, x, backend=backend)[0] ** 2), (0, 1)),
        in_axes=(None, 0),
    ))(params, xs)
    assert_trees_close(run("fused"), run("scan"))
    one = lambda backend: lj.lstm(params, xs[0, 0], backend=backend)  # noqa: E731
    assert_trees_close(one("fused"), one("scan"))


@functools.lru_cache(maxsize=None)
def _remat_grads(backend, remat, ragged):
    params = lj.init_lstm(jax.random.key(9), I, H, bidirectional=True)
    xs = jax.random.normal(jax.random.key(10), (B, 11, I))  # 11 steps: blocks of 4 / 3 need padding
    lengths = jnp.array([11, 5, 1], jnp.int32) if ragged else None
    state = lj.LSTMState(jnp.ones((2, B, H)), -jnp.ones((2, B, H)))
    loss = _network_loss(backend, remat=remat, seq_lengths=lengths)
    return jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(params, xs, state)


@pytest.mark.parametrize("backend, remat, ragged", [("scan", True, True), ("fused", 3, True), ("fused", True, False)])
def test_remat_matches_plain(backend, remat, ragged):
    assert_trees_close(_remat_grads(backend, remat, ragged), _remat_grads("scan", False, ragged))


def test_remat_gru():
    xs = jax.random.normal(jax.random.key(11), (B, 5, I))
    params = lj.init_gru(jax.random.key(12), I, H, bidirectional=True)
    loss = lambda p, remat: jnp.sum(lj.gru(p, xs, seq_lengths=jnp.array([5, 3, 1]), remat=remat)[0] ** 2)  # noqa: E731
    grad = jax.jit(jax.grad(loss), static_argnums=1)
    assert_trees_close(grad(params, 2), grad(params, False))


def _temp_bytes(remat, steps, time_major=False, features=8):
    params = lj.init_lstm(jax.random.key(0), features, 32)
    xs = jnp.zeros((steps, 4, features) if time_major else (4, steps, features))
    loss = lambda p, x: jnp.sum(lj.lstm(p, x, backend="fused", remat=remat, time_major=time_major)[0])  # noqa: E731
    compiled = jax.jit(jax.grad(loss, (0, 1))).lower(params, xs).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_remat_reduces_activation_memory():
    plain, remat = _temp_bytes(False, 1024), _temp_bytes(True, 1024)
    assert remat < plain / 4, (plain, remat)


@pytest.mark.parametrize("time_major", [False, True])
def test_remat_memory_grows_like_sqrt_t(time_major):
    """4x the steps, neither a perfect square: ~2x the memory (sqrt), not 4x (memory_analysis is exact).

    On GPU, XLA keeps one time-major copy of batch-major xs, (T, B, I), which grows with T
    but is not an activation: on an H200 the batch-major temp less that copy equalled the
    time-major temp to the byte (benchmarks/results/gpu-nvidia-h200/README.md, session 13)."""
    short, long = _temp_bytes(True, 1000, time_major), _temp_bytes(True, 4000, time_major)
    input_copies = 4000 * 4 * 8 * 4 if not time_major and jax.default_backend() == "gpu" else 0
    assert long - input_copies < 2.5 * short, (short, long)


def test_block_size():
    assert [block_size(True, t) for t in (1, 2, 4, 5, 16, 17)] == [1, 2, 2, 3, 4, 5]
    assert block_size(7, 100) == 7


@pytest.mark.parametrize("steps, remat", [(11, True), (11, 4), (3, 5), (1, True)])
@pytest.mark.parametrize("time_major", [False, True])
def test_remat_remainder_block_matches_scan(steps, remat, time_major):
    """T not a multiple of k: full blocks plus a shorter last one, both directions, ragged."""
    params = lj.init_lstm(jax.random.key(25), I, H, bidirectional=True)
    xs = jax.random.normal(jax.random.key(26), (steps, B, I) if time_major else (B, steps, I))
    lengths = jnp.array([steps, max(1, steps - 4), 1], jnp.int32)

    def loss(params, xs, backend, remat):
        ys, state = lj.lstm(params, xs, seq_lengths=lengths, backend=backend, remat=remat,
                            time_major=time_major)  # fmt: skip
        return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(state.h) + jnp.sum(state.c**2)

    grad = jax.jit(jax.value_and_grad(loss, (0, 1)), static_argnums=(2, 3))
    assert_trees_close(grad(params, xs, "auto", remat), grad(params, xs, "scan", False))


def test_bf16_compute_close_to_scan_and_f32():
    params = lj.init_lstm(jax.random.key(13), I, 16)
    xs = jax.random.normal(jax.random.key(14), (B, T, I))
    grads = {}
    for backend, dtype in (("scan", jnp.bfloat16), ("fused", jnp.bfloat16), ("fused", None)):
        loss = _network_loss(backend, compute_dtype=dtype, seq_lengths=LENGTHS)
        grads[backend, dtype] = jax.jit(jax.value_and_grad(loss))(params, xs, None)
    assert_trees_close(grads["fused", jnp.bfloat16], grads["scan", jnp.bfloat16], atol=2e-2, rtol=2e-2)
    assert_trees_close(grads["fused", jnp.bfloat16], grads["fused", None], atol=5e-2, rtol=5e-2)
    # gate math and state stay float32
    ys, state = lj.lstm(params, xs, compute_dtype=jnp.bfloat16, backend="fused")
    assert ys.dtype == state.c.dtype == jnp.float32


@pytest.mark.parametrize(
    "variant", [dict(peephole=True), dict(layer_norm=True), dict(proj_size=3)]
)
def test_auto_routes_variants_to_scan(variant):
    params = lj.init_lstm(jax.random.key(15), I, H, **variant)
    xs = jax.random.normal(jax.random.key(16), (B, T, I))
    run = lambda backend: jax.jit(lambda p, x: lj.lstm(p, x, backend=backend))(params, xs)  # noqa: E731
    assert_trees_close(run("auto"), run("scan"), atol=0, rtol=0)
    for backend in ("fused", "pallas"):
        with pytest.raises(ValueError, match=f"backend='{backend}'.*not supported"):
            lj.lstm(params, xs, backend=backend)


def test_dispatcher_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        select_layer("nope", "lstm")
    with pytest.raises(ValueError, match="backend='fused' does not implement gru"):
        lj.gru(lj.init_gru(jax.random.key(0), I, H), jnp.ones((B, T, I)), backend="fused")
    with pytest.raises(ValueError, match="remat must be False, True"):
        lj.lstm(lj.init_lstm(jax.random.key(0), I, H), jnp.ones((B, T, I)), remat=0.5)
    assert set(BACKENDS) == {"scan", "fused", "pallas", "native", "cudnn"}
    assert BACKENDS["native"] == ("lstm", "gru", "rnn")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_auto_equals_scan(nonlinearity):
    xs = jax.random.normal(jax.random.key(17), (B, T, I))
    params = lj.init_rnn(jax.random.key(18), I, H)
    auto = lj.rnn(params, xs, backend="auto", nonlinearity=nonlinearity)
    assert_trees_close(auto, lj.rnn(params, xs, backend="scan", nonlinearity=nonlinearity))


# ------------------------------------------------------------------------ cuDNN


def test_cudnn_weight_layout_against_lstm_ref():
    rnn = pytest.importorskip("jax.experimental.rnn")
    w, xs, h0, c0, _ = _inputs(19)
    flat = to_cudnn_weights(w)
    assert flat.shape == (rnn.get_num_params_in_lstm(I, H, 1, False),)
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat, I, H, 1, False)
    ys, h, c = rnn.lstm_ref(xs, h0[None], c0[None], w_ih, w_hh, b_ih, b_hh, LENGTHS, I, H, 1, 0.0, False)
    ref_ys, (ref_h, ref_c) = scan_layer(lstm_kind(), w, xs, (h0, c0), seq_lengths=LENGTHS)
    keep = (jnp.arange(T)[None, :] < LENGTHS[:, None])[:, :, None]
    assert_trees_close((jnp.where(keep, ys, 0.0), h[0], c[0]), (ref_ys, ref_h, ref_c))


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="tests the CPU fallback")
def test_cudnn_falls_back_to_scan_with_warning():
    w, xs, h0, c0, _ = _inputs(20)
    args = (lstm_kind(), w, xs, (h0, c0))
    with pytest.warns(RuntimeWarning, match="backend='cudnn' cannot run this layer .*running backend='scan'"):
        got = cudnn_lstm_layer(*args, seq_lengths=LENGTHS, reverse=True)
    assert_trees_close(got, scan_layer(*args, seq_lengths=LENGTHS, reverse=True), atol=0, rtol=0)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU with cuDNN")
@pytest.mark.parametrize("lengths", [None, LENGTHS, jnp.array([7, 0, 2], jnp.int32)],
                         ids=["full", "ragged", "empty"])  # fmt: skip
@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_cudnn_matches_scan_on_gpu(reverse, time_major, lengths):
    """Outputs, final states and every gradient, jitted: time-major and reversed ragged inputs
    (a transpose or gather right before the call: wrong on an H200 before cuDNN's calls were
    given row-major layouts) and a sequence of length 0 (cuDNN fails on those)."""
    w, xs, h0, c0, _ = _inputs(21)
    xs = jnp.swapaxes(xs, 0, 1) if time_major else xs
    with jax.default_matmul_precision("float32"), warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent fallback here
        grad = lambda layer: jax.jit(jax.grad(  # noqa: E731
            _layer_loss(layer, seq_lengths=lengths, reverse=reverse, time_major=time_major),
            (0, 1, 2, 3), has_aux=True,
        ))(w, xs, h0, c0, None)  # fmt: skip
        assert_trees_close(grad(cudnn_lstm_layer), grad(scan_layer), atol=1e-4)


def test_remat_kernel_wraps_any_kernel():
    w, xs, h0, c0, mask = _inputs(22)
    layer = as_layer(remat_kernel(PALLAS.run, 2))
    loss = _layer_loss(layer, seq_lengths=LENGTHS, reverse=True)
    ref = _layer_loss(scan_layer, seq_lengths=LENGTHS, reverse=True)
    grad = lambda f: jax.jit(jax.grad(f, (0, 1, 2, 3, 4), has_aux=True))(w, xs, h0, c0, mask)  # noqa: E731
    assert_trees_close(grad(loss), grad(ref))


def test_forward_mode_needs_scan():
    """Documented: the custom-VJP kernels support reverse mode only; "scan" supports both."""
    w, xs, *_ = _inputs()
    params = lj.LSTMParams(layers=((w,),))

    def loss(x, backend):
        return jnp.sum(lj.lstm(params, x, backend=backend)[0] ** 2)

    jac_fwd = jax.jacfwd(functools.partial(loss, backend="scan"))(xs)
    np.testing.assert_allclose(jac_fwd, jax.grad(functools.partial(loss, backend="auto"))(xs), atol=1e-5)
    hess_auto = jax.hessian(functools.partial(loss, backend="auto"))(xs[:1, :3])
    hess_scan = jax.hessian(functools.partial(loss, backend="scan"))(xs[:1, :3])
    np.testing.assert_allclose(hess_auto, hess_scan, atol=1e-4)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jacfwd(functools.partial(loss, backend="auto"))(xs)
