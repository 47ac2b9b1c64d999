"""The LSTM forward time loop as one Pallas GPU (Triton) kernel.

One program (CUDA thread block) per tile of :data:`BATCH_TILE` sequences runs
all steps in order. Nothing of size ``T`` or ``H x 4H`` is held on chip: per
step and per chunk of :data:`TILE` hidden units the program accumulates that
chunk's four gates, ``h[:, k] @ w_hh[k, chunk]`` with ``w_hh``'s columns
stored chunk-major (``[chunk][gate][unit]``, so one dot yields all four), over
``TILE``-wide slices ``k`` of ``h`` (``w_hh`` tiles stream from global memory, where the L2 cache
keeps them across steps), adds the projection ``gx[t]`` (computed before the
kernel as one GEMM), applies :func:`lstm_jax.cells.lstm_pointwise` and writes
the outputs. ``h`` lives in a two-slot global buffer (read slot ``t % 2``,
write the other) and ``c`` in a one-slot buffer, with a block barrier between
steps. Shared memory holds only the operand tiles of one ``k`` slice: see
:func:`smem_bytes`, checked against :data:`MAX_SMEM_BYTES` before lowering.

Shapes are padded for Triton (power-of-two tiles, dot operands at least 16
wide): the batch to a multiple of :data:`BATCH_TILE`, each gate's hidden size
to a multiple of :data:`TILE`, with zero weights so padded units stay zero.

Status: numerics are the TPU kernel's design and tested in Pallas interpret
mode only through it; this kernel's Triton lowering is tested with
``jax.export(..., platforms=["cuda"])`` at (16, 1024, 256, 256) and
(64, 512, 128, 128). It has NOT been compiled by XLA's Triton pipeline or run
on a GPU in this project (none was available), and one thread block per 16
sequences leaves most of a large GPU idle at small batch, so
``backend="auto"`` never picks it; it is ``backend="pallas"`` on ``cuda``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

from lstm_jax.cells import lstm_activations, lstm_pointwise
from lstm_jax.kernels.fused import Residuals
from lstm_jax.kernels.platform import lowering_error, platform_only
from lstm_jax.kernels.tiling import forward_shapes, pad, pad_gates, round_up
from lstm_jax.params import LSTMWeights

__all__ = ["BATCH_TILE", "TILE", "MAX_SMEM_BYTES", "smem_bytes", "gpu_forward"]

BATCH_TILE = 16  # sequences per program (Triton's dot needs >= 16 rows)
TILE = 64  # hidden units per chunk and per k slice
NUM_STAGES = 2  # Triton's software pipelining of the k loop
NUM_WARPS = 4
MAX_SMEM_BYTES = 232448  # opt-in shared memory per block on an H100 (227 KiB)
MAX_ELEMENTS = 2**31 - 1  # Triton's pointer offsets are int32


def smem_bytes(itemsize: int) -> int:
    """Shared memory for the dot operands of one k slice (``h`` tile and ``w_hh`` tile), over the pipeline stages."""
    return NUM_STAGES * (BATCH_TILE * TILE + TILE * 4 * TILE) * itemsize


def _kernel(gx_ref, w_ref, h0_ref, c0_ref, mask_ref, len_ref, ys_ref, *refs,
            steps, masked, save, barrier):  # fmt: skip
    """gx (T, B, 4H), w (H, 4H), h0/c0/mask (B, H), lengths (B,); outputs ys and residuals
    (T, B, H), h/c (B, H), and the h ping-pong (2, B, H) / c (B, H) buffers."""
    res_refs = refs[: len(Residuals._fields)] if save else ()
    h_ref, c_ref, hbuf, cbuf = refs[len(res_refs) :]
    hidden = w_ref.shape[0]
    chunks = hidden // TILE
    rows = pl.ds(pl.program_id(0) * BATCH_TILE, BATCH_TILE)
    lengths = len_ref[rows][:, None]  # [BB, 1]
    plain = LSTMWeights(w_ih=None, w_hh=None, b=None)
    precision = jax.lax.Precision.HIGHEST if w_ref.dtype == jnp.float32 else None

    def init(j, _):
        cols = pl.ds(j * TILE, TILE)
        hbuf[0, rows, cols] = h0_ref[rows, cols]
        cbuf[rows, cols] = c0_ref[rows, cols]

    jax.lax.fori_loop(0, chunks, init, None)
    if barrier:  # not in interpret mode, which runs one program at a time
        pltr.debug_barrier()

    def step(t, _):
        read = jax.lax.rem(t, 2)  # t >= 0; jnp's % lowers to a signed rule Triton rejects
        write = 1 - read
        keep = lengths > t

        def chunk(j, _):
            gate_cols = pl.ds(j * 4 * TILE, 4 * TILE)  # chunk j's i, f, g, o columns

            def k_slice(k, acc):
                ks = pl.ds(k * TILE, TILE)
                h = hbuf[read, rows, ks]
                if masked:
                    h = h * mask_ref[rows, ks]
                return acc + jnp.dot(h.astype(w_ref.dtype), w_ref[ks, gate_cols],
                                     precision=precision, preferred_element_type=jnp.float32)  # fmt: skip

            zeros = jnp.zeros((BATCH_TILE, 4 * TILE), jnp.float32)
            gates = jax.lax.fori_loop(0, chunks, k_slice, zeros) + gx_ref[t, rows, gate_cols]
            cols = pl.ds(j * TILE, TILE)
            c_prev = cbuf[rows, cols]
            h_prev = hbuf[read, rows, cols]
            h_new, c_new = lstm_pointwise(plain, gates, c_prev)
            for ref, value in zip(res_refs, (*lstm_activations(gates), c_prev, jnp.tanh(c_new))):
                ref[t, rows, cols] = value
            ys_ref[t, rows, cols] = jnp.where(keep, h_new, 0.0)
            hbuf[write, rows, cols] = jnp.where(keep, h_new, h_prev)
            cbuf[rows, cols] = jnp.where(keep, c_new, c_prev)

        jax.lax.fori_loop(0, chunks, chunk, None)
        if barrier:
            pltr.debug_barrier()  # step t's h and c are visible to every thread before step t + 1

    jax.lax.fori_loop(0, steps, step, None)

    def final(j, _):
        cols = pl.ds(j * TILE, TILE)
        h_ref[rows, cols] = hbuf[steps % 2, rows, cols]
        c_ref[rows, cols] = cbuf[rows, cols]

    jax.lax.fori_loop(0, chunks, final, None)


def _chunk_major(x, hidden: int):
    """Reorder a padded ``4H`` last axis from gate-major to chunk-major: ``[chunk][gate][TILE]``."""
    chunks = hidden // TILE
    x = x.reshape(*x.shape[:-1], 4, chunks, TILE)
    return jnp.swapaxes(x, -3, -2).reshape(*x.shape[:-3], 4 * hidden)


def gpu_forward(w_hh, gx, h0, c0, mask, lengths, *, compute_dtype, save, interpret=False):
    """The recurrence from a precomputed projection ``gx: (T, B, 4H)``; as :func:`~lstm_jax.kernels.pallas_tpu.tpu_forward`.

    Raises:
      ValueError: when lowered for cuda (at once in interpret mode) and the
        tiles' shared memory exceeds :data:`MAX_SMEM_BYTES` or a padded array
        has more elements than Triton's int32 offsets reach.
    """
    steps, batch, gates = gx.shape
    hidden = gates // 4
    cd = jnp.dtype(compute_dtype or jnp.float32)
    bp, hp = round_up(batch, BATCH_TILE), round_up(hidden, TILE)
    need = smem_bytes(max(cd.itemsize, 4))
    message = None
    if need > MAX_SMEM_BYTES:
        message = (f"tiles need {need} bytes of shared memory, more than "
                   f"MAX_SMEM_BYTES = {MAX_SMEM_BYTES}")  # fmt: skip
    elif steps * bp * 4 * hp > MAX_ELEMENTS:
        message = (f"the padded projection has {steps * bp * 4 * hp} elements, more than "
                   f"Triton's int32 offsets reach ({MAX_ELEMENTS})")  # fmt: skip
    if message is not None:  # raised when lowered for cuda: other platforms' branches are traced too
        message = f"backend='pallas' on GPU: {message}; use backend='fused' or 'auto'."
        if interpret:
            raise ValueError(message)
        return lowering_error(message, forward_shapes(steps, batch, hidden, save))
    f32 = jnp.float32
    state = lambda x: pad(x.astype(f32), (bp, hp))  # noqa: E731
    full = jnp.full((batch,), steps, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
    args = (
        _chunk_major(pad(pad_gates(gx.astype(f32), hidden, hp), (steps, bp, 4 * hp)), hp),
        _chunk_major(pad(pad_gates(w_hh, hidden, hp), (hp, 4 * hp)), hp).astype(cd),
        state(h0),
        state(c0),
        state(jnp.ones_like(h0) if mask is None else mask),
        pad(full, (bp,)),
    )
    stack = jax.ShapeDtypeStruct((steps, bp, hp), f32)
    carry = jax.ShapeDtypeStruct((bp, hp), f32)
    outputs = 1 + (len(Residuals._fields) if save else 0)
    out_shape = (stack,) * outputs + (carry, carry, jax.ShapeDtypeStruct((2, bp, hp), f32), carry)
    kernel = functools.partial(
        _kernel, steps=steps, masked=mask is not None, save=save, barrier=not interpret
    )
    call = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(bp // BATCH_TILE,),
        compiler_params=pltr.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES),
        interpret=interpret,
    )  # fmt: skip
    ys, *rest = call(*args) if interpret else platform_only("cuda", call, *args)
    *saved, h, c, _, _ = rest
    trim = lambda x: x[:, :batch, :hidden]  # noqa: E731
    residuals = Residuals(*map(trim, saved)) if save else None
    return trim(ys), residuals, h[:batch, :hidden], c[:batch, :hidden]
