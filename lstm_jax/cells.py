r"""Pure one-step cells for ONE example; batches come from ``jax.vmap``.

Each cell is split in two, so that a layer implementation can place the input
projection where it runs fastest (inside the time loop in ``scan.py``, hoisted
before the Pallas kernel):

* ``*_input_projection(w, x)``: the part that does not depend on the state,
  ``(I,) -> (G,)`` (vmapped over the batch: one GEMM per step);
* ``*_step(w, state, gx)``: the recurrence for one example, ``gx`` of shape
  ``(G,)``.

The public ``lstm_cell``, ``gru_cell`` and ``rnn_cell`` compose the two, after
checking their weights, state and input (``lstm_jax.validation``; the
per-step functions used inside loops carry no checks). Leading batch axes
shared by ``x`` and the state pass the checks; ``jax.vmap`` is the way to batch.

LSTM (gate order i, f, g, o; weights input-major, ``x @ w``)::

    [i, f, g, o] = x @ w_ih + h @ w_hh + b
    i, f, o = sigmoid(i + p_i * c), sigmoid(f + p_f * c), sigmoid(o + p_o * c')
    g = tanh(g)
    c' = f * c + i * g
    h' = o * tanh(c')                         (then h' @ w_hr with a projection)

Peephole terms ``p_* * c`` (Gers & Schmidhuber 2000) are present only when
``w_peep`` is set. With layer norm (Ba et al. 2016) the two gate projections
are normalised separately, ``LN(x @ w_ih) * ih_scale + LN(h @ w_hh) * hh_scale
+ b``, and ``tanh(c')`` becomes ``tanh(LN(c') * c_scale + c_offset)``.

GRU (PyTorch semantics, gate order r, z, n)::

    r = sigmoid(x @ w_ir + b_ir + h @ w_hr + b_hr)
    z = sigmoid(x @ w_iz + b_iz + h @ w_hz + b_hz)
    n = tanh(x @ w_in + b_in + r * (h @ w_hn + b_hn))
    h' = (1 - z) * n + z * h

Elman RNN: ``h' = tanh(x @ w_ih + h @ w_hh + b)`` (or ``relu``).

``recurrent_mask`` (shape of ``h``) multiplies ``h`` where it enters the
recurrent matmul only: variational recurrent dropout (Gal & Ghahramani 2016).
``compute_dtype`` (e.g. ``jnp.bfloat16``) is the dtype of the matmul inputs;
products accumulate, and all gate math runs, in the parameters' dtype.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import Array

from lstm_jax import validation
from lstm_jax.params import GRUWeights, LSTMWeights, RNNWeights

__all__ = [
    "Cell",
    "lstm_cell",
    "gru_cell",
    "rnn_cell",
    "lstm_input_projection",
    "lstm_recurrent_projection",
    "lstm_step",
    "lstm_activations",
    "lstm_gates",
    "lstm_pointwise",
    "gru_input_projection",
    "gru_recurrent_projection",
    "gru_pointwise",
    "gru_gates",
    "gru_step",
    "rnn_input_projection",
    "rnn_step",
    "lstm_kind",
    "gru_kind",
    "rnn_kind",
]

_LAYER_NORM_EPS = 1e-5


def matmul(x: Array, w: Array, compute_dtype=None) -> Array:
    """``x @ w``; with ``compute_dtype`` the inputs are cast, the sum is in ``w.dtype``."""
    if compute_dtype is None or jnp.dtype(compute_dtype) == w.dtype:
        return jnp.matmul(x.astype(w.dtype), w)
    return jnp.matmul(
        x.astype(compute_dtype), w.astype(compute_dtype), preferred_element_type=w.dtype
    )


def _layer_norm(x: Array) -> Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + _LAYER_NORM_EPS)


def _masked(h: Array, recurrent_mask: Optional[Array]) -> Array:
    return h if recurrent_mask is None else h * recurrent_mask


# ----------------------------------------------------------------------- LSTM


def lstm_input_projection(w: LSTMWeights, x: Array, *, compute_dtype=None) -> Array:
    """``(I,) -> (4H,)``: the state-independent part of the gates, bias included."""
    gx = matmul(x, w.w_ih, compute_dtype)
    if w.ln is not None:
        gx = _layer_norm(gx) * w.ln.ih_scale
    return gx + w.b


def lstm_recurrent_projection(
    w: LSTMWeights, h: Array, *, recurrent_mask: Optional[Array] = None, compute_dtype=None
) -> Array:
    """``(R,) -> (4H,)``: the state-dependent part of the gates, ``h @ w_hh`` (layer-normed)."""
    gh = matmul(_masked(h, recurrent_mask), w.w_hh, compute_dtype)
    if w.ln is not None:
        gh = _layer_norm(gh) * w.ln.hh_scale
    return gh


def lstm_activations(gates: Array) -> tuple[Array, Array, Array, Array]:
    """The four gate activations of a plain LSTM (no peepholes).

    Args:
      gates: ``(..., 4H)`` pre-activations, i, f, g, o.

    Returns:
      ``(i, f, g, o)``: sigmoid, sigmoid, tanh, sigmoid, each ``(..., H)`` (what
      the kernels save for their backward passes).
    """
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def lstm_gates(
    w: LSTMWeights, gates: Array, c: Array
) -> tuple[tuple[Array, Array, Array, Array], Array]:
    """Gate activations and the new cell state.

    Args:
      w: weights (only the peepholes are read).
      gates: ``(..., 4H)`` pre-activations, i, f, g, o.
      c: ``(..., H)`` previous cell state.

    Returns:
      ``((i, f, g, o), c')``: the activations (sigmoid, sigmoid, tanh, sigmoid),
      each ``(..., H)``, and the new cell state ``(..., H)``.
    """
    if w.w_peep is None:
        i, f, g, o = lstm_activations(gates)
        return (i, f, g, o), f * c + i * g
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    i = i + w.w_peep[0] * c
    f = f + w.w_peep[1] * c
    i, f, g = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g)
    c_new = f * c + i * g
    if w.w_peep is not None:
        o = o + w.w_peep[2] * c_new
    return (i, f, g, jax.nn.sigmoid(o)), c_new


def lstm_pointwise(w: LSTMWeights, gates: Array, c: Array) -> tuple[Array, Array]:
    """Gate non-linearities and the cell update.

    Args:
      w: weights (only the peepholes and the layer norm of ``c`` are read).
      gates: ``(..., 4H)`` pre-activations, i, f, g, o.
      c: ``(..., H)`` previous cell state.

    Returns:
      ``(h, c')``, both ``(..., H)``; ``h`` is before any projection.
    """
    (_, _, _, o), c_new = lstm_gates(w, gates, c)
    c_out = c_new if w.ln is None else _layer_norm(c_new) * w.ln.c_scale + w.ln.c_offset
    return o * jnp.tanh(c_out), c_new


def lstm_step(
    w: LSTMWeights,
    state: tuple[Array, Array],
    gx: Array,
    *,
    recurrent_mask: Optional[Array] = None,
    compute_dtype=None,
) -> tuple[Array, Array]:
    """One LSTM step from a precomputed input projection ``gx`` of shape ``(4H,)``.

    ``state`` is ``(h, c)`` with ``h: (R,)`` and ``c: (H,)``; returns the new pair.
    """
    h, c = state
    gh = lstm_recurrent_projection(w, h, recurrent_mask=recurrent_mask, compute_dtype=compute_dtype)
    h_new, c_new = lstm_pointwise(w, gx + gh, c)
    if w.w_hr is not None:
        h_new = matmul(h_new, w.w_hr, compute_dtype)
    return h_new, c_new


def lstm_cell(
    w: LSTMWeights,
    state: tuple[Array, Array],
    x: Array,
    *,
    recurrent_mask: Optional[Array] = None,
    compute_dtype=None,
) -> tuple[Array, Array]:
    """One LSTM step for one example.

    Args:
      w: an :class:`LSTMWeights`.
      state: ``(h, c)``, ``h: (R,)`` (R = P with a projection, else H), ``c: (H,)``.
      x: ``(I,)`` input.
      recurrent_mask: optional ``(R,)`` dropout mask applied to ``h`` before ``w_hh``.
      compute_dtype: optional matmul input dtype (e.g. ``jnp.bfloat16``).

    Returns:
      The new ``(h, c)``.

    >>> from lstm_jax.params import init_lstm
    >>> w = init_lstm(jax.random.key(0), 3, 4).layers[0][0]
    >>> h, c = lstm_cell(w, (jnp.zeros(4), jnp.zeros(4)), jnp.ones(3))
    >>> h.shape, c.shape
    ((4,), (4,))
    """
    validation.check_lstm_cell(w, state, x, recurrent_mask)
    gx = lstm_input_projection(w, x, compute_dtype=compute_dtype)
    return lstm_step(w, state, gx, recurrent_mask=recurrent_mask, compute_dtype=compute_dtype)


# ------------------------------------------------------------------------ GRU


def gru_input_projection(w: GRUWeights, x: Array, *, compute_dtype=None) -> Array:
    """``(I,) -> (3H,)``: ``x @ w_ih + b_ih``."""
    return matmul(x, w.w_ih, compute_dtype) + w.b_ih


def gru_recurrent_projection(
    w: GRUWeights, h: Array, *, recurrent_mask: Optional[Array] = None, compute_dtype=None
) -> Array:
    """``(H,) -> (3H,)``: the state-dependent part of the gates, ``h @ w_hh + b_hh``."""
    return matmul(_masked(h, recurrent_mask), w.w_hh, compute_dtype) + w.b_hh


def gru_pointwise(gx: Array, gh: Array, h: Array) -> tuple[tuple[Array, Array, Array], Array]:
    """Gate activations and the new state from both projections.

    Args:
      gx: ``(..., 3H)`` input projection, ``x @ w_ih + b_ih``.
      gh: ``(..., 3H)`` recurrent projection, ``h @ w_hh + b_hh``.
      h: ``(..., H)`` previous state.

    Returns:
      ``((r, z, n), h')``, each ``(..., H)``.
    """
    x_r, x_z, x_n = jnp.split(gx, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return (r, z, n), n + z * (h - n)


def gru_step(
    w: GRUWeights,
    h: Array,
    gx: Array,
    *,
    recurrent_mask: Optional[Array] = None,
    compute_dtype=None,
) -> Array:
    """One GRU step from a precomputed ``gx`` of shape ``(3H,)``; ``h: (H,)``."""
    gh = gru_recurrent_projection(w, h, recurrent_mask=recurrent_mask, compute_dtype=compute_dtype)
    return gru_pointwise(gx, gh, h)[1]


def gru_gates(
    w: GRUWeights,
    h: Array,
    gx: Array,
    *,
    recurrent_mask: Optional[Array] = None,
    compute_dtype=None,
) -> tuple[Array, Array, Array]:
    """The GRU's gate activations ``(r, z, n)``, each ``(H,)``; ``gx: (3H,)``, ``h: (H,)``."""
    gh = gru_recurrent_projection(w, h, recurrent_mask=recurrent_mask, compute_dtype=compute_dtype)
    return gru_pointwise(gx, gh, h)[0]


def gru_cell(
    w: GRUWeights,
    h: Array,
    x: Array,
    *,
    recurrent_mask: Optional[Array] = None,
    compute_dtype=None,
) -> Array:
    """One GRU step for one example: ``h: (H,)``, ``x: (I,)`` -> ``h': (H,)``.

    >>> from lstm_jax.params import init_gru
    >>> w = init_gru(jax.random.key(0), 3, 4).layers[0][0]
    >>> gru_cell(w, jnp.zeros(4), jnp.ones(3)).shape
    (4,)
    """
    validation.check_single_state_cell(validation.check_gru_weights, w, h, x, recurrent_mask)
    gx = gru_input_projection(w, x, compute_dtype=compute_dtype)
    return gru_step(w, h, gx, recurrent_mask=recurrent_mask, compute_dtype=compute_dtype)


# ------------------------------------------------------------------------ RNN

_NONLINEARITIES = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def _nonlinearity(name: str) -> Callable[[Array], Array]:
    if name not in _NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {tuple(_NONLINEARITIES)}, got {name!r}.")
    return _NONLINEARITIES[name]


def rnn_input_projection(w: RNNWeights, x: Array, *, compute_dtype=None) -> Array:
    """``(I,) -> (H,)``: ``x @ w_ih + b``."""
    return matmul(x, w.w_ih, compute_dtype) + w.b


def rnn_step(
    w: RNNWeights,
    h: Array,
    gx: Array,
    *,
    recurrent_mask: Optional[Array] = None,
    compute_dtype=None,
    nonlinearity: str = "tanh",
) -> Array:
    """One Elman step from a precomputed ``gx`` of shape ``(H,)``; ``h: (H,)``."""
    act = _nonlinearity(nonlinearity)
    return act(gx + matmul(_masked(h, recurrent_mask), w.w_hh, compute_dtype))


def rnn_cell(
    w: RNNWeights,
    h: Array,
    x: Array,
    *,
    recurrent_mask: Optional[Array] = None,
    compute_dtype=None,
    nonlinearity: str = "tanh",
) -> Array:
    """One Elman RNN step for one example: ``h: (H,)``, ``x: (I,)`` -> ``(H,)``.

    >>> from lstm_jax.params import init_rnn
    >>> w = init_rnn(jax.random.key(0), 3, 4).layers[0][0]
    >>> rnn_cell(w, jnp.zeros(4), jnp.ones(3)).shape
    (4,)
    """
    validation.check_single_state_cell(validation.check_rnn_weights, w, h, x, recurrent_mask)
    gx = rnn_input_projection(w, x, compute_dtype=compute_dtype)
    return rnn_step(
        w,
        h,
        gx,
        recurrent_mask=recurrent_mask,
        compute_dtype=compute_dtype,
        nonlinearity=nonlinearity,
    )


# ----------------------------------------------------------- cell descriptors


class Cell(NamedTuple):
    """What ``scan.py`` needs to run any cell over a sequence.

    project: ``(weights, x (I,)) -> (G,)``, the state-independent part (vmapped).
    step:    ``(weights, carry, gx (G,), recurrent_mask) -> carry``, one example.
    output:  ``carry -> h``, the per-step output.
    nonlinearity: the RNN's (``"tanh"``, ``"relu"``), for kernels that run it natively.
    """

    project: Callable
    step: Callable
    output: Callable
    nonlinearity: Optional[str] = None


def lstm_kind(*, compute_dtype=None) -> Cell:
    return Cell(
        project=lambda w, x: lstm_input_projection(w, x, compute_dtype=compute_dtype),
        step=lambda w, s, gx, m: lstm_step(w, s, gx, recurrent_mask=m, compute_dtype=compute_dtype),
        output=lambda s: s[0],
    )


def gru_kind(*, compute_dtype=None) -> Cell:
    return Cell(
        project=lambda w, x: gru_input_projection(w, x, compute_dtype=compute_dtype),
        step=lambda w, h, gx, m: gru_step(w, h, gx, recurrent_mask=m, compute_dtype=compute_dtype),
        output=lambda h: h,
    )


def rnn_kind(*, nonlinearity: str = "tanh", compute_dtype=None) -> Cell:
    _nonlinearity(nonlinearity)  # fail at trace time, before the loop
    return Cell(
        project=lambda w, x: rnn_input_projection(w, x, compute_dtype=compute_dtype),
        step=lambda w, h, gx, m: rnn_step(
            w, h, gx, recurrent_mask=m, compute_dtype=compute_dtype, nonlinearity=nonlinearity
        ),
        output=lambda h: h,
        nonlinearity=nonlinearity,
    )
