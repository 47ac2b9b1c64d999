"""The backend matrix: every (backend, cell kind) pair that runs on this machine.

The one place the tests read the kernel table (``lstm_jax.kernels.BACKENDS``,
backend -> cell kinds), so a kernel added there joins every property test with
no test edits. Whether a pair runs here, and which options it takes, is asked of
the library itself: a tiny call is traced (``jax.eval_shape``, nothing compiled)
and counts as refused when it raises ``ValueError`` (a kernel that does not
implement the option, or cannot run here: the native kernels without their
extension) or warns ``RuntimeWarning`` (``"cudnn"`` running ``"scan"`` off GPU).

``"auto"`` is in the matrix for each cell kind where it is not simply ``"scan"``:
its dispatch is code of its own.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp

import lstm_jax as lj
from lstm_jax.kernels import BACKENDS
from lstm_jax.kernels.dispatch import AUTO

NETWORKS = {
    "lstm": (lj.init_lstm, lj.lstm),
    "gru": (lj.init_gru, lj.gru),
    "rnn": (lj.init_rnn, lj.rnn),
}
# option -> (init keywords, call keywords) of the probe that asks whether a pair takes it
_STEP = jnp.ones((1, 2), bool)  # [B, T]
OPTIONS = {
    "resets": ({}, {"resets": _STEP}),
    "mask": ({}, {"mask": _STEP}),
    "peephole": ({"peephole": True}, {}),
    "layer_norm": ({"layer_norm": True}, {}),
    "proj_size": ({"proj_size": 2}, {}),
}


class Backend(NamedTuple):
    """One (backend, cell kind) pair of the matrix."""

    name: str
    kind: str

    def __str__(self) -> str:  # the pytest id
        return f"{self.kind}-{self.name}"

    @property
    def init(self):
        return NETWORKS[self.kind][0]

    @property
    def run(self):
        return NETWORKS[self.kind][1]

    def takes(self, *options: str) -> bool:
        """Whether this pair runs calls with every one of ``options`` (keys of ``OPTIONS``)."""
        return all(refusal(self.name, self.kind, option) is None for option in options)


@functools.cache
def refusal(backend: str, kind: str, option: str | None = None) -> str | None:
    """Why a tiny ``kind`` call with ``backend`` (and ``option``) does not run here, or None."""
    init_kw, call_kw = OPTIONS[option] if option else ({}, {})
    init, run = NETWORKS[kind]
    try:
        params = init(jax.random.key(0), 2, 3, **init_kw)
    except TypeError as error:  # a variant this cell kind does not have
        return str(error)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            jax.eval_shape(
                lambda p, xs: run(p, xs, backend=backend, **call_kw), params, jnp.zeros((1, 2, 2))
            )
    except (ValueError, RuntimeWarning) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _backends() -> tuple[str, ...]:
    """``"auto"`` and every backend of the table."""
    return ("auto", *BACKENDS)


def _kinds(backend: str) -> tuple[str, ...]:
    """The cell kinds ``backend`` implements; ``"auto"`` where it is more than ``"scan"``."""
    if backend != "auto":
        return BACKENDS[backend]
    kinds = dict.fromkeys(k for ks in BACKENDS.values() for k in ks)
    return tuple(k for k in kinds if set(AUTO[k].values()) != {"scan"})


def all_pairs() -> list[Backend]:
    """Every pair of the table, whether or not it runs here."""
    return [Backend(b, k) for b in _backends() for k in _kinds(b)]


def left_out() -> dict[Backend, str]:
    """The pairs that cannot run here, with why."""
    reasons = {pair: refusal(*pair) for pair in all_pairs()}
    return {pair: reason for pair, reason in reasons.items() if reason is not None}


def matrix(
    *, kinds: tuple[str, ...] = tuple(NETWORKS), takes: tuple[str, ...] = ()
) -> list[Backend]:
    """The pairs that run here, of ``kinds``, taking every option in ``takes``.

    Parametrize with ``ids=str`` for ids like ``"lstm-native"``.
    """
    out = left_out()
    return [p for p in all_pairs() if p.kind in kinds and p not in out and p.takes(*takes)]
