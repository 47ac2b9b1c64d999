"""The tests marked ``isa`` rerun under each other instruction set of the native kernels.

The instruction set is chosen once per process (``LSTM_JAX_NATIVE_ISA``), so
each one below this CPU's runs in one pytest subprocess over the marked tests
of ``ISA_FILES``; this process runs them under its own.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lstm_jax.kernels.native_ops import native_isa, native_unavailable

pytestmark = pytest.mark.skipif(
    native_unavailable() is not None, reason=f"native kernels unavailable: {native_unavailable()}"
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISA_FILES = ("tests/test_native_isas.py", "tests/test_native.py", "tests/test_native_accuracy.py",
             "tests/test_resets_mask.py", "tests/test_wgrad_in_loop.py")
ORDER = ("avx512", "avx2", "portable")


def _below_this_cpu() -> list[str]:
    here = native_isa()
    return list(ORDER[ORDER.index(here) + 1 :]) if here in ORDER else []


def _pytest_passes(settings: dict[str, str], *args: str) -> str:
    """Runs pytest on ``args`` in a subprocess with these environment ``settings`` (the native
    ones are read once per process); asserts that it passed and returns its summary line."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *args]
    result = subprocess.run(command, cwd=ROOT, env=dict(os.environ, **settings), capture_output=True,
                            text=True, timeout=1800, check=False)  # fmt: skip
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert "passed" in summary, summary
    return summary


@pytest.mark.isa
def test_the_instruction_set_asked_for_runs():
    asked = os.environ.get("LSTM_JAX_NATIVE_ISA")
    assert native_isa() == (asked or native_isa())


@pytest.mark.parametrize("isa", _below_this_cpu())
def test_marked_tests_pass_under(isa):
    summary = _pytest_passes({"LSTM_JAX_NATIVE_ISA": isa}, "-m", "isa and not slow", *ISA_FILES)
    assert "skipped" not in summary, summary


def test_packed_weights_are_written_in_full():
    """The handlers reuse a thread's scratch without zeroing its packed-weight part, so every
    pack function must write all of it: with ``LSTM_JAX_NATIVE_POISON_REUSED=1`` that part is
    NaN whenever a scratch is reused, and the float32 and bfloat16 layer tests must still pass."""
    _pytest_passes({"LSTM_JAX_NATIVE_POISON_REUSED": "1"},
                   "tests/test_native.py::test_layer_matches_scan", "tests/test_native_bf16.py")
