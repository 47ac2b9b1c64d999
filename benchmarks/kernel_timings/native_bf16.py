"""bfloat16 training and inference: native bf16 vs fused bf16, native f32 and PyTorch bf16.

Training step = forward + backward + Adam (lr 1e-3) on ``mean((ys - target)^2)``,
1 layer, float32 params; JAX steps are ``jax.jit`` with the Adam update inside,
PyTorch is ``nn.LSTM`` under ``torch.autocast("cpu", torch.bfloat16)``
(``torch.set_num_threads(2)``, oneDNN), as ``benchmarks/peers/torch_peer.py``.
Inference = the forward only (PyTorch under ``inference_mode``).

Before timing, every implementation's outputs and input gradient are compared
with float32 ``scan`` on the same weights (max abs error printed). Then two
warm-up calls each and ``--reps`` rounds, every round calling each
implementation once in turn (interleaved); the median per implementation is
printed with the load average before and after.

Usage: python -m benchmarks.kernel_timings.native_bf16 [--reps 9] [--only 0,2] [--infer]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lstm_jax as lj

TARGETS = [(8, 512, 32, 64), (64, 128, 128, 256), (32, 256, 64, 128), (128, 64, 256, 512)]
LR = 1e-3


def _jax_impls(params, xs, target, infer):
    impls = {
        "native bf16": dict(backend="native", compute_dtype=jnp.bfloat16),
        "fused bf16": dict(backend="fused", compute_dtype=jnp.bfloat16),
        "auto bf16": dict(backend="auto", compute_dtype=jnp.bfloat16),
        "native f32": dict(backend="native"),
    }
    opt = optax.adam(LR)
    steps = {}
    for name, kw in impls.items():
        if infer:
            steps[name] = (jax.jit(lambda p, x, kw=kw: lj.lstm(p, x, **kw)[0]), None)
            continue

        def loss(p, x, kw=kw):
            return jnp.mean((lj.lstm(p, x, **kw)[0] - target) ** 2)

        @jax.jit
        def step(p, s, x, loss=loss):
            value, grads = jax.value_and_grad(loss)(p, x)
            updates, s = opt.update(grads, s, p)
            return optax.apply_updates(p, updates), s, value

        steps[name] = (step, opt.init(params))
    return steps


def _torch_step(params, xs, target, infer):
    import torch

    torch.set_num_threads(2)
    module = torch.nn.LSTM(xs.shape[-1], params.layers[0][0].w_hh.shape[0], batch_first=True)
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in lj.to_torch(params).items()}
    module.load_state_dict(state)
    xt = torch.from_numpy(np.array(xs, np.float32))
    yt = torch.from_numpy(np.array(target, np.float32))
    if infer:

        def step():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return module(xt)[0]

        return step, module, xt
    optimizer = torch.optim.Adam(module.parameters(), lr=LR)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ys, _ = module(xt)
        loss = ((ys.float() - yt) ** 2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, module, xt


def _check(params, xs):
    """Max abs error of outputs and d(sum ys^2)/dxs vs float32 scan, per implementation."""

    def out_and_dx(**kw):
        def f(x):
            ys = lj.lstm(params, x, **kw)[0]
            return jnp.sum(ys.astype(jnp.float32) ** 2), ys

        (_, ys), dx = jax.jit(jax.value_and_grad(f, has_aux=True))(xs)
        return np.asarray(ys, np.float32), np.asarray(dx, np.float32)

    ref = out_and_dx(backend="scan")
    for name, kw in [("native bf16", dict(backend="native", compute_dtype=jnp.bfloat16)),
                     ("fused bf16", dict(backend="fused", compute_dtype=jnp.bfloat16)),
                     ("native f32", dict(backend="native"))]:  # fmt: skip
        got = out_and_dx(**kw)
        print(f"  check {name}: |ys - scan| {np.max(np.abs(got[0] - ref[0])):.2e}, "
              f"|dx - scan| {np.max(np.abs(got[1] - ref[1])):.2e}")  # fmt: skip
    import torch

    torch.set_num_threads(2)
    module = torch.nn.LSTM(xs.shape[-1], params.layers[0][0].w_hh.shape[0], batch_first=True)
    module.load_state_dict({k: torch.from_numpy(np.array(v, np.float32))
                            for k, v in lj.to_torch(params).items()})  # fmt: skip
    xt = torch.from_numpy(np.array(xs, np.float32)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ys = module(xt)[0]
    (ys.float() ** 2).sum().backward()
    ys = ys.detach().float().numpy()
    print(f"  check torch bf16: |ys - scan| {np.max(np.abs(ys - ref[0])):.2e}, "
          f"|dx - scan| {np.max(np.abs(xt.grad.numpy() - ref[1])):.2e}")  # fmt: skip


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--only", default="", help="comma-separated target indices")
    parser.add_argument("--infer", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    chosen = [TARGETS[int(i)] for i in args.only.split(",")] if args.only else TARGETS
    print(
        f"jax {jax.__version__}, load {os.getloadavg()}, "
        f"workload {'infer' if args.infer else 'train'}"
    )
    for B, T, I, H in chosen:
        keys = jax.random.split(jax.random.key(0), 3)
        params = lj.init_lstm(keys[0], I, H)
        xs = jax.random.normal(keys[1], (B, T, I))
        target = jax.random.normal(keys[2], (B, T, H))
        print(f"(B, T, I, H) = {(B, T, I, H)}")
        _check(params, xs)
        calls = {}
        for name, (fn, opt_state) in _jax_impls(params, xs, target, args.infer).items():
            if args.infer:
                calls[name] = lambda fn=fn: jax.block_until_ready(fn(params, xs))
            else:
                calls[name] = lambda fn=fn, s=opt_state: jax.block_until_ready(fn(params, s, xs))
        if not args.no_torch:
            calls["torch bf16"] = _torch_step(params, xs, target, args.infer)[0]
        for call in calls.values():
            call()
            call()
        times = {name: [] for name in calls}
        load0 = os.getloadavg()[0]
        for _ in range(args.reps):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(1e3 * (time.perf_counter() - start))
        medians = {n: statistics.median(t) for n, t in times.items()}
        print(f"  load {load0:.2f} -> {os.getloadavg()[0]:.2f}; medians (ms), min in brackets:")
        for name, m in medians.items():
            print(f"    {name:12s} {m:8.2f}  [{min(times[name]):8.2f}]")


if __name__ == "__main__":
    main()
