"""An Elman RNN layer whose time loop is native CPU code (``backend="native"``).

Same signature and semantics as :func:`lstm_jax.scan.scan_layer`, for the
plain float32 RNN (``nonlinearity`` ``"tanh"`` or ``"relu"``) on CPU; the same
design as the LSTM's and GRU's native kernels (:mod:`lstm_jax.kernels.native`,
whose extension, loader and custom-call helpers this shares; the C++ is
``csrc/rnn_native.cc`` over the kernels all cells share,
``csrc/recurrent_kernel.inc`` with ``csrc/cells.inc``'s ``RnnCell``):

* forward: the custom call runs the loop, per step
  ``h' = tanh([x_t, h] @ [w_ih; w_hh] + b)`` as one register-blocked GEMM over
  weights packed once per call, the nonlinearity in registers right after it.
  Nothing is saved for training: the derivative comes from ``h'`` (``ys``).
* backward (``jax.custom_vjp``): the custom call carries ``dh`` and computes
  ``dz = (dh + dy_t) * (1 - h_t^2)`` (relu: ``* (h_t > 0)``) and
  ``dh_{t-1} = (dz @ w_hh^T) * mask`` per step; XLA then computes ``dx``,
  ``dw_ih``, ``dw_hh`` and ``db`` from ``dz`` as single GEMMs / sums.

``resets`` run inside both loops as the LSTM's (:mod:`lstm_jax.kernels.native`).
Derivatives of these (``jax.hessian``, grad of grad) go through a JAX reference
(:func:`lstm_jax.kernels.native_ops.native_op`). The nonlinearity is the
cell's (:attr:`lstm_jax.cells.Cell.nonlinearity`). Steps a sequence does not
reach (``seq_lengths``, ``mask``) keep the carry and output zeros; the backward
reads ``h_t`` and ``h_{t-1}`` from the carry after each step
(:func:`lstm_jax.sequence.carried_outputs`), or the reset carry where a segment
starts.
"""


from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.cells import Cell, rnn_kind
from lstm_jax.kernels.call import KernelSpec, LayerCall, layer_call
from lstm_jax.kernels.native_ops import (
    NativeOp,
    ffi_call,
    native_op,
    native_steps,
    optional_operand,
    previous_carry,
    reference_recurrence,
    reset_carry,
    why_not,
)
from lstm_jax.params import RNNWeights
from lstm_jax.sequence import carried_outputs, restore_outputs

__all__ = ["NATIVE_RNN", "native_rnn_kernel", "native_rnn_layer", "native_rnn_why_not"]

_NONLINEARITIES = ("tanh", "relu")


def _operands(inputs, per_step):
    """The forward custom calls' operands; an absent option is an empty array."""
    w_ih, b, w_hh, xs, h0, mask, reset_h = inputs
    valid, starts = per_step
    f32, u8 = jnp.float32, jnp.uint8
    return (xs, w_ih, b, w_hh, h0, optional_operand(mask, f32), optional_operand(valid, u8),
            optional_operand(starts, u8), optional_operand(reset_h, f32))  # fmt: skip


def _forward(target, static, inputs, per_step):
    """Time-major ``xs (T, B, I)`` -> ``ys (T, B, H), h``."""
    (relu, _) = static
    steps, batch, _ = inputs[3].shape
    hidden = inputs[2].shape[0]
    results = (jax.ShapeDtypeStruct((steps, batch, hidden), jnp.float32),
               jax.ShapeDtypeStruct((batch, hidden), jnp.float32))  # fmt: skip
    return ffi_call(target, results, *_operands(inputs, per_step), relu=relu)


_infer = functools.partial(_forward, "lstm_jax_native_rnn_forward_infer")


def _train(static, inputs, per_step):
    """``(ys, h)`` with the backward's thread split; nothing else is saved (the backward reads ``ys``)."""
    return _forward("lstm_jax_native_rnn_forward_train", static, inputs, per_step), ()


def _gradients(static, inputs, per_step, cotangents, outputs, saved):
    """Gradients w.r.t. ``(w_ih, b, w_hh, xs, h0, mask, reset_h)``: the native loop, then XLA."""
    del saved
    relu, masked_steps = static
    w_ih, _, w_hh, xs, h0, mask, reset_h = inputs  # the derivative is read from the carry, not b
    valid, starts = per_step
    resets = () if starts is None else (starts != 0, reset_h)
    # the carry after each step: h_t where the step ran, for the derivative and h_{t-1}
    hs = carried_outputs(outputs[0], h0, valid, *resets) if masked_steps else outputs[0]
    steps, batch, inputs_size = xs.shape
    hidden = w_hh.shape[0]
    state = jax.ShapeDtypeStruct(h0.shape, jnp.float32)
    reset_state = state if starts is not None else jax.ShapeDtypeStruct((0,), jnp.float32)
    f32, u8 = jnp.float32, jnp.uint8
    dz, dh0, dmask, d_reset_h = ffi_call(
        "lstm_jax_native_rnn_backward", (jax.ShapeDtypeStruct(hs.shape, f32), state, state, reset_state),
        w_hh, *cotangents, optional_operand(mask, f32), optional_operand(valid, u8), hs, h0,
        optional_operand(starts, u8), optional_operand(reset_h, f32), relu=relu,
    )  # fmt: skip
    rows = dz.reshape(steps * batch, hidden)
    h_prev = previous_carry(h0, hs, starts, reset_h, mask)
    dw_hh = h_prev.reshape(steps * batch, hidden).T @ rows
    dw_ih = xs.reshape(steps * batch, inputs_size).T @ rows
    dxs = (rows @ w_ih.T).reshape(xs.shape)
    dmask = None if mask is None else dmask
    return (dw_ih, jnp.sum(rows, axis=0), dw_hh, dxs, dh0, dmask,
            None if starts is None else d_reset_h)  # fmt: skip


def _reference(static, inputs, per_step):
    """:func:`_infer` in JAX."""
    (relu, _) = static
    w_ih, b, w_hh, xs, h0, mask, reset_h = inputs
    cell = rnn_kind(nonlinearity="relu" if relu else "tanh")
    return reference_recurrence(cell, RNNWeights(w_ih=w_ih, w_hh=w_hh, b=b), xs, h0, mask, *per_step, reset_h)


_recurrence = native_op(NativeOp(_infer, _train, _gradients, _reference))


def native_rnn_kernel(call: LayerCall):
    """The native RNN layer for a call :func:`native_rnn_why_not` accepts (``mask``,
    ``resets`` and ``reset_to`` included)."""
    w, options = call.weights, call.options
    steps, per_step = native_steps(call)
    relu = call.cell.nonlinearity == "relu"
    h0 = jnp.asarray(call.initial_carry, jnp.float32)
    dropout = None if options.recurrent_mask is None else jnp.asarray(options.recurrent_mask, jnp.float32)
    inputs = (w.w_ih, w.b, w.w_hh, steps.xs.astype(jnp.float32), h0, dropout, reset_carry(call))
    ys, h = _recurrence((relu, options.mask is not None), inputs, per_step)
    return restore_outputs(steps, ys), h


def native_rnn_why_not(call: LayerCall, *, auto: bool = False) -> Optional[str]:
    """Why the native RNN cannot run ``call`` (``auto``: why ``"auto"`` does not run it), or None:
    a cell whose nonlinearity is not tanh or relu, and :func:`native_ops.why_not`."""
    if call.cell.nonlinearity not in _NONLINEARITIES:
        return f"it runs the nonlinearities {_NONLINEARITIES}, the cell has {call.cell.nonlinearity!r}"
    return why_not(call, bf16=False, auto=auto)


NATIVE_RNN = KernelSpec("rnn", "native", native_rnn_kernel, native_rnn_why_not,
                        per_step=("mask", "resets"),
                        auto_why_not=lambda call: native_rnn_why_not(call, auto=True))  # fmt: skip


def native_rnn_layer(cell: Cell, weights: RNNWeights, xs: Array, initial_carry: Array, **options):
    """One Elman RNN layer with a native time loop; arguments as :func:`lstm_jax.scan.scan_layer`
    (``mask``, ``resets`` and ``reset_to`` included) plus ``compute_dtype``.

    ``unroll`` is not read; the step is that of :func:`lstm_jax.cells.rnn_step` with
    the cell's nonlinearity (``rnn_kind(nonlinearity=...)``), in C++.

    Raises:
      ValueError: for non-float32 parameters or compute dtype, off CPU, when
        the C++ extension was not built, or for a cell whose nonlinearity is not
        tanh or relu.

    >>> import lstm_jax as lj
    >>> w = lj.init_rnn(jax.random.key(0), 3, 4).layers[0][0]
    >>> ys, h = native_rnn_layer(rnn_kind(), w, jnp.ones((2, 5, 3)), jnp.zeros((2, 4)))
    >>> ys.shape, h.shape
    ((2, 5, 4), (2, 4))
    """
    return NATIVE_RNN.run(layer_call(cell, weights, xs, initial_carry, **options))
