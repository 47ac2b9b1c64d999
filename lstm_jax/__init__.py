"""lstm_jax: a pure-functional LSTM, GRU and RNN for JAX.

>>> import jax, jax.numpy as jnp, lstm_jax as lj
>>> params = lj.init_lstm(jax.random.key(0), input_size=3, hidden_size=8)
>>> ys, state = lj.lstm(params, jnp.ones((2, 5, 3)))
>>> ys.shape
(2, 5, 8)
"""

from lstm_jax import decoding
from lstm_jax import diagnostics
from lstm_jax import parallel
from lstm_jax import training
from lstm_jax.cells import gru_cell
from lstm_jax.cells import lstm_cell
from lstm_jax.cells import rnn_cell
from lstm_jax.export import export_safety_checks
from lstm_jax.interop import from_flax
from lstm_jax.interop import from_keras
from lstm_jax.interop import from_torch
from lstm_jax.interop import to_flax
from lstm_jax.interop import to_keras
from lstm_jax.interop import to_torch
from lstm_jax.network import gru
from lstm_jax.network import lstm
from lstm_jax.network import rnn
from lstm_jax.onnx_interop import from_onnx
from lstm_jax.onnx_interop import to_onnx
from lstm_jax.params import GRUParams
from lstm_jax.params import GRUWeights
from lstm_jax.params import LayerNormWeights
from lstm_jax.params import LSTMParams
from lstm_jax.params import LSTMState
from lstm_jax.params import LSTMWeights
from lstm_jax.params import RNNParams
from lstm_jax.params import RNNWeights
from lstm_jax.params import init_gru
from lstm_jax.params import init_lstm
from lstm_jax.params import init_rnn
from lstm_jax.params import params_from_layers
from lstm_jax.training import TrainState
from lstm_jax.training import init_stream_state
from lstm_jax.training import init_train_state
from lstm_jax.training import make_optimizer
from lstm_jax.training import make_tbptt_train_step
from lstm_jax.training import make_train_step
from lstm_jax.training import stream_step

__version__ = "0.1.0"

__all__ = [
    "GRUParams",
    "GRUWeights",
    "LSTMParams",
    "LSTMState",
    "LSTMWeights",
    "LayerNormWeights",
    "RNNParams",
    "RNNWeights",
    "from_flax",
    "from_keras",
    "from_torch",
    "gru",
    "gru_cell",
    "init_gru",
    "init_lstm",
    "init_rnn",
    "lstm",
    "lstm_cell",
    "params_from_layers",
    "rnn",
    "rnn_cell",
    "to_flax",
    "to_keras",
    "to_torch",
    "export_safety_checks",
    "to_onnx",
    "from_onnx",
    "TrainState",
    "init_train_state",
    "make_optimizer",
    "make_train_step",
    "make_tbptt_train_step",
    "init_stream_state",
    "stream_step",
    "training",
    "decoding",
    "diagnostics",
    "parallel",
]
