"""cuDNN LSTM through ``jax.experimental.rnn`` (``backend="cudnn"``).

Each call runs one layer in one direction as a one-layer, unidirectional
cuDNN LSTM. Our weights are converted to cuDNN's opaque flat layout (see the
``jax.experimental.rnn`` module docstring)::

    [W_ih^T (4H, I) row-major, W_hh^T (4H, H) row-major, b_ih (4H,), b_hh (4H,)]

with gate order i, f, g, o (ours and cuDNN's); our single bias ``b`` goes into
``b_ih`` and ``b_hh`` is zero. Reverse directions reverse each sequence's
valid part before the call and the outputs after it, as ``scan.py`` does.

Where it runs: the cuDNN call is staged for the ``cuda`` platform only
(:func:`lstm_jax.kernels.platform.per_platform`), decided when the call is
lowered. ``backend="cudnn"`` runs it on ``cuda`` and ``scan`` on every other
platform; where cuDNN cannot run the call (:func:`cudnn_unsupported`: plain
LSTM, float32, no recurrent dropout, not under ``vmap``, a batch of at least
one, a jaxlib with its CUDA plugin, which the call needs even to be traced),
or the default backend is not a GPU, it warns (``RuntimeWarning`` naming the
reason). ``"auto"`` runs it on ``cuda`` from :data:`AUTO_MIN_HIDDEN` hidden units
(:func:`cudnn_auto_why_not`), ``fused`` below.

The cuDNN calls are this module's copies of ``jax.experimental.rnn``'s two
primitives, lowered by jaxlib's own rules with row-major layouts added
(:func:`_row_major`), a sequential ``vmap`` rule (one call per mapped element,
so ``vmap`` of a jitted caller works) and derivatives of the derivatives
(``jax.hessian``, grad of grad) through ``jax.experimental.rnn.lstm_ref``.
Sequences of length 0 (cuDNN fails on them) run one step whose results are
discarded.

Measured on an NVIDIA H200 (jax 0.11.2, before the layout constraints, the
zero-length handling and the second derivatives were added): outputs and
gradients equal ``scan`` for batch-major inputs (ragged or not; reversed when
not ragged), but wrong (differences of 0.19-1.3 in outputs and final states,
up to 13 in gradients) for time-major inputs and for reversed ragged ones, that is
wherever a transpose or gather ran right before the call; ``jax.hessian``
failed. The constrained version (second lease, same machine and versions) equals
``scan`` in all of tests/test_kernels.py's GPU checks: time-major, reversed, ragged,
with a length-0 sequence (benchmarks/results/gpu-nvidia-h200/).
"""

from __future__ import annotations

import functools
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax._src import core
from jax._src.interpreters import batching, mlir
from jax._src.lib.mlir import ir

from lstm_jax.cells import Cell
from lstm_jax.kernels.fused import unsupported_variant
from lstm_jax.kernels.call import KernelSpec, LayerCall, layer_call, scan_kernel
from lstm_jax.kernels.platform import per_platform, platform_only
from lstm_jax.params import LSTMWeights
from lstm_jax.sequence import reverse_sequences

__all__ = ["AUTO_MIN_HIDDEN", "CUDNN", "cudnn_auto_why_not", "cudnn_kernel", "cudnn_lstm_layer",
           "cudnn_or_scan", "cudnn_unsupported", "to_cudnn_weights"]  # fmt: skip


def to_cudnn_weights(weights: LSTMWeights) -> Array:
    """Flatten one layer-direction's weights into cuDNN's layout, ``(4H*(I+H) + 8H,)``.

    >>> import lstm_jax as lj
    >>> to_cudnn_weights(lj.init_lstm(jax.random.key(0), 3, 4).layers[0][0]).shape
    (144,)
    """
    return jnp.concatenate(
        [
            jnp.transpose(weights.w_ih).reshape(-1),
            jnp.transpose(weights.w_hh).reshape(-1),
            weights.b,
            jnp.zeros_like(weights.b),
        ]
    )


def _cuda_rnn_available() -> bool:
    """Whether jaxlib's cuDNN RNN bindings (from its CUDA plugin) are installed, and
    ``jax.experimental.rnn``'s primitives this module copies."""
    if _rnn_fwd_p is None:
        return False
    try:
        from jax._src.lib import gpu_rnn
    except ImportError:
        return False
    return hasattr(gpu_rnn, "compute_rnn_workspace_reserve_space_sizes")


def _loop_batching_rule(prim):
    """A batching rule that binds ``prim`` once per element of the mapped axis (``lax.map``)."""

    def rule(args, dims, **params):
        mapped = [d is not None for d in dims]  # None: not mapped
        moved = [jnp.moveaxis(a, d, 0) if m else a for a, d, m in zip(args, dims, mapped)]

        def one(sliced):
            it = iter(sliced)
            return tuple(prim.bind(*[next(it) if m else a for a, m in zip(moved, mapped)], **params))

        outs = jax.lax.map(one, [a for a, m in zip(moved, mapped) if m])
        return outs, (0,) * len(outs)

    return rule


def _under_vmap(x) -> bool:
    # the fused kernel vmaps in parallel; cuDNN under vmap runs once per mapped element
    return isinstance(x, batching.BatchTracer)


def cudnn_unsupported(call: LayerCall) -> Optional[str]:
    """Why cuDNN cannot run ``call``, or None (decided at trace time, for any platform)."""
    weights, options = call.weights, call.options
    reason = unsupported_variant(weights)
    if reason is not None:
        return reason
    if options.recurrent_mask is not None:
        return "recurrent dropout is not supported by cuDNN's LSTM here"
    if options.compute_dtype is not None and jnp.dtype(options.compute_dtype) != jnp.float32:
        return f"only float32 is supported, got compute_dtype={jnp.dtype(options.compute_dtype).name}"
    if call.xs.dtype != jnp.float32 or weights.w_hh.dtype != jnp.float32:
        return "only float32 inputs and parameters are supported"
    if _under_vmap(call.xs):
        return "jax.experimental.rnn has no vmap rule (only a sequential one added here)"
    if call.xs.shape[1 if options.time_major else 0] == 0:
        return "cuDNN's descriptors take no empty batch"
    if not _cuda_rnn_available():
        return ("this JAX has no cuDNN RNN support (its CUDA plugin is not installed, or "
                "jax.experimental.rnn lacks the primitives used here)")
    return None


def _fallback(reason: str) -> None:
    warnings.warn(
        f"backend='cudnn' cannot run this layer ({reason}); running backend='scan' instead.",
        RuntimeWarning,
        stacklevel=3,
    )


# one layer, one direction, float32 matmuls in float32 (no TF32)
_CUDNN = dict(num_layers=1, dropout=0.0, bidirectional=False, cudnn_allow_tf32=False)


def _row_major(results):
    """Constrain the custom call that made ``results`` to row-major operands and results.

    jaxlib's cuDNN lowering names no layouts, which leaves XLA free to give its
    operands and results any layout, and cuDNN reads and writes row-major
    buffers: on an H200 (jax 0.11.2), inputs transposed before the call
    (time-major, or each sequence reversed in place) gave wrong outputs and
    gradients, while the same values without a transpose in front matched scan.
    """
    owner = results[0].owner
    op = getattr(owner, "operation", owner)

    def layouts(values):
        return ir.ArrayAttr.get([
            ir.DenseIntElementsAttr.get(np.arange(ir.RankedTensorType(v.type).rank - 1, -1, -1),
                                        type=ir.IndexType.get())
            for v in values
        ])  # fmt: skip

    op.attributes["operand_layouts"] = layouts(op.operands)
    op.attributes["result_layouts"] = layouts(op.results)
    return results


def _rnn_primitive(name: str, reference, lowering_name: str):
    """A copy of ``jax.experimental.rnn``'s primitive ``reference`` whose ``cuda`` lowering
    is jaxlib's (``gpu_rnn.<lowering_name>``, read when lowering) with row-major layouts."""
    from jax._src import dispatch
    from jax.experimental import rnn

    prim = core.Primitive(name)
    prim.multiple_results = True
    prim.def_impl(functools.partial(dispatch.apply_primitive, prim))
    prim.def_abstract_eval(getattr(rnn, reference))

    def lowering(ctx, *args, **params):
        from jax._src.lib import gpu_rnn

        return _row_major(getattr(gpu_rnn, lowering_name)(ctx, *args, **params))

    mlir.register_lowering(prim, lowering, platform="cuda")
    batching.primitive_batchers[prim] = _loop_batching_rule(prim)
    return prim


try:
    _rnn_fwd_p = _rnn_primitive("lstm_jax_cudnn_rnn_fwd", "rnn_abstract_eval", "cudnn_rnn_lowering")
    _rnn_bwd_p = _rnn_primitive("lstm_jax_cudnn_rnn_bwd", "rnn_bwd_abstract_eval", "cudnn_rnn_bwd_lowering")
except (ImportError, AttributeError):  # a JAX without them: cudnn_unsupported says so
    _rnn_fwd_p = _rnn_bwd_p = None


def _reference(input_size, hidden_size, xs, h0, c0, w, lengths):
    """``jax.experimental.rnn``'s JAX reference of the cuDNN call (the same arguments): the
    derivatives of the derivatives go through it."""
    from jax.experimental import rnn

    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, input_size, hidden_size, 1, False)
    return tuple(rnn.lstm_ref(xs, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, input_size,
                              hidden_size, 1, 0.0, False))  # fmt: skip


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _forward(input_size, hidden_size, xs, h0, c0, w, lengths):
    """cuDNN's forward, lowered for ``cuda`` only
    (:func:`~lstm_jax.kernels.platform.platform_only`, so a multi-platform export
    works): ``(ys, h, c)`` and the residuals its backward reads, ``(ys, reserve_space)``."""
    def forward(xs, h0, c0, w, lengths):
        ys, h, c, reserve = _rnn_fwd_p.bind(xs, h0, c0, w, lengths, input_size=input_size,
                                            hidden_size=hidden_size, **_CUDNN)  # fmt: skip
        return (ys, h, c), (ys, reserve)

    return platform_only("cuda", forward, xs, h0, c0, w, lengths)


@_forward.defjvp
def _forward_jvp(input_size, hidden_size, primals, tangents):
    outputs, residuals = _forward(input_size, hidden_size, *primals)
    lengths = primals[-1]
    reference = lambda *a: _reference(input_size, hidden_size, *a, lengths)  # noqa: E731
    _, d_outputs = jax.jvp(reference, primals[:4], tangents[:4])
    # the residuals are read by _backward only, whose JVP recomputes them
    return (outputs, residuals), (d_outputs, jax.tree.map(jnp.zeros_like, residuals))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _backward(input_size, hidden_size, xs, h0, c0, w, lengths, residuals, cotangents):
    """cuDNN's backward (``cuda`` only): the gradients of ``xs, h0, c0, w``."""
    def backward(xs, h0, c0, w, lengths, residuals, cotangents):
        return _rnn_bwd_p.bind(*cotangents, xs, h0, c0, w, *residuals, lengths,
                               input_size=input_size, hidden_size=hidden_size, **_CUDNN)  # fmt: skip

    return tuple(platform_only("cuda", backward, xs, h0, c0, w, lengths, residuals, cotangents))


@_backward.defjvp
def _backward_jvp(input_size, hidden_size, primals, tangents):
    *inputs, lengths, _, cotangents = primals

    def reference_gradients(inputs, cotangents):
        reference = lambda *a: _reference(input_size, hidden_size, *a, lengths)  # noqa: E731
        return jax.vjp(reference, *inputs)[1](cotangents)

    _, d_gradients = jax.jvp(reference_gradients, (tuple(inputs), cotangents),
                             (tuple(tangents[:4]), tangents[-1]))  # fmt: skip
    return _backward(input_size, hidden_size, *primals), d_gradients


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _cudnn_lstm(input_size, hidden_size, xs, h0, c0, w, lengths):
    """``jax.experimental.rnn.lstm`` with its own VJP, both halves differentiable again
    through :func:`_reference` (``jax.hessian``, grad of grad)."""
    return _forward(input_size, hidden_size, xs, h0, c0, w, lengths)[0]


def _cudnn_lstm_fwd(input_size, hidden_size, xs, h0, c0, w, lengths):
    outputs, residuals = _forward(input_size, hidden_size, xs, h0, c0, w, lengths)
    return outputs, (xs, h0, c0, w, lengths, residuals)


def _cudnn_lstm_bwd(input_size, hidden_size, residuals, cotangents):
    return (*_backward(input_size, hidden_size, *residuals, cotangents), None)  # none for lengths


_cudnn_lstm.defvjp(_cudnn_lstm_fwd, _cudnn_lstm_bwd)


def cudnn_kernel(call: LayerCall):
    """The cuDNN call itself, for a call :func:`cudnn_unsupported` accepts; lowers for ``cuda``
    only. ``unroll`` and ``compute_dtype`` (float32 only) have no effect."""
    options = call.options
    seq_lengths, time_major, reverse = options.seq_lengths, options.time_major, options.reverse
    if options.recurrent_mask is not None:
        raise ValueError("cuDNN's LSTM has no recurrent mask; use backend='fused'.")
    xs = jnp.swapaxes(call.xs, 0, 1) if time_major else call.xs  # [B, T, I]: cuDNN is batch-first
    batch, steps, inputs = xs.shape
    hidden = call.weights.w_hh.shape[0]
    lengths = (
        jnp.full((batch,), steps, jnp.int32) if seq_lengths is None else seq_lengths.astype(jnp.int32)
    )
    if reverse:
        xs = jnp.swapaxes(reverse_sequences(jnp.swapaxes(xs, 0, 1), seq_lengths), 0, 1)
    h0, c0 = call.initial_carry
    w = to_cudnn_weights(call.weights)
    # cuDNN fails on sequences of length 0 (jax-ml/jax#17966; remat's blocks past a
    # sequence's end have them): those run one step whose results are discarded below
    ys, h, c = _cudnn_lstm(inputs, hidden, xs, h0[None], c0[None], w, jnp.maximum(lengths, 1))
    h, c = h[0], c[0]
    if seq_lengths is not None:  # cuDNN leaves padding unspecified; ours is exact zeros
        keep = jnp.arange(steps)[None, :] < lengths[:, None]  # [B, T]
        ys = jnp.where(keep[:, :, None], ys, jnp.zeros_like(ys))
        empty = (lengths == 0)[:, None]  # [B, 1]
        h, c = jnp.where(empty, h0, h), jnp.where(empty, c0, c)
    if reverse:
        ys = jnp.swapaxes(reverse_sequences(jnp.swapaxes(ys, 0, 1), seq_lengths), 0, 1)
    if time_major:
        ys = jnp.swapaxes(ys, 0, 1)
    return ys, (h, c)


def cudnn_or_scan(call: LayerCall):
    """``backend="cudnn"``: cuDNN on ``cuda``, ``scan`` elsewhere. Warns (``RuntimeWarning``)
    where cuDNN cannot run the call (then ``scan`` runs on every platform) or where the
    default backend is not a GPU."""
    reason = cudnn_unsupported(call)
    if reason is not None:
        _fallback(reason)
        return scan_kernel(call)
    if jax.default_backend() != "gpu":
        _fallback(f"cuDNN runs only where this is lowered for cuda; the default backend is "
                  f"{jax.default_backend()!r}")  # fmt: skip
    return per_platform({"cuda": cudnn_kernel}, scan_kernel)(call)


# "auto" runs cuDNN on cuda from this many hidden units, "fused" below. On an H200 (jax
# 0.11.2, the row-major call; benchmarks/results/gpu-nvidia-h200/README.md, session 13)
# cuDNN's speed-up over Flax against fused's, train / infer: H = 768 at (16, 1024, 768)
# 1.93 / 1.32 vs 1.70 / 1.04 and at (8, 2048, 512) 2.40 / 2.35 vs 1.64 / 1.04; H = 256 at
# (16, 1024, 256) 1.71 / 1.34 vs 1.45 / 1.01 but at (64, 128, 128) 1.32 / 1.07 vs
# 1.75 / 1.48; H <= 128 slower in 5 of 6 (0.72-1.31 vs 1.00-1.67). H = 512 not measured.
AUTO_MIN_HIDDEN = 512


def cudnn_auto_why_not(call: LayerCall) -> Optional[str]:
    """Why ``"auto"`` does not run cuDNN for ``call``: what :func:`cudnn_unsupported` says,
    or fewer than :data:`AUTO_MIN_HIDDEN` hidden units (``"fused"`` measured faster there)."""
    hidden = call.weights.w_hh.shape[0]
    if hidden < AUTO_MIN_HIDDEN:
        return f"hidden size {hidden} < {AUTO_MIN_HIDDEN}, where 'fused' was measured faster"
    return cudnn_unsupported(call)


CUDNN = KernelSpec("lstm", "cudnn", cudnn_kernel, auto_why_not=cudnn_auto_why_not,
                   explicit=cudnn_or_scan)  # fmt: skip


def cudnn_lstm_layer(cell: Cell, weights: LSTMWeights, xs: Array, initial_carry, **options):
    """``backend="cudnn"`` (:func:`cudnn_or_scan`); arguments as :func:`lstm_jax.scan.scan_layer`."""
    return CUDNN.run(layer_call(cell, weights, xs, initial_carry, **options))
