"""Layer implementations behind one signature, chosen by ``backend=``.

Every backend runs one layer in one direction with the signature of
:func:`lstm_jax.scan.scan_layer` and is tested against it.

=========  =====================  ===============================================
backend    cells                  what it is
=========  =====================  ===============================================
"scan"     lstm, gru, rnn         the reference: ``lax.scan`` + autodiff
"fused"    lstm (plain)           hand-written VJP, blocked gradient GEMMs (``fused.py``)
"pallas"   lstm (plain)           Pallas forward kernel per platform + the fused backward
"native"   lstm (plain), gru      C++ time loop through XLA's FFI, CPU (``native.py``,
                                  ``native_gru.py``); float32, and bfloat16 compute for
                                  the LSTM (AMX / AVX512_BF16)
"cudnn"    lstm (plain, float32)  ``jax.experimental.rnn`` when lowered for ``cuda``
"auto"     all                    per platform, see below; "scan" for rnn
=========  =====================  ===============================================

"Plain" means no peepholes, layer norm or projection. Rules for a variant a
backend does not implement:

* ``"auto"`` routes it to ``"scan"`` silently (always correct). Calls with
  per-step ``mask`` or ``resets`` stay on the kernels that take them
  (``"native"`` for the LSTM and GRU, ``"fused"`` for the LSTM): on CPU the
  native kernel, elsewhere ``"fused"`` for the LSTM and ``"scan"`` for the GRU.
* ``"fused"``, ``"pallas"`` and ``"native"`` raise ``ValueError`` at trace
  time (``"native"`` also off CPU, for non-float32 parameters, for a compute
  dtype other than float32 or bfloat16, for bfloat16 on a CPU without
  AVX512_BF16, and when its C++ extension was not built).
* ``"cudnn"`` warns (``RuntimeWarning``) and runs ``"scan"``: also for
  non-float32 compute, recurrent dropout, ``vmap``, a jaxlib without its CUDA
  plugin, and on platforms other than ``cuda``.
* ``resets`` or ``mask`` with ``"pallas"`` or ``"cudnn"`` raise ``ValueError``
  at trace time.
* A cell kind outside a backend's list (e.g. ``gru`` with ``"fused"``) raises
  ``ValueError`` in :func:`select_layer`.
* The GRU has one kernel, ``"native"``: explicitly it raises ``ValueError``
  like the LSTM's (non-float32, off CPU, unbuilt extension); ``"auto"`` runs it
  on CPU (``dispatch.AUTO_GRU``; faster than ``"scan"`` from H = 64 to 512,
  ``docs/TIMINGS.md``) where the CPU has AVX2 or AVX-512, and ``"scan"`` on
  other platforms, on CPUs with only the portable C++ kernels, and for every
  call it declines. Its exports need ``disabled_checks`` for the
  ``lstm_jax_native_gru_*`` custom calls as the LSTM's do.

Kernels are chosen per platform when the call is lowered, not from
``jax.default_backend()`` (``lstm_jax.kernels.dispatch``). For the plain LSTM
``"auto"`` runs ``dispatch.AUTO_LSTM[platform]`` where that kernel supports
the call, else ``"fused"``: on CPU ``"native"`` (float32, or bfloat16 where
the CPU has AVX512_BF16; it declines other compute dtypes, bfloat16 elsewhere,
an unbuilt extension, and CPUs without AVX2 (e.g. ARM), where only its
portable C++ kernels would run, measured 3-6x slower than ``"fused"``; all of
these run ``"fused"``; measurements in ``docs/TIMINGS.md``;
``jax.export`` needs ``disabled_checks`` for its custom calls).
``backend="native"`` runs the portable kernels where asked.
``"fused"`` was measured faster than ``"scan"`` for training and inference. On
``cuda`` cuDNN (by design, not measured: no GPU was available), on ``tpu``
``"fused"``: the Pallas TPU kernel has been lowered for TPU but never compiled
by libtpu nor run, so it is ``backend="pallas"`` until measured. Neither Pallas
kernel is picked by ``"auto"``.

``remat`` (False, True or a block size) wraps the chosen layer in
:func:`lstm_jax.kernels.remat.remat_layer`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Union

from lstm_jax.kernels.cudnn import cudnn_lstm_layer
from lstm_jax.kernels.dispatch import auto_gru_layer, auto_lstm_layer
from lstm_jax.kernels.fused import fused_lstm_layer, unsupported_variant
from lstm_jax.kernels.native import native_lstm_layer
from lstm_jax.kernels.native_gru import native_gru_layer
from lstm_jax.kernels.pallas import pallas_lstm_layer
from lstm_jax.kernels.remat import check_remat, remat_layer
from lstm_jax.scan import scan_layer

__all__ = ["BACKENDS", "select_layer"]

# backend name -> cell kinds it implements
BACKENDS: dict[str, tuple[str, ...]] = {
    "scan": ("lstm", "gru", "rnn"),
    "fused": ("lstm",),
    "pallas": ("lstm",),
    "native": ("lstm", "gru"),
    "cudnn": ("lstm",),
}

# (cell kind, backend) -> layer
_KERNELS = {
    ("lstm", "fused"): fused_lstm_layer,
    ("lstm", "pallas"): pallas_lstm_layer,
    ("lstm", "native"): native_lstm_layer,
    ("lstm", "cudnn"): cudnn_lstm_layer,
    ("gru", "native"): native_gru_layer,
}


# keywords every kernel takes
_KERNEL_KEYWORDS = ("seq_lengths", "reverse", "recurrent_mask", "unroll", "time_major")

# cell kind -> the per-step options "auto" keeps on a kernel (dispatch: each platform's
# kernel where it takes them, else the fused LSTM or the GRU's "scan"); any other that
# is not None sends the call to "scan", the one implementation that has them all
_AUTO_PER_STEP = {kind: ("mask", "resets", "reset_to") for kind in ("lstm", "gru")}

# (cell kind, backend) -> the per-step options its layer takes
_PER_STEP = {
    ("lstm", "fused"): ("mask", "resets"),
    ("lstm", "native"): ("mask", "resets"),
    ("gru", "native"): ("mask", "resets"),
}


def _auto_layer(kind: str, cell, weights: Any, xs, *args, compute_dtype=None, **kwargs):
    """``scan`` for peephole / layer-norm / projection LSTMs, else the platform's kernel
    for ``kind``."""
    keep = _KERNEL_KEYWORDS + _AUTO_PER_STEP[kind]
    extra = {k for k, v in kwargs.items() if k not in keep and v is not None}
    if extra or (kind == "lstm" and unsupported_variant(weights) is not None):
        return scan_layer(cell, weights, xs, *args, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k in keep}
    auto = auto_lstm_layer if kind == "lstm" else auto_gru_layer
    return auto(cell, weights, xs, *args, compute_dtype=compute_dtype, **kwargs)


def _without_per_step(backend: str, layer: Callable, takes: tuple[str, ...] = ()) -> Callable:
    """``layer``, raising a ``ValueError`` when given ``resets`` or ``mask`` and it does
    not take it (``takes``)."""

    def run(cell, weights, xs, initial_carry, *, resets=None, mask=None, reset_to=None,
            **kwargs):  # fmt: skip
        for name, value in (("resets", resets), ("mask", mask)):
            if value is not None and name not in takes:
                raise ValueError(
                    f"backend={backend!r} does not implement {name}; use backend='auto' or "
                    f"'scan', which run calls with {name}."
                )
            if value is not None:
                kwargs[name] = value
        if resets is not None and reset_to is not None:  # remat's blocks
            kwargs["reset_to"] = reset_to
        return layer(cell, weights, xs, initial_carry, **kwargs)

    run.__wrapped__ = layer
    return run


def select_layer(
    backend: str,
    kind: str,
    *,
    compute_dtype: Optional[Any] = None,
    remat: Union[bool, int] = False,
) -> Callable:
    """The layer function for ``backend`` and cell ``kind`` (``"lstm"``, ``"gru"``, ``"rnn"``).

    Args:
      backend: ``"auto"`` or a key of :data:`BACKENDS`.
      kind: the cell kind.
      compute_dtype: matmul input dtype, bound into kernels that need it (the
        ``scan`` backend reads it from the cell instead).
      remat: False, True (checkpoint blocks of ``ceil(sqrt(T))`` steps) or a
        positive integer block size.

    Returns:
      A function with the signature of :func:`lstm_jax.scan.scan_layer`.

    >>> select_layer("auto", "rnn") is scan_layer
    True
    """
    check_remat(remat)
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be one of {('auto', *BACKENDS)}, got {backend!r}.")
    if backend != "auto" and kind not in BACKENDS[backend]:
        raise ValueError(f"backend={backend!r} does not implement {kind}; use backend='scan'.")
    if kind == "rnn" or backend == "scan":
        layer = scan_layer
    elif backend == "auto":
        layer = functools.partial(_auto_layer, kind, compute_dtype=compute_dtype)
    else:
        layer = _without_per_step(
            backend, functools.partial(_KERNELS[kind, backend], compute_dtype=compute_dtype),
            _PER_STEP.get((kind, backend), ()),
        )
    if remat:
        layer = remat_layer(layer, remat)
    return layer
