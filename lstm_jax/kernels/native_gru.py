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

Derivatives of these (``jax.hessian``, grad of grad) go through ``scan``
(:func:`lstm_jax.kernels.native_ops.native_op`). Steps a sequence does not reach (``seq_lengths``) keep the carry and
output zeros; the valid steps of a sequence must be a prefix (the backward
reads ``h_{t-1}`` from the outputs), which is all this layer is given.
"""


from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.cells import Cell, gru_kind
from lstm_jax.kernels.call import KernelSpec, LayerCall, layer_call
from lstm_jax.kernels.native_ops import NativeOp, ffi_call, native_op, optional_operand, why_not
from lstm_jax.params import GRUWeights
from lstm_jax.scan import scan_layer
from lstm_jax.sequence import carried_outputs, over_time

__all__ = ["NATIVE_GRU", "native_gru_kernel", "native_gru_layer", "native_gru_why_not"]


def _operands(inputs, valid):
    """The forward custom calls' operands; an absent mask or validity is an empty array."""
    w_ih, b_ih, w_hh, b_hh, xs, h0, mask = inputs
    return (xs, w_ih, b_ih, w_hh, b_hh, h0, optional_operand(mask, jnp.float32),
            optional_operand(valid, jnp.uint8))  # fmt: skip


def _shapes(inputs, *features):
    """``(T, B, H)`` float32 and ``(B, H)``, then ``(T, B, F)`` for each of ``features``."""
    steps, batch, _ = inputs[4].shape
    hidden = inputs[2].shape[0]
    seq = [jax.ShapeDtypeStruct((steps, batch, f), jnp.float32) for f in (hidden, *features)]
    return (seq[0], jax.ShapeDtypeStruct((batch, hidden), jnp.float32), *seq[1:])


def _infer(static, inputs, valid):
    """Time-major ``xs (T, B, I)`` -> ``ys (T, B, H), h``."""
    del static
    return ffi_call("lstm_jax_native_gru_forward_infer", _shapes(inputs), *_operands(inputs, valid))


def _train(static, inputs, valid):
    """``(ys, h)`` and the residual ``act (T, B, 4H)``: ``r, z, n, h W_hn + b_hn``."""
    del static
    hidden = inputs[2].shape[0]
    ys, h, act = ffi_call("lstm_jax_native_gru_forward_train", _shapes(inputs, 4 * hidden),
                          *_operands(inputs, valid))  # fmt: skip
    return (ys, h), (act,)


def _gradients(static, inputs, valid, cotangents, outputs, saved):
    """Gradients w.r.t. ``(w_ih, b_ih, w_hh, b_hh, xs, h0, mask)``: the native loop, then XLA."""
    (masked_steps,) = static
    w_ih, _, w_hh, _, xs, h0, mask = inputs  # the biases are read through act
    (act,) = saved
    hs = carried_outputs(outputs[0], h0, valid) if masked_steps else outputs[0]  # carry per step
    steps, batch, inputs_size = xs.shape
    hidden = w_hh.shape[0]
    state = jax.ShapeDtypeStruct(h0.shape, jnp.float32)
    dz, dh0, dmask = ffi_call(
        "lstm_jax_native_gru_backward", (jax.ShapeDtypeStruct(act.shape, jnp.float32), state, state),
        w_hh, act, *cotangents, optional_operand(mask, jnp.float32),
        optional_operand(valid, jnp.uint8), hs, h0, aliases={1: 0},
    )  # fmt: skip
    rows = dz.reshape(steps * batch, 4 * hidden)  # [dr, dz, dn, dhn]
    d_input = rows[:, : 3 * hidden]
    d_recurrent = jnp.concatenate([rows[:, : 2 * hidden], rows[:, 3 * hidden :]], axis=1)
    h_prev = jnp.concatenate([h0[None], hs[:-1]])  # [T, B, H]: h_{t-1} for every step
    if mask is not None:
        h_prev = h_prev * mask[None]
    dw_hh = h_prev.reshape(steps * batch, hidden).T @ d_recurrent
    dw_ih = xs.reshape(steps * batch, inputs_size).T @ d_input
    dxs = (d_input @ w_ih.T).reshape(xs.shape)
    db_ih, db_hh = jnp.sum(d_input, axis=0), jnp.sum(d_recurrent, axis=0)
    return dw_ih, db_ih, dw_hh, db_hh, dxs, dh0, (None if mask is None else dmask)


def _reference(static, inputs, valid):
    """:func:`_infer` through ``scan``."""
    del static
    w_ih, b_ih, w_hh, b_hh, xs, h0, mask = inputs
    keep = None if valid is None else valid != 0
    weights = GRUWeights(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    return scan_layer(gru_kind(), weights, xs, h0, recurrent_mask=mask, time_major=True, mask=keep)


_recurrence = native_op(NativeOp(_infer, _train, _gradients, _reference))


def native_gru_kernel(call: LayerCall):
    """The native GRU layer for a call :func:`native_gru_why_not` accepts (``mask`` included)."""
    w, options = call.weights, call.options
    h0 = jnp.asarray(call.initial_carry, jnp.float32)
    dropout = None if options.recurrent_mask is None else jnp.asarray(options.recurrent_mask, jnp.float32)

    def run(xs, valid):  # over_time has zeroed xs where valid is False
        valid = None if valid is None else valid.astype(jnp.uint8)
        inputs = (w.w_ih, w.b_ih, w.w_hh, w.b_hh, xs.astype(jnp.float32), h0, dropout)
        return _recurrence((options.mask is not None,), inputs, valid)

    return over_time(run, call.xs, seq_lengths=options.seq_lengths, reverse=options.reverse,
                     time_major=options.time_major, mask=options.mask)  # fmt: skip


def native_gru_why_not(call: LayerCall, *, auto: bool = False) -> Optional[str]:
    """Why the native GRU cannot run ``call`` (``auto``: why ``"auto"`` does not run it), or None."""
    return why_not(call, bf16=False, auto=auto)


NATIVE_GRU = KernelSpec("gru", "native", native_gru_kernel, native_gru_why_not, per_step=("mask",),
                        auto_why_not=lambda call: native_gru_why_not(call, auto=True))  # fmt: skip


def native_gru_layer(cell: Cell, weights: GRUWeights, xs: Array, initial_carry: Array, **options):
    """One GRU layer with a native time loop; arguments as :func:`lstm_jax.scan.scan_layer`
    (``mask`` included; not ``resets``) plus ``compute_dtype``.

    ``cell`` and ``unroll`` are not read; the gate math is that of
    :func:`lstm_jax.cells.gru_pointwise`, in C++.

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
    return NATIVE_GRU.run(layer_call(cell, weights, xs, initial_carry, **options))
