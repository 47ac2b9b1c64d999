"""JAX's own cuDNN binding ``jax.experimental.rnn.lstm`` and its flat weight layout."""

from __future__ import annotations

import jax.numpy as jnp

import lstm_jax as lj
from benchmarks.grid import Config
from benchmarks.peers.base import JaxPeer, platform


def pack_cudnn_weights(params: lj.LSTMParams) -> jnp.ndarray:
    """Our params as ``jax.experimental.rnn``'s flat cuDNN vector.

    Layout (its module docstring): every pseudo-layer's ``W_ih (4H, in)`` and
    ``W_hh (4H, H)`` in order (layer-major, forward before reverse), then every
    pseudo-layer's ``b_ih, b_hh``. Our summed bias goes to ``b_ih``.
    """
    weights = [w for layer in params.layers for w in layer]
    flat = [jnp.ravel(jnp.asarray(m).T) for w in weights for m in (w.w_ih, w.w_hh)]
    flat += [jnp.ravel(b) for w in weights for b in (w.b, jnp.zeros_like(w.b))]
    return jnp.concatenate(flat)


def unpack_cudnn_weights(flat, config: Config) -> lj.LSTMParams:
    """The inverse of :func:`pack_cudnn_weights`, for params and for their gradients: our
    bias is ``b_ih`` (``b_hh`` is zero in the params; in the gradients it equals ``b_ih``'s,
    and adding it would count the bias gradient twice)."""
    from jax.experimental import rnn

    w_ih, w_hh, b_ih, _ = rnn.unpack_lstm_weights(
        jnp.asarray(flat), config.input, config.hidden, config.layers, config.bidirectional
    )
    d = config.directions
    return lj.LSTMParams(
        tuple(
            tuple(
                lj.LSTMWeights(w_ih[k].T, w_hh[k].T, b_ih[k])
                for k in range(layer * d, layer * d + d)
            )
            for layer in range(config.layers)
        )
    )


class JaxCudnnPeer(JaxPeer):
    """``jax.experimental.rnn.lstm``: JAX's own cuDNN binding (GPU, float32 only)."""

    name = "jax_cudnn"
    description = "jax.experimental.rnn.lstm (cuDNN)"

    def unavailable(self):
        if platform() != "gpu":
            return "cuDNN only: needs a GPU"
        try:
            from jax.experimental import rnn  # noqa: F401
        except ImportError as error:
            return f"jax.experimental.rnn cannot be imported: {error}"
        return None

    def unsupported(self, config):
        if config.dtype != "float32":
            return "jax.experimental.rnn supports float32 only"
        return super().unsupported(config)

    def convert(self, params, config):
        return pack_cudnn_weights(params)

    def apply(self, peer_params, x, config):
        from jax.experimental import rnn

        batch = x.shape[0]
        states = config.layers * config.directions
        zeros = jnp.zeros((states, batch, config.hidden), jnp.float32)
        ys, _, _ = rnn.lstm(
            x, zeros, zeros, peer_params,
            seq_lengths=jnp.full((batch,), x.shape[1], jnp.int32),
            input_size=config.input, hidden_size=config.hidden, num_layers=config.layers,
            dropout=0.0, bidirectional=config.bidirectional, precision="highest",
        )  # fmt: skip
        return ys

    def to_reference(self, peer_tree, config):
        return unpack_cudnn_weights(peer_tree, config)
