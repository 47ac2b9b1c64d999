"""Pallas LSTM layers: the shared custom VJP, and ``backend="pallas"`` per platform.

A Pallas forward kernel runs the whole time loop of one layer-direction from
the input projection, computed before it as one GEMM (:func:`pallas_layer`).
It saves exactly the fused kernel's
:class:`~lstm_jax.kernels.fused.Residuals`, so the backward pass is the fused
kernel's (``lstm_jax.kernels.fused``), shared code rather than a second
derivation.

``backend="pallas"`` picks the kernel when the call is lowered
(:func:`lstm_jax.kernels.platform.per_platform`): the Mosaic TPU kernel
(:mod:`lstm_jax.kernels.pallas_tpu`) on ``tpu``, the Triton GPU kernel
(:mod:`lstm_jax.kernels.pallas_gpu`) on ``cuda``, and the TPU kernel in
Pallas interpret mode elsewhere (slow; for tests on CPU). Neither kernel has
been run on a TPU or GPU in this project (none was available); their
lowerings are tested with ``jax.export``. ``backend="auto"`` picks the TPU
kernel on TPU (``lstm_jax.kernels.dispatch``), never the GPU kernel.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
from jax import Array

from lstm_jax.cells import Cell, lstm_input_projection
from lstm_jax.kernels.fused import _recurrence_bwd as fused_backward
from lstm_jax.kernels.fused import unsupported_variant
from lstm_jax.kernels.pallas_gpu import gpu_forward
from lstm_jax.kernels.pallas_tpu import tpu_forward
from lstm_jax.kernels.platform import per_platform
from lstm_jax.params import LSTMWeights
from lstm_jax.scan import over_time

__all__ = ["pallas_lstm_layer", "pallas_layer", "tpu_lstm_layer"]


def _project(w_ih, b, xs, compute_dtype):
    """The input projection of every step, ``(T, B, 4H)``, hoisted before the kernel."""
    weights = LSTMWeights(w_ih=w_ih, w_hh=None, b=b)
    project = jax.vmap(jax.vmap(lambda x: lstm_input_projection(weights, x, compute_dtype=compute_dtype)))
    return project(xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _recurrence(forward, compute_dtype, w_ih, b, w_hh, xs, h0, c0, mask, valid, lengths):
    del valid
    ys, _, h, c = forward(
        w_hh, _project(w_ih, b, xs, compute_dtype), h0, c0, mask, lengths,
        compute_dtype=compute_dtype, save=False,
    )  # fmt: skip
    return ys, h, c


def _recurrence_fwd(forward, compute_dtype, w_ih, b, w_hh, xs, h0, c0, mask, valid, lengths):
    ys, saved, h, c = forward(
        w_hh, _project(w_ih, b, xs, compute_dtype), h0, c0, mask, lengths,
        compute_dtype=compute_dtype, save=True,
    )  # fmt: skip
    return (ys, h, c), (w_ih, w_hh, xs, h0, mask, valid, ys, saved)


def _recurrence_bwd(forward, compute_dtype, residuals, cotangents):
    del forward
    return (*fused_backward(compute_dtype, 1, residuals, cotangents), None)  # none for lengths


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def pallas_layer(forward: Callable, weights: LSTMWeights, xs: Array, initial_carry, *,
                 seq_lengths=None, reverse=False, recurrent_mask=None, time_major=False,
                 compute_dtype=None):  # fmt: skip
    """One plain LSTM layer whose forward loop is ``forward`` (a Pallas kernel).

    ``forward(w_hh, gx, h0, c0, mask, lengths, *, compute_dtype, save)`` takes
    the time-major projection ``gx: (T, B, 4H)`` and returns ``(ys, residuals
    or None, h, c)``; other arguments as :func:`lstm_jax.scan.scan_layer`.
    """
    reason = unsupported_variant(weights)
    if reason is not None:
        raise ValueError(f"backend='pallas': {reason}; use backend='scan' or 'auto'.")
    h0, c0 = initial_carry

    def run(xs, valid):
        ys, h, c = _recurrence(
            forward, compute_dtype, weights.w_ih, weights.b, weights.w_hh, xs, h0, c0,
            recurrent_mask, valid, seq_lengths,
        )  # fmt: skip
        return ys, (h, c)

    return over_time(run, xs, seq_lengths=seq_lengths, reverse=reverse, time_major=time_major)


def pallas_lstm_layer(
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
    interpret=None,
) -> tuple[Array, tuple[Array, Array]]:
    """``backend="pallas"``: the platform's Pallas kernel; arguments as :func:`lstm_jax.scan.scan_layer`.

    ``unroll`` has no effect. ``interpret`` (True or ``pltpu.InterpretParams``)
    runs the TPU kernel in that interpret mode on every platform; None picks
    per platform as the module docstring says.

    Raises:
      ValueError: for weights with peepholes, layer norm or a projection, and
        (when lowered) for sizes a kernel cannot serve, naming the limit.

    >>> import jax.numpy as jnp
    >>> import lstm_jax as lj
    >>> from lstm_jax.cells import lstm_kind
    >>> w = lj.init_lstm(jax.random.key(0), 3, 4).layers[0][0]
    >>> carry = (jnp.zeros((2, 4)), jnp.zeros((2, 4)))
    >>> pallas_lstm_layer(lstm_kind(), w, jnp.ones((2, 5, 3)), carry)[0].shape
    (2, 5, 4)
    """
    del cell, unroll
    reason = unsupported_variant(weights)
    if reason is not None:
        raise ValueError(f"backend='pallas': {reason}; use backend='scan' or 'auto'.")
    static = dict(reverse=reverse, time_major=time_major, compute_dtype=compute_dtype)

    def branch(forward):
        def run(weights, xs, initial_carry, seq_lengths, recurrent_mask):
            return pallas_layer(forward, weights, xs, initial_carry, seq_lengths=seq_lengths,
                                recurrent_mask=recurrent_mask, **static)  # fmt: skip

        return run

    args = (weights, xs, initial_carry, seq_lengths, recurrent_mask)
    if interpret is not None:
        return branch(functools.partial(tpu_forward, interpret=interpret))(*args)
    return per_platform(
        args,
        {"tpu": branch(tpu_forward), "cuda": branch(gpu_forward)},
        branch(_TPU_INTERPRET),
    )


_TPU_INTERPRET = functools.partial(tpu_forward, interpret=True)


def tpu_lstm_layer(cell, weights, xs, initial_carry, *, seq_lengths=None, reverse=False,
                   recurrent_mask=None, unroll=1, time_major=False, compute_dtype=None):  # fmt: skip
    """The TPU kernel, lowered as is (``auto``'s choice on ``tpu``); arguments as :func:`lstm_jax.scan.scan_layer`."""
    del cell, unroll
    return pallas_layer(
        tpu_forward, weights, xs, initial_carry, seq_lengths=seq_lengths, reverse=reverse,
        recurrent_mask=recurrent_mask, time_major=time_major, compute_dtype=compute_dtype,
    )  # fmt: skip
