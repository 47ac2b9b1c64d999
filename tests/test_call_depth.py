"""The Python call path from the public functions to the native custom call stays short
(issue 21): each lstm_jax frame between ``lj.lstm`` and ``jax.ffi.ffi_call`` is tracing
time on every call and one more place to read in a traceback."""

from __future__ import annotations

import pytest

from benchmarks.kernel_timings.call_depth import native_paths
from lstm_jax.kernels.native_ops import native_auto_unavailable

pytestmark = pytest.mark.skipif(
    native_auto_unavailable() is not None,
    reason=f"backend='auto' runs no native kernel here: {native_auto_unavailable()}",
)

# network.{lstm,gru,rnn}, network._network, dispatch.run_auto, the cell's kernel, its
# inference forward, native_ops.ffi_call
MAX_FRAMES = 6


def test_native_call_path_depth():
    for name, frames in native_paths().items():
        assert frames[0] == ("network.py", name), frames
        assert frames[-1] == ("kernels/native_ops.py", "ffi_call"), frames
        assert len(frames) <= MAX_FRAMES, f"lj.{name}: {len(frames)} frames: {frames}"
