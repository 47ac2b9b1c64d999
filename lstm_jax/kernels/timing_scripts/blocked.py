import os, time, statistics, functools, numpy as np, jax, jax.numpy as jnp
import lstm_jax as lj
from lstm_jax.cells import lstm_kind
from lstm_jax.kernels.fused import fused_lstm_layer
from lstm_jax.kernels.remat import remat_layer
import lstm_jax.kernels as K
CONFIGS = [(64, 128, 128, 256), (128, 64, 256, 512), (32, 256, 64, 128)]
for (B, T, I, H) in CONFIGS:
    params = lj.init_lstm(jax.random.key(0), I, H)
    w = params.layers[0][0]
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    carry = (jnp.zeros((B, H)), jnp.zeros((B, H)))
    variants = {"fused": fused_lstm_layer}
    for k in (8, 16, 32):
        variants[f"blk{k}"] = remat_layer(fused_lstm_layer, k, checkpoint=False)
    variants["remat16"] = remat_layer(fused_lstm_layer, 16)
    fns = {}
    for name, layer in variants.items():
        loss = lambda w, x, layer=layer: jnp.sum(layer(lstm_kind(), w, x, carry)[0])
        fns[name] = jax.jit(jax.grad(loss, (0, 1))).lower(w, xs).compile()
    ref = fns["fused"](w, xs)
    for n, f in fns.items():
        err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(f(w, xs))))
        assert err < 1e-5, (n, err)
    ts = {k: [] for k in fns}
    for _ in range(7):
        for k, f in fns.items():
            t = time.perf_counter(); jax.block_until_ready(f(w, xs)); ts[k].append(time.perf_counter() - t)
    base = statistics.median(ts["fused"])
    print(f"{B}x{T}x{I}x{H}: " + "  ".join(f"{k} {statistics.median(v)*1e3:.0f}ms ({base/statistics.median(v):.2f})" for k, v in ts.items()), flush=True)
