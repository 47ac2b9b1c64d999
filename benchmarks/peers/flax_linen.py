"""Flax linen's ``nn.RNN`` over ``OptimizedLSTMCell`` or ``LSTMCell``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import lstm_jax as lj
from benchmarks.grid import Config
from benchmarks.peers.base import JaxPeer, _np_tree, _package_missing, compute_dtype


class FlaxLinenPeer(JaxPeer):
    """``flax.linen.RNN(OptimizedLSTMCell | LSTMCell)``, one module per layer and direction.

    The reverse direction is ``nn.RNN(..., reverse=True, keep_order=True)``
    (what ``nn.Bidirectional`` builds); layers are stacked in a Python loop.
    Weights come from ``lstm_jax.to_flax``; bf16 is the cell's ``dtype``.
    """

    def __init__(self, cell: str):
        self.cell = cell
        self.name = {"optimized": "flax_linen_optimized", "lstm": "flax_linen_lstmcell"}[cell]
        self.description = {
            "optimized": "flax.linen.RNN(OptimizedLSTMCell)",
            "lstm": "flax.linen.RNN(LSTMCell)",
        }[cell]

    def unavailable(self):
        return _package_missing("flax")

    @functools.lru_cache(maxsize=None)
    def _modules(self, config: Config):
        import flax.linen as nn

        cell_type = nn.OptimizedLSTMCell if self.cell == "optimized" else nn.LSTMCell
        return [
            [
                nn.RNN(cell_type(config.hidden, dtype=compute_dtype(config)), reverse=d == 1,
                       keep_order=True)
                for d in range(config.directions)
            ]
            for _ in range(config.layers)
        ]  # fmt: skip

    def convert(self, params, config):
        return [
            [{"params": {"cell": jax.tree_util.tree_map(jnp.asarray, lj.to_flax(w))}} for w in layer]
            for layer in params.layers
        ]

    def apply(self, peer_params, x, config):
        for modules, layer_params in zip(self._modules(config), peer_params):
            outs = [m.apply(p, x) for m, p in zip(modules, layer_params)]
            x = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
        return x

    def to_reference(self, peer_tree, config):
        return lj.LSTMParams(
            tuple(tuple(lj.from_flax(_np_tree(p)) for p in layer) for layer in peer_tree)
        )
