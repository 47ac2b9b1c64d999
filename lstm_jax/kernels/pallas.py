"""``backend="pallas"``: the Pallas forward kernel of the platform a call is lowered for.

A Pallas kernel runs the whole time loop of one layer-direction from the
input projection, computed before it as one GEMM. It saves exactly the fused
kernel's :class:`~lstm_jax.kernels.fused.Residuals`, so the backward pass is
the fused kernel's, shared through one custom VJP
(:func:`lstm_jax.kernels.shared.shared_vjp_layer`) rather than derived again.

The forward is chosen when the call is lowered: the Mosaic TPU kernel
(:mod:`lstm_jax.kernels.pallas_tpu`) on ``tpu``, the Triton GPU kernel
(:mod:`lstm_jax.kernels.pallas_gpu`) on ``cuda``, and the TPU kernel in Pallas
interpret mode elsewhere (slow; for tests on CPU). Neither kernel has been run
on a TPU or GPU in this project (none was available); their lowerings are
tested with ``jax.export``. ``backend="auto"`` picks neither until they are
measured (``lstm_jax.kernels.dispatch``).
"""

from __future__ import annotations

import functools
from typing import Optional

from jax import Array

from lstm_jax.cells import Cell
from lstm_jax.kernels.call import KernelSpec, LayerCall, layer_call
from lstm_jax.kernels.fused import variant_why_not
from lstm_jax.kernels.pallas_gpu import gpu_forward
from lstm_jax.kernels.pallas_tpu import tpu_forward, tpu_unsupported
from lstm_jax.kernels.shared import projected, shared_vjp_layer
from lstm_jax.params import LSTMWeights

__all__ = ["GPU_FORWARD", "PALLAS", "TPU_FORWARD", "pallas_kernel", "pallas_lstm_layer", "tpu_why_not"]

TPU_FORWARD = projected(tpu_forward)
GPU_FORWARD = projected(gpu_forward)
_TPU_INTERPRET = projected(functools.partial(tpu_forward, interpret=True))


def pallas_kernel(call: LayerCall, interpret=None):
    """The platform's Pallas forward and the fused backward, for a plain LSTM call.
    ``interpret`` (True or ``pltpu.InterpretParams``) runs the TPU kernel in that interpret
    mode on every platform; None picks per platform as the module docstring says."""
    if interpret is not None:
        forwards = {None: projected(functools.partial(tpu_forward, interpret=interpret))}
    else:
        forwards = {"tpu": TPU_FORWARD, "cuda": GPU_FORWARD, None: _TPU_INTERPRET}
    return shared_vjp_layer(forwards, call)


def tpu_why_not(call: LayerCall) -> Optional[str]:
    """Why ``"auto"`` does not run the TPU kernel for ``call`` (:func:`pallas_tpu.tpu_unsupported`)."""
    options = call.options
    return tpu_unsupported(call.weights, call.xs, compute_dtype=options.compute_dtype,
                           time_major=options.time_major)  # fmt: skip


PALLAS = KernelSpec("lstm", "pallas", pallas_kernel, variant_why_not, auto_why_not=tpu_why_not,
                    forward=TPU_FORWARD)  # fmt: skip


def pallas_lstm_layer(cell: Cell, weights: LSTMWeights, xs: Array, initial_carry, *,
                      interpret=None, **options):  # fmt: skip
    """``backend="pallas"``: the platform's Pallas kernel; arguments as
    :func:`lstm_jax.scan.scan_layer` plus ``compute_dtype`` and ``interpret``
    (:func:`pallas_kernel`). ``unroll`` applies to the (fused) backward only.

    Raises:
      ValueError: for weights with peepholes, layer norm or a projection, and
        (when traced) for sizes a kernel cannot serve, naming the limit.

    >>> import jax.numpy as jnp
    >>> import lstm_jax as lj
    >>> from lstm_jax.cells import lstm_kind
    >>> w = lj.init_lstm(jax.random.key(0), 3, 4).layers[0][0]
    >>> carry = (jnp.zeros((2, 4)), jnp.zeros((2, 4)))
    >>> pallas_lstm_layer(lstm_kind(), w, jnp.ones((2, 5, 3)), carry)[0].shape
    (2, 5, 4)
    """
    spec = PALLAS if interpret is None else PALLAS._replace(
        layer=functools.partial(pallas_kernel, interpret=interpret))
    return spec.run(layer_call(cell, weights, xs, initial_carry, **options))
