"""The native backward's weight gradients both ways: accumulated in the loop
(``dw_ih``, ``dw_hh``, ``db``; :data:`native_ops.IN_LOOP_MAX_HIDDEN`, and
``dw_ih`` left to XLA with :data:`native_ops.IN_LOOP_INPUT_WEIGHTS` off) and by
XLA after it, each against ``scan``, bidirectional, with a ragged batch and
resets, on one thread and with the rows split over threads (per-partition
partial sums).

H = 21 is a full AVX-512 panel and a partial one; B = 9 splits 4 + 5 rows
over two threads, and 9 (step, row) pairs do not divide the in-loop passes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import lstm_jax as lj
from lstm_jax.kernels import native_ops
from tests.test_native import assert_trees_close

pytestmark = pytest.mark.skipif(
    native_ops.native_unavailable() is not None,
    reason=f"native kernels unavailable: {native_ops.native_unavailable()}",
)

B, T, I, H = 9, 11, 5, 21
NETWORKS = {"lstm": (lj.init_lstm, lj.lstm), "gru": (lj.init_gru, lj.gru)}


def _grads(cell, backend):
    init, run = NETWORKS[cell]
    keys = jax.random.split(jax.random.key(0), 4)
    params = init(keys[0], I, H, bidirectional=True)
    xs = jax.random.normal(keys[1], (B, T, I))
    lengths = jnp.array([11, 3, 1, 11, 5, 2, 8, 11, 7], jnp.int32)
    resets = jax.random.bernoulli(keys[2], 0.2, (B, T))

    def loss(p, x):
        ys = run(p, x, backend=backend, seq_lengths=lengths, resets=resets)[0]
        return jnp.sum(ys * jnp.sin(ys))

    return jax.grad(loss, (0, 1))(params, xs)


@pytest.mark.isa
@pytest.mark.parametrize("cell", ["lstm", "gru"])
# in_loop: "all" weight gradients, "recurrent" ones only (dw_ih by XLA; two
# threads cover it, its place being independent of the split), or "none"
@pytest.mark.parametrize(
    ("in_loop", "threads"),
    [("all", "1"), ("all", "2"), ("recurrent", "2"), ("none", "1"), ("none", "2")],
)
def test_weight_gradients_equal_scan(cell, in_loop, threads, monkeypatch):
    monkeypatch.setenv("LSTM_JAX_NATIVE_THREADS", threads)
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPLIT_MACS", "0")  # split even these tiny steps
    key = (native_ops.native_isa(), cell)
    monkeypatch.setitem(native_ops.IN_LOOP_MAX_HIDDEN, key, H - 1 if in_loop == "none" else H)
    monkeypatch.setattr(native_ops, "IN_LOOP_INPUT_WEIGHTS", in_loop == "all")
    assert native_ops.weight_gradients_in_loop(cell, T, B, H) == (in_loop != "none")
    assert_trees_close(_grads(cell, "native"), _grads(cell, "scan"))


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_in_loop_only_up_to_the_size_rule(isa, monkeypatch):
    monkeypatch.setattr(native_ops, "native_isa", lambda: isa)
    assert native_ops.weight_gradients_in_loop("lstm", 512, 8, 64)
    assert native_ops.weight_gradients_in_loop("lstm", 256, 32, 128)
    assert not native_ops.weight_gradients_in_loop("lstm", 128, 64, 256)
    assert native_ops.weight_gradients_in_loop("gru", 256, 32, 128)
    assert not native_ops.weight_gradients_in_loop("gru", 128, 64, 256)
    assert not native_ops.weight_gradients_in_loop("gru", 0, 8, 64)  # nothing to accumulate


def test_no_in_loop_rule_for_the_portable_loop(monkeypatch):
    monkeypatch.setattr(native_ops, "native_isa", lambda: "portable")
    assert not native_ops.weight_gradients_in_loop("lstm", 512, 8, 64)
