"""XLA's work after the native GRU backward, for three layouts of its gate gradients.

``planar``: dr, dz, dn, dhn as four ``(T * B, H)`` arrays (the kernels' layout since session 18);
``rows``: one ``(T * B, 4H)`` array whose column slices ``[dr, dz, dn]`` and ``[dr, dz, dhn]``
XLA copies before its GEMMs (the layout before); ``full``: the whole rows in every GEMM,
wasting a quarter of the products. Each computes ``dw_ih``, ``dw_hh``, ``dx`` and the biases'
gradient at ``(T * B, I, H) = (8192, 256, 512)``; checked equal, then timed interleaved
(medians of ``R`` rounds, wall clock)::

    PYTHONPATH=. python benchmarks/kernel_timings/gru_dz_layout.py          # two threads
    PYTHONPATH=. taskset -c 0 python benchmarks/kernel_timings/gru_dz_layout.py
    EMULATE=avx2 PYTHONPATH=. python benchmarks/kernel_timings/gru_dz_layout.py
"""
import os

if os.environ.get("EMULATE"):
    from benchmarks.isa_emulation import emulate

    emulate(os.environ["EMULATE"])
import time

import jax
import jax.numpy as jnp
import numpy as np

N, I, H = 8192, 256, 512


def planar(xs, hp, a0, a1, a2, a3, w_ih):
    a = (a0, a1, a2, a3)
    dw_ih = jnp.concatenate([xs.T @ a[g] for g in range(3)], axis=1)
    dw_hh = jnp.concatenate([hp.T @ a[g] for g in (0, 1, 3)], axis=1)
    dxs = sum(a[g] @ w_ih[:, g * H : (g + 1) * H].T for g in range(3))
    return dw_ih, dw_hh, dxs, jnp.concatenate([x.sum(0) for x in a])


def rows(xs, hp, r, w_ih):
    d_in = r[:, : 3 * H]
    d_rec = jnp.concatenate([r[:, : 2 * H], r[:, 3 * H :]], axis=1)
    return xs.T @ d_in, hp.T @ d_rec, d_in @ w_ih.T, r.sum(0)


def full(xs, hp, r, w_ih):
    dw_ih, dw_hh = xs.T @ r, hp.T @ r
    dxs = r @ jnp.concatenate([w_ih, jnp.zeros((I, H))], 1).T
    return dw_ih[:, : 3 * H], jnp.concatenate([dw_hh[:, : 2 * H], dw_hh[:, 3 * H :]], 1), dxs, r.sum(0)


k = jax.random.split(jax.random.key(0), 4)
xs, hp = jax.random.normal(k[0], (N, I)), jax.random.normal(k[1], (N, H))
a, w = jax.random.normal(k[2], (4, N, H)), jax.random.normal(k[3], (I, 3 * H))
r = jnp.moveaxis(a, 0, 1).reshape(N, 4 * H)
cases = {"planar": (jax.jit(planar), (xs, hp, *a, w)), "rows": (jax.jit(rows), (xs, hp, r, w)),
         "full": (jax.jit(full), (xs, hp, r, w))}  # fmt: skip
outs = {name: jax.block_until_ready(f(*args)) for name, (f, args) in cases.items()}
for name in ("rows", "full"):
    diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(outs["planar"], outs[name]))
    print(f"planar vs {name}: max difference {diff:.1e}")
times = {name: [] for name in cases}
for _ in range(int(os.environ.get("R", 9))):
    for name, (f, args) in cases.items():
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times[name].append(time.perf_counter() - t)
print("ms", {name: round(1e3 * float(np.median(v)), 1) for name, v in times.items()}, "load", os.getloadavg()[0])
