"""How deep lstm_jax's Python call path is, from ``lj.lstm`` / ``lj.gru`` / ``lj.rnn`` down to
``jax.ffi.ffi_call`` (the native custom call), counted in lstm_jax's own frames.

Lowers ``jax.jit(fn)`` on CPU with ``jax.ffi.ffi_call`` replaced by a spy that
records the stack; jax's frames (``platform_dependent``, ``custom_vjp``, ...)
are not counted. ``tests/test_call_depth.py`` bounds the counts.

    python benchmarks/kernel_timings/call_depth.py    # prints each path
"""

from __future__ import annotations

import os
import traceback
from typing import Callable
from unittest import mock

import jax
import jax.numpy as jnp

import lstm_jax as lj

_PACKAGE = os.path.dirname(os.path.abspath(lj.__file__)) + os.sep


def lstm_jax_frames(fn: Callable, params, xs) -> list[tuple[str, str]]:
    """``(file inside lstm_jax/, function)`` of each lstm_jax frame, outermost first, on the
    stack at the first ``jax.ffi.ffi_call`` while ``jax.jit(fn)(params, xs)`` is lowered."""
    stacks = []

    def spy(*args, **kwargs):
        stacks.append(traceback.extract_stack())
        return real(*args, **kwargs)

    real = jax.ffi.ffi_call
    with mock.patch.object(jax.ffi, "ffi_call", spy):
        jax.jit(fn).lower(params, xs)
    if not stacks:
        raise RuntimeError(f"{fn.__name__} made no FFI call: is the native extension built?")
    frames = [f for f in stacks[0] if f.filename.startswith(_PACKAGE)]
    return [(f.filename[len(_PACKAGE):], f.name) for f in frames]


def native_paths() -> dict[str, list[tuple[str, str]]]:
    """The lstm_jax frames of ``lj.lstm``, ``lj.gru`` and ``lj.rnn`` (``backend="auto"``, one
    layer, (B, T, I, H) = (2, 5, 8, 16)) at their custom call."""
    key, xs = jax.random.key(0), jnp.ones((2, 5, 8))
    return {
        "lstm": lstm_jax_frames(lj.lstm, lj.init_lstm(key, 8, 16), xs),
        "gru": lstm_jax_frames(lj.gru, lj.init_gru(key, 8, 16), xs),
        "rnn": lstm_jax_frames(lj.rnn, lj.init_rnn(key, 8, 16), xs),
    }


if __name__ == "__main__":
    for name, frames in native_paths().items():
        print(f"lj.{name}: {len(frames)} lstm_jax frames")
        for file, function in frames:
            print(f"  {file} {function}")
