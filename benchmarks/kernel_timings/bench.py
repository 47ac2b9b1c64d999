"""Interleaved training-step timing: Flax OptimizedLSTMCell vs lstm_jax backends vs PyTorch."""
import os, sys, time, statistics, json
import numpy as np
import jax, jax.numpy as jnp
import flax.linen as nn
import torch
import lstm_jax as lj

CONFIGS = [(8, 512, 32, 64), (64, 128, 128, 256), (32, 256, 64, 128), (128, 64, 256, 512)]
REPS = int(os.environ.get("REPS", 15))
IMPLS = os.environ.get("IMPLS", "flax,scan,fused,fusedbf16,torch2,torch1").split(",")
torch.set_num_threads(os.cpu_count())

def jax_case(impl, params, xs):
    if impl == "flax":
        w = params.layers[0][0]
        H = w.w_hh.shape[0]
        model = nn.RNN(nn.OptimizedLSTMCell(H))
        fp = {"params": {"cell": lj.to_flax(w)}}
        def loss(fp, xs):
            return jnp.sum(model.apply(fp, xs))
        f = jax.jit(jax.grad(loss, (0, 1)))
        return lambda: f(fp, xs)
    backend, _, unroll = impl.partition(":")
    name = backend.rstrip("0123456789")
    unroll = 1
    cd = jnp.bfloat16 if "bf16" in impl else None
    name = name.replace("bf", "")
    def loss(p, xs):
        ys, _ = lj.lstm(p, xs, backend=name, unroll=unroll, compute_dtype=cd)
        return jnp.sum(ys)
    f = jax.jit(jax.grad(loss, (0, 1)))
    return lambda: f(params, xs)

def torch_case(params, xs, threads):
    sd = lj.to_torch(params)
    I = xs.shape[-1]; H = params.layers[0][0].w_hh.shape[0]
    m = torch.nn.LSTM(I, H, batch_first=True)
    m.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()})
    x = torch.from_numpy(np.asarray(xs)).requires_grad_(True)
    def run():
        torch.set_num_threads(threads)
        m.zero_grad(); x.grad = None
        y, _ = m(x)
        y.sum().backward()
        return x.grad
    return run

def block(out):
    if isinstance(out, torch.Tensor): return out
    return jax.block_until_ready(out)

results = {}
for (B, T, I, H) in CONFIGS:
    params = lj.init_lstm(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    runs, compile_s = {}, {}
    for impl in IMPLS:
        t0 = time.perf_counter()
        runs[impl] = torch_case(params, xs, int(impl[5:])) if impl.startswith("torch") else jax_case(impl, params, xs)
        block(runs[impl]()); compile_s[impl] = time.perf_counter() - t0
        block(runs[impl]())
    gx = {k: np.asarray(runs[k]()[1] if not k.startswith("torch") else runs[k]()) for k in IMPLS}
    for k in IMPLS:  # same function: input gradients agree with Flax's
        err = np.max(np.abs(gx[k] - gx["flax"])) / np.max(np.abs(gx["flax"]))
        assert err < (2e-2 if "bf16" in k else 1e-4), (k, err)
    times = {k: [] for k in IMPLS}
    for r in range(REPS):
        for impl in IMPLS:
            t0 = time.perf_counter(); block(runs[impl]()); times[impl].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    results[(B, T, I, H)] = med
    line = f"B={B} T={T} I={I} H={H}: " + "  ".join(f"{k} {1e3*med[k]:.1f}ms ({med['flax']/med[k]:.2f}x)" for k in IMPLS)
    print(line, flush=True)
    print("   first-call(compile) s: " + " ".join(f"{k} {compile_s[k]:.1f}" for k in IMPLS), flush=True)
print(f"load average {os.getloadavg()}")
print("geomean vs flax: " + "  ".join(
    f"{k} {np.exp(np.mean([np.log(m['flax']/m[k]) for m in results.values()])):.2f}x" for k in IMPLS))
