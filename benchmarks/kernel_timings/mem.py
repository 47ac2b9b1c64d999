import jax, jax.numpy as jnp, flax.linen as nn
import lstm_jax as lj
B, T, I, H = 16, 4096, 64, 256
params = lj.init_lstm(jax.random.key(0), I, H)
xs = jax.ShapeDtypeStruct((B, T, I), jnp.float32)
def temp(f, *args):
    c = jax.jit(jax.grad(f, (0, 1))).lower(*args).compile()
    return c.memory_analysis().temp_size_in_bytes / 2**20
model = nn.RNN(nn.OptimizedLSTMCell(H))
fp = {"params": {"cell": lj.to_flax(params.layers[0][0])}}
print(f"flax: {temp(lambda p, x: jnp.sum(model.apply(p, x)), fp, xs):.1f} MiB", flush=True)
for backend in ["scan", "fused"]:
    for remat in [False, True, 16]:
        for cd in [None, jnp.bfloat16]:
            f = lambda p, x: jnp.sum(lj.lstm(p, x, backend=backend, remat=remat, compute_dtype=cd)[0])
            print(f"{backend} remat={remat} compute_dtype={cd and 'bf16'}: {temp(f, params, xs):.1f} MiB", flush=True)
