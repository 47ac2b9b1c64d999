"""One digit classifier per framework: Flax NNX, Flax linen and Equinox modules.

    python examples/modules_demo.py              # 400 steps each
    python examples/modules_demo.py --quick      # 40 steps each (smoke test)

Each framework trains the same model in its own idiom: an LSTM (8 -> H, with
recurrent dropout) over the 8 rows of a scikit-learn 8x8 digit, then a dense
readout of the last state, Adam, batches of 64. Prints, per framework, the
mean training loss over the last 50 steps, the test loss and accuracy (dropout
off), and the training wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import equinox as eqx  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import lstm_jax.equinox  # noqa: E402
import lstm_jax.linen  # noqa: E402
import lstm_jax.nnx  # noqa: E402
from lstm_jax import data  # noqa: E402

RECURRENT_DROPOUT = 0.1


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_nnx(args, batches, test):
    class Classifier(nnx.Module):
        def __init__(self, rngs):
            self.rnn = lstm_jax.nnx.LSTM(
                8, args.hidden, recurrent_dropout=RECURRENT_DROPOUT, rngs=rngs
            )
            self.head = nnx.Linear(args.hidden, 10, rngs=rngs)

        def __call__(self, xs):  # [B, 8, 8] -> [B, 10]
            _, state = self.rnn(xs)
            return self.head(state.h[-1])

    model = Classifier(nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xs, ys):
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(xs), ys))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, *batches(i))) for i in range(args.steps)]
    model.eval()
    return losses, nnx.jit(lambda model, xs: model(xs))(model, test["x"])


def train_linen(args, batches, test):
    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, xs, deterministic):
            rnn = lstm_jax.linen.LSTM(args.hidden, recurrent_dropout=RECURRENT_DROPOUT)
            _, state = rnn(xs, deterministic=deterministic)
            return nn.Dense(10)(state.h[-1])

    model = Classifier()
    key = jax.random.key(args.seed)
    params = model.init(key, test["x"][:1], deterministic=True)["params"]
    tx = optax.adam(args.lr)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xs, ys, key):
        def loss_fn(params):
            logits = model.apply({"params": params}, xs, deterministic=False, rngs={"dropout": key})
            return cross_entropy(logits, ys)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(args.steps):
        params, opt_state, loss = step(params, opt_state, *batches(i), jax.random.fold_in(key, i))
        losses.append(float(loss))
    evaluate = jax.jit(lambda p, xs: model.apply({"params": p}, xs, deterministic=True))
    return losses, evaluate(params, test["x"])


def train_equinox(args, batches, test):
    class Classifier(eqx.Module):
        rnn: lstm_jax.equinox.LSTM
        head: eqx.nn.Linear

        def __init__(self, key):
            k_rnn, k_head = jax.random.split(key)
            self.rnn = lstm_jax.equinox.LSTM(
                8, args.hidden, recurrent_dropout=RECURRENT_DROPOUT, key=k_rnn
            )
            self.head = eqx.nn.Linear(args.hidden, 10, key=k_head)

        def __call__(self, xs, *, key=None):  # one sequence [8, 8] -> [10]
            _, state = self.rnn(xs, key=key)
            return self.head(state.h[-1])

    key = jax.random.key(args.seed)
    model = Classifier(key)
    tx = optax.adam(args.lr)
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state, xs, ys, key):
        def loss_fn(model):
            keys = jax.random.split(key, xs.shape[0])
            return cross_entropy(jax.vmap(lambda x, k: model(x, key=k))(xs, keys), ys)

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    losses = []
    for i in range(args.steps):
        model, opt_state, loss = step(model, opt_state, *batches(i), jax.random.fold_in(key, i))
        losses.append(float(loss))
    model = eqx.nn.inference_mode(model)
    return losses, eqx.filter_jit(lambda m, xs: jax.vmap(m)(xs))(model, test["x"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="40 steps each")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.steps = args.steps or (40 if args.quick else 400)

    splits = data.load_digits_sequences(seed=args.seed)
    train = splits["train"]
    test = {name: jnp.asarray(value) for name, value in splits["test"].items()}
    get_batch = data.make_batch_fn(train, 64, seed=args.seed)

    def batches(i):
        batch = get_batch(i)
        return jnp.asarray(batch["x"]), jnp.asarray(batch["y"])

    print(f"digits: {len(train['y'])} train / {len(test['y'])} test sequences of 8 rows x 8 "
          f"features; LSTM({args.hidden}) + dense, {args.steps} Adam steps of batch 64, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    results = {}
    for name, train_fn in (("nnx", train_nnx), ("linen", train_linen), ("equinox", train_equinox)):
        t0 = time.perf_counter()
        losses, logits = train_fn(args, batches, test)
        wall = time.perf_counter() - t0
        accuracy = float(jnp.mean(jnp.argmax(logits, -1) == test["y"]))
        results[name] = dict(
            first_loss=losses[0],
            train_loss=float(np.mean(losses[-50:])),
            test_loss=float(cross_entropy(logits, test["y"])),
            test_accuracy=accuracy,
            wall_s=wall,
        )
        r = results[name]
        print(f"{name:8s} train loss {r['first_loss']:.3f} -> {r['train_loss']:.3f}  "
              f"test loss {r['test_loss']:.3f}  test accuracy {accuracy:.4f}  "
              f"({wall:.1f} s incl. compilation)")
    return results


if __name__ == "__main__":
    main()
