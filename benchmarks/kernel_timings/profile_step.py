"""Per-operation time of one training step, from XLA:CPU's own trace events.

    XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true \
        python benchmarks/kernel_timings/profile_step.py [B,T,I,H] [backend|flax] [lstm|gru|rnn]

Prints, for the jitted ``grad(sum(ys))``, each HLO operation's total time per
step, its count per step and its mean (e.g. ``ynn_fusion 256x 45 us``: a dot
run once per time step). Without the flag XLA emits no per-operation events.
This is how docs/TIMINGS.md's per-step breakdowns were taken.
"""
import collections
import glob
import gzip
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp

import lstm_jax as lj

NETWORKS = {"lstm": (lj.init_lstm, lj.lstm), "gru": (lj.init_gru, lj.gru), "rnn": (lj.init_rnn, lj.rnn)}


def profile(fn, args, runs=3):
    """{operation name: (calls per run, seconds per run)} over ``runs`` traced calls of ``fn``."""
    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(runs):
            jax.block_until_ready(fn(*args))
        jax.profiler.stop_trace()
        (trace,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
        events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals = collections.defaultdict(lambda: [0, 0.0])
    for event in events:
        if event.get("ph") == "X" and not event["name"].startswith(("$", "ThunkExecutor", "Pjit")):
            totals[event["name"]][0] += 1
            totals[event["name"]][1] += event.get("dur", 0) * 1e-6
    return {name: (count // runs, seconds / runs) for name, (count, seconds) in totals.items()}


def main():
    batch, steps, inputs, hidden = (int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "32,256,64,128").split(","))
    backend = sys.argv[2] if len(sys.argv) > 2 else "auto"
    init, run = NETWORKS[sys.argv[3] if len(sys.argv) > 3 else "lstm"]
    params = init(jax.random.key(0), inputs, hidden)
    xs = jax.random.normal(jax.random.key(1), (batch, steps, inputs))
    if backend == "flax":
        import flax.linen as nn

        model = nn.RNN(nn.OptimizedLSTMCell(hidden))
        params = {"params": {"cell": lj.to_flax(params.layers[0][0])}}
        loss = lambda p, x: jnp.sum(model.apply(p, x))  # noqa: E731
    else:
        loss = lambda p, x: jnp.sum(run(p, x, backend=backend)[0])  # noqa: E731
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    temp = step.lower(params, xs).compile().memory_analysis().temp_size_in_bytes
    rows = sorted(profile(step, (params, xs)).items(), key=lambda item: -item[1][1])
    print(f"(B, T, I, H) = {(batch, steps, inputs, hidden)}, {backend}: temp memory {temp / 2**20:.1f} MiB")
    for name, (count, seconds) in rows[:40]:
        print(f"{1e3 * seconds:9.2f} ms  {count:6d}x  {1e6 * seconds / max(count, 1):9.2f} us  {name}")


if __name__ == "__main__":
    main()
