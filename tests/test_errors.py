"""Every bad input gets a clear error naming the argument, the expected and the actual value."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


# ------------------------------------- params: every layer and direction, named


def _replace(params, layer, direction, **fields):
    layers = [list(directions) for directions in params.layers]
    layers[layer][direction] = layers[layer][direction]._replace(**fields)
    return type(params)(tuple(tuple(directions) for directions in layers))


BI = lj.init_lstm(jax.random.key(0), 3, 4, num_layers=2, bidirectional=True)


def test_wrong_w_hh_in_a_deeper_layer():
    bad = _replace(PARAMS, 1, 0, w_hh=jnp.zeros((5, 16)))
    with pytest.raises(ValueError, match=r"params.layers\[1\]\[0\].w_hh has shape \(5, 16\), expected \(4, 16\)"):
        lj.lstm(bad, XS)


def test_wrong_bias_in_the_reverse_direction():
    bad = _replace(BI, 1, 1, b=jnp.zeros(15))
    with pytest.raises(ValueError, match=r"params.layers\[1\]\[1\].b has shape \(15,\), expected \(16,\)"):
        lj.lstm(bad, XS)


def test_deeper_layer_input_is_directions_times_hidden():
    bad = _replace(BI, 1, 0, w_ih=jnp.zeros((4, 16)))
    with pytest.raises(ValueError, match=r"params.layers\[1\]\[0\].w_ih has shape \(4, 16\), expected \(8, 16\) = \(2 \* hidden_size, 4 \* hidden_size\)"):
        lj.lstm(bad, XS)


def test_number_of_directions_differs_between_layers():
    bad = lj.LSTMParams((BI.layers[0], BI.layers[1][:1]))
    with pytest.raises(ValueError, match=r"params.layers\[1\] has 1 direction\(s\), expected 2 like params.layers\[0\]"):
        lj.lstm(bad, XS)
    with pytest.raises(ValueError, match=r"params.layers\[0\] must hold 1 or 2 directions .*got 3"):
        lj.lstm(lj.LSTMParams((BI.layers[0] + BI.layers[0][:1],)), XS)


def test_params_dtypes_must_be_floating_and_shared():
    bad = _replace(BI, 1, 1, b=BI.layers[1][1].b.astype(jnp.bfloat16))
    with pytest.raises(TypeError, match=r"params.layers\[1\]\[1\].b has dtype bfloat16, expected float32 like params.layers\[0\]\[0\].w_hh"):
        lj.lstm(bad, XS)
    bad = _replace(PARAMS, 0, 0, w_ih=PARAMS.layers[0][0].w_ih.astype(jnp.int32))
    with pytest.raises(TypeError, match=r"params.layers\[0\]\[0\].w_ih must have a floating dtype, got int32"):
        lj.lstm(bad, XS)


def test_wrong_projection_peephole_and_layer_norm_weights():
    proj = lj.init_lstm(jax.random.key(0), 3, 6, num_layers=2, proj_size=2)
    with pytest.raises(ValueError, match=r"params.layers\[1\]\[0\].w_hr has shape \(6, 3\), expected \(6, 2\) = \(hidden_size, proj_size\)"):
        lj.lstm(_replace(proj, 1, 0, w_hr=jnp.zeros((6, 3))), XS)
    with pytest.raises(ValueError, match=r"params.layers\[0\]\[0\] has a projection \(w_hr\) and params.layers\[1\]\[0\] has none"):
        lj.lstm(_replace(proj, 1, 0, w_hr=None), XS)
    peep = lj.init_lstm(jax.random.key(0), 3, 4, num_layers=2, peephole=True, layer_norm=True)
    with pytest.raises(ValueError, match=r"params.layers\[1\]\[0\].w_peep has shape \(3, 5\), expected \(3, 4\)"):
        lj.lstm(_replace(peep, 1, 0, w_peep=jnp.zeros((3, 5))), XS)
    ln = peep.layers[0][0].ln._replace(c_offset=jnp.zeros(16))
    with pytest.raises(ValueError, match=r"params.layers\[0\]\[0\].ln.c_offset has shape \(16,\), expected \(4,\)"):
        lj.lstm(_replace(peep, 0, 0, ln=ln), XS)


def test_gru_and_rnn_params_are_checked_field_by_field():
    gru = lj.init_gru(jax.random.key(0), 3, 4, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match=r"params.layers\[1\]\[1\].b_hh has shape \(8,\), expected \(12,\) = \(3 \* hidden_size,\)"):
        lj.gru(_replace(gru, 1, 1, b_hh=jnp.zeros(8)), XS)
    rnn = lj.init_rnn(jax.random.key(0), 3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"params.layers\[0\]\[0\].w_hh has shape \(4, 5\), expected \(5, 5\) = \(hidden_size, hidden_size\)"):
        lj.rnn(_replace(rnn, 0, 0, w_hh=jnp.zeros((4, 5))), XS)
    with pytest.raises(ValueError, match=r"params.layers\[1\]\[0\].w_ih has shape \(3, 4\), expected \(4, 4\) = \(hidden_size, hidden_size\)"):
        lj.rnn(_replace(rnn, 1, 0, w_ih=jnp.zeros((3, 4))), XS)


def test_params_are_checked_under_jit():
    bad = _replace(PARAMS, 1, 0, w_hh=jnp.zeros((5, 16)))
    with pytest.raises(ValueError, match=r"params.layers\[1\]\[0\].w_hh has shape \(5, 16\)"):
        jax.jit(lj.lstm)(bad, XS)


def test_layers_missing_a_level_of_nesting():
    with pytest.raises(TypeError, match=r"params.layers\[0\] must be a tuple of 1 or 2 directions .*got LSTMWeights"):
        lj.lstm(lj.LSTMParams((PARAMS.layers[0][0],)), XS)


def test_cells_check_weights_and_state():
    w = PARAMS.layers[0][0]
    with pytest.raises(ValueError, match=r"state\[0\] \(h\) must have shape \(4,\) .*got \(5,\)"):
        lj.lstm_cell(w, (jnp.zeros(5), jnp.zeros(4)), jnp.ones(3))
    with pytest.raises(ValueError, match=r"state\[1\] \(c\) must have shape \(4,\) .*got \(2, 4\)"):
        lj.lstm_cell(w, (jnp.zeros(4), jnp.zeros((2, 4))), jnp.ones(3))
    with pytest.raises(ValueError, match=r"x must have shape \(3,\) .*got \(2,\)"):
        lj.lstm_cell(w, (jnp.zeros(4), jnp.zeros(4)), jnp.ones(2))
    with pytest.raises(ValueError, match=r"w.b has shape \(3,\), expected \(16,\)"):
        lj.lstm_cell(w._replace(b=jnp.zeros(3)), (jnp.zeros(4), jnp.zeros(4)), jnp.ones(3))
    with pytest.raises(TypeError, match=r"state must be a pair \(h, c\), got"):
        lj.lstm_cell(w, jnp.zeros(4), jnp.ones(3))
    g = lj.init_gru(jax.random.key(0), 3, 4).layers[0][0]
    with pytest.raises(ValueError, match=r"h must have shape \(4,\) .*got \(5,\)"):
        lj.gru_cell(g, jnp.zeros(5), jnp.ones(3))
    with pytest.raises(TypeError, match=r"w must be an GRUWeights, got LSTMWeights"):
        lj.gru_cell(w, jnp.zeros(4), jnp.ones(3))
    r = lj.init_rnn(jax.random.key(0), 3, 4).layers[0][0]
    with pytest.raises(ValueError, match=r"recurrent_mask must have shape \(4,\) .*got \(3,\)"):
        lj.rnn_cell(r, jnp.zeros(4), jnp.ones(3), recurrent_mask=jnp.ones(3))


def test_stream_step_checks_params_and_state():
    with pytest.raises(ValueError, match=r"state.h must have shape \(2, 4\) .*got \(1, 4\)"):
        lj.stream_step(PARAMS, lj.LSTMState(jnp.zeros((1, 4)), jnp.zeros((2, 4))), jnp.ones(3))
    with pytest.raises(ValueError, match=r"state.h must have shape \(2, 3, 4\) .*got \(2, 2, 4\)"):
        lj.stream_step(PARAMS, lj.init_stream_state(PARAMS, (2,)), jnp.ones((3, 3)))
    gru = lj.init_gru(jax.random.key(0), 3, 4)
    with pytest.raises(ValueError, match=r"state must have shape \(1, 4\) .*got \(2, 4\)"):
        lj.stream_step(gru, jnp.zeros((2, 4)), jnp.ones(3))
    with pytest.raises(ValueError, match=r"x_t must have shape \(3,\) or \(batch, 3\)"):
        lj.stream_step(gru, jnp.zeros((1, 4)), jnp.ones(4))
    bad = _replace(PARAMS, 1, 0, w_hh=jnp.zeros((5, 16)))
    with pytest.raises(ValueError, match=r"params.layers\[1\]\[0\].w_hh has shape \(5, 16\)"):
        lj.init_stream_state(bad)


# ------------------------------------------------------- keys, sizes, last_valid


@pytest.mark.parametrize(
    "call",
    [
        lambda key: lj.lstm(PARAMS, XS, dropout=0.5, key=key),
        lambda key: lj.gru(lj.init_gru(jax.random.key(0), 3, 4), XS, recurrent_dropout=0.5, key=key),
        lambda key: lj.rnn(lj.init_rnn(jax.random.key(0), 3, 4), XS, key=key),
        lambda key: lj.init_lstm(key, 3, 4),
        lambda key: lj.init_gru(key, 3, 4),
        lambda key: lj.init_rnn(key, 3, 4),
        lambda key: lj.init_train_state({"w": jnp.zeros(2)}, optax.sgd(0.1), key),
    ],
    ids=["lstm", "gru", "rnn", "init_lstm", "init_gru", "init_rnn", "init_train_state"],
)
def test_an_int_is_not_a_key(call):
    with pytest.raises(TypeError, match=r"key must be a PRNG key from jax.random.key\(seed\) .*got int 0"):
        call(0)


def test_a_batch_of_keys_is_not_a_key():
    keys = jax.random.split(jax.random.key(0))
    with pytest.raises(ValueError, match=r"key must be a single PRNG key \(shape \(\)\), got a key array of shape \(2,\)"):
        lj.lstm(PARAMS, XS, dropout=0.5, key=keys)
    ys, _ = lj.lstm(PARAMS, XS, dropout=0.5, key=jax.random.PRNGKey(0))  # raw uint32 keys work
    assert ys.shape == (2, 5, 4)


def test_numpy_integers_are_sizes_and_bools_are_not():
    params = lj.init_lstm(jax.random.key(0), np.int64(3), np.int64(8), num_layers=np.int32(2))
    assert params.layers[1][0].w_ih.shape == (8, 32)
    same = lj.init_lstm(jax.random.key(0), 3, 8, num_layers=2)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(same)))
    assert lj.init_gru(jax.random.key(0), 3, np.uint8(4)).layers[0][0].w_hh.shape == (4, 12)
    with pytest.raises(ValueError, match=r"hidden_size must be an integer >= 1, got np.True_"):
        lj.init_rnn(jax.random.key(0), 3, np.bool_(True))
    with pytest.raises(ValueError, match=r"input_size must be an integer >= 1, got True"):
        lj.init_lstm(jax.random.key(0), True, 4)


def test_last_valid_rejects_a_zero_length():
    ys = jnp.arange(12.0).reshape(2, 3, 2)
    with pytest.raises(ValueError, match=r"seq_lengths must lie in 1\.\.3 .*got \[0, 3\]"):
        lj.training.last_valid(ys, jnp.array([0, 3]))
    with pytest.raises(ValueError, match=r"got \[4, 3\]"):
        lj.training.last_valid(ys, np.array([4, 3]))


def test_last_valid_gives_zeros_for_traced_lengths_outside_range():
    ys = jnp.arange(12.0).reshape(2, 3, 2) + 1.0
    got = jax.jit(lj.training.last_valid)(ys, jnp.array([0, 2]))
    np.testing.assert_array_equal(got, [[0.0, 0.0], [9.0, 10.0]])
    got = jax.jit(lj.training.last_valid)(ys, jnp.array([4, 3]))
    np.testing.assert_array_equal(got, [[0.0, 0.0], [11.0, 12.0]])
