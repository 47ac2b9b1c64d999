"""``jax.export`` of functions that call lstm_jax: serialise, reload, run elsewhere.

``import lstm_jax`` makes two registrations (cheap: no compilation):

* every params and state type (``LSTMParams``, ``LSTMWeights``, ``LSTMState``,
  ``LayerNormWeights``, the GRU and RNN types, ``training.Dense``) for
  ``jax.export`` serialisation, so ``Exported.serialize()`` accepts functions
  that take or return them, and ``jax.export.deserialize`` rebuilds them;
* the native CPU kernels' FFI handlers (where the C++ extension is built), so a
  deserialised artifact holding their custom calls runs in a process that has
  not traced a native kernel.

Two ways to export, by backend:

* ``backend="auto"`` (the default): the fastest kernel per platform, which may
  be a custom call without a compatibility guarantee (the native CPU kernels,
  cuDNN on ``cuda``, the Pallas Triton kernel with ``backend="pallas"``), so
  ``jax.export`` refuses it unless told:
  ``export.export(jax.jit(f), disabled_checks=export_safety_checks())``. The
  artifact runs where ``lstm_jax`` (the same version) is imported.
* ``backend="fused"`` (LSTM) or ``"scan"`` (GRU; the RNN's ``"auto"`` is
  ``"scan"``): StableHLO only, no custom calls, covered by ``jax.export``'s
  compatibility guarantees. To load it without lstm_jax installed, export a
  function of plain arrays (e.g. the params' leaves), since deserialising our
  NamedTuples needs their registration.
"""

from __future__ import annotations

from jax import export as jax_export

from lstm_jax import params as _params
from lstm_jax.kernels import native_ops
from lstm_jax.training.model import Dense

__all__ = ["CUSTOM_CALL_TARGETS", "export_safety_checks"]

# Custom-call targets lstm_jax may emit, by kernel. jax.export keeps a list of
# targets with a compatibility guarantee (Pallas TPU's "tpu_custom_call" is on
# it); the others need a DisabledSafetyCheck each. cuDNN's names are jaxlib's
# (gpu_rnn.py: "cudnn_rnn*_ffi" in jaxlib 0.10, "cudnn_rnn*" in older ones); the
# Pallas Triton kernel lowers to "__gpu$xla.gpu.triton" in jaxlib 0.10.2,
# "triton_kernel_call_ffi" after it and "triton_kernel_call" in older ones.
CUSTOM_CALL_TARGETS: dict[str, tuple[str, ...]] = {
    "native": native_ops.FFI_TARGETS,
    "cudnn": ("cudnn_rnn_ffi", "cudnn_rnn_bwd_ffi", "cudnn_rnn", "cudnn_rnn_bwd"),
    "pallas_gpu": ("__gpu$xla.gpu.triton", "triton_kernel_call_ffi", "triton_kernel_call"),
    "pallas_tpu": ("tpu_custom_call",),
}

# The names are part of every serialised artifact: never rename them.
_SERIALIZED = (
    _params.LayerNormWeights,
    _params.LSTMWeights,
    _params.LSTMParams,
    _params.LSTMState,
    _params.GRUWeights,
    _params.GRUParams,
    _params.RNNWeights,
    _params.RNNParams,
    Dense,
)


def export_safety_checks() -> list[jax_export.DisabledSafetyCheck]:
    """The ``jax.export`` safety checks to disable for any function calling lstm_jax.

    One ``DisabledSafetyCheck.custom_call`` per custom-call target that a
    backend may emit on any platform (:data:`CUSTOM_CALL_TARGETS`): the native
    CPU kernels, cuDNN, the Pallas GPU and TPU kernels. A target the function
    does not emit costs nothing. The artifact then runs where ``lstm_jax`` is
    imported (it registers the native handlers); for a portable artifact, use
    ``backend="fused"`` (LSTM) or ``"scan"`` and no disabled checks.

    Returns:
      A list of ``jax.export.DisabledSafetyCheck``.

    >>> import jax, jax.numpy as jnp, lstm_jax as lj
    >>> from jax import export
    >>> params = lj.init_lstm(jax.random.key(0), 3, 8)
    >>> xs = jnp.ones((2, 5, 3))
    >>> exp = export.export(jax.jit(lj.lstm), disabled_checks=lj.export_safety_checks())(params, xs)
    >>> ys, state = export.deserialize(exp.serialize()).call(params, xs)
    >>> bool(jnp.all(ys == jax.jit(lj.lstm)(params, xs)[0]))
    True
    """
    return [
        jax_export.DisabledSafetyCheck.custom_call(target)
        for targets in CUSTOM_CALL_TARGETS.values()
        for target in targets
    ]


def _register_serialization() -> None:
    """Register the NamedTuples for serialisation (jax raises on a second registration,
    e.g. after ``importlib.reload``: those types are registered already)."""
    for nodetype in _SERIALIZED:
        try:
            jax_export.register_namedtuple_serialization(
                nodetype, serialized_name=f"lstm_jax.{nodetype.__name__}"
            )
        except ValueError:
            pass


_register_serialization()
native_ops.register_ffi_targets()
