"""Flax linen's ``nn.RNN`` over ``OptimizedLSTMCell``, ``LSTMCell`` or ``GRUCell``; with
resets, PureJaxRL's ``ScannedRNN`` pattern over the same cells."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax as lj
from benchmarks.grid import Config
from benchmarks.peers.base import JaxPeer, _np_tree, _package_missing, compute_dtype, split_inputs

_NAMES = {"optimized": "flax_linen_optimized", "lstm": "flax_linen_lstmcell", "gru": "flax_linen_gru"}
_CELLS = {"optimized": "OptimizedLSTMCell", "lstm": "LSTMCell", "gru": "GRUCell"}


def gru_to_flax(weights: lj.GRUWeights) -> dict:
    """A PyTorch-style GRU's weights as a Flax ``GRUCell``'s params: the same function.

    Both apply the reset gate to ``h @ w_hn + b_hn`` (PyTorch's form, "linear
    before reset"); Flax has no hidden bias on gates r and z, so ours is folded
    into the input bias there (only their sum enters the cell).
    """
    b_hh = np.asarray(weights.b_hh)
    hidden = b_hh.shape[0] // 3
    rz = np.concatenate([b_hh[: 2 * hidden], np.zeros(hidden, b_hh.dtype)])
    folded = weights._replace(b_ih=np.asarray(weights.b_ih) + rz, b_hh=b_hh - rz)
    return lj.to_flax(folded)


def gru_grads_from_flax(grads: dict) -> lj.GRUWeights:
    """Gradients of a Flax ``GRUCell`` (``{'ir': ...}``) as :class:`lstm_jax.GRUWeights`.

    The r and z hidden biases were folded into the input biases
    (:func:`gru_to_flax`), and a sum's gradient is that of each term: they get
    the input biases' gradients there.
    """
    g = lj.from_flax(grads)
    hidden = g.b_hh.shape[0] // 3
    return g._replace(b_hh=jnp.concatenate([g.b_ih[: 2 * hidden], g.b_hh[2 * hidden :]]))


def _scanned_rnn(cell_type, hidden: int, dtype):
    """PureJaxRL's ``ScannedRNN``: ``nn.scan`` over time of ``cell_type``, whose carry is
    reset to zeros with ``jnp.where(reset[:, None], initial, carry)`` before each step."""
    import flax.linen as nn

    class ScannedRNN(nn.Module):
        @functools.partial(nn.scan, variable_broadcast="params", in_axes=1, out_axes=1,
                           split_rngs={"params": False})  # fmt: skip
        @nn.compact
        def __call__(self, carry, step_inputs):
            x, reset = step_inputs  # (B, I), (B,)
            carry = jax.tree_util.tree_map(
                lambda c: jnp.where(reset[:, None], jnp.zeros_like(c), c), carry
            )
            return cell_type(hidden, dtype=dtype, name="cell")(carry, x)

    return ScannedRNN()


def _apply_layer(module, params, x, resets, config: Config) -> Any:
    """``(B, T, I)`` -> ``(B, T, H)``: ``nn.RNN`` without resets, else ``ScannedRNN``
    from a zero carry."""
    if resets is None:
        return module.apply(params, x)
    zeros = jnp.zeros((x.shape[0], config.hidden), jnp.float32)
    carry = zeros if config.cell == "gru" else (zeros, zeros)
    return module.apply(params, carry, (x, resets))[1]


class FlaxLinenPeer(JaxPeer):
    """``flax.linen.RNN(OptimizedLSTMCell | LSTMCell | GRUCell)``, one module per layer
    and direction.

    The reverse direction is ``nn.RNN(..., reverse=True, keep_order=True)``
    (what ``nn.Bidirectional`` builds); layers are stacked in a Python loop.
    Weights come from ``lstm_jax.to_flax`` (GRU: :func:`gru_to_flax`); bf16 is the
    cell's ``dtype``. Cases with resets (one direction) run PureJaxRL's
    ``ScannedRNN`` (:func:`_scanned_rnn`) instead of ``nn.RNN``.
    """

    handles_resets = True

    def __init__(self, cell: str):
        self.cell = cell
        self.name = _NAMES[cell]
        self.description = f"flax.linen.RNN({_CELLS[cell]}); with resets, ScannedRNN({_CELLS[cell]})"
        self.cells = ("gru",) if cell == "gru" else ("lstm",)

    def unavailable(self):
        return _package_missing("flax")

    def unsupported(self, config):
        if config.reset_rate and config.bidirectional:
            return "ScannedRNN runs one direction"
        return super().unsupported(config)

    @functools.lru_cache(maxsize=None)
    def _modules(self, config: Config):
        import flax.linen as nn

        cell_type = getattr(nn, _CELLS[self.cell])
        dtype = compute_dtype(config)
        if config.reset_rate:
            return [[_scanned_rnn(cell_type, config.hidden, dtype)] for _ in range(config.layers)]
        return [
            [nn.RNN(cell_type(config.hidden, dtype=dtype), reverse=d == 1, keep_order=True)
             for d in range(config.directions)]
            for _ in range(config.layers)
        ]  # fmt: skip

    def convert(self, params, config):
        to_flax = gru_to_flax if self.cell == "gru" else lj.to_flax
        return [
            [{"params": {"cell": jax.tree_util.tree_map(jnp.asarray, to_flax(w))}} for w in layer]
            for layer in params.layers
        ]

    def apply(self, peer_params, x, config):
        x, resets = split_inputs(x)
        for modules, layer_params in zip(self._modules(config), peer_params):
            outs = [_apply_layer(m, p, x, resets, config) for m, p in zip(modules, layer_params)]
            x = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
        return x

    def to_reference(self, peer_tree, config):
        if self.cell == "gru":
            return lj.GRUParams(
                tuple(tuple(gru_grads_from_flax(_np_tree(p)) for p in layer) for layer in peer_tree)
            )
        return lj.LSTMParams(
            tuple(tuple(lj.from_flax(_np_tree(p)) for p in layer) for layer in peer_tree)
        )
