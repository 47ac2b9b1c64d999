"""Flax linen modules ``LSTM``, ``GRU`` and ``RNN`` over the functional networks.

The whole params pytree (``LSTMParams``, ...) is one linen parameter named
``"weights"``, so ``variables == {"params": {"weights": params}}``: readable,
and the layout ``variables_from_params`` builds from converted weights. The
input size is read from ``xs`` at ``init``. A call runs ``lstm_jax.lstm``
(``gru``, ``rnn``) on those params, so outputs are exactly the functional
call's.

Dropout follows ``flax.linen.Dropout``: a ``deterministic`` attribute or call
argument, and keys from the ``"dropout"`` RNG stream
(``m.apply(variables, xs, deterministic=False, rngs={"dropout": key})``).

>>> import jax, jax.numpy as jnp
>>> import lstm_jax.linen
>>> model = lstm_jax.linen.LSTM(8, num_layers=2)
>>> variables = model.init(jax.random.key(0), jnp.ones((4, 5, 3)))
>>> ys, state = model.apply(variables, jnp.ones((4, 5, 3)))
>>> ys.shape, state.h.shape
((4, 5, 8), (2, 4, 8))
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from lstm_jax import _modules

try:
    import flax.linen as nn
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise _modules.import_error("flax", "flax", error) from None

__all__ = ["LSTM", "GRU", "RNN"]

PARAM_NAME = "weights"


class _Recurrent(nn.Module):
    """Shared body of :class:`LSTM`, :class:`GRU` and :class:`RNN`.

    Subclasses declare the ``init_*`` options as fields; :meth:`_init_kwargs`
    collects them.
    """

    _kind = None  # a _modules.Kind, set by each subclass

    def _options(self) -> dict:
        return {}

    @classmethod
    def variables_from_params(cls, params: Any) -> dict:
        """``{"params": {"weights": params}}``: the variables of a module holding ``params``."""
        return {"params": {PARAM_NAME: _modules.as_params(cls._kind, params)}}

    @classmethod
    def from_params(cls, params: Any, **options: Any) -> tuple:
        """``(module, variables)`` holding ``params`` (``init_lstm``, ``from_torch``, ...).

        The module's size fields are read from ``params``; ``options`` sets the
        others (``dropout``, ``deterministic``, ...). One layer's weights (an
        ``LSTMWeights``) give a one-layer module.
        """
        params = _modules.as_params(cls._kind, params)
        config = _modules.config_from_params(cls._kind, params)
        del config["input_size"]  # read from xs
        return cls(**config, **options), cls.variables_from_params(params)

    @nn.compact
    def __call__(
        self,
        xs: jax.Array,
        *,
        seq_lengths: Optional[jax.Array] = None,
        initial_state: Optional[Any] = None,
        resets: Optional[jax.Array] = None,
        mask: Optional[jax.Array] = None,
        deterministic: Optional[bool] = None,
        **call_kwargs: Any,
    ):
        """Run the network: ``(ys, state)`` exactly as the functional call returns them.

        Args:
          xs: ``(B, T, I)``, or ``(T, I)`` for one sequence (``(T, B, I)`` with
            ``time_major=True``); ``I`` sets the input size at ``init``.
          seq_lengths, initial_state, resets, mask: as in the functional call.
          deterministic: no dropout if True; merged with the attribute as in
            ``nn.Dropout`` (needed only when a dropout rate is > 0).
          **call_kwargs: any other keyword of the functional call (``backend``,
            ``remat``, ``compute_dtype``, ``unroll``, ``time_major``, ...).
        """
        _modules.check_rates(self.dropout, self.recurrent_dropout)
        input_size = xs.shape[-1]
        params = self.param(
            PARAM_NAME,
            lambda key: self._kind.init(key, input_size, self.hidden_size, **self._init_kwargs()),
        )
        use_dropout = self.dropout > 0.0 or self.recurrent_dropout > 0.0
        if use_dropout:
            use_dropout = not nn.merge_param("deterministic", self.deterministic, deterministic)
        call_kwargs.update(
            seq_lengths=seq_lengths, initial_state=initial_state, resets=resets, mask=mask
        )
        return _modules.run(
            self._kind, params, xs, call_kwargs,
            dropout=self.dropout if use_dropout else 0.0,
            recurrent_dropout=self.recurrent_dropout if use_dropout else 0.0,
            key=self.make_rng("dropout") if use_dropout else None,
            options=self._options(),
        )  # fmt: skip


class LSTM(_Recurrent):
    """A linen LSTM: ``LSTM(hidden_size, **init_kwargs)``; ``(ys, LSTMState(h, c))``.

    Fields: ``hidden_size`` and the options of ``lstm_jax.init_lstm``, plus
    ``dropout`` (between layers), ``recurrent_dropout`` and ``deterministic``.
    """

    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    peephole: bool = False
    layer_norm: bool = False
    forget_bias: float = 1.0
    recurrent_init: str = "uniform"
    dtype: Any = jnp.float32
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    deterministic: Optional[bool] = None

    _kind = _modules.LSTM

    def _init_kwargs(self) -> dict:
        return dict(
            num_layers=self.num_layers, bidirectional=self.bidirectional,
            proj_size=self.proj_size, peephole=self.peephole, layer_norm=self.layer_norm,
            forget_bias=self.forget_bias, recurrent_init=self.recurrent_init, dtype=self.dtype,
        )  # fmt: skip


class _SingleState(_Recurrent):
    """The fields of ``init_gru`` and ``init_rnn``."""

    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    recurrent_init: str = "uniform"
    dtype: Any = jnp.float32
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    deterministic: Optional[bool] = None

    def _init_kwargs(self) -> dict:
        return dict(
            num_layers=self.num_layers, bidirectional=self.bidirectional,
            recurrent_init=self.recurrent_init, dtype=self.dtype,
        )  # fmt: skip


class GRU(_SingleState):
    """A linen GRU: ``GRU(hidden_size, **init_kwargs)`` (``init_gru``'s options); ``(ys, h)``."""

    _kind = _modules.GRU


class RNN(_SingleState):
    """A linen Elman RNN: ``RNN(hidden_size, **init_kwargs)`` as :class:`GRU`, plus
    ``nonlinearity="tanh"`` or ``"relu"``."""

    nonlinearity: str = "tanh"

    _kind = _modules.RNN

    def _options(self) -> dict:
        return {"nonlinearity": self.nonlinearity}
