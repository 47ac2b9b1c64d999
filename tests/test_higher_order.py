"""Second derivatives and Jacobians of every kernel of the backend matrix
(``tests/backends.py``), eager and jitted.

The custom-VJP kernels support reverse mode, so ``jax.hessian`` (forward over
reverse) and ``jax.jacrev`` must work through them and equal the ``scan``
reference, which JAX differentiates directly. Eager ``jax.hessian`` of the
fused kernel once crashed XLA:CPU's fusion emitter (see ``fused._index``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.backends import NETWORKS, matrix

I, H = 2, 3
KERNELS = [pair for pair in matrix() if pair.name != "scan"]  # scan: the reference


def _setup(kind, steps, ragged):
    params = NETWORKS[kind][0](jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (1, steps, I))
    lengths = jnp.array([min(3, steps)], jnp.int32) if ragged else None
    return params, xs, lengths


def _loss(kind, backend, lengths):
    def loss(params, xs):
        ys, state = NETWORKS[kind][1](params, xs, seq_lengths=lengths, backend=backend)
        return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(state))

    return loss


@functools.lru_cache(maxsize=None)
def _reference(kind, steps, ragged):
    params, xs, lengths = _setup(kind, steps, ragged)
    loss = _loss(kind, "scan", lengths)
    return (
        jax.jit(jax.hessian(loss, argnums=1))(params, xs),
        jax.jit(jax.jacrev(loss, argnums=0))(params, xs),
        jax.jit(jax.hessian(loss, argnums=0))(params, xs),
    )


def _close(got, want):
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)


def _check(pair, steps, ragged, eager_only):
    params, xs, lengths = _setup(pair.kind, steps, ragged)
    loss = _loss(pair.kind, pair.name, lengths)
    hess_xs, jac_params, hess_params = _reference(pair.kind, steps, ragged)
    _close(jax.hessian(loss, argnums=1)(params, xs), hess_xs)  # eager
    _close(jax.jacrev(loss, argnums=0)(params, xs), jac_params)  # eager
    if not eager_only:
        _close(jax.jit(jax.hessian(loss, argnums=0))(params, xs), hess_params)
        _close(jax.jit(jax.jacrev(jax.grad(loss, argnums=1), argnums=1))(params, xs), hess_xs)


# eager, 5 ragged steps: the reported crash (fused._index) fails here; more T, unragged
# and jitted: the slow test below
@pytest.mark.parametrize("pair", KERNELS, ids=str)
def test_eager_hessian_and_jacrev(pair):
    _check(pair, 5, True, eager_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("pair", KERNELS, ids=str)
@pytest.mark.parametrize("steps", [1, 5, 40])
@pytest.mark.parametrize("ragged", [False, True])
def test_hessian_and_jacrev_eager_and_jit(pair, steps, ragged):
    _check(pair, steps, ragged, eager_only=False)
