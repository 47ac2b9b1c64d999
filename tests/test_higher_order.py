"""Second derivatives and Jacobians of every backend that runs on CPU, eager and jitted.

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

import lstm_jax as lj

I, H = 2, 3


def _setup(steps, ragged):
    params = lj.init_lstm(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (1, steps, I))
    lengths = jnp.array([min(3, steps)], jnp.int32) if ragged else None
    return params, xs, lengths


def _loss(backend, lengths):
    def loss(params, xs):
        ys, state = lj.lstm(params, xs, seq_lengths=lengths, backend=backend)
        return jnp.sum(ys**2) + jnp.sum(jnp.sin(state.c))

    return loss


@functools.lru_cache(maxsize=None)
def _reference(steps, ragged):
    params, xs, lengths = _setup(steps, ragged)
    loss = _loss("scan", lengths)
    return (
        jax.jit(jax.hessian(loss, argnums=1))(params, xs),
        jax.jit(jax.jacrev(loss, argnums=0))(params, xs),
        jax.jit(jax.hessian(loss, argnums=0))(params, xs),
    )


def _close(got, want):
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)


def _check(backend, steps, ragged, eager_only):
    params, xs, lengths = _setup(steps, ragged)
    loss = _loss(backend, lengths)
    hess_xs, jac_params, hess_params = _reference(steps, ragged)
    _close(jax.hessian(loss, argnums=1)(params, xs), hess_xs)  # eager
    _close(jax.jacrev(loss, argnums=0)(params, xs), jac_params)  # eager
    if not eager_only:
        _close(jax.jit(jax.hessian(loss, argnums=0))(params, xs), hess_params)
        _close(jax.jit(jax.jacrev(jax.grad(loss, argnums=1), argnums=1))(params, xs), hess_xs)


# the two configurations of the reported crash (all T and both modes: slow test below)
@pytest.mark.parametrize("backend", ["fused", "pallas"])
@pytest.mark.parametrize("steps, ragged", [(5, True), (40, False)])
def test_eager_hessian_and_jacrev(backend, steps, ragged):
    _check(backend, steps, ragged, eager_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["fused", "auto", "pallas"])
@pytest.mark.parametrize("steps", [1, 5, 40])
@pytest.mark.parametrize("ragged", [False, True])
def test_hessian_and_jacrev_eager_and_jit(backend, steps, ragged):
    _check(backend, steps, ragged, eager_only=False)
