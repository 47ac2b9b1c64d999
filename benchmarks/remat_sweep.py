"""Temporary memory of ``remat=True`` against the sequence length T (issue 10 item 4).

For each T, compiles ``jax.jit(jax.grad(f))`` with ``f = sum(lstm(params, xs,
backend="auto", remat=True)[0])`` at (B, I, H) = (16, 64, 256), batch-major
and time-major, and prints ``memory_analysis().temp_size_in_bytes`` in MiB as
a markdown table. Compilation only: nothing runs, and the figures are
deterministic for a given jax/XLA version.

    python -m benchmarks.remat_sweep [--steps 512 1024 ...] [--train-step 4096]

``--train-step T`` also compiles one real training step at that T (MSE loss
against a ``(B, T, H)`` target, ``optax.adam`` update, jitted) for Flax's
``nn.RNN(nn.OptimizedLSTMCell)`` and for lstm_jax's backends.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import lstm_jax as lj
from lstm_jax.kernels.remat import block_size

B, I, H = 16, 64, 256
STEPS = (512, 1024, 2000, 4096, 5000, 8192, 16384)


def temp_mib(steps: int, time_major: bool, remat=True, backend: str = "auto") -> float:
    """Temp MiB of ``grad(sum(ys))`` w.r.t. params and inputs."""
    params = lj.init_lstm(jax.random.key(0), I, H)
    shape = (steps, B, I) if time_major else (B, steps, I)
    xs = jax.ShapeDtypeStruct(shape, jnp.float32)

    def loss(params, xs):
        return jnp.sum(lj.lstm(params, xs, backend=backend, remat=remat, time_major=time_major)[0])

    compiled = jax.jit(jax.grad(loss, (0, 1))).lower(params, xs).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def train_step_mib(steps: int, model: str, real_step: bool) -> float:
    """Temp MiB of a jitted MSE + Adam step (``real_step``) or of ``grad(sum(ys))``.

    ``model`` is "flax" or "BACKEND[+remat]".
    """
    import optax

    xs = jax.ShapeDtypeStruct((B, steps, I), jnp.float32)
    target = jax.ShapeDtypeStruct((B, steps, H), jnp.float32)
    if model == "flax":
        import flax.linen as nn

        module = nn.RNN(nn.OptimizedLSTMCell(H))
        params = module.init(jax.random.key(0), jnp.zeros((B, 1, I)))
        apply = module.apply
    else:
        backend, _, remat = model.partition("+")
        params = lj.init_lstm(jax.random.key(0), I, H)

        def apply(params, xs):
            return lj.lstm(params, xs, backend=backend, remat=bool(remat))[0]

    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)

    def step(params, opt_state, xs, target):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((apply(p, xs) - target) ** 2))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    if real_step:
        compiled = jax.jit(step).lower(params, opt_state, xs, target).compile()
    else:
        grad = jax.grad(lambda p, x: jnp.sum(apply(p, x)), (0, 1))
        compiled = jax.jit(grad).lower(params, xs).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--train-step", type=int, default=0, metavar="T")
    args = parser.parse_args()
    if args.train_step:
        print(f"T={args.train_step}, B={B}, I={I}, H={H}; temp MiB (memory_analysis)")
        print("| model | grad(sum(ys)) | MSE + optax.adam step |")
        print("| --- | ---: | ---: |")
        for model in ("flax", "fused", "fused+remat", "scan", "scan+remat"):
            row = [train_step_mib(args.train_step, model, real) for real in (False, True)]
            print(f"| {model} | {row[0]:.1f} | {row[1]:.1f} |", flush=True)
        return
    print(f"grad(sum(ys)), backend='auto', remat=True, B={B}, I={I}, H={H}; temp MiB")
    print("| T | block k | batch-major | time-major |")
    print("| ---: | ---: | ---: | ---: |")
    for steps in args.steps:
        row = [temp_mib(steps, time_major) for time_major in (False, True)]
        print(f"| {steps} | {block_size(True, steps)} | {row[0]:.1f} | {row[1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
