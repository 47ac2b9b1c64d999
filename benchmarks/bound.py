"""``python -m benchmarks.bound``: the fastest an XLA LSTM training step can be on this machine.

A one-layer LSTM training step (forward + backward over ``T`` steps) must run
these matrix products, whatever the implementation:

* sequential, one pair per time step: ``h @ w_hh`` (forward) and
  ``dz @ w_hh^T`` (backward), each ``(B, H) x (H, 4H)`` sized; step ``t``
  needs the result of step ``t - 1``, so they cannot be batched;
* batched over all ``T * B`` rows: the input projection ``x @ w_ih``, the
  weight gradient ``[x, h_prev]^T @ dz`` and the input gradient
  ``dz @ w_ih^T``.

This tool times exactly those products with XLA on this machine (the
sequential pair in a ``lax.fori_loop`` with nothing else in it, the batched
ones, then all of them in one jitted call) and divides Flax's measured
training step by the time of that one call: the largest speed-up over Flax that any
implementation built on XLA's matmuls can reach here, with gate math, memory
traffic and loop overhead all free. ``lstm_jax`` (``backend="auto"``) and
Flax are timed in the same process, interleaved, after checking that their
gradients agree. Results: ``bound.json`` and ``bound.md`` beside the
benchmark suite's results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["main", "measure_config", "TARGET_CONFIGS"]

#: (batch, time, input, hidden): the training-step targets of the kernels issue.
TARGET_CONFIGS = [(8, 512, 32, 64), (64, 128, 128, 256), (32, 256, 64, 128), (128, 64, 256, 512)]
TINY_CONFIGS = [(4, 16, 8, 16)]


def _interleaved_medians(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds per call, round-robin over ``fns`` after two warm-up calls each."""
    for fn in fns.values():
        jax.block_until_ready(fn())
        jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _training_steps(batch, steps, inputs, hidden, seed):
    """Jitted ``grad`` of ``sum(ys)`` for lstm_jax and Flax on the same weights and inputs."""
    import flax.linen as nn

    import lstm_jax as lj

    params = lj.init_lstm(jax.random.key(seed), inputs, hidden)
    xs = jax.random.normal(jax.random.key(seed + 1), (batch, steps, inputs))
    model = nn.RNN(nn.OptimizedLSTMCell(hidden))
    flax_params = {"params": {"cell": lj.to_flax(params.layers[0][0])}}
    ours = jax.jit(jax.grad(lambda p, x: jnp.sum(lj.lstm(p, x)[0]), argnums=(0, 1)))
    flax = jax.jit(jax.grad(lambda p, x: jnp.sum(model.apply(p, x)), argnums=(0, 1)))
    gx_ours, gx_flax = ours(params, xs)[1], flax(flax_params, xs)[1]
    error = float(jnp.max(jnp.abs(gx_ours - gx_flax)) / jnp.max(jnp.abs(gx_flax)))
    if not error < 1e-4:
        raise AssertionError(f"lstm_jax and Flax disagree: input-gradient relative error {error:.2e}")
    return (lambda: ours(params, xs)), (lambda: flax(flax_params, xs)), error


def _matmul_kernels(batch, steps, inputs, hidden, seed):
    """Thunks: the sequential pair of products (in a loop), the batched ones, and both in one call."""
    keys = jax.random.split(jax.random.key(seed), 5)
    rows = steps * batch
    h0 = jax.random.normal(keys[0], (batch, hidden))
    w_hh = jax.random.normal(keys[1], (hidden, 4 * hidden)) / hidden
    w_hh_t = jnp.asarray(w_hh.T)  # transposed once, as a kernel would
    w_ih = jax.random.normal(keys[2], (inputs, 4 * hidden))
    x_rows = jax.random.normal(keys[3], (rows, inputs))
    xh_rows = jax.random.normal(keys[4], (rows, inputs + hidden))
    dz_rows = jax.random.normal(keys[0], (rows, 4 * hidden))

    @jax.jit
    def sequential(h, w, w_t):
        # forward (B,H)@(H,4H) then backward (B,4H)@(4H,H) each step; nothing else
        return jax.lax.fori_loop(0, steps, lambda _, h: (h @ w) @ w_t, h)

    @jax.jit
    def batched(x, xh, dz, w_ih):
        return x @ w_ih, xh.T @ dz, dz @ w_ih.T

    @jax.jit
    def both(h, w, w_t, x, xh, dz, w_ih):  # one dispatch, as in a real training step
        return sequential(h, w, w_t), batched(x, xh, dz, w_ih)

    flops_sequential = 2 * steps * 2 * batch * hidden * 4 * hidden
    flops_batched = 2 * rows * 4 * hidden * (inputs + (inputs + hidden) + inputs)
    return (
        (lambda: sequential(h0, w_hh, w_hh_t)),
        (lambda: batched(x_rows, xh_rows, dz_rows, w_ih)),
        (lambda: both(h0, w_hh, w_hh_t, x_rows, xh_rows, dz_rows, w_ih)),
        flops_sequential,
        flops_batched,
    )


def measure_config(batch: int, steps: int, inputs: int, hidden: int, *, reps: int = 9, seed: int = 0) -> dict:
    """Times the bound's parts and both training steps for one configuration; returns a row."""
    ours, flax, error = _training_steps(batch, steps, inputs, hidden, seed)
    sequential, batched, both, flops_seq, flops_batched = _matmul_kernels(batch, steps, inputs, hidden, seed)
    medians = _interleaved_medians(
        {"sequential": sequential, "batched": batched, "both": both, "lstm_jax": ours, "flax": flax}, reps
    )
    bound = medians["both"]
    return {
        "config": {"batch": batch, "time": steps, "input": inputs, "hidden": hidden},
        "sequential_matmuls_s": medians["sequential"],
        "sequential_gflops": flops_seq / medians["sequential"] / 1e9,
        "batched_matmuls_s": medians["batched"],
        "batched_gflops": flops_batched / medians["batched"] / 1e9,
        "bound_s": bound,
        "flax_s": medians["flax"],
        "lstm_jax_s": medians["lstm_jax"],
        "max_speedup_over_flax": medians["flax"] / bound,
        "lstm_jax_speedup_over_flax": medians["flax"] / medians["lstm_jax"],
        "lstm_jax_fraction_of_bound": bound / medians["lstm_jax"],
        "input_grad_rel_error_vs_flax": error,
    }


def _gemm_peak(reps: int) -> dict:
    """XLA's float32 GEMM speed on large square matrices (all cores), GFLOP/s."""
    out = {}
    for n in (1024, 2048):
        a = jnp.ones((n, n), jnp.float32)
        f = jax.jit(lambda a: a @ a)
        seconds = _interleaved_medians({"gemm": lambda: f(a)}, max(3, reps // 3))["gemm"]
        out[str(n)] = 2 * n**3 / seconds / 1e9
    return out


def _geomean(values) -> float:
    return float(np.exp(np.mean(np.log(np.asarray(values)))))


def write_markdown(results: dict, path: str) -> None:
    rows = results["rows"]
    lines = [
        f"# Matmul-only bound on a training step ({results['machine']['cpu']}, "
        f"{results['machine']['cores']} cores, {results['date']})",
        "",
        f"Command: `{results['command']}`. XLA float32 GEMM peak here: "
        + ", ".join(f"{n}^3 {g:.0f} GFLOP/s" for n, g in results["gemm_peak_gflops"].items())
        + ". Medians of interleaved runs; see `benchmarks/bound.py` for what is timed.",
        "",
        "| (B, T, I, H) | sequential matmuls | batched matmuls | bound | Flax | lstm_jax[auto] "
        "| max speed-up (Flax / bound) | lstm_jax speed-up | lstm_jax / bound |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r["config"]
        lines.append(
            f"| ({c['batch']}, {c['time']}, {c['input']}, {c['hidden']}) "
            f"| {1e3 * r['sequential_matmuls_s']:.1f} ms ({r['sequential_gflops']:.0f} GFLOP/s) "
            f"| {1e3 * r['batched_matmuls_s']:.1f} ms ({r['batched_gflops']:.0f} GFLOP/s) "
            f"| {1e3 * r['bound_s']:.1f} ms | {1e3 * r['flax_s']:.1f} ms | {1e3 * r['lstm_jax_s']:.1f} ms "
            f"| {r['max_speedup_over_flax']:.2f}x | {r['lstm_jax_speedup_over_flax']:.2f}x "
            f"| {100 * r['lstm_jax_fraction_of_bound']:.0f}% |"
        )
    g = results["geomean"]
    lines.append(
        f"| **geomean** | | | | | | **{g['max_speedup_over_flax']:.2f}x** "
        f"| **{g['lstm_jax_speedup_over_flax']:.2f}x** | |"
    )
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bound", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="one tiny configuration (a smoke test)")
    parser.add_argument("--reps", type=int, default=9, help="interleaved repetitions per measurement")
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/results/<machine>)")
    args = parser.parse_args(argv)

    from benchmarks.cli import default_out_dir
    from benchmarks.machine import machine_info, run_info, versions

    configs = TINY_CONFIGS if args.tiny else TARGET_CONFIGS
    rows = []
    for config in configs:
        row = measure_config(*config, reps=args.reps)
        rows.append(row)
        print(
            f"{config}: bound {1e3 * row['bound_s']:.1f} ms, Flax {1e3 * row['flax_s']:.1f} ms, "
            f"lstm_jax {1e3 * row['lstm_jax_s']:.1f} ms -> max {row['max_speedup_over_flax']:.2f}x, "
            f"lstm_jax {row['lstm_jax_speedup_over_flax']:.2f}x",
            flush=True,
        )
    results = {
        "machine": machine_info(),
        "versions": versions(),
        **run_info(["python -m benchmarks.bound", *argv]),
        "gemm_peak_gflops": _gemm_peak(args.reps),
        "rows": rows,
        "geomean": {
            key: _geomean([r[key] for r in rows])
            for key in ("max_speedup_over_flax", "lstm_jax_speedup_over_flax")
        },
        "load_average": list(os.getloadavg()),
    }
    out_dir = args.out or default_out_dir("quick")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bound.json"), "w") as f:
        json.dump(results, f, indent=2)
    write_markdown(results, os.path.join(out_dir, "bound.md"))
    g = results["geomean"]
    print(f"geomean: max {g['max_speedup_over_flax']:.2f}x, lstm_jax {g['lstm_jax_speedup_over_flax']:.2f}x; "
          f"wrote {out_dir}/bound.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
