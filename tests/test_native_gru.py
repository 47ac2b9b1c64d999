"""The native CPU GRU (``backend="native"``) against ``scan`` and PyTorch's nn.GRU.

Shapes hit the kernels' edge cases as in ``test_native.py``: H = 21 is one
full panel of 16 units and a partial one (AVX-512), B = 7 one block of 6 rows
and a remainder; ``LSTM_JAX_NATIVE_SPLIT_MACS=0`` splits even these tiny
steps across threads.
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
from jax import export

import lstm_jax as lj
from lstm_jax.cells import gru_kind
from lstm_jax.kernels import dispatch, native_ops, select_layer
from lstm_jax.kernels.native_ops import native_unavailable
from lstm_jax.kernels.native_gru import native_gru_layer
from lstm_jax.scan import scan_layer
from tests.test_native import assert_trees_close

pytestmark = pytest.mark.skipif(
    native_unavailable() is not None, reason=f"native kernels unavailable: {native_unavailable()}"
)

B, T, I, H = 7, 9, 5, 21
LENGTHS = jnp.array([9, 3, 1, 9, 5, 2, 8], jnp.int32)
CALLS = ("lstm_jax_native_gru_forward_infer", "lstm_jax_native_gru_forward_train",
         "lstm_jax_native_gru_backward")  # fmt: skip


def _inputs(seed=0, batch=B, steps=T, hidden=H):
    keys = jax.random.split(jax.random.key(seed), 5)
    w = lj.init_gru(keys[0], I, hidden).layers[0][0]
    w = w._replace(b_hh=jax.random.normal(keys[4], w.b_hh.shape))  # distinct b_hn matters
    xs = jax.random.normal(keys[1], (batch, steps, I))
    h0 = jax.random.normal(keys[2], (batch, hidden))
    mask = jax.random.bernoulli(keys[3], 0.7, (batch, hidden)).astype(jnp.float32) / 0.7
    return w, xs, h0, mask


def _value_and_grads_fn(layer, *, seq_lengths, reverse, masked, time_major=False):
    """jit(value_and_grad) of a loss weighing the outputs and the final state differently."""

    def loss(w, xs, h0, mask):
        ys, h = layer(
            gru_kind(), w, xs, h0, seq_lengths=seq_lengths, reverse=reverse,
            recurrent_mask=mask if masked else None, time_major=time_major,
        )  # fmt: skip
        return jnp.sum(ys * jnp.sin(ys)) + jnp.sum(1.3 * h * h), (ys, h)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


def _value_and_grads(layer, args, **options):
    return _value_and_grads_fn(layer, **options)(*args)


@pytest.mark.parametrize(
    "reverse, ragged, masked, split",
    [(False, False, False, None), (True, True, True, None), (False, True, True, "units"),
     (True, False, False, "units"), (True, True, True, "rows")],
)  # fmt: skip
def test_layer_matches_scan(monkeypatch, reverse, ragged, masked, split):
    if split is not None:  # threads split hidden units, or batch rows
        monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
        monkeypatch.setenv("LSTM_JAX_NATIVE_MIN_ROWS", "1" if split == "rows" else "100")
    args = _inputs()
    options = dict(seq_lengths=LENGTHS if ragged else None, reverse=reverse, masked=masked)
    got = _value_and_grads(native_gru_layer, args, **options)
    assert_trees_close(got, _value_and_grads(scan_layer, args, **options))
    if not masked:  # the mask's gradient is only defined with a mask
        assert float(jnp.max(jnp.abs(got[1][3]))) == 0.0


@pytest.mark.parametrize("min_rows", ["100", "1"])  # 5 partitions of units, or of rows
def test_time_major_and_more_threads_than_panels(monkeypatch, min_rows):
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
    monkeypatch.setenv("LSTM_JAX_NATIVE_MIN_ROWS", min_rows)
    monkeypatch.setenv("LSTM_JAX_NATIVE_THREADS", "5")
    w, xs, h0, mask = _inputs(1)
    args = (w, jnp.swapaxes(xs, 0, 1), h0, mask)
    options = dict(seq_lengths=LENGTHS, reverse=True, masked=True, time_major=True)
    assert_trees_close(
        _value_and_grads(native_gru_layer, args, **options),
        _value_and_grads(scan_layer, args, **options),
    )


def _nan_inputs():
    """Sequence 0 holds a NaN at step 1, which is valid."""
    w, xs, h0, _ = _inputs(1)
    return w, xs.at[0, 1, 0].set(jnp.nan), h0


def _assert_nan_where_scan_has_nan(got):
    w, xs, h0 = _nan_inputs()
    ref = scan_layer(gru_kind(), w, xs, h0, seq_lengths=LENGTHS)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        assert np.isnan(np.asarray(b)).any()
        np.testing.assert_array_equal(np.isnan(np.asarray(a)), np.isnan(np.asarray(b)))


def test_nan_at_a_valid_step_propagates():
    w, xs, h0 = _nan_inputs()
    _assert_nan_where_scan_has_nan(native_gru_layer(None, w, xs, h0, seq_lengths=LENGTHS))


def test_nan_in_padding_changes_nothing():
    w, xs, h0, mask = _inputs(8)
    padded = jnp.arange(T)[None, :, None] >= LENGTHS[:, None, None]
    options = dict(seq_lengths=LENGTHS, reverse=True, masked=True)
    clean = _value_and_grads(native_gru_layer, (w, jnp.where(padded, 0.0, xs), h0, mask), **options)
    dirty = _value_and_grads(
        native_gru_layer, (w, jnp.where(padded, jnp.nan, xs), h0, mask), **options
    )
    (_, aux_clean), (gw, gx, gh, gm) = clean
    (_, aux_dirty), (dw, dx, dh, dm) = dirty
    assert_trees_close(aux_dirty, aux_clean, atol=0, rtol=0)
    assert_trees_close((dw, dh, dm), (gw, gh, gm), atol=0, rtol=0)
    np.testing.assert_array_equal(np.asarray(jnp.where(padded, 0.0, dx)), np.asarray(gx))
    assert bool(jnp.all(jnp.isfinite(dx)))


ISA_OPTIONS = dict(seq_lengths=LENGTHS, reverse=True, masked=True)


@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_other_instruction_sets(isa, tmp_path):
    """The AVX2 and portable paths (chosen at process start) against scan (run here)."""
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        import jax
        import numpy as np
        from lstm_jax.kernels.native_ops import native_isa
        from lstm_jax.kernels.native_gru import native_gru_layer
        from tests.test_native_gru import ISA_OPTIONS, LENGTHS, _inputs, _nan_inputs, _value_and_grads
        assert native_isa() == sys.argv[2], native_isa()
        nan = native_gru_layer(None, *_nan_inputs(), seq_lengths=LENGTHS)
        got = _value_and_grads(native_gru_layer, _inputs(2), **ISA_OPTIONS)
        leaves = jax.tree_util.tree_leaves((nan, got))
        np.savez(sys.argv[3], *[np.asarray(a) for a in leaves])
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, LSTM_JAX_NATIVE_ISA=isa, LSTM_JAX_NATIVE_SPLIT_MACS="0")
    out = tmp_path / "leaves.npz"
    result = subprocess.run(
        [sys.executable, "-c", script, root, isa, str(out)], env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as saved:
        leaves = [saved[f"arr_{k}"] for k in range(len(saved.files))]
    _assert_nan_where_scan_has_nan(leaves[:2])
    assert_trees_close(leaves[2:], _value_and_grads(scan_layer, _inputs(2), **ISA_OPTIONS))


def _network_loss(backend, **kwargs):
    def loss(params, xs, state):
        ys, h = lj.gru(params, xs, initial_state=state, backend=backend, **kwargs)
        return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(h * 0.7), (ys, h)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def test_network_bidirectional_remat_recurrent_dropout():
    """Both directions, an initial state, ragged lengths, checkpoints every 4 steps and
    recurrent dropout (several layers: test_matches_torch_gru)."""
    keys = jax.random.split(jax.random.key(3), 3)
    params = lj.init_gru(keys[0], I, 10, bidirectional=True)
    xs = jax.random.normal(keys[1], (B, T, I))
    state = jax.random.normal(keys[2], (2, B, 10))
    kwargs = dict(seq_lengths=LENGTHS, recurrent_dropout=0.3, key=jax.random.key(6))
    assert_trees_close(
        _network_loss("native", remat=4, **kwargs)(params, xs, state),
        _network_loss("scan", **kwargs)(params, xs, state),  # remat changes no value
    )


@pytest.mark.parametrize("batch, steps", [(0, 4), (3, 1)])
def test_batch_zero_and_one_step(batch, steps):
    args = _inputs(7, batch=batch, steps=steps)
    options = dict(seq_lengths=None, reverse=False, masked=True)
    assert_trees_close(
        _value_and_grads(native_gru_layer, args, **options),
        _value_and_grads(scan_layer, args, **options),
    )


def test_vmap_over_inputs_and_weights():
    w, xs, h0, mask = _inputs(9)
    ws = jax.tree_util.tree_map(lambda a: jnp.stack([a, 0.5 * a]), w)
    xss = jnp.stack([xs, -xs])

    def run(layer):
        def one(w, xs):
            ys, h = layer(gru_kind(), w, xs, h0, seq_lengths=LENGTHS, recurrent_mask=mask)
            return jnp.sum(ys**2) + jnp.sum(h), (ys, h)

        return jax.jit(jax.vmap(jax.value_and_grad(one, argnums=(0, 1), has_aux=True)))(ws, xss)

    assert_trees_close(run(native_gru_layer), run(scan_layer))


def test_two_python_threads_at_once(monkeypatch):
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
    inputs = [_inputs(seed) for seed in (10, 11)]
    options = dict(seq_lengths=LENGTHS, reverse=False, masked=True)
    fn = _value_and_grads_fn(native_gru_layer, **options)  # compiled once, then run concurrently
    want = [fn(*args) for args in inputs]
    got = [[None] * 20 for _ in inputs]

    def worker(k):
        for r in range(20):
            got[k][r] = fn(*inputs[k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(2):
        for result in got[k]:
            assert_trees_close(result, want[k], atol=0, rtol=0)


def _second_order_loss(w, xs, h0, mask, layer):
    lengths = jnp.array([3, 2], jnp.int32)
    ys, h = layer(gru_kind(), w, xs, h0, seq_lengths=lengths, reverse=True, recurrent_mask=mask)
    return jnp.sum(ys**2) + jnp.sum(h * h0)


def test_grad_of_grad_matches_scan():
    """Reverse over reverse goes through the JAX reference of the gradients."""
    w, xs, h0, mask = _inputs(16, batch=2, steps=3, hidden=3)

    def grad_of_grad(layer):
        inner = jax.grad(_second_order_loss, 1)
        return jax.jit(jax.grad(lambda w: jnp.sum(inner(w, xs, h0, mask, layer) ** 2)))(w)

    assert_trees_close(grad_of_grad(native_gru_layer), grad_of_grad(scan_layer))


@pytest.mark.slow  # 15-20 s; grad of grad above runs by default
def test_hessian_matches_scan():
    """Hessians (forward over reverse) go through the JAX reference of the forward too."""
    w, xs, h0, mask = _inputs(16, batch=2, steps=3, hidden=3)
    hessian = jax.jit(jax.hessian(_second_order_loss, (0, 1, 2)), static_argnums=4)
    assert_trees_close(
        hessian(w, xs, h0, mask, native_gru_layer), hessian(w, xs, h0, mask, scan_layer)
    )


def test_matches_torch_gru():
    """nn.GRU's outputs, final state and every gradient on converted weights (float32)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.GRU(I, 6, num_layers=2, bidirectional=True, batch_first=True)
    lengths = [5, 2, 1, 4]
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((4, 5, I)).astype(np.float32)
    h0_np = rng.standard_normal((4, 4, 6)).astype(np.float32)
    ys_w = rng.standard_normal((4, 5, 12)).astype(np.float32)

    x_t, h0_t = torch.tensor(x_np, requires_grad=True), torch.tensor(h0_np, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x_t, torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    out, h_t = module(packed, h0_t)
    ys_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=5)
    ((ys_t * torch.tensor(ys_w)).sum() + (h_t**2).sum()).backward()

    def loss(params, xs, h0):
        ys, h = lj.gru(params, xs, initial_state=h0, seq_lengths=jnp.asarray(lengths),
                       backend="native")  # fmt: skip
        return jnp.sum(ys * ys_w) + jnp.sum(h**2), (ys, h)

    grads, (ys, h) = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(
        lj.from_torch(module.state_dict()), jnp.asarray(x_np), jnp.asarray(h0_np)
    )
    np.testing.assert_allclose(ys, ys_t.detach().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(h, h_t.detach().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(grads[1], x_t.grad.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(grads[2], h0_t.grad.numpy(), atol=1e-5, rtol=0)
    theirs = dict(module.named_parameters())
    for layer, directions in enumerate(grads[0].layers):
        for d, g in enumerate(directions):
            tag = f"_l{layer}" + ("_reverse" if d else "")
            for name, ours in (("weight_ih", g.w_ih.T), ("weight_hh", g.w_hh.T),
                               ("bias_ih", g.b_ih), ("bias_hh", g.b_hh)):  # fmt: skip
                np.testing.assert_allclose(
                    ours, theirs[name + tag].grad.numpy(), atol=1e-5, rtol=0, err_msg=name + tag
                )


# ------------------------------------------------------------------ dispatch


def test_auto_runs_native_on_cpu_for_the_plain_gru():
    params = lj.init_gru(jax.random.key(12), I, H, bidirectional=True)
    xs = jax.random.normal(jax.random.key(13), (B, T, I))
    assert "lstm_jax_native_gru_forward" in str(jax.make_jaxpr(lambda p: lj.gru(p, xs))(params))
    loss = lambda backend: _network_loss(backend, seq_lengths=LENGTHS)(params, xs, None)  # noqa: E731
    for a, b in zip(
        jax.tree_util.tree_leaves(loss("auto")), jax.tree_util.tree_leaves(loss("native"))
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    bf16 = str(jax.make_jaxpr(lambda p: lj.gru(p, xs, compute_dtype=jnp.bfloat16))(params))
    assert ("lstm_jax_native_gru_forward" in bf16) == native_ops.native_has_bf16()
    for name in ("mask", "resets"):  # per-step masks and resets stay on the kernel
        kw = {name: jnp.ones((B, T), bool)}
        text = str(jax.make_jaxpr(lambda p, kw=kw: lj.gru(p, xs, **kw))(params))
        assert "lstm_jax_native_gru_forward" in text, name
    wide = lj.init_gru(jax.random.key(12), I, 513)  # no size limit: faster than scan at H = 512
    assert "lstm_jax_native_gru" in str(jax.make_jaxpr(lambda p: lj.gru(p, xs))(wide))


def test_auto_export_for_cpu_and_cuda_runs_here():
    """A two-platform export of "auto" carries the native calls for cpu (scan for cuda)."""
    params = lj.init_gru(jax.random.key(14), I, H)
    xs = jax.random.normal(jax.random.key(15), (B, T, I))
    checks = [export.DisabledSafetyCheck.custom_call(c) for c in CALLS]
    fn = jax.jit(lambda p, x: lj.gru(p, x, seq_lengths=LENGTHS))
    exported = export.export(fn, platforms=["cpu", "cuda"], disabled_checks=checks)(params, xs)
    assert_trees_close(
        exported.call(params, xs), lj.gru(params, xs, seq_lengths=LENGTHS, backend="scan")
    )


def test_unsupported_calls_raise():
    params = lj.init_gru(jax.random.key(16), I, H)
    with pytest.raises(ValueError, match="backend='native': it computes in float32 or bfloat16 only"):
        lj.gru(params, jnp.ones((B, T, I)), backend="native", compute_dtype=jnp.float16)


def test_non_float32_parameters_raise():
    params = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.bfloat16), lj.init_gru(jax.random.key(17), I, H)
    )
    with pytest.raises(
        ValueError, match="backend='native': it needs float32 parameters, got bfloat16"
    ):
        lj.gru(params, jnp.ones((B, T, I), jnp.bfloat16), backend="native")
    text = str(jax.make_jaxpr(lambda p: lj.gru(p, jnp.ones((B, T, I), jnp.bfloat16)))(params))
    assert "lstm_jax_native" not in text


def test_unbuilt_extension_falls_back_to_scan(monkeypatch, caplog):
    monkeypatch.setattr(native_ops, "library", lambda: (None, "the C++ extension is not built"))
    native_ops.log_unavailable_once.cache_clear()
    params = lj.init_gru(jax.random.key(18), I, H)
    xs = jnp.ones((B, T, I))
    with pytest.raises(ValueError, match="backend='native': the C.. extension is not built"):
        lj.gru(params, xs, backend="native")
    with caplog.at_level(logging.INFO, logger="lstm_jax.kernels.native_ops"):
        auto = lj.gru(params, xs)
        lj.gru(params, xs)
    assert sum("instead of 'native'" in r.message for r in caplog.records) == 1
    assert_trees_close(auto, lj.gru(params, xs, backend="scan"), atol=0, rtol=0)
    native_ops.log_unavailable_once.cache_clear()


def test_select_layer_native_gru():
    assert select_layer("native", "gru").kernel == dispatch.KERNELS["gru", "native"].run
    assert dispatch.AUTO["gru"]["cpu"] == "native"


@pytest.mark.slow
def test_long_sequence():
    steps = 100_000
    args = _inputs(19, batch=2, steps=steps, hidden=4)
    lengths = jnp.array([steps, steps - 777], jnp.int32)
    options = dict(seq_lengths=lengths, reverse=True, masked=True)
    assert_trees_close(
        _value_and_grads(native_gru_layer, args, **options),
        _value_and_grads(scan_layer, args, **options),
        atol=1e-4, rtol=1e-4,
    )  # fmt: skip
