r"""Gradient-flow and gate diagnostics for LSTM, GRU and RNN networks.

Per-timestep state gradients
----------------------------
:func:`state_gradients` returns ``dL/dh_t`` (and ``dL/dc_t`` for an LSTM) for
every layer, direction, example and step: the total derivative of the loss
with respect to the state after step ``t``, through the output at ``t`` and
through every later step. Their norms over ``t`` (:func:`gradient_norms`)
show vanishing or exploding gradients: for a tanh RNN trained on a long-lag
task ``||dL/dh_t||`` decays geometrically as ``t`` moves away from the loss,
while an LSTM's cell state keeps it (Hochreiter & Schmidhuber 1997).

How: a zero *probe* ``p_t`` is added to the carry after every step,
``(h_t, c_t) <- (h_t + p^h_t, c_t + p^c_t)``, and ``dL/dp_t = dL/d(h_t, c_t)``
at ``p = 0``. The probes ride along the inputs: the wrapped cell's ``project``
passes them through beside the real input projection, its ``step`` calls the
original cell's ``step`` and adds them. The recurrence therefore still runs in
:func:`lstm_jax.scan.scan_layer` with the one implementation of the gate math
in :mod:`lstm_jax.cells`, including masking of ragged batches (probes past a
sequence's length get zero gradient) and reversed directions.

Gate traces
-----------
:func:`trace_gates` records the gate activations of every step (LSTM ``i, f,
g, o``; GRU ``r, z, n``; for an RNN the tanh state ``h``), and
:func:`saturation` gives the fraction of valid activations below 0.1 or above
0.9 (below -0.9 / above 0.9 for tanh units): saturated gates pass no gradient.
The carry itself is still computed by the cells' own step function; the gate
values are recomputed beside it from the same pre-activations.

Plots (:func:`plot_gradient_flow`, :func:`plot_gates`) write PNG files. They
draw on a ``matplotlib.figure.Figure`` without pyplot, so they neither change
the backend (a notebook's stays as it was) nor leave figures open.

Notation: L = layers, D = directions, B = batch, T = time, H = hidden, R = h size.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from lstm_jax import cells
from lstm_jax.params import GRUParams, LSTMParams, LSTMState, RNNParams
from lstm_jax.scan import scan_layer
from lstm_jax.sequence import valid_mask

__all__ = [
    "StateGradients",
    "state_gradients",
    "gradient_norms",
    "GateTrace",
    "trace_gates",
    "saturation",
    "plot_gradient_flow",
    "plot_gates",
]


def _kind(params: Any) -> str:
    if isinstance(params, LSTMParams):
        return "lstm"
    if isinstance(params, GRUParams):
        return "gru"
    if isinstance(params, RNNParams):
        return "rnn"
    raise TypeError(
        f"params must be LSTMParams, GRUParams or RNNParams, got {type(params).__name__}."
    )


def _base_cell(kind: str, nonlinearity: str) -> cells.Cell:
    if kind == "lstm":
        return cells.lstm_kind()
    if kind == "gru":
        return cells.gru_kind()
    return cells.rnn_kind(nonlinearity=nonlinearity)


def _state_sizes(kind: str, weights: Any) -> tuple[int, Optional[int]]:
    """(size of h, size of c or None) for one layer-direction's weights."""
    if kind == "lstm":
        return weights.w_hh.shape[0], weights.w_hh.shape[1] // 4
    return weights.w_hh.shape[0], None


def _zero_carry(kind: str, weights: Any, batch: int, dtype) -> Any:
    r, h = _state_sizes(kind, weights)
    if kind == "lstm":
        return (jnp.zeros((batch, r), dtype), jnp.zeros((batch, h), dtype))
    return jnp.zeros((batch, r), dtype)


def _initial_carries(kind: str, params: Any, batch: int, initial_state: Any) -> list:
    layers = params.layers
    flat = [w for layer in layers for w in layer]
    dtype = flat[0].w_hh.dtype
    if initial_state is None:
        return [_zero_carry(kind, w, batch, dtype) for w in flat]
    if kind == "lstm":
        return [(initial_state.h[k], initial_state.c[k]) for k in range(len(flat))]
    return [initial_state[k] for k in range(len(flat))]


def _run_stack(
    params: Any,
    xs: Array,
    make_cell: Callable[[int], cells.Cell],
    carries: list,
    layer_extra: Callable[[int, Array], Array],
    split_output: Callable[[int, Array], tuple[Array, Any]],
    seq_lengths: Optional[Array],
) -> tuple[Array, list, list]:
    """Run every layer and direction through ``scan_layer`` with wrapped cells.

    ``make_cell(k)`` gives the cell of layer-direction ``k``; ``layer_extra(k,
    layer_input)`` returns extra input features appended to that layer's input
    (probes) or None; ``split_output(k, ys)`` splits the scan outputs into the
    real ``h`` outputs and a record. Returns the top outputs, the final carries
    and the records.
    """
    num_directions = len(params.layers[0])
    finals, records = [], []
    layer_input = xs  # [B, T, F]
    for layer, layer_weights in enumerate(params.layers):
        outputs = []
        for direction, weights in enumerate(layer_weights):
            k = layer * num_directions + direction
            inputs = layer_input
            extra = layer_extra(k, layer_input)
            if extra is not None:
                inputs = jnp.concatenate([layer_input, extra], axis=-1)
            ys, carry = scan_layer(
                make_cell(k), weights, inputs, carries[k],
                seq_lengths=seq_lengths, reverse=direction == 1,
            )  # fmt: skip
            ys, record = split_output(k, ys)
            outputs.append(ys)
            finals.append(carry)
            records.append(record)
        layer_input = outputs[0] if num_directions == 1 else jnp.concatenate(outputs, axis=-1)
    return layer_input, finals, records


def _final_state(kind: str, finals: list) -> Any:
    if kind == "lstm":
        return LSTMState(jnp.stack([f[0] for f in finals]), jnp.stack([f[1] for f in finals]))
    return jnp.stack(finals)


# --------------------------------------------------------- state gradients


class StateGradients(NamedTuple):
    """Per-step gradients of a loss with respect to the recurrent state."""

    h: Array  # (L*D, B, T, R) dL/dh_t, t in input order for both directions
    c: Optional[Array]  # (L*D, B, T, H) dL/dc_t for an LSTM, else None


def _probed_cell(cell: cells.Cell, kind: str, r: int) -> cells.Cell:
    """``cell`` whose inputs carry zero probes that are added to the new carry."""

    def project(w, xa):
        num_in = w.w_ih.shape[0]
        return jnp.concatenate([cell.project(w, xa[..., :num_in]), xa[..., num_in:]], axis=-1)

    def step(w, carry, ga, mask):
        size = ga.shape[-1] - (r + (carry[1].shape[-1] if kind == "lstm" else 0))
        new = cell.step(w, carry, ga[:size], mask)
        probe = ga[size:]
        if kind == "lstm":
            return (new[0] + probe[:r], new[1] + probe[r:])
        return new + probe

    return cells.Cell(project=project, step=step, output=cell.output)


def state_gradients(
    loss_fn: Callable[[Array, Any], Array],
    params: Any,
    xs: Array,
    *,
    seq_lengths: Optional[Array] = None,
    initial_state: Any = None,
    nonlinearity: str = "tanh",
) -> tuple[Array, StateGradients]:
    """``dL/dh_t`` (and ``dL/dc_t``) for every layer, direction, example and step.

    Args:
      loss_fn: ``loss_fn(ys, state) -> scalar``, where ``ys: (B, T, D*R)`` are
        the top layer's outputs and ``state`` the final state, exactly as
        returned by ``lj.lstm`` / ``lj.gru`` / ``lj.rnn``. Close over readout
        parameters and targets.
      params: ``LSTMParams``, ``GRUParams`` or ``RNNParams`` (any depth, uni- or
        bidirectional).
      xs: ``(B, T, I)`` batch-major inputs.
      seq_lengths: optional ``(B,)`` lengths for ragged batches.
      initial_state: optional initial state in the networks' layout.
      nonlinearity: for RNN params.

    Returns:
      ``(loss, StateGradients)``.

    >>> import lstm_jax as lj
    >>> p = lj.init_lstm(jax.random.key(0), 2, 4)
    >>> loss, g = state_gradients(lambda ys, s: jnp.sum(ys[:, -1]), p, jnp.ones((3, 6, 2)))
    >>> g.h.shape, g.c.shape
    ((1, 3, 6, 4), (1, 3, 6, 4))
    """
    kind = _kind(params)
    if xs.ndim != 3:
        raise ValueError(f"xs must be batch-major (B, T, I), got shape {tuple(xs.shape)}.")
    batch, num_steps = xs.shape[0], xs.shape[1]
    flat = [w for layer in params.layers for w in layer]
    dtype = flat[0].w_hh.dtype
    sizes = [_state_sizes(kind, w) for w in flat]
    base = _base_cell(kind, nonlinearity)
    carries = _initial_carries(kind, params, batch, initial_state)
    if seq_lengths is not None:
        seq_lengths = jnp.asarray(seq_lengths, jnp.int32)

    def run(probes):
        def make_cell(k):
            return _probed_cell(base, kind, sizes[k][0])

        def layer_extra(k, layer_input):
            del layer_input
            return probes[k]

        ys, finals, _ = _run_stack(
            params, xs, make_cell, carries, layer_extra, lambda k, y: (y, None), seq_lengths
        )
        return loss_fn(ys, _final_state(kind, finals))

    probes = [
        jnp.zeros((batch, num_steps, r + (h or 0)), dtype) for r, h in sizes
    ]  # [B, T, R (+H)] per layer-direction
    loss, grads = jax.value_and_grad(run)(probes)
    dh = jnp.stack([g[..., :r] for g, (r, _) in zip(grads, sizes)])
    dc = jnp.stack([g[..., r:] for g, (r, _) in zip(grads, sizes)]) if kind == "lstm" else None
    return loss, StateGradients(dh, dc)


def gradient_norms(
    grads: StateGradients, seq_lengths: Optional[Array] = None
) -> dict[str, np.ndarray]:
    """``||dL/dh_t||`` (and ``||dL/dc_t||``) per layer-direction and step.

    The L2 norm over features of each example's gradient, averaged over the
    examples whose sequence covers step ``t``.

    Returns:
      ``{"h": (L*D, T), "c": (L*D, T)}`` numpy arrays (``"c"`` for LSTMs only).
    """
    num_steps = grads.h.shape[2]
    mask = valid_mask(num_steps, None if seq_lengths is None else jnp.asarray(seq_lengths))
    out = {}
    for name, g in (("h", grads.h), ("c", grads.c)):
        if g is None:
            continue
        norms = jnp.sqrt(jnp.sum(jnp.square(g), axis=-1))  # [L*D, B, T]
        if mask is None:
            out[name] = np.asarray(jnp.mean(norms, axis=1))
        else:
            weights = jnp.transpose(mask).astype(norms.dtype)  # [B, T]
            total = jnp.sum(norms * weights[None], axis=1)
            out[name] = np.asarray(total / jnp.maximum(jnp.sum(weights, axis=0), 1.0)[None])
    return out


# -------------------------------------------------------------- gate traces


class GateTrace(NamedTuple):
    """Gate activations of every layer-direction at every step."""

    gates: dict  # name -> (L*D, B, T, H) activations, t in input order
    ranges: dict  # name -> (low, high) saturation thresholds
    seq_lengths: Optional[Array]  # (B,) or None


_SIGMOID = (0.1, 0.9)
_TANH = (-0.9, 0.9)
_GATE_NAMES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn": ("h",)}
_GATE_RANGES = {"i": _SIGMOID, "f": _SIGMOID, "o": _SIGMOID, "g": _TANH,
                "r": _SIGMOID, "z": _SIGMOID, "n": _TANH, "h": _TANH}  # fmt: skip


def _lstm_gates(w, carry, gx):
    h, c = carry
    acts, _ = cells.lstm_gates(w, gx + cells.lstm_recurrent_projection(w, h), c)
    return cells.lstm_step(w, (h, c), gx), jnp.concatenate(acts, axis=-1)


def _gru_gates(w, h, gx):
    return cells.gru_step(w, h, gx), jnp.concatenate(cells.gru_gates(w, h, gx), axis=-1)


def _tracing_cell(kind: str, nonlinearity: str) -> cells.Cell:
    """A cell whose carry is ``(state, activations)`` and whose output is both."""
    base = _base_cell(kind, nonlinearity)

    def step(w, carry, gx, mask):
        del mask
        state, _ = carry
        if kind == "lstm":
            return _lstm_gates(w, state, gx)
        if kind == "gru":
            return _gru_gates(w, state, gx)
        new = base.step(w, state, gx, None)
        return new, new

    def output(carry):
        state, acts = carry
        return jnp.concatenate([base.output(state), acts], axis=-1)

    return cells.Cell(project=base.project, step=step, output=output)


def trace_gates(
    params: Any,
    xs: Array,
    *,
    seq_lengths: Optional[Array] = None,
    initial_state: Any = None,
    nonlinearity: str = "tanh",
) -> tuple[Array, GateTrace]:
    """Run the network and record its gate activations at every step.

    Args:
      params: ``LSTMParams`` (gates i, f, g, o; peepholes and layer norm
        included), ``GRUParams`` (r, z, n) or ``RNNParams`` (the tanh state h).
      xs: ``(B, T, I)`` inputs.
      seq_lengths: optional ``(B,)`` lengths; activations past them are zero
        and excluded from :func:`saturation`.
      initial_state: optional initial state in the networks' layout.
      nonlinearity: for RNN params.

    Returns:
      ``(ys, trace)``: the network's outputs (equal to ``lj.lstm`` etc.) and a
      :class:`GateTrace`.

    >>> import lstm_jax as lj
    >>> ys, tr = trace_gates(lj.init_lstm(jax.random.key(0), 2, 4), jnp.ones((3, 5, 2)))
    >>> tr.gates["f"].shape
    (1, 3, 5, 4)
    """
    kind = _kind(params)
    if xs.ndim != 3:
        raise ValueError(f"xs must be batch-major (B, T, I), got shape {tuple(xs.shape)}.")
    batch = xs.shape[0]
    flat = [w for layer in params.layers for w in layer]
    sizes = [_state_sizes(kind, w) for w in flat]
    names = _GATE_NAMES[kind]
    cell = _tracing_cell(kind, nonlinearity)
    if seq_lengths is not None:
        seq_lengths = jnp.asarray(seq_lengths, jnp.int32)
    carries = []
    for k, state in enumerate(_initial_carries(kind, params, batch, initial_state)):
        hidden = sizes[k][1] if kind == "lstm" else sizes[k][0]
        carries.append((state, jnp.zeros((batch, len(names) * hidden), flat[k].w_hh.dtype)))

    def split_output(k, ys):
        r = sizes[k][0]
        return ys[..., :r], ys[..., r:]

    ys, _, records = _run_stack(
        params, xs, lambda k: cell, carries, lambda k, x: None, split_output, seq_lengths
    )
    gates = {}
    for index, name in enumerate(names):
        per_layer = []
        for k, record in enumerate(records):
            hidden = record.shape[-1] // len(names)
            per_layer.append(record[..., index * hidden : (index + 1) * hidden])
        gates[name] = jnp.stack(per_layer)  # [L*D, B, T, H]
    ranges = {name: _GATE_RANGES[name] for name in names}
    return ys, GateTrace(gates, ranges, seq_lengths)


def saturation(trace: GateTrace) -> dict[str, dict[str, float]]:
    """Fraction of valid gate activations below / above the saturation thresholds.

    Returns:
      ``{gate: {"low": ..., "high": ..., "saturated": low + high, "mean": ...}}``
      over all layers, examples, valid steps and units. Thresholds are 0.1 and
      0.9 for sigmoid gates, -0.9 and 0.9 for tanh activations.
    """
    out = {}
    for name, acts in trace.gates.items():
        acts = np.asarray(acts)  # [L*D, B, T, H]
        if trace.seq_lengths is None:
            valid = np.ones(acts.shape[1:3], bool)
        else:
            lengths = np.asarray(trace.seq_lengths)
            valid = np.arange(acts.shape[2])[None, :] < lengths[:, None]  # [B, T]
        values = acts[:, valid]  # [L*D, N, H]
        low, high = trace.ranges[name]
        frac_low = float(np.mean(values < low))
        frac_high = float(np.mean(values > high))
        out[name] = {
            "low": frac_low,
            "high": frac_high,
            "saturated": frac_low + frac_high,
            "mean": float(np.mean(values)),
        }
    return out


# -------------------------------------------------------------------- plots


def _figure(**kwargs):
    from matplotlib.figure import Figure  # imported here: matplotlib is optional

    return Figure(**kwargs)


def plot_gradient_flow(
    curves: Mapping[str, Union[Array, np.ndarray, Sequence[float]]],
    path: Union[str, os.PathLike],
    *,
    title: str = "Gradient flow over time",
    ylabel: Optional[str] = None,
) -> str:
    """Plot gradient-norm curves against ``t`` on a log scale and save a PNG.

    Args:
      curves: label -> ``(T,)`` norms, e.g. ``{"LSTM ||dL/dh_t||": norms["h"][0], ...}``.
        Zeros (e.g. ``dL/dc`` at the last step, or underflow) are left out.
      path: output ``.png`` path.
      title: the plot's title.
      ylabel: the y-axis label; by default it names the norms the labels
        mention (``||dL/dh_t||``, ``||dL/dc_t||``).

    Returns:
      The path written.
    """
    if ylabel is None:
        names = [n for n in ("||dL/dh_t||", "||dL/dc_t||") if any(n in k for k in curves)]
        ylabel = " ".join(["gradient norm", ", ".join(names), "(log scale)"]).replace("  ", " ")
    fig = _figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for label, values in curves.items():
        values = np.asarray(values, np.float64)
        positive = np.where(values > 0, values, np.nan)
        ax.semilogy(np.arange(len(values)), positive, label=label)
    ax.set_xlabel("time step t")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return os.fspath(path)


def plot_gates(
    trace: GateTrace,
    path: Union[str, os.PathLike],
    *,
    layer: int = 0,
    example: int = 0,
    title: Optional[str] = None,
) -> str:
    """For each gate: one example's activations (units x time) and the batch mean over time.

    Returns:
      The path written.
    """
    names = list(trace.gates)
    fig = _figure(figsize=(11, 2.4 * len(names)))
    axes = fig.subplots(len(names), 2, squeeze=False)
    stats = saturation(trace)
    lengths = None if trace.seq_lengths is None else np.asarray(trace.seq_lengths)
    for row, name in enumerate(names):
        acts = np.asarray(trace.gates[name][layer])  # [B, T, H]
        length = acts.shape[1] if lengths is None else int(lengths[example])
        low, high = trace.ranges[name]
        vmin, vmax = (0.0, 1.0) if low >= 0 else (-1.0, 1.0)
        image = axes[row, 0].imshow(
            acts[example, :length].T, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax
        )
        axes[row, 0].set_ylabel(f"{name}: unit")
        fig.colorbar(image, ax=axes[row, 0])
        if lengths is None:
            mean = acts.mean(axis=(0, 2))
        else:
            valid = (np.arange(acts.shape[1])[None, :] < lengths[:, None]).astype(np.float64)
            mean = (acts.mean(axis=2) * valid).sum(0) / np.maximum(valid.sum(0), 1.0)
        axes[row, 1].plot(mean)
        axes[row, 1].axhline(low, color="gray", lw=0.5, ls="--")
        axes[row, 1].axhline(high, color="gray", lw=0.5, ls="--")
        axes[row, 1].set_ylim(vmin, vmax)
        axes[row, 1].set_ylabel(f"mean {name}")
        s = stats[name]
        axes[row, 1].set_title(
            f"{name}: mean over batch and units; saturated {100 * s['saturated']:.1f}% "
            f"(low {100 * s['low']:.1f}%, high {100 * s['high']:.1f}%)",
            fontsize=9,
        )
    axes[-1, 0].set_xlabel("time step t")
    axes[-1, 1].set_xlabel("time step t")
    fig.suptitle(title or f"Gate activations, layer-direction {layer}, example {example}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    return os.fspath(path)
