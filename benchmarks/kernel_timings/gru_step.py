"""One native GRU training step (``jit(grad)`` of ``mean(ys**2) + mean(h)`` w.r.t. the weights
and inputs): ``python gru_step.py B T I H ROUNDS`` prints the medians over ROUNDS calls (after
a warm-up) of process CPU time and wall time in ms, the temporary memory of the compiled step
(``memory_analysis``: a bare gradient, no optimizer) and a checksum of the gradients, so that
two builds can be compared in alternating processes (``gru_step_ab.sh``). ``EMULATE=avx2``
narrows every peer to AVX2 (``benchmarks.isa_emulation``)."""
import os
import sys
import time

if os.environ.get("EMULATE"):
    from benchmarks.isa_emulation import emulate

    emulate(os.environ["EMULATE"])
import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax as lj

B, T, I, H, R = map(int, sys.argv[1:6])
params = lj.init_gru(jax.random.key(0), I, H)
xs = jax.random.normal(jax.random.key(1), (B, T, I))


def loss(params, xs):
    ys, h = lj.gru(params, xs, backend="native")
    return jnp.mean(ys**2) + jnp.mean(h[-1])


step = jax.jit(jax.grad(loss, argnums=(0, 1)))
temp = step.lower(params, xs).compile().memory_analysis().temp_size_in_bytes
grads = jax.block_until_ready(step(params, xs))
checksum = " ".join(f"{float(jnp.sum(jnp.abs(g))):.6g}" for g in jax.tree.leaves(grads))
for _ in range(2):
    jax.block_until_ready(step(params, xs))
cpu, wall = [], []
for _ in range(R):
    c, t = time.process_time(), time.perf_counter()
    jax.block_until_ready(step(params, xs))
    cpu.append(time.process_time() - c)
    wall.append(time.perf_counter() - t)
print(f"cpu {1e3 * np.median(cpu):.2f} wall {1e3 * np.median(wall):.2f} temp_MiB {temp / 2**20:.1f} "
      f"chk {checksum} load {os.getloadavg()[0]:.2f}")  # fmt: skip
