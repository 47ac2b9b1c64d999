"""Property tests: ragged batches, jit vs eager, vmap vs batch on every pair of the backend
matrix (``tests/backends.py``); float64 mode; no recompilation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lstm_jax as lj
from tests.backends import matrix

_settings = settings(max_examples=1, deadline=None)  # per pair: one draw of each of ~9 pairs
_pairs = pytest.mark.parametrize("pair", matrix(), ids=str)


def _final_h(final):
    return final.h if isinstance(final, lj.LSTMState) else final


@st.composite
def ragged_cases(draw, pair):
    """``(kind, run, params, xs (B, T, 3), lengths (B,))`` for a random network of ``pair``
    (its ``run`` bound to the pair's backend) and a ragged batch."""
    kind = pair.kind
    num_layers = draw(st.integers(1, 2))
    bidirectional = draw(st.booleans())
    time = draw(st.integers(1, 6))
    lengths = draw(st.lists(st.integers(1, time), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**16))
    init, run = pair.init, functools.partial(pair.run, backend=pair.name)
    params = init(jax.random.key(seed), 3, 4, num_layers=num_layers, bidirectional=bidirectional)
    xs = jax.random.normal(jax.random.key(seed + 1), (len(lengths), time, 3))
    return kind, run, params, xs, jnp.array(lengths)


@_pairs
@_settings
@given(data=st.data())
def test_padded_batch_equals_each_sequence_alone(pair, data):
    case = data.draw(ragged_cases(pair))
    kind, run, params, xs, lengths = case
    ys, final = run(params, xs, seq_lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        ys_b, final_b = run(params, xs[b, :n])  # unbatched, exactly n steps
        np.testing.assert_allclose(ys[b, :n], ys_b, atol=1e-5)
        np.testing.assert_array_equal(ys[b, n:], 0.0)
        np.testing.assert_allclose(_final_h(final)[:, b], _final_h(final_b), atol=1e-5)
        if kind == "lstm":
            np.testing.assert_allclose(final.c[:, b], final_b.c, atol=1e-5)


@_pairs
@_settings
@given(data=st.data())
def test_jit_equals_eager(pair, data):
    case = data.draw(ragged_cases(pair))
    _, run, params, xs, lengths = case
    eager = run(params, xs, seq_lengths=lengths)
    jitted = jax.jit(run)(params, xs, seq_lengths=lengths)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@_pairs
@_settings
@given(data=st.data())
def test_vmap_of_unbatched_equals_batched(pair, data):
    case = data.draw(ragged_cases(pair))
    _, run, params, xs, lengths = case
    ys, final = run(params, xs, seq_lengths=lengths)
    ys_v, final_v = jax.vmap(lambda x, n: run(params, x, seq_lengths=n))(xs, lengths)
    np.testing.assert_allclose(ys_v, ys, atol=1e-6)
    # vmap puts the batch axis first; the batched call has it second
    np.testing.assert_allclose(jnp.swapaxes(_final_h(final_v), 0, 1), _final_h(final), atol=1e-6)


def test_float64_mode_keeps_float64():
    with jax.enable_x64(True):
        params = lj.init_lstm(jax.random.key(0), 3, 4, num_layers=2, dtype=jnp.float64)
        xs = jax.random.normal(jax.random.key(1), (2, 5, 3), jnp.float64)
        ys, state = lj.lstm(params, xs, seq_lengths=jnp.array([5, 2]))
        assert ys.dtype == jnp.float64 and state.h.dtype == jnp.float64
        grads = jax.grad(lambda p: jnp.sum(lj.lstm(p, xs)[0]))(params)
        assert all(g.dtype == jnp.float64 for g in jax.tree_util.tree_leaves(grads))


def test_second_call_does_not_recompile():
    params = lj.init_lstm(jax.random.key(0), 3, 4)
    run = jax.jit(lj.lstm)
    xs = jnp.ones((2, 5, 3))
    run(params, xs)
    size = run._cache_size()
    run(params, xs + 1.0)
    assert run._cache_size() == size
