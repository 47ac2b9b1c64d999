"""GPU diagnosis of backend="cudnn": the layer against scan over T, lengths, direction and layout;
jax.experimental.rnn against its reference; the bidirectional ragged network; jax.hessian.

Run on the GPU machine from the repository root: PYTHONPATH=. python3 benchmarks/results/gpu-nvidia-h200/cudnn_diag.py
"""
import functools, time, traceback
import jax, jax.numpy as jnp, numpy as np
import lstm_jax as lj
from lstm_jax.kernels import cudnn as K
from lstm_jax.kernels.call import layer_call, scan_kernel
from lstm_jax.cells import lstm_kind

jax.config.update("jax_default_matmul_precision", "float32")
print(jax.devices(), flush=True)
B, I, H = 3, 5, 6

def maxdiff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) if x.size else 0.0 for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

def layer_case(T, lengths, reverse, time_major):
    w = lj.init_lstm(jax.random.key(T), I, H).layers[0][0]
    shape = (T, B, I) if time_major else (B, T, I)
    xs = jax.random.normal(jax.random.key(1), shape)
    h0 = jax.random.normal(jax.random.key(2), (B, H)); c0 = jax.random.normal(jax.random.key(3), (B, H))
    L = None if lengths is None else jnp.array(lengths, jnp.int32)
    def run(kernel, w, xs, h0, c0):
        ys, (h, c) = kernel(layer_call(lstm_kind(), w, xs, (h0, c0), seq_lengths=L, reverse=reverse, time_major=time_major))
        return ys, h, c
    def loss(kernel, *a):
        ys, h, c = run(kernel, *a)
        return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(h * h0) + jnp.sum(c ** 2)
    out = [jax.jit(functools.partial(run, k))(w, xs, h0, c0) for k in (K.cudnn_kernel, scan_kernel)]
    g = [jax.jit(jax.grad(functools.partial(loss, k), (0, 1, 2, 3)))(w, xs, h0, c0) for k in (K.cudnn_kernel, scan_kernel)]
    d = [maxdiff(out[0][i], out[1][i]) for i in range(3)]
    return d + [maxdiff(g[0], g[1])]

print("layer: T lengths reverse time_major -> ys h c grads (max abs diff vs scan)")
bad = 0
for T in (7, 37):
    for lengths in (None, [T, T // 2 + 1, 1], [T, 0, 2], [1, T, T - 1]):
        for reverse in (False, True):
            for tm in (False, True):
                try:
                    d = layer_case(T, lengths, reverse, tm)
                    flag = "BAD" if max(d) > 1e-4 else "ok"
                    bad += flag == "BAD"
                    print(f"{flag} T={T} L={lengths} rev={reverse} tm={tm} " + " ".join(f"{x:.1e}" for x in d), flush=True)
                except Exception as e:
                    print(f"ERR T={T} L={lengths} rev={reverse} tm={tm}: {type(e).__name__}: {str(e)[:200]}", flush=True)

print("raw jax.experimental.rnn.lstm vs lstm_ref (unsorted ragged lengths):")
from jax.experimental import rnn
for T, lengths in ((7, [7, 3, 1]), (37, [37, 20, 1]), (37, [1, 20, 37]), (37, [37, 37, 37])):
    try:
        key = jax.random.split(jax.random.key(5), 4)
        x = jax.random.normal(key[0], (B, T, I)); h0 = jnp.zeros((1, B, H)); c0 = jnp.zeros((1, B, H))
        n = rnn.init_lstm_weight(key[1], I, H, 1, False)
        L = jnp.array(lengths, jnp.int32)
        y, h, c = jax.jit(lambda x, w: rnn.lstm(x, h0, c0, w, L, I, H, 1, 0.0, False, precision=jax.lax.Precision.HIGHEST))(x, n)
        wts = rnn.unpack_lstm_weights(n, I, H, 1, False)
        yr, hr, cr = rnn.lstm_ref(x, h0, c0, *wts, L, I, H, 1, 0.0, False)
        keep = (jnp.arange(T)[None] < L[:, None])[..., None]
        print(T, lengths, "y", f"{float(jnp.max(jnp.abs(jnp.where(keep, y - yr, 0)))):.1e}", "h", f"{float(jnp.max(jnp.abs(h - hr))):.1e}", "c", f"{float(jnp.max(jnp.abs(c - cr))):.1e}", flush=True)
    except Exception as e:
        print("ERR raw", T, lengths, type(e).__name__, str(e)[:200], flush=True)

print("network (test_auto_long_ragged_sequence): loss per backend")
params = lj.init_lstm(jax.random.key(23), I, H, bidirectional=True)
xs = jax.random.normal(jax.random.key(24), (B, 37, I))
lengths = jnp.array([37, 20, 1], jnp.int32)
for backend in ("scan", "fused", "cudnn", "auto"):
    for bidir_off in (False,):
        ys, st = jax.jit(lambda p, x: lj.lstm(p, x, seq_lengths=lengths, backend=backend))(params, xs)
        print(backend, f"{float(jnp.sum(ys * jnp.cos(ys))):.6f}", f"{float(jnp.sum(st.h)):.6f}", flush=True)

print("hessian through cudnn (forward over reverse):")
try:
    w = lj.init_lstm(jax.random.key(0), 2, 3).layers[0][0]
    x = jax.random.normal(jax.random.key(1), (1, 4, 2))
    def f(kernel, x):
        ys, (h, c) = kernel(layer_call(lstm_kind(), w, x, (jnp.zeros((1, 3)), jnp.zeros((1, 3)))))
        return jnp.sum(ys ** 2) + jnp.sum(c)
    a = jax.hessian(functools.partial(f, K.cudnn_kernel))(x); b = jax.hessian(functools.partial(f, scan_kernel))(x)
    print("hessian max diff", float(jnp.max(jnp.abs(a - b))))
except Exception:
    traceback.print_exc()
print("layer cases BAD:", bad)
