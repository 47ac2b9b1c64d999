"""The framework-independent part of the modules in ``nnx.py``, ``linen.py`` and ``equinox.py``.

No framework is imported here. A module owns a params pytree (``LSTMParams``,
``GRUParams`` or ``RNNParams``) in its framework's way, draws a dropout key in
its framework's way, and then calls :func:`run`, which calls the functional
network (``lstm``, ``gru`` or ``rnn``): the modules add no math of their own.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from lstm_jax import network, validation
from lstm_jax.params import (
    GRUParams,
    GRUWeights,
    LSTMParams,
    LSTMWeights,
    RNNParams,
    RNNWeights,
    init_gru,
    init_lstm,
    init_rnn,
)


class Kind(NamedTuple):
    """One recurrent network type: how to initialise it and how to run it."""

    name: str  # the module's class name: "LSTM", "GRU" or "RNN"
    init: Callable  # init_lstm / init_gru / init_rnn
    apply: Callable  # network.lstm / gru / rnn
    params_type: type  # LSTMParams / GRUParams / RNNParams
    weights_type: type  # LSTMWeights / ...: one layer-direction, e.g. from from_flax
    init_name: str  # "init_lstm", for error messages


LSTM = Kind("LSTM", init_lstm, network.lstm, LSTMParams, LSTMWeights, "init_lstm")
GRU = Kind("GRU", init_gru, network.gru, GRUParams, GRUWeights, "init_gru")
RNN = Kind("RNN", init_rnn, network.rnn, RNNParams, RNNWeights, "init_rnn")

# Options that belong to the module, not to a call: passing them to a call is an error.
_MODULE_OPTIONS = ("dropout", "recurrent_dropout", "key", "nonlinearity")


def as_params(kind: Kind, params: Any) -> Any:
    """``params`` as ``kind.params_type``; one layer's weights (``from_flax``, ``from_keras``)
    become a one-layer, one-direction network."""
    if isinstance(params, kind.weights_type):
        return kind.params_type(((params,),))
    validation.check_params_type(params, kind.params_type, kind.init_name)
    return params


def config_from_params(kind: Kind, params: Any) -> dict:
    """The ``init_*`` arguments that build params of the same structure and shapes.

    Returns ``input_size``, ``hidden_size`` and the keyword arguments
    (``num_layers``, ``bidirectional``, ``dtype`` and, for an LSTM,
    ``proj_size``, ``peephole``, ``layer_norm``).
    """
    params = as_params(kind, params)
    first = params.layers[0][0]
    config = dict(
        input_size=first.w_ih.shape[0],
        num_layers=len(params.layers),
        bidirectional=len(params.layers[0]) == 2,
        dtype=first.w_hh.dtype,
    )
    if kind is LSTM:
        config.update(
            hidden_size=first.w_hh.shape[1] // 4,
            proj_size=0 if first.w_hr is None else first.w_hr.shape[1],
            peephole=first.w_peep is not None,
            layer_norm=first.ln is not None,
        )
    else:
        config.update(hidden_size=first.w_hh.shape[0])
    return config


def check_rates(dropout: float, recurrent_dropout: float) -> None:
    for name, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {rate!r}.")


def run(
    kind: Kind,
    params: Any,
    xs: Any,
    call_kwargs: dict,
    *,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    key: Optional[Any] = None,
    options: Optional[dict] = None,
):
    """Call ``kind.apply(params, xs, ...)``.

    ``call_kwargs`` are the keywords the module's caller passed (``seq_lengths``,
    ``initial_state``, ``backend``, ...): they go through as they are, except
    ``resets`` and ``mask``, forwarded only when not None. ``dropout``,
    ``recurrent_dropout`` and ``key`` are the module's (the module passes rates
    of 0 when it is deterministic); ``options`` are other module options
    forwarded to the call (an RNN's ``nonlinearity``).
    """
    for name in _MODULE_OPTIONS:
        if name in call_kwargs:
            raise TypeError(
                f"{name!r} is an option of the {kind.name} module, not of a call: set it when "
                f"building the module (e.g. {kind.name}(..., dropout=0.1)); the dropout key "
                "comes from the framework's RNG (see the module's docstring)."
            )
    call_kwargs = {
        name: value
        for name, value in call_kwargs.items()
        if value is not None or name not in ("resets", "mask")
    }
    if dropout > 0.0 or recurrent_dropout > 0.0:
        call_kwargs.update(dropout=dropout, recurrent_dropout=recurrent_dropout, key=key)
    return kind.apply(params, xs, **(options or {}), **call_kwargs)


def import_error(framework: str, extra: str, error: ImportError) -> ImportError:
    """The error raised when an optional framework is missing."""
    return ImportError(
        f"lstm_jax.{extra} needs {framework}, which is not installed: "
        f"pip install 'lstm_jax[{extra}]' (or pip install {framework}). ({error})"
    )
