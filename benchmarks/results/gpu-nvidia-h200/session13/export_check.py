import functools, types, re
import jax, jax.numpy as jnp
from jax import export
import lstm_jax as lj
from jax._src.lib import gpu_rnn
from lstm_jax.kernels.cudnn import _cuda_rnn_available

def stub():
    fake = types.SimpleNamespace(build_rnn_descriptor=lambda *a: b"stub")
    gpu_rnn.compute_rnn_workspace_reserve_space_sizes = lambda *a: (1024, 4096)
    gpu_rnn.cudnn_rnn_lowering = functools.partial(gpu_rnn._rnn_fwd_lowering, fake, "cu")
    gpu_rnn.cudnn_rnn_bwd_lowering = functools.partial(gpu_rnn._rnn_bwd_lowering, fake, "cu")

def make(grad):
    def f(p, x, lengths):
        ys, st = lj.lstm(p, x, seq_lengths=lengths)
        return jnp.sum(ys * ys) + jnp.sum(st.c)
    return jax.grad(f, (0, 1)) if grad else f

for stubbed in (False, True):
    if stubbed: stub()
    print("cuDNN RNN available:", _cuda_rnn_available())
    for (B, T, H) in ((3, 5, 512), (0, 5, 512), (3, 1, 512), (3, 5, 256)):
        p = lj.init_lstm(jax.random.key(0), 8, H, num_layers=2, bidirectional=True)
        x = jax.random.normal(jax.random.key(1), (B, T, 8))
        lengths = jnp.minimum(jnp.arange(B, dtype=jnp.int32) % T, T)  # includes 0
        for grad in (False, True):
            for plats in (["cuda"], ["tpu"], ["cpu", "cuda", "tpu"]):
                e = export.export(jax.jit(make(grad)), platforms=plats, disabled_checks=lj.export_safety_checks())(p, x, lengths)
                calls = sorted(set(re.findall(r'custom_call @(\w+)', e.mlir_module())) - {"Sharding"})
                print(f"stub={stubbed} B={B} T={T} H={H} grad={grad} {plats}: ok, calls {calls}")
