"""Input checks shared by the public functions.

Every check runs at trace time on shapes and dtypes, and raises a
``ValueError`` or ``TypeError`` that names the argument, what was expected and
what was given. Values of traced arrays (``seq_lengths`` under ``jit``) cannot
be read at trace time; :func:`check_length_values` checks them when they are
concrete, and with ``checked=True`` inserts a ``checkify`` check otherwise.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def check_params_type(params: Any, expected: type, init_name: str) -> None:
    if not isinstance(params, expected):
        raise TypeError(
            f"params must be a {expected.__name__} (from lstm_jax.{init_name} or "
            f"lstm_jax.from_torch), got {type(params).__name__}."
        )


def check_inputs(xs: Any, input_size: int) -> None:
    """``xs`` must be a floating array of rank 2 or 3 with ``input_size`` features."""
    shape = getattr(xs, "shape", None)
    if shape is None:
        raise TypeError(f"xs must be an array, got {type(xs).__name__}.")
    if len(shape) not in (2, 3):
        raise ValueError(
            "xs must have rank 3 (batch, time, features) or rank 2 (time, features), "
            f"got rank {len(shape)} with shape {tuple(shape)}."
        )
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"xs must have a floating dtype, got {xs.dtype}.")
    if shape[-1] != input_size:
        raise ValueError(
            f"xs has {shape[-1]} features (last axis) but the params expect "
            f"input_size={input_size}; xs has shape {tuple(shape)}."
        )


def check_num_steps(num_steps: int) -> None:
    if num_steps < 1:
        raise ValueError("xs has 0 time steps; at least 1 is required.")


def check_seq_lengths(seq_lengths: Any, batch: Optional[int]) -> None:
    """Shape ``(batch,)`` (or ``()`` for one unbatched sequence) and an integer dtype."""
    expected = () if batch is None else (batch,)
    if not hasattr(seq_lengths, "dtype"):
        seq_lengths = np.asarray(seq_lengths)
    shape = tuple(seq_lengths.shape)
    if shape != expected:
        raise ValueError(
            f"seq_lengths must have shape {expected} (one length per sequence), got {shape}."
        )
    if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
        raise TypeError(f"seq_lengths must have an integer dtype, got {seq_lengths.dtype}.")


def check_length_values(seq_lengths: jax.Array, num_steps: int, checked: bool) -> None:
    """Lengths must lie in ``1..num_steps``.

    Concrete lengths are always checked here. Traced lengths (under ``jit``) are
    checked only with ``checked=True``, through ``jax.experimental.checkify``:
    the caller then wraps the function in ``checkify.checkify`` and calls
    ``err.throw()`` on the error it returns.
    """
    message = f"seq_lengths must lie in 1..{num_steps} (the number of time steps)"
    if isinstance(seq_lengths, jax.core.Tracer):
        if checked:
            ok = jnp.all((seq_lengths >= 1) & (seq_lengths <= num_steps))
            checkify.check(ok, message + ", got {lengths}.", lengths=seq_lengths)
        return
    values = np.asarray(seq_lengths)
    if values.size and (values.min() < 1 or values.max() > num_steps):
        raise ValueError(f"{message}, got {values.tolist()}.")


def check_state(name: str, value: Any, expected_shape: tuple) -> None:
    shape = getattr(value, "shape", None)
    if shape is None:
        raise TypeError(f"{name} must be an array of shape {expected_shape}, got {type(value).__name__}.")
    if tuple(shape) != tuple(expected_shape):
        raise ValueError(
            f"{name} must have shape {tuple(expected_shape)} "
            "(num_layers * num_directions, batch, features), "
            f"got {tuple(shape)}."
        )


def check_rate(name: str, rate: float, key: Any) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {rate}.")
    if rate > 0.0 and key is None:
        raise ValueError(f"{name}={rate} needs a PRNG key: pass key=jax.random.key(...).")


def check_unroll(unroll: Any) -> None:
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be an integer >= 1, got {unroll!r}.")
