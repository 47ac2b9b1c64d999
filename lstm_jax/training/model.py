"""Model helpers around the networks: a dense readout, ``apply_network``, ``count_params``."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from lstm_jax.network import gru, lstm, rnn
from lstm_jax.params import GRUParams, LSTMParams, RNNParams

__all__ = [
    "Dense",
    "init_dense",
    "dense",
    "apply_network",
    "count_params",
]


class Dense(NamedTuple):
    """A dense (affine) layer: ``x @ w + b``."""

    w: Array  # (F_in, F_out)
    b: Array  # (F_out,)


def init_dense(key: Array, in_size: int, out_size: int, *, dtype=jnp.float32) -> Dense:
    """Uniform in ``±1/sqrt(in_size)`` like PyTorch's ``nn.Linear``; zero bias.

    >>> init_dense(jax.random.key(0), 8, 3).w.shape
    (8, 3)
    """
    bound = 1.0 / math.sqrt(in_size)
    w = jax.random.uniform(key, (in_size, out_size), dtype, -bound, bound)
    return Dense(w, jnp.zeros((out_size,), dtype))


def dense(params: Dense, x: Array) -> Array:
    """``(..., F_in) -> (..., F_out)``."""
    y = jnp.matmul(x, params.w)
    return y + params.b.reshape((1,) * (y.ndim - 1) + params.b.shape)  # explicit rank


def apply_network(params: Any, xs: Array, **kwargs) -> tuple[Array, Any]:
    """``lj.lstm``, ``lj.gru`` or ``lj.rnn``, chosen by the type of ``params``.

    >>> import lstm_jax as lj
    >>> ys, h = apply_network(lj.init_gru(jax.random.key(0), 2, 4), jnp.ones((3, 5, 2)))
    >>> ys.shape
    (3, 5, 4)
    """
    if isinstance(params, LSTMParams):
        return lstm(params, xs, **kwargs)
    if isinstance(params, GRUParams):
        return gru(params, xs, **kwargs)
    if isinstance(params, RNNParams):
        return rnn(params, xs, **kwargs)
    raise TypeError(
        f"params must be LSTMParams, GRUParams or RNNParams, got {type(params).__name__}."
    )


def count_params(params: Any) -> int:
    """Number of scalars in a pytree."""
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))

