"""Flax NNX modules ``LSTM``, ``GRU`` and ``RNN`` over the functional networks.

A module owns its params pytree (``LSTMParams``, ...) with every array an
``nnx.Param``, so ``nnx.state``, ``nnx.split`` and ``nnx.Optimizer(model, tx,
wrt=nnx.Param)`` see them; a call runs ``lstm_jax.lstm`` (``gru``, ``rnn``)
on those arrays, so outputs are exactly the functional call's.

Dropout follows ``nnx.Dropout``: the module keeps a fork of the ``"dropout"``
stream of the ``rngs`` it was built with, and ``model.train()`` /
``model.eval()`` (or ``nnx.view(model, deterministic=...)``) switch it on and
off.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> import lstm_jax.nnx
>>> model = lstm_jax.nnx.LSTM(3, 8, num_layers=2, rngs=nnx.Rngs(0))
>>> ys, state = model(jnp.ones((4, 5, 3)))
>>> ys.shape, state.h.shape
((4, 5, 8), (2, 4, 8))
"""

from __future__ import annotations

from typing import Any, Optional

import jax

from lstm_jax import _modules

try:
    from flax import nnx
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise _modules.import_error("flax", "flax", error) from None

__all__ = ["LSTM", "GRU", "RNN"]


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


class _Recurrent(nnx.Module):
    """Shared body of :class:`LSTM`, :class:`GRU` and :class:`RNN`."""

    _kind: _modules.Kind

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        rngs: Optional[nnx.Rngs] = None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        deterministic: bool = False,
        **init_kwargs: Any,
    ):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        params = self._kind.init(rngs.params(), input_size, hidden_size, **init_kwargs)
        self._setup(params, rngs, dropout, recurrent_dropout, deterministic)

    def _setup(self, params, rngs, dropout, recurrent_dropout, deterministic) -> None:
        _modules.check_rates(dropout, recurrent_dropout)
        # nnx.data: a pytree holding Variables is data, not a static attribute.
        self.params = nnx.data(jax.tree.map(nnx.Param, params))
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.deterministic = deterministic
        self.rngs = nnx.data(None)
        if dropout > 0.0 or recurrent_dropout > 0.0:
            streams = sorted(k for k, v in vars(rngs).items() if isinstance(v, nnx.RngStream))
            if "dropout" not in streams and "default" not in streams:
                raise ValueError(
                    f"dropout={dropout}, recurrent_dropout={recurrent_dropout} need a 'dropout' "
                    f"(or 'default') stream in rngs, got streams {streams}: use e.g. "
                    "nnx.Rngs(0) or nnx.Rngs(params=0, dropout=1)."
                )
            self.rngs = rngs["dropout"].fork()

    @classmethod
    def from_params(
        cls,
        params: Any,
        *,
        rngs: Optional[nnx.Rngs] = None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        deterministic: bool = False,
        **options: Any,
    ):
        """A module holding ``params`` (``init_lstm``, ``from_torch``, ``from_flax``, ...).

        One layer's weights (an ``LSTMWeights`` from ``from_flax`` or
        ``from_keras``) give a one-layer module. ``rngs`` (default
        ``nnx.Rngs(0)``) is used only for dropout.
        """
        rngs = nnx.Rngs(0) if rngs is None else rngs
        params = _modules.as_params(cls._kind, params)
        config = _modules.config_from_params(cls._kind, params)
        sizes = config.pop("input_size"), config.pop("hidden_size")
        # Build abstractly (no initialisation is computed), then put the given params in.
        module = nnx.eval_shape(lambda: cls(*sizes, **config, **options))
        module._setup(params, rngs, dropout, recurrent_dropout, deterministic)
        return module

    def to_params(self) -> Any:
        """The params pytree of plain arrays (e.g. for ``lstm_jax.to_torch``)."""
        return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_variable)

    def set_view(self, deterministic: Optional[bool] = None):
        """Used by ``nnx.view(model, deterministic=...)``."""
        if deterministic is not None:
            self.deterministic = deterministic

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
        deterministic: Optional[bool] = None,
        rngs: Optional[nnx.Rngs | nnx.RngStream | jax.Array] = None,
        **call_kwargs: Any,
    ):
        """Run the network: ``(ys, state)`` exactly as the functional call returns them.

        Args:
          xs: ``(B, T, I)``, or ``(T, I)`` for one sequence.
          seq_lengths, initial_state, resets, mask: as in the functional call.
          deterministic: overrides the module's ``deterministic`` (``train()``/``eval()``).
          rngs: overrides the stored dropout RNG: an ``nnx.Rngs``, a stream or a key.
          **call_kwargs: any other keyword of the functional call (``backend``,
            ``remat``, ``compute_dtype``, ``unroll``, ``time_major``, ...).
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        use_dropout = not deterministic and (self.dropout > 0.0 or self.recurrent_dropout > 0.0)
        key = self._dropout_key(rngs) if use_dropout else None
        call_kwargs.update(
            seq_lengths=seq_lengths, initial_state=initial_state, resets=resets, mask=mask
        )
        return _modules.run(
            self._kind, self.to_params(), xs, call_kwargs,
            dropout=self.dropout if use_dropout else 0.0,
            recurrent_dropout=self.recurrent_dropout if use_dropout else 0.0,
            key=key, options=self._options(),
        )  # fmt: skip

    def _dropout_key(self, rngs) -> jax.Array:
        rngs = self.rngs if rngs is None else rngs
        if isinstance(rngs, nnx.Rngs):
            return rngs["dropout"]()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        if isinstance(rngs, jax.Array):
            return rngs
        raise TypeError(
            f"rngs must be an nnx.Rngs, an nnx.RngStream or a PRNG key, got {type(rngs).__name__}."
        )


class LSTM(_Recurrent):
    """An NNX LSTM: ``LSTM(input_size, hidden_size, *, rngs=nnx.Rngs(0), **init_kwargs)``.

    ``init_kwargs`` are those of ``lstm_jax.init_lstm`` (``num_layers``,
    ``bidirectional``, ``proj_size``, ``peephole``, ``layer_norm``,
    ``forget_bias``, ``recurrent_init``, ``dtype``). ``dropout`` (between
    layers) and ``recurrent_dropout`` are module options; ``deterministic``
    starts the module in eval mode. A call returns ``(ys, LSTMState(h, c))``.
    """

    _kind = _modules.LSTM


class GRU(_Recurrent):
    """An NNX GRU: as :class:`LSTM` with ``init_gru``'s options; returns ``(ys, h)``."""

    _kind = _modules.GRU


class RNN(_Recurrent):
    """An NNX Elman RNN: as :class:`GRU`, plus ``nonlinearity="tanh"`` or ``"relu"``."""

    _kind = _modules.RNN

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh", **kwargs):
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, **kwargs)

    def _options(self) -> dict:
        return {"nonlinearity": self.nonlinearity}
