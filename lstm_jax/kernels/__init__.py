"""Layer implementations behind one signature, chosen by ``backend=``.

Every backend runs one layer in one direction with the signature of
:func:`lstm_jax.scan.scan_layer` and is tested against it.

=========  =====================  ===============================================
backend    cells                  what it is
=========  =====================  ===============================================
"scan"     lstm, gru, rnn         the reference: ``lax.scan`` + autodiff
"fused"    lstm (plain)           hand-written VJP, blocked gradient GEMMs (``fused.py``)
"pallas"   lstm (plain)           Pallas forward kernel + the fused backward
"native"   lstm (plain, float32)  C++ time loop through XLA's FFI, CPU (``native.py``)
"cudnn"    lstm (plain, float32)  ``jax.experimental.rnn`` on NVIDIA GPUs
"auto"     all                    "native" on CPU where it applies and is built,
                                  else "fused" where it applies, else "scan"
=========  =====================  ===============================================

"Plain" means no peepholes, layer norm or projection. Rules for a variant a
backend does not implement:

* ``"auto"`` routes it to ``"scan"`` silently (always correct).
* ``"fused"``, ``"pallas"`` and ``"native"`` raise ``ValueError`` at trace
  time (``"native"`` also off CPU, for non-float32 parameters or compute dtype,
  and when its C++ extension was not built).
* ``"cudnn"`` warns (``RuntimeWarning``) and runs ``"scan"``: it also falls back
  off GPU, for non-float32 compute, for recurrent dropout and under ``vmap``.
* A cell kind outside a backend's list (e.g. ``gru`` with ``"fused"``) raises
  ``ValueError`` in :func:`select_layer`.

On CPU, ``"auto"`` picks ``"native"`` for the plain float32 LSTM with
``hidden <= AUTO_NATIVE_MAX_HIDDEN`` (256) when the extension is built (else it
logs once why not and uses ``"fused"``). Measured interleaved against
``"fused"`` on the four CPU targets (2-core Xeon, load average 10-13,
``lstm_jax/kernels/TIMINGS.md``): training 1.49x, 1.30x, 1.16x at H = 64, 256,
128, inference 3.2x, 1.5x, 1.3x; at (B, T, I, H) = (128, 64, 256, 512) training
was 0.84x (inference 1.04x), so wider layers stay on ``"fused"``. Otherwise
``"auto"`` picks ``"fused"``: it was measured faster than
``"scan"`` for training steps and inference on CPU, and (since its forward
computes the input projection inside the loop) also faster than running it in
blocks of 16 steps (``lstm_jax/kernels/TIMINGS.md``). cuDNN
and Pallas were not measured (no GPU was available), so ``"auto"`` never
picks them.

``remat`` (False, True or a block size) wraps the chosen layer in
:func:`lstm_jax.kernels.remat.remat_layer`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Union

from lstm_jax.kernels.cudnn import cudnn_lstm_layer
from lstm_jax.kernels.fused import fused_lstm_layer, unsupported_variant
from lstm_jax.kernels.native import log_unavailable_once, native_lstm_layer, native_unsupported
from lstm_jax.kernels.pallas import pallas_lstm_layer
from lstm_jax.kernels.remat import check_remat, remat_layer
from lstm_jax.scan import scan_layer

__all__ = ["BACKENDS", "select_layer"]

# "auto" uses "native" up to this hidden size (measured; see the module docstring)
AUTO_NATIVE_MAX_HIDDEN = 256

# backend name -> cell kinds it implements
BACKENDS: dict[str, tuple[str, ...]] = {
    "scan": ("lstm", "gru", "rnn"),
    "fused": ("lstm",),
    "pallas": ("lstm",),
    "native": ("lstm",),
    "cudnn": ("lstm",),
}

_LSTM_KERNELS = {
    "fused": fused_lstm_layer,
    "pallas": pallas_lstm_layer,
    "native": native_lstm_layer,
    "cudnn": cudnn_lstm_layer,
}


def _auto_lstm_layer(cell, weights: Any, xs, *args, compute_dtype=None, **kwargs):
    """``native`` (CPU), else ``fused`` where it applies; ``scan`` for the variants."""
    if unsupported_variant(weights) is not None:
        return scan_layer(cell, weights, xs, *args, **kwargs)
    if weights.w_hh.shape[0] <= AUTO_NATIVE_MAX_HIDDEN:
        if native_unsupported(weights, xs, compute_dtype) is None:
            return native_lstm_layer(cell, weights, xs, *args, compute_dtype=compute_dtype, **kwargs)
        log_unavailable_once()
    return fused_lstm_layer(cell, weights, xs, *args, compute_dtype=compute_dtype, **kwargs)


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

    >>> select_layer("auto", "gru") is scan_layer
    True
    """
    check_remat(remat)
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be one of {('auto', *BACKENDS)}, got {backend!r}.")
    if backend != "auto" and kind not in BACKENDS[backend]:
        raise ValueError(f"backend={backend!r} does not implement {kind}; use backend='scan'.")
    if kind != "lstm" or backend == "scan":
        layer = scan_layer
    elif backend == "auto":
        layer = functools.partial(_auto_lstm_layer, compute_dtype=compute_dtype)
    else:
        layer = functools.partial(_LSTM_KERNELS[backend], compute_dtype=compute_dtype)
    if remat:
        layer = remat_layer(layer, remat)
    return layer
