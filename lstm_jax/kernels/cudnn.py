"""cuDNN LSTM through ``jax.experimental.rnn`` (``backend="cudnn"``).

Each call runs one layer in one direction as a one-layer, unidirectional
cuDNN LSTM. Our weights are converted to cuDNN's opaque flat layout (see the
``jax.experimental.rnn`` module docstring)::

    [W_ih^T (4H, I) row-major, W_hh^T (4H, H) row-major, b_ih (4H,), b_hh (4H,)]

with gate order i, f, g, o (ours and cuDNN's); our single bias ``b`` goes into
``b_ih`` and ``b_hh`` is zero. Reverse directions reverse each sequence's
valid part before the call and the outputs after it, as ``scan.py`` does.

Fallback: ``jax.experimental.rnn`` runs on NVIDIA GPUs only, in float32, with
no peepholes, layer norm, projection or recurrent dropout, and has no ``vmap``
rule. In every one of those cases this layer warns (``RuntimeWarning`` naming
the reason) and runs :func:`lstm_jax.scan.scan_layer` instead, so results are
never silently wrong. Not run on a GPU in this project (no GPU was available):
only the weight conversion is tested, against ``jax.experimental.rnn.lstm_ref``.
"""

from __future__ import annotations

import warnings
from typing import Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.cells import Cell
from lstm_jax.kernels.fused import unsupported_variant
from lstm_jax.params import LSTMWeights
from lstm_jax.scan import reverse_sequences, scan_layer

__all__ = ["cudnn_lstm_layer", "to_cudnn_weights", "cudnn_unsupported"]


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


def cudnn_unsupported(weights, xs, recurrent_mask, compute_dtype) -> Optional[str]:
    """Why cuDNN cannot run this call, or None."""
    reason = unsupported_variant(weights)
    if reason is not None:
        return reason
    if recurrent_mask is not None:
        return "recurrent dropout is not supported by cuDNN's LSTM here"
    if compute_dtype is not None and jnp.dtype(compute_dtype) != jnp.float32:
        return f"only float32 is supported, got compute_dtype={jnp.dtype(compute_dtype).name}"
    if xs.dtype != jnp.float32 or weights.w_hh.dtype != jnp.float32:
        return "only float32 inputs and parameters are supported"
    if jax.default_backend() not in ("gpu", "cuda"):
        return f"it needs an NVIDIA GPU, the default backend is {jax.default_backend()!r}"
    try:
        from jax._src.lib import gpu_rnn  # noqa: F401
    except ImportError:
        return "this jaxlib has no cuDNN RNN support"
    return None


def _fallback(reason: str) -> None:
    warnings.warn(
        f"backend='cudnn' cannot run this layer ({reason}); running backend='scan' instead.",
        RuntimeWarning,
        stacklevel=3,
    )


def cudnn_lstm_layer(
    cell: Cell,
    weights: LSTMWeights,
    xs: Array,
    initial_carry: tuple[Array, Array],
    *,
    seq_lengths: Optional[Array] = None,
    reverse: bool = False,
    recurrent_mask: Optional[Array] = None,
    unroll: int = 1,
    time_major: bool = False,
    compute_dtype=None,
) -> tuple[Array, tuple[Array, Array]]:
    """One LSTM layer on cuDNN; arguments as :func:`lstm_jax.scan.scan_layer`.

    Falls back to ``scan_layer`` with a ``RuntimeWarning`` where cuDNN cannot run
    it (see the module docstring).
    """
    kwargs = dict(
        seq_lengths=seq_lengths, reverse=reverse, recurrent_mask=recurrent_mask,
        unroll=unroll, time_major=time_major,
    )  # fmt: skip
    reason = cudnn_unsupported(weights, xs, recurrent_mask, compute_dtype)
    if reason is not None:
        _fallback(reason)
        return scan_layer(cell, weights, xs, initial_carry, **kwargs)
    from jax.experimental import rnn

    original = xs
    if time_major:
        xs = jnp.swapaxes(xs, 0, 1)  # [B, T, I]: cuDNN's wrapper is batch-first
    batch, steps, inputs = xs.shape
    hidden = weights.w_hh.shape[0]
    lengths = (
        jnp.full((batch,), steps, jnp.int32) if seq_lengths is None else seq_lengths.astype(jnp.int32)
    )
    if reverse:
        xs = jnp.swapaxes(reverse_sequences(jnp.swapaxes(xs, 0, 1), seq_lengths), 0, 1)
    h0, c0 = initial_carry
    try:
        ys, h, c = rnn.lstm(
            xs, h0[None], c0[None], to_cudnn_weights(weights), lengths,
            input_size=inputs, hidden_size=hidden, num_layers=1, dropout=0.0,
            bidirectional=False, precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip
    except NotImplementedError as error:  # e.g. no batching rule under vmap
        _fallback(f"jax.experimental.rnn raised: {error}")
        return scan_layer(cell, weights, original, initial_carry, **kwargs)
    if seq_lengths is not None:  # cuDNN leaves padding unspecified; ours is exact zeros
        keep = jnp.arange(steps)[None, :] < lengths[:, None]  # [B, T]
        ys = jnp.where(keep[:, :, None], ys, jnp.zeros_like(ys))
    if reverse:
        ys = jnp.swapaxes(reverse_sequences(jnp.swapaxes(ys, 0, 1), seq_lengths), 0, 1)
    if time_major:
        ys = jnp.swapaxes(ys, 0, 1)
    return ys, (h[0], c[0])
