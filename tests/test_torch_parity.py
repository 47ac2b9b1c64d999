"""Equality with PyTorch nn.LSTM / nn.GRU / nn.RNN on converted weights.

Outputs, final states, and gradients w.r.t. inputs, initial states and every
weight, for ragged batches (pack_padded_sequence), several layers, both
directions and projections; float32 at ~1e-5 and float64 at ~1e-10 (float64
leaves no room for a wrong gate order to pass).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import lstm_jax as lj  # noqa: E402

BATCH, TIME, INPUT, HIDDEN = 4, 7, 5, 6
LENGTHS = [7, 3, 1, 5]

CASES = [
    # kind, num_layers, bidirectional, proj_size, ragged, initial_state
    ("lstm", 1, False, 0, False, False),
    ("lstm", 1, True, 0, True, True),
    ("lstm", 2, True, 0, True, False),
    ("lstm", 3, False, 0, True, True),
    ("lstm", 2, True, 3, True, True),
    ("gru", 1, False, 0, False, True),
    ("gru", 2, True, 0, True, True),
    ("gru", 3, True, 0, True, False),
    ("rnn", 2, True, 0, True, True),
]

TORCH_MODULES = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def _torch_run(module, x, lengths, state, kind):
    """Torch forward on a padded batch; returns (ys, state) with padding zero."""
    if lengths is not None:
        x_in = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.tensor(lengths), batch_first=True, enforce_sorted=False
        )
    else:
        x_in = x
    out, final = module(x_in, state)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=TIME)
    return out, final


def _ours_grads_as_torch(grads, kind):
    """Map gradients of our params to torch names (our biases are b_ih + b_hh)."""
    out = {}
    for layer, directions in enumerate(grads.layers):
        for d, g in enumerate(directions):
            tag = f"_l{layer}" + ("_reverse" if d else "")
            out["weight_ih" + tag] = np.asarray(g.w_ih).T
            out["weight_hh" + tag] = np.asarray(g.w_hh).T
            if kind == "gru":
                out["bias_ih" + tag] = np.asarray(g.b_ih)
                out["bias_hh" + tag] = np.asarray(g.b_hh)
            else:
                out["bias_ih" + tag] = np.asarray(g.b)
                out["bias_hh" + tag] = np.asarray(g.b)
            if kind == "lstm" and g.w_hr is not None:
                out["weight_hr" + tag] = np.asarray(g.w_hr).T
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind,num_layers,bidirectional,proj_size,ragged,with_state", CASES)
def test_matches_torch(kind, num_layers, bidirectional, proj_size, ragged, with_state, dtype):
    torch_dtype = getattr(torch, dtype)
    atol = 2e-5 if dtype == "float32" else 1e-10
    torch.manual_seed(num_layers * 10 + int(bidirectional) + proj_size)
    extra = {"proj_size": proj_size} if proj_size else {}
    module = getattr(torch.nn, TORCH_MODULES[kind])(
        INPUT, HIDDEN, num_layers=num_layers, bidirectional=bidirectional, batch_first=True, **extra
    ).to(torch_dtype)
    num_states = num_layers * (2 if bidirectional else 1)
    out_size = proj_size or HIDDEN
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((BATCH, TIME, INPUT)).astype(dtype)
    h0_np = rng.standard_normal((num_states, BATCH, out_size)).astype(dtype)
    c0_np = rng.standard_normal((num_states, BATCH, HIDDEN)).astype(dtype)
    lengths = LENGTHS if ragged else None
    ys_w = rng.standard_normal((BATCH, TIME, out_size * (2 if bidirectional else 1))).astype(dtype)
    h_w = rng.standard_normal((num_states, BATCH, out_size)).astype(dtype)
    c_w = rng.standard_normal((num_states, BATCH, HIDDEN)).astype(dtype)

    # PyTorch
    x_t = torch.tensor(x_np, requires_grad=True)
    h0_t = torch.tensor(h0_np, requires_grad=True)
    c0_t = torch.tensor(c0_np, requires_grad=True)
    state_t = None
    if with_state:
        state_t = (h0_t, c0_t) if kind == "lstm" else h0_t
    ys_t, final_t = _torch_run(module, x_t, lengths, state_t, kind)
    h_t = final_t[0] if kind == "lstm" else final_t
    loss_t = (ys_t * torch.tensor(ys_w)).sum() + (h_t * torch.tensor(h_w)).sum()
    if kind == "lstm":
        loss_t = loss_t + (final_t[1] * torch.tensor(c_w)).sum()
    loss_t.backward()

    # lstm_jax
    with jax.enable_x64(dtype == "float64"):
        params = lj.from_torch(module.state_dict())
        fn = getattr(lj, kind)
        seq_lengths = None if lengths is None else jnp.asarray(lengths)

        def loss(params, xs, h0, c0):
            initial = None
            if with_state:
                initial = lj.LSTMState(h0, c0) if kind == "lstm" else h0
            ys, final = fn(params, xs, initial_state=initial, seq_lengths=seq_lengths)
            h = final.h if kind == "lstm" else final
            value = jnp.sum(ys * ys_w) + jnp.sum(h * h_w)
            if kind == "lstm":
                value = value + jnp.sum(final.c * c_w)
            return value, (ys, final)

        grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
        (g_params, g_x, g_h0, g_c0), (ys, final) = grad_fn(
            params, jnp.asarray(x_np), jnp.asarray(h0_np), jnp.asarray(c0_np)
        )
        assert ys.dtype == jnp.dtype(dtype)

    np.testing.assert_allclose(ys, ys_t.detach().numpy(), atol=atol, rtol=0)
    if lengths is not None:
        for b, n in enumerate(lengths):
            assert np.all(np.asarray(ys)[b, n:] == 0.0)
    h_ours = final.h if kind == "lstm" else final
    np.testing.assert_allclose(h_ours, h_t.detach().numpy(), atol=atol, rtol=0)
    if kind == "lstm":
        np.testing.assert_allclose(final.c, final_t[1].detach().numpy(), atol=atol, rtol=0)
    np.testing.assert_allclose(g_x, x_t.grad.numpy(), atol=atol * 5, rtol=0)
    if with_state:
        np.testing.assert_allclose(g_h0, h0_t.grad.numpy(), atol=atol * 5, rtol=0)
        if kind == "lstm":
            np.testing.assert_allclose(g_c0, c0_t.grad.numpy(), atol=atol * 5, rtol=0)
    ours = _ours_grads_as_torch(g_params, kind)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(ours[name], p.grad.numpy(), atol=atol * 10, rtol=0, err_msg=name)


def test_unbatched_matches_torch():
    torch.manual_seed(1)
    module = torch.nn.LSTM(INPUT, HIDDEN, num_layers=2, bidirectional=True)
    x = torch.randn(TIME, INPUT)
    ys_t, (h_t, c_t) = module(x)
    ys, state = lj.lstm(lj.from_torch(module.state_dict()), jnp.asarray(x.numpy()))
    assert ys.shape == (TIME, 2 * HIDDEN) and state.h.shape == (4, HIDDEN)
    np.testing.assert_allclose(ys, ys_t.detach().numpy(), atol=2e-5)
    np.testing.assert_allclose(state.h, h_t.detach().numpy(), atol=2e-5)
    np.testing.assert_allclose(state.c, c_t.detach().numpy(), atol=2e-5)


def test_time_major_matches_torch():
    torch.manual_seed(2)
    module = torch.nn.GRU(INPUT, HIDDEN)  # PyTorch's default is time-major
    x = torch.randn(TIME, BATCH, INPUT)
    ys_t, h_t = module(x)
    ys, h = lj.gru(lj.from_torch(module.state_dict()), jnp.asarray(x.numpy()), time_major=True)
    np.testing.assert_allclose(ys, ys_t.detach().numpy(), atol=2e-5)
    np.testing.assert_allclose(h, h_t.detach().numpy(), atol=2e-5)


def test_relu_rnn_matches_torch():
    torch.manual_seed(3)
    module = torch.nn.RNN(INPUT, HIDDEN, nonlinearity="relu", batch_first=True)
    x = torch.randn(BATCH, TIME, INPUT)
    ys_t, h_t = module(x)
    ys, h = lj.rnn(lj.from_torch(module.state_dict()), jnp.asarray(x.numpy()), nonlinearity="relu")
    np.testing.assert_allclose(ys, ys_t.detach().numpy(), atol=2e-5)
    np.testing.assert_allclose(h, h_t.detach().numpy(), atol=2e-5)


def test_from_torch_accepts_bias_free_modules():
    module = torch.nn.LSTM(INPUT, HIDDEN, bias=False, batch_first=True)
    x = torch.randn(BATCH, TIME, INPUT)
    ys_t, _ = module(x)
    params = lj.from_torch(module.state_dict())
    np.testing.assert_array_equal(params.layers[0][0].b, np.zeros(4 * HIDDEN, np.float32))
    ys, _ = lj.lstm(params, jnp.asarray(x.numpy()))
    np.testing.assert_allclose(ys, ys_t.detach().numpy(), atol=2e-5)
