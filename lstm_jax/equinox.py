"""Equinox modules ``LSTM``, ``GRU`` and ``RNN`` over the functional networks.

A module is a pytree whose ``params`` field is the params pytree
(``LSTMParams``, ...); sizes come from array shapes and the other options are
static fields, so ``eqx.filter_jit``, ``eqx.filter_grad``,
``eqx.tree_serialise_leaves`` and ``jax.vmap`` work as with ``eqx.nn``. A
call runs ``lstm_jax.lstm`` (``gru``, ``rnn``) on ``xs`` of shape ``(T, I)``
(one sequence, the Equinox way: ``jax.vmap`` it over a batch) or
``(B, T, I)``; outputs are exactly the functional call's.

Dropout follows ``eqx.nn.Dropout``: a ``key=`` argument and an ``inference``
flag (``eqx.nn.inference_mode(model)`` sets it).

>>> import jax, jax.numpy as jnp
>>> import lstm_jax.equinox
>>> model = lstm_jax.equinox.LSTM(3, 8, key=jax.random.key(0))
>>> ys, state = model(jnp.ones((5, 3)))
>>> ys.shape, state.h.shape
((5, 8), (1, 8))
"""

from __future__ import annotations

from typing import Any, Optional

import jax

from lstm_jax import _modules

try:
    import equinox as eqx
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise _modules.import_error("equinox", "equinox", error) from None

__all__ = ["LSTM", "GRU", "RNN"]


class _Recurrent(eqx.Module):
    """Shared body of :class:`LSTM`, :class:`GRU` and :class:`RNN`."""

    params: Any
    dropout: float = eqx.field(static=True)
    recurrent_dropout: float = eqx.field(static=True)
    inference: bool

    _kind = None  # a _modules.Kind, set by each subclass

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        key: jax.Array,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        inference: bool = False,
        **init_kwargs: Any,
    ):
        _modules.check_rates(dropout, recurrent_dropout)
        self.params = self._kind.init(key, input_size, hidden_size, **init_kwargs)
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.inference = inference

    @classmethod
    def from_params(cls, params: Any, **options: Any):
        """A module holding ``params`` (``init_lstm``, ``from_torch``, ``from_flax``, ...).

        ``options`` are the module's other options (``dropout``, ...). One
        layer's weights (an ``LSTMWeights``) give a one-layer module.
        """
        params = _modules.as_params(cls._kind, params)
        config = _modules.config_from_params(cls._kind, params)
        sizes = config.pop("input_size"), config.pop("hidden_size")
        # Build abstractly (no initialisation is computed), then put the given params in.
        module = eqx.filter_eval_shape(cls, *sizes, key=jax.random.key(0), **config, **options)
        return eqx.tree_at(lambda m: m.params, module, params)

    def _options(self) -> dict:
        return {}

    def __call__(
        self,
        xs: jax.Array,
        *,
        seq_lengths: Optional[jax.Array] = None,
        initial_state: Optional[Any] = None,
        resets: Optional[jax.Array] = None,
        mask: Optional[jax.Array] = None,
        key: Optional[jax.Array] = None,
        inference: Optional[bool] = None,
        **call_kwargs: Any,
    ):
        """Run the network: ``(ys, state)`` exactly as the functional call returns them.

        Args:
          xs: ``(T, I)`` for one sequence, or ``(B, T, I)``.
          seq_lengths, initial_state, resets, mask: as in the functional call.
          key: PRNG key for dropout; needed when a rate is > 0 and not in inference.
          inference: overrides the ``inference`` field (no dropout if True).
          **call_kwargs: any other keyword of the functional call (``backend``,
            ``remat``, ``compute_dtype``, ``unroll``, ``time_major``, ...).
        """
        inference = self.inference if inference is None else inference
        use_dropout = not inference and (self.dropout > 0.0 or self.recurrent_dropout > 0.0)
        if use_dropout and key is None:
            raise ValueError(
                f"{type(self).__name__} has dropout={self.dropout}, recurrent_dropout="
                f"{self.recurrent_dropout} and is not in inference mode: pass key=... or use "
                "eqx.nn.inference_mode(model)."
            )
        call_kwargs.update(
            seq_lengths=seq_lengths, initial_state=initial_state, resets=resets, mask=mask
        )
        return _modules.run(
            self._kind, self.params, xs, call_kwargs,
            dropout=self.dropout if use_dropout else 0.0,
            recurrent_dropout=self.recurrent_dropout if use_dropout else 0.0,
            key=key, options=self._options(),
        )  # fmt: skip


class LSTM(_Recurrent):
    """An Equinox LSTM: ``LSTM(input_size, hidden_size, *, key, **init_kwargs)``.

    ``init_kwargs`` are those of ``lstm_jax.init_lstm`` (``num_layers``,
    ``bidirectional``, ``proj_size``, ``peephole``, ``layer_norm``,
    ``forget_bias``, ``recurrent_init``, ``dtype``). ``dropout`` (between
    layers) and ``recurrent_dropout`` are static options; ``inference`` turns
    them off. A call returns ``(ys, LSTMState(h, c))``.
    """

    _kind = _modules.LSTM


class GRU(_Recurrent):
    """An Equinox GRU: as :class:`LSTM` with ``init_gru``'s options; returns ``(ys, h)``."""

    _kind = _modules.GRU


class RNN(_Recurrent):
    """An Equinox Elman RNN: as :class:`GRU`, plus ``nonlinearity="tanh"`` or ``"relu"``."""

    nonlinearity: str = eqx.field(static=True)

    _kind = _modules.RNN

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh", **kwargs):
        super().__init__(input_size, hidden_size, **kwargs)
        self.nonlinearity = nonlinearity

    def _options(self) -> dict:
        return {"nonlinearity": self.nonlinearity}
