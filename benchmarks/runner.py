"""Check, compile and time every peer on every case; interleaved, in one process.

For each case (a configuration and a workload):

1. Every peer gets the same parameters, inputs and target (seeded).
2. Fairness check, before any timing. (a) On a slice of the case's input
   (batch <= 4, time <= 32; the same weights, layers, directions and dtype) the
   peer's outputs, loss and gradients, mapped back to our layout, must match
   ``lstm_jax`` with the ``scan`` backend in float32. (b) At full size the
   peer's first step must match the reference's: the outputs (inference) or
   the loss before the first update (training). A peer that fails is reported
   ``invalid`` and is not timed.
3. Compile (timed apart), one more warm-up step, then rounds: in each round
   every valid peer runs one step, in an order shuffled every round (seeded),
   so drift of the machine is shared and no peer always runs right after the
   same other one (PyTorch's OpenMP threads keep spinning for a while after
   its step: with a fixed cyclic order the peer after it paid for that in most
   rounds); the speed-ups are ratios from the same rounds.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
import resource
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax as lj
from benchmarks import peers as peers_lib
from benchmarks.grid import Case, Config, Grid
from benchmarks.machine import cpu_counters, fma_peak, load_average, measure_flop_peak, nominal_peak, others_cpu

__all__ = ["TOLERANCES", "CHECK_BATCH", "CHECK_TIME", "make_inputs", "run"]

# Tolerances of the fairness check, against lstm_jax[scan] in float32.
# outputs: max |ys - ys_ref|; grads: max |g - g_ref| / max |g_ref|;
# loss: |loss - loss_ref| / loss_ref. bfloat16 peers compute in bf16 (each its
# own way: lstm_jax casts matmul inputs only, Flax and Equinox run the gate math
# in bf16 too, PyTorch autocast), hence the looser bound; measured differences
# are ~1e-7 in float32 and <= 1.3e-2 in bf16.
TOLERANCES = {
    "float32": {"outputs": 1e-4, "grads": 1e-4, "loss": 1e-4},
    "bfloat16": {"outputs": 5e-2, "grads": 5e-2, "loss": 2e-2},
}
CHECK_BATCH = 4
CHECK_TIME = 32


def make_inputs(config: Config, seed: int = 0):
    """``(params, x, target)``: float32 params (PyTorch-style init; ``GRUParams`` for GRU
    cases), ``x ~ N(0, 1)``, ``target ~ N(0, 0.25)``, the same for every peer. With
    ``config.reset_rate``, ``x`` is ``WithResets(xs, resets)``, ``resets`` Bernoulli (B, T)."""
    key = jax.random.key(seed)
    k_params, k_x, k_y = jax.random.split(key, 3)  # as before resets existed: same cases, same data
    init = lj.init_gru if config.cell == "gru" else lj.init_lstm
    params = init(
        k_params, config.input, config.hidden,
        num_layers=config.layers, bidirectional=config.bidirectional,
    )  # fmt: skip
    x = jax.random.normal(k_x, (config.batch, config.time, config.input), jnp.float32)
    if config.reset_rate:
        k_resets = jax.random.fold_in(key, 3)
        resets = jax.random.bernoulli(k_resets, config.reset_rate, (config.batch, config.time))
        x = peers_lib.WithResets(x, resets)
    target = 0.5 * jax.random.normal(
        k_y, (config.batch, config.time, config.directions * config.hidden), jnp.float32
    )
    return params, x, target


def _leading(tree, batch: int, time: int):
    """Every array of ``tree`` cut to its first ``batch`` rows and ``time`` steps."""
    return jax.tree_util.tree_map(lambda a: a[:batch, :time], tree)


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def _grad_rel(grads, ref_grads) -> float:
    leaves = jax.tree_util.tree_leaves(grads)
    ref_leaves = jax.tree_util.tree_leaves(ref_grads)
    if len(leaves) != len(ref_leaves):
        return float("inf")
    scale = max(float(np.max(np.abs(r))) for r in ref_leaves) or 1.0
    return max(_max_abs(g, r) for g, r in zip(leaves, ref_leaves)) / scale


class _Checker:
    """The small-slice check, once per (peer, input, hidden, layers, directions, dtype)."""

    def __init__(self):
        self.reference = peers_lib.LstmJaxPeer("scan")
        self._ref_cache: dict = {}
        self._cache: dict = {}

    def check(self, peer, params, x, target, config: Config) -> dict:
        small = dataclasses.replace(
            config, batch=min(config.batch, CHECK_BATCH), time=min(config.time, CHECK_TIME)
        )
        # Params depend on the seed and these sizes only: one check per peer and shape family.
        key = (peer.name, dataclasses.replace(config, batch=0, time=0))
        if key in self._cache:
            return self._cache[key]
        xs, ys_target = _leading((x, target), small.batch, small.time)
        ref_key = dataclasses.replace(small, dtype="float32")
        if ref_key not in self._ref_cache:
            self._ref_cache[ref_key] = self.reference.reference_outputs_and_grads(
                params, xs, ys_target, ref_key
            )
        ref_ys, ref_loss, ref_grads = self._ref_cache[ref_key]
        if peer.name == peers_lib.REFERENCE and config.dtype == "float32":
            ys, loss, grads = ref_ys, ref_loss, ref_grads  # the reference itself
        else:
            ys, loss, grads = peer.reference_outputs_and_grads(params, xs, ys_target, small)
        tol = TOLERANCES[config.dtype]
        result = {
            "check_shape": [small.batch, small.time],
            "outputs_max_abs_diff": _max_abs(ys, ref_ys) if ys.shape == ref_ys.shape else None,
            "grads_max_rel_diff": _grad_rel(grads, ref_grads),
            "check_loss_rel_diff": abs(loss - ref_loss) / max(abs(ref_loss), 1e-12),
        }
        result["check_passed"] = bool(
            result["outputs_max_abs_diff"] is not None
            and result["outputs_max_abs_diff"] <= tol["outputs"]
            and result["grads_max_rel_diff"] <= tol["grads"]
            and result["check_loss_rel_diff"] <= tol["loss"]
        )
        self._cache[key] = result
        return result


def _full_size_diff(first, ref_first, workload: str) -> tuple[str, float]:
    if workload == "infer":
        first = np.asarray(first.detach().float().cpu().numpy() if hasattr(first, "detach") else first)
        if first.shape != np.shape(ref_first):
            return "outputs_max_abs_diff", float("inf")
        return "outputs_max_abs_diff", _max_abs(first, ref_first)
    loss = float(first.item() if hasattr(first, "item") else first)
    return "loss_rel_diff", abs(loss - float(ref_first)) / max(abs(float(ref_first)), 1e-12)


def _as_numpy(value):
    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, np.float32)


def _stats(times: Sequence[float], tokens: int) -> dict:
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return {
        "times_s": [float(t) for t in times],
        "median_s": float(median),
        "q1_s": float(q1),
        "q3_s": float(q3),
        "min_s": float(min(times)),
        "max_s": float(max(times)),
        "tokens_per_s": tokens / float(median),
    }


# A round times back-to-back steps of one peer for at least this long (their mean is
# the round's sample): one short step alone is at the mercy of a thread's wake-up.
MIN_ROUND_S = 0.03
MAX_CALLS_PER_ROUND = 32


def calls_per_round(step_s: float) -> int:
    """Steps per timed round for a step of ``step_s`` seconds: enough for
    :data:`MIN_ROUND_S`, at most :data:`MAX_CALLS_PER_ROUND`."""
    return int(min(MAX_CALLS_PER_ROUND, max(1, math.ceil(MIN_ROUND_S / max(step_s, 1e-9)))))


def _run_case(case: Case, peers: list, grid: Grid, checker: _Checker, seed: int, note) -> list:
    config, workload = case.config, case.workload
    params, x, target = make_inputs(config, seed)
    rows, live = [], []  # live: (row, prepared)
    base = {"config": config.as_dict(), "label": config.label, "workload": workload,
            "tags": list(case.tags), "matmul_flops": config.matmul_flops(workload)}  # fmt: skip

    # Reference values at full size: the first step of lstm_jax[scan] in float32;
    # the timed scan peer's own first step when it runs this case in float32.
    reference = {}
    if config.dtype == "float32":
        peers = sorted(peers, key=lambda p: p.name != peers_lib.REFERENCE)

    def reference_first():
        if "first" not in reference:
            ref_config = dataclasses.replace(config, dtype="float32")
            prepared = peers_lib.LstmJaxPeer("scan").prepare(params, x, target, ref_config, workload)
            reference["first"] = _as_numpy(prepared.step())
        return reference["first"]

    for peer in peers:
        row = {**base, "peer": peer.name, "status": None, "same_function": None}
        rows.append(row)
        reason = peer.unsupported(config)
        if reason:
            row.update(status="unsupported", note=reason)
            continue
        try:
            note(f"{config.label} {workload}: checking {peer.name}")
            row.update(checker.check(peer, params, x, target, config))
            note(f"{config.label} {workload}: compiling {peer.name}")
            prepared = peer.prepare(params, x, target, config, workload)
            start = time.perf_counter()
            first = prepared.step()
            row["first_step_s"] = time.perf_counter() - start
            if peer.name == peers_lib.REFERENCE and config.dtype == "float32":
                reference["first"] = _as_numpy(first)  # scan in float32 is the reference
            kind, diff = _full_size_diff(first, reference_first(), workload)
            row[f"full_{kind}"] = diff
            tol = TOLERANCES[config.dtype]["outputs" if workload == "infer" else "loss"]
            row["same_function"] = bool(row["check_passed"] and diff <= tol)
            row["tolerances"] = TOLERANCES[config.dtype]
            row.update(compile_s=prepared.compile_s, memory_bytes=prepared.memory_bytes,
                       memory_kind=prepared.memory_kind)  # fmt: skip
            if not row["same_function"]:
                row.update(status="invalid", note="differs from lstm_jax[scan]; not timed")
                continue
            if prepared.extra_warmup:
                prepared.step()
            start = time.perf_counter()
            prepared.step()
            row["warmup_s"] = time.perf_counter() - start
            row["calls_per_round"] = calls_per_round(row["warmup_s"])
            live.append((row, prepared))
        except peers_lib.Unsupported as reason:
            row.update(status="unsupported", note=str(reason))
        except Exception as error:  # one broken peer must not stop the suite
            row.update(status="error", note=f"{type(error).__name__}: {str(error)[:300]}")

    if live:
        estimate = sum(row["warmup_s"] * row["calls_per_round"] for row, _ in live)
        repeats = max(grid.min_repeats, min(grid.repeats, int(grid.budget_s / max(estimate, 1e-9))))
        times = {id(row): [] for row, _ in live}
        note(f"{config.label} {workload}: timing {len(live)} peers x {repeats} rounds")
        order = random.Random(f"{config.label} {workload}")
        for _ in range(repeats):
            for row, prepared in order.sample(live, len(live)):
                start = time.perf_counter()
                for _ in range(row["calls_per_round"]):
                    prepared.step()
                times[id(row)].append((time.perf_counter() - start) / row["calls_per_round"])
        for row, prepared in live:
            row.update(_stats(times[id(row)], config.batch * config.time))
            row.update(status="ok", repeats=repeats)
            if prepared.measure_memory is not None:
                try:
                    row["memory_bytes"] = prepared.measure_memory()
                except Exception as error:
                    row["memory_note"] = f"{type(error).__name__}: {error}"
    del live
    gc.collect()
    return rows


def run(
    grid: Grid,
    peers: Optional[list] = None,
    *,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
    time_limit_s: Optional[float] = None,
) -> dict:
    """Run ``grid`` over ``peers`` (default: every peer) and return the results dict.

    The dict holds ``peers`` (availability of each), ``rows`` (one per case and
    peer: status, same_function, check differences, timings, compile time,
    memory), ``cases_not_run`` (as "label workload": the cases reached after
    ``time_limit_s`` seconds, which are not started) and the settings;
    :mod:`benchmarks.report` adds machine, versions and speed-ups when it writes
    the files.
    """
    from tqdm import tqdm

    peers = peers_lib.all_peers() if peers is None else list(peers)
    peer_status = []
    available = []
    for peer in peers:
        reason = peer.unavailable()
        peer_status.append({"name": peer.name, "description": peer.description,
                            "available": reason is None, "reason": reason})  # fmt: skip
        if reason is None:
            available.append(peer)
        else:
            log(f"peer {peer.name} unavailable: {reason}")
    checker = _Checker()
    rows = []
    load_start, counters_start, wall_start = load_average(), cpu_counters(), time.perf_counter()
    flop_peak = measure_flop_peak()
    fma_measured = fma_peak() if peers_lib.platform() == "cpu" else None
    log(f"float32 peak: {flop_peak / 1e9:.0f} GFLOP/s (jitted 2048^3 GEMM, best of 7); "
        f"load average {load_start}")  # fmt: skip
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    bar = tqdm(grid.cases, desc=f"benchmarks ({grid.name})", unit="case", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)  # fmt: skip
    cases_not_run = []
    for case in bar:
        if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
            cases_not_run.append(f"{case.config.label} {case.workload}")
            continue
        case_peers = [
            p for p in available if case.peers is None or peers_lib.matches(p.name, case.peers)
        ]
        rows += _run_case(case, case_peers, grid, checker, seed,
                          note=lambda text: bar.set_postfix_str(text[:70], refresh=True))  # fmt: skip
    bar.close()
    return {
        "grid": grid.name,
        "peers": peer_status,
        "rows": rows,
        "cases_not_run": cases_not_run,
        "elapsed_s": time.perf_counter() - start,
        "flop_peak": flop_peak,
        # the CPU's: it says nothing of a step that runs on a GPU or TPU
        "nominal_peak": nominal_peak() if peers_lib.platform() == "cpu" else None,
        "fma_peak": fma_measured,
        "load_average": {"start": load_start, "end": load_average()},
        "others_cpu": others_cpu(counters_start, cpu_counters(), time.perf_counter() - wall_start),
        "cpu_s": _cpu_seconds() - cpu_start,
        "settings": {
            "seed": seed,
            "repeats": grid.repeats,
            "min_repeats": grid.min_repeats,
            "round_budget_s": grid.budget_s,
            "min_round_s": MIN_ROUND_S,
            "learning_rate": peers_lib.LEARNING_RATE,
            "loss": "mean((ys - target)**2) in float32",
            "optimizer": "Adam (optax.adam / torch.optim.Adam), default betas and eps",
            "reference": peers_lib.REFERENCE,
            "baseline": peers_lib.BASELINE,
            "tolerances": TOLERANCES,
            "check_slice": {"batch": CHECK_BATCH, "time": CHECK_TIME},
            "torch_threads": _torch_threads(),
            "float32_matmuls": "true float32 (jax_default_matmul_precision=float32, no TF32)",
        },
    }


def _cpu_seconds() -> float:
    """User + system CPU time of this process (with its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _torch_threads() -> Optional[int]:
    torch = sys.modules.get("torch")  # only when the PyTorch peer ran
    return None if torch is None else torch.get_num_threads()
