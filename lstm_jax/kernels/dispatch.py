"""Which LSTM kernel runs on which platform, decided when the call is lowered.

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
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from lstm_jax.kernels.cudnn import cudnn_kernel_layer, cudnn_unsupported
from lstm_jax.kernels.native import native_auto_unsupported, native_kernel_layer
from lstm_jax.kernels.pallas import TPU_FORWARD
from lstm_jax.kernels.pallas_tpu import tpu_unsupported
from lstm_jax.kernels.platform import per_platform
from lstm_jax.kernels.shared import fused_forward, shared_vjp_layer

__all__ = ["AUTO_LSTM", "FALLBACK", "KERNELS", "Kernel", "auto_lstm_layer"]


class Kernel(NamedTuple):
    """A kernel "auto" can choose: its layer function, or a forward sharing the fused VJP.

    ``layer`` has the signature of :func:`lstm_jax.scan.scan_layer` plus
    ``compute_dtype`` (a kernel with its own VJP, e.g. cuDNN). ``forward`` is a
    forward of :mod:`lstm_jax.kernels.shared` instead: all platforms whose
    choice has one run inside a single custom VJP with the fused backward.
    ``unsupported(weights, xs, initial_carry, *, recurrent_mask, compute_dtype,
    time_major)`` returns why it cannot run a plain-LSTM call, or None.
    """

    layer: Optional[Callable] = None
    unsupported: Optional[Callable] = None
    forward: Optional[Callable] = None


KERNELS: dict[str, Kernel] = {
    "fused": Kernel(forward=fused_forward),
    "cudnn": Kernel(layer=cudnn_kernel_layer, unsupported=cudnn_unsupported),
    "native": Kernel(layer=native_kernel_layer, unsupported=native_auto_unsupported),
    "pallas_tpu": Kernel(forward=TPU_FORWARD, unsupported=tpu_unsupported),
}

# platform -> the kernel "auto" runs there (where that kernel supports the call).
# CPU: "native" (C++ time loop; it declines an unbuilt extension, compute
# dtypes other than float32 and bfloat16, and bfloat16 on CPUs without
# AVX512_BF16, which then run "fused"): faster than "fused" from H = 64 to
# H = 1024 in float32, and in bfloat16 at the four CPU targets (TIMINGS.md,
# native section). Its custom calls have no compatibility
# guarantee, so jax.export of an "auto" LSTM on CPU needs disabled_checks for them.
# cuDNN is chosen by design, not measured: no GPU or TPU was available to this
# project (see lstm_jax/kernels/ACCELERATORS.md). It is JAX's own primitive, which
# Keras also routes its JAX LSTM to. Our Pallas TPU kernel has been lowered for
# TPU but never compiled by libtpu nor run, so TPU users get "fused" by default
# until it is measured there (backend="pallas" selects it).
AUTO_LSTM: dict[str, str] = {"cpu": "native", "cuda": "cudnn", "tpu": "fused"}
FALLBACK = "fused"  # other platforms (e.g. rocm) and calls a platform's kernel declines


def auto_lstm_layer(cell, weights: Any, xs, initial_carry, *, seq_lengths=None,
                    reverse: bool = False, recurrent_mask=None, unroll: int = 1,
                    time_major: bool = False, compute_dtype=None):  # fmt: skip
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
