"""Handwritten digits (scikit-learn, 8x8) read row by row: 8 steps of 8 features.

    python examples/digits.py --out runs/digits            # full run
    python examples/digits.py --quick --out /tmp/digits    # smoke test

Writes to --out: metrics.json (test accuracy, parameters, wall time),
metrics.jsonl/.csv (training curve), training.png, gradient_flow.png,
gates.png and checkpoints/ (Orbax).
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
from lstm_jax import data, diagnostics as dg, training as tr  # noqa: E402


def parse_args(argv=None):
    parser = _common.base_parser(__doc__.splitlines()[0], "runs/digits")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--pool", choices=("last", "mean"), default="last",
                        help="classify from the last step or the mean over steps")
    parser.add_argument("--dropout", type=float, default=0.3,
                        help="dropout rate on the pooled features before the readout")
    parser.add_argument("--recurrent-dropout", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--shift", type=int, default=1,
                        help="augment: shift training images by up to this many pixels")
    return parser.parse_args(argv)


def augmented_batches(train, batch_size, seed, shift):
    """Batches as a function of the step; with ``shift`` each image is moved by up to
    ``shift`` pixels in each direction (zero fill), drawn from ``(seed, step)``."""
    get_batch = data.make_batch_fn(train, batch_size, seed=seed)
    if shift == 0:
        return get_batch

    def shifted(step):
        batch = get_batch(step)
        rng = np.random.default_rng([seed, 1, step])
        padded = np.pad(batch["x"], ((0, 0), (shift, shift), (shift, shift)))
        dy, dx = rng.integers(0, 2 * shift + 1, size=(2, len(padded)))
        x = np.stack([p[a : a + 8, b : b + 8] for p, a, b in zip(padded, dy, dx)])
        return {"x": x, "y": batch["y"]}

    return shifted


def run(args) -> dict:
    os.makedirs(args.out, exist_ok=True)
    splits = data.load_digits_sequences(seed=args.seed)
    train, test = splits["train"], splits["test"]
    steps = args.steps or (120 if args.quick else 1500)
    key = jax.random.key(args.seed)
    params = _common.init_model(args.cell, key, 8, args.hidden, 10)
    pool = tr.last_valid if args.pool == "last" else tr.masked_mean_pool

    def logits_fn(params, x, key=None):
        train = key is not None
        ys, _ = tr.apply_network(
            params["rnn"], x, key=key,
            recurrent_dropout=args.recurrent_dropout if train else 0.0,
        )  # [B, 8, H]  # fmt: skip
        features = pool(ys)  # [B, H]
        if train and args.dropout > 0.0:
            keep = jax.random.bernoulli(jax.random.fold_in(key, 7), 1.0 - args.dropout,
                                        features.shape)
            features = jnp.where(keep, features / (1.0 - args.dropout), 0.0)
        return tr.dense(params["head"], features)  # [B, 10]

    def loss_fn(params, batch, key):
        logits = logits_fn(params, batch["x"], key)
        loss = tr.softmax_cross_entropy(logits, batch["y"])
        return loss, {"accuracy": tr.accuracy(logits, batch["y"])}

    def metric_fn(params, batch):
        logits = logits_fn(params, batch["x"])
        return {
            "loss": tr.softmax_cross_entropy(logits, batch["y"]),
            "accuracy": tr.accuracy(logits, batch["y"]),
            "count": jnp.asarray(batch["y"].shape[0], jnp.float32),
        }

    optimizer = tr.make_optimizer(args.lr, clip_norm=1.0, warmup_steps=50, decay_steps=steps,
                                  weight_decay=args.weight_decay)
    state = tr.init_train_state(params, optimizer, jax.random.fold_in(key, 1))
    train_step = tr.make_train_step(loss_fn, optimizer)
    eval_step = tr.make_eval_step(metric_fn)
    evaluate = lambda p: tr.evaluate(eval_step, p, data.iterate_batches(test, 512))  # noqa: E731
    writer = tr.MetricsWriter(args.out)
    manager = _common.checkpoint_manager(args.out, save_every=max(steps // 4, 1))
    t0 = time.perf_counter()
    state, history = tr.fit(
        state, train_step, augmented_batches(train, args.batch, args.seed, args.shift),
        num_steps=steps, log_every=_common.log_every(steps, 25), eval_every=max(steps // 10, 1),
        eval_fn=evaluate,
        writer=writer, checkpoint_manager=manager, progress=not args.no_progress,
        desc=f"digits {args.cell}",
    )  # fmt: skip
    wall = time.perf_counter() - t0
    final = evaluate(state.params)

    # diagnostics on a test batch: gradient of the loss w.r.t. h_t, and gate saturation
    xb, yb = jnp.asarray(test["x"][:256]), jnp.asarray(test["y"][:256])

    def loss_of_outputs(ys, final_state):
        del final_state
        return tr.softmax_cross_entropy(tr.dense(state.params["head"], pool(ys)), yb)

    _, grads = dg.state_gradients(loss_of_outputs, state.params["rnn"], xb)
    norms = dg.gradient_norms(grads)
    curves = {f"{args.cell} ||dL/dh_t||": norms["h"][0]}
    if "c" in norms:
        curves[f"{args.cell} ||dL/dc_t||"] = norms["c"][0]
    dg.plot_gradient_flow(curves, os.path.join(args.out, "gradient_flow.png"),
                          title="digits: gradient w.r.t. the state at each row")
    _, trace = dg.trace_gates(state.params["rnn"], xb)
    dg.plot_gates(trace, os.path.join(args.out, "gates.png"))
    _common.plot_history(history, os.path.join(args.out, "training.png"),
                         [("cross-entropy loss", ["loss", "val_loss"], False),
                          ("accuracy", ["accuracy", "val_accuracy"], False)],
                         title=f"digits, {args.cell}: training and test (val_) metrics")
    result = {
        "task": "digits",
        "cell": args.cell,
        "params": tr.count_params(state.params),
        "steps": steps,
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        "train_wall_s": wall,
        "grad_norm_h": norms["h"][0].tolist(),
        "saturation": dg.saturation(trace),
        "run": _common.run_info(),
    }
    tr.write_json(os.path.join(args.out, "metrics.json"), result)
    print(f"digits {args.cell}: test accuracy {final['accuracy']:.4f} "
          f"({result['params']} params, {wall:.1f} s)")
    _common.print_outputs(args.out)
    return result


if __name__ == "__main__":
    run(parse_args())
