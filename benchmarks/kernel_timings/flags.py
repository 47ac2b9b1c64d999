"""Time fused-backend training steps (f32 and bf16) under the current XLA_FLAGS; save outputs for equality checks."""
import os, sys, time, statistics, numpy as np, jax, jax.numpy as jnp
import lstm_jax as lj
CONFIGS = [(8, 512, 32, 64), (64, 128, 128, 256), (32, 256, 64, 128), (128, 64, 256, 512)]
REPS = int(os.environ.get("REPS", 7))
tag = sys.argv[1]
out = {}
for (B, T, I, H) in CONFIGS:
    params = lj.init_lstm(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    for cd in [None, jnp.bfloat16]:
        def loss(p, xs):
            ys, _ = lj.lstm(p, xs, backend="fused", compute_dtype=cd)
            return jnp.sum(ys)
        f = jax.jit(jax.grad(loss, (0, 1)))
        g = jax.block_until_ready(f(params, xs)); ts = []
        for _ in range(REPS):
            t = time.perf_counter(); jax.block_until_ready(f(params, xs)); ts.append(time.perf_counter() - t)
        name = f"{B}x{T}x{I}x{H}_{'bf16' if cd else 'f32'}"
        out[name] = statistics.median(ts)
        np.save(f"/tmp/kern/flag_{tag}_{name}.npy", np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]))
print(tag, " ".join(f"{k}={v*1e3:.1f}" for k, v in out.items()), flush=True)
