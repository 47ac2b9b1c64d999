"""Yearly sunspot numbers (statsmodels, 1700-2008): one-step-ahead forecasts.

The network reads a window of the previous --window years (square-root
transformed and standardised) and is trained to predict the next year at
every step of the window (per-step regression). Held-out years (--test-from
onward, default 1950-2008) are forecast one step ahead from the true
preceding window and compared with three baselines: persistence (next year =
this year), seasonal naive (next year = the year one 11-year cycle before) and
the classical model, autoregressions AR(9) and AR(2) fitted by statsmodels on
the training years (raw numbers). Measured (full run, 1950-2008): the LSTM
ensemble RMSE 19.5, AR(9) 18.7, AR(2) 22.2: AR(9) wins on RMSE.

    python examples/sunspots.py --out runs/sunspots            # full run
    python examples/sunspots.py --quick --out /tmp/sunspots    # smoke test

Writes metrics.json (RMSE/MAE of the model and the baselines), forecast.png,
training.png, metrics.jsonl/.csv and checkpoints/.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _common  # noqa: E402
from lstm_jax import data, training as tr  # noqa: E402

CYCLE = 11  # years, the seasonal-naive lag
AR_ORDERS = (9, 2)


def parse_args(argv=None):
    parser = _common.base_parser(__doc__.splitlines()[0], "runs/sunspots")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--window", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--test-from", type=int, default=1950, help="first held-out year")
    parser.add_argument("--ensemble", type=int, default=5,
                        help="average the forecasts of this many independently seeded models")
    args = parser.parse_args(argv)
    if args.quick:
        args.ensemble = 1
    args.steps = args.steps or (60 if args.quick else 2000)
    return args


def errors(pred: np.ndarray, true: np.ndarray) -> dict:
    diff = np.asarray(pred, np.float64) - np.asarray(true, np.float64)
    return {"rmse": float(np.sqrt(np.mean(diff**2))), "mae": float(np.mean(np.abs(diff)))}


def autoregression(values: np.ndarray, first_test: int, lags: int) -> np.ndarray:
    """One-step forecasts of ``values[first_test:]`` by an AR(lags) fitted on the years before."""
    from statsmodels.tsa.ar_model import AutoReg

    values = np.asarray(values, np.float64)
    coef = AutoReg(values[:first_test], lags=lags).fit().params  # [const, phi_1..phi_lags]
    past = np.stack([values[t - lags : t][::-1] for t in range(first_test, len(values))])
    return coef[0] + past @ coef[1:]


def train_member(args, seed: int, train_x, train_y, test_x, out: str):
    key = jax.random.key(seed)
    params = _common.init_model(args.cell, key, 1, args.hidden, 1)

    def forward(params, x):
        ys, _ = tr.apply_network(params["rnn"], x)
        return tr.dense(params["head"], ys)  # [B, W, 1]

    def loss_fn(params, batch, key):
        del key
        return tr.regression_loss(forward(params, batch["x"]), batch["y"]), {}

    optimizer = tr.make_optimizer(args.lr, clip_norm=1.0, warmup_steps=50,
                                  decay_steps=args.steps, weight_decay=args.weight_decay)
    state = tr.init_train_state(params, optimizer, jax.random.fold_in(key, 1))
    writer = tr.MetricsWriter(out, name=f"metrics_seed{seed}")
    manager = _common.checkpoint_manager(os.path.join(out, f"seed{seed}"),
                                         save_every=max(args.steps // 2, 1))
    get_batch = data.make_batch_fn({"x": train_x, "y": train_y}, args.batch, seed=seed)
    state, history = tr.fit(state, tr.make_train_step(loss_fn, optimizer), get_batch,
                            num_steps=args.steps, log_every=_common.log_every(args.steps),
                            writer=writer,
                            checkpoint_manager=manager, progress=not args.no_progress,
                            desc=f"sunspots seed {seed}")  # fmt: skip
    pred = jax.jit(forward)(state.params, jnp.asarray(test_x))[:, -1, 0]  # last step = next year
    return np.asarray(pred), history, state


def run(args) -> dict:
    os.makedirs(args.out, exist_ok=True)
    years, values = data.load_sunspots()
    transformed = np.sqrt(values)
    first_test = int(np.searchsorted(years, args.test_from))
    mean, std = transformed[:first_test].mean(), transformed[:first_test].std()
    series = (transformed - mean) / std
    # training windows end before the first held-out year
    train_x, train_y = data.make_windows(series[:first_test], args.window)
    # one test window per held-out year: the previous `window` years
    targets = np.arange(first_test, len(series))
    test_x = np.stack([series[t - args.window : t] for t in targets])[..., None]
    true = values[targets]

    t0 = time.perf_counter()
    preds, histories = [], []
    for member in range(args.ensemble):
        pred, history, state = train_member(args, args.seed + member, train_x, train_y, test_x,
                                            args.out)  # fmt: skip
        preds.append(np.square(np.maximum(pred * std + mean, 0.0)))  # back to sunspot numbers
        histories.append(history)
    wall = time.perf_counter() - t0
    forecast = np.mean(preds, axis=0)
    persistence = values[targets - 1]
    seasonal = values[targets - CYCLE]
    autoregressive = {f"ar{p}": autoregression(values, first_test, p) for p in AR_ORDERS}
    result = {
        "task": "sunspots",
        "cell": args.cell,
        "test_years": [int(years[targets[0]]), int(years[targets[-1]])],
        "train_windows": int(len(train_x)),
        "params_per_model": tr.count_params(state.params),
        "ensemble": args.ensemble,
        "steps": args.steps,
        "model": errors(forecast, true),
        "model_members": [errors(p, true) for p in preds],
        "persistence": errors(persistence, true),
        "seasonal_naive_11y": errors(seasonal, true),
        **{name: errors(pred, true) for name, pred in autoregressive.items()},
        "train_wall_s": wall,
        "run": _common.run_info(),
    }
    baselines = ["persistence", "seasonal_naive_11y", *autoregressive]
    result["best_rmse"] = min(["model", *baselines], key=lambda name: result[name]["rmse"])
    result["beats_all_baselines_rmse"] = result["best_rmse"] == "model"
    tr.write_json(os.path.join(args.out, "metrics.json"), result)
    tr.write_json(os.path.join(args.out, "forecast.json"), {
        "years": years[targets], "true": true, "model": forecast,
        "persistence": persistence, "seasonal_naive_11y": seasonal,
        **autoregressive})  # fmt: skip

    from matplotlib.figure import Figure  # no pyplot: the backend stays as it was

    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot()
    ax.plot(years, values, color="0.7", lw=1, label="observed (all years)")
    ax.plot(years[targets], true, color="k", lw=1.5, label="observed (held out)")
    curves = [(args.cell.upper() + (f" (ensemble of {args.ensemble})" if args.ensemble > 1 else ""),
               "model", forecast), ("persistence", "persistence", persistence),
              ("seasonal naive (11 y)", "seasonal_naive_11y", seasonal),
              *((f"AR({p}), statsmodels", f"ar{p}", autoregressive[f"ar{p}"]) for p in AR_ORDERS)]
    for label, key, pred in curves:
        ax.plot(years[targets], pred, lw=1.2,
                label=f"{label}: RMSE {result[key]['rmse']:.1f}, MAE {result[key]['mae']:.1f}")
    ax.set_xlim(years[0] if args.quick else 1900, years[-1] + 1)
    ax.set_xlabel("year")
    ax.set_ylabel("sunspot number")
    ax.set_title("One-step-ahead forecasts of held-out years")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "forecast.png"), dpi=100)
    _common.plot_history(histories[0], os.path.join(args.out, "training.png"),
                         [("MSE, standardised sqrt scale", ["loss"], True)],
                         title=f"sunspots, {args.cell}, seed {args.seed}: training loss")
    print(f"sunspots {args.cell}, 1950-2008, one step ahead: " + " | ".join(
        f"{name} RMSE {result[name]['rmse']:.2f} MAE {result[name]['mae']:.2f}"
        for name in ["model", *baselines]))  # fmt: skip
    print(f"lowest RMSE: {result['best_rmse']}")
    _common.print_outputs(args.out)
    return result


if __name__ == "__main__":
    run(parse_args())
