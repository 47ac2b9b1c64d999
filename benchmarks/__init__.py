"""The benchmark suite of lstm_jax: ``python -m benchmarks --quick --out DIR``.

lstm_jax (once per registered backend that implements "lstm" and runs on this
platform) against Flax linen and NNX, Equinox, PyTorch and, on GPU,
``jax.experimental.rnn``. Every peer is loaded with the same weights and must
compute the same function as ``lstm_jax`` (scan backend) before it is timed.

Modules: ``grid`` (cases as constants), ``peers`` (a package, one module
per implementation), ``runner`` (check, compile, interleaved timing), ``report``
(speed-ups, JSON, Markdown, plots), ``machine`` (machine and versions),
``cli`` (the command line).

>>> from benchmarks import run, tiny_grid, write   # doctest: +SKIP
>>> results = write(run(tiny_grid()), "/tmp/bench")  # doctest: +SKIP
"""

import os

# JAX and PyTorch share the GPU in one process: no 75% preallocation by XLA.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

_LAZY = {"Case": "grid", "Config": "grid", "Grid": "grid", "full_grid": "grid", "quick_grid": "grid",
         "tiny_grid": "grid", "run": "runner"}


def __getattr__(name: str):
    # Lazy: importing the package must not load lstm_jax, jax's backend or torch, so that
    # ``--isa`` (benchmarks.isa_emulation) can set what they read once, first.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"benchmarks.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")


def write(results: dict, out_dir: str) -> dict:
    """Add machine, versions, date and command to ``run``'s results and write the files."""
    from benchmarks import report
    from benchmarks.machine import machine_info, run_info, versions

    return report.write({"machine": machine_info(), "versions": versions(), **run_info(), **results},
                        out_dir)  # fmt: skip


__all__ = ["Case", "Config", "Grid", "full_grid", "quick_grid", "run", "tiny_grid", "write"]
