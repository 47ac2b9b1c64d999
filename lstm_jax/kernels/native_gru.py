"""A GRU layer whose time loop is native CPU code (``backend="native"``).

Same signature and semantics as :func:`lstm_jax.scan.scan_layer`, for the
plain GRU with float32 parameters on CPU, computing in float32 or bfloat16;
the same design as the LSTM's native kernel (:mod:`lstm_jax.kernels.native`,
whose extension, loader and custom-call helpers this shares; the C++ is ``csrc/gru_native.cc`` over the kernels all
cells share, ``csrc/recurrent_kernel.inc`` with ``csrc/cells.inc``'s ``GruCell``):

* forward: the custom call runs the loop. Per step and unit it accumulates
  ``r`` and ``z``'s pre-activations over ``[x_t, h] @ [w_ih; w_hh]`` (both
  biases included) and the input and recurrent parts of ``n`` apart, since
  ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``: one register-blocked GEMM
  per step over weights packed once per call, the gate math in registers
  right after it. For training it also saves ``r, z, n`` and
  ``hn = h W_hn + b_hn``: a ``(T, B, H)`` array each where XLA computes the weight
  gradients, else one ``(T, B, 4H)`` array (``_layout``).
* backward (``jax.custom_vjp``): the custom call carries ``dh``, writes the
  pre-activation gradients over the saved activations (aliased again):
  ``dr, dz, dn`` of the input side and ``dhn = dn * r`` of the recurrent one,
  and computes ``dh_{t-1} = z * dh + ([dr, dz, dhn] @ w_hh^T) * mask`` per
  step; XLA then computes ``dx`` from ``[dr, dz, dn]``. ``dw_ih`` (from
  ``[dr, dz, dn]``), ``dw_hh`` (from ``[dr, dz, dhn]``) and the biases'
  gradients are accumulated by the loop up to
  :data:`~lstm_jax.kernels.native_ops.IN_LOOP_MAX_HIDDEN`, by XLA above it, a
  GEMM per gate over each gate's own array (``_layout``).

``resets`` run inside both loops as the LSTM's (:mod:`lstm_jax.kernels.native`).

With ``compute_dtype=jnp.bfloat16`` (as ``scan``'s: the GEMM inputs ``x_t``,
``h * mask``, the weights and ``dz`` rounded to bfloat16, products summed in
float32, gate math and parameters float32) both loops run the bfloat16 kernels
the LSTM's vdpbf16ps ones are made from (``csrc/bf16_kernel.inc`` with
``GruCell``; AVX512_BF16, :func:`native_ops.native_bf16_isa`; no AMX variant),
which also emit the weight gradients' operands in bfloat16, row-major, as the
LSTM's do: ``[x_t; h_{t-1} * mask]`` transposed and ``dz``. One GEMM of them
gives ``[dw_ih; dw_hh]`` over all four blocks of ``dz``, each weight taking its
three. Where the CPU has no AVX512_BF16 native declines bfloat16 and
``"auto"`` runs ``"scan"``.
Derivatives of these (``jax.hessian``, grad of grad) go through a JAX reference
(:func:`lstm_jax.kernels.native_ops.native_op`). Steps a sequence does not reach
(``seq_lengths``, ``mask``) keep the carry and output zeros; the backward reads
``h_{t-1}`` from the carry after each step
(:func:`lstm_jax.sequence.carried_outputs`), or the reset carry where a segment
starts.
"""


from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.cells import Cell, gru_kind
from lstm_jax.kernels import native_ops
from lstm_jax.kernels.call import KernelSpec, LayerCall, layer_call
from lstm_jax.kernels.native_ops import (
    NativeOp,
    ffi_call,
    in_loop_results,
    is_bf16,
    native_op,
    native_steps,
    optional_operand,
    previous_carry,
    reference_recurrence,
    reset_carry,
    weight_gradients_in_loop,
    why_not,
)
from lstm_jax.params import GRUWeights
from lstm_jax.sequence import carried_outputs, restore_outputs

__all__ = ["NATIVE_GRU", "native_gru_kernel", "native_gru_layer", "native_gru_why_not"]


def _operands(inputs, per_step):
    """The forward custom calls' operands; an absent option is an empty array."""
    w_ih, b_ih, w_hh, b_hh, xs, h0, mask, reset_h = inputs
    valid, starts = per_step
    f32, u8 = jnp.float32, jnp.uint8
    return (xs, w_ih, b_ih, w_hh, b_hh, h0, optional_operand(mask, f32),
            optional_operand(valid, u8), optional_operand(starts, u8),
            optional_operand(reset_h, f32))  # fmt: skip


def _shapes(inputs, *features):
    """``(T, B, H)`` float32 and ``(B, H)``, then ``(T, B, F)`` for each of ``features``."""
    steps, batch, _ = inputs[4].shape
    hidden = inputs[2].shape[0]
    seq = [jax.ShapeDtypeStruct((steps, batch, f), jnp.float32) for f in (hidden, *features)]
    return (seq[0], jax.ShapeDtypeStruct((batch, hidden), jnp.float32), *seq[1:])


def _infer(static, inputs, per_step):
    """Time-major ``xs (T, B, I)`` -> ``ys (T, B, H), h``."""
    _, bf16 = static
    operands = _operands(inputs, per_step)
    return ffi_call("lstm_jax_native_gru_forward_infer", _shapes(inputs), *operands, bf16=bf16)


def _layout(bf16: bool, steps: int, batch: int, hidden: int) -> tuple[bool, bool]:
    """``(in_loop, planar)`` of a training call: whether the backward's loop accumulates the
    weight gradients (:func:`native_ops.weight_gradients_in_loop`), and whether the saved
    activations and gate gradients are four ``(T, B, H)`` arrays (planar) or one
    ``(T, B, 4H)``. Planar where XLA computes the weight gradients: it multiplies ``[dr, dz,
    dn]`` and ``[dr, dz, dhn]`` and copied column slices of one array before its GEMMs (at
    ``(B, T, I, H) = (128, 64, 256, 512)`` ~25 ms of a ~345 ms step). Interleaved where the
    loop does: planar made two-thread training 5-12% slower at H = 64 and 128
    (``benchmarks/results/cpu-intel-xeon-2c/gru_planar.md``)."""
    in_loop = not bf16 and weight_gradients_in_loop("gru", steps, batch, hidden)
    return in_loop, not in_loop


def _act_shapes(steps: int, batch: int, hidden: int, planar: bool) -> list:
    """The four ``act`` / ``dz`` arrays of a call: ``(T, B, H)`` each, or ``(T, B, 4H)`` and three
    empty ones."""
    if planar:
        return [jax.ShapeDtypeStruct((steps, batch, hidden), jnp.float32)] * 4
    empty = jax.ShapeDtypeStruct((0,), jnp.float32)
    return [jax.ShapeDtypeStruct((steps, batch, 4 * hidden), jnp.float32), empty, empty, empty]


def _train(static, inputs, per_step):
    """``(ys, h)`` and the residuals ``act``: ``r, z, n, h W_hn + b_hn`` in :func:`_layout`'s
    arrays, and with ``bf16`` ``xhT (I + H, T * B)``, the bfloat16 ``x_t`` and ``h_{t-1} * mask``
    of every step (time-major columns; empty without ``bf16``)."""
    _, bf16 = static
    steps, batch, inputs_size = inputs[4].shape
    hidden = inputs[2].shape[0]
    _, planar = _layout(bf16, steps, batch, hidden)
    xh_t = jax.ShapeDtypeStruct((inputs_size + hidden, steps * batch) if bf16 else (0,), jnp.bfloat16)
    results = (*_shapes(inputs), *_act_shapes(steps, batch, hidden, planar), xh_t)
    ys, h, *act, xh_t = ffi_call("lstm_jax_native_gru_forward_train", results, *_operands(inputs, per_step),
                                 bf16=bf16, planar=planar)  # fmt: skip
    return (ys, h), (tuple(act), xh_t)


def _bf16_weight_gradients(xh_t: Array, dz_bf16: Array, w_ih: Array):
    """``dw_ih, dw_hh, dxs`` (rows) from the kernels' bfloat16 operands, as the LSTM's: every
    GEMM row-major with the contracted axis of the left operand last (``native.py``).

    Args:
      xh_t: ``(I + H, T * B)`` bf16 ``[x_t; h_{t-1} * mask]``.
      dz_bf16: ``(T * B, 4H)`` bf16 ``[dr, dz, dn, dhn]``.
      w_ih: ``(I, 3H)`` float32.

    One GEMM over all four blocks (a quarter of its products unused) instead of
    slicing the large ``dz`` into the input side ``[dr, dz, dn]`` and the
    recurrent side ``[dr, dz, dhn]``; ``w_ih^T`` gets zero rows for ``dhn``.
    """
    inputs_size, hidden = w_ih.shape[0], w_ih.shape[1] // 3
    dw = jnp.matmul(xh_t, dz_bf16, preferred_element_type=jnp.float32)  # (I + H, 4H)
    dw_ih = dw[:inputs_size, : 3 * hidden]
    dw_hh = jnp.concatenate([dw[inputs_size:, : 2 * hidden], dw[inputs_size:, 3 * hidden :]], axis=1)
    w_t = jnp.concatenate([w_ih.T, jnp.zeros((hidden, inputs_size), w_ih.dtype)]).astype(jnp.bfloat16)
    dxs = jnp.matmul(dz_bf16, w_t, preferred_element_type=jnp.float32)  # (T * B, I)
    return dw_ih, dw_hh, dxs


def _gradients(static, inputs, per_step, cotangents, outputs, saved):
    """Gradients w.r.t. ``(w_ih, b_ih, w_hh, b_hh, xs, h0, mask, reset_h)``: the native loop,
    then XLA."""
    masked_steps, bf16 = static
    w_ih, _, w_hh, _, xs, h0, mask, reset_h = inputs  # the biases are read through act
    valid, starts = per_step
    act, xh_t = saved
    resets = () if starts is None else (starts != 0, reset_h)
    hs = carried_outputs(outputs[0], h0, valid, *resets) if masked_steps else outputs[0]
    steps, batch, inputs_size = xs.shape
    hidden = w_hh.shape[0]
    state = jax.ShapeDtypeStruct(h0.shape, jnp.float32)
    reset_state = state if starts is not None else jax.ShapeDtypeStruct((0,), jnp.float32)
    in_loop, planar = _layout(bf16, steps, batch, hidden)
    dw_ih_in_loop = in_loop and native_ops.IN_LOOP_INPUT_WEIGHTS
    dz_bf16 = jax.ShapeDtypeStruct((steps, batch, 4 * hidden) if bf16 else (0,), jnp.bfloat16)
    results = (*_act_shapes(steps, batch, hidden, planar), state, state, reset_state, dz_bf16,
               *in_loop_results(in_loop, inputs_size if dw_ih_in_loop else 0, hidden, 3, 4))  # fmt: skip
    f32, u8 = jnp.float32, jnp.uint8
    dr, dz, dn, dhn, dh0, dmask, d_reset_h, dz_bf16, dw_ih, dw_hh, db = ffi_call(
        "lstm_jax_native_gru_backward", results,
        w_hh, *act, *cotangents, optional_operand(mask, f32), optional_operand(valid, u8), hs, h0,
        optional_operand(starts, u8), optional_operand(reset_h, f32),
        optional_operand(xs if dw_ih_in_loop else None, f32), bf16=bf16, planar=planar,
        aliases={1: 0, 2: 1, 3: 2, 4: 3},
    )  # fmt: skip
    dmask = None if mask is None else dmask
    d_reset_h = None if starts is None else d_reset_h
    if planar:  # (T * B, H) each: the input side's gate gradients, then the recurrent side's
        d_input = [d.reshape(steps * batch, hidden) for d in (dr, dz, dn)]
        d_recurrent = [*d_input[:2], dhn.reshape(steps * batch, hidden)]
    else:  # the loop made dw_hh and db; [dr, dz, dn] for dx (and dw_ih)
        d_input = [dr.reshape(steps * batch, 4 * hidden)[:, : 3 * hidden]]
    if not in_loop:
        db = jnp.concatenate([jnp.sum(d, axis=0) for d in (*d_input, d_recurrent[2])])
    db_ih = db[: 3 * hidden]  # db: [dr, dz, dn, dhn] summed over rows
    db_hh = jnp.concatenate([db[: 2 * hidden], db[3 * hidden :]])
    if bf16:
        dw_ih, dw_hh, dxs = _bf16_weight_gradients(xh_t, dz_bf16.reshape(steps * batch, 4 * hidden), w_ih)
        return dw_ih, db_ih, dw_hh, db_hh, dxs.reshape(xs.shape), dh0, dmask, d_reset_h
    if not in_loop:
        h_prev = previous_carry(h0, hs, starts, reset_h, mask).reshape(steps * batch, hidden)
        dw_hh = jnp.concatenate([h_prev.T @ d for d in d_recurrent], axis=1)
    if not dw_ih_in_loop:
        x_rows = xs.reshape(steps * batch, inputs_size)
        dw_ih = jnp.concatenate([x_rows.T @ d for d in d_input], axis=1)
    w_parts = jnp.split(w_ih, len(d_input), axis=1)  # w_ih's columns of each part of d_input
    dxs = sum(d @ w.T for d, w in zip(d_input, w_parts))
    return dw_ih, db_ih, dw_hh, db_hh, dxs.reshape(xs.shape), dh0, dmask, d_reset_h


def _reference(static, inputs, per_step):
    """:func:`_infer` in JAX (the same bfloat16 rounding of the GEMM inputs)."""
    _, bf16 = static
    w_ih, b_ih, w_hh, b_hh, xs, h0, mask, reset_h = inputs
    weights = GRUWeights(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    cell = gru_kind(compute_dtype=jnp.bfloat16 if bf16 else None)
    return reference_recurrence(cell, weights, xs, h0, mask, *per_step, reset_h)


_recurrence = native_op(NativeOp(_infer, _train, _gradients, _reference))


def native_gru_kernel(call: LayerCall):
    """The native GRU layer for a call :func:`native_gru_why_not` accepts (``mask``,
    ``resets`` and ``reset_to`` included)."""
    w, options = call.weights, call.options
    steps, per_step = native_steps(call)
    h0 = jnp.asarray(call.initial_carry, jnp.float32)
    dropout = None if options.recurrent_mask is None else jnp.asarray(options.recurrent_mask, jnp.float32)
    inputs = (w.w_ih, w.b_ih, w.w_hh, w.b_hh, steps.xs.astype(jnp.float32), h0, dropout,
              reset_carry(call))  # fmt: skip
    ys, h = _recurrence((options.mask is not None, is_bf16(options.compute_dtype)), inputs, per_step)
    return restore_outputs(steps, ys), h


def native_gru_why_not(call: LayerCall, *, auto: bool = False) -> Optional[str]:
    """Why the native GRU cannot run ``call`` (``auto``: why ``"auto"`` does not run it), or
    None: :func:`native_ops.why_not`."""
    return why_not(call, bf16=True, auto=auto)


NATIVE_GRU = KernelSpec("gru", "native", native_gru_kernel, native_gru_why_not,
                        per_step=("mask", "resets"),
                        auto_why_not=lambda call: native_gru_why_not(call, auto=True))  # fmt: skip


def native_gru_layer(cell: Cell, weights: GRUWeights, xs: Array, initial_carry: Array, **options):
    """One GRU layer with a native time loop; arguments as :func:`lstm_jax.scan.scan_layer`
    (``mask``, ``resets`` and ``reset_to`` included) plus ``compute_dtype``.

    ``cell`` and ``unroll`` are not read; the gate math is that of
    :func:`lstm_jax.cells.gru_pointwise`, in C++.

    Raises:
      ValueError: for non-float32 parameters, a compute dtype other than float32
        or bfloat16 (bfloat16 only where :func:`native_ops.native_has_bf16`),
        off CPU, or when the C++ extension was not built.

    >>> import lstm_jax as lj
    >>> from lstm_jax.cells import gru_kind
    >>> w = lj.init_gru(jax.random.key(0), 3, 4).layers[0][0]
    >>> ys, h = native_gru_layer(gru_kind(), w, jnp.ones((2, 5, 3)), jnp.zeros((2, 4)))
    >>> ys.shape, h.shape
    ((2, 5, 4), (2, 4))
    """
    return NATIVE_GRU.run(layer_call(cell, weights, xs, initial_carry, **options))
