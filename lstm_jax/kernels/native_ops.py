"""The native CPU kernels' common layer: the C++ extension, its FFI targets, capability checks,
and the custom VJP / JVP wiring every cell's native recurrence shares.

The C++ in ``csrc/`` is built into ``lstm_jax/_lstm_native*.so`` by ``pip
install`` (``setup.py``; optional: the install succeeds without a compiler)
and called through XLA's FFI (:func:`ffi_call`). Each cell (``native.py``,
``native_gru.py``, ``native_rnn.py``) gives a :class:`NativeOp`: its custom
calls (inference forward, training forward with residuals, backward plus the
weight-gradient GEMMs) and a JAX reference (``scan``) of its forward;
:func:`native_op` makes the differentiable recurrence from it. Derivatives of
the gradients (``jax.hessian``, grad of grad) go through the reference.

``"auto"`` never runs the portable C++ kernels (CPUs without AVX2, e.g. every
ARM CPU, or ``LSTM_JAX_NATIVE_ISA=portable``): they are slower than
``"fused"`` (and the GRU's than ``"scan"``), which run instead;
``backend="native"`` still runs them (:func:`native_auto_unavailable`).

The ``LSTM_JAX_NATIVE_*`` environment variables (instruction set, thread split
thresholds, ...; the table is ``csrc/settings.cc``) are checked when the
extension is loaded: see :func:`check_settings`.
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
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax.kernels.call import LayerCall
from lstm_jax.kernels.platform import platform_only
from lstm_jax.sequence import Steps, prepare_steps

__all__ = [
    "FFI_TARGETS",
    "NativeOp",
    "check_settings",
    "dtype_unsupported",
    "ffi_call",
    "IN_LOOP_MAX_HIDDEN",
    "in_loop_results",
    "isa_fallbacks",
    "is_bf16",
    "library",
    "log_unavailable_once",
    "native_auto_unavailable",
    "native_bf16_isa",
    "native_fma_peak",
    "native_has_bf16",
    "native_isa",
    "native_op",
    "native_steps",
    "native_unavailable",
    "optional_operand",
    "previous_carry",
    "reference_recurrence",
    "register_ffi_targets",
    "reset_carry",
    "start_flags",
    "unknown_settings",
    "weight_gradients_in_loop",
    "why_not",
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


def library() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
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
    lib.LstmJaxFmaPeak.restype = ctypes.c_double
    lib.LstmJaxFmaPeak.argtypes = [ctypes.c_int, ctypes.c_double]


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
            "so compute_dtype=bfloat16 runs 'fused' (the GRU 'scan') under backend='auto'"
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
        return library()[1]
    except ValueError as error:
        return str(error)


def native_unavailable() -> Optional[str]:
    """Why the native kernels cannot run in this process, or None if they can."""
    reason = library()[1]
    if reason is None and jax.default_backend() != "cpu":
        return f"it runs on CPU only, the default backend is {jax.default_backend()!r}"
    return reason


def native_isa() -> Optional[str]:
    """The instruction set the kernels use (``avx512``, ``avx2``, ``portable``), or None."""
    lib = library()[0]
    return None if lib is None else lib.LstmJaxNativeIsa().decode()


def native_fma_peak(threads: int, seconds: float = 0.3) -> Optional[float]:
    """Float32 FLOP/s of ``threads`` threads running independent multiply-adds of
    :func:`native_isa`'s vectors for about ``seconds`` (best of 3 rounds): the peak the
    kernels' instruction set reaches at the clock the cores run at now, for the
    benchmarks' share of peak. None without the extension or with the portable kernels."""
    if threads < 1 or not seconds > 0:
        raise ValueError(f"threads must be >= 1 and seconds > 0, got threads={threads!r}, seconds={seconds!r}")
    lib = library()[0]
    flops = 0.0 if lib is None else lib.LstmJaxFmaPeak(threads, seconds)
    return flops or None


def native_bf16_isa() -> Optional[str]:
    """The bfloat16 kernels' instruction set (``amx``, ``avx512bf16``), or None if there are none.

    They need the ``avx512`` kernels and AVX512_BF16; AMX tiles are used where
    the CPU has AMX-BF16 and Linux grants their use, unless
    ``LSTM_JAX_NATIVE_BF16=avx512bf16`` (read once per process).
    """
    lib = library()[0]
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
    reason = library()[1]
    if reason is None and native_isa() == "portable":
        return (
            "only its portable C++ kernels run here (no AVX2 on this CPU, or "
            f"{_ISA}=portable), which 'auto' does not use (3-6x slower than 'fused' for "
            "LSTM training)"
        )
    return reason


def why_not(call: LayerCall, *, bf16: bool, auto: bool = False) -> Optional[str]:
    """Why a native kernel cannot run ``call``'s dtypes here (:func:`dtype_unsupported`; ``bf16``:
    the kernels have bfloat16 compute), or None. ``auto``: why ``"auto"`` does not run it
    (:func:`native_auto_unavailable`, logged once), else why it cannot run in this process
    (:func:`native_unavailable`)."""
    reason = dtype_unsupported(call.weights, call.xs, call.options.compute_dtype, bf16=bf16)
    if reason is not None or not auto:
        return reason or native_unavailable()
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


def dtype_unsupported(weights: Any, xs: Array, compute_dtype, *, bf16: bool) -> Optional[str]:
    """Why the native kernels cannot run these dtypes, or None: float32 parameters, and
    float32 compute, or bfloat16 too where ``bf16`` (the LSTM's and GRU's kernels) and the CPU
    has it."""
    if weights.w_hh.dtype != jnp.float32 or weights.w_ih.dtype != jnp.float32:
        return f"it needs float32 parameters, got {weights.w_hh.dtype}"
    allowed = (jnp.float32, jnp.bfloat16) if bf16 else (jnp.float32,)
    if compute_dtype is not None and jnp.dtype(compute_dtype) not in allowed:
        names = " or ".join(jnp.dtype(d).name for d in allowed)
        return f"it computes in {names} only, got compute_dtype={jnp.dtype(compute_dtype)}"
    if is_bf16(compute_dtype) and library()[0] is not None and not native_has_bf16():
        return (
            f"this CPU or instruction set ({native_isa()}) has no bfloat16 kernels "
            "(they need avx512 with AVX512_BF16)"
        )
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        return f"xs must be floating point, got {xs.dtype}"
    return None


def is_bf16(compute_dtype) -> bool:
    """Whether ``compute_dtype`` asks for bfloat16 GEMM inputs (else float32)."""
    return compute_dtype is not None and jnp.dtype(compute_dtype) == jnp.bfloat16


def ffi_call(target: str, results, *args, aliases=None, **attributes) -> tuple:
    """The custom call, lowered for CPU only (inside "auto"'s CPU branch of a multi-platform
    export); its results as a tuple."""
    library()  # registers the targets
    call = jax.ffi.ffi_call(
        target, results, vmap_method="broadcast_all", input_output_aliases=aliases or {}
    )
    return tuple(platform_only("cpu", functools.partial(call, **attributes), *args))


def optional_operand(mask: Optional[Array], dtype) -> Array:
    """The array the custom calls read for an absent mask: empty."""
    return jnp.zeros((0,), dtype) if mask is None else mask


def native_steps(call: LayerCall, *, batch_major_ok: bool = False) -> tuple[Steps, tuple]:
    """``call``'s inputs in processing order (:func:`lstm_jax.sequence.prepare_steps`) and the
    custom calls' per-step operands: ``(valid, flags)``, the ``(T, B)`` uint8 step validity
    and the :func:`start_flags` of its resets, each None where the call has none."""
    options = call.options
    steps = prepare_steps(call.xs, seq_lengths=options.seq_lengths, reverse=options.reverse,
                          time_major=options.time_major, mask=options.mask,
                          resets=options.resets, batch_major_ok=batch_major_ok)  # fmt: skip
    valid = None if steps.valid is None else steps.valid.astype(jnp.uint8)
    flags = None if steps.starts is None else start_flags(steps.starts, options.reverse)
    return steps, (valid, flags)


def reset_carry(call: LayerCall) -> Any:
    """The carry ``call``'s resets restore (``reset_to``, else the initial carry) as float32,
    or None without resets."""
    if call.options.resets is None:
        return None
    carry = call.initial_carry if call.options.reset_to is None else call.options.reset_to
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), carry)


def start_flags(starts: Array, reverse: bool) -> Array:
    """:func:`lstm_jax.sequence.segment_starts`'s ``(T, B)`` bools as the custom calls' uint8
    flags: 1 resets the carry before the step; 2 (``reverse``'s first reset of a sequence)
    also makes the carry before it the final one (the first processed segment's)."""
    flags = starts.astype(jnp.uint8)
    if reverse:
        flags = flags + (starts & (jnp.cumsum(starts, axis=0) == 1)).astype(jnp.uint8)
    return flags


# The largest hidden size whose backward accumulates dw_hh and db inside the
# native loop (the rank-B updates of each step's dz while it is in cache, a
# pass per ~64 (step, row) pairs), per (instruction set, cell); above it, and
# for instruction sets not listed, XLA computes them after the loop as GEMMs
# over all T * B rows. Single-core CPU time of a training step on Zen 4
# (benchmarks/results/cpu-amd-epyc-zen4-2c/wgrad_in_loop.md), AVX-512 and AVX2
# alike since the pass packs its operands (two rounds each): in-loop faster at
# H = 64 and 128 for both cells (0.72-0.98x), slower for the LSTM at H = 256
# and 512. The GRU's loop was faster at H = 256 too (0.89-0.95x) while its XLA
# path copied column slices of dz; with dz planar it is not (1.03-1.05x
# AVX-512, 1.01-1.03x AVX2 on the Xeon:
# benchmarks/results/cpu-intel-xeon-2c/gru_planar.md).
IN_LOOP_MAX_HIDDEN = {("avx512", "lstm"): 128, ("avx512", "gru"): 128,
                      ("avx2", "lstm"): 128, ("avx2", "gru"): 128}


# Whether the in-loop weight gradients include the input weights', dw_ih = sum
# x_t^T dz (from the call's xs): after the loop, XLA's GEMM for it ran on one
# core between the loop and the optimizer (e.g. 2.6 ms of a 7 ms LSTM training
# step at (B, T, I, H) = (8, 512, 32, 64)); in the loop each thread sums its own
# rows. 2-core training steps on Zen 4, in the loop over XLA: 0.79-0.97x at H = 64,
# 0.86-1.07x at H = 128 (noise-bound; wgrad_in_loop.md section 5). False leaves
# dw_ih to XLA (for that A/B).
IN_LOOP_INPUT_WEIGHTS = True


def weight_gradients_in_loop(cell: str, steps: int, batch: int, hidden: int) -> bool:
    """Whether the native backward of ``cell`` (``"lstm"``, ``"gru"``) accumulates ``dw_hh`` and
    ``db`` in its loop for a ``(T, B, H)`` call (:data:`IN_LOOP_MAX_HIDDEN`)."""
    return steps * batch > 0 and hidden <= IN_LOOP_MAX_HIDDEN.get((native_isa(), cell), -1)


def in_loop_results(in_loop: bool, inputs: int, hidden: int, gates: int, acts: int):
    """The backward call's ``dw_ih (I, gates * H)``, ``dw_hh (H, gates * H)`` and ``db (acts *
    H)`` results, empty when XLA computes them after the loop (``dw_ih`` also where
    :data:`IN_LOOP_INPUT_WEIGHTS` is False: pass ``inputs`` 0)."""
    shapes = (((inputs, gates * hidden), (hidden, gates * hidden), (acts * hidden,)) if in_loop
              else ((0,), (0,), (0,)))  # fmt: skip
    return tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes)


def previous_carry(h0: Array, hs: Array, starts: Optional[Array], reset_h: Optional[Array],
                   mask: Optional[Array]) -> Array:
    """``h_{t-1} (* mask)`` of every step, ``(T, B, H)``: the row the recurrent weights'
    gradient ``dw_hh = h_prev^T dz`` reads.

    Args:
      h0: ``(B, H)`` the initial carry.
      hs: ``(T, B, H)`` time-major carry after each step (the outputs, or with a per-step
        mask the carried ``h``); past a sequence's end ``dz`` is zero, so what is there
        does not matter.
      starts: ``(T, B)`` :func:`start_flags` or None; where nonzero the reset carry
        ``reset_h (B, H)`` replaces ``h_{t-1}``.
      mask: ``(B, H)`` recurrent dropout mask or None.
    """
    steps = hs.shape[0]
    h_prev = jnp.concatenate([h0[None], hs[:-1]])[:steps]  # [:steps]: T may be 0
    if starts is not None:
        h_prev = jnp.where(starts[:, :, None] != 0, reset_h, h_prev)
    if mask is not None:
        h_prev = h_prev * mask[None]
    return h_prev


def reference_recurrence(cell, weights, xs: Array, carry, recurrent_mask: Optional[Array],
                         valid: Optional[Array], starts: Optional[Array],
                         reset_carry=None):  # fmt: skip
    """The native loops in JAX (``lax.scan`` over ``cell``), time-major, in processing order:
    ``(ys, final carry)``, for derivatives of the gradients.

    ``valid``: ``(T, B)`` uint8 or None; ``starts``: :func:`start_flags` or None, resetting
    the carry to ``reset_carry`` before a flagged step; the final carry is then the one
    after the last step before the first flag 2 (reverse's first processed segment).
    """
    project = jax.vmap(lambda x: cell.project(weights, x))
    step = jax.vmap(cell.step, in_axes=(None, 0, 0, None if recurrent_mask is None else 0))

    def select(flag, new, old):  # flag [B]
        return jax.tree.map(lambda a, b: jnp.where(flag[:, None], a, b), new, old)

    def body(carries, inputs):
        carry, final = carries
        x, keep, start, last = inputs
        if start is not None:
            carry = select(start != 0, reset_carry, carry)
        new = step(weights, carry, project(x), recurrent_mask)
        y = cell.output(new)
        if keep is not None:
            new = select(keep != 0, new, carry)
            y = jnp.where(keep[:, None] != 0, y, jnp.zeros_like(y))
        if last is not None:
            final = select(last, new, final)
        return (new, final), y

    last = None if starts is None else jnp.cumsum(starts == 2, axis=0) == 0
    (carry, final), ys = jax.lax.scan(body, (carry, carry), (xs, valid, starts, last))
    return ys, (carry if starts is None else final)


class NativeOp(NamedTuple):
    """What one cell's native recurrence is made of; :func:`native_op` wires it.

    ``static`` is a hashable tuple of the cell's static options, ``inputs`` a
    tuple of the differentiable arrays (``None`` for an absent optional one),
    ``valid`` the non-differentiable per-step operands: the ``(T, B)`` uint8
    step validity or None (the LSTM and GRU: a pair of it and the
    :func:`start_flags` of ``resets``, or None).

    infer:     ``(static, inputs, valid) -> outputs``, the tuple ``(ys, *final carry)``.
    train:     ``(static, inputs, valid) -> (outputs, saved)``, the residuals.
    gradients: ``(static, inputs, valid, cotangents, outputs, saved) -> grads``,
               one per input (None for an absent one).
    reference: ``(static, inputs, valid) -> outputs`` in JAX, for derivatives
               of the gradients.
    """

    infer: Callable
    train: Callable
    gradients: Callable
    reference: Callable


def native_op(op: NativeOp) -> Callable:
    """``recurrence(static, inputs, valid) -> outputs``: ``op.infer`` with a custom VJP
    (``op.train``, then ``op.gradients``), both differentiable again through
    ``op.reference`` (``custom_jvp``)."""

    def reference(static, inputs, valid):
        return tuple(op.reference(static, inputs, valid))

    @functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
    def train(static, inputs, valid):
        outputs, saved = op.train(static, inputs, valid)
        return tuple(outputs), tuple(saved)

    @train.defjvp
    def train_jvp(static, primals, tangents):
        inputs, valid = primals
        outputs, saved = train(static, inputs, valid)
        _, d_outputs = jax.jvp(lambda i: reference(static, i, valid), (inputs,), (tangents[0],))
        # the residuals are read by gradients only, whose JVP recomputes them
        return (outputs, saved), (d_outputs, jax.tree.map(jnp.zeros_like, saved))

    @functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
    def gradients(static, inputs, valid, cotangents, outputs, saved):
        return op.gradients(static, inputs, valid, cotangents, outputs, saved)

    @gradients.defjvp
    def gradients_jvp(static, primals, tangents):
        inputs, valid, cotangents = primals[:3]

        def reference_gradients(inputs, cotangents):
            return jax.vjp(lambda i: reference(static, i, valid), inputs)[1](cotangents)[0]

        _, d_grads = jax.jvp(reference_gradients, (inputs, cotangents), (tangents[0], tangents[2]))
        return gradients(static, *primals), d_grads

    recurrence = jax.custom_vjp(op.infer, nondiff_argnums=(0,))  # op.infer itself: no adapter

    def recurrence_fwd(static, inputs, valid):
        outputs, saved = train(static, inputs, valid)
        return outputs, (inputs, valid, outputs, saved)

    def recurrence_bwd(static, residuals, cotangents):
        return gradients(static, *residuals[:2], cotangents, *residuals[2:]), None

    recurrence.defvjp(recurrence_fwd, recurrence_bwd)
    return recurrence
