"""Forward kernels that share the fused backward, chosen per platform inside one custom VJP.

The fused XLA kernel (``fused.py``) and the Pallas kernels (``pallas_tpu.py``,
``pallas_gpu.py``) all save the same :class:`~lstm_jax.kernels.fused.Residuals`,
so they differ only in their forward pass. :func:`shared_vjp_layer` runs one
``jax.custom_vjp`` whose forward is chosen per platform when the call is
lowered (:func:`lstm_jax.kernels.platform.per_platform`) and whose backward is
the fused kernel's: differentiating it never differentiates a platform
conditional. Tracing a 2-layer bidirectional training step of ``"auto"`` took
0.94 s with a conditional around whole layers and 0.43 s with this (0.19 s for
``"fused"`` alone; 2-core CPU, load average ~13).

A *forward* here has the signature ``forward(w_ih, b, w_hh, xs, h0, c0, mask,
valid, lengths, *, compute_dtype, unroll, save) -> (ys, residuals or None, h,
c)`` over time-major ``xs: (T, B, I)``.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
from lstm_jax.cells import lstm_input_projection
from lstm_jax.kernels import fused
from lstm_jax.kernels.call import LayerCall
from lstm_jax.kernels.platform import per_platform
from lstm_jax.params import LSTMWeights
from lstm_jax.sequence import over_time

__all__ = ["projected", "shared_vjp_layer"]


def _project(w_ih, b, xs, compute_dtype):
    """The input projection of every step, ``(T, B, 4H)``, as one GEMM before a kernel."""
    weights = LSTMWeights(w_ih=w_ih, w_hh=None, b=b)
    project = jax.vmap(jax.vmap(lambda x: lstm_input_projection(weights, x, compute_dtype=compute_dtype)))
    return project(xs)


@functools.lru_cache(maxsize=None)
def projected(recurrence: Callable) -> Callable:
    """A forward from ``recurrence(w_hh, gx, h0, c0, mask, lengths, *, compute_dtype, save)``,
    which starts from the hoisted projection ``gx: (T, B, 4H)`` (the Pallas kernels)."""

    def forward(w_ih, b, w_hh, xs, h0, c0, mask, valid, lengths, *, compute_dtype, unroll, save):
        if xs.shape[1] == 0:  # an empty batch has no tiles: the fused forward's empty results
            return fused.fused_forward(w_ih, b, w_hh, xs, h0, c0, mask, valid, lengths,
                                 compute_dtype=compute_dtype, unroll=unroll, save=save)  # fmt: skip
        del valid, unroll
        gx = _project(w_ih, b, xs, compute_dtype)
        return recurrence(w_hh, gx, h0, c0, mask, lengths, compute_dtype=compute_dtype, save=save)

    return forward


def _forward(forwards, compute_dtype, unroll, save, args):
    """The forward of the platform this is lowered for; ``forwards`` is ``((platform, fn), ...)``
    with ``None`` for the default."""
    functions = {}

    def branch(fn):  # one closure per distinct forward, so platforms sharing one share a branch
        if fn not in functions:
            functions[fn] = lambda *a: fn(*a, compute_dtype=compute_dtype, unroll=unroll, save=save)
        return functions[fn]

    table = dict(forwards)
    default = branch(table.pop(None))
    return per_platform({p: branch(fn) for p, fn in table.items()}, default)(*args)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3))
def _differentiable_forward(forwards, compute_dtype, unroll, save, args):
    """:func:`_forward`, with forward-mode tangents from the fused forward.

    ``pallas_call`` has no usable JVP rule, and ``jax.hessian`` / ``jacfwd`` of
    the custom VJP push tangents through the forward pass; every platform's
    forward computes the same function as the fused one, which is plain JAX.
    """
    return _forward(forwards, compute_dtype, unroll, save, args)


@_differentiable_forward.defjvp
def _differentiable_forward_jvp(forwards, compute_dtype, unroll, save, primals, tangents):
    del forwards
    ((w_ih, b, w_hh, xs, h0, c0, mask, valid, lengths),) = primals
    (tangents,) = tangents

    def reference(w_ih, b, w_hh, xs, h0, c0, mask):
        return fused.fused_forward(
            w_ih, b, w_hh, xs, h0, c0, mask, valid, lengths,
            compute_dtype=compute_dtype, unroll=unroll, save=save,
        )  # fmt: skip

    return jax.jvp(reference, (w_ih, b, w_hh, xs, h0, c0, mask), tuple(tangents[:7]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _recurrence(forwards, compute_dtype, unroll, w_ih, b, w_hh, xs, h0, c0, mask, valid, lengths):
    args = (w_ih, b, w_hh, xs, h0, c0, mask, valid, lengths)
    ys, _, h, c = _differentiable_forward(forwards, compute_dtype, unroll, False, args)
    return ys, h, c


def _recurrence_fwd(forwards, compute_dtype, unroll, w_ih, b, w_hh, xs, h0, c0, mask, valid, lengths):
    args = (w_ih, b, w_hh, xs, h0, c0, mask, valid, lengths)
    ys, saved, h, c = _differentiable_forward(forwards, compute_dtype, unroll, True, args)
    return (ys, h, c), (w_ih, w_hh, xs, h0, mask, valid, ys, saved)


def _recurrence_bwd(forwards, compute_dtype, unroll, residuals, cotangents):
    del forwards
    return (*fused.recurrence_bwd(compute_dtype, unroll, residuals, cotangents), None)  # none for lengths


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def shared_vjp_layer(forwards: dict[Optional[str], Callable], call: LayerCall):
    """One plain LSTM layer: ``forwards[platform]`` (``forwards[None]`` elsewhere) and the fused
    backward. The caller has checked that ``call.weights`` are a plain LSTM's and that the
    call has no per-step options."""
    table = tuple(sorted(forwards.items(), key=lambda item: item[0] or ""))
    weights, options = call.weights, call.options
    h0, c0 = call.initial_carry

    def run(xs, valid):
        ys, h, c = _recurrence(
            table, options.compute_dtype, options.unroll, weights.w_ih, weights.b, weights.w_hh,
            xs, h0, c0, options.recurrent_mask, valid, options.seq_lengths,
        )  # fmt: skip
        return ys, (h, c)

    return over_time(run, call.xs, seq_lengths=options.seq_lengths, reverse=options.reverse,
                     time_major=options.time_major)  # fmt: skip
