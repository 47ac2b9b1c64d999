"""The backend matrix of ``tests/backends.py`` leaves out only what cannot run here."""

import jax

from lstm_jax.kernels.native_ops import native_unavailable
from tests.backends import all_pairs, left_out, matrix


def test_only_pairs_that_cannot_run_here_are_left_out():
    """A kernel refusing a plain call for another reason (a bug) would silently drop out
    of every property test: only cuDNN off GPU (it warns and runs ``"scan"``) and the
    native kernels without their extension may be left out."""
    for pair, reason in left_out().items():
        if pair.name == "cudnn":
            assert jax.default_backend() != "gpu" and reason.startswith("RuntimeWarning"), reason
        else:
            assert pair.name == "native" and native_unavailable() is not None, (pair, reason)


def test_every_kind_has_its_reference_and_takes_every_per_step_option():
    """``scan`` runs every cell kind with ``resets`` and ``mask``: the property tests'
    reference."""
    scan = [pair for pair in matrix(takes=("resets", "mask")) if pair.name == "scan"]
    assert {pair.kind for pair in scan} == {pair.kind for pair in all_pairs()}
