"""Values past ``seq_lengths`` never matter: NaN, inf or 1e30 in the padding change
no output, no final state and no gradient, on every pair of the backend matrix
(``tests/backends.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.backends import matrix

# LSTM variants, each drawn for the pairs that take it (the kernels implement the plain LSTM)
VARIANTS = [{}, {"peephole": True}, {"layer_norm": True}, {"proj_size": 2}]
BAD_VALUES = [np.nan, np.inf, -np.inf, 1e30]


def _loss(run, backend, remat, lengths, time_major):
    """A loss that weighs every output and every final state differently."""

    def loss(params, xs, state):
        ys, final = run(params, xs, initial_state=state, seq_lengths=lengths,
                        backend=backend, remat=remat, time_major=time_major)  # fmt: skip
        total = jnp.sum(ys * jnp.sin(ys))
        for k, leaf in enumerate(jax.tree_util.tree_leaves(final)):
            total = total + jnp.sum((1.3 + k) * leaf + leaf * leaf)
        return total, (ys, final)

    return loss


@st.composite
def padded_cases(draw, pair):
    time = draw(st.integers(2, 6))
    lengths = draw(st.lists(st.integers(1, time), min_size=1, max_size=3))
    if min(lengths) == time:  # at least one sequence has padding
        lengths[0] = draw(st.integers(1, time - 1))
    options = dict(
        num_layers=draw(st.integers(1, 2)),
        bidirectional=draw(st.booleans()),
    )
    options.update(draw(st.sampled_from([v for v in VARIANTS if pair.takes(*v)])))
    return dict(
        time=time,
        lengths=lengths,
        options=options,
        remat=draw(st.sampled_from([False, True, 2])),
        time_major=draw(st.booleans()),
        bad=draw(st.sampled_from(BAD_VALUES)),
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.mark.parametrize("pair", matrix(), ids=str)
@settings(max_examples=2, deadline=None)
@given(data=st.data())
def test_padding_values_change_nothing(pair, data):
    _check(pair, data.draw(padded_cases(pair)))


@pytest.mark.slow
@pytest.mark.parametrize("pair", matrix(), ids=str)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_padding_values_change_nothing_many(pair, data):
    _check(pair, data.draw(padded_cases(pair)))


def _check(pair, case):
    init, run = pair.init, pair.run
    batch, time = len(case["lengths"]), case["time"]
    keys = jax.random.split(jax.random.key(case["seed"]), 3)
    params = init(keys[0], 3, 4, **case["options"])
    xs = jax.random.normal(keys[1], (batch, time, 3))
    lengths = jnp.array(case["lengths"], jnp.int32)
    valid = np.arange(time)[None, :] < np.array(case["lengths"])[:, None]  # [B, T]
    xs_zero = jnp.where(valid[:, :, None], xs, 0.0)
    xs_bad = jnp.where(valid[:, :, None], xs, case["bad"])
    _, final = run(params, xs[:, :1])
    state = jax.tree_util.tree_map(
        lambda leaf: jax.random.normal(keys[2], leaf.shape), final
    )  # a random initial state of the right shape
    if case["time_major"]:
        xs_zero, xs_bad = jnp.swapaxes(xs_zero, 0, 1), jnp.swapaxes(xs_bad, 0, 1)
    loss = _loss(run, pair.name, case["remat"], lengths, case["time_major"])
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (value_ref, out_ref), grads_ref = grad(params, xs_zero, state)
    (value, out), grads = grad(params, xs_bad, state)
    for got, want in zip(jax.tree_util.tree_leaves((value, out, grads)),
                         jax.tree_util.tree_leaves((value_ref, out_ref, grads_ref))):  # fmt: skip
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
    dxs = grads[1] if not case["time_major"] else jnp.swapaxes(grads[1], 0, 1)
    np.testing.assert_array_equal(np.asarray(dxs)[~valid], 0.0)
