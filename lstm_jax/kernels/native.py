"""An LSTM layer whose time loop is native CPU code (``backend="native"``).

Same signature and semantics as :func:`lstm_jax.scan.scan_layer`, for the
plain LSTM with float32 parameters on CPU, computing in float32 or (with
``compute_dtype=jnp.bfloat16``) with bfloat16 GEMM inputs. The C++ in
``csrc/`` is called through XLA's FFI (:mod:`lstm_jax.kernels.native_ops`, which
loads it and wires the custom VJP), one custom call per layer-direction
forward and one for its backward:

* forward: the custom call runs the loop: per step ``x_t @ w_ih + b + h @ w_hh``
  as one register-blocked AVX-512 (or AVX2, or portable) GEMM over
  ``[w_ih; w_hh]`` packed once per call, the gate math in registers right
  after it, the carry. For training it also saves the gate activations and
  the carried cell state. (Projecting all steps' inputs in one XLA GEMM before
  the loop measured ~3x slower for inference: the ``(T, B, 4H)`` array does
  not stay in cache.)
* backward (``jax.custom_vjp``): the custom call carries ``(dh, dc)``, writes
  the gate gradients ``dz`` over the saved activations (aliased again) and
  computes ``dz @ w_hh^T`` per step; XLA then computes ``dx = dz @ w_ih^T`` as
  one GEMM. Up to :data:`~lstm_jax.kernels.native_ops.IN_LOOP_MAX_HIDDEN` the
  loop also accumulates ``[dw_ih; dw_hh] = [x, h_prev]^T dz`` and ``db`` while
  each step's ``dz`` is in cache; above it XLA computes them as single GEMMs.
* ``resets``: both loops take the ``(T, B)`` flags of :func:`native_ops.start_flags`
  and the reset carry. The forward resets the carry before a flagged step (at the
  end of the step before it, so the next step's GEMM reads the reset carry)
  and, in reverse, keeps the carry before the first reset as the final one;
  the backward adds the carry gradient at a flagged step to the reset carry's
  gradient and carries zero (or the final carry's cotangent) on from there.

Both loops run on the threads of XLA's intra-op pool: with at least 4 batch rows
per thread they split the rows (independent sequences, no synchronisation),
else the hidden units of every step (one synchronisation per step), as does a
large inference step (each thread then streams only its share of the weights;
``csrc/runtime.cc``). Steps too small to split run on one thread. Under ``vmap`` the custom calls loop over the mapped axes
(``vmap_method="broadcast_all"``).

With ``compute_dtype=jnp.bfloat16`` (as ``fused``: GEMM inputs ``x_t``,
``h * mask``, the weights and ``dz`` rounded to bfloat16, products summed in
float32, gate math, cell state and parameters float32, the same output
dtypes) both loops run bfloat16 kernels (``csrc/lstm_kernel_amx.inc`` on AMX
tiles, or ``csrc/bf16_kernel.inc`` with AVX512_BF16's ``vdpbf16ps``;
:func:`native_bf16_isa`), and the kernels also emit the gradient GEMMs'
operands in bfloat16, row-major: ``dz``, ``[x_t; h_{t-1} * mask]``
transposed, ``w_ih^T``. XLA:CPU's bf16 dot is fast (YNNPACK on AMX) only when
the contracted axis of the left operand is its last and both are row-major; a
transposed operand measured 3-6x slower than that and slower than float32
(``docs/TIMINGS.md``). Where the CPU has no AVX512_BF16 (or the ISA is not
``avx512``) native declines bfloat16, and ``"auto"`` runs ``"fused"``.

Inputs at steps where a sequence is not valid are zeroed before the
projection, so values in padding (even NaN) never reach an output or a
gradient.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.cells import Cell, lstm_kind
from lstm_jax.kernels import native_ops
from lstm_jax.kernels.call import KernelSpec, LayerCall, layer_call
from lstm_jax.kernels.fused import unsupported_variant
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
from lstm_jax.params import LSTMWeights
from lstm_jax.sequence import carried_outputs, restore_outputs

__all__ = ["NATIVE_LSTM", "native_lstm_kernel", "native_lstm_layer", "native_lstm_why_not"]


def _sequence(batch_major: bool, steps: int, batch: int, features: int) -> jax.ShapeDtypeStruct:
    """A float32 ``(T, B, F)`` array, ``(B, T, F)`` when ``batch_major``."""
    shape = (batch, steps, features) if batch_major else (steps, batch, features)
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _steps_batch(xs: Array, batch_major: bool) -> tuple[int, int]:
    return (xs.shape[1], xs.shape[0]) if batch_major else xs.shape[:2]


def _time_major(a: Array, batch_major: bool) -> Array:
    """A ``(B, T, F)`` array as ``(T, B, F)`` when ``batch_major``, else ``a`` (and back)."""
    return jnp.swapaxes(a, 0, 1) if batch_major else a


def _operands(inputs, per_step):
    """The forward custom calls' operands; an absent option is an empty array."""
    w_ih, b, w_hh, xs, h0, c0, mask, reset_h, reset_c = inputs
    valid, starts = per_step
    f32, u8 = jnp.float32, jnp.uint8
    return (xs, w_ih, b, w_hh, h0, c0, optional_operand(mask, f32), optional_operand(valid, u8),
            optional_operand(starts, u8), optional_operand(reset_h, f32),
            optional_operand(reset_c, f32))  # fmt: skip


def _infer(static, inputs, per_step):
    """``xs (T, B, I)`` (``(B, T, I)`` when ``batch_major``) -> ``ys`` in that layout, ``h, c``."""
    batch_major, bf16, _ = static
    xs, w_hh = inputs[3], inputs[2]
    steps, batch = _steps_batch(xs, batch_major)
    state = jax.ShapeDtypeStruct((batch, w_hh.shape[0]), jnp.float32)
    seq = _sequence(batch_major, steps, batch, w_hh.shape[0])
    operands = _operands(inputs, per_step)
    return ffi_call("lstm_jax_native_forward_infer", (seq, state, state), *operands,
                    batch_major=batch_major, bf16=bf16)  # fmt: skip


def _train(static, inputs, per_step):
    """``(ys, h, c)`` and the residuals ``act (T, B, 4H)`` (gate activations), ``cs (T, B, H)``,
    time-major. With ``bf16`` also the bfloat16 GEMM operands of the gradients, row-major as
    XLA's fast bf16 dot needs them: ``xhT (I + H, T * B)`` (``x_t`` and ``h_{t-1} * mask`` per
    step, time-major columns) and ``w_ihT (4H, I)``; empty without ``bf16``."""
    batch_major, bf16, _ = static
    xs, w_hh = inputs[3], inputs[2]
    steps, batch = _steps_batch(xs, batch_major)
    inputs_size, hidden = xs.shape[-1], w_hh.shape[0]
    state = jax.ShapeDtypeStruct((batch, hidden), jnp.float32)
    xh_t = jax.ShapeDtypeStruct((inputs_size + hidden, steps * batch) if bf16 else (0,), jnp.bfloat16)
    w_t = jax.ShapeDtypeStruct((4 * hidden, inputs_size) if bf16 else (0,), jnp.bfloat16)
    results = (_sequence(batch_major, steps, batch, hidden), state, state,
               _sequence(False, steps, batch, 4 * hidden), _sequence(False, steps, batch, hidden),
               xh_t, w_t)  # fmt: skip
    operands = _operands(inputs, per_step)
    ys, h, c, *saved = ffi_call("lstm_jax_native_forward_train", results, *operands,
                                batch_major=batch_major, bf16=bf16)  # fmt: skip
    return (ys, h, c), tuple(saved)


def _gradients(static, inputs, per_step, cotangents, outputs, saved):
    """Gradients w.r.t. ``(w_ih, b, w_hh, xs, h0, c0, mask, reset_h, reset_c)``: the native
    loop, then XLA GEMMs.

    With ``bf16`` every GEMM takes bfloat16 inputs and sums in float32, all operands
    row-major with the contracted axis of the left one last: XLA:CPU's bf16 dot
    measured 3-6x slower for a transposed operand (``docs/TIMINGS.md``).
    """
    batch_major, bf16, masked_steps = static
    w_ih, _, w_hh, xs, h0, c0, mask, reset_h, reset_c = inputs  # the bias is read through act
    valid, starts = per_step
    dys, dh, dc = cotangents
    ys = outputs[0]
    act, cs, xh_t, w_t = saved
    if masked_steps:  # the hidden carry after each step, not the zeroed outputs
        resets = () if starts is None else (starts != 0, reset_h)
        ys = _time_major(carried_outputs(_time_major(ys, batch_major), h0, valid, *resets),
                         batch_major)  # fmt: skip
    hidden = w_hh.shape[0]
    state = jax.ShapeDtypeStruct(h0.shape, jnp.float32)
    dz_bf16 = jax.ShapeDtypeStruct(act.shape if bf16 else (0,), jnp.bfloat16)
    reset_state = state if starts is not None else jax.ShapeDtypeStruct((0,), jnp.float32)
    steps, batch = _steps_batch(xs, batch_major)
    inputs_size = xs.shape[-1]
    in_loop = not bf16 and weight_gradients_in_loop("lstm", steps, batch, hidden)
    dw_ih_in_loop = in_loop and native_ops.IN_LOOP_INPUT_WEIGHTS
    results = (jax.ShapeDtypeStruct(act.shape, jnp.float32), state, state, state, dz_bf16,
               reset_state, reset_state,
               *in_loop_results(in_loop, inputs_size if dw_ih_in_loop else 0, hidden, 4, 4))  # fmt: skip
    f32, u8 = jnp.float32, jnp.uint8
    dz, dh0, dc0, dmask, dz_bf16, d_reset_h, d_reset_c, dw_ih, dw_hh, db = ffi_call(
        "lstm_jax_native_backward", results,
        w_hh, act, cs, c0, dys, dh, dc, optional_operand(mask, f32), optional_operand(valid, u8),
        ys, h0, optional_operand(starts, u8), optional_operand(reset_h, f32),
        optional_operand(reset_c, f32), optional_operand(xs if dw_ih_in_loop else None, f32),
        batch_major=batch_major, bf16=bf16, aliases={1: 0},
    )  # fmt: skip
    dmask = None if mask is None else dmask
    d_resets = (None, None) if starts is None else (d_reset_h, d_reset_c)
    rows = dz.reshape(steps * batch, 4 * hidden)  # time-major rows
    if not in_loop:
        db = jnp.sum(rows, axis=0)
    if bf16:
        rows_bf16 = dz_bf16.reshape(steps * batch, 4 * hidden)
        dw = jnp.matmul(xh_t, rows_bf16, preferred_element_type=jnp.float32)  # [dw_ih; dw_hh]
        dxs = jnp.matmul(rows_bf16, w_t, preferred_element_type=jnp.float32)
        dxs = _time_major(dxs.reshape(steps, batch, inputs_size), batch_major)
        return dw[:inputs_size], db, dw[inputs_size:], dxs, dh0, dc0, dmask, *d_resets
    if not in_loop:
        h_prev = previous_carry(h0, _time_major(ys, batch_major), starts, reset_h, mask)
        dw_hh = h_prev.reshape(steps * batch, hidden).T @ rows
    if not dw_ih_in_loop:
        # the (T, B, I) operands are transposed, never dz: given an einsum over
        # (T, B) in both orders, XLA copied dz (4H wide, e.g. 64 MiB) as well
        dw_ih = _time_major(xs, batch_major).reshape(steps * batch, inputs_size).T @ rows
    dxs = _time_major((rows @ w_ih.T).reshape(steps, batch, inputs_size), batch_major)
    return dw_ih, db, dw_hh, dxs, dh0, dc0, dmask, *d_resets


def _reference(static, inputs, per_step):
    """:func:`_infer` in JAX (the same bfloat16 rounding of the GEMM inputs)."""
    batch_major, bf16, _ = static
    w_ih, b, w_hh, xs, h0, c0, mask, reset_h, reset_c = inputs
    cell = lstm_kind(compute_dtype=jnp.bfloat16 if bf16 else None)
    weights = LSTMWeights(w_ih, w_hh, b)
    ys, (h, c) = reference_recurrence(cell, weights, _time_major(xs, batch_major), (h0, c0), mask,
                                      *per_step, (reset_h, reset_c))  # fmt: skip
    return _time_major(ys, batch_major), h, c


_recurrence = native_op(NativeOp(_infer, _train, _gradients, _reference))


def native_lstm_kernel(call: LayerCall):
    """The native LSTM layer for a call :func:`native_lstm_why_not` accepts (``mask``,
    ``resets`` and ``reset_to`` included)."""
    weights, options = call.weights, call.options
    steps, per_step = native_steps(call, batch_major_ok=True)
    h0, c0 = (jnp.asarray(a, jnp.float32) for a in call.initial_carry)
    resets = reset_carry(call) or (None, None)
    dropout = None if options.recurrent_mask is None else jnp.asarray(options.recurrent_mask, jnp.float32)
    inputs = (weights.w_ih, weights.b, weights.w_hh, steps.xs.astype(jnp.float32), h0, c0, dropout,
              *resets)  # fmt: skip
    static = (steps.batch_major, is_bf16(options.compute_dtype), options.mask is not None)
    ys, h, c = _recurrence(static, inputs, per_step)
    return restore_outputs(steps, ys), (h, c)


def native_lstm_why_not(call: LayerCall, *, auto: bool = False) -> Optional[str]:
    """Why the native LSTM cannot run ``call`` (``auto``: why ``"auto"`` does not run it), or
    None: peepholes, layer norm or a projection, and :func:`native_ops.why_not`."""
    return unsupported_variant(call.weights) or why_not(call, bf16=True, auto=auto)


NATIVE_LSTM = KernelSpec("lstm", "native", native_lstm_kernel, native_lstm_why_not,
                         per_step=("mask", "resets"),
                         auto_why_not=lambda call: native_lstm_why_not(call, auto=True))  # fmt: skip


def native_lstm_layer(cell: Cell, weights: LSTMWeights, xs: Array, initial_carry, **options):
    """One LSTM layer with a native time loop; arguments as :func:`lstm_jax.scan.scan_layer`
    (``mask``, ``resets`` and ``reset_to`` included) plus ``compute_dtype``.

    ``cell`` and ``unroll`` are not read; the gate math is that of
    :func:`lstm_jax.cells.lstm_pointwise`, in C++.

    Raises:
      ValueError: for weights with peepholes, layer norm or a projection, for
        non-float32 parameters, a compute dtype other than float32 or bfloat16
        (bfloat16 only where :func:`native_ops.native_has_bf16`), off CPU, or
        when the C++ extension was not built.

    >>> import lstm_jax as lj
    >>> w = lj.init_lstm(jax.random.key(0), 3, 4).layers[0][0]
    >>> zeros = jnp.zeros((2, 4))
    >>> ys, (h, c) = native_lstm_layer(lstm_kind(), w, jnp.ones((5, 2, 3)), (zeros, zeros),
    ...                                time_major=True)
    >>> ys.shape, c.shape
    ((5, 2, 4), (2, 4))
    """
    return NATIVE_LSTM.run(layer_call(cell, weights, xs, initial_carry, **options))
