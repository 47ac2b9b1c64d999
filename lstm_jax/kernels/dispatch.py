"""Which LSTM or GRU kernel runs on which platform, decided when the call is lowered.

A kernel is chosen per platform with :func:`jax.lax.platform_dependent`, not
from ``jax.default_backend()`` at trace time, so one jitted or exported
function takes the right kernel wherever it is compiled: an export for
``["cpu", "cuda", "tpu"]`` carries one branch per platform and XLA keeps only
the one it compiles for.

:data:`AUTO_LSTM` is the whole policy of ``backend="auto"`` for the plain
LSTM: one entry per platform naming a kernel of :data:`KERNELS`. Each kernel
says at trace time whether it can run a call (shapes, dtypes, options); where
it cannot, that platform runs :data:`FALLBACK` instead. Kernels that share the
fused backward (fused, the Pallas TPU kernel) are chosen inside one custom
VJP (:mod:`lstm_jax.kernels.shared`); a kernel with its own VJP (cuDNN) is a
separate branch around it.

:data:`AUTO_GRU` does the same for the GRU, with ``"scan"`` wherever
its kernel is absent or declines the call.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from lstm_jax.kernels.cudnn import cudnn_kernel_layer, cudnn_unsupported
from lstm_jax.kernels.fused import fused_lstm_layer
from lstm_jax.kernels.native import native_auto_unsupported, native_kernel_layer
from lstm_jax.kernels.native_gru import native_gru_auto_unsupported, native_gru_kernel_layer
from lstm_jax.kernels.pallas import TPU_FORWARD
from lstm_jax.kernels.pallas_tpu import tpu_unsupported
from lstm_jax.kernels.platform import per_platform
from lstm_jax.kernels.shared import fused_forward, shared_vjp_layer
from lstm_jax.scan import scan_layer

__all__ = ["AUTO_GRU", "AUTO_LSTM", "FALLBACK", "GRU_KERNELS", "KERNELS", "Kernel",
           "auto_gru_layer", "auto_lstm_layer"]  # fmt: skip


class Kernel(NamedTuple):
    """A kernel "auto" can choose: its layer function, or a forward sharing the fused VJP.

    ``layer`` has the signature of :func:`lstm_jax.scan.scan_layer` plus
    ``compute_dtype`` (a kernel with its own VJP, e.g. cuDNN). ``forward`` is a
    forward of :mod:`lstm_jax.kernels.shared` instead: all platforms whose
    choice has one run inside a single custom VJP with the fused backward.
    ``unsupported(weights, xs, initial_carry, *, recurrent_mask, compute_dtype,
    time_major)`` returns why it cannot run a plain-LSTM call, or None.
    ``per_step``: the per-step options its ``layer`` takes (``"mask"``,
    ``"resets"``); a call with others runs :func:`fused_lstm_layer` (the LSTM's
    :data:`FALLBACK`, which takes both) or ``scan`` (the GRU's).
    """

    layer: Optional[Callable] = None
    unsupported: Optional[Callable] = None
    forward: Optional[Callable] = None
    per_step: tuple[str, ...] = ()


KERNELS: dict[str, Kernel] = {
    "fused": Kernel(forward=fused_forward),
    "cudnn": Kernel(layer=cudnn_kernel_layer, unsupported=cudnn_unsupported),
    "native": Kernel(layer=native_kernel_layer, unsupported=native_auto_unsupported,
                     per_step=("mask", "resets")),
    "pallas_tpu": Kernel(forward=TPU_FORWARD, unsupported=tpu_unsupported),
}

# platform -> the kernel "auto" runs there (where that kernel supports the call).
# CPU: "native" (C++ time loop; it declines an unbuilt extension, CPUs where
# only its portable C++ kernels run (no AVX2, e.g. ARM; measured 3-6x slower
# than "fused" for training), compute dtypes other than float32 and bfloat16,
# and bfloat16 on CPUs without AVX512_BF16, which then run "fused"): with
# AVX2 or AVX-512, faster than "fused" from H = 64 to H = 1024 in float32, and
# in bfloat16 at the four CPU targets (docs/TIMINGS.md, native section). Its custom
# calls have no compatibility guarantee, so jax.export of an "auto" LSTM on CPU
# needs disabled_checks for them.
# cuDNN is chosen by design, not measured: no GPU or TPU was available to this
# project (see docs/ACCELERATORS.md). It is JAX's own primitive, which
# Keras also routes its JAX LSTM to. Our Pallas TPU kernel has been lowered for
# TPU but never compiled by libtpu nor run, so TPU users get "fused" by default
# until it is measured there (backend="pallas" selects it).
AUTO_LSTM: dict[str, str] = {"cpu": "native", "cuda": "cudnn", "tpu": "fused"}
FALLBACK = "fused"  # other platforms (e.g. rocm) and calls a platform's kernel declines


def auto_lstm_layer(cell, weights: Any, xs, initial_carry, *, seq_lengths=None,
                    reverse: bool = False, recurrent_mask=None, unroll: int = 1,
                    time_major: bool = False, mask=None, resets=None, reset_to=None,
                    compute_dtype=None):  # fmt: skip
    """The plain LSTM layer of ``backend="auto"``: :data:`AUTO_LSTM`'s kernel per platform.

    Arguments as :func:`lstm_jax.scan.scan_layer`; peephole / layer-norm /
    projection weights are routed to ``scan`` by the caller.
    """
    check = dict(recurrent_mask=recurrent_mask, compute_dtype=compute_dtype, time_major=time_major)
    chosen = {}
    for platform, name in AUTO_LSTM.items():
        unsupported = KERNELS[name].unsupported
        if unsupported is not None and unsupported(weights, xs, initial_carry, **check) is not None:
            name = FALLBACK
        chosen[platform] = name
    per_step = _per_step(mask, resets, reset_to)
    if per_step:
        return _per_step_lstm_layer(cell, weights, xs, initial_carry, chosen, per_step,
                                    seq_lengths=seq_lengths, reverse=reverse,
                                    recurrent_mask=recurrent_mask, unroll=unroll,
                                    time_major=time_major, compute_dtype=compute_dtype)  # fmt: skip
    forwards = {p: KERNELS[n].forward for p, n in chosen.items() if KERNELS[n].forward is not None}
    forwards[None] = KERNELS[FALLBACK].forward
    kwargs = dict(reverse=reverse, unroll=unroll, time_major=time_major, compute_dtype=compute_dtype)

    def shared(weights, xs, initial_carry, seq_lengths, recurrent_mask):
        return shared_vjp_layer(forwards, weights, xs, initial_carry, seq_lengths=seq_lengths,
                                recurrent_mask=recurrent_mask, **kwargs)  # fmt: skip

    def own_vjp(name: str) -> Callable:
        def run(weights, xs, initial_carry, seq_lengths, recurrent_mask):
            return KERNELS[name].layer(cell, weights, xs, initial_carry, seq_lengths=seq_lengths,
                                       recurrent_mask=recurrent_mask, **kwargs)  # fmt: skip

        return run

    others = {p: own_vjp(n) for p, n in chosen.items() if KERNELS[n].forward is None}
    return per_platform((weights, xs, initial_carry, seq_lengths, recurrent_mask), others, shared)


def _per_step(mask, resets, reset_to) -> dict[str, Any]:
    """The per-step options given (``reset_to`` only with ``resets``), by name."""
    per_step = {k: v for k, v in (("mask", mask), ("resets", resets)) if v is not None}
    if resets is not None and reset_to is not None:
        per_step["reset_to"] = reset_to
    return per_step


def _per_step_lstm_layer(cell, weights, xs, initial_carry, chosen, per_step, *, seq_lengths,
                         recurrent_mask, **kwargs):  # fmt: skip
    """``auto_lstm_layer`` of a call with ``per_step`` options (``mask``, ``resets`` and its
    ``reset_to``): each platform's chosen kernel where it takes them, else
    :func:`fused_lstm_layer` (the shared-VJP forwards take none)."""
    names = tuple(per_step)

    def branch(layer):
        def run(weights, xs, initial_carry, seq_lengths, recurrent_mask, *values):
            return layer(cell, weights, xs, initial_carry, seq_lengths=seq_lengths,
                         recurrent_mask=recurrent_mask, **dict(zip(names, values)), **kwargs)  # fmt: skip

        return run

    wanted = set(names) - {"reset_to"}
    layers = {p: branch(KERNELS[n].layer) for p, n in chosen.items()
              if KERNELS[n].layer is not None and wanted <= set(KERNELS[n].per_step)}  # fmt: skip
    args = (weights, xs, initial_carry, seq_lengths, recurrent_mask, *per_step.values())
    return per_platform(args, layers, branch(fused_lstm_layer))


GRU_KERNELS: dict[str, Kernel] = {
    "native": Kernel(layer=native_gru_kernel_layer, unsupported=native_gru_auto_unsupported,
                     per_step=("mask", "resets")),
}

# platform -> the GRU kernel "auto" runs there (where it supports the call);
# "scan" on other platforms and for calls it declines. CPU: "native" (C++ time
# loop; it declines non-float32 calls, an unbuilt extension and CPUs where only
# its portable C++ kernels run, as the LSTM's): with AVX2 or AVX-512, faster
# than "scan" for training and inference from H = 64 to 512 (docs/TIMINGS.md, native
# GRU section and session 4).
AUTO_GRU: dict[str, str] = {"cpu": "native"}


def auto_gru_layer(cell, weights: Any, xs, initial_carry, *, seq_lengths=None,
                   reverse: bool = False, recurrent_mask=None, unroll: int = 1,
                   time_major: bool = False, mask=None, resets=None, reset_to=None,
                   compute_dtype=None):  # fmt: skip
    """The plain GRU layer of ``backend="auto"``: :data:`AUTO_GRU`'s kernel per platform,
    ``scan`` elsewhere. Arguments as :func:`lstm_jax.scan.scan_layer` (``mask``, ``resets``
    and ``reset_to`` included)."""
    check = dict(recurrent_mask=recurrent_mask, compute_dtype=compute_dtype, time_major=time_major)
    kwargs = dict(reverse=reverse, unroll=unroll, time_major=time_major)
    per_step = _per_step(mask, resets, reset_to)
    names = tuple(per_step)

    def branch(layer):
        def run(weights, xs, initial_carry, seq_lengths, recurrent_mask, *values):
            return layer(cell, weights, xs, initial_carry, seq_lengths=seq_lengths,
                         recurrent_mask=recurrent_mask, **dict(zip(names, values)),
                         **kwargs)  # fmt: skip

        return run

    kernels = {}
    for platform, name in AUTO_GRU.items():
        kernel = GRU_KERNELS[name]
        if not set(names) - {"reset_to"} <= set(kernel.per_step):
            continue
        if kernel.unsupported(weights, xs, initial_carry, **check) is None:
            kernels[platform] = branch(kernel.layer)
    args = (weights, xs, initial_carry, seq_lengths, recurrent_mask, *per_step.values())
    return per_platform(args, kernels, branch(scan_layer))
