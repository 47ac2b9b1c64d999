"""An empty batch runs forward and backward on every pair of the backend matrix
(``tests/backends.py``), plain and with the variants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.backends import matrix

VARIANT = {"proj_size": 2, "peephole": True}
CASES = [pytest.param(pair, {}, id=str(pair)) for pair in matrix()] + [
    pytest.param(pair, VARIANT, id=f"{pair}-variant") for pair in matrix(takes=tuple(VARIANT))
]


@pytest.mark.parametrize("pair, options", CASES)
@pytest.mark.parametrize("remat, time_major", [(False, False), (True, True)])
def test_batch_zero_forward_and_backward(pair, options, remat, time_major):
    init, run, backend = pair.init, pair.run, pair.name
    params = init(jax.random.key(0), 3, 4, num_layers=2, bidirectional=True, **options)
    xs = jnp.zeros((5, 0, 3) if time_major else (0, 5, 3))
    lengths = jnp.zeros((0,), jnp.int32)

    def loss(params, xs):
        ys, final = run(params, xs, seq_lengths=lengths, backend=backend, remat=remat,
                        time_major=time_major)  # fmt: skip
        return jnp.sum(ys) + sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(final)), (ys, final)

    (value, (ys, final)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, xs)
    out_size = 2 * options.get("proj_size", 4)
    assert ys.shape == ((5, 0, out_size) if time_major else (0, 5, out_size))
    assert all(leaf.shape[:2] == (4, 0) for leaf in jax.tree_util.tree_leaves(final))
    assert float(value) == 0.0
    assert grads[1].shape == xs.shape
    for leaf in jax.tree_util.tree_leaves(grads[0]):
        np.testing.assert_array_equal(leaf, 0.0)
