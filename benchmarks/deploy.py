"""Time per inference call of the deployed forms of one model (issue 18, docs/deploy.md).

For each case, the same weights and inputs run as:

* ``jit``: ``jax.jit(lj.lstm)`` (or ``gru``) with the default backend, in this process;
* ``export auto``: ``jax.export`` of it with ``lj.export_safety_checks()``,
  serialised, deserialised and called, through ``Exported.call`` itself and
  through ``jax.jit(Exported.call)`` (which skips ``call``'s per-call
  argument checks in Python, ~0.2 ms);
* ``export portable``: the same with ``backend="fused"`` (LSTM) / ``"scan"`` (GRU);
* ``onnxruntime``: ``lj.to_onnx`` in an ``onnxruntime.InferenceSession`` (CPU,
  its default thread count).

Outputs are checked against ``jit`` first. Rounds interleave the routes (order
shuffled per round) so load from other processes spreads over all of them;
the median and the minimum over rounds are reported, compile / session set-up
time apart.

    python -m benchmarks.deploy [--rounds 40]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

import lstm_jax as lj
from benchmarks.machine import cpu_model, num_cores

# (cell, batch, steps, inputs, hidden, layers, bidirectional)
CASES = (
    ("lstm", 1, 2, 3, 8, 1, False),  # tiny: the fixed cost of a call
    ("lstm", 32, 128, 64, 128, 1, False),
    ("lstm", 32, 128, 64, 128, 2, True),
    ("gru", 32, 128, 64, 128, 1, False),
)
PORTABLE = {"lstm": "fused", "gru": "scan"}


def _routes(cell, params, xs, lengths):
    """name -> (set-up seconds, a function of no arguments returning numpy outputs)."""
    fn = {"lstm": lj.lstm, "gru": lj.gru}[cell]
    routes = {}

    def jax_route(backend, exported, wrap_call=True):
        def f(p, x, n):
            ys, state = fn(p, x, seq_lengths=n, backend=backend)
            return ys, state

        start = time.perf_counter()
        if exported:
            checks = lj.export_safety_checks() if backend == "auto" else []
            exp = export.export(jax.jit(f), disabled_checks=checks)(params, xs, lengths)
            call = export.deserialize(exp.serialize()).call
            if wrap_call:  # Exported.call checks its arguments in Python on every call
                call = jax.jit(call)
        else:
            call = jax.jit(f)
        jax.block_until_ready(call(params, xs, lengths))
        setup = time.perf_counter() - start
        return setup, lambda: jax.block_until_ready(call(params, xs, lengths))

    routes["jit"] = jax_route("auto", False)
    routes["export auto, .call"] = jax_route("auto", True, wrap_call=False)
    routes["export auto, jit(.call)"] = jax_route("auto", True)
    routes[f"export portable ({PORTABLE[cell]}), jit(.call)"] = jax_route(PORTABLE[cell], True)
    import onnxruntime as ort

    start = time.perf_counter()
    session = ort.InferenceSession(lj.to_onnx(params).SerializeToString(),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    feeds = {"xs": np.asarray(xs), "seq_lengths": np.asarray(lengths)}
    session.run(None, feeds)
    routes["onnxruntime"] = (time.perf_counter() - start, lambda: session.run(None, feeds))
    return routes


def run_case(case, rounds):
    cell, batch, steps, inputs, hidden, layers, bidirectional = case
    init = {"lstm": lj.init_lstm, "gru": lj.init_gru}[cell]
    params = init(jax.random.key(0), inputs, hidden, num_layers=layers, bidirectional=bidirectional)
    xs = jax.random.normal(jax.random.key(1), (batch, steps, inputs))
    lengths = jnp.full((batch,), steps, jnp.int32)
    routes = _routes(cell, params, xs, lengths)
    reference = [np.asarray(a) for a in jax.tree_util.tree_leaves(routes["jit"][1]())]
    for name, (_, call) in routes.items():
        got = [np.asarray(a) for a in jax.tree_util.tree_leaves(call())]
        error = max(float(np.max(np.abs(a - b))) for a, b in zip(got, reference, strict=True))
        assert error < 1e-4, (name, error)
    times = {name: [] for name in routes}
    names = list(routes)
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            start = time.perf_counter()
            routes[name][1]()
            times[name].append(time.perf_counter() - start)
    label = (f"{cell.upper()} B{batch} T{steps} I{inputs} H{hidden} L{layers}"
             + (" bidirectional" if bidirectional else ""))  # fmt: skip
    jit_ms = 1e3 * statistics.median(times["jit"])
    rows = []
    for name in routes:
        ms, best = 1e3 * statistics.median(times[name]), 1e3 * min(times[name])
        rows.append(f"| {label} | {name} | {ms:.3g} | {best:.3g} | {jit_ms / ms:.2f}x "
                    f"| {routes[name][0]:.2f} |")  # fmt: skip
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    import onnxruntime

    print(f"{cpu_model()}, {num_cores()} cores; jax {jax.__version__}, onnxruntime "
          f"{onnxruntime.__version__}; load average before: {os.getloadavg()}")  # fmt: skip
    print("| Case | Route | ms per call (median) | ms (min) | speed vs jit (medians) | set-up s |")
    print("|---|---|---:|---:|---:|---:|")
    for case in CASES:
        for row in run_case(case, args.rounds):
            print(row, flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
