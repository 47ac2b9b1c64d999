"""Layer implementations behind one signature, chosen by ``backend=``.

Every backend runs one layer in one direction with the signature of
:func:`lstm_jax.scan.scan_layer` and is tested against it:

=========  ===============================================================
backend    what it is
=========  ===============================================================
"scan"     the reference: ``lax.scan`` + autodiff (``scan.py``)
"fused"    hand-written VJP, blocked gradient GEMMs (``fused.py``)
"pallas"   Pallas forward kernel per platform + the fused backward
"native"   C++ time loop through XLA's FFI, CPU (``native*.py``)
"cudnn"    ``jax.experimental.rnn`` when lowered for ``cuda``
"auto"     per platform and call
=========  ===============================================================

Which cell kinds each backend implements (:data:`BACKENDS`, backend -> cell
kinds), what each kernel declines and ``"auto"``'s per-platform policy are
one table, :mod:`lstm_jax.kernels.dispatch` (``KERNELS``, ``AUTO``).
``remat`` (False, True or a block size) wraps the chosen kernel in
:func:`lstm_jax.kernels.remat.remat_kernel`.
"""

from lstm_jax.kernels.dispatch import BACKENDS, select_layer

__all__ = ["BACKENDS", "select_layer"]
