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
lowered. ``backend="auto"`` runs it on ``cuda`` for the calls it supports
(:func:`cudnn_unsupported`: plain LSTM, float32, no recurrent dropout, not
under ``vmap``, and a jaxlib with its CUDA plugin, which
``jax.experimental.rnn`` needs even to trace the call) and the fused kernel
otherwise. ``jax.experimental.rnn``'s primitives get a sequential batching
rule here (one call per mapped element), so ``vmap`` of a jitted caller works
wherever the CUDA plugin is installed. ``backend="cudnn"`` runs it on ``cuda`` and ``scan`` on every
other platform; where cuDNN cannot run the call, or the default backend is
not a GPU, it warns (``RuntimeWarning`` naming the reason).

Not run on a GPU in this project (no GPU was available): the weight
conversion is tested against ``jax.experimental.rnn.lstm_ref`` on CPU, and the
lowering for ``cuda`` (with the CUDA plugin's two trace-time helpers stubbed,
since it is not installed here) is checked to contain cuDNN's custom call.
"""

from __future__ import annotations

import functools
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.cells import Cell
from lstm_jax.kernels.fused import unsupported_variant
from lstm_jax.kernels.call import KernelSpec, LayerCall, layer_call, scan_kernel
from lstm_jax.kernels.platform import per_platform, platform_only
from lstm_jax.params import LSTMWeights
from lstm_jax.sequence import reverse_sequences

__all__ = ["CUDNN", "cudnn_kernel", "cudnn_lstm_layer", "cudnn_or_scan", "cudnn_unsupported",
           "to_cudnn_weights"]  # fmt: skip


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
    """Whether jaxlib's cuDNN RNN bindings (from its CUDA plugin) are installed."""
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


def _register_rnn_batching() -> None:
    """jax.experimental.rnn has no vmap rule; ``vmap`` of a jitted caller reaches its
    primitives in every ``platform_dependent`` branch, even off GPU. Give them a
    sequential one (one cuDNN call per mapped element) where JAX has none."""
    from jax._src.interpreters import batching
    from jax.experimental import rnn

    for prim in (rnn.rnn_fwd_p, rnn.rnn_bwd_p):
        if prim not in batching.fancy_primitive_batchers:
            batching.primitive_batchers[prim] = _loop_batching_rule(prim)


_register_rnn_batching()


def _under_vmap(x) -> bool:
    # the fused kernel vmaps in parallel; cuDNN under vmap runs once per mapped element
    from jax._src.interpreters import batching

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
    if not _cuda_rnn_available():
        return "this jaxlib has no cuDNN RNN support (its CUDA plugin is not installed)"
    return None


def _fallback(reason: str) -> None:
    warnings.warn(
        f"backend='cudnn' cannot run this layer ({reason}); running backend='scan' instead.",
        RuntimeWarning,
        stacklevel=3,
    )


_CUDNN = dict(num_layers=1, dropout=0.0, bidirectional=False, precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _cudnn_lstm(input_size, hidden_size, xs, h0, c0, w, lengths):
    """``jax.experimental.rnn.lstm``'s own VJP, with each half lowered for ``cuda`` only
    (:func:`~lstm_jax.kernels.platform.platform_only`), so a multi-platform export works."""
    return _cudnn_lstm_fwd(input_size, hidden_size, xs, h0, c0, w, lengths)[0]


def _cudnn_lstm_fwd(input_size, hidden_size, xs, h0, c0, w, lengths):
    from jax.experimental import rnn

    def forward(xs, h0, c0, w, lengths):
        return rnn.lstm_fwd(xs, h0, c0, w, lengths, input_size=input_size, hidden_size=hidden_size, **_CUDNN)

    return platform_only("cuda", forward, xs, h0, c0, w, lengths)


def _cudnn_lstm_bwd(input_size, hidden_size, residuals, cotangents):
    from jax.experimental import rnn

    def backward(residuals, cotangents):
        return rnn.lstm_bwd(input_size, hidden_size, _CUDNN["num_layers"], _CUDNN["dropout"],
                            _CUDNN["bidirectional"], _CUDNN["precision"], residuals, cotangents)[:4]  # fmt: skip

    return (*platform_only("cuda", backward, residuals, cotangents), None)  # none for the lengths


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
    ys, h, c = _cudnn_lstm(inputs, hidden, xs, h0[None], c0[None], w, lengths)
    if seq_lengths is not None:  # cuDNN leaves padding unspecified; ours is exact zeros
        keep = jnp.arange(steps)[None, :] < lengths[:, None]  # [B, T]
        ys = jnp.where(keep[:, :, None], ys, jnp.zeros_like(ys))
    if reverse:
        ys = jnp.swapaxes(reverse_sequences(jnp.swapaxes(ys, 0, 1), seq_lengths), 0, 1)
    if time_major:
        ys = jnp.swapaxes(ys, 0, 1)
    return ys, (h[0], c[0])


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


CUDNN = KernelSpec("lstm", "cudnn", cudnn_kernel, auto_why_not=cudnn_unsupported,
                   explicit=cudnn_or_scan)  # fmt: skip


def cudnn_lstm_layer(cell: Cell, weights: LSTMWeights, xs: Array, initial_carry, **options):
    """``backend="cudnn"`` (:func:`cudnn_or_scan`); arguments as :func:`lstm_jax.scan.scan_layer`."""
    return CUDNN.run(layer_call(cell, weights, xs, initial_carry, **options))
