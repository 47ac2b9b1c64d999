"""Why the fused kernel saves one (T, B, H) stack per gate (docs/TIMINGS.md, "Residual layout").

Times a loop body that reads the four gates of step t and combines them, with
the gates stored (a) as one (T, B, 4H) array split into four column slices,
(b) as four (T, B, H) arrays, (c) as one (4, T, B, H) array.
"""
import statistics
import time

import jax
import jax.numpy as jnp

T, B, H = 256, 32, 128
stacked = jax.random.normal(jax.random.key(0), (T, B, 4 * H))
separate = tuple(jnp.split(stacked, 4, axis=-1))
leading = jnp.stack(separate)  # (4, T, B, H)
h0 = jax.random.normal(jax.random.key(1), (B, H))


def index(a, t, axis=0):
    return jax.lax.dynamic_index_in_dim(a, t, axis=axis, keepdims=False)


def combine(i, f, g, o):
    return jnp.tanh(i) * f + g * o


LAYOUTS = {
    "(T, B, 4H), four column slices": (lambda t, s: combine(*jnp.split(index(s, t), 4, axis=-1)), stacked),
    "four (T, B, H) stacks": (lambda t, s: combine(*(index(a, t) for a in s)), separate),
    "(4, T, B, H), index axis 1": (lambda t, s: combine(*(index(s[k], t) for k in range(4))), leading),
}

for name, (read, data) in LAYOUTS.items():
    loop = jax.jit(lambda data, h, read=read: jax.lax.fori_loop(0, T, lambda t, h: 0.5 * h + read(t, data), h))
    jax.block_until_ready(loop(data, h0))
    times = []
    for _ in range(11):
        start = time.perf_counter()
        jax.block_until_ready(loop(data, h0))
        times.append(time.perf_counter() - start)
    print(f"{name:34s} {1e6 * statistics.median(times) / T:7.2f} us per step")
