"""Shared pieces of the example scripts: CLI flags, model = network + dense readout.

A model is a plain dict pytree ``{"rnn": LSTMParams | GRUParams | RNNParams,
"head": Dense}``; the network runs through ``lj.lstm`` / ``lj.gru`` /
``lj.rnn`` (``training.apply_network`` picks by the params type).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax

import lstm_jax as lj
from lstm_jax import checkpoint as ckpt
from lstm_jax import training as tr

INITS = {"lstm": lj.init_lstm, "gru": lj.init_gru, "rnn": lj.init_rnn}


def base_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=default_out, help="output directory")
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    parser.add_argument("--cell", choices=sorted(INITS), default="lstm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def init_model(cell: str, key, input_size: int, hidden: int, out_size: int, **kwargs) -> dict:
    k_rnn, k_head = jax.random.split(key)
    return {
        "rnn": INITS[cell](k_rnn, input_size, hidden, **kwargs),
        "head": tr.init_dense(k_head, hidden, out_size),
    }


def run_info() -> dict:
    return {
        "argv": sys.argv,
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def checkpoint_manager(out: str, save_every: int):
    return ckpt.make_manager(os.path.join(out, "checkpoints"), save_every=save_every, keep=2)


MIN_POINTS = 3  # a training curve with fewer logged points is not plotted


def log_every(num_steps: int, default: int = 50) -> int:
    """Log about every ``default`` steps, but at least ~20 times in a short run."""
    return max(1, min(default, num_steps // 20))


def plot_history(history: list[dict], path: str, panels: list[tuple[str, list[str], bool]], *,
                 title: str):
    """One subplot per ``(y-axis label, metric keys, log scale)`` panel, against the step.

    A panel none of whose curves has ``MIN_POINTS`` logged points is left out, and
    so is the figure when no panel is left (e.g. in a --quick run), with a printed
    note: a one-point curve says nothing. Returns the path written, or None.
    """
    from matplotlib.figure import Figure  # no pyplot: the backend stays as it was

    points = {key: [r for r in history if key in r] for _, keys, _ in panels for key in keys}
    kept = [p for p in panels if max(len(points[k]) for k in p[1]) >= MIN_POINTS]
    for ylabel, keys, _ in panels:
        if (ylabel, keys) not in [(p[0], p[1]) for p in kept]:
            print(f"{path}: left out {', '.join(keys)}: fewer than {MIN_POINTS} logged points")
    if not kept:
        print(f"skipped {path}: no curve has {MIN_POINTS} logged points (run more steps)")
        return None
    fig = Figure(figsize=(7, 3.2 * len(kept)))
    axes = fig.subplots(len(kept), 1, squeeze=False)[:, 0]
    for ax, (ylabel, keys, logy) in zip(axes, kept):
        values = []
        for key in keys:
            if points[key]:
                values += [r[key] for r in points[key]]
                ax.plot([r["step"] for r in points[key]], [r[key] for r in points[key]],
                        marker="." if len(points[key]) < 30 else None, label=key)
        if logy and min(values) > 0 and max(values) > 10 * min(values):  # log only if it spans
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def print_outputs(out: str) -> None:
    """Say where the run's files went."""
    names = sorted(os.listdir(out))
    print(f"outputs in {os.path.abspath(out)}: {', '.join(names)}")
