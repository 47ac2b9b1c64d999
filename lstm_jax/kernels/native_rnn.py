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

Derivatives of these (``jax.hessian``, grad of grad) go through ``scan``
(:func:`lstm_jax.kernels.native_ops.native_op`). The nonlinearity is the
cell's (:attr:`lstm_jax.cells.Cell.nonlinearity`). Steps a sequence does not reach (``seq_lengths``) keep the carry and
output zeros; the valid steps of a sequence must be a prefix (the backward
reads ``h_{t-1}`` and ``h_t`` from the outputs), which is all this layer is given.
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
    why_not,
)
from lstm_jax.params import RNNWeights
from lstm_jax.scan import scan_layer
from lstm_jax.sequence import restore_outputs

__all__ = ["NATIVE_RNN", "native_rnn_kernel", "native_rnn_layer", "native_rnn_why_not"]

_NONLINEARITIES = ("tanh", "relu")


def _forward(target, static, inputs, valid):
    """Time-major ``xs (T, B, I)`` -> ``ys (T, B, H), h``."""
    (relu,) = static
    w_ih, b, w_hh, xs, h0, mask = inputs
    steps, batch, _ = xs.shape
    hidden = w_hh.shape[0]
    results = (jax.ShapeDtypeStruct((steps, batch, hidden), jnp.float32),
               jax.ShapeDtypeStruct((batch, hidden), jnp.float32))  # fmt: skip
    return ffi_call(target, results, xs, w_ih, b, w_hh, h0, optional_operand(mask, jnp.float32),
                    optional_operand(valid, jnp.uint8), relu=relu)  # fmt: skip


_infer = functools.partial(_forward, "lstm_jax_native_rnn_forward_infer")


def _train(static, inputs, valid):
    """``(ys, h)`` with the backward's thread split; nothing else is saved (the backward reads ``ys``)."""
    return _forward("lstm_jax_native_rnn_forward_train", static, inputs, valid), ()


def _gradients(static, inputs, valid, cotangents, outputs, saved):
    """Gradients w.r.t. ``(w_ih, b, w_hh, xs, h0, mask)``: the native loop, then XLA."""
    del saved
    (relu,) = static
    w_ih, _, w_hh, xs, h0, mask = inputs  # the derivative is read from ys, not b
    ys = outputs[0]
    steps, batch, inputs_size = xs.shape
    hidden = w_hh.shape[0]
    state = jax.ShapeDtypeStruct(h0.shape, jnp.float32)
    dz, dh0, dmask = ffi_call(
        "lstm_jax_native_rnn_backward", (jax.ShapeDtypeStruct(ys.shape, jnp.float32), state, state),
        w_hh, *cotangents, optional_operand(mask, jnp.float32), optional_operand(valid, jnp.uint8),
        ys, h0, relu=relu,
    )  # fmt: skip
    rows = dz.reshape(steps * batch, hidden)
    # h_{t-1} for every step: h0, then ys (the gradients are zero wherever ys was zeroed)
    h_prev = jnp.concatenate([h0[None], ys[:-1]])[:steps]  # [T, B, H] (T may be 0)
    if mask is not None:
        h_prev = h_prev * mask[None]
    dw_hh = h_prev.reshape(steps * batch, hidden).T @ rows
    dw_ih = xs.reshape(steps * batch, inputs_size).T @ rows
    dxs = (rows @ w_ih.T).reshape(xs.shape)
    return dw_ih, jnp.sum(rows, axis=0), dw_hh, dxs, dh0, (None if mask is None else dmask)


def _reference(static, inputs, valid):
    """:func:`_infer` through ``scan``."""
    (relu,) = static
    w_ih, b, w_hh, xs, h0, mask = inputs
    keep = None if valid is None else valid != 0
    cell = rnn_kind(nonlinearity="relu" if relu else "tanh")
    return scan_layer(cell, RNNWeights(w_ih, w_hh, b), xs, h0, recurrent_mask=mask, time_major=True,
                      mask=keep)  # fmt: skip


_recurrence = native_op(NativeOp(_infer, _train, _gradients, _reference))


def native_rnn_kernel(call: LayerCall):
    """The native RNN layer for a call :func:`native_rnn_why_not` accepts."""
    w, options = call.weights, call.options
    steps, (valid, _) = native_steps(call)
    relu = call.cell.nonlinearity == "relu"
    h0 = jnp.asarray(call.initial_carry, jnp.float32)
    mask = None if options.recurrent_mask is None else jnp.asarray(options.recurrent_mask, jnp.float32)
    inputs = (w.w_ih, w.b, w.w_hh, steps.xs.astype(jnp.float32), h0, mask)
    ys, h = _recurrence((relu,), inputs, valid)
    return restore_outputs(steps, ys), h


def native_rnn_why_not(call: LayerCall, *, auto: bool = False) -> Optional[str]:
    """Why the native RNN cannot run ``call`` (``auto``: why ``"auto"`` does not run it), or None:
    a cell whose nonlinearity is not tanh or relu, and :func:`native_ops.why_not`."""
    if call.cell.nonlinearity not in _NONLINEARITIES:
        return f"it runs the nonlinearities {_NONLINEARITIES}, the cell has {call.cell.nonlinearity!r}"
    return why_not(call, bf16=False, auto=auto)


NATIVE_RNN = KernelSpec("rnn", "native", native_rnn_kernel, native_rnn_why_not,
                        auto_why_not=lambda call: native_rnn_why_not(call, auto=True))  # fmt: skip


def native_rnn_layer(cell: Cell, weights: RNNWeights, xs: Array, initial_carry: Array, **options):
    """One Elman RNN layer with a native time loop; arguments as :func:`lstm_jax.scan.scan_layer`
    plus ``compute_dtype``.

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
