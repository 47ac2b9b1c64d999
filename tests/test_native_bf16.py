"""The native kernels with ``compute_dtype=bfloat16`` against a bf16 reference and float32 ``scan``.

Each cell's native bf16 kernels are compared with a JAX layer that rounds the
same GEMM inputs (``x_t``, ``h * mask``, the weights, ``dz``) to bfloat16 and
sums in float32: ``fused`` for the LSTM, and for the GRU ``scan`` over a cell
whose matmuls round their cotangent too (:func:`_rounded_matmul`; ``scan``'s
own bf16 gradients do not round ``dz``, and differ from native by ~2e-3 of a
leaf's largest value, as much as float32 does). They then differ only by
float32 summation order, which now and then moves a value across a bf16
rounding boundary (one bf16 step, 2^-8 relative, in one element of ``h`` or
``dz``). They are compared leaf by leaf at 1e-3 of the leaf's largest value
(measured: <= 1.5e-4 at B = 37; a kernel computing in float32 differs from
fused bf16 by 2e-3 to 3e-2 of it, and fails). Against float32 ``scan`` they
agree to bf16 accuracy (5e-2 on these values). Shapes as in ``test_native.py``: H = 21 and
I = 5 are odd (a zero-padded bf16 pair) and H is one full 16-unit panel plus
a partial one; B = 7 is one 6-row block and a remainder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from lstm_jax.cells import Cell, gru_kind, gru_pointwise, lstm_kind, matmul
from lstm_jax.kernels import dispatch
from lstm_jax.kernels.fused import fused_lstm_layer
from lstm_jax.kernels.native import native_lstm_layer
from lstm_jax.kernels.native_gru import native_gru_layer
from lstm_jax.kernels.native_ops import native_has_bf16, native_unavailable
from lstm_jax.scan import scan_layer
from tests import native_cases
from tests.native_cases import LENGTHS, assert_trees_close

pytestmark = pytest.mark.skipif(
    native_unavailable() is not None or not native_has_bf16(),
    reason="native bfloat16 kernels unavailable (no extension, or no AVX512_BF16 on this CPU)",
)

BF16 = jnp.bfloat16
# (reverse, ragged, masked)
CASES = [(False, False, False), (True, True, True), (False, True, True), (True, False, False)]
TIGHT = 1e-3  # native bf16 vs the bf16 reference, relative to each leaf's largest value
LOOSE = dict(atol=5e-2, rtol=5e-2)  # bf16 vs float32


@jax.custom_vjp
def _rounded_matmul(x, w):
    """``x @ w`` with bf16 inputs summed in float32, whose VJP rounds the cotangent to bf16 too
    (as the native kernels round ``dz``). ``x: (K,)``, ``w: (K, N)``."""
    return matmul(x, w, BF16)


def _rounded_matmul_fwd(x, w):
    return _rounded_matmul(x, w), (x, w)


def _rounded_matmul_bwd(residuals, g):
    x, w = residuals
    g = g.astype(BF16)
    dx = jnp.matmul(g, w.astype(BF16).T, preferred_element_type=jnp.float32).astype(x.dtype)
    dw = jnp.outer(x.astype(BF16), g).astype(jnp.float32)  # bf16 * bf16 is exact in float32
    return dx, dw


_rounded_matmul.defvjp(_rounded_matmul_fwd, _rounded_matmul_bwd)


def _rounded_gru_kind() -> Cell:
    """The GRU (``cells.gru_pointwise``) over :func:`_rounded_matmul`."""

    def step(w, h, gx, mask):
        gh = _rounded_matmul(h if mask is None else h * mask, w.w_hh) + w.b_hh
        return gru_pointwise(gx, gh, h)[1]

    return Cell(project=lambda w, x: _rounded_matmul(x, w.w_ih) + w.b_ih, step=step,
                output=lambda h: h)  # fmt: skip


def _rounded_gru_layer(cell, w, xs, h0, compute_dtype=None, **options):
    """``scan`` over :func:`_rounded_gru_kind` (``cell``, ``compute_dtype``: bf16 implied)."""
    del cell, compute_dtype
    return scan_layer(_rounded_gru_kind(), w, xs, h0, **options)


class Bf16Cell(NamedTuple):
    """A cell's native bf16 layer, its bf16 reference, and how to make its test inputs."""

    native: Callable
    reference: Callable  # same rounding as native
    kind: Callable  # -> cells.Cell
    init: Callable  # lj.init_lstm, lj.init_gru
    inputs: Callable  # (seed, batch, steps, hidden) -> (w, xs, carry, mask), as native_cases.inputs
    carries: int  # arrays in the carry


def _lstm_inputs(seed=0, **sizes):
    return native_cases.inputs(native_cases.CELLS["lstm"], seed, **sizes)


def _gru_inputs(seed=0, **sizes):
    return native_cases.inputs(native_cases.CELLS["gru"], seed, **sizes)


CELLS = {
    "lstm": Bf16Cell(native_lstm_layer, fused_lstm_layer, lstm_kind, lj.init_lstm, _lstm_inputs, 2),
    "gru": Bf16Cell(native_gru_layer, _rounded_gru_layer, gru_kind, lj.init_gru, _gru_inputs, 1),
}  # fmt: skip
cells = pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())


def assert_close_to_fused(got, want, tol=TIGHT):
    """Leaf by leaf: max |got - want| <= tol * max |want| (same structure and dtypes)."""
    leaves_got, leaves_want = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    assert len(leaves_got) == len(leaves_want)
    for k, (x, y) in enumerate(zip(leaves_got, leaves_want)):
        assert x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype, x.shape, y.shape)
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        scale = float(np.max(np.abs(y), initial=0.0))
        err = float(np.max(np.abs(x - y), initial=0.0))
        assert err <= tol * scale, f"leaf {k}: max error {err:.3g} > {tol} * {scale:.3g}"


def _value_and_grads(layer, args, *, kind=lstm_kind, compute_dtype=BF16, seq_lengths=None,
                     reverse=False, masked=False):  # fmt: skip
    """Outputs, final state and the gradients of a loss weighing all of them differently;
    ``args = (w, xs, carry, mask)``."""

    def loss(w, xs, carry, mask):
        ys, state = layer(
            kind(), w, xs, carry, seq_lengths=seq_lengths, reverse=reverse,
            recurrent_mask=mask if masked else None, compute_dtype=compute_dtype,
        )  # fmt: skip
        leaves = jax.tree_util.tree_leaves(state)  # (h, c), or h
        first, last = leaves[0], leaves[-1]
        return jnp.sum(ys * jnp.sin(ys)) + jnp.sum(1.3 * first) + jnp.sum(last * last), (ys, state)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(*args)


def _scan(cell, w, xs, carry, compute_dtype=None, **kwargs):
    """float32 ``scan`` (the reference ignores the compute dtype asked for)."""
    del compute_dtype
    return scan_layer(cell, w, xs, carry, **kwargs)


def _max_diff(a, b) -> float:
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return max(float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - y))) for x, y in leaves)


def _slow_unless(default: bool, *values):
    return pytest.param(*values, marks=() if default else pytest.mark.slow)


@cells
@pytest.mark.parametrize(
    "reverse, ragged, masked, split",
    [_slow_unless(k == 0, *case, None) for k, case in enumerate(CASES)]
    + [_slow_unless(True, True, True, True, "units"), _slow_unless(True, True, True, True, "rows")],
)
def test_matches_bf16_reference_and_scan(monkeypatch, cell, reverse, ragged, masked, split):
    if split is not None:  # threads split hidden units, or batch rows
        monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")
        monkeypatch.setenv("LSTM_JAX_NATIVE_MIN_ROWS", "1" if split == "rows" else "100")
    args = cell.inputs()
    options = dict(kind=cell.kind, seq_lengths=LENGTHS if ragged else None, reverse=reverse,
                   masked=masked)  # fmt: skip
    got = _value_and_grads(cell.native, args, **options)
    assert_close_to_fused(got, _value_and_grads(cell.reference, args, **options))
    reference = _value_and_grads(_scan, args, **options)
    assert_trees_close(got, reference, **LOOSE)
    assert _max_diff(got, reference) > 1e-4  # it did compute in bf16
    if not masked:
        assert float(jnp.max(jnp.abs(got[1][3]))) == 0.0


def _sized_inputs(cell, batch, input_size, hidden):
    keys = jax.random.split(jax.random.key(3), 2 + cell.carries)
    w = cell.init(keys[0], input_size, hidden).layers[0][0]
    xs = jax.random.normal(keys[1], (batch, 4, input_size))
    carry = tuple(jax.random.normal(k, (batch, hidden)) for k in keys[2:])
    return w, xs, carry if cell.carries > 1 else carry[0], jnp.ones((batch, hidden))


@cells
@pytest.mark.parametrize(
    "batch, input_size, hidden",
    [_slow_unless(True, 37, 33, 80), _slow_unless(False, 9, 6, 32), _slow_unless(False, 9, 1, 1)],
)
def test_other_sizes(cell, batch, input_size, hidden):
    """B = 37: two full AMX row blocks of 16 and a partial one; H = 80: five panels (a group
    of four in the AMX backward, and one)."""
    args = _sized_inputs(cell, batch, input_size, hidden)
    got = _value_and_grads(cell.native, args, kind=cell.kind)
    assert_close_to_fused(got, _value_and_grads(cell.reference, args, kind=cell.kind))


@cells
def test_time_major_matches_reference(cell):
    """``time_major=True``: the kernels read ``xs`` and write ``ys`` time-major (the default
    batch-major calls are covered above)."""
    w, xs, carry, _ = cell.inputs()
    args = (w, jnp.swapaxes(xs, 0, 1), carry)

    def run(layer):
        def loss(w, xs, carry):
            ys, state = layer(cell.kind(), w, xs, carry, seq_lengths=LENGTHS, reverse=True,
                              time_major=True, compute_dtype=BF16)  # fmt: skip
            return jnp.sum(ys * jnp.sin(ys)) + sum(jnp.sum(s * s) for s in jax.tree.leaves(state)), ys

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(*args)

    assert_close_to_fused(run(cell.native), run(cell.reference))


@cells
@pytest.mark.parametrize("x_dtype", [BF16])
def test_dtypes_match_reference(cell, x_dtype):
    w, xs, carry, mask = cell.inputs()
    args = (w, xs.astype(x_dtype), carry, mask)
    got = _value_and_grads(cell.native, args, kind=cell.kind)
    want = _value_and_grads(cell.reference, args, kind=cell.kind)
    got_dtypes = [x.dtype for x in jax.tree_util.tree_leaves(got)]
    assert got_dtypes == [x.dtype for x in jax.tree_util.tree_leaves(want)]
    assert got[1][1].dtype == x_dtype  # the input gradient keeps the input's dtype


@pytest.mark.slow
def test_network_matches_fused_bf16():
    params = lj.init_lstm(jax.random.key(5), 5, 21, num_layers=2, bidirectional=True)
    xs = jax.random.normal(jax.random.key(6), (3, 8, 5))

    def loss(backend):
        def f(p, x):
            ys, _ = lj.lstm(
                p, x, backend=backend, compute_dtype=BF16, seq_lengths=jnp.array([8, 2, 5])
            )
            return jnp.sum(ys**2)

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, xs)

    assert_close_to_fused(loss("native"), loss("fused"))


@cells
@pytest.mark.parametrize("batch, steps", [(0, 4), _slow_unless(False, 3, 0), (4, 1)])
def test_edge_shapes(cell, batch, steps):
    args = cell.inputs(batch=batch, steps=steps)
    got = _value_and_grads(cell.native, args, kind=cell.kind)
    reference = cell.reference if steps > 0 else _scan  # fused has no T = 0
    assert_close_to_fused(got, _value_and_grads(reference, args, kind=cell.kind))


@cells
def test_vmap_matches_a_loop(cell):
    inputs = [cell.inputs(seed) for seed in range(3)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *inputs)

    def run(w, xs, carry):
        return cell.native(cell.kind(), w, xs, carry, compute_dtype=BF16)

    got = jax.jit(jax.vmap(run))(*stacked[:3])
    for k, args in enumerate(inputs):
        assert_close_to_fused(jax.tree_util.tree_map(lambda a: a[k], got), run(*args[:3]), 1e-5)


@cells
def test_padding_never_reaches_the_results(cell):
    w, xs, carry, mask = cell.inputs()
    padded = jnp.arange(xs.shape[1])[None, :, None] >= LENGTHS[:, None, None]
    options = dict(kind=cell.kind, seq_lengths=LENGTHS, masked=True)
    clean = _value_and_grads(cell.native, (w, jnp.where(padded, 0.0, xs), carry, mask), **options)
    dirty = _value_and_grads(cell.native, (w, jnp.where(padded, jnp.nan, xs), carry, mask), **options)
    grads_x = (clean[1][1], dirty[1][1])
    assert_trees_close((clean[0], clean[1][0]), (dirty[0], dirty[1][0]), atol=0, rtol=0)
    np.testing.assert_array_equal(*(jnp.where(padded, 0.0, g) for g in grads_x))


@pytest.mark.slow
def test_second_order_matches_fused_bf16():
    w, xs, (h0, c0), _ = _lstm_inputs(batch=2, steps=3, hidden=5)

    def grad_norm(layer):
        def loss(x):
            ys, _ = layer(lstm_kind(), w, x, (h0, c0), compute_dtype=BF16)
            return jnp.sum(ys**2)

        return jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(loss)(x) ** 2)))(xs)

    assert_trees_close(
        grad_norm(native_lstm_layer), grad_norm(fused_lstm_layer), atol=1e-3, rtol=1e-3
    )


@pytest.mark.parametrize("kind, init, run, reference",
                         [("lstm", lj.init_lstm, lj.lstm, "fused"), ("gru", lj.init_gru, lj.gru, "scan")])
def test_auto_runs_native_bf16_where_it_is_chosen(monkeypatch, kind, init, run, reference):
    monkeypatch.setitem(dispatch.AUTO[kind], "cpu", "native")
    params = init(jax.random.key(12), 5, 21)
    xs = jnp.ones((7, 9, 5))
    text = str(jax.make_jaxpr(lambda p: run(p, xs, compute_dtype=BF16))(params))
    assert "lstm_jax_native_" in text
    want = run(params, xs, compute_dtype=BF16, backend=reference)
    assert_close_to_fused(run(params, xs, compute_dtype=BF16), want)


def test_float16_is_declined():
    params = lj.init_lstm(jax.random.key(13), 5, 21)
    with pytest.raises(ValueError, match="float32 or bfloat16 only, got compute_dtype=float16"):
        lj.lstm(params, jnp.ones((7, 9, 5)), backend="native", compute_dtype=jnp.float16)


def test_without_avx512_there_are_no_bf16_kernels():
    """``LSTM_JAX_NATIVE_ISA=avx2``: ``native`` declines bf16 with an error, ``auto`` runs
    fused (the GRU scan)."""
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, pytest
        import lstm_jax as lj
        from lstm_jax.kernels import dispatch
        from lstm_jax.kernels.native_ops import native_has_bf16, native_isa
        assert native_isa() == "avx2" and not native_has_bf16()
        params, xs = lj.init_lstm(jax.random.key(0), 3, 4), jnp.ones((2, 5, 3))
        with pytest.raises(ValueError, match="no bfloat16 kernels"):
            lj.lstm(params, xs, backend="native", compute_dtype=jnp.bfloat16)
        dispatch.AUTO["lstm"]["cpu"] = "native"
        text = str(jax.make_jaxpr(lambda p: lj.lstm(p, xs, compute_dtype=jnp.bfloat16))(params))
        assert "lstm_jax_native" not in text
        assert "lstm_jax_native" in str(jax.make_jaxpr(lambda p: lj.lstm(p, xs))(params))
        params = lj.init_gru(jax.random.key(0), 3, 4)
        with pytest.raises(ValueError, match="no bfloat16 kernels"):
            lj.gru(params, xs, backend="native", compute_dtype=jnp.bfloat16)
        text = str(jax.make_jaxpr(lambda p: lj.gru(p, xs, compute_dtype=jnp.bfloat16))(params))
        assert "lstm_jax_native" not in text
        """
    )
    env = dict(os.environ, LSTM_JAX_NATIVE_ISA="avx2", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_vdpbf16ps_kernels_where_amx_is_not_used():
    """``LSTM_JAX_NATIVE_BF16=avx512bf16``: the vdpbf16ps kernels (those of CPUs without AMX)."""
    code = textwrap.dedent(
        """
        import os, sys
        sys.path.insert(0, ".")
        from lstm_jax.kernels.fused import fused_lstm_layer
        from lstm_jax.kernels.native_ops import native_bf16_isa
        from lstm_jax.kernels.native import native_lstm_layer
        from tests.native_cases import LENGTHS
        from tests.test_native_bf16 import _lstm_inputs, _value_and_grads, assert_close_to_fused
        assert native_bf16_isa() == "avx512bf16", native_bf16_isa()
        for min_rows, options in (("100", {}), ("100", dict(seq_lengths=LENGTHS, reverse=True, masked=True)),
                                  ("1", dict(seq_lengths=LENGTHS, reverse=True, masked=True))):
            os.environ["LSTM_JAX_NATIVE_MIN_ROWS"] = min_rows  # threads split units, or rows
            got = _value_and_grads(native_lstm_layer, _lstm_inputs(), **options)
            want = _value_and_grads(fused_lstm_layer, _lstm_inputs(), **options)
            assert_close_to_fused(got, want)
        """
    )
    env = dict(os.environ, LSTM_JAX_NATIVE_BF16="avx512bf16", LSTM_JAX_NATIVE_SPLIT_MACS="0",
               JAX_PLATFORMS="cpu")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
