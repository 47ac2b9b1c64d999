"""Layer implementations behind one signature, chosen by ``backend=``.

Every backend runs one layer in one direction with the signature of
:func:`lstm_jax.scan.scan_layer` and is tested against it.
"""

from __future__ import annotations

from typing import Callable

from lstm_jax.scan import scan_layer

__all__ = ["BACKENDS", "select_layer"]

# backend name -> cell kinds it implements
BACKENDS: dict[str, tuple[str, ...]] = {
    "scan": ("lstm", "gru", "rnn"),
}


def select_layer(backend: str, kind: str) -> Callable:
    """The layer function for ``backend`` and cell ``kind`` (``"lstm"``, ``"gru"``, ``"rnn"``).

    ``"auto"`` picks the fastest measured backend for the platform.
    """
    if backend == "auto":
        backend = "scan"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto', *BACKENDS)}, got {backend!r}.")
    if kind not in BACKENDS[backend]:
        raise ValueError(f"backend={backend!r} does not implement {kind}; use backend='scan'.")
    return scan_layer
