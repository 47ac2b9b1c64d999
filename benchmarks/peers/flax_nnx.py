"""Flax NNX's ``nnx.RNN`` over ``OptimizedLSTMCell`` or ``LSTMCell``, used functionally."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import lstm_jax as lj
from benchmarks.grid import Config
from benchmarks.peers.base import JaxPeer, _np_tree, _package_missing, compute_dtype


class FlaxNnxPeer(JaxPeer):
    """``flax.nnx.RNN(OptimizedLSTMCell | LSTMCell)`` used functionally.

    Each layer-direction module is ``nnx.split`` into (graphdef, params); the
    params are a pure dict set from ours (NNX has its own key names: the
    optimized cell holds ``dense_i``/``dense_h`` with all four gates side by
    side, the plain cell ``ii, if_, ig, io, hi, ...``) and the module is
    ``nnx.merge``-d inside the jitted function: the usual NNX + ``jax.jit``
    pattern, so the same Optax update applies to the param dict.
    """

    def __init__(self, cell: str):
        self.cell = cell
        self.name = {"optimized": "flax_nnx_optimized", "lstm": "flax_nnx_lstmcell"}[cell]
        self.description = {
            "optimized": "flax.nnx.RNN(OptimizedLSTMCell)",
            "lstm": "flax.nnx.RNN(LSTMCell)",
        }[cell]

    def unavailable(self):
        missing = _package_missing("flax")
        if missing:
            return missing
        try:
            from flax import nnx  # noqa: F401
        except ImportError as error:
            return f"flax.nnx cannot be imported: {error}"
        return None

    @functools.lru_cache(maxsize=None)
    def _modules(self, config: Config):
        from flax import nnx

        cell_type = nnx.OptimizedLSTMCell if self.cell == "optimized" else nnx.LSTMCell
        layers = []
        for layer in range(config.layers):
            in_features = config.input if layer == 0 else config.hidden * config.directions
            row = []
            for d in range(config.directions):
                cell = cell_type(in_features, config.hidden, dtype=compute_dtype(config),
                                 rngs=nnx.Rngs(0))  # fmt: skip
                rnn = nnx.RNN(cell, reverse=d == 1, keep_order=True, rngs=False)
                row.append(nnx.split(rnn, nnx.Param, ...))
            layers.append(row)
        return layers

    def _pure(self, w: lj.LSTMWeights) -> dict:
        if self.cell == "optimized":
            cell = {
                "dense_i": {"kernel": w.w_ih},
                "dense_h": {"kernel": w.w_hh, "bias": w.b},
            }
        else:
            cell = {
                ("if_" if k == "if" else k): jax.tree_util.tree_map(jnp.asarray, v)
                for k, v in lj.to_flax(w).items()
            }
        return {"cell": jax.tree_util.tree_map(jnp.asarray, cell)}

    def convert(self, params, config):
        return [[self._pure(w) for w in layer] for layer in params.layers]

    def apply(self, peer_params, x, config):
        from flax import nnx

        batch = x.shape[0]
        for modules, layer_params in zip(self._modules(config), peer_params):
            outs = []
            for (graphdef, param_state, rest), pure in zip(modules, layer_params):
                state = jax.tree_util.tree_map(lambda a: a, param_state)
                nnx.replace_by_pure_dict(state, pure)
                rnn = nnx.merge(graphdef, state, rest)
                zeros = jnp.zeros((batch, config.hidden), jnp.float32)
                outs.append(rnn(x, initial_carry=(zeros, zeros)))  # carry is (c, h)
            x = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
        return x

    def to_reference(self, peer_tree, config):
        def weights(pure):
            cell = _np_tree(pure["cell"])
            if self.cell == "optimized":
                return lj.LSTMWeights(
                    jnp.asarray(cell["dense_i"]["kernel"]),
                    jnp.asarray(cell["dense_h"]["kernel"]),
                    jnp.asarray(cell["dense_h"]["bias"]),
                )
            return lj.from_flax({("if" if k == "if_" else k): v for k, v in cell.items()})

        return lj.LSTMParams(tuple(tuple(weights(p) for p in layer) for layer in peer_tree))

