"""A GRU layer whose time loop is native CPU code (``backend="native"``).

Same signature and semantics as :func:`lstm_jax.scan.scan_layer`, for the
plain float32 GRU on CPU; the same design as the LSTM's native kernel
(:mod:`lstm_jax.kernels.native`, whose extension, loader and custom-call
helpers this shares; the C++ is ``csrc/gru_native.cc`` over the kernels all
cells share, ``csrc/recurrent_kernel.inc`` with ``csrc/cells.inc``'s ``GruCell``):

* forward: the custom call runs the loop. Per step and unit it accumulates
  ``r`` and ``z``'s pre-activations over ``[x_t, h] @ [w_ih; w_hh]`` (both
  biases included) and the input and recurrent parts of ``n`` apart, since
  ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``: one register-blocked GEMM
  per step over weights packed once per call, the gate math in registers
  right after it. For training it also saves ``(T, B, 4H)``: ``r, z, n`` and
  ``hn = h W_hn + b_hn``.
* backward (``jax.custom_vjp``): the custom call carries ``dh``, writes the
  pre-activation gradients over the saved activations (aliased again):
  ``dr, dz, dn`` of the input side and ``dhn = dn * r`` of the recurrent one,
  and computes ``dh_{t-1} = z * dh + ([dr, dz, dhn] @ w_hh^T) * mask`` per
  step; XLA then computes ``dx``, ``dw_ih``, ``db_ih`` from ``[dr, dz, dn]``
  and ``dw_hh``, ``db_hh`` from ``[dr, dz, dhn]`` as single GEMMs / sums.

Derivatives of these (``jax.hessian``, grad of grad) go through JAX
references of the same forward and gradients (``custom_jvp``), as for the
LSTM. Steps a sequence does not reach (``seq_lengths``) keep the carry and
output zeros; the valid steps of a sequence must be a prefix (the backward
reads ``h_{t-1}`` from the outputs), which is all this layer is given.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.cells import Cell, gru_pointwise
from lstm_jax.kernels.native import (
    auto_unsupported_here,
    dtype_unsupported,
    ffi_call,
    optional_operand,
    unsupported_here,
)
from lstm_jax.params import GRUWeights
from lstm_jax.sequence import carried_outputs, over_time

__all__ = [
    "native_gru_auto_unsupported",
    "native_gru_kernel_layer",
    "native_gru_layer",
    "native_gru_unsupported",
]

def native_gru_unsupported(
    weights: Any, xs: Array, compute_dtype=None, *, platform=True
) -> Optional[str]:
    """Why ``native_gru_layer`` cannot run these arguments, or None if it can.

    With ``platform=False`` the default backend is not checked (the dispatcher
    picks kernels per platform at lowering time).
    """
    return unsupported_here(dtype_unsupported(weights, xs, compute_dtype, bf16=False), platform=platform)


def native_gru_auto_unsupported(weights, xs, initial_carry, *, recurrent_mask, compute_dtype,
                                time_major) -> Optional[str]:  # fmt: skip
    """Why ``"auto"`` does not run ``"native"`` on CPU for this GRU call (``dispatch.Kernel``)."""
    del initial_carry, recurrent_mask, time_major
    return auto_unsupported_here(dtype_unsupported(weights, xs, compute_dtype, bf16=False))


def _operands(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid):
    """The forward custom calls' operands; an absent mask or validity is an empty array."""
    mask, valid = optional_operand(mask, jnp.float32), optional_operand(valid, jnp.uint8)
    return xs, w_ih, b_ih, w_hh, b_hh, h0, mask, valid


def _forward(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, *, save):
    """Time-major ``xs (T, B, I)`` -> ``ys (T, B, H), h`` (+ the activations ``(T, B, 4H)``)."""
    if save:
        return _forward_train(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid)
    steps, batch, _ = xs.shape
    state = jax.ShapeDtypeStruct((batch, w_hh.shape[0]), jnp.float32)
    seq = jax.ShapeDtypeStruct((steps, batch, w_hh.shape[0]), jnp.float32)
    args = _operands(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid)
    ys, h = ffi_call("lstm_jax_native_gru_forward_infer", (seq, state), *args)
    return ys, h, None


@jax.custom_jvp
def _forward_train(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid):
    """``ys, h`` and the residual ``act (T, B, 4H)``: ``r, z, n, h W_hn + b_hn``."""
    steps, batch, _ = xs.shape
    hidden = w_hh.shape[0]
    state = jax.ShapeDtypeStruct((batch, hidden), jnp.float32)
    seq = jax.ShapeDtypeStruct((steps, batch, hidden), jnp.float32)
    gates = jax.ShapeDtypeStruct((steps, batch, 4 * hidden), jnp.float32)
    args = _operands(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid)
    return ffi_call("lstm_jax_native_gru_forward_train", (seq, state, gates), *args)


def _forward_reference(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid):
    """:func:`_forward_train` in JAX, for derivatives of the gradients (e.g. ``jax.hessian``)."""
    hidden = w_hh.shape[0]

    def body(h, inputs):
        x, keep = inputs
        gh = (h if mask is None else h * mask) @ w_hh + b_hh[None]
        (r, z, n), h_new = gru_pointwise(x @ w_ih + b_ih[None], gh, h)
        act = jnp.concatenate([r, z, n, gh[:, 2 * hidden :]], axis=-1)
        y = h_new
        if keep is not None:
            keep = keep[:, None] != 0
            h_new = jnp.where(keep, h_new, h)
            y = jnp.where(keep, y, jnp.zeros_like(y))
        return h_new, (y, act)

    h, (ys, act) = jax.lax.scan(body, h0, (xs, valid))
    return ys, h, act


@_forward_train.defjvp
def _forward_train_jvp(primals, tangents):
    *diff, valid = primals
    outputs = _forward_train(*primals)
    _, out_tangents = jax.jvp(
        lambda *args: _forward_reference(*args, valid), tuple(diff), tuple(tangents[:-1])
    )
    return outputs, out_tangents


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(masked_steps, w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid):
    """``ys, h``; ``masked_steps``: ``valid`` may have holes (a per-step ``mask``), not
    only a ragged end, so the backward needs the carry behind each masked step."""
    ys, h, _ = _forward(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, save=False)
    return ys, h


def _recurrence_fwd(masked_steps, w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid):
    ys, h, act = _forward(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, save=True)
    return (ys, h), (w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, ys, act)


def _recurrence_bwd(masked_steps, residuals, cotangents):
    *inputs, ys, act = residuals
    h0, valid = inputs[5], inputs[7]
    hs = carried_outputs(ys, h0, valid) if masked_steps else ys
    grads = _gradients(*inputs, *cotangents, hs, act)
    return (*grads, None)  # no gradient for the validity mask


@jax.custom_jvp
def _gradients(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, dys, dh, hs, act):
    """Gradients w.r.t. ``(w_ih, b_ih, w_hh, b_hh, xs, h0, mask)``: the native loop, then XLA.

    ``act`` is :func:`_forward_train`'s output for the same inputs, ``hs (T, B, H)``
    the hidden carry after each step (its ``ys`` where no step is masked;
    :func:`lstm_jax.sequence.carried_outputs`).
    """
    del b_ih, b_hh  # read through act
    steps, batch, inputs = xs.shape
    hidden = w_hh.shape[0]
    state = jax.ShapeDtypeStruct(h0.shape, jnp.float32)
    results = (jax.ShapeDtypeStruct(act.shape, jnp.float32), state, state)
    dz, dh0, dmask = ffi_call(
        "lstm_jax_native_gru_backward", results,
        w_hh, act, dys, dh, optional_operand(mask, jnp.float32), optional_operand(valid, jnp.uint8), hs, h0,
        aliases={1: 0},
    )  # fmt: skip
    rows = dz.reshape(steps * batch, 4 * hidden)  # [dr, dz, dn, dhn]
    d_input = rows[:, : 3 * hidden]
    d_recurrent = jnp.concatenate([rows[:, : 2 * hidden], rows[:, 3 * hidden :]], axis=1)
    h_prev = jnp.concatenate([h0[None], hs[:-1]])  # [T, B, H]: h_{t-1} for every step
    if mask is not None:
        h_prev = h_prev * mask[None]
    dw_hh = h_prev.reshape(steps * batch, hidden).T @ d_recurrent
    dw_ih = xs.reshape(steps * batch, inputs).T @ d_input
    dxs = (d_input @ w_ih.T).reshape(xs.shape)
    db_ih, db_hh = jnp.sum(d_input, axis=0), jnp.sum(d_recurrent, axis=0)
    return dw_ih, db_ih, dw_hh, db_hh, dxs, dh0, (None if mask is None else dmask)


@_gradients.defjvp
def _gradients_jvp(primals, tangents):
    """Derivatives of the gradients through the JAX reference forward's VJP. ``hs, act``
    are functions of the other inputs, recomputed inside it, so their tangents are not
    used (they would count twice)."""
    valid = primals[7]

    def reference(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, dys, dh):
        def forward(*args):
            return _forward_reference(*args, valid)[:2]

        return jax.vjp(forward, w_ih, b_ih, w_hh, b_hh, xs, h0, mask)[1]((dys, dh))

    diff = primals[:7] + primals[8:10]
    _, out_tangents = jax.jvp(reference, diff, tangents[:7] + tangents[8:10])
    return _gradients(*primals), out_tangents


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def native_gru_layer(
    cell: Cell,
    weights: GRUWeights,
    xs: Array,
    initial_carry: Array,
    *,
    seq_lengths: Optional[Array] = None,
    reverse: bool = False,
    recurrent_mask: Optional[Array] = None,
    unroll: int = 1,
    time_major: bool = False,
    mask: Optional[Array] = None,
    compute_dtype=None,
) -> tuple[Array, Array]:
    """One GRU layer with a native time loop; arguments as :func:`lstm_jax.scan.scan_layer`
    (``mask`` included; not ``resets``).

    ``cell`` and ``unroll`` are accepted for signature compatibility; the gate
    math is that of :func:`lstm_jax.cells.gru_pointwise`, in C++.

    Raises:
      ValueError: for non-float32 parameters or compute dtype, off CPU, or when
        the C++ extension was not built.

    >>> import lstm_jax as lj
    >>> from lstm_jax.cells import gru_kind
    >>> w = lj.init_gru(jax.random.key(0), 3, 4).layers[0][0]
    >>> ys, h = native_gru_layer(gru_kind(), w, jnp.ones((2, 5, 3)), jnp.zeros((2, 4)))
    >>> ys.shape, h.shape
    ((2, 5, 4), (2, 4))
    """
    reason = native_gru_unsupported(weights, xs, compute_dtype)
    if reason is not None:
        raise ValueError(f"backend='native': {reason}; use backend='auto' or 'scan'.")
    return native_gru_kernel_layer(
        cell, weights, xs, initial_carry, seq_lengths=seq_lengths, reverse=reverse,
        recurrent_mask=recurrent_mask, unroll=unroll, time_major=time_major, mask=mask,
    )  # fmt: skip


def native_gru_kernel_layer(cell, weights, xs, initial_carry, *, seq_lengths=None, reverse=False,
                            recurrent_mask=None, unroll=1, time_major=False, mask=None,
                            compute_dtype=None):  # fmt: skip
    """:func:`native_gru_layer` without its checks (the dispatcher made them)."""
    del cell, unroll, compute_dtype
    h0 = jnp.asarray(initial_carry, jnp.float32)
    dropout = None if recurrent_mask is None else jnp.asarray(recurrent_mask, jnp.float32)
    w = weights

    def run(xs, valid):  # over_time has zeroed xs where valid is False
        valid = None if valid is None else valid.astype(jnp.uint8)
        return _recurrence(mask is not None, w.w_ih, w.b_ih, w.w_hh, w.b_hh,
                           xs.astype(jnp.float32), h0, dropout, valid)  # fmt: skip

    return over_time(run, xs, seq_lengths=seq_lengths, reverse=reverse, time_major=time_major,
                     mask=mask)  # fmt: skip
