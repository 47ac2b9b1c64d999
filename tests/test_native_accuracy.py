"""The native kernels keep float32's relative accuracy at every input scale.

Each instruction set (this process's here, the others through
``tests/test_native_isas.py``) runs the LSTM and the GRU, outputs, final state
and every gradient, at input scales 1e-2, 1e-4 and 1e-6 with zero biases (as
Flax and Keras initialise them, so small inputs give small gates and outputs),
against the same network in float64. The error is normwise per leaf, ``max|got - ref| / max|ref|``: a
formula that subtracts nearly equal numbers (``tanh(x) = 2 sigmoid(2x) - 1``
did) has an absolute error floor, which this measure catches as the scale
shrinks (it gave 2e-3 at 1e-4 and 0.2 at 1e-6). Each leaf must be within
1e-6, or within twice the error of ``"scan"`` in float32 where float32 itself
cannot do better (a gradient summed over terms that cancel: ``scan`` measured
1.0e-6 on the input gradient at scale 1e-4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from lstm_jax.kernels.native_ops import native_unavailable

pytestmark = pytest.mark.skipif(
    native_unavailable() is not None, reason=f"native kernels unavailable: {native_unavailable()}"
)

SCALES = (1e-2, 1e-4, 1e-6)
TOLERANCE = 1e-6  # float32 eps is 1.2e-7; sums over B * T steps add a few ulp
B, T, I, H = 7, 9, 5, 21  # H = 21: a full AVX-512 panel and a partial one


def worst_errors(cell: str) -> dict[str, float]:
    """For each input scale, the largest normwise error over outputs, final states and
    gradients of ``backend="native"`` in float32 against ``"scan"`` in float64 (x64
    enabled), each divided by the larger of 1e-6 and twice ``"scan"``'s float32 error:
    below 1 means accurate."""
    init, run = (lj.init_lstm, lj.lstm) if cell == "lstm" else (lj.init_gru, lj.gru)
    params = init(jax.random.key(0), I, H, bidirectional=True, dtype=jnp.float32)
    params = jax.tree.map(lambda a: a * 0 if a.ndim == 1 else a, params)  # zero biases
    lengths = jnp.array([9, 3, 1, 9, 5, 2, 8], jnp.int32)

    def loss(backend):
        def f(params, xs):
            ys, state = run(params, xs, seq_lengths=lengths, backend=backend)
            # scaled back to O(1) so that every gradient term counts alike
            scale = jnp.max(jnp.abs(xs))
            return jnp.sum(jnp.sin(ys / scale)) + sum(jnp.sum(s / scale) for s in
                                                      jax.tree.leaves(state)), (ys, state)  # fmt: skip

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

    def leaf_errors(got, ref):  # the summed loss value itself is left out
        pairs = zip(jax.tree.leaves(got[0][1]) + jax.tree.leaves(got[1]),
                    jax.tree.leaves(ref[0][1]) + jax.tree.leaves(ref[1]))  # fmt: skip
        return [float(np.max(np.abs(np.asarray(a, np.float64) - r)) / np.max(np.abs(r)))
                for a, r in pairs]  # fmt: skip

    native, scan = loss("native"), loss("scan")  # compiled once for every scale
    errors = {}
    for scale in SCALES:
        xs = scale * jax.random.normal(jax.random.key(1), (B, T, I), jnp.float32)
        ref = scan(*jax.tree.map(lambda a: a.astype(jnp.float64), (params, xs)))
        ours = leaf_errors(native(params, xs), ref)
        single = leaf_errors(scan(params, xs), ref)
        errors[f"{scale:g}"] = max(n / max(TOLERANCE, 2 * s) for n, s in zip(ours, single))
    return errors


@pytest.mark.isa
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_relative_error_at_small_input_scales(cell):
    with jax.enable_x64(True):
        by_scale = worst_errors(cell)
    assert max(by_scale.values()) < 1, by_scale
