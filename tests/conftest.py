"""Shared test settings: fail loudly on accidental broadcasting or dtype promotion, and
compile XLA:CPU programs with LLVM at -O0.

Most of the suite's time is compiling many small programs, not running them: LLVM's
optimisations take ~28% of it (tests/test_kernels.py and tests/test_docs.py: 124 -> 91 s)
and change no result the tests check (the HLO, its fusion and buffer assignment, stay as they
are; memory analyses included). Subprocesses (examples, per-ISA reruns) inherit the setting.
An ``--xla_backend_optimization_level`` already in ``XLA_FLAGS`` wins.
"""

import os

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402  (after XLA_FLAGS: XLA reads them when its backend starts)

jax.config.update("jax_numpy_rank_promotion", "raise")
