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

``resets`` run inside both loops as the LSTM's (:mod:`lstm_jax.kernels.native`).
Derivatives of these (``jax.hessian``, grad of grad) go through JAX
references of the same forward and gradients (``custom_jvp``), as for the
LSTM. Steps a sequence does not reach (``seq_lengths``, ``mask``) keep the
carry and output zeros; the backward reads ``h_{t-1}`` from the carry after
each step (:func:`lstm_jax.sequence.carried_outputs`), or the reset carry
where a segment starts.
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
    start_flags,
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


def _operands(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, starts, reset_h):
    """The forward custom calls' operands; an absent option is an empty array."""
    f32, u8 = jnp.float32, jnp.uint8
    return (xs, w_ih, b_ih, w_hh, b_hh, h0, optional_operand(mask, f32),
            optional_operand(valid, u8), optional_operand(starts, u8),
            optional_operand(reset_h, f32))  # fmt: skip


def _forward(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, starts, reset_h, *, save):
    """Time-major ``xs (T, B, I)`` -> ``ys (T, B, H), h`` (+ the activations ``(T, B, 4H)``).
    ``starts`` (:func:`lstm_jax.kernels.native.start_flags`) and the reset carry ``reset_h
    (B, H)`` are None without resets."""
    if save:
        return _forward_train(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, starts, reset_h)
    steps, batch, _ = xs.shape
    state = jax.ShapeDtypeStruct((batch, w_hh.shape[0]), jnp.float32)
    seq = jax.ShapeDtypeStruct((steps, batch, w_hh.shape[0]), jnp.float32)
    args = _operands(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, starts, reset_h)
    ys, h = ffi_call("lstm_jax_native_gru_forward_infer", (seq, state), *args)
    return ys, h, None


@jax.custom_jvp
def _forward_train(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, starts, reset_h):
    """``ys, h`` and the residual ``act (T, B, 4H)``: ``r, z, n, h W_hn + b_hn``."""
    steps, batch, _ = xs.shape
    hidden = w_hh.shape[0]
    state = jax.ShapeDtypeStruct((batch, hidden), jnp.float32)
    seq = jax.ShapeDtypeStruct((steps, batch, hidden), jnp.float32)
    gates = jax.ShapeDtypeStruct((steps, batch, 4 * hidden), jnp.float32)
    args = _operands(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, starts, reset_h)
    return ffi_call("lstm_jax_native_gru_forward_train", (seq, state, gates), *args)


def _forward_reference(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, starts, reset_h):
    """:func:`_forward_train` in JAX, for derivatives of the gradients (e.g. ``jax.hessian``);
    the final carry with resets as :func:`lstm_jax.kernels.native.segments_of`'s ``last``."""
    hidden = w_hh.shape[0]

    def body(carries, inputs):
        h, final = carries
        x, keep, start, last = inputs
        if start is not None:
            h = jnp.where(start[:, None] != 0, reset_h, h)
        gh = (h if mask is None else h * mask) @ w_hh + b_hh[None]
        (r, z, n), h_new = gru_pointwise(x @ w_ih + b_ih[None], gh, h)
        act = jnp.concatenate([r, z, n, gh[:, 2 * hidden :]], axis=-1)
        y = h_new
        if keep is not None:
            keep = keep[:, None] != 0
            h_new = jnp.where(keep, h_new, h)
            y = jnp.where(keep, y, jnp.zeros_like(y))
        if last is not None:
            final = jnp.where(last[:, None], h_new, final)
        return (h_new, final), (y, act)

    last = None if starts is None else jnp.cumsum(starts == 2, axis=0) == 0
    (h, final), (ys, act) = jax.lax.scan(body, (h0, h0), (xs, valid, starts, last))
    return ys, (h if starts is None else final), act


@_forward_train.defjvp
def _forward_train_jvp(primals, tangents):
    valid, starts = primals[7:9]

    def reference(*args):
        return _forward_reference(*args[:7], valid, starts, *args[7:])

    outputs = _forward_train(*primals)
    _, out_tangents = jax.jvp(reference, primals[:7] + primals[9:], tangents[:7] + tangents[9:])
    return outputs, out_tangents


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(masked_steps, w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, starts, reset_h):
    """``ys, h``; ``masked_steps``: ``valid`` may have holes (a per-step ``mask``), not
    only a ragged end, so the backward needs the carry behind each masked step.
    ``starts, reset_h``: the resets (:func:`_forward`), or None."""
    ys, h, _ = _forward(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, starts, reset_h, save=False)
    return ys, h


def _recurrence_fwd(masked_steps, *inputs):
    ys, h, act = _forward(*inputs, save=True)
    return (ys, h), (*inputs, ys, act)


def _recurrence_bwd(masked_steps, residuals, cotangents):
    *inputs, ys, act = residuals
    h0, valid, starts, reset_h = inputs[5], inputs[7], inputs[8], inputs[9]
    resets = () if starts is None else (starts != 0, reset_h)
    hs = carried_outputs(ys, h0, valid, *resets) if masked_steps else ys
    *grads, d_reset_h = _gradients(*inputs, *cotangents, hs, act)
    return (*grads, None, None, d_reset_h)  # none for the validity and the starts


@jax.custom_jvp
def _gradients(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, starts, reset_h, dys, dh, hs, act):
    """Gradients w.r.t. ``(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, reset_h)``: the native loop,
    then XLA.

    ``act`` is :func:`_forward_train`'s output for the same inputs, ``hs (T, B, H)``
    the hidden carry after each step (its ``ys`` where no step is masked;
    :func:`lstm_jax.sequence.carried_outputs`).
    """
    del b_ih, b_hh  # read through act
    steps, batch, inputs = xs.shape
    hidden = w_hh.shape[0]
    state = jax.ShapeDtypeStruct(h0.shape, jnp.float32)
    reset_state = state if starts is not None else jax.ShapeDtypeStruct((0,), jnp.float32)
    results = (jax.ShapeDtypeStruct(act.shape, jnp.float32), state, state, reset_state)
    f32, u8 = jnp.float32, jnp.uint8
    dz, dh0, dmask, d_reset_h = ffi_call(
        "lstm_jax_native_gru_backward", results,
        w_hh, act, dys, dh, optional_operand(mask, f32), optional_operand(valid, u8), hs, h0,
        optional_operand(starts, u8), optional_operand(reset_h, f32),
        aliases={1: 0},
    )  # fmt: skip
    rows = dz.reshape(steps * batch, 4 * hidden)  # [dr, dz, dn, dhn]
    d_input = rows[:, : 3 * hidden]
    d_recurrent = jnp.concatenate([rows[:, : 2 * hidden], rows[:, 3 * hidden :]], axis=1)
    h_prev = jnp.concatenate([h0[None], hs[:-1]])  # [T, B, H]: h_{t-1} for every step
    if starts is not None:  # the reset carry where a segment starts
        h_prev = jnp.where(starts[:, :, None] != 0, reset_h, h_prev)
    if mask is not None:
        h_prev = h_prev * mask[None]
    dw_hh = h_prev.reshape(steps * batch, hidden).T @ d_recurrent
    dw_ih = xs.reshape(steps * batch, inputs).T @ d_input
    dxs = (d_input @ w_ih.T).reshape(xs.shape)
    db_ih, db_hh = jnp.sum(d_input, axis=0), jnp.sum(d_recurrent, axis=0)
    dmask = None if mask is None else dmask
    return dw_ih, db_ih, dw_hh, db_hh, dxs, dh0, dmask, (None if starts is None else d_reset_h)


@_gradients.defjvp
def _gradients_jvp(primals, tangents):
    """Derivatives of the gradients through the JAX reference forward's VJP. ``hs, act``
    are functions of the other inputs, recomputed inside it, so their tangents are not
    used (they would count twice)."""
    valid, starts = primals[7:9]

    def reference(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, reset_h, dys, dh):
        def forward(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, reset_h):
            return _forward_reference(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, valid, starts,
                                      reset_h)[:2]  # fmt: skip

        return jax.vjp(forward, w_ih, b_ih, w_hh, b_hh, xs, h0, mask, reset_h)[1]((dys, dh))

    diff = primals[:7] + primals[9:12]
    _, out_tangents = jax.jvp(reference, diff, tangents[:7] + tangents[9:12])
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
    resets: Optional[Array] = None,
    reset_to: Optional[Array] = None,
    compute_dtype=None,
) -> tuple[Array, Array]:
    """One GRU layer with a native time loop; arguments as :func:`lstm_jax.scan.scan_layer`
    (``mask``, ``resets`` and ``reset_to`` included).

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
        resets=resets, reset_to=reset_to,
    )  # fmt: skip


def native_gru_kernel_layer(cell, weights, xs, initial_carry, *, seq_lengths=None, reverse=False,
                            recurrent_mask=None, unroll=1, time_major=False, mask=None,
                            resets=None, reset_to=None, compute_dtype=None):  # fmt: skip
    """:func:`native_gru_layer` without its checks (the dispatcher made them)."""
    del cell, unroll, compute_dtype
    h0 = jnp.asarray(initial_carry, jnp.float32)
    reset_h = h0 if reset_to is None else jnp.asarray(reset_to, jnp.float32)
    dropout = None if recurrent_mask is None else jnp.asarray(recurrent_mask, jnp.float32)
    w = weights

    def run(xs, valid, starts=None):  # over_time has zeroed xs where valid is False
        valid = None if valid is None else valid.astype(jnp.uint8)
        segments = (None, None) if starts is None else (start_flags(starts, reverse), reset_h)
        return _recurrence(mask is not None, w.w_ih, w.b_ih, w.w_hh, w.b_hh,
                           xs.astype(jnp.float32), h0, dropout, valid, *segments)  # fmt: skip

    return over_time(run, xs, seq_lengths=seq_lengths, reverse=reverse, time_major=time_major,
                     mask=mask, resets=resets)  # fmt: skip
