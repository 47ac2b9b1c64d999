"""Inputs and compiled checks shared by the native kernels' tests, for every cell.

Shapes hit the kernels' edge cases: H = 21 is one full panel of 16 units and a
partial one (AVX-512), B = 7 one block of 6 rows and a remainder.
``LSTM_JAX_NATIVE_SPLIT_MACS=0`` makes even these tiny steps run split across
threads: by hidden units (B = 7 is below 2 x the default 4 rows per thread), or
by batch rows with ``LSTM_JAX_NATIVE_MIN_ROWS=1``. These settings are read per
call, so one compiled function serves every split.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax as lj
from lstm_jax.cells import Cell, gru_kind, lstm_kind, rnn_kind
from lstm_jax.kernels.native import native_lstm_layer
from lstm_jax.kernels.native_gru import native_gru_layer
from lstm_jax.kernels.native_rnn import native_rnn_layer
from lstm_jax.scan import scan_layer

B, T, I, H = 7, 9, 5, 21
LENGTHS = jnp.array([9, 3, 1, 9, 5, 2, 8], jnp.int32)


class NativeCell(NamedTuple):
    """One cell with a native kernel: how to build its weights and state, and run it."""

    name: str  # the pytest id
    kind: str  # the key of tests.backends.NETWORKS
    cell: Cell
    native_layer: Callable
    init: Callable  # init_lstm, init_gru or init_rnn
    nonlinearity: str | None = None  # the RNN's, passed to lj.rnn

    def __str__(self) -> str:
        return self.name

    def network_kwargs(self) -> dict:
        return {} if self.nonlinearity is None else {"nonlinearity": self.nonlinearity}


CELLS = {
    "lstm": NativeCell("lstm", "lstm", lstm_kind(), native_lstm_layer, lj.init_lstm),
    "gru": NativeCell("gru", "gru", gru_kind(), native_gru_layer, lj.init_gru),
    "rnn-tanh": NativeCell("rnn-tanh", "rnn", rnn_kind(), native_rnn_layer, lj.init_rnn, "tanh"),
    "rnn-relu": NativeCell(
        "rnn-relu", "rnn", rnn_kind(nonlinearity="relu"), native_rnn_layer, lj.init_rnn, "relu"
    ),
}
EVERY_CELL = list(CELLS.values())
ONE_PER_KIND = [CELLS[name] for name in ("lstm", "gru", "rnn-tanh")]


def assert_trees_close(a, b, atol=2e-5, rtol=2e-5):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


def inputs(cell: NativeCell, seed=0, batch=B, steps=T, hidden=H):
    """(weights, xs, initial carry, recurrent mask): the LSTM's carry is (h0, c0)."""
    keys = jax.random.split(jax.random.key(seed), 5)  # the draws the tolerances were measured on
    w = cell.init(keys[0], I, hidden).layers[0][0]
    xs = jax.random.normal(keys[1], (batch, steps, I))
    h0 = jax.random.normal(keys[2], (batch, hidden))
    if cell.kind == "lstm":
        carry, mask_key = (h0, jax.random.normal(keys[3], (batch, hidden))), keys[4]
    else:
        carry, mask_key = h0, keys[3]
    if cell.kind == "gru":  # a distinct b_hn matters
        w = w._replace(b_hh=jax.random.normal(keys[4], w.b_hh.shape))
    if cell.kind == "rnn":
        w = w._replace(b=0.3 * jax.random.normal(keys[4], w.b.shape))
    mask = jax.random.bernoulli(mask_key, 0.7, (batch, hidden)).astype(jnp.float32) / 0.7
    return w, xs, carry, mask


def nan_inputs(cell: NativeCell):
    """(weights, xs, carry) where sequence 0 holds a NaN at step 1, which is valid."""
    w, xs, carry, _ = inputs(cell, 1)
    return w, xs.at[0, 1, 0].set(jnp.nan), carry


def assert_nan_where_scan_has_nan(cell: NativeCell, got):
    """NaN exactly where scan has NaN: a NaN at a valid step is not clamped away."""
    ref = scan_layer(cell.cell, *nan_inputs(cell), seq_lengths=LENGTHS)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        assert np.isnan(np.asarray(b)).any()
        np.testing.assert_array_equal(np.isnan(np.asarray(a)), np.isnan(np.asarray(b)))


@functools.cache
def value_and_grads_fn(cell: NativeCell, layer, *, ragged, reverse, masked, time_major=False):
    """jit(value_and_grad) of a loss weighing the outputs and each final state leaf
    differently, with respect to (weights, xs, carry, mask); compiled once per shape."""
    lengths = LENGTHS if ragged else None

    def loss(w, xs, carry, mask):
        ys, final = layer(
            cell.cell, w, xs, carry, seq_lengths=lengths, reverse=reverse,
            recurrent_mask=mask if masked else None, time_major=time_major,
        )  # fmt: skip
        weighted = (jnp.sum(s * s * k) for s, k in zip(jax.tree_util.tree_leaves(final), (1.3, 1)))
        return jnp.sum(ys * jnp.sin(ys)) + sum(weighted), (ys, final)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


def native_and_scan(cell: NativeCell, args, **options):
    """(native, scan) outputs, final state and gradients."""
    return tuple(
        value_and_grads_fn(cell, layer, **options)(*args)
        for layer in (cell.native_layer, scan_layer)
    )
