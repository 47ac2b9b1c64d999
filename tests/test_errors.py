"""Every bad input gets a clear error naming the argument, the expected and the actual value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj

PARAMS = lj.init_lstm(jax.random.key(0), 3, 4, num_layers=2)
XS = jnp.ones((2, 5, 3))


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"xs must have rank 3 .* or rank 2 .*got rank 4 with shape \(1, 2, 5, 3\)"):
        lj.lstm(PARAMS, jnp.ones((1, 2, 5, 3)))
    with pytest.raises(ValueError, match="got rank 1"):
        lj.gru(lj.init_gru(jax.random.key(0), 3, 4), jnp.ones((3,)))


def test_feature_size_mismatch():
    with pytest.raises(ValueError, match=r"xs has 7 features .* expect input_size=3"):
        lj.lstm(PARAMS, jnp.ones((2, 5, 7)))


def test_integer_inputs():
    with pytest.raises(TypeError, match="xs must have a floating dtype, got int32"):
        lj.lstm(PARAMS, jnp.ones((2, 5, 3), jnp.int32))


def test_not_an_array():
    with pytest.raises(TypeError, match="xs must be an array, got list"):
        lj.lstm(PARAMS, [[1.0, 2.0, 3.0]])


def test_wrong_params_type():
    with pytest.raises(TypeError, match=r"params must be a LSTMParams .*got GRUParams"):
        lj.lstm(lj.init_gru(jax.random.key(0), 3, 4), XS)
    with pytest.raises(TypeError, match=r"params must be a GRUParams .*got dict"):
        lj.gru({"w": 1}, XS)


def test_zero_time_steps():
    with pytest.raises(ValueError, match="xs has 0 time steps; at least 1 is required"):
        lj.lstm(PARAMS, jnp.ones((2, 0, 3)))


def test_batch_mismatch_in_initial_state():
    state = lj.LSTMState(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"initial_state.h must have shape \(2, 2, 4\) .*got \(2, 3, 4\)"):
        lj.lstm(PARAMS, XS, initial_state=state)


def test_layer_count_mismatch_in_initial_state():
    state = lj.LSTMState(jnp.zeros((2, 2, 4)), jnp.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match=r"initial_state.c must have shape \(2, 2, 4\) .*got \(1, 2, 4\)"):
        lj.lstm(PARAMS, XS, initial_state=state)


def test_initial_state_wrong_type():
    with pytest.raises(TypeError, match="initial_state must be an LSTMState"):
        lj.lstm(PARAMS, XS, initial_state=jnp.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match=r"initial_state must have shape \(1, 2, 4\)"):
        lj.gru(lj.init_gru(jax.random.key(0), 3, 4), XS, initial_state=jnp.zeros((2, 4)))


def test_unbatched_initial_state_has_no_batch_axis():
    state = lj.LSTMState(jnp.zeros((2, 1, 4)), jnp.zeros((2, 1, 4)))
    with pytest.raises(ValueError, match=r"initial_state.h must have shape \(2, 4\)"):
        lj.lstm(PARAMS, jnp.ones((5, 3)), initial_state=state)


def test_seq_lengths_wrong_shape():
    with pytest.raises(ValueError, match=r"seq_lengths must have shape \(2,\) .*got \(3,\)"):
        lj.lstm(PARAMS, XS, seq_lengths=jnp.array([1, 2, 3]))


def test_seq_lengths_float_dtype():
    with pytest.raises(TypeError, match="seq_lengths must have an integer dtype, got float32"):
        lj.lstm(PARAMS, XS, seq_lengths=jnp.array([1.0, 2.0]))


def test_seq_lengths_out_of_range():
    with pytest.raises(ValueError, match=r"seq_lengths must lie in 1\.\.5 .*got \[0, 2\]"):
        lj.lstm(PARAMS, XS, seq_lengths=np.array([0, 2]))
    with pytest.raises(ValueError, match=r"got \[6, 2\]"):
        lj.lstm(PARAMS, XS, seq_lengths=[6, 2])


@pytest.mark.parametrize("init", [lj.init_lstm, lj.init_gru, lj.init_rnn])
def test_num_layers_below_one(init):
    with pytest.raises(ValueError, match="num_layers must be an integer >= 1, got 0"):
        init(jax.random.key(0), 3, 4, num_layers=0)


@pytest.mark.parametrize("init", [lj.init_lstm, lj.init_gru, lj.init_rnn])
def test_hidden_size_below_one(init):
    with pytest.raises(ValueError, match="hidden_size must be an integer >= 1, got 0"):
        init(jax.random.key(0), 3, 0)


def test_bad_proj_size_and_initialiser():
    with pytest.raises(ValueError, match=r"proj_size must be smaller than hidden_size \(4\), got 4"):
        lj.init_lstm(jax.random.key(0), 3, 4, proj_size=4)
    with pytest.raises(ValueError, match="recurrent_init must be one of"):
        lj.init_lstm(jax.random.key(0), 3, 4, recurrent_init="xavier")


@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_outside_unit_interval(name, rate):
    with pytest.raises(ValueError, match=rf"{name} must lie in \[0, 1\), got {rate}"):
        lj.lstm(PARAMS, XS, key=jax.random.key(0), **{name: rate})


@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
def test_dropout_without_key(name):
    with pytest.raises(ValueError, match=rf"{name}=0.2 needs a PRNG key"):
        lj.lstm(PARAMS, XS, **{name: 0.2})


def test_bad_unroll_backend_and_nonlinearity():
    with pytest.raises(ValueError, match="unroll must be an integer >= 1, got 0"):
        lj.lstm(PARAMS, XS, unroll=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        lj.lstm(PARAMS, XS, backend="magic")
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        lj.rnn(lj.init_rnn(jax.random.key(0), 3, 4), XS, nonlinearity="sigmoid")


def test_errors_are_raised_under_jit_at_trace_time():
    with pytest.raises(ValueError, match=r"xs has 7 features"):
        jax.jit(lj.lstm)(PARAMS, jnp.ones((2, 5, 7)))
    with pytest.raises(TypeError, match="seq_lengths must have an integer dtype"):
        jax.jit(lj.lstm)(PARAMS, XS, seq_lengths=jnp.array([1.0, 2.0]))
