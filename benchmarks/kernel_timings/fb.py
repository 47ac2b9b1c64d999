import time, statistics, jax, jax.numpy as jnp, flax.linen as nn, lstm_jax as lj
B,T,I,H = 32,256,64,128
params = lj.init_lstm(jax.random.key(0), I, H); xs = jax.random.normal(jax.random.key(1), (B,T,I))
model = nn.RNN(nn.OptimizedLSTMCell(H)); fp = {"params": {"cell": lj.to_flax(params.layers[0][0])}}
fl = lambda p, x: jnp.sum(model.apply(p, x))
mk = lambda b: (lambda p, x: jnp.sum(lj.lstm(p, x, backend=b)[0]))
fns = {"flax fwd": (jax.jit(fl), fp), "fused fwd": (jax.jit(mk("fused")), params), "scan fwd": (jax.jit(mk("scan")), params), "auto fwd": (jax.jit(mk("auto")), params),
       "flax step": (jax.jit(jax.grad(fl, (0,1))), fp), "fused step": (jax.jit(jax.grad(mk("fused"), (0,1))), params),
       "auto step": (jax.jit(jax.grad(mk("auto"), (0,1))), params)}
for f, p in fns.values(): jax.block_until_ready(f(p, xs))
ts = {k: [] for k in fns}
for _ in range(11):
    for k, (f, p) in fns.items():
        t = time.perf_counter(); jax.block_until_ready(f(p, xs)); ts[k].append(time.perf_counter() - t)
print("  ".join(f"{k} {statistics.median(v)*1e3:.1f}ms" for k, v in ts.items()))
