"""Interleaved: fused with saved activations vs saved pre-activations, unroll 1/2/4/8, and scan; f32 training step."""
import os, time, statistics, numpy as np, jax, jax.numpy as jnp
import lstm_jax as lj
import lstm_jax.kernels.fused as fused
CONFIGS = [(8, 512, 32, 64), (64, 128, 128, 256), (32, 256, 64, 128), (128, 64, 256, 512)]
REPS = int(os.environ.get("REPS", 9))
VARIANTS = [("activations", 1), ("gates", 1), ("activations", 2), ("activations", 4), ("activations", 8)]
for (B, T, I, H) in CONFIGS:
    params = lj.init_lstm(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    fns = {}
    for save, unroll in VARIANTS:
        fused.SAVE = save
        loss = lambda p, x, u=unroll: jnp.sum(lj.lstm(p, x, backend="fused", unroll=u)[0])
        f = jax.jit(jax.grad(loss, (0, 1))).lower(params, xs).compile()
        fns[(save, unroll)] = f
    fused.SAVE = "activations"
    ref = fns[VARIANTS[0]](params, xs)
    for k, f in fns.items():
        err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(f(params, xs))))
        assert err < 1e-5, (k, err)
    ts = {k: [] for k in fns}
    for _ in range(REPS):
        for k, f in fns.items():
            t = time.perf_counter(); jax.block_until_ready(f(params, xs)); ts[k].append(time.perf_counter() - t)
    base = statistics.median(ts[VARIANTS[0]])
    print(f"{B}x{T}x{I}x{H}: " + "  ".join(f"{s[:4]}/u{u} {statistics.median(v)*1e3:.1f}ms ({base/statistics.median(v):.2f})" for (s, u), v in ts.items()), flush=True)
