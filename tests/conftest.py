"""Shared test settings: fail loudly on accidental broadcasting or dtype promotion, share one
compilation cache across the run, and compile XLA:CPU programs with LLVM at -O0.

Most of the suite's time is compiling many small programs, not running them: LLVM's
optimisations take ~28% of it (tests/test_kernels.py and tests/test_docs.py: 124 -> 91 s)
and change no result the tests check (the HLO, its fusion and buffer assignment, stay as they
are; memory analyses included). Subprocesses (examples, per-ISA reruns) inherit the setting.
An ``--xla_backend_optimization_level`` already in ``XLA_FLAGS`` wins.
"""

import atexit
import os
import shutil
import tempfile

# One persistent compilation cache for the whole run, shared by the xdist workers and every
# subprocess (the per-ISA reruns compile the same programs as the tests here; the FFI custom
# calls are looked up by name, so a cached program runs whichever kernels the process chose).
# Created by the first process (pytest's controller), removed when that process exits;
# a JAX_COMPILATION_CACHE_DIR set by the user is used as it is and kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="lstm_jax_test_jit_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402  (after XLA_FLAGS: XLA reads them when its backend starts)

jax.config.update("jax_numpy_rank_promotion", "raise")

# Seconds each of the longest files took (one xdist worker, LLVM -O0, 2-core Zen 4). xdist's
# --dist loadfile hands files to workers in collection order; starting the longest first keeps
# one worker from running a long file alone at the end (longest-first scheduling).
LONGEST_FILES = {
    "test_resets_mask.py": 126, "test_docs.py": 121, "test_examples.py": 103,
    "test_kernels.py": 98, "test_native_isas.py": 67, "test_native.py": 65,
    "test_benchmarks.py": 64, "test_batch_zero.py": 58, "test_cells.py": 46,
    "test_native_bf16.py": 44, "test_training.py": 43, "test_accel.py": 39,
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -LONGEST_FILES.get(item.path.name, 0))  # stable: order within a file kept
