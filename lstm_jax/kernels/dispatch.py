"""Which LSTM kernel runs on which platform, decided when the call is lowered.

A kernel is chosen per platform with :func:`jax.lax.platform_dependent`, not
from ``jax.default_backend()`` at trace time, so one jitted or exported
function takes the right kernel wherever it is compiled: an export for
``["cpu", "cuda", "tpu"]`` carries one branch per platform and XLA keeps only
the one it compiles for.

:data:`AUTO_LSTM` is the whole policy of ``backend="auto"`` for the plain
LSTM: one entry per platform naming a kernel of :data:`KERNELS`. Each kernel
says at trace time whether it can run a call (shapes, dtypes, options); where
it cannot, that platform runs :data:`FALLBACK` instead.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from lstm_jax.kernels.cudnn import cudnn_kernel_layer, cudnn_unsupported
from lstm_jax.kernels.fused import fused_lstm_layer
from lstm_jax.kernels.pallas import tpu_lstm_layer
from lstm_jax.kernels.pallas_tpu import tpu_unsupported
from lstm_jax.kernels.platform import per_platform

__all__ = ["AUTO_LSTM", "FALLBACK", "KERNELS", "Kernel", "auto_lstm_layer"]


class Kernel(NamedTuple):
    """A layer function and its trace-time check.

    ``layer`` has the signature of :func:`lstm_jax.scan.scan_layer` plus
    ``compute_dtype``. ``unsupported(weights, xs, initial_carry, *,
    recurrent_mask, compute_dtype, time_major)`` returns why it cannot run a
    (plain LSTM) call, or None.
    """

    layer: Callable
    unsupported: Optional[Callable] = None


KERNELS: dict[str, Kernel] = {
    "fused": Kernel(fused_lstm_layer),
    "cudnn": Kernel(cudnn_kernel_layer, cudnn_unsupported),
    "pallas_tpu": Kernel(tpu_lstm_layer, tpu_unsupported),
}

# platform -> the kernel "auto" runs there (where that kernel supports the call).
# cuDNN and the TPU kernel are chosen by design, not measured: no GPU or TPU was
# available to this project (see lstm_jax/kernels/ACCELERATORS.md).
AUTO_LSTM: dict[str, str] = {"cpu": "fused", "cuda": "cudnn", "tpu": "pallas_tpu"}
FALLBACK = "fused"  # other platforms (e.g. rocm) and calls a platform's kernel declines


def auto_lstm_layer(cell, weights: Any, xs, initial_carry, *, seq_lengths=None,
                    reverse: bool = False, recurrent_mask=None, unroll: int = 1,
                    time_major: bool = False, compute_dtype=None):  # fmt: skip
    """The plain LSTM layer of ``backend="auto"``: :data:`AUTO_LSTM`'s kernel per platform.

    Arguments as :func:`lstm_jax.scan.scan_layer`; peephole / layer-norm /
    projection weights are routed to ``scan`` by the caller.
    """
    static = dict(reverse=reverse, unroll=unroll, time_major=time_major, compute_dtype=compute_dtype)
    check = dict(recurrent_mask=recurrent_mask, compute_dtype=compute_dtype, time_major=time_major)

    def branch(name: str) -> Callable:
        def run(weights, xs, initial_carry, seq_lengths, recurrent_mask):
            return KERNELS[name].layer(
                cell, weights, xs, initial_carry, seq_lengths=seq_lengths,
                recurrent_mask=recurrent_mask, **static,
            )  # fmt: skip

        return run

    chosen = {}
    for platform, name in AUTO_LSTM.items():
        unsupported = KERNELS[name].unsupported
        if unsupported is not None and unsupported(weights, xs, initial_carry, **check) is not None:
            name = FALLBACK
        chosen[platform] = name
    functions = {name: branch(name) for name in {*chosen.values(), FALLBACK}}
    return per_platform(
        (weights, xs, initial_carry, seq_lengths, recurrent_mask),
        {platform: functions[name] for platform, name in chosen.items()},
        functions[FALLBACK],
    )
