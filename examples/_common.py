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


def plot_history(history: list[dict], path: str, keys: list[str], *, title: str, logy=False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        rows = [r for r in history if key in r]
        if rows:
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
