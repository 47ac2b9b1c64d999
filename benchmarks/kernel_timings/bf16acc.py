import jax, jax.numpy as jnp, numpy as np
import lstm_jax as lj
jax.config.update("jax_enable_x64", True)
for (B, T, I, H) in [(32, 256, 64, 128), (8, 512, 32, 64)]:
    params = lj.init_lstm(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    def run(p, x, backend, cd):
        def loss(p, x):
            ys, st = lj.lstm(p, x, backend=backend, compute_dtype=cd)
            return jnp.sum(ys * ys) / 2, (ys, st)
        return jax.jit(jax.grad(loss, (0, 1), has_aux=True))(p, x)
    ref = run(p64, xs.astype(jnp.float64), "scan", None)
    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return np.linalg.norm(a - b) / np.linalg.norm(b)
    for name, (backend, cd) in {"fused f32": ("fused", None), "scan f32": ("scan", None),
                                "fused bf16": ("fused", jnp.bfloat16), "scan bf16": ("scan", jnp.bfloat16)}.items():
        (gp, gx), (ys, st) = run(params, xs, backend, cd)
        (rp, rx), (rys, rst) = ref
        w = gp.layers[0][0]; rw = rp.layers[0][0]
        print(f"{B}x{T}x{I}x{H} {name}: rel err ys {rel(ys, rys):.1e}  c_T {rel(st.c, rst.c):.1e}  "
              f"dw_ih {rel(w.w_ih, rw.w_ih):.1e}  dw_hh {rel(w.w_hh, rw.w_hh):.1e}  db {rel(w.b, rw.b):.1e}  dx {rel(gx, rx):.1e}", flush=True)
