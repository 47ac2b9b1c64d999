"""An LSTM layer whose time loop is native CPU code (``backend="native"``).

Same signature and semantics as :func:`lstm_jax.scan.scan_layer`, for the
plain LSTM with float32 parameters on CPU, computing in float32 or (with
``compute_dtype=jnp.bfloat16``) with bfloat16 GEMM inputs. The C++ in
``csrc/`` is built into ``lstm_jax/_lstm_native*.so`` by ``pip install``
(``setup.py``; optional: the install succeeds without a compiler) and called
through XLA's FFI (``jax.ffi.ffi_call``), one custom call per layer-direction
forward and one for its backward:

* forward: the custom call runs the loop: per step ``x_t @ w_ih + b + h @ w_hh``
  as one register-blocked AVX-512 (or AVX2, or portable) GEMM over
  ``[w_ih; w_hh]`` packed once per call, the gate math in registers right
  after it, the carry. For training it also saves the gate activations and
  the carried cell state. (Projecting all steps' inputs in one XLA GEMM before
  the loop measured ~3x slower for inference: the ``(T, B, 4H)`` array does
  not stay in cache.)
* backward (``jax.custom_vjp``): the custom call carries ``(dh, dc)``, writes
  the gate gradients ``dz`` over the saved activations (aliased again) and
  computes ``dz @ w_hh^T`` per step; XLA then computes ``dx = dz @ w_ih^T``,
  ``dw_ih = x^T dz``, ``dw_hh = h_prev^T dz`` and ``db`` as single GEMMs.
* ``resets``: both loops take the ``(T, B)`` flags of :func:`start_flags` and
  the reset carry. The forward resets the carry before a flagged step (at the
  end of the step before it, so the next step's GEMM reads the reset carry)
  and, in reverse, keeps the carry before the first reset as the final one;
  the backward adds the carry gradient at a flagged step to the reset carry's
  gradient and carries zero (or the final carry's cotangent) on from there.

Both loops split the hidden units of every step across the threads of XLA's
intra-op pool (one synchronisation per step); steps too small to split run on
one thread. Under ``vmap`` the custom calls loop over the mapped axes
(``vmap_method="broadcast_all"``).

With ``compute_dtype=jnp.bfloat16`` (as ``fused``: GEMM inputs ``x_t``,
``h * mask``, the weights and ``dz`` rounded to bfloat16, products summed in
float32, gate math, cell state and parameters float32, the same output
dtypes) both loops run bfloat16 kernels (``csrc/lstm_kernel_amx.inc`` on AMX
tiles, or ``csrc/lstm_kernel_bf16.inc`` with AVX512_BF16's ``vdpbf16ps``;
:func:`native_bf16_isa`), and the kernels also emit the gradient GEMMs'
operands in bfloat16, row-major: ``dz``, ``[x_t; h_{t-1} * mask]``
transposed, ``w_ih^T``. XLA:CPU's bf16 dot is fast (YNNPACK on AMX) only when
the contracted axis of the left operand is its last and both are row-major; a
transposed operand measured 3-6x slower than that and slower than float32
(``docs/TIMINGS.md``). Where the CPU has no AVX512_BF16 (or the ISA is not
``avx512``) native declines bfloat16, and ``"auto"`` runs ``"fused"``.

``"auto"`` never runs the portable C++ kernels (CPUs without AVX2, e.g. every
ARM CPU, or ``LSTM_JAX_NATIVE_ISA=portable``): they are slower than
``"fused"`` (and the GRU's than ``"scan"``), which run instead;
``backend="native"`` still runs them (:func:`native_auto_unavailable`).

The ``LSTM_JAX_NATIVE_*`` environment variables (instruction set, thread split
thresholds, ...; the table is ``csrc/settings.cc``) are checked when the
extension is loaded: see :func:`check_settings`.

Inputs at steps where a sequence is not valid are zeroed before the
projection, so values in padding (even NaN) never reach an output or a
gradient.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.cells import Cell, lstm_activations, lstm_pointwise, matmul
from lstm_jax.kernels.fused import Segments, unsupported_variant
from lstm_jax.kernels.fused import recurrence as fused_recurrence
from lstm_jax.kernels.platform import platform_only
from lstm_jax.params import LSTMWeights
from lstm_jax.sequence import carried_outputs, over_time

__all__ = [
    "FFI_TARGETS",
    "auto_unsupported_here",
    "check_settings",
    "dtype_unsupported",
    "ffi_call",
    "isa_fallbacks",
    "native_auto_unavailable",
    "native_auto_unsupported",
    "native_bf16_isa",
    "native_has_bf16",
    "native_isa",
    "native_kernel_layer",
    "native_lstm_layer",
    "native_unavailable",
    "native_unsupported",
    "optional_operand",
    "register_ffi_targets",
    "segments_of",
    "start_flags",
    "unknown_settings",
    "unsupported_here",
]

_LOG = logging.getLogger(__name__)
_MODULE = "lstm_jax._lstm_native"
_TARGETS = {
    "lstm_jax_native_forward_train": "LstmJaxForwardTrain",
    "lstm_jax_native_forward_infer": "LstmJaxForwardInfer",
    "lstm_jax_native_backward": "LstmJaxBackward",
    "lstm_jax_native_gru_forward_train": "LstmJaxGruForwardTrain",  # native_gru.py
    "lstm_jax_native_gru_forward_infer": "LstmJaxGruForwardInfer",
    "lstm_jax_native_gru_backward": "LstmJaxGruBackward",
    "lstm_jax_native_rnn_forward_train": "LstmJaxRnnForwardTrain",  # native_rnn.py
    "lstm_jax_native_rnn_forward_infer": "LstmJaxRnnForwardInfer",
    "lstm_jax_native_rnn_backward": "LstmJaxRnnBackward",
}


_LOCK = threading.Lock()


def _library() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    """The loaded extension with its FFI targets registered, or why it is unavailable."""
    with _LOCK:  # two threads' first calls must not register twice
        return _load()


@functools.lru_cache(maxsize=None)
def _load() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or spec.origin is None:
        return None, (
            f"the C++ extension {_MODULE} is not built (reinstall lstm_jax with a C++17 "
            "compiler on x86-64 or another platform gcc/clang supports: pip install -e .)"
        )
    try:
        lib = ctypes.CDLL(spec.origin)
        _declare(lib)
    except (OSError, AttributeError) as error:
        return None, f"the C++ extension {spec.origin} could not be loaded: {error}"
    check_settings(lib, os.environ)  # raises before any kernel is registered or run
    for target, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return lib, None


def _declare(lib: ctypes.CDLL) -> None:
    """Result and argument types of the extension's plain C functions (AttributeError if absent)."""
    for symbol in _TARGETS.values():
        getattr(lib, symbol)
    for name in ("LstmJaxNativeIsa", "LstmJaxNativeBf16Isa", "LstmJaxNativeSettingsError",
                 "LstmJaxNativeSettingName"):  # fmt: skip
        getattr(lib, name).restype = ctypes.c_char_p
    lib.LstmJaxNativeSettingName.argtypes = [ctypes.c_int]


_PREFIX = "LSTM_JAX_NATIVE_"
_ISA = "LSTM_JAX_NATIVE_ISA"
_BF16 = "LSTM_JAX_NATIVE_BF16"


def check_settings(lib: ctypes.CDLL, environ: Mapping[str, str]) -> None:
    """Check the ``LSTM_JAX_NATIVE_*`` variables in ``environ`` against the extension's table.

    Called once, when the extension is loaded (before its kernels are
    registered); the C++ table (``csrc/settings.cc``) is the one list of
    variables and accepted values, and every custom call checks the same
    table again (the thread settings are read per call), failing with
    ``INVALID_ARGUMENT`` where a value set later is invalid.

    * A value the table does not accept (``LSTM_JAX_NATIVE_ISA=avx-2``,
      ``LSTM_JAX_NATIVE_THREADS=two``) raises: it is wrong on every machine, a
      typo, and going on would measure or test another kernel than the one
      asked for.
    * An accepted instruction set the CPU lacks (``avx512`` on an AVX2-only
      CPU, ``LSTM_JAX_NATIVE_BF16=amx`` without AMX) warns (``RuntimeWarning``)
      naming what was asked and what runs instead: the setting is right on
      other machines, and the results are the same, only slower or faster.
    * A variable with the prefix that is not in the table warns: a mistyped
      name, or one of another lstm_jax version, which should not stop a run.

    Raises:
      ValueError: naming the variable, its value and the accepted values.
    """
    error = lib.LstmJaxNativeSettingsError().decode()
    if error:
        raise ValueError(
            f"{error} (an lstm_jax native kernel setting; unset it or give an accepted value)."
        )
    known = _setting_names(lib)
    isa = lib.LstmJaxNativeIsa().decode()
    bf16_isa = lib.LstmJaxNativeBf16Isa().decode() or None
    for message in unknown_settings(environ, known) + isa_fallbacks(environ, isa, bf16_isa):
        warnings.warn(message, RuntimeWarning)


def _setting_names(lib: ctypes.CDLL) -> tuple[str, ...]:
    """The variables of the extension's settings table, in its order."""
    names = []
    while (name := lib.LstmJaxNativeSettingName(len(names))) is not None:
        names.append(name.decode())
    return tuple(names)


def unknown_settings(environ: Mapping[str, str], known: tuple[str, ...]) -> list[str]:
    """A message for each ``LSTM_JAX_NATIVE_*`` variable in ``environ`` not in ``known``."""
    return [
        f"{name} is not an lstm_jax native kernel setting and is ignored (they are "
        f"{', '.join(known)})"
        for name in sorted(environ)
        if name.startswith(_PREFIX) and name not in known
    ]


def isa_fallbacks(environ: Mapping[str, str], isa: str, bf16_isa: str | None) -> list[str]:
    """A message for each instruction set asked for in ``environ`` that does not run.

    ``isa`` and ``bf16_isa`` are what the extension chose (:func:`native_isa`,
    :func:`native_bf16_isa`); each message names what was asked and what runs.
    """
    messages = []
    want = environ.get(_ISA)
    if want is not None and want != isa:
        messages.append(
            f"{_ISA}={want!r}: this CPU (or this build) does not have it; the native kernels "
            f"run {isa!r} instead"
        )
    want = environ.get(_BF16)
    if want is not None and want != bf16_isa:
        instead = (
            f"the bfloat16 kernels run {bf16_isa!r} instead" if bf16_isa is not None
            else f"there are no bfloat16 native kernels with the instruction set {isa!r} here, "
            "so compute_dtype=bfloat16 runs 'fused' under backend='auto'"
        )  # fmt: skip
        messages.append(f"{_BF16}={want!r}: this CPU (or OS, or build) does not have it; {instead}")
    return messages


# the custom-call targets the kernels emit (lstm_jax.export lists them for jax.export)
FFI_TARGETS: tuple[str, ...] = tuple(_TARGETS)


def register_ffi_targets() -> Optional[str]:
    """Load the extension and register its FFI handlers (no compilation); why not, or None.

    ``import lstm_jax`` calls it, so that a deserialized ``jax.export`` artifact
    holding these custom calls runs in a process that has not traced a native
    kernel yet. An invalid ``LSTM_JAX_NATIVE_*`` setting does not stop the
    import: its ``ValueError`` (:func:`check_settings`) is returned here and
    raised at the first native call.
    """
    try:
        return _library()[1]
    except ValueError as error:
        return str(error)


def native_unavailable() -> Optional[str]:
    """Why the native kernels cannot run in this process, or None if they can."""
    reason = _library()[1]
    if reason is None and jax.default_backend() != "cpu":
        return f"it runs on CPU only, the default backend is {jax.default_backend()!r}"
    return reason


def native_isa() -> Optional[str]:
    """The instruction set the kernels use (``avx512``, ``avx2``, ``portable``), or None."""
    lib = _library()[0]
    return None if lib is None else lib.LstmJaxNativeIsa().decode()


def native_bf16_isa() -> Optional[str]:
    """The bfloat16 kernels' instruction set (``amx``, ``avx512bf16``), or None if there are none.

    They need the ``avx512`` kernels and AVX512_BF16; AMX tiles are used where
    the CPU has AMX-BF16 and Linux grants their use, unless
    ``LSTM_JAX_NATIVE_BF16=avx512bf16`` (read once per process).
    """
    lib = _library()[0]
    return (lib.LstmJaxNativeBf16Isa().decode() or None) if lib is not None else None


def native_has_bf16() -> bool:
    """Whether the kernels can compute in bfloat16 here (:func:`native_bf16_isa`)."""
    return native_bf16_isa() is not None


def native_auto_unavailable() -> str | None:
    """Why ``backend="auto"`` runs no native kernel in this process, or None if it may.

    As :func:`unsupported_here` with ``platform=False`` (an unbuilt extension),
    and also where only the portable C++ kernels run (:func:`native_isa`: no
    AVX2 on this CPU, as on every ARM CPU, or ``LSTM_JAX_NATIVE_ISA=portable``).
    Those are scalar loops the compiler vectorises at best: forced with
    ``LSTM_JAX_NATIVE_ISA=portable`` on an AMD EPYC Zen 3 (AVX2), a training step
    measured 3.0x slower than ``"fused"`` at (B, T, I, H) = (32, 256, 64, 128)
    and 6.0x at (64, 128, 128, 256) (the measurement that asked for this), so
    ``"auto"`` runs ``"fused"`` (the GRU ``"scan"``) there;
    ``backend="native"`` still runs them.
    """
    reason = _library()[1]
    if reason is None and native_isa() == "portable":
        return (
            "only its portable C++ kernels run here (no AVX2 on this CPU, or "
            f"{_ISA}=portable), which 'auto' does not use (3-6x slower than 'fused' for "
            "LSTM training)"
        )
    return reason


def auto_unsupported_here(reason: str | None) -> str | None:
    """``reason`` (why the arguments do not fit a native kernel), else
    :func:`native_auto_unavailable` (logged once), else None: ``"auto"``'s check."""
    if reason is not None:
        return reason
    reason = native_auto_unavailable()
    if reason is not None:
        log_unavailable_once()
    return reason


@functools.lru_cache(maxsize=None)
def log_unavailable_once() -> None:
    """Log (once per process) why ``backend="auto"`` does not use the native kernels."""
    reason = native_auto_unavailable()
    if reason is not None:
        _LOG.info(
            "lstm_jax: backend='auto' uses 'fused' instead of 'native' (for the GRU 'scan'): %s",
            reason,
        )


def native_unsupported(weights: Any, xs: Array, compute_dtype=None, *, platform=True) -> Optional[str]:
    """Why ``native_lstm_layer`` cannot run these arguments, or None if it can.

    With ``platform=False`` the default backend is not checked (the dispatcher
    picks kernels per platform at lowering time).
    """
    return unsupported_here(_unsupported_arguments(weights, xs, compute_dtype), platform=platform)


def unsupported_here(reason: Optional[str], *, platform=True) -> Optional[str]:
    """``reason`` (why the arguments do not fit a native kernel), else why the extension
    cannot run here (``platform=False``: only whether it is built), else None."""
    if reason is not None:
        return reason
    return native_unavailable() if platform else _library()[1]


def native_auto_unsupported(weights, xs, initial_carry, *, recurrent_mask, compute_dtype,
                            time_major) -> Optional[str]:  # fmt: skip
    """Why ``"auto"`` does not run ``"native"`` on CPU for this call (``dispatch.Kernel``)."""
    del initial_carry, recurrent_mask, time_major
    return auto_unsupported_here(_unsupported_arguments(weights, xs, compute_dtype))


def _unsupported_arguments(weights: Any, xs: Array, compute_dtype) -> Optional[str]:
    reason = unsupported_variant(weights)
    if reason is not None:
        return reason
    return dtype_unsupported(weights, xs, compute_dtype, bf16=True)


def dtype_unsupported(weights: Any, xs: Array, compute_dtype, *, bf16: bool) -> Optional[str]:
    """Why the native kernels cannot run these dtypes, or None: float32 parameters, and
    float32 compute, or bfloat16 too where ``bf16`` (the LSTM's kernels) and the CPU has it."""
    if weights.w_hh.dtype != jnp.float32 or weights.w_ih.dtype != jnp.float32:
        return f"it needs float32 parameters, got {weights.w_hh.dtype}"
    allowed = (jnp.float32, jnp.bfloat16) if bf16 else (jnp.float32,)
    if compute_dtype is not None and jnp.dtype(compute_dtype) not in allowed:
        names = " or ".join(jnp.dtype(d).name for d in allowed)
        return f"it computes in {names} only, got compute_dtype={jnp.dtype(compute_dtype)}"
    if _bf16(compute_dtype) and _library()[0] is not None and not native_has_bf16():
        return (
            f"this CPU or instruction set ({native_isa()}) has no bfloat16 kernels "
            "(they need avx512 with AVX512_BF16)"
        )
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        return f"xs must be floating point, got {xs.dtype}"
    return None


def _bf16(compute_dtype) -> bool:
    """Whether ``compute_dtype`` asks for bfloat16 GEMM inputs (else float32)."""
    return compute_dtype is not None and jnp.dtype(compute_dtype) == jnp.bfloat16


def ffi_call(target: str, results, *args, aliases=None, **attributes):
    """The custom call, lowered for CPU only (inside "auto"'s CPU branch of a multi-platform export)."""
    _library()  # registers the targets
    call = jax.ffi.ffi_call(
        target, results, vmap_method="broadcast_all", input_output_aliases=aliases or {}
    )
    return platform_only("cpu", functools.partial(call, **attributes), *args)


def _sequence(batch_major: bool, steps: int, batch: int, features: int) -> jax.ShapeDtypeStruct:
    """A float32 ``(T, B, F)`` array, ``(B, T, F)`` when ``batch_major``."""
    shape = (batch, steps, features) if batch_major else (steps, batch, features)
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _steps_batch(xs: Array, batch_major: bool) -> tuple[int, int]:
    return (xs.shape[1], xs.shape[0]) if batch_major else xs.shape[:2]


def _time_major(a: Array, batch_major: bool) -> Array:
    """A ``(B, T, F)`` array as ``(T, B, F)`` when ``batch_major``, else ``a`` (and back: it is its own inverse)."""
    return jnp.swapaxes(a, 0, 1) if batch_major else a


def optional_operand(mask: Optional[Array], dtype) -> Array:
    """The array the custom calls read for an absent mask: empty."""
    return jnp.zeros((0,), dtype) if mask is None else mask


def start_flags(starts: Array, reverse: bool) -> Array:
    """:func:`lstm_jax.sequence.segment_starts`'s ``(T, B)`` bools as the custom calls' uint8
    flags: 1 resets the carry before the step; 2 (``reverse``'s first reset of a sequence)
    also makes the carry before it the final one (the first processed segment's)."""
    flags = starts.astype(jnp.uint8)
    if reverse:
        flags = flags + (starts & (jnp.cumsum(starts, axis=0) == 1)).astype(jnp.uint8)
    return flags


def segments_of(starts: Optional[Array], reset_h: Array, reset_c: Array) -> Optional[Segments]:
    """The uint8 ``starts`` of :func:`start_flags` (or None) as ``fused``'s :class:`Segments`
    (the JAX reference paths)."""
    if starts is None:
        return None
    last = jnp.cumsum(starts == 2, axis=0) == 0  # [T, B]: before reverse's first reset
    return Segments(starts != 0, reset_h, reset_c, last)


def _operands(xs, w_ih, b, w_hh, h0, c0, mask, valid, starts, reset_h, reset_c):
    """The forward custom calls' operands; an absent option is an empty array."""
    f32, u8 = jnp.float32, jnp.uint8
    return (xs, w_ih, b, w_hh, h0, c0, optional_operand(mask, f32), optional_operand(valid, u8),
            optional_operand(starts, u8), optional_operand(reset_h, f32),
            optional_operand(reset_c, f32))  # fmt: skip


def _forward(batch_major, bf16, w_ih, b, w_hh, xs, h0, c0, mask, valid, starts, reset_h, reset_c,
             *, save):  # fmt: skip
    """``xs (T, B, I)`` (``(B, T, I)`` when ``batch_major``) -> ``ys`` in that layout, ``h, c``
    (+ :func:`_forward_train`'s residuals when ``save``). ``valid`` is ``(T, B)`` either way;
    ``starts`` (:func:`start_flags`, time-major) and the reset carry ``reset_h, reset_c
    (B, H)`` are None without resets."""
    segments = (starts, reset_h, reset_c)
    if save:
        ys, h, c, *saved = _forward_train(batch_major, bf16, w_ih, b, w_hh, xs, h0, c0, mask, valid,
                                          *segments)  # fmt: skip
        return ys, h, c, tuple(saved)
    steps, batch = _steps_batch(xs, batch_major)
    state = jax.ShapeDtypeStruct((batch, w_hh.shape[0]), jnp.float32)
    seq = _sequence(batch_major, steps, batch, w_hh.shape[0])
    args = _operands(xs, w_ih, b, w_hh, h0, c0, mask, valid, *segments)
    ys, h, c = ffi_call("lstm_jax_native_forward_infer", (seq, state, state), *args,
                    batch_major=batch_major, bf16=bf16)  # fmt: skip
    return ys, h, c, None


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _forward_train(batch_major, bf16, w_ih, b, w_hh, xs, h0, c0, mask, valid, starts, reset_h,
                   reset_c):  # fmt: skip
    """``ys, h, c`` and the residuals ``act (T, B, 4H)`` (gate activations), ``cs (T, B, H)``;
    ``ys`` in the layout of ``xs``, the residuals time-major (one step's rows contiguous).
    With ``bf16`` also the bfloat16 GEMM operands of the gradients, row-major as XLA's fast
    bf16 dot needs them: ``xhT (I + H, T * B)`` (``x_t`` and ``h_{t-1} * mask`` per step,
    time-major columns) and ``w_ihT (4H, I)``; empty without ``bf16``."""
    steps, batch = _steps_batch(xs, batch_major)
    inputs = xs.shape[-1]
    hidden = w_hh.shape[0]
    state = jax.ShapeDtypeStruct((batch, hidden), jnp.float32)
    seq = _sequence(batch_major, steps, batch, hidden)
    gates = _sequence(False, steps, batch, 4 * hidden)
    cell_states = _sequence(False, steps, batch, hidden)
    args = _operands(xs, w_ih, b, w_hh, h0, c0, mask, valid, starts, reset_h, reset_c)
    xh_t = jax.ShapeDtypeStruct((inputs + hidden, steps * batch) if bf16 else (0,), jnp.bfloat16)
    w_t = jax.ShapeDtypeStruct((4 * hidden, inputs) if bf16 else (0,), jnp.bfloat16)
    results = (seq, state, state, gates, cell_states, xh_t, w_t)
    return ffi_call("lstm_jax_native_forward_train", results, *args, batch_major=batch_major,
                bf16=bf16)  # fmt: skip


def _forward_reference(batch_major, bf16, w_ih, b, w_hh, xs, h0, c0, mask, valid, starts,
                       reset_h, reset_c):  # fmt: skip
    """:func:`_forward_train` in JAX, for derivatives of the gradients (e.g. ``jax.hessian``)."""
    segments = segments_of(starts, reset_h, reset_c)
    ys, (h, c), act, cs = _forward_reference_time_major(
        bf16, w_ih, b, w_hh, _time_major(xs, batch_major), h0, c0, mask, valid, segments
    )
    return _time_major(ys, batch_major), h, c, act, cs


def _forward_reference_time_major(bf16, w_ih, b, w_hh, xs, h0, c0, mask, valid, segments):
    """``ys, (h, c), act, cs``; with ``segments`` (:class:`Segments`) the carry is reset at
    its starts, and the final carry is the last one of its ``last`` steps."""
    plain = LSTMWeights(w_ih=None, w_hh=None, b=None)

    def body(carries, inputs):
        (h, c), final = carries
        x, keep, start, last = inputs
        if start is not None:
            h = jnp.where(start[:, None], segments.h, h)
            c = jnp.where(start[:, None], segments.c, c)
        cd = jnp.bfloat16 if bf16 else None  # the cells' matmul: bf16 inputs, float32 sums
        gates = matmul(x, w_ih, cd) + b[None] + matmul(h if mask is None else h * mask, w_hh, cd)
        h_new, c_new = jax.vmap(lstm_pointwise, in_axes=(None, 0, 0))(plain, gates, c)
        act = jnp.concatenate(lstm_activations(gates), axis=-1)  # the saved (B, 4H) activations
        y = h_new
        if keep is not None:
            keep = keep[:, None] != 0
            h_new, c_new = jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)
            y = jnp.where(keep, y, jnp.zeros_like(y))
        if last is not None:
            final = tuple(jnp.where(last[:, None], a, b) for a, b in zip((h_new, c_new), final))
        return ((h_new, c_new), final), (y, act, c_new)

    starts, last = (None, None) if segments is None else (segments.starts, segments.last)
    carries = ((h0, c0), (h0, c0))
    (carry, final), (ys, act, cs) = jax.lax.scan(body, carries, (xs, valid, starts, last))
    return ys, (carry if segments is None else final), act, cs


@_forward_train.defjvp
def _forward_train_jvp(batch_major, bf16, primals, tangents):
    valid, starts = primals[7:9]
    diff, diff_tangents = primals[:7] + primals[9:], tangents[:7] + tangents[9:]

    def reference(*args):
        return _forward_reference(batch_major, bf16, *args[:7], valid, starts, *args[7:])

    outputs = _forward_train(batch_major, bf16, *primals)
    _, out_tangents = jax.jvp(reference, diff, diff_tangents)
    # the rounded GEMM operands are read by _gradients only, whose JVP does not use them
    return outputs, (*out_tangents, *(jnp.zeros_like(a) for a in outputs[5:]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _recurrence(batch_major, bf16, masked_steps, w_ih, b, w_hh, xs, h0, c0, mask, valid, starts,
                reset_h, reset_c):  # fmt: skip
    """``ys, h, c``; ``masked_steps``: ``valid`` may have holes (a per-step ``mask``), not
    only a ragged end, so the backward needs the carry behind each masked step.
    ``starts, reset_h, reset_c``: the resets (:func:`_forward`), or None."""
    ys, h, c, _ = _forward(batch_major, bf16, w_ih, b, w_hh, xs, h0, c0, mask, valid, starts,
                           reset_h, reset_c, save=False)  # fmt: skip
    return ys, h, c


def _recurrence_fwd(batch_major, bf16, masked_steps, *inputs):
    ys, h, c, saved = _forward(batch_major, bf16, *inputs, save=True)
    return (ys, h, c), (*inputs, ys, *saved)


def _recurrence_bwd(batch_major, bf16, masked_steps, residuals, cotangents):
    inputs, (ys, *saved) = residuals[:11], residuals[11:]
    if masked_steps:
        h0, valid, starts, reset_h = inputs[4], inputs[7], inputs[8], inputs[9]
        resets = () if starts is None else (starts != 0, reset_h)
        ys = _time_major(carried_outputs(_time_major(ys, batch_major), h0, valid, *resets),
                         batch_major)  # fmt: skip
    *grads, d_reset_h, d_reset_c = _gradients(batch_major, bf16, *inputs, *cotangents, ys, *saved)
    return (*grads, None, None, d_reset_h, d_reset_c)  # none for the validity and the starts


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _gradients(batch_major, bf16, w_ih, b, w_hh, xs, h0, c0, mask, valid, starts, reset_h, reset_c,
               dys, dh, dc, ys, act, cs, xh_t, w_t):  # fmt: skip
    """Gradients w.r.t. ``(w_ih, b, w_hh, xs, h0, c0, mask, reset_h, reset_c)``: the native
    loop, then XLA GEMMs.

    ``ys, act, cs, xh_t, w_t`` are :func:`_forward_train`'s outputs for the same inputs,
    except that ``ys`` is the hidden carry after each step where steps are masked
    (:func:`lstm_jax.sequence.carried_outputs`); ``xs, dys, ys`` are in one layout
    (``batch_major`` or not), ``act, cs`` time-major.
    With ``bf16`` every GEMM takes bfloat16 inputs and sums in float32, all operands
    row-major with the contracted axis of the left one last: XLA:CPU's bf16 dot
    measured 3-6x slower for a transposed operand (``docs/TIMINGS.md``).
    """
    del b  # read through act
    hidden = w_hh.shape[0]
    state = jax.ShapeDtypeStruct(h0.shape, jnp.float32)
    dz_bf16 = jax.ShapeDtypeStruct(act.shape if bf16 else (0,), jnp.bfloat16)
    reset_state = state if starts is not None else jax.ShapeDtypeStruct((0,), jnp.float32)
    results = (jax.ShapeDtypeStruct(act.shape, jnp.float32), state, state, state, dz_bf16,
               reset_state, reset_state)  # fmt: skip
    f32, u8 = jnp.float32, jnp.uint8
    dz, dh0, dc0, dmask, dz_bf16, d_reset_h, d_reset_c = ffi_call(
        "lstm_jax_native_backward", results,
        w_hh, act, cs, c0, dys, dh, dc, optional_operand(mask, f32), optional_operand(valid, u8),
        ys, h0, optional_operand(starts, u8), optional_operand(reset_h, f32),
        optional_operand(reset_c, f32),
        batch_major=batch_major, bf16=bf16, aliases={1: 0},
    )  # fmt: skip
    dmask = None if mask is None else dmask
    d_resets = (None, None) if starts is None else (d_reset_h, d_reset_c)
    steps, batch = _steps_batch(xs, batch_major)
    rows = dz.reshape(steps * batch, 4 * hidden)  # time-major rows
    if bf16:
        inputs = xs.shape[-1]
        rows_bf16 = dz_bf16.reshape(steps * batch, 4 * hidden)
        dw = jnp.matmul(xh_t, rows_bf16, preferred_element_type=jnp.float32)  # [dw_ih; dw_hh]
        dxs = jnp.matmul(rows_bf16, w_t, preferred_element_type=jnp.float32)
        dxs = _time_major(dxs.reshape(steps, batch, inputs), batch_major)
        db = jnp.sum(rows, axis=0)
        return dw[:inputs], db, dw[inputs:], dxs, dh0, dc0, dmask, *d_resets
    # h_{t-1} for every step: h0, then ys (dz is zero past a sequence's end, where ys is),
    # the reset carry where a segment starts
    h_prev = jnp.concatenate([h0[None], _time_major(ys, batch_major)[:-1]])  # [T, B, H]
    if starts is not None:
        h_prev = jnp.where(starts[:, :, None] != 0, reset_h, h_prev)
    if mask is not None:
        h_prev = h_prev * mask[None]
    dw_hh = h_prev.reshape(steps * batch, hidden).T @ rows
    # the (T, B, I) operands are transposed, never dz: given an einsum over
    # (T, B) in both orders, XLA copied dz (4H wide, e.g. 64 MiB) as well
    inputs = xs.shape[-1]
    dw_ih = _time_major(xs, batch_major).reshape(steps * batch, inputs).T @ rows
    dxs = _time_major((rows @ w_ih.T).reshape(steps, batch, inputs), batch_major)
    db = jnp.sum(rows, axis=0)
    return dw_ih, db, dw_hh, dxs, dh0, dc0, dmask, *d_resets


@_gradients.defjvp
def _gradients_jvp(batch_major, bf16, primals, tangents):
    """Derivatives of the gradients (``jax.hessian``, grad of grad) through the
    ``fused`` backend's JAX implementation of the same gradients (and compute
    dtype). ``ys, act, cs`` (and the bf16 operands) are functions of the other
    inputs, recomputed inside it, so their tangents are not used (they would
    count twice)."""
    valid, starts = primals[7:9]
    keep = None if valid is None else valid != 0

    def reference(w_ih, b, w_hh, xs, h0, c0, mask, reset_h, reset_c, dys, dh, dc):
        def forward(w_ih, b, w_hh, xs, h0, c0, mask, reset_h, reset_c):
            xs = _time_major(xs, batch_major)
            compute = jnp.bfloat16 if bf16 else None
            segments = segments_of(starts, reset_h, reset_c)
            ys, h, c = fused_recurrence(compute, 1, w_ih, b, w_hh, xs, h0, c0, mask, keep, segments)
            return _time_major(ys, batch_major), h, c

        args = (w_ih, b, w_hh, xs, h0, c0, mask, reset_h, reset_c)
        return jax.vjp(forward, *args)[1]((dys, dh, dc))

    diff = primals[:7] + primals[9:14]
    diff_tangents = tangents[:7] + tangents[9:14]
    _, out_tangents = jax.jvp(reference, diff, diff_tangents)
    return _gradients(batch_major, bf16, *primals), out_tangents


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def native_lstm_layer(
    cell: Cell,
    weights: LSTMWeights,
    xs: Array,
    initial_carry: tuple[Array, Array],
    *,
    seq_lengths: Optional[Array] = None,
    reverse: bool = False,
    recurrent_mask: Optional[Array] = None,
    unroll: int = 1,
    time_major: bool = False,
    mask: Optional[Array] = None,
    resets: Optional[Array] = None,
    reset_to: Optional[tuple[Array, Array]] = None,
    compute_dtype=None,
) -> tuple[Array, tuple[Array, Array]]:
    """One LSTM layer with a native time loop; arguments as :func:`lstm_jax.scan.scan_layer`
    (``mask``, ``resets`` and ``reset_to`` included).

    ``cell`` and ``unroll`` are accepted for signature compatibility; the gate
    math is that of :func:`lstm_jax.cells.lstm_pointwise`, in C++.

    Raises:
      ValueError: for weights with peepholes, layer norm or a projection, for
        non-float32 parameters, a compute dtype other than float32 or bfloat16
        (bfloat16 only where :func:`native_has_bf16`), off CPU, or when the
        C++ extension was not built.

    >>> import lstm_jax as lj
    >>> from lstm_jax.cells import lstm_kind
    >>> w = lj.init_lstm(jax.random.key(0), 3, 4).layers[0][0]
    >>> carry = (jnp.zeros((2, 4)), jnp.zeros((2, 4)))
    >>> ys, (h, c) = native_lstm_layer(lstm_kind(), w, jnp.ones((2, 5, 3)), carry)
    >>> ys.shape
    (2, 5, 4)
    """
    reason = native_unsupported(weights, xs, compute_dtype)
    if reason is not None:
        raise ValueError(f"backend='native': {reason}; use backend='auto' or 'fused'.")
    return native_kernel_layer(
        cell, weights, xs, initial_carry, seq_lengths=seq_lengths, reverse=reverse,
        recurrent_mask=recurrent_mask, unroll=unroll, time_major=time_major, mask=mask,
        resets=resets, reset_to=reset_to, compute_dtype=compute_dtype,
    )  # fmt: skip


def native_kernel_layer(cell, weights, xs, initial_carry, *, seq_lengths=None, reverse=False,
                        recurrent_mask=None, unroll=1, time_major=False, mask=None, resets=None,
                        reset_to=None, compute_dtype=None):  # fmt: skip
    """:func:`native_lstm_layer` without its checks (the dispatcher made them)."""
    del cell, unroll
    bf16 = _bf16(compute_dtype)
    h0, c0 = (jnp.asarray(a, jnp.float32) for a in initial_carry)
    reset_h, reset_c = (h0, c0) if reset_to is None else (jnp.asarray(a, jnp.float32)
                                                          for a in reset_to)  # fmt: skip
    dropout = None if recurrent_mask is None else jnp.asarray(recurrent_mask, jnp.float32)

    def run(xs, valid, starts=None, batch_major=False):
        xs = xs.astype(jnp.float32)
        if valid is not None:
            valid = valid.astype(jnp.uint8)
        segments = (None,) * 3
        if starts is not None:
            segments = (start_flags(starts, reverse), reset_h, reset_c)
        ys, h, c = _recurrence(batch_major, bf16, mask is not None, weights.w_ih, weights.b,
                               weights.w_hh, xs, h0, c0, dropout, valid, *segments)  # fmt: skip
        return ys, (h, c)

    return over_time(run, xs, seq_lengths=seq_lengths, reverse=reverse, time_major=time_major,
                     mask=mask, resets=resets, run_batch_major=True)  # fmt: skip
