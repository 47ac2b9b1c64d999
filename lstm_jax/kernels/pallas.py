"""A persistent-RNN LSTM forward kernel in Pallas (``backend="pallas"``).

One ``pallas_call`` runs the whole time loop: ``w_hh``, ``h``, ``c`` and the
recurrent mask are loaded on chip once and stay there across time steps
(persistent-RNN style, Diamos et al. 2016); per step the kernel reads one
``(B, 4H)`` slice of the precomputed input projection and writes the output
and the fused kernel's :class:`~lstm_jax.kernels.fused.Residuals`. The gate
math is :func:`lstm_jax.cells.lstm_pointwise`.

The backward pass is the fused kernel's (``lstm_jax.kernels.fused``): the
forward kernel saves exactly the residuals it needs (activations and cell
states), so gradients are shared code, not a second derivation. Forward-mode
tangents of the forward pass (needed by ``jax.hessian``) come from the fused
kernel's forward, for the same reason.

Status: tested on CPU in Pallas interpret mode (``interpret=True``, the
default off GPU/TPU) against ``scan``, on small shapes. It has NOT been run
on a GPU or TPU in this project; whole-sequence blocks must fit in on-chip
memory, and Triton/Mosaic impose shape constraints (e.g. powers of two,
multiples of 16) that are not checked here. ``backend="auto"`` never picks it.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import Array
from jax.experimental import pallas as pl

from lstm_jax.cells import Cell, lstm_input_projection, lstm_pointwise
from lstm_jax.kernels.fused import Residuals, _activations, unsupported_variant
from lstm_jax.kernels.fused import _forward as fused_forward
from lstm_jax.kernels.fused import _recurrence_bwd as fused_backward
from lstm_jax.params import LSTMWeights
from lstm_jax.scan import over_time

__all__ = ["pallas_lstm_layer"]

_POINTWISE = jax.vmap(lstm_pointwise, in_axes=(None, 0, 0))


def _kernel(gx_ref, w_ref, h0_ref, c0_ref, mask_ref, valid_ref, ys_ref,
            i_ref, f_ref, g_ref, o_ref, c_prev_ref, tanh_c_ref, h_ref, c_ref):  # fmt: skip
    """Refs: gx (T, B, 4H), w_hh (R, 4H) in the compute dtype, h0/c0/mask (B, H),
    valid (T, B, 1) as the gx dtype; outputs ys and the six residual stacks
    (T, B, H), h/c (B, H)."""
    dtype = gx_ref.dtype
    w = w_ref[...]  # stays on chip for the whole sequence
    mask = mask_ref[...]
    plain = LSTMWeights(w_ih=None, w_hh=None, b=None)

    def step(t, carry):
        h, c = carry
        gates = gx_ref[t] + jnp.dot(
            (h * mask).astype(w.dtype), w, preferred_element_type=dtype
        ).astype(dtype)
        h_new, c_new = _POINTWISE(plain, gates, c)
        residuals = (*_activations(gates), c, jnp.tanh(c_new))
        for ref, value in zip((i_ref, f_ref, g_ref, o_ref, c_prev_ref, tanh_c_ref), residuals):
            ref[t] = value
        keep = valid_ref[t] > 0  # [B, 1]
        h_new = jnp.where(keep, h_new, h)
        c_new = jnp.where(keep, c_new, c)
        ys_ref[t] = jnp.where(keep, h_new, jnp.zeros_like(h_new))
        return h_new, c_new

    h, c = jax.lax.fori_loop(0, gx_ref.shape[0], step, (h0_ref[...], c0_ref[...]))
    h_ref[...] = h
    c_ref[...] = c


def _pallas_forward(w_hh, gx, h0, c0, mask, valid, *, compute_dtype, interpret):
    steps, batch, gates = gx.shape
    hidden = gates // 4
    dtype = gx.dtype
    if batch == 0:  # nothing to compute, and Pallas cannot tile an empty axis
        empty = jnp.zeros((steps, 0, hidden), dtype)
        return empty, Residuals(*(empty,) * len(Residuals._fields)), h0, c0
    mask_in = jnp.ones_like(h0) if mask is None else mask
    valid_in = (
        jnp.ones((steps, batch, 1), dtype) if valid is None else valid[:, :, None].astype(dtype)
    )
    stack = jax.ShapeDtypeStruct((steps, batch, hidden), dtype)
    carry = jax.ShapeDtypeStruct((batch, hidden), dtype)
    out_shape = (stack,) * (1 + len(Residuals._fields)) + (carry, carry)  # ys, residuals, h, c
    w_c = w_hh.astype(compute_dtype or dtype)
    ys, *saved, h, c = pl.pallas_call(_kernel, out_shape=out_shape, interpret=interpret)(
        gx, w_c, h0, c0, mask_in, valid_in
    )
    return ys, Residuals(*saved), h, c


def _project(w_ih, b, xs, compute_dtype):
    """The input projection of every step, ``(T, B, 4H)``, hoisted before the kernel."""
    weights = LSTMWeights(w_ih=w_ih, w_hh=None, b=b)
    project = jax.vmap(jax.vmap(lambda x: lstm_input_projection(weights, x, compute_dtype=compute_dtype)))
    return project(xs)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _forward(compute_dtype, interpret, w_ih, b, w_hh, xs, h0, c0, mask, valid):
    """``ys, residuals, h, c`` from the Pallas kernel, for time-major ``xs (T, B, I)``."""
    return _pallas_forward(
        w_hh, _project(w_ih, b, xs, compute_dtype), h0, c0, mask, valid,
        compute_dtype=compute_dtype, interpret=interpret,
    )  # fmt: skip


@_forward.defjvp
def _forward_jvp(compute_dtype, interpret, primals, tangents):
    """Forward mode through the fused kernel's forward, the same recurrence in plain JAX.

    ``pallas_call`` has no usable JVP or batching rule here, and
    ``jax.hessian`` / ``jacfwd`` of the custom VJP push tangents through the
    forward pass.
    """
    del interpret
    valid = primals[-1]

    def reference(w_ih, b, w_hh, xs, h0, c0, mask):
        ys, (h, c), saved = fused_forward(
            w_ih, b, w_hh, xs, h0, c0, mask, valid,
            compute_dtype=compute_dtype, unroll=1, save=True,
        )  # fmt: skip
        return ys, saved, h, c

    return jax.jvp(reference, primals[:-1], tangents[:-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _recurrence(compute_dtype, interpret, w_ih, b, w_hh, xs, h0, c0, mask, valid):
    ys, _, h, c = _forward(compute_dtype, interpret, w_ih, b, w_hh, xs, h0, c0, mask, valid)
    return ys, h, c


def _recurrence_fwd(compute_dtype, interpret, w_ih, b, w_hh, xs, h0, c0, mask, valid):
    ys, saved, h, c = _forward(compute_dtype, interpret, w_ih, b, w_hh, xs, h0, c0, mask, valid)
    return (ys, h, c), (w_ih, w_hh, xs, h0, mask, valid, ys, saved)


def _recurrence_bwd(compute_dtype, interpret, residuals, cotangents):
    del interpret
    return fused_backward(compute_dtype, 1, residuals, cotangents)


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


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
    interpret: Optional[bool] = None,
) -> tuple[Array, tuple[Array, Array]]:
    """One LSTM layer whose forward time loop is one Pallas kernel.

    Arguments as :func:`lstm_jax.scan.scan_layer`; ``unroll`` is ignored (the
    kernel's loop is not a ``lax.scan``). ``interpret`` defaults to True
    unless the default backend is a GPU or TPU.

    Raises:
      ValueError: for weights with peepholes, layer norm or a projection.

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
    if interpret is None:
        interpret = jax.default_backend() not in ("gpu", "cuda", "rocm", "tpu")
    h0, c0 = initial_carry

    def run(xs, valid):
        ys, h, c = _recurrence(
            compute_dtype, interpret, weights.w_ih, weights.b, weights.w_hh, xs, h0, c0,
            recurrent_mask, valid,
        )  # fmt: skip
        return ys, (h, c)

    return over_time(run, xs, seq_lengths=seq_lengths, reverse=reverse, time_major=time_major)
