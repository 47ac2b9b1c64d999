"""A naive per-step NumPy reference, used only by tests.

Written from the papers' equations, independently of ``lstm_jax.cells``: one
example, one step, float64, explicit loops over time and layers.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def layer_norm(x, eps=1e-5):
    return (x - x.mean()) / np.sqrt(x.var() + eps)


def lstm_step(w, h, c, x):
    """w: LSTMWeights as numpy; one example."""
    hidden = c.shape[0]
    wx = x @ np.asarray(w.w_ih)
    wh = h @ np.asarray(w.w_hh)
    if w.ln is not None:
        wx = layer_norm(wx) * np.asarray(w.ln.ih_scale)
        wh = layer_norm(wh) * np.asarray(w.ln.hh_scale)
    z = wx + wh + np.asarray(w.b)
    zi, zf, zg, zo = (z[k * hidden : (k + 1) * hidden] for k in range(4))
    if w.w_peep is not None:
        p = np.asarray(w.w_peep)
        zi, zf = zi + p[0] * c, zf + p[1] * c
    c_new = sigmoid(zf) * c + sigmoid(zi) * np.tanh(zg)
    if w.w_peep is not None:
        zo = zo + np.asarray(w.w_peep)[2] * c_new
    c_out = c_new
    if w.ln is not None:
        c_out = layer_norm(c_new) * np.asarray(w.ln.c_scale) + np.asarray(w.ln.c_offset)
    h_new = sigmoid(zo) * np.tanh(c_out)
    if w.w_hr is not None:
        h_new = h_new @ np.asarray(w.w_hr)
    return h_new, c_new


def gru_step(w, h, x):
    hidden = h.shape[0]
    gx = x @ np.asarray(w.w_ih) + np.asarray(w.b_ih)
    gh = h @ np.asarray(w.w_hh) + np.asarray(w.b_hh)
    r = sigmoid(gx[:hidden] + gh[:hidden])
    z = sigmoid(gx[hidden : 2 * hidden] + gh[hidden : 2 * hidden])
    n = np.tanh(gx[2 * hidden :] + r * gh[2 * hidden :])
    return (1 - z) * n + z * h


def rnn_step(w, h, x):
    return np.tanh(x @ np.asarray(w.w_ih) + h @ np.asarray(w.w_hh) + np.asarray(w.b))


def run_lstm(params, xs, h0=None, c0=None):
    """xs: (T, I) one sequence. Returns ys (T, D*R), h (L*D, R), c (L*D, H)."""
    layer_input = np.asarray(xs, np.float64)
    hs, cs = [], []
    k = 0
    for layer in params.layers:
        outs = []
        for d, w in enumerate(layer):
            hidden = w.w_hh.shape[1] // 4
            h = np.zeros(w.w_hh.shape[0]) if h0 is None else np.asarray(h0[k], np.float64)
            c = np.zeros(hidden) if c0 is None else np.asarray(c0[k], np.float64)
            order = range(len(layer_input))
            ys = [None] * len(layer_input)
            for t in reversed(order) if d else order:
                h, c = lstm_step(w, h, c, layer_input[t])
                ys[t] = h
            outs.append(np.stack(ys))
            hs.append(h)
            cs.append(c)
            k += 1
        layer_input = np.concatenate(outs, axis=-1)
    return layer_input, np.stack(hs), np.stack(cs)
