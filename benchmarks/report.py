"""Speed-ups, and the files a run writes: ``results.json``, ``results.md`` and PNG plots."""

from __future__ import annotations

import json
import math
import os
from typing import Optional

from benchmarks.machine import OTHERS_LIMIT_CORES, busy, others_busy
from benchmarks.peers import BASELINE, BASELINES

__all__ = [
    "NOISY_SPREAD", "PLOTS", "SCHEMA_VERSION", "geomeans", "iqr_share", "markdown",
    "not_judged_reasons", "plot", "speedups", "verdict", "write",
]

SCHEMA_VERSION = 1
PLOTS = ("speedup.png", "scaling.png", "memory.png")


def _case_key(row: dict) -> tuple:
    return (row["label"], row["workload"])


def _ok(row: dict) -> bool:
    return row.get("status") == "ok" and row.get("median_s")


def _is_gru(label: str) -> bool:
    return label.startswith("GRU ")  # Config.label


def _has_resets(label: str) -> bool:
    return " resets " in f"{label} "  # Config.label


def _baseline(label: str) -> str:
    """The Flax peer a case (its ``Config.label``) is compared with: ``BASELINES`` by cell."""
    return BASELINES["gru" if _is_gru(label) else "lstm"]


def speedups(rows: list) -> list:
    """``[{label, workload, peer, speedup}]``: the baseline's median step time
    divided by the peer's, from the same interleaved rounds (> 1: faster). The
    baseline is Flax's cell of the case's kind (:data:`BASELINES`)."""
    base = {_case_key(r): r["median_s"] for r in rows
            if r["peer"] == _baseline(r["label"]) and _ok(r)}  # fmt: skip
    out = []
    for row in rows:
        key = _case_key(row)
        if _ok(row) and key in base:
            out.append({"label": row["label"], "workload": row["workload"], "peer": row["peer"],
                        "tags": row.get("tags", []), "speedup": base[key] / row["median_s"]})  # fmt: skip
    return out


def _geomean(values: list) -> Optional[float]:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _group(row: dict) -> str:
    """The workload, ``" bf16"`` after it for bfloat16 cases, ``"GRU "`` before it for
    GRU cases, ``"resets "`` for cases with resets and ``"RL "`` for the RL case's shape
    without them (tagged ``rl``; kept out of the targets' geomeans): ``train``, ``GRU
    infer bf16``..."""
    label = row["label"]
    rl_plain = "rl" in row.get("tags", ()) and not _has_resets(label)
    prefix = (("GRU " if _is_gru(label) else "") + ("resets " if _has_resets(label) else "")
              + ("RL " if rl_plain else ""))  # fmt: skip
    return prefix + row["workload"] + (" bf16" if row["label"].endswith(" bf16") else "")


def _group_order(group: str) -> tuple:
    """LSTM before GRU, plain before RL and resets, float32 before bf16, train before infer."""
    return (group.startswith("GRU "), "RL " in group, "resets " in group, group.endswith(" bf16"),
            "infer" in group)  # fmt: skip


def _groups(rows: list) -> list:
    """The groups of ``rows`` (:func:`_group`) in :func:`_group_order`, then ``"all"``."""
    return sorted({_group(r) for r in rows}, key=_group_order) + ["all"]


def geomeans(speedup_rows: list) -> list:
    """Geometric mean speed-up per peer: per :func:`_group` (float32 and bfloat16,
    LSTM and GRU, with and without resets apart) and over all cases."""
    out = []
    peers = list(dict.fromkeys(s["peer"] for s in speedup_rows))
    for workload in _groups(speedup_rows):
        for peer in peers:
            values = [s["speedup"] for s in speedup_rows
                      if s["peer"] == peer and workload in ("all", _group(s))]  # fmt: skip
            if values:
                out.append({"peer": peer, "workload": workload, "geomean": _geomean(values),
                            "cases": len(values)})  # fmt: skip
    return out


def _peer_order(results: dict) -> list:
    seen = {r["peer"] for r in results["rows"]}
    return [p["name"] for p in results["peers"] if p["name"] in seen]


def _cell(row: Optional[dict], speedup: Optional[float]) -> str:
    if row is None:
        return "—"
    if row["status"] == "ok":
        return f"{speedup:.2f}×" if speedup is not None else f"{row['median_s'] * 1e3:.3g} ms"
    return {"invalid": "invalid", "unsupported": "unsup.", "error": "error"}.get(row["status"], "?")


def _mib(value) -> str:
    return "" if value is None else f"{value / 2**20:.1f}"


def _share(row: dict, peak: Optional[float]) -> str:
    """The row's matmul FLOP rate as a percentage of the machine's peak."""
    if not peak or not row.get("matmul_flops"):
        return ""
    return f"{100 * row['matmul_flops'] / row['median_s'] / peak:.1f}"


# The targets: lstm_jax's default against Flax (geomean of float32 LSTM training)
# and against PyTorch (every case, float32 and bfloat16, LSTM and GRU). The Flax
# target depends on the instruction set the native kernels ran (the measured FMA
# peak's): issue 22 keeps issue 11's 2.12x for AVX-512 and sets 2.0x for AVX2
# (and anything else).
TARGET_PEER, TARGET_RIVAL = "lstm_jax[auto]", "torch"
TRAIN_GEOMEAN_TARGETS = {"avx512": 2.12}
DEFAULT_TRAIN_GEOMEAN_TARGET = 2.0


def train_geomean_target(results: dict) -> float:
    """The float32 LSTM training geomean target (x Flax) for the native kernels' instruction
    set in ``results`` (``fma_peak["isa"]``; 2.0 where none was measured)."""
    isa = (results.get("fma_peak") or {}).get("isa")
    return TRAIN_GEOMEAN_TARGETS.get(isa, DEFAULT_TRAIN_GEOMEAN_TARGET)

# A row whose interquartile range exceeds this share of its median is noisy: no
# verdict rests on it.
NOISY_SPREAD = 0.15
_SHOWN_REASONS = 2


def iqr_share(row: dict) -> Optional[float]:
    """``(q3 - q1) / median`` of a timed row; None when it was not timed."""
    if not row.get("median_s") or row.get("q3_s") is None:
        return None
    return (row["q3_s"] - row["q1_s"]) / row["median_s"]


def _load_reasons(results: dict) -> list:
    """``["others used 0.60 cores"]`` when other processes kept the machine busy during
    the run (:func:`benchmarks.machine.others_busy`); for results without that
    reading, ``["load 3.10 on 2 cores"]`` when the 1-minute load average exceeded the
    cores at the start or the end (:func:`benchmarks.machine.busy`); else ``[]``."""
    others = results.get("others_cpu")
    if others is not None:
        return [f"others used {others['cores']:.2f} cores"] if others_busy(others) else []
    cores = results.get("machine", {}).get("cores")
    loads = [v for v in (results.get("load_average") or {}).values() if v]
    if not cores or not any(busy(load, cores) for load in loads):
        return []
    return [f"load {max(load[0] for load in loads):.2f} on {cores} cores"]


def _spread_reasons(rows: list) -> list:
    """``"IQR 23% of row <label> <workload> <peer>"`` for each noisy row among ``rows``."""
    out = []
    for row in rows:
        share = iqr_share(row)
        if share is not None and share > NOISY_SPREAD:
            out.append(f"IQR {share:.0%} of row {row['label']} {row['workload']} {row['peer']}")
    return out


def not_judged_reasons(results: dict, compared: list) -> list:
    """Why no verdict may be drawn from the ``compared`` rows of this run: a busy
    machine, or a compared row whose IQR exceeds :data:`NOISY_SPREAD` of its median."""
    return _load_reasons(results) + _spread_reasons(compared)


def _not_judged(reasons: list) -> str:
    shown = reasons[:_SHOWN_REASONS]
    more = len(reasons) - len(shown)
    return "not judged (" + "; ".join(shown) + (f"; {more} more" if more else "") + ")"


def verdict(met: bool, reasons: list) -> str:
    """``met`` / ``not met``, or ``not judged (reasons)`` when there are any."""
    if reasons:
        return _not_judged(reasons)
    return "met" if met else "not met"


def _peak_lines(results: dict) -> list:
    """The two peaks the shares are relative to, with where each number came from."""
    nominal, measured = results.get("nominal_peak") or {}, results.get("flop_peak")
    lines = []
    if nominal.get("flops"):
        lines.append(
            f"- Physical peak, float32, nominal: **{nominal['flops'] / 1e9:.0f} GFLOP/s** = "
            f"{nominal['flop_per_cycle']} FLOP/cycle ({nominal['isa']}; "
            f"{'from --isa' if results.get('isa_emulation') else 'from the ISA flags in /proc/cpuinfo'}) × {nominal['clock_hz'] / 1e9:.2f} GHz ({nominal['clock_source']}) "
            f"× {nominal['cores']} cores ({nominal['cores_source']})."
        )
    fma = results.get("fma_peak")
    if fma:
        narrower = ""
        emulated = (results.get("isa_emulation") or {}).get("isa")
        if emulated:
            narrower = (f" Every peer ran {_ISA_NAMES.get(emulated, emulated)} (`--isa {emulated}`): the "
                        f"native kernels, XLA's GEMMs (YNNPACK) and generated code, and PyTorch "
                        f"(oneDNN, MKL, ATen).")  # fmt: skip
        elif nominal.get("flop_per_cycle") and fma["flop_per_cycle"] < nominal["flop_per_cycle"]:
            narrower = (f" The native kernels run {_ISA_NAMES.get(fma['isa'], fma['isa'])}, narrower "
                        f"than the CPU's (LSTM_JAX_NATIVE_ISA): XLA's and PyTorch's GEMMs keep the "
                        f"wider one, so this peak bounds only the native loops.")  # fmt: skip
        lines.append(
            f"- Measured FMA peak: **{fma['flops'] / 1e9:.0f} GFLOP/s**: the native kernels' "
            f"{_ISA_NAMES.get(fma['isa'], fma['isa'])}, {fma['cores']} threads of independent float32 "
            f"multiply-adds (best of 3), {fma['flop_per_cycle']} FLOP/cycle at "
            f"{fma['clock_hz'] / 1e9:.2f} GHz per core.{narrower}"
        )
    if measured:
        above = (" It exceeds the nominal peak: the cores ran above the reported clock (boost)."
                 if nominal.get("flops") and measured > nominal["flops"] else "")  # fmt: skip
        lines.append(
            f"- Measured GEMM peak: **{measured / 1e9:.0f} GFLOP/s** (a jitted 2048³ float32 "
            f"GEMM, best of 7, at the start of the run).{above}"
        )
    return lines


_ISA_NAMES = {"avx512": "AVX-512", "avx2": "AVX2"}


def _judging_rule() -> str:
    return (
        f"- A verdict needs a quiet machine: **not judged** instead of met / not met when other "
        f"processes kept more than {OTHERS_LIMIT_CORES} cores busy on average during the run "
        f"(/proc/stat's busy time less this process's CPU time, steal included), or a compared "
        f"row's IQR exceeds {NOISY_SPREAD:.0%} of its median."
    )


def _geomean_lines(results: dict, geo: dict) -> list:
    """The geomean speed-ups over Flax in float32 training: LSTM against the target, GRU
    reported."""
    lines = []
    for group, what, target in (("train", "LSTM", train_geomean_target(results)), ("GRU train", "GRU", None)):
        value = geo.get((TARGET_PEER, group))
        if value is None:
            continue
        goal = "no target set"
        if target is not None:
            compared = [r for r in results["rows"] if _group(r) == group and _ok(r)
                        and r["peer"] in (TARGET_PEER, _baseline(r["label"]))]  # fmt: skip
            judged = verdict(value >= target, not_judged_reasons(results, compared))
            goal = f"target >= {target:.{1 if round(target, 1) == target else 2}f}×: {judged}"
        lines.append(f"- float32 {what} training, geomean speed-up over Flax: "
                     f"**{value:.2f}×** ({goal})")  # fmt: skip
    return lines


def _target_pairs(results: dict, by_key: dict) -> list:
    """``(key, ours, rival)`` for each case where both ran (none with resets)."""
    rows = [r for r in results["rows"] if not _has_resets(r["label"])]
    cases = list(dict.fromkeys(_case_key(r) for r in rows))
    pairs = [(key, by_key.get((key, TARGET_PEER)), by_key.get((key, TARGET_RIVAL))) for key in cases]
    return [(key, ours, rival) for key, ours, rival in pairs
            if ours and rival and _ok(ours) and _ok(rival)]  # fmt: skip


def _ratio(by_key: dict, key: tuple, peer: str, ours: dict) -> str:
    """``"2.50×"``: ``peer``'s median in case ``key`` over ``ours``; ``"—"`` if it did not run."""
    other = by_key.get((key, peer))
    return f"{other['median_s'] / ours['median_s']:.2f}×" if other and _ok(other) else "—"


def _target_lines(results: dict, by_key: dict, geo: dict) -> list:
    """The targets, each met, not met or not judged, from this run's medians, with the
    share of the nominal and the measured peak (empty without PyTorch)."""
    pairs = _target_pairs(results, by_key)
    if not pairs:
        return []
    nominal = (results.get("nominal_peak") or {}).get("flops")
    fma = (results.get("fma_peak") or {}).get("flops")
    lines = ["", f"## Targets: `{TARGET_PEER}` against Flax and PyTorch", ""]
    lines += _peak_lines(results) + [_judging_rule()] + _geomean_lines(results, geo)
    header = (f"| Config | Workload | `{TARGET_PEER}` ms | vs Flax | vs `{TARGET_RIVAL}` | "
              f"% nominal peak | % FMA peak | % GEMM peak | no slower than `{TARGET_RIVAL}` |")  # fmt: skip
    lines += ["", header, "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for key, ours, rival in pairs:
        baseline = by_key.get((key, _baseline(key[0])))
        compared = [r for r in (ours, rival, baseline) if r and _ok(r)]
        ratio = rival["median_s"] / ours["median_s"]
        lines.append(f"| {key[0]} | {key[1]} | {ours['median_s'] * 1e3:.3g} | "
                     f"{_ratio(by_key, key, _baseline(key[0]), ours)} | {ratio:.2f}× | "
                     f"{_share(ours, nominal)} | {_share(ours, fma)} | {_share(ours, results.get('flop_peak'))} | "
                     f"{verdict(ratio >= 1.0, not_judged_reasons(results, compared))} |")  # fmt: skip
    return lines


def _without_resets(rows: list, row: dict) -> Optional[tuple]:
    """The case key of ``row``'s configuration and workload without resets, if it ran."""
    plain = {**row["config"], "reset_rate": 0.0}
    return next((_case_key(r) for r in rows
                 if r.get("config") == plain and r["workload"] == row["workload"]), None)  # fmt: skip


def _rl_lines(results: dict, by_key: dict) -> list:
    """Cases with resets: ``lstm_jax[auto]`` against Flax's ScannedRNN, beside the ratio
    of the same shape without resets (empty without such cases)."""
    keys = list(dict.fromkeys(_case_key(r) for r in results["rows"] if _has_resets(r["label"])))
    rows = [(key, by_key.get((key, TARGET_PEER))) for key in keys]
    rows = [(key, ours) for key, ours in rows if ours and _ok(ours)]
    if not rows:
        return []
    intro = (f"`{TARGET_PEER}` with `resets=` against Flax in PureJaxRL's `ScannedRNN` pattern "
             "(`nn.scan` over the cell, carry reset with `jnp.where(reset[:, None], zeros, carry)` "
             "before each step), beside the same shape without resets (Flax `nn.RNN`). "
             "The loss is the suite's (MSE of the outputs, Adam update).")  # fmt: skip
    header = (f"| Config | Workload | `{TARGET_PEER}` ms | Flax ms | vs Flax | "
              "without resets: vs Flax | judged |")  # fmt: skip
    lines = ["", "## RL case: resets (issue 21)", "", intro, "", header,
             "|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for key, ours in rows:
        flax = _baseline(key[0])
        plain_key = _without_resets(results["rows"], ours)
        plain, baseline = by_key.get((plain_key, TARGET_PEER)), by_key.get((key, flax))
        compared = [r for r in (ours, baseline, plain, by_key.get((plain_key, flax))) if r and _ok(r)]
        reasons = not_judged_reasons(results, compared)
        flax_ms = f"{baseline['median_s'] * 1e3:.3g}" if baseline and _ok(baseline) else "—"
        without = _ratio(by_key, plain_key, flax, plain) if plain and _ok(plain) else "—"
        lines.append(f"| {key[0]} | {key[1]} | {ours['median_s'] * 1e3:.3g} | {flax_ms} | "
                     f"{_ratio(by_key, key, flax, ours)} | {without} | "
                     f"{_not_judged(reasons) if reasons else 'yes'} |")  # fmt: skip
    return lines


def markdown(results: dict) -> str:
    rows = results["rows"]
    peers = _peer_order(results)
    by_key = {(_case_key(r), r["peer"]): r for r in rows}
    speed = {(s["label"], s["workload"], s["peer"]): s["speedup"] for s in results["speedups"]}
    cases = list(dict.fromkeys(_case_key(r) for r in rows))
    machine, versions = results["machine"], results["versions"]

    lines = [f"# lstm_jax benchmarks ({results['grid']})", ""]
    lines.append(
        f"- Machine: {machine['cpu']}, {machine['cores']} cores; accelerator: "
        f"{machine['accelerator'] or 'none'} (`{', '.join(machine['devices'])}`)"
    )
    emulation = results.get("isa_emulation")
    if emulation:
        lines.append(
            f"- Instruction set: **{_ISA_NAMES.get(emulation['isa'], emulation['isa'])} emulated** "
            f"(`--isa {emulation['isa']}`, benchmarks/isa_emulation.py): "
            + ", ".join(f"{k}={v}" for k, v in emulation["environment"].items())
            + f"; YNNPACK feature mask {emulation['ynnpack_mask']:#x} (XLA's GEMMs)"
        )
    lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    lines.append(f"- Date: {results['date']}; command: `{results['command']}`; "
                 f"took {results['elapsed_s']:.0f} s ({results['cpu_s']:.0f} s CPU)")  # fmt: skip
    load = results.get("load")
    if load:
        def avg(info):
            values = info.get("loadavg_1_5_15")
            return "/".join(f"{v:.2f}" for v in values) if values else "n/a"

        lines.append(f"- Load average (1/5/15 min) at start {avg(load['start'])}, at end "
                     f"{avg(load['end'])}; CPU affinity {load['start'].get('affinity')}; "
                     f"thread settings {load['start'].get('threads') or 'defaults'}")  # fmt: skip
    others = results.get("others_cpu")
    if others:
        lines.append(f"- Other processes during the run: {others['cores']:.2f} cores busy on average "
                     f"(steal {others['steal_cores']:.2f}; /proc/stat less this process's CPU time)")
    for warning in results.get("warnings", []):
        lines.append(f"- **Warning:** {warning}")
    lines += ["", "## Speed-up relative to Flax", ""]
    lines.append(
        f"Baseline: Flax `nn.RNN(nn.OptimizedLSTMCell)` ({BASELINE}) for LSTM cases, "
        f"`nn.RNN(nn.GRUCell)` ({BASELINES['gru']}) for GRU cases; in cases with resets, the "
        "same cell in PureJaxRL's `ScannedRNN` pattern. "
        "Median step time of the baseline divided by the peer's, measured in the same "
        "interleaved rounds (> 1: faster than Flax). `train` = forward, backward and Adam "
        "update; `infer` = forward. Every timed peer first matched lstm_jax[scan] "
        "(outputs, loss and gradients); `invalid` = failed that check (not timed), "
        "`unsup.` = not supported for this case, `—` = not run in this case."
    )
    lines.append("")
    header = ["Config", "Workload", "Flax median"] + [f"`{p}`" for p in peers]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
    for key in cases:
        base = by_key.get((key, _baseline(key[0])))
        base_text = f"{base['median_s'] * 1e3:.3g} ms" if base and _ok(base) else "—"
        cells = [_cell(by_key.get((key, p)), speed.get((*key, p))) for p in peers]
        lines.append("| " + " | ".join([key[0], key[1], base_text] + cells) + " |")
    geo = {(g["peer"], g["workload"]): g["geomean"] for g in results["geomeans"]}
    for workload in _groups(rows):
        if any((p, workload) in geo for p in peers):
            cells = [f"**{geo[(p, workload)]:.2f}×**" if (p, workload) in geo else "—" for p in peers]
            lines.append("| " + " | ".join(["**geomean**", workload, ""] + cells) + " |")

    lines += _target_lines(results, by_key, geo) + _rl_lines(results, by_key)
    lines += ["", "## Step time, throughput, compile time, memory", ""]
    lines.append(
        "Step time after warm-up: median, interquartile range and min–max over the rounds. "
        "Compile: `jit(...).lower(...).compile()` (JAX; PyTorch is eager). Memory: "
        "`xla_temp_bytes` = `compiled.memory_analysis().temp_size_in_bytes`; "
        "`torch_profiler_peak_bytes` = peak bytes of the tensors allocated during one "
        "step, above the level before it (torch.profiler allocation events); "
        "`torch_cuda_peak_bytes` = "
        "`torch.cuda.max_memory_allocated` above the pre-step level. Check: max |Δ| of "
        "outputs on the check slice, and at full size of outputs (infer) or relative Δ of "
        "the loss (train)."
    )
    lines.append("")
    peak = results.get("flop_peak")
    if peak:
        load = results.get("load_average") or {}
        lines.append("")
        lines.append(
            f"% peak: the step's matmul FLOPs (`Config.matmul_flops`: forward "
            f"2·B·T·(I+H)·4H per layer and direction, training 3x) per median step time, "
            f"over this machine's measured float32 peak of {peak / 1e9:.0f} GFLOP/s (a "
            f"jitted 2048³ GEMM, best of 7, at the start of the run). Load average "
            f"(1, 5, 15 min) at start {load.get('start')}, at end {load.get('end')}."
        )
        lines.append("")
    lines.append("| Config | Workload | Peer | Status | Median ms | IQR ms | Min–max ms | "
                 "Tokens/s | % peak | Compile s | Memory MiB | Memory kind | Check Δ | Full Δ |")  # fmt: skip
    lines.append("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for row in rows:
        ok = _ok(row)
        full = row.get("full_outputs_max_abs_diff", row.get("full_loss_rel_diff"))
        lines.append("| " + " | ".join([
            row["label"], row["workload"], f"`{row['peer']}`",
            row["status"] + (f" ({row['note']})" if row.get("note") and not ok else ""),
            f"{row['median_s'] * 1e3:.3g}" if ok else "",
            f"{row['q1_s'] * 1e3:.3g}–{row['q3_s'] * 1e3:.3g}" if ok else "",
            f"{row['min_s'] * 1e3:.3g}–{row['max_s'] * 1e3:.3g}" if ok else "",
            f"{row['tokens_per_s']:,.0f}" if ok else "",
            _share(row, peak) if ok else "",
            f"{row['compile_s']:.2f}" if row.get("compile_s") is not None else "",
            _mib(row.get("memory_bytes")),
            row.get("memory_kind", ""),
            f"{row['outputs_max_abs_diff']:.1e}" if row.get("outputs_max_abs_diff") is not None else "",
            f"{full:.1e}" if full is not None else "",
        ]) + " |")  # fmt: skip

    lines += ["", "## Peers", ""]
    for peer in results["peers"]:
        state = "available" if peer["available"] else f"unavailable: {peer['reason']}"
        lines.append(f"- `{peer['name']}`: {peer['description']} ({state})")
    settings = results["settings"]
    lines += ["", "## Method", ""]
    lines.append(
        f"Same weights for every peer (lstm_jax init, seed {settings['seed']}; converted with "
        "`lstm_jax.to_flax` / `to_torch`, or mapped for NNX, Equinox and cuDNN-JAX), same "
        f"input, same loss ({settings['loss']}), same optimizer ({settings['optimizer']}, "
        f"lr {settings['learning_rate']}). JAX steps are jitted with params and optimizer "
        f"state donated. Float32 matmuls: {settings['float32_matmuls']}. PyTorch threads: "
        f"{settings['torch_threads']}. After compilation and a first step (checked; a "
        "warm-up, plus one more untimed step for PyTorch, which builds its Adam state and "
        f"oneDNN primitives lazily), each case runs {settings['min_repeats']} to {settings['repeats']} "
        f"rounds (as many as fit in about {settings['round_budget_s']} s), every peer once "
        "per round, in an order rotated each round; a peer's sample in a round is the mean of "
        f"back-to-back steps lasting at least {settings.get('min_round_s', 0) * 1e3:.0f} ms "
        "(`calls_per_round` in results.json). "
        f"Check tolerances: {json.dumps(settings['tolerances'])}."
    )
    plots = [p for p in PLOTS if p in results.get("plots", [])]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _tagged(rows: list, tag: str) -> list:
    return [r for r in rows if tag in r.get("tags", ()) and r["workload"] == "train"]


def plot(results: dict, out_dir: str) -> list:
    """Write the PNGs; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, written = results["rows"], []
    peers = _peer_order(results)

    # 1. speed-up per configuration and workload
    cases = list(dict.fromkeys((s["label"], s["workload"]) for s in results["speedups"]))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(cases) + 4), 4.5))
    speed = {(s["label"], s["workload"], s["peer"]): s["speedup"] for s in results["speedups"]}
    shown = [p for p in peers if any((*c, p) in speed for c in cases)]
    width = 0.8 / max(len(shown), 1)
    for i, peer in enumerate(shown):
        xs = [j + (i - (len(shown) - 1) / 2) * width for j, c in enumerate(cases) if (*c, peer) in speed]
        ys = [speed[(*c, peer)] for c in cases if (*c, peer) in speed]
        ax.bar(xs, ys, width, label=peer)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{c[0]}\n{c[1]}" for c in cases], fontsize=7)
    ax.set_ylabel(f"speed-up vs {BASELINE} (log)")
    ax.set_title("Speed-up per configuration (median step time)")
    if shown:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, f"no speed-ups: {BASELINE} did not run", ha="center",
                transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "speedup.png"), dpi=120)
    plt.close(fig)
    written.append("speedup.png")

    # 2. time vs sequence length (log-log, with a slope-1 guide: linear scaling),
    # 3. memory vs sequence length; peers with at least two points of the sweep
    sweep = _tagged(rows, "sweep")
    for name, field, ylabel, title in (
        ("scaling.png", "median_s", "median step time (ms, log)", "Training step time vs sequence length"),
        ("memory.png", "memory_bytes", "memory (MiB)", "Training step memory vs sequence length"),
    ):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        scale = 1e3 if field == "median_s" else 1 / 2**20
        for peer in peers:
            points = sorted((r["config"]["time"], r[field]) for r in sweep
                            if r["peer"] == peer and _ok(r) and r.get(field) is not None)  # fmt: skip
            if len(points) < 2:
                continue
            kind = ""
            if field == "memory_bytes":
                kind = next((f" ({r['memory_kind']})" for r in sweep if r["peer"] == peer), "")
            ax.plot([p[0] for p in points], [p[1] * scale for p in points], marker="o",
                    label=peer + kind)  # fmt: skip
            if field == "median_s" and peer == BASELINE:
                t0, y0 = points[0]
                ts = [p[0] for p in points]
                ax.plot(ts, [y0 * scale * t / t0 for t in ts], "k--", linewidth=0.8,
                        label=f"∝ T (from {BASELINE})")  # fmt: skip
        if sweep:
            c = sweep[0]["config"]
            ax.set_title(f"{title}\nB{c['batch']} I{c['input']} H{c['hidden']}, train", fontsize=10)
        ax.set_xlabel("sequence length T" + (" (log)" if field == "median_s" else ""))
        ax.set_ylabel(ylabel)
        if field == "median_s":
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
        else:
            ax.set_xlim(left=0)
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no sweep cases in this run", ha="center", transform=ax.transAxes)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=120)
        plt.close(fig)
        written.append(name)
    return written


def write(results: dict, out_dir: str) -> dict:
    """Add speed-ups, write ``results.json``, the plots and ``results.md`` to ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    results = {"schema_version": SCHEMA_VERSION, **results}
    results["speedups"] = speedups(results["rows"])
    results["geomeans"] = geomeans(results["speedups"])
    results["plots"] = plot(results, out_dir)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(_finite(results), f, indent=1, allow_nan=False, default=_json_default)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(results))
    return results


def _finite(value):
    """JSON has no inf/nan: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
