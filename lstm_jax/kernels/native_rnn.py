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

Derivatives of these (``jax.hessian``, grad of grad) go through JAX
references of the same forward and gradients (``custom_jvp``), as for the
LSTM. Steps a sequence does not reach (``seq_lengths``) keep the carry and
output zeros; the valid steps of a sequence must be a prefix (the backward
reads ``h_{t-1}`` and ``h_t`` from the outputs), which is all this layer is given.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.cells import Cell, rnn_step
from lstm_jax.kernels.native import (
    auto_unsupported_here,
    dtype_unsupported,
    ffi_call,
    optional_operand,
    unsupported_here,
)
from lstm_jax.params import RNNWeights
from lstm_jax.sequence import over_time

__all__ = [
    "native_rnn_auto_unsupported",
    "native_rnn_kernel_layer",
    "native_rnn_layer",
    "native_rnn_unsupported",
]

_NONLINEARITIES = ("tanh", "relu")


def native_rnn_unsupported(
    weights: Any, xs: Array, compute_dtype=None, *, platform=True
) -> Optional[str]:
    """Why ``native_rnn_layer`` cannot run these arguments, or None if it can.

    With ``platform=False`` the default backend is not checked (the dispatcher
    picks kernels per platform at lowering time).
    """
    return unsupported_here(dtype_unsupported(weights, xs, compute_dtype, bf16=False), platform=platform)


def native_rnn_auto_unsupported(weights, xs, initial_carry, *, recurrent_mask, compute_dtype,
                                time_major) -> Optional[str]:  # fmt: skip
    """Why ``"auto"`` does not run ``"native"`` on CPU for this RNN call (``dispatch.Kernel``)."""
    del initial_carry, recurrent_mask, time_major
    return auto_unsupported_here(dtype_unsupported(weights, xs, compute_dtype, bf16=False))


def _operands(w_ih, b, w_hh, xs, h0, mask, valid):
    """The forward custom calls' operands; an absent mask or validity is an empty array."""
    return xs, w_ih, b, w_hh, h0, optional_operand(mask, jnp.float32), optional_operand(valid, jnp.uint8)


def _forward_call(target, relu, w_ih, b, w_hh, xs, h0, mask, valid):
    """Time-major ``xs (T, B, I)`` -> ``ys (T, B, H), h``."""
    steps, batch, _ = xs.shape
    hidden = w_hh.shape[0]
    state = jax.ShapeDtypeStruct((batch, hidden), jnp.float32)
    seq = jax.ShapeDtypeStruct((steps, batch, hidden), jnp.float32)
    return ffi_call(target, (seq, state), *_operands(w_ih, b, w_hh, xs, h0, mask, valid), relu=relu)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _forward_train(relu, w_ih, b, w_hh, xs, h0, mask, valid):
    """``ys, h``, with the backward's thread split (its residual is ``ys``)."""
    return _forward_call("lstm_jax_native_rnn_forward_train", relu, w_ih, b, w_hh, xs, h0, mask, valid)


def _forward_reference(relu, w_ih, b, w_hh, xs, h0, mask, valid):
    """:func:`_forward_train` in JAX, for derivatives of the gradients (e.g. ``jax.hessian``)."""
    nonlinearity = "relu" if relu else "tanh"

    step = functools.partial(rnn_step, RNNWeights(w_ih, w_hh, b), nonlinearity=nonlinearity)

    def body(h, inputs):
        x, keep = inputs
        gx = x @ w_ih + b[None]
        if mask is None:
            h_new = jax.vmap(step)(h, gx)
        else:
            h_new = jax.vmap(lambda h, gx, m: step(h, gx, recurrent_mask=m))(h, gx, mask)
        y = h_new
        if keep is not None:
            keep = keep[:, None] != 0
            h_new = jnp.where(keep, h_new, h)
            y = jnp.where(keep, y, jnp.zeros_like(y))
        return h_new, y

    h, ys = jax.lax.scan(body, h0, (xs, valid))
    return ys, h


@_forward_train.defjvp
def _forward_train_jvp(relu, primals, tangents):
    *diff, valid = primals
    outputs = _forward_train(relu, *primals)
    _, out_tangents = jax.jvp(
        lambda *args: _forward_reference(relu, *args, valid), tuple(diff), tuple(tangents[:-1])
    )
    return outputs, out_tangents


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(relu, w_ih, b, w_hh, xs, h0, mask, valid):
    return _forward_call("lstm_jax_native_rnn_forward_infer", relu, w_ih, b, w_hh, xs, h0, mask, valid)


def _recurrence_fwd(relu, w_ih, b, w_hh, xs, h0, mask, valid):
    ys, h = _forward_train(relu, w_ih, b, w_hh, xs, h0, mask, valid)
    return (ys, h), (w_ih, b, w_hh, xs, h0, mask, valid, ys)


def _recurrence_bwd(relu, residuals, cotangents):
    grads = _gradients(relu, *residuals[:7], *cotangents, residuals[7])
    return (*grads, None)  # no gradient for the validity mask


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _gradients(relu, w_ih, b, w_hh, xs, h0, mask, valid, dys, dh, ys):
    """Gradients w.r.t. ``(w_ih, b, w_hh, xs, h0, mask)``: the native loop, then XLA.

    ``ys`` is :func:`_forward_train`'s output for the same inputs.
    """
    del b  # the derivative is read from ys
    steps, batch, inputs = xs.shape
    hidden = w_hh.shape[0]
    state = jax.ShapeDtypeStruct(h0.shape, jnp.float32)
    results = (jax.ShapeDtypeStruct(ys.shape, jnp.float32), state, state)
    dz, dh0, dmask = ffi_call(
        "lstm_jax_native_rnn_backward", results,
        w_hh, dys, dh, optional_operand(mask, jnp.float32), optional_operand(valid, jnp.uint8), ys, h0, relu=relu,
    )  # fmt: skip
    rows = dz.reshape(steps * batch, hidden)
    # h_{t-1} for every step: h0, then ys (the gradients are zero wherever ys was zeroed)
    h_prev = jnp.concatenate([h0[None], ys[:-1]])[:steps]  # [T, B, H] (T may be 0)
    if mask is not None:
        h_prev = h_prev * mask[None]
    dw_hh = h_prev.reshape(steps * batch, hidden).T @ rows
    dw_ih = xs.reshape(steps * batch, inputs).T @ rows
    dxs = (rows @ w_ih.T).reshape(xs.shape)
    return dw_ih, jnp.sum(rows, axis=0), dw_hh, dxs, dh0, (None if mask is None else dmask)


@_gradients.defjvp
def _gradients_jvp(relu, primals, tangents):
    """Derivatives of the gradients through the JAX reference forward's VJP. ``ys`` is a
    function of the other inputs, recomputed inside it, so its tangent is not used (it
    would count twice)."""
    valid = primals[6]

    def reference(w_ih, b, w_hh, xs, h0, mask, dys, dh):
        def forward(*args):
            return _forward_reference(relu, *args, valid)

        return jax.vjp(forward, w_ih, b, w_hh, xs, h0, mask)[1]((dys, dh))

    diff = primals[:6] + primals[7:9]
    _, out_tangents = jax.jvp(reference, diff, tangents[:6] + tangents[7:9])
    return _gradients(relu, *primals), out_tangents


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def native_rnn_layer(
    cell: Cell,
    weights: RNNWeights,
    xs: Array,
    initial_carry: Array,
    *,
    seq_lengths: Optional[Array] = None,
    reverse: bool = False,
    recurrent_mask: Optional[Array] = None,
    unroll: int = 1,
    time_major: bool = False,
    compute_dtype=None,
    nonlinearity: str = "tanh",
) -> tuple[Array, Array]:
    """One Elman RNN layer with a native time loop; arguments as :func:`lstm_jax.scan.scan_layer`.

    ``cell`` and ``unroll`` are accepted for signature compatibility; the step
    is that of :func:`lstm_jax.cells.rnn_step` with ``nonlinearity`` (which a
    :class:`~lstm_jax.cells.Cell` does not carry, so it is passed here), in C++.

    Raises:
      ValueError: for non-float32 parameters or compute dtype, off CPU, when
        the C++ extension was not built, or for an unknown ``nonlinearity``.

    >>> import lstm_jax as lj
    >>> from lstm_jax.cells import rnn_kind
    >>> w = lj.init_rnn(jax.random.key(0), 3, 4).layers[0][0]
    >>> ys, h = native_rnn_layer(rnn_kind(), w, jnp.ones((2, 5, 3)), jnp.zeros((2, 4)))
    >>> ys.shape, h.shape
    ((2, 5, 4), (2, 4))
    """
    reason = native_rnn_unsupported(weights, xs, compute_dtype)
    if reason is not None:
        raise ValueError(f"backend='native': {reason}; use backend='auto' or 'scan'.")
    return native_rnn_kernel_layer(
        cell, weights, xs, initial_carry, seq_lengths=seq_lengths, reverse=reverse,
        recurrent_mask=recurrent_mask, unroll=unroll, time_major=time_major,
        nonlinearity=nonlinearity,
    )  # fmt: skip


def native_rnn_kernel_layer(cell, weights, xs, initial_carry, *, seq_lengths=None, reverse=False,
                            recurrent_mask=None, unroll=1, time_major=False, compute_dtype=None,
                            nonlinearity="tanh"):  # fmt: skip
    """:func:`native_rnn_layer` without its checks (the dispatcher made them)."""
    del cell, unroll, compute_dtype
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {_NONLINEARITIES}, got {nonlinearity!r}.")
    relu = nonlinearity == "relu"
    h0 = jnp.asarray(initial_carry, jnp.float32)
    mask = None if recurrent_mask is None else jnp.asarray(recurrent_mask, jnp.float32)
    w = weights

    def run(xs, valid):  # over_time has zeroed xs where valid is False
        valid = None if valid is None else valid.astype(jnp.uint8)
        return _recurrence(relu, w.w_ih, w.b, w.w_hh, xs.astype(jnp.float32), h0, mask, valid)

    return over_time(run, xs, seq_lengths=seq_lengths, reverse=reverse, time_major=time_major)
