"""The cost of saving the activations: the training forward vs inference, in JAX.

    python benchmarks/kernel_timings/train_forward.py B,T,I,H

``lj.lstm`` (default backend) jitted as inference, and as the primal of ``jax.vjp``
(the training forward: the same custom call writing the residuals for the backward);
7 interleaved rounds of each one's median of 5 calls, both cores. Prints the medians,
the difference and every round.
"""
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import lstm_jax as lj

B, T, I, H = map(int, sys.argv[1].split(","))
params = lj.init_lstm(jax.random.key(0), I, H)
xs = jax.random.normal(jax.random.key(1), (B, T, I))
f = lambda p, x: lj.lstm(p, x)[0]
infer = jax.jit(f)
train_fwd = jax.jit(lambda p, x: jax.vjp(f, p, x)[0])
print("same:", float(jnp.max(jnp.abs(infer(params, xs) - train_fwd(params, xs)))))
def t(fn, n=5):
    jax.block_until_ready(fn(params, xs))
    ts = []
    for _ in range(n):
        s = time.perf_counter(); jax.block_until_ready(fn(params, xs)); ts.append(time.perf_counter() - s)
    return statistics.median(ts) * 1e3
ri, rt = [], []
for r in range(7):
    ri.append(t(infer)); rt.append(t(train_fwd))
mi, mt = statistics.median(ri), statistics.median(rt)
print(f"{sys.argv[1]} infer {mi:.1f} ms  train-forward {mt:.1f} ms  extra {mt-mi:.1f} ms ({(mt-mi)/mt:.0%} of it)  rounds infer {[round(x,1) for x in ri]} train {[round(x,1) for x in rt]}")
