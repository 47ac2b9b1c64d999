"""The fused backward's block size (``lstm_jax.kernels.fused.BLOCK``) on the CPU targets.

Interleaved medians of the training step ``grad(sum(ys))`` for several block
sizes; a block as long as the sequence is the unblocked form (GEMMs over all
T * B rows once, after the loop).
"""
import os
import statistics
import time

import jax
import jax.numpy as jnp

import lstm_jax as lj
from lstm_jax.kernels import fused

CONFIGS = [(8, 512, 32, 64), (64, 128, 128, 256), (32, 256, 64, 128), (128, 64, 256, 512)]
BLOCKS = [int(v) for v in os.environ.get("BLOCKS", "16,32,64,100000").split(",")]
REPS = int(os.environ.get("REPS", 9))
default = fused.BLOCK
for batch, steps, inputs, hidden in CONFIGS:
    params = lj.init_lstm(jax.random.key(0), inputs, hidden)
    xs = jax.random.normal(jax.random.key(1), (batch, steps, inputs))
    fns = {}
    for block in BLOCKS:
        fused.BLOCK = block  # read when the step is traced, i.e. compiled here
        loss = lambda p, x: jnp.sum(lj.lstm(p, x, backend="fused")[0])  # noqa: E731
        fns[block] = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()
    fused.BLOCK = default
    times = {block: [] for block in fns}
    for fn in fns.values():
        jax.block_until_ready(fn(params, xs))
    for _ in range(REPS):
        for block, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(params, xs))
            times[block].append(time.perf_counter() - start)
    medians = {block: statistics.median(ts) for block, ts in times.items()}
    base = medians[BLOCKS[-1]]
    print(f"{(batch, steps, inputs, hidden)}: " + "  ".join(
        f"block {b}: {1e3 * m:.1f} ms ({base / m:.2f}x)" for b, m in medians.items()))
