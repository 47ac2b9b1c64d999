"""A fused LSTM layer with a hand-written backward pass (``backend="fused"``).

Same signature and semantics as :func:`lstm_jax.scan.scan_layer`, for the
plain LSTM (no peepholes, layer norm or projection; the dispatcher routes
those to ``scan``).

Forward: each step computes ``x_t @ w_ih + b + h @ w_hh`` and the gate math of
:func:`lstm_jax.cells.lstm_pointwise`, batched. As in ``scan.py`` the input
projection is not hoisted into one ``(T, B, 4H)`` array before the loop: on
XLA:CPU that array falls out of cache, and the per-step form measured 2.2x
faster for inference at (B, T, I, H) = (32, 256, 64, 128). It saves, per
step, the four gate activations (``i, f, g, o`` after their non-linearities),
the cell state before the step and ``tanh`` of the one after it
(:class:`Residuals`), each as its own ``(T, B, H)`` stack.

Backward (``jax.custom_vjp``): the loop carries only ``(dh, dc)``; per step it
forms the gate pre-activation gradients ``dz`` from the saved activations and
one ``dz @ w_hh^T``. It walks time in blocks of :data:`BLOCK` steps; after
each block, ``dw_hh += sum_t h_{t-1}^T dz_t``, ``dw_ih += sum_t x_t^T dz_t``
and ``dx = dz @ w_ih^T`` are one GEMM each over the block's rows, and ``db``
one sum.

Derivatives, with ``c_t = f c_{t-1} + i g`` and ``h_t = o tanh(c_t)``::

    dh  = dh_{t}(carry) + dy_t
    dc  = dc_{t}(carry) + dh o (1 - tanh^2 c_t)
    dz_i = dc g i (1 - i)        dz_f = dc c_{t-1} f (1 - f)
    dz_g = dc i (1 - g^2)        dz_o = dh tanh(c_t) o (1 - o)
    dc_{t-1} = dc f              dh_{t-1} = (dz @ w_hh^T) * recurrent_mask

Saving the activations was measured against saving the pre-activations and
recomputing the non-linearities in the backward loop, and the layout of the
saved stacks against one ``(T, B, 4H)`` array; see
``docs/TIMINGS.md``. Both loops are ``lax.fori_loop`` over
explicit output buffers (not ``lax.scan``), so that their fills are not
merged and copied by XLA (:func:`_stacks`).

With ``compute_dtype`` (e.g. ``jnp.bfloat16``) the three matmuls (forward
recurrent, backward recurrent, ``dw_hh``) take inputs in that dtype and
accumulate in the parameters' dtype; gate math and the cell state stay in the
parameters' dtype.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.cells import Cell, lstm_activations, lstm_pointwise
from lstm_jax.kernels.call import KernelSpec, LayerCall, layer_call
from lstm_jax.params import LSTMWeights
from lstm_jax.sequence import carried_outputs, over_time

__all__ = [
    "Residuals",
    "Segments",
    "backward",
    "forward",
    "FUSED",
    "fused_forward",
    "fused_kernel",
    "fused_lstm_layer",
    "recurrence",
    "recurrence_bwd",
    "unsupported_variant",
    "variant_why_not",
]


def unsupported_variant(weights: Any) -> Optional[str]:
    """Why the fused kernels cannot run ``weights``, or None if they can."""
    if not isinstance(weights, LSTMWeights):
        return f"it implements the LSTM only, got {type(weights).__name__}"
    if weights.w_peep is not None:
        return "peephole connections are not supported"
    if weights.ln is not None:
        return "layer norm is not supported"
    if weights.w_hr is not None:
        return "projections (proj_size) are not supported"
    return None


def _dot(x: Array, w: Array, out_dtype) -> Array:
    """``x @ w`` with ``w`` already in the compute dtype, accumulated in ``out_dtype``."""
    return jnp.matmul(x.astype(w.dtype), w, preferred_element_type=out_dtype).astype(out_dtype)


_POINTWISE = jax.vmap(lstm_pointwise, in_axes=(None, 0, 0))  # over the batch


class Residuals(NamedTuple):
    """What the forward saves for the backward: six ``(T, B, H)`` stacks.

    One stack per quantity rather than one ``(T, B, 4H)`` array: on XLA:CPU a
    loop body that reads four column slices of one dynamically indexed array
    ran ~5x slower than one reading four whole ``(B, H)`` slices
    (``docs/TIMINGS.md``).
    """

    i: Array  # input gate activation
    f: Array  # forget gate activation
    g: Array  # candidate (tanh) activation
    o: Array  # output gate activation
    c_prev: Array  # cell state before the step
    tanh_c: Array  # tanh of the cell state after the step


def _index(stack: Array, t) -> Array:
    """``stack[t]`` as a ``gather`` (XLA turns it into the same dynamic slice).

    Not ``lax.dynamic_index_in_dim``: when the loops run under ``vmap`` (eager
    ``jax.hessian``, ``jacrev``), XLA rewrites the batched reads into
    instructions named ``dynamic-slice.N`` next to JAX's ``dynamic_slice.N``;
    XLA:CPU's fusion emitter maps both to one LLVM function name and fails
    with "RET_CHECK failure ... fusion_compiler.cc ... Failed to translate
    module to LLVM IR". Gathers get XLA's names only.
    """
    dnums = jax.lax.GatherDimensionNumbers(
        offset_dims=tuple(range(stack.ndim - 1)), collapsed_slice_dims=(0,), start_index_map=(0,)
    )
    index = jnp.reshape(t, (1,)).astype(jnp.int32)
    return jax.lax.gather(
        stack, index, dnums, (1,) + stack.shape[1:], mode=jax.lax.GatherScatterMode.CLIP
    )


def _write(stack: Array, value: Array, t) -> Array:
    return jax.lax.dynamic_update_index_in_dim(stack, value, t, 0)


def _stacks(count: int, shape, dtype, first_fill: float) -> tuple[Array, ...]:
    """``count`` output buffers for a time loop to overwrite, step by step.

    Each gets its own fill value: XLA merges identical broadcasts into one and
    then copies it once per buffer, which costs as much as the fill itself.
    Every element is overwritten, so the values are never seen.
    """
    return tuple(jnp.full(shape, first_fill + k, dtype) for k in range(count))


class Segments(NamedTuple):
    """Where the carry is reset (``resets=``), in processing order: the
    :func:`lstm_jax.sequence.segment_starts` flags and what the carry becomes there."""

    starts: Array  # (T, B) bool: reset the carry before step t
    h: Array  # (B, H) the reset carry
    c: Array  # (B, H)
    last: Optional[Array]  # (T, B) bool: steps of the segment whose final carry is returned
    # (the first processed one, in reverse), or None: the carry after the last step


def forward(w_ih, b, w_hh, xs, h0, c0, mask, valid, *, compute_dtype, unroll, save,
             segments: Optional[Segments] = None):  # fmt: skip
    """The recurrence over time-major ``xs: (T, B, I)``.

    Each step computes ``x_t @ w_ih + b + h @ w_hh``: on XLA:CPU this measured
    faster than hoisting the input projection of all steps into one
    ``(T, B, 4H)`` array, which falls out of cache (``docs/TIMINGS.md``).

    Returns ``ys (T, B, H)``, the final ``(h, c)`` and, with ``save``, the
    :class:`Residuals`.
    """
    dtype = w_hh.dtype
    cd = compute_dtype or dtype
    w_x, w_c = w_ih.astype(cd), w_hh.astype(cd)  # cast once, outside the loop
    bias = b[None, :]  # [1, 4H]
    plain = LSTMWeights(w_ih=None, w_hh=None, b=None)  # lstm_pointwise reads no weights
    steps, batch = xs.shape[:2]
    hidden = h0.shape[-1]

    def body(t, carry):
        h, c, ys, saved, final = carry
        if segments is not None:
            start = _index(segments.starts, t)[:, None]
            h, c = jnp.where(start, segments.h, h), jnp.where(start, segments.c, c)
        hm = h if mask is None else h * mask
        gates = _dot(_index(xs, t), w_x, dtype) + bias + _dot(hm, w_c, dtype)  # [B, 4H]
        h_new, c_new = _POINTWISE(plain, gates, c)
        if save:  # XLA shares these with lstm_pointwise's identical expressions
            saved = tuple(
                _write(stack, value, t)
                for stack, value in zip(saved, (*lstm_activations(gates), c, jnp.tanh(c_new)))
            )
        y = h_new
        if valid is not None:
            keep = _index(valid, t)[:, None]
            h_new = jnp.where(keep, h_new, h)
            c_new = jnp.where(keep, c_new, c)
            y = jnp.where(keep, y, jnp.zeros_like(y))
        if final is not None:
            last = _index(segments.last, t)[:, None]
            final = (jnp.where(last, h_new, final[0]), jnp.where(last, c_new, final[1]))
        return h_new, c_new, _write(ys, y, t), saved, final

    shape = (steps, batch, hidden)
    (ys,) = _stacks(1, shape, dtype, 0.0)
    saved = _stacks(len(Residuals._fields), shape, dtype, 1.0) if save else ()
    final = (h0, c0) if segments is not None and segments.last is not None else None
    h, c, ys, saved, final = jax.lax.fori_loop(0, steps, body, (h0, c0, ys, saved, final),
                                               unroll=unroll)  # fmt: skip
    return ys, (h, c) if final is None else final, (Residuals(*saved) if save else None)


# Steps per block of the backward pass. Each block's gate gradients dz stay in
# a (BLOCK, B, 4H) buffer, and its weight and input gradients are a few GEMMs
# over BLOCK * B rows, instead of one (T, B, 4H) array and GEMMs over all T * B
# rows after the loop: less fresh memory per call, and dz is still in cache
# when the GEMMs read it. 0.97-1.19x the unblocked speed on the four CPU
# targets, 1.1x on the two mid-sized ones (docs/TIMINGS.md).
BLOCK = 32


class Gradients(NamedTuple):
    """What :func:`backward` returns: gradients w.r.t. the recurrence's inputs."""

    w_ih: Array
    b: Array
    w_hh: Array
    xs: Array
    h0: Array
    c0: Array
    mask: Optional[Array]
    segments: Optional[Segments] = None  # the reset carry's gradients in h and c


def backward(w_ih, w_hh, xs, h0, mask, valid, hs, saved: Residuals, dys, dh, dc, *,
              compute_dtype, unroll, segments: Optional[Segments] = None) -> Gradients:  # fmt: skip
    """Gradients of ``ys, (h, c) = recurrence(xs, h0, c0)`` with input projection ``xs @ w_ih + b``.

    Walks the time steps backwards in blocks of :data:`BLOCK`. Per step: the
    gate pre-activation gradients ``dz (B, 4H)`` and one ``dz @ w_hh^T``. Per
    block: ``dw_hh += h_prev^T dz``, ``dw_ih += x^T dz``, ``db += sum(dz)`` and
    ``dx = dz @ w_ih^T``, one GEMM each over the block's rows. ``hs (T, B, R)`` is
    the hidden carry after each step (:func:`lstm_jax.sequence.carried_outputs`).
    With ``segments`` the carry gradient at a reset flows to the reset carry,
    and the final carry's cotangent enters at the last step of ``segments.last``.
    """
    dtype = dys.dtype
    cd = compute_dtype or dtype
    w_t = jnp.transpose(w_hh).astype(cd)  # [4H, R], transposed once outside the loops
    w_ih_t = jnp.transpose(w_ih).astype(cd)  # [4H, I]
    steps, batch, outputs = hs.shape
    inputs = xs.shape[-1]
    gates = w_hh.shape[-1]
    block = min(BLOCK, steps)
    with_mask = mask is not None
    inject = None  # [T, B]: where the final carry's cotangent enters (the last step of last)
    if segments is not None and segments.last is not None:
        last = segments.last
        inject = last & ~jnp.concatenate([last[1:], jnp.zeros_like(last[:1])])
        d_final, dh, dc = (dh, dc), jnp.zeros_like(dh), jnp.zeros_like(dc)

    def gemm(a, b):
        return jnp.matmul(a.astype(cd), b.astype(cd), preferred_element_type=dtype)

    def h_prev(t, hs_before):
        """``h_{t-1}`` for steps ``t`` (``hs_before``: the carry after the step before each),
        the reset carry where a segment starts."""
        if segments is None:
            return hs_before
        return jnp.where(_index(segments.starts, t)[:, None], segments.h, hs_before)

    def step(j, start, carry):
        """Step ``start + j``: dz into row ``j`` of the block buffer, (dh, dc, dm) one step back."""
        dh, dc, dm, dz_block, d_reset = carry
        t = start + j
        if inject is not None:
            enter = _index(inject, t)[:, None]
            dh = jnp.where(enter, dh + d_final[0], dh)
            dc = jnp.where(enter, dc + d_final[1], dc)
        i, f, g, o, c_prev, tc = (_index(stack, t) for stack in saved)
        dh_t = dh + _index(dys, t)
        dc_t = dc + dh_t * o * (1.0 - tc * tc)
        dz = jnp.concatenate(
            [
                dc_t * g * i * (1.0 - i),
                dc_t * c_prev * f * (1.0 - f),
                dc_t * i * (1.0 - g * g),
                dh_t * tc * o * (1.0 - o),
            ],
            axis=-1,
        )  # [B, 4H]
        dhm = _dot(dz, w_t, dtype)  # gradient w.r.t. h * mask, [B, R]
        dh_prev = dhm if mask is None else dhm * mask
        dc_prev = dc_t * f
        if with_mask:
            dm_new = dm + dhm * h_prev(t, _h_prev(hs, h0, t))
        if valid is not None:
            keep = _index(valid, t)[:, None]
            dh_prev = jnp.where(keep, dh_prev, dh)
            dc_prev = jnp.where(keep, dc_prev, dc)
            dz = jnp.where(keep, dz, jnp.zeros_like(dz))
            if with_mask:
                dm_new = jnp.where(keep, dm_new, dm)
        if segments is not None:  # the carry entering step t was the reset carry
            reset = _index(segments.starts, t)[:, None]
            d_reset = (d_reset[0] + jnp.where(reset, dh_prev, 0.0),
                       d_reset[1] + jnp.where(reset, dc_prev, 0.0))  # fmt: skip
            dh_prev = jnp.where(reset, 0.0, dh_prev)
            dc_prev = jnp.where(reset, 0.0, dc_prev)
        dm = dm_new if with_mask else dm
        return dh_prev, dc_prev, dm, _write(dz_block, dz, j), d_reset

    def run_block(start, size, carry):
        """Steps ``start + size - 1`` down to ``start`` (``size`` static), then the block's GEMMs."""
        dh, dc, dm, dz_block, d_reset, grads = carry
        dh, dc, dm, dz_block, d_reset = jax.lax.fori_loop(
            0, size, lambda k, c: step(size - 1 - k, start, c), (dh, dc, dm, dz_block, d_reset),
            unroll=unroll,
        )  # fmt: skip
        dw_ih, db, dw_hh, dxs = grads
        dz = dz_block[:size].reshape(size * batch, gates)  # [rows, 4H]
        x_rows = jax.lax.dynamic_slice_in_dim(xs, start, size).reshape(size * batch, inputs)
        # h_{t-1} for the block's first step is hs[start - 1] or h0, for the rest hs[t - 1]
        h_first = h_prev(start, _h_prev(hs, h0, start))  # [B, R]
        dw_hh = dw_hh + gemm((h_first if mask is None else h_first * mask).T, dz[:batch])
        if size > 1:
            h_rest = jax.lax.dynamic_slice_in_dim(hs, start, size - 1)  # [size - 1, B, R]
            if segments is not None:
                starts = jax.lax.dynamic_slice_in_dim(segments.starts, start + 1, size - 1)
                h_rest = jnp.where(starts[..., None], segments.h, h_rest)
            h_rest = h_rest if mask is None else h_rest * mask[None]
            dw_hh = dw_hh + gemm(h_rest.reshape((size - 1) * batch, outputs).T, dz[batch:])
        dw_ih = dw_ih + gemm(x_rows.T, dz)
        db = db + jnp.sum(dz, axis=0)
        dx = gemm(dz, w_ih_t).reshape(size, batch, inputs)
        dxs = jax.lax.dynamic_update_slice_in_dim(dxs, dx, start, 0)
        return dh, dc, dm, dz_block, d_reset, (dw_ih, db, dw_hh, dxs)

    grads = (
        jnp.zeros(w_ih.shape, dtype), jnp.zeros((gates,), dtype), jnp.zeros(w_hh.shape, dtype),
        *_stacks(1, xs.shape, dtype, 8.0),
    )  # fmt: skip
    (dz_block,) = _stacks(1, (block, batch, gates), dtype, 9.0)
    dm0 = jnp.zeros_like(mask) if with_mask else None
    d_reset = None if segments is None else (jnp.zeros_like(dh), jnp.zeros_like(dc))
    carry = (dh, dc, dm0, dz_block, d_reset, grads)
    full_blocks, remainder = divmod(steps, block)
    carry = jax.lax.fori_loop(
        0, full_blocks, lambda n, c: run_block(steps - (n + 1) * block, block, c), carry
    )
    if remainder:  # steps [0, remainder), last
        carry = run_block(0, remainder, carry)
    dh0, dc0, dmask, _, d_reset, (dw_ih, db, dw_hh, dxs) = carry
    if segments is not None:
        d_reset = Segments(starts=None, h=d_reset[0], c=d_reset[1], last=None)
    return Gradients(
        w_ih=dw_ih.astype(w_ih.dtype), b=db.astype(w_ih.dtype), w_hh=dw_hh.astype(w_hh.dtype),
        xs=dxs.astype(xs.dtype), h0=dh0, c0=dc0, mask=dmask, segments=d_reset,
    )  # fmt: skip


def _h_prev(hs, h0, t):
    """The hidden state before step ``t``: ``hs[t - 1]``, or ``h0`` at ``t = 0``."""
    return jnp.where(t > 0, _index(hs, jnp.maximum(t - 1, 0)), h0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def recurrence(compute_dtype, unroll, w_ih, b, w_hh, xs, h0, c0, mask, valid, segments=None):
    ys, (h, c), _ = forward(
        w_ih, b, w_hh, xs, h0, c0, mask, valid,
        compute_dtype=compute_dtype, unroll=unroll, save=False, segments=segments,
    )  # fmt: skip
    return ys, h, c


def recurrence_fwd(compute_dtype, unroll, w_ih, b, w_hh, xs, h0, c0, mask, valid,
                    segments=None):  # fmt: skip
    ys, (h, c), saved = forward(
        w_ih, b, w_hh, xs, h0, c0, mask, valid,
        compute_dtype=compute_dtype, unroll=unroll, save=True, segments=segments,
    )  # fmt: skip
    return (ys, h, c), (w_ih, w_hh, xs, h0, mask, valid, ys, saved, segments)


def recurrence_bwd(compute_dtype, unroll, residuals, cotangents):
    """The gradients; ``residuals`` may lack the last item, ``segments`` (the shared VJP's)."""
    w_ih, w_hh, xs, h0, mask, valid, ys, saved, *rest = residuals
    segments = rest[0] if rest else None
    dys, dh, dc = cotangents
    resets = (None, None) if segments is None else (segments.starts, segments.h)
    hs = carried_outputs(ys, h0, valid, *resets)  # h_{t-1} is hs[t - 1], also after a masked step
    grads = backward(
        w_ih, w_hh, xs, h0, mask, valid, hs, saved, dys, dh, dc,
        compute_dtype=compute_dtype, unroll=unroll, segments=segments,
    )  # fmt: skip
    *grads, d_segments = grads
    if not rest:
        return (*grads, None)  # no gradient for the validity mask
    return (*grads, None, d_segments)


recurrence.defvjp(recurrence_fwd, recurrence_bwd)


def fused_kernel(call: LayerCall):
    """The fused layer for a call :func:`variant_why_not` accepts (``mask``, ``resets`` and
    ``reset_to`` included)."""
    weights, options = call.weights, call.options
    h0, c0 = call.initial_carry
    reset_h, reset_c = call.initial_carry if options.reset_to is None else options.reset_to

    def run(xs, valid, starts=None):
        segments = None
        if starts is not None:  # reverse: the first processed segment's final carry
            last = (jnp.cumsum(starts, axis=0) == 0) if options.reverse else None
            segments = Segments(starts, reset_h, reset_c, last)
        ys, h, c = recurrence(
            options.compute_dtype, options.unroll, weights.w_ih, weights.b, weights.w_hh, xs,
            h0, c0, options.recurrent_mask, valid, segments,
        )  # fmt: skip
        return ys, (h, c)

    return over_time(run, call.xs, seq_lengths=options.seq_lengths, reverse=options.reverse,
                     time_major=options.time_major, mask=options.mask, resets=options.resets)  # fmt: skip


def fused_forward(w_ih, b, w_hh, xs, h0, c0, mask, valid, lengths, *, compute_dtype, unroll, save):
    """The fused forward as a forward of :mod:`lstm_jax.kernels.shared` (projection in its loop)."""
    del lengths
    ys, (h, c), saved = forward(
        w_ih, b, w_hh, xs, h0, c0, mask, valid, compute_dtype=compute_dtype, unroll=unroll, save=save
    )
    return ys, saved, h, c


def variant_why_not(call: LayerCall) -> Optional[str]:
    """Why the fused kernels cannot run ``call``'s weights (:func:`unsupported_variant`)."""
    return unsupported_variant(call.weights)


FUSED = KernelSpec("lstm", "fused", fused_kernel, variant_why_not, per_step=("mask", "resets"),
                   forward=fused_forward)  # fmt: skip


def fused_lstm_layer(cell: Cell, weights: LSTMWeights, xs: Array, initial_carry, **options):
    """One LSTM layer with a hand-written VJP; arguments as :func:`lstm_jax.scan.scan_layer`
    (``mask``, ``resets`` and ``reset_to`` included) plus ``compute_dtype``.

    ``cell`` is not read: the gate math is :func:`lstm_jax.cells.lstm_pointwise`, and
    ``compute_dtype`` (the matmul input dtype) is given here explicitly.

    Raises:
      ValueError: for weights with peepholes, layer norm or a projection.

    >>> import lstm_jax as lj
    >>> from lstm_jax.cells import lstm_kind
    >>> w = lj.init_lstm(jax.random.key(0), 3, 4).layers[0][0]
    >>> carry = (jnp.zeros((2, 4)), jnp.zeros((2, 4)))
    >>> ys, (h, c) = fused_lstm_layer(lstm_kind(), w, jnp.ones((2, 5, 3)), carry)
    >>> ys.shape
    (2, 5, 4)
    """
    return FUSED.run(layer_call(cell, weights, xs, initial_carry, **options))
