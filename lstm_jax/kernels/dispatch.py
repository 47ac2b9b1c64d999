"""The kernel table and the one dispatcher: which layer runs for ``backend=`` and cell kind.

:data:`KERNELS` has one :class:`~lstm_jax.kernels.call.KernelSpec` per
(cell kind, backend): its layer, why it cannot run a call (``why_not``), the
per-step options it takes. An explicit backend runs its kernel or raises its
``why_not`` as ``ValueError`` (cuDNN warns and runs ``scan`` instead).

:data:`AUTO` is the whole policy of ``backend="auto"``: per cell kind, the
kernel each platform runs, and under ``None`` the one for other platforms.
Where a platform's kernel declines a call (:meth:`KernelSpec.declines`: its
``auto_why_not``, or a per-step option it does not take), that platform runs
the ``None`` kernel, and where that declines too, ``"scan"``, which runs
everything. The choice is made per platform when the call is lowered
(:func:`jax.lax.platform_dependent`), not from ``jax.default_backend()``, so
an export for ``["cpu", "cuda", "tpu"]`` carries one branch per platform and
XLA keeps the one it compiles for. Kernels that share the fused backward
(a ``forward``) run inside one custom VJP (:mod:`lstm_jax.kernels.shared`);
a kernel with its own VJP is a separate branch around it.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from lstm_jax.kernels.call import Kernel, KernelSpec, LayerCall, as_layer, scan_kernel
from lstm_jax.kernels.cudnn import CUDNN
from lstm_jax.kernels.fused import FUSED
from lstm_jax.kernels.native import NATIVE_LSTM
from lstm_jax.kernels.native_gru import NATIVE_GRU
from lstm_jax.kernels.native_rnn import NATIVE_RNN
from lstm_jax.kernels.pallas import PALLAS
from lstm_jax.kernels.platform import per_platform
from lstm_jax.kernels.remat import check_remat, remat_kernel
from lstm_jax.kernels.shared import shared_vjp_layer

__all__ = ["AUTO", "BACKENDS", "KERNELS", "auto_kernel", "select_kernel", "select_layer"]

# (cell kind, backend) -> its kernel; a kernel's options are in its own module
KERNELS: dict[tuple[str, str], KernelSpec] = {
    (spec.cell, spec.backend): spec
    for spec in (
        *(KernelSpec(kind, "scan", scan_kernel, per_step=("mask", "resets")) for kind in ("lstm", "gru", "rnn")),
        FUSED, PALLAS, NATIVE_LSTM, CUDNN, NATIVE_GRU, NATIVE_RNN,
    )
}  # fmt: skip

# backend -> the cell kinds it implements (derived from KERNELS)
BACKENDS: dict[str, tuple[str, ...]] = {}
for _kind, _backend in KERNELS:
    BACKENDS[_backend] = (*BACKENDS.get(_backend, ()), _kind)

# cell kind -> {platform: backend}, None: other platforms; "scan" where all decline.
# Measurements: docs/TIMINGS.md.
AUTO: dict[str, dict[Optional[str], str]] = {
    "lstm": {
        # C++ time loop; declines an unbuilt extension, the portable C++ kernels (no AVX2,
        # e.g. ARM: 3-6x slower than "fused" for training), compute dtypes other than float32
        # and bfloat16, bfloat16 without AVX512_BF16. With AVX2 or AVX-512 faster than "fused"
        # from H = 64 to 1024 in float32, and in bfloat16: on a 2-core Zen 4, two --targets
        # runs per instruction set (default and LSTM_JAX_NATIVE_ISA=avx2; commit 0b08d6d),
        # native 1.25-2.65x "fused" in the 8 float32 cases of each AVX-512 run, 1.47-2.93x
        # in bf16; AVX2 1.03-1.94x in all 8 float32 cases of both runs (the least at H = 512
        # inference) (benchmarks/results/cpu-amd-epyc-zen4-2c/targets*). jax.export needs
        # disabled_checks for its custom calls (lstm_jax.export_safety_checks).
        "cpu": "native",
        # cuDNN (jax.experimental.rnn's call, constrained to row-major: cudnn.py) from
        # H = cudnn.AUTO_MIN_HIDDEN, "fused" below it and wherever cuDNN declines (vmap,
        # recurrent dropout, bfloat16, variants). On an H200 (jax 0.11.2) both equal scan
        # in every GPU test; their speed-ups over Flax: cudnn.AUTO_MIN_HIDDEN's comment
        # (benchmarks/results/gpu-nvidia-h200/)
        "cuda": "cudnn",
        # the Pallas TPU kernel was lowered for TPU but never compiled nor run: "fused"
        # until it is measured (backend="pallas" selects it)
        "tpu": "fused",
        None: "fused",  # measured faster than "scan" for training and inference
    },
    # native: faster than "scan" for training and inference from H = 64 to 512 (AVX2 /
    # AVX-512); declines what the LSTM's does. bfloat16 (AVX512_BF16, no AMX variant): at the
    # four native_bf16 targets, one core of a loaded Zen 4, faster than "scan" bf16 by
    # 1.2-6.4x for training and 1.1-2.2x for inference, and than its own float32 by
    # 1.06-1.22x and 1.4-1.7x (benchmarks/results/cpu-amd-epyc-zen4-2c/gru_bf16.md). One
    # exception measured: with LSTM_JAX_NATIVE_ISA=avx2 on Zen 4, inference at H = 512 ran at
    # 0.88x / 0.93x Flax's GRUCell (two runs; training there 1.16x / 1.12x); "auto" cannot
    # choose by training vs inference, so it keeps native (targets-avx2*)
    "gru": {"cpu": "native", None: "scan"},
    # native (tanh or relu; mask and resets in its loops): at (B, T, I, H) = (64, 128, 64, 256),
    # one core of a 2-core AMD EPYC Zen 4 (AVX-512) at load 12, median CPU time of 3 interleaved
    # rounds (benchmarks/kernel_timings/cpu_time.py, CELLS=rnn, taskset -c 0,
    # LSTM_JAX_NATIVE_THREADS=1): training step 53.4 ms vs "scan" 63.1 (1.18x), inference
    # 17.0 vs 20.8 ms (1.22x). Both are near this core's float32 GEMM peak (83.6 GFLOP/s, a
    # 2048^3 matmul): a step's 4.03 GFLOP take >= 48.2 ms, native runs at 90% of peak and scan
    # at 76%, so no kernel can be 1.5x faster than scan here (at most 1.31x).
    # benchmarks/results/cpu-amd-epyc-zen4-2c/rnn_native.md
    "rnn": {"cpu": "native", None: "scan"},
}


def _choose(kind: str, platform: Optional[str], call: LayerCall) -> KernelSpec:
    """The first of the platform's kernel, the other platforms' and ``scan`` that runs ``call``."""
    for backend in (AUTO[kind].get(platform), AUTO[kind][None]):
        if backend is not None and KERNELS[kind, backend].declines(call) is None:
            return KERNELS[kind, backend]
    return KERNELS[kind, "scan"]


def auto_kernel(kind: str) -> Kernel:
    """``backend="auto"`` for ``kind``: :data:`AUTO`'s kernel per platform, when lowered."""

    def run_auto(call: LayerCall):
        default = _choose(kind, None, call)
        chosen = {p: _choose(kind, p, call) for p in AUTO[kind] if p is not None}
        if default.forward is None or call.per_step():  # the shared forwards take no per-step option
            return per_platform({p: s.layer for p, s in chosen.items()}, default.layer)(call)
        forwards = {p: s.forward for p, s in chosen.items() if s.forward is not None}
        forwards[None] = default.forward

        def shared(call):
            return shared_vjp_layer(forwards, call)

        own_vjp = {p: s.layer for p, s in chosen.items() if s.forward is None}
        return per_platform(own_vjp, shared)(call)

    return run_auto


def select_kernel(backend: str, kind: str, *, remat: Union[bool, int] = False) -> Kernel:
    """The kernel for ``backend`` and cell ``kind`` (``"lstm"``, ``"gru"``, ``"rnn"``).

    Args:
      backend: ``"auto"`` or a key of :data:`BACKENDS`.
      kind: the cell kind.
      remat: False, True (checkpoint blocks of ``ceil(sqrt(T))`` steps) or a
        positive integer block size.

    Returns:
      ``kernel(call: LayerCall) -> (ys, final_carry)``.
    """
    check_remat(remat)
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be one of {('auto', *BACKENDS)}, got {backend!r}.")
    if backend == "auto":
        kernel = auto_kernel(kind)
    elif (kind, backend) in KERNELS:
        kernel = KERNELS[kind, backend].run
    else:
        raise ValueError(f"backend={backend!r} does not implement {kind}; use backend='scan'.")
    return remat_kernel(kernel, remat) if remat else kernel


def select_layer(
    backend: str,
    kind: str,
    *,
    compute_dtype: Optional[Any] = None,
    remat: Union[bool, int] = False,
):
    """:func:`select_kernel` as a function with the signature of :func:`lstm_jax.scan.scan_layer`
    (``compute_dtype``: the matmul input dtype given to the kernels; the ``scan`` backend
    reads it from the cell instead). Its ``kernel`` attribute is the kernel it runs.
    """
    return as_layer(select_kernel(backend, kind, remat=remat), compute_dtype)
