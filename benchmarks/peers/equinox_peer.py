"""Equinox's ``eqx.nn.LSTMCell``, ``jax.vmap`` over batch and ``lax.scan`` over time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax as lj
from benchmarks.peers.base import JaxPeer, _package_missing, compute_dtype


class EquinoxPeer(JaxPeer):
    """``equinox.nn.LSTMCell`` (one example), ``jax.vmap`` over batch, ``lax.scan`` over time.

    Equinox stores ``weight_ih (4H, I)``, ``weight_hh (4H, H)`` and one bias,
    gates i, f, g, o: ours transposed. For bf16 the cell's arrays and the
    inputs are cast to bfloat16 inside the step (float32 master params).
    """

    name = "equinox"
    description = "equinox.nn.LSTMCell + vmap + lax.scan"

    def unavailable(self):
        return _package_missing("equinox")

    def convert(self, params, config):
        import equinox as eqx

        layers = []
        for layer in params.layers:
            row = []
            for w in layer:
                cell = eqx.nn.LSTMCell(w.w_ih.shape[0], config.hidden, key=jax.random.key(0))
                cell = eqx.tree_at(
                    lambda c: (c.weight_ih, c.weight_hh, c.bias),
                    cell,
                    (jnp.asarray(w.w_ih).T, jnp.asarray(w.w_hh).T, jnp.asarray(w.b)),
                )
                row.append(cell)
            layers.append(row)
        return layers

    def apply(self, peer_params, x, config):
        dtype = compute_dtype(config) or jnp.float32
        batch = x.shape[0]
        for layer in peer_params:
            outs = []
            for d, cell in enumerate(layer):
                cell = jax.tree_util.tree_map(lambda a: a.astype(dtype), cell)
                xs = jnp.swapaxes(x.astype(dtype), 0, 1)  # [T, B, I]
                if d == 1:
                    xs = xs[::-1]
                zeros = jnp.zeros((batch, config.hidden), dtype)

                def body(carry, x_t, cell=cell):
                    carry = jax.vmap(cell)(x_t, carry)
                    return carry, carry[0]

                _, hs = jax.lax.scan(body, (zeros, zeros), xs)  # [T, B, H]
                if d == 1:
                    hs = hs[::-1]
                outs.append(jnp.swapaxes(hs, 0, 1))
            x = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
        return x

    def to_reference(self, peer_tree, config):
        return lj.LSTMParams(
            tuple(
                tuple(
                    lj.LSTMWeights(
                        jnp.asarray(np.asarray(c.weight_ih, np.float32).T),
                        jnp.asarray(np.asarray(c.weight_hh, np.float32).T),
                        jnp.asarray(np.asarray(c.bias, np.float32)),
                    )
                    for c in layer
                )
                for layer in peer_tree
            )
        )
