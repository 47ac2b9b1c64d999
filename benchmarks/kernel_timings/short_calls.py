"""Short native calls (T = 1 and 16): median ms of 200 jitted calls, inference and the gradient
of sum(ys), 2 cores. `PYTHONPATH=ROOT python benchmarks/kernel_timings/short_calls.py` per build."""
import time, statistics, jax, jax.numpy as jnp, lstm_jax as lj
for (B,T,I,H) in [(1,1,256,512),(8,1,128,256),(1,16,256,512)]:
    p=lj.init_lstm(jax.random.key(0),I,H); xs=jax.random.normal(jax.random.key(1),(B,T,I))
    f=jax.jit(lambda p,x: lj.lstm(p,x)[0]); jax.block_until_ready(f(p,xs))
    g=jax.jit(jax.grad(lambda p,x: jnp.sum(lj.lstm(p,x)[0]))); jax.block_until_ready(g(p,xs))
    res=[]
    for fn in (f,g):
        ts=[]
        for _ in range(200):
            t=time.perf_counter(); jax.block_until_ready(fn(p,xs)); ts.append(time.perf_counter()-t)
        res.append(statistics.median(ts)*1e3)
    print((B,T,I,H), "infer %.3f ms  grad %.3f ms" % tuple(res), flush=True)
