"""Padding to tiles, shared by the Pallas kernels (``pallas_tpu.py``, ``pallas_gpu.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.kernels.fused import Residuals

__all__ = ["forward_shapes", "pad", "pad_gates", "round_up"]


def round_up(x: int, m: int) -> int:
    """``x`` rounded up to a multiple of ``m``."""
    return -(-x // m) * m


def forward_shapes(steps, batch, hidden, save):
    """What a forward returns: ``(ys, residuals or None, h, c)`` as shapes."""
    stack = jax.ShapeDtypeStruct((steps, batch, hidden), jnp.float32)
    carry = jax.ShapeDtypeStruct((batch, hidden), jnp.float32)
    return stack, (Residuals(*(stack,) * len(Residuals._fields)) if save else None), carry, carry


def pad_gates(x: Array, hidden: int, padded: int) -> Array:
    """Pad each of the four gate blocks of the last axis from ``hidden`` to ``padded``."""
    if padded == hidden:
        return x
    x = x.reshape(*x.shape[:-1], 4, hidden)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, padded - hidden)])
    return x.reshape(*x.shape[:-2], 4 * padded)


def pad(x: Array, shape: tuple) -> Array:
    """``x`` zero-padded at the end of each axis to ``shape``."""
    return jnp.pad(x, [(0, s - d) for d, s in zip(x.shape, shape)])
