"""Decoding a sequence from any step function: batched beam search (and greedy).

The decoder is a pure ``step_fn(carry, tokens) -> (log_probs, carry)`` over a
carry pytree whose leaves have a leading batch axis: ``tokens`` is ``(N,)``
int, ``log_probs`` ``(N, V)`` normalised log-probabilities of the next token.
Nothing here knows about LSTMs: the carry can hold an LSTM state, attention
context, encoder outputs, or anything else, and ``step_fn`` can be any
function of it. Everything runs in one ``lax.scan`` and composes with ``jit``.

Notation: B = batch, K = beam size, V = vocabulary, T = ``max_len``.

>>> import jax.numpy as jnp
>>> table = jnp.log(jnp.array([[0.1, 0.6, 0.3], [0.8, 0.1, 0.1], [0.9, 0.05, 0.05]]))
>>> step = lambda carry, tok: (table[tok], carry)   # a Markov chain; token 0 is EOS
>>> seqs, scores = beam_search(step, jnp.zeros((1,)), bos_id=2, eos_id=0, beam_size=2, max_len=3)
>>> seqs[0, 0].tolist()
[0, 0, 0]
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["beam_search", "greedy_search"]


def _gather_beams(tree: Any, beam_idx: Array) -> Any:
    """Rows ``beam_idx[b, k]`` of each ``(B, K, ...)`` leaf, per batch element."""

    def gather(x):
        idx = beam_idx.reshape(beam_idx.shape + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, idx, axis=1)

    return jax.tree_util.tree_map(gather, tree)


def beam_search(
    step_fn: Callable[[Any, Array], tuple[Array, Any]],
    init_carry: Any,
    *,
    bos_id: int,
    eos_id: int,
    beam_size: int,
    max_len: int,
    length_penalty: float = 1.0,
) -> tuple[Array, Array]:
    """Batched beam search over any ``step_fn(carry, tokens) -> (log_probs, carry)``.

    Each batch element keeps its ``beam_size`` best hypotheses by total
    log-probability; a hypothesis that has emitted ``eos_id`` stays in the beam
    unchanged (it is extended by ``eos_id`` at no cost). At the end the beams
    are ranked by ``total_log_prob / length ** length_penalty``, ``length``
    counting the tokens up to and including the first ``eos_id`` (or
    ``max_len``): 0 ranks by the total (favouring short outputs), 1 by the
    mean log-probability per token.

    Args:
      step_fn: ``(carry, tokens: (N,) int) -> (log_probs: (N, V), carry)``, with
        ``N = B * K`` during the search; every carry leaf has a leading ``N`` axis.
      init_carry: the carry for the ``B`` inputs (leading axis ``B``); it is
        repeated ``K`` times.
      bos_id: the token fed at the first step.
      eos_id: the end-of-sequence token.
      beam_size: ``K``; 1 is greedy search.
      max_len: ``T``, the number of tokens generated.
      length_penalty: the exponent ``alpha`` of the length normalisation.

    Returns:
      ``(sequences, scores)``: ``(B, K, T)`` int tokens (``eos_id`` after the
      end) and ``(B, K)`` normalised scores, best first (``-inf`` for the
      unused beams of a search with fewer than K hypotheses).

    >>> import jax.numpy as jnp
    >>> table = jnp.log(jnp.array([[1.0, 0.0], [0.4, 0.6]]))   # 0 is EOS
    >>> step = lambda carry, tok: (table[tok], carry)
    >>> seqs, scores = beam_search(step, jnp.zeros((2,)), bos_id=1, eos_id=0, beam_size=2, max_len=2)
    >>> seqs.shape, scores.shape
    ((2, 2, 2), (2, 2))
    """
    leaves = jax.tree_util.tree_leaves(init_carry)
    if not leaves:
        raise ValueError("init_carry must have at least one array leaf (its axis 0 is the batch).")
    batch = leaves[0].shape[0]
    if beam_size < 1 or max_len < 1:
        raise ValueError(f"beam_size and max_len must be >= 1, got {beam_size} and {max_len}.")
    k = beam_size

    def to_flat(x):  # [B, K, ...] -> [B * K, ...]
        return x.reshape((batch * k,) + x.shape[2:])

    def to_beams(x):  # [B * K, ...] -> [B, K, ...]
        return x.reshape((batch, k) + x.shape[1:])

    carry = jax.tree_util.tree_map(lambda x: jnp.repeat(x[:, None], k, axis=1), init_carry)
    # only beam 0 is alive at the start, so the first expansion is not k copies of one
    scores = jnp.broadcast_to(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)[None], (batch, k))
    state = {
        "carry": carry,  # leaves [B, K, ...]
        "tokens": jnp.full((batch, k), bos_id, jnp.int32),  # [B, K] the last token
        "scores": scores,  # [B, K] total log-probability
        "finished": jnp.zeros((batch, k), bool),  # [B, K]
        "lengths": jnp.zeros((batch, k), jnp.int32),  # [B, K]
        "seqs": jnp.full((batch, k, max_len), eos_id, jnp.int32),  # [B, K, T]
    }

    def step(state, t):
        log_probs, carry = step_fn(jax.tree_util.tree_map(to_flat, state["carry"]),
                                   to_flat(state["tokens"]))  # fmt: skip
        log_probs = to_beams(log_probs.astype(jnp.float32))  # [B, K, V]
        vocab = log_probs.shape[-1]
        # a finished hypothesis continues with EOS at no cost, and with nothing else
        eos_only = jnp.where(jnp.arange(vocab) == eos_id, 0.0, -jnp.inf)[None, None]  # [1, 1, V]
        log_probs = jnp.where(state["finished"][..., None], eos_only, log_probs)
        candidates = (state["scores"][..., None] + log_probs).reshape(batch, k * vocab)
        scores, flat_idx = jax.lax.top_k(candidates, k)  # [B, K]
        beam_idx, tokens = flat_idx // vocab, (flat_idx % vocab).astype(jnp.int32)
        kept = _gather_beams(
            {"carry": jax.tree_util.tree_map(to_beams, carry), "finished": state["finished"],
             "lengths": state["lengths"], "seqs": state["seqs"]}, beam_idx)  # fmt: skip
        lengths = kept["lengths"] + (~kept["finished"]).astype(jnp.int32)
        seqs = kept["seqs"].at[:, :, t].set(tokens)
        finished = kept["finished"] | (tokens == eos_id)
        return {"carry": kept["carry"], "tokens": tokens, "scores": scores,
                "finished": finished, "lengths": lengths, "seqs": seqs}, None  # fmt: skip

    state, _ = jax.lax.scan(step, state, jnp.arange(max_len))
    norm = state["scores"] / jnp.maximum(state["lengths"], 1).astype(jnp.float32) ** length_penalty
    order = jnp.argsort(-norm, axis=1)  # [B, K] best first (-inf last)
    seqs = jnp.take_along_axis(state["seqs"], order[..., None], axis=1)
    return seqs, jnp.take_along_axis(norm, order, axis=1)


def greedy_search(
    step_fn: Callable[[Any, Array], tuple[Array, Any]],
    init_carry: Any,
    *,
    bos_id: int,
    eos_id: int,
    max_len: int,
) -> Array:
    """The most likely token at every step: ``(B, T)`` tokens, ``eos_id`` after the end.

    Equal to ``beam_search(..., beam_size=1)[0][:, 0]``, in a plain loop.

    >>> import jax.numpy as jnp
    >>> table = jnp.log(jnp.array([[1.0, 0.0], [0.4, 0.6]]))   # 0 is EOS
    >>> greedy_search(lambda c, tok: (table[tok], c), jnp.zeros((1,)), bos_id=1, eos_id=0,
    ...               max_len=3).tolist()
    [[1, 1, 1]]
    """
    leaves = jax.tree_util.tree_leaves(init_carry)
    batch = leaves[0].shape[0]

    def step(state, _):
        carry, tokens, finished = state
        log_probs, carry = step_fn(carry, tokens)
        nxt = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
        nxt = jnp.where(finished, eos_id, nxt)
        return (carry, nxt, finished | (nxt == eos_id)), nxt

    init = (init_carry, jnp.full((batch,), bos_id, jnp.int32), jnp.zeros((batch,), bool))
    _, tokens = jax.lax.scan(step, init, None, length=max_len)
    return tokens.T  # [B, T]
