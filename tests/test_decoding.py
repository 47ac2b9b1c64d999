"""lstm_jax.decoding: beam search against brute force on toy step functions where the best is known."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.decoding import beam_search, greedy_search

EOS, BOS = 0, 4  # vocabulary 0..3 (0 is EOS); BOS is an extra input row of the tables


def second_order_step(table):
    """log p(next | previous two tokens): the carry holds the previous token."""

    def step(carry, tokens):
        return table[carry, tokens], tokens

    return step


def brute_force(table, first, max_len, alpha):
    """Best (normalised score, tokens) over every output of ``max_len`` tokens."""
    best = (-np.inf, None)
    for seq in itertools.product(range(4), repeat=max_len):
        if EOS in seq and any(t != EOS for t in seq[seq.index(EOS):]):
            continue  # after EOS only EOS: one copy of each hypothesis
        prev2, prev, total, length = first, BOS, 0.0, 0
        for t in seq:
            if length and seq[length - 1] == EOS:
                break
            total += table[prev2, prev, t]
            prev2, prev, length = prev, t, length + 1
        score = total / length**alpha
        if score > best[0]:
            best = (score, list(seq))
    return best


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_exhaustive_beam_is_brute_force(alpha):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 5, 4)) * 2
    table = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
    firsts = np.array([0, 2, 4])  # three inputs: different first carries
    seqs, scores = jax.jit(
        lambda c: beam_search(second_order_step(jnp.asarray(table, jnp.float32)), c, bos_id=BOS,
                              eos_id=EOS, beam_size=64, max_len=3, length_penalty=alpha)
    )(jnp.asarray(firsts))  # fmt: skip
    for b, first in enumerate(firsts):
        score, seq = brute_force(table, first, 3, alpha)
        assert seqs[b, 0].tolist() == seq
        np.testing.assert_allclose(scores[b, 0], score, rtol=1e-5)
        finite = np.asarray(scores[b])[np.isfinite(scores[b])]
        assert np.all(np.diff(finite) <= 1e-6) and np.isfinite(scores[b, : len(finite)]).all()


def test_beam_finds_what_greedy_misses():
    p = np.full((5, 5, 4), 0.25)
    p[:, BOS] = [0.0, 0.6, 0.4, 0.0]  # greedy takes token 1 ...
    p[:, 1] = [0.34, 0.33, 0.33, 0.0]  # ... which leads nowhere good
    p[:, 2] = [0.95, 0.05, 0.0, 0.0]  # token 2 then EOS: 0.38 > 0.6 * 0.34
    table = jnp.log(jnp.asarray(p, jnp.float32))
    step = second_order_step(table)
    greedy = greedy_search(step, jnp.zeros((1,), jnp.int32), bos_id=BOS, eos_id=EOS, max_len=2)
    assert greedy.tolist() == [[1, 0]]
    seqs, _ = beam_search(step, jnp.zeros((1,), jnp.int32), bos_id=BOS, eos_id=EOS,
                          beam_size=2, max_len=2, length_penalty=0.0)  # fmt: skip
    assert seqs[0, 0].tolist() == [2, 0]


def test_beam_of_one_is_greedy():
    rng = np.random.default_rng(1)
    table = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(5, 5, 4)) * 2, jnp.float32), -1)
    step = second_order_step(table)
    carry = jnp.array([0, 1, 2, 3, 4])
    greedy = greedy_search(step, carry, bos_id=BOS, eos_id=EOS, max_len=6)
    seqs, _ = beam_search(step, carry, bos_id=BOS, eos_id=EOS, beam_size=1, max_len=6)
    assert seqs[:, 0].tolist() == greedy.tolist()


def test_batch_elements_are_independent():
    rng = np.random.default_rng(2)
    table = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(5, 5, 4)) * 2, jnp.float32), -1)
    step = second_order_step(table)
    kw = dict(bos_id=BOS, eos_id=EOS, beam_size=3, max_len=5)
    together, scores = beam_search(step, jnp.array([1, 3]), **kw)
    for b, first in enumerate([1, 3]):
        alone, alone_scores = beam_search(step, jnp.array([first]), **kw)
        assert together[b].tolist() == alone[0].tolist()
        np.testing.assert_allclose(scores[b], alone_scores[0], rtol=1e-6)


def test_bad_arguments():
    step = lambda c, t: (jnp.zeros((t.shape[0], 3)), c)  # noqa: E731
    with pytest.raises(ValueError, match="beam_size and max_len must be >= 1"):
        beam_search(step, jnp.zeros((1,)), bos_id=1, eos_id=0, beam_size=0, max_len=2)
    with pytest.raises(ValueError, match="at least one array leaf"):
        beam_search(step, (), bos_id=1, eos_id=0, beam_size=1, max_len=2)
