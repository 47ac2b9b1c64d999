"""The LSTM forward time loop as one Pallas TPU (Mosaic) kernel.

Layout: ``w_hh`` is copied into VMEM once and stays there for the whole
sequence (single-buffered, its block index never changes). The grid is
``(batch tiles, time blocks)``: batch tiles are independent (``"parallel"``,
split across TensorCores where a chip has several); time blocks run in order
(``"arbitrary"``), carrying ``h`` and ``c`` in VMEM scratch from one grid step
to the next. Each grid step reads one ``(TT, BB, 4H)`` block of the input
projection (computed before the kernel as one large GEMM, which the MXU runs
well) and writes ``(TT, BB, H)`` blocks of the outputs; Pallas double-buffers
these blocks, so the next block's DMA overlaps this block's steps.

Per step: ``gates = gx_t + (h * mask) @ w_hh`` on the MXU (inputs in the
compute dtype, f32 accumulation) and :func:`lstm_jax.cells.lstm_pointwise`
on the VPU. ``H`` is padded per gate to a multiple of 128 lanes and the batch
to a multiple of 8 sublanes (zero weights keep padded units at exactly zero);
time is padded to a whole number of blocks, and steps at or past a sequence's
length (or past ``T``) leave the carry unchanged and output zeros.

VMEM: :func:`plan` computes the bytes every buffer needs before anything is
lowered and picks the largest time block that fits :data:`VMEM_BUDGET`;
:func:`tpu_unsupported` says when nothing fits (``backend="auto"`` then runs
the fused XLA kernel, ``backend="pallas"`` raises ``ValueError``).

Status: numerics tested on CPU in Pallas interpret mode against ``scan``; the
Mosaic lowering tested by ``jax.export(..., platforms=["tpu"])`` at
(B, T, I, H) = (16, 1024, 256, 256) and (8, 2048, 512, 768). It has NOT been
compiled by libtpu or run on a TPU in this project (none was available).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lstm_jax.cells import lstm_activations, lstm_pointwise
from lstm_jax.kernels.fused import Residuals, unsupported_variant
from lstm_jax.kernels.platform import lowering_error, platform_only
from lstm_jax.kernels.tiling import forward_shapes, pad, pad_gates, round_up
from lstm_jax.params import LSTMWeights

__all__ = ["VMEM_BUDGET", "Plan", "plan", "tpu_forward", "tpu_unsupported"]

# Bytes of VMEM the kernel's buffers may take: half of 64 MiB, the smallest
# per-core VMEM of TPU v5e/v5p/v6e/v7x, leaving room for Mosaic's temporaries.
VMEM_BUDGET = 32 * 2**20
LANES, SUBLANES = 128, 8
TIME_BLOCKS = (32, 16, 8, 4, 2, 1)  # tried largest first
MAX_BATCH_TILE = 256  # larger batches are split into tiles of BATCH_TILE rows
BATCH_TILE = 128


class Plan(NamedTuple):
    """Padded sizes, tiles and the VMEM bytes they need."""

    batch: int  # padded batch
    hidden: int  # padded hidden size (per gate)
    steps: int  # padded number of steps
    batch_tile: int
    time_block: int
    vmem_bytes: int



def _vmem_bytes(bb, hp, tt, w_itemsize, save) -> int:
    f32 = 4
    outputs = 1 + (len(Residuals._fields) if save else 0)
    return (
        hp * 4 * hp * w_itemsize  # w_hh, one buffer
        + 2 * tt * bb * 4 * hp * f32  # gx blocks, double-buffered
        + 2 * outputs * tt * bb * hp * f32  # ys (+ residual) blocks
        + 2 * 5 * bb * hp * f32  # h0, c0, mask, h, c blocks
        + 2 * bb * LANES * 4  # lengths block (one lane padded to 128)
        + 2 * bb * hp * f32  # h, c scratch
        + 4 * bb * 4 * hp * f32  # in-step temporaries (gates, activations)
    )


def plan(batch: int, steps: int, hidden: int, w_itemsize: int, *, save: bool = True,
         budget: Optional[int] = VMEM_BUDGET) -> Optional[Plan]:  # fmt: skip
    """Tiles whose buffers fit ``budget`` bytes (None: no limit, for interpret mode), or None.

    The time block is the one of :data:`TIME_BLOCKS` that fits with the least
    padding of ``steps``, the largest among equals.

    >>> plan(16, 1024, 256, 4).time_block
    32
    >>> plan(8, 10, 4096, 4) is None  # w_hh alone is 256 MiB
    True
    """
    hp = round_up(hidden, LANES)
    bp = round_up(batch, SUBLANES)
    bb = bp if bp <= MAX_BATCH_TILE else BATCH_TILE
    bp = round_up(bp, bb)
    fitting = [tt for tt in TIME_BLOCKS
               if budget is None or _vmem_bytes(bb, hp, tt, w_itemsize, save) <= budget]  # fmt: skip
    if not fitting:
        return None
    tt = min(fitting, key=lambda tt: (round_up(steps, tt), -tt))  # least padding, then largest
    return Plan(bp, hp, round_up(steps, tt), bb, tt, _vmem_bytes(bb, hp, tt, w_itemsize, save))


def _w_itemsize(w_hh, compute_dtype) -> int:
    return jnp.dtype(compute_dtype or w_hh.dtype).itemsize


def tpu_unsupported(weights, xs, initial_carry=None, *, recurrent_mask=None,
                    compute_dtype=None, time_major=False) -> Optional[str]:  # fmt: skip
    """Why the TPU kernel cannot run this call, or None (decided at trace time)."""
    del initial_carry, recurrent_mask
    reason = unsupported_variant(weights)
    if reason is not None:
        return reason
    if weights.w_hh.dtype != jnp.float32:
        return f"it computes in float32 parameters, got {weights.w_hh.dtype.name}"
    steps, batch = (xs.shape[0], xs.shape[1]) if time_major else (xs.shape[1], xs.shape[0])
    hidden = weights.w_hh.shape[0]
    itemsize = _w_itemsize(weights.w_hh, compute_dtype)
    return None if plan(batch, steps, hidden, itemsize) else _too_big(hidden, itemsize)


def _too_big(hidden: int, itemsize: int) -> str:
    need = _vmem_bytes(SUBLANES, round_up(hidden, LANES), 1, itemsize, True)
    return (
        f"hidden size {hidden} needs at least {need / 2**20:.1f} MiB of VMEM "
        f"(w_hh resident), more than VMEM_BUDGET = {VMEM_BUDGET / 2**20:.0f} MiB"
    )





def _kernel(*refs, time_block, masked, ragged, save):
    """Refs: gx (TT, BB, 4H), w_hh (H, 4H), h0, c0 (BB, H), [mask (BB, H)], [lengths (BB, 1)];
    outputs ys (TT, BB, H), [six residual blocks (TT, BB, H)], h, c (BB, H); scratch h, c."""
    gx_ref, w_ref, h0_ref, c0_ref, *refs = refs
    mask_ref = refs.pop(0) if masked else None
    len_ref = refs.pop(0) if ragged else None
    ys_ref, *refs = refs
    res_refs = [refs.pop(0) for _ in Residuals._fields] if save else []
    h_ref, c_ref, h_scratch, c_scratch = refs
    block = pl.program_id(1)
    plain = LSTMWeights(w_ih=None, w_hh=None, b=None)  # lstm_pointwise reads no weights

    @pl.when(block == 0)
    def _():
        h_scratch[...] = h0_ref[...]
        c_scratch[...] = c0_ref[...]

    def step(j, carry):
        h, c = carry
        hm = h * mask_ref[...] if masked else h
        w = w_ref[...]
        gates = gx_ref[j] + jnp.dot(hm.astype(w.dtype), w, preferred_element_type=jnp.float32)
        h_new, c_new = lstm_pointwise(plain, gates, c)
        for ref, value in zip(res_refs, (*lstm_activations(gates), c, jnp.tanh(c_new))):
            ref[j] = value
        y = h_new
        if ragged:
            keep = len_ref[...] > block * time_block + j  # [BB, 1]
            h_new = jnp.where(keep, h_new, h)
            c_new = jnp.where(keep, c_new, c)
            y = jnp.where(keep, y, jnp.zeros_like(y))
        ys_ref[j] = y
        return h_new, c_new

    h, c = jax.lax.fori_loop(0, time_block, step, (h_scratch[...], c_scratch[...]))
    h_scratch[...] = h
    c_scratch[...] = c
    h_ref[...] = h
    c_ref[...] = c


def tpu_forward(w_hh, gx, h0, c0, mask, lengths, *, compute_dtype, save, interpret=False):
    """The recurrence from a precomputed projection ``gx: (T, B, 4H)`` (float32).

    Args:
      w_hh: ``(H, 4H)`` recurrent weights (float32).
      h0, c0: ``(B, H)``; mask: ``(B, H)`` or None; lengths: ``(B,)`` int or None.
      compute_dtype: the recurrent matmul's input dtype (None: float32).
      save: also return the :class:`~lstm_jax.kernels.fused.Residuals`.
      interpret: Pallas interpret mode (True, or ``pltpu.InterpretParams``).

    Returns:
      ``(ys (T, B, H), residuals or None, h (B, H), c (B, H))``.

    Raises:
      ValueError: when lowered for TPU and no time block fits :data:`VMEM_BUDGET`.
    """
    steps, batch, gates = gx.shape
    hidden = gates // 4
    cd = jnp.dtype(compute_dtype or jnp.float32)
    p = plan(batch, steps, hidden, cd.itemsize, save=save, budget=None if interpret else VMEM_BUDGET)
    if p is None:  # raised when lowered for TPU: other platforms' branches are traced too
        message = f"backend='pallas' on TPU: {_too_big(hidden, cd.itemsize)}; use backend='fused' or 'auto'."
        return lowering_error(message, forward_shapes(steps, batch, hidden, save))
    bp, hp, tp, bb, tt = p.batch, p.hidden, p.steps, p.batch_tile, p.time_block
    f32 = jnp.float32
    ragged = lengths is not None or tp != steps
    masked = mask is not None
    w = pad(pad_gates(w_hh, hidden, hp), (hp, 4 * hp)).astype(cd)
    gx = pad(pad_gates(gx.astype(f32), hidden, hp), (tp, bp, 4 * hp))
    state = lambda x: pad(x.astype(f32), (bp, hp))  # noqa: E731
    args = [gx, w, state(h0), state(c0)]
    carry_spec = pl.BlockSpec((bb, hp), lambda b, t: (b, 0))
    in_specs = [
        pl.BlockSpec((tt, bb, 4 * hp), lambda b, t: (t, b, 0)),
        pl.BlockSpec((hp, 4 * hp), lambda b, t: (0, 0), pipeline_mode=pl.Buffered(1)),
        carry_spec,
        carry_spec,
    ]
    if masked:
        args.append(state(mask))
        in_specs.append(carry_spec)
    if ragged:
        full = jnp.full((batch,), steps, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
        args.append(pad(full, (bp,))[:, None])
        in_specs.append(pl.BlockSpec((bb, 1), lambda b, t: (b, 0)))
    stack = jax.ShapeDtypeStruct((tp, bp, hp), f32)
    stack_spec = pl.BlockSpec((tt, bb, hp), lambda b, t: (t, b, 0))
    outputs = 1 + (len(Residuals._fields) if save else 0)
    carry = jax.ShapeDtypeStruct((bp, hp), f32)
    kernel = functools.partial(_kernel, time_block=tt, masked=masked, ragged=ragged, save=save)
    call = pl.pallas_call(
        kernel,
        out_shape=(stack,) * outputs + (carry, carry),
        grid=(bp // bb, tp // tt),
        in_specs=in_specs,
        out_specs=(stack_spec,) * outputs + (carry_spec, carry_spec),
        scratch_shapes=[pltpu.VMEM((bb, hp), f32), pltpu.VMEM((bb, hp), f32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary"),
            vmem_limit_bytes=min(2 * VMEM_BUDGET, p.vmem_bytes + 8 * 2**20),
        ),
        cost_estimate=pl.CostEstimate(
            flops=2 * tp * bp * hp * 4 * hp + 12 * tp * bp * hp,
            transcendentals=5 * tp * bp * hp,
            bytes_accessed=4 * (tp * bp * 4 * hp + outputs * tp * bp * hp) + w.size * cd.itemsize,
        ),
        interpret=interpret,
    )  # fmt: skip
    ys, *rest = call(*args) if interpret else platform_only("tpu", call, *args)
    *saved, h, c = rest
    trim = lambda x: x[:steps, :batch, :hidden]  # noqa: E731
    residuals = Residuals(*map(trim, saved)) if save else None
    return trim(ys), residuals, h[:batch, :hidden], c[:batch, :hidden]

