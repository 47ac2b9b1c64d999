import jax, jax.numpy as jnp, flax.linen as nn, lstm_jax as lj, re
B,T,I,H = 32,256,64,128
params = lj.init_lstm(jax.random.key(0), I, H); xs = jax.random.normal(jax.random.key(1), (B,T,I))
model = nn.RNN(nn.OptimizedLSTMCell(H)); fp = {"params": {"cell": lj.to_flax(params.layers[0][0])}}
for name, f, p in [("flax", lambda p, x: model.apply(p, x), fp), ("fused", lambda p, x: lj.lstm(p, x, backend="fused")[0], params)]:
    txt = jax.jit(f).lower(p, xs).compile().as_text()
    open(f"/tmp/kern/{name}.hlo", "w").write(txt)
    ops = re.findall(r"= \S+ (\w[\w-]*)\(", txt)
    from collections import Counter
    print(name, len(txt), Counter(ops).most_common(12))
