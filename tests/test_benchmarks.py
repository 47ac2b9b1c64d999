"""The benchmark suite on a tiny grid: files, schema, fairness check."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from benchmarks import Case, Config, Grid, cli, peers, report, run, runner, write

SCAN = "lstm_jax[scan]"
FLAX = "flax_linen_optimized"


def _rows(results, peer):
    return [r for r in results["rows"] if r["peer"] == peer]


def test_time_limit_stops_starting_cases(tmp_path):
    """--time-limit 0 starts no case; the results are still written, with the cases not run
    named in a warning; --case-budget reaches the settings."""
    out = tmp_path / "bench"
    argv = ["--tiny", "--peers", SCAN, "--out", str(out), "--no-progress",
            "--time-limit", "0", "--case-budget", "0.25"]  # fmt: skip
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["rows"] == []
    assert len(results["cases_not_run"]) == 3
    assert results["settings"]["round_budget_s"] == 0.25
    assert any("--time-limit 0 min reached: 3 of 3 cases not run" in w for w in results["warnings"])


def test_cases_selects_by_label_and_workload(tmp_path, capsys):
    """--cases keeps the cases whose 'label workload' contains one of the texts; a text that
    matches nothing is an error naming it."""
    out = tmp_path / "bench"
    argv = ["--tiny", "--peers", SCAN, "--out", str(out), "--no-progress", "--time-limit", "0"]
    assert cli.main([*argv, "--cases", "B2 T8 I3 H4 train, L2 bi"]) == 0
    not_run = json.loads((out / "results.json").read_text())["cases_not_run"]
    assert sorted(not_run) == ["B2 T8 I3 H4 L2 bi infer", "B2 T8 I3 H4 train"]
    assert cli.main([*argv, "--cases", "train,H999"]) == 2
    assert "['H999'] matched none" in capsys.readouterr().err


def test_tiny_cli_run_writes_results(tmp_path):
    out = tmp_path / "bench"
    assert cli.main(["--tiny", "--peers", f"{SCAN},{FLAX}", "--out", str(out), "--no-progress"]) == 0

    results = json.loads((out / "results.json").read_text())
    for field in ("schema_version", "machine", "versions", "date", "command", "grid", "peers",
                  "rows", "speedups", "geomeans", "settings", "plots", "load", "warnings"):  # fmt: skip
        assert field in results, field
    assert len(results["load"]["start"]["loadavg_1_5_15"]) == 3
    assert "- Load average (1/5/15 min) at start" in (out / "results.md").read_text()
    assert results["grid"] == "tiny"
    assert "--tiny" in results["command"]
    for field in ("cpu", "cores", "platform", "accelerator", "devices"):
        assert field in results["machine"], field
    for field in ("jax", "jaxlib", "flax", "torch", "equinox", "lstm_jax", "python"):
        assert field in results["versions"], field
    assert {p["name"] for p in results["peers"]} == {SCAN, FLAX}

    cases = {(r["label"], r["workload"]) for r in results["rows"]}
    assert len(cases) == 3
    for peer in (SCAN, FLAX):
        rows = _rows(results, peer)
        assert len(rows) == 3
        for row in rows:
            assert row["status"] == "ok", row
            assert row["same_function"] is True
            assert row["check_passed"] is True
            assert row["outputs_max_abs_diff"] <= 1e-4
            assert len(row["times_s"]) >= 2
            assert row["q1_s"] <= row["median_s"] <= row["q3_s"]
            assert row["tokens_per_s"] > 0
            assert row["compile_s"] > 0
            assert row["memory_kind"] == "xla_temp_bytes"
            assert row["memory_bytes"] is None or row["memory_bytes"] >= 0
    # the baseline against itself
    assert all(s["speedup"] == 1.0 for s in results["speedups"] if s["peer"] == FLAX)
    assert {(g["peer"], g["workload"]) for g in results["geomeans"]} >= {(SCAN, "train"), (SCAN, "all")}

    table = (out / "results.md").read_text()
    assert "| Config | Workload | Flax median |" in table
    for label, workload in cases:
        assert f"| {label} | {workload} |" in table
    assert "**geomean**" in table
    for name in report.PLOTS:
        assert (out / name).stat().st_size > 1000, name
        assert f"![{name}]({name})" in table


class _SwappedGates(peers.FlaxLinenPeer):
    """Flax with the input and forget gates of w_ih swapped: a wrong converter."""

    def __init__(self):
        super().__init__("optimized")
        self.name = "flax_wrong_weights"

    def convert(self, params, config):
        def swap(w):
            i, f, g, o = jnp.split(w.w_ih, 4, axis=1)
            return w._replace(w_ih=jnp.concatenate([f, i, g, o], axis=1))

        wrong = lj.LSTMParams(tuple(tuple(swap(w) for w in layer) for layer in params.layers))
        return super().convert(wrong, config)


def test_peer_with_wrong_weights_is_invalid_and_not_timed(tmp_path):
    grid = Grid("wrong", (Case(Config(2, 8, 3, 4), "infer"),), repeats=2, min_repeats=2,
                budget_s=1.0)  # fmt: skip
    results = run(grid, [peers.LstmJaxPeer("scan"), _SwappedGates()], progress=False)
    (good,) = _rows(results, SCAN)
    (bad,) = _rows(results, "flax_wrong_weights")
    assert good["status"] == "ok" and good["same_function"] is True
    assert bad["status"] == "invalid"
    assert bad["same_function"] is False
    assert bad["outputs_max_abs_diff"] > 1e-3
    assert "times_s" not in bad and "median_s" not in bad
    # the report says so, and has no speed-up for it
    results = write(results, str(tmp_path))
    assert not [s for s in results["speedups"] if s["peer"] == "flax_wrong_weights"]
    assert "| `flax_wrong_weights` | invalid" in (tmp_path / "results.md").read_text()


def test_every_registered_lstm_backend_is_a_peer(monkeypatch):
    from lstm_jax import kernels

    monkeypatch.setitem(kernels.BACKENDS, "made_up", ("gru",))
    names = [p.name for p in peers.all_peers()]
    expected = ["lstm_jax[auto]"] + [
        f"lstm_jax[{b}]" for b, kinds in kernels.BACKENDS.items() if "lstm" in kinds
    ]
    assert names[: len(expected)] == expected
    assert "lstm_jax[made_up]" not in names  # no LSTM in it
    assert {FLAX, "torch", "equinox", "flax_nnx_optimized", "jax_cudnn"} <= set(names)
    assert [p.name for p in peers.select_peers("lstm_jax")] == expected
    with pytest.raises(ValueError, match="unknown peer"):
        peers.select_peers("keras")


def test_unavailable_peers_are_reported_not_run():
    class Missing(peers.Peer):
        name, description = "missing", "a package that is not installed"

        def unavailable(self):
            return "package 'missing' is not installed"

    grid = Grid("none", (Case(Config(2, 4, 3, 4), "infer"),), repeats=2, min_repeats=2,
                budget_s=1.0)  # fmt: skip
    results = run(grid, [Missing()], progress=False)
    assert results["peers"] == [{"name": "missing", "description": "a package that is not installed",
                                 "available": False, "reason": "package 'missing' is not installed"}]  # fmt: skip
    assert results["rows"] == []


def test_cudnn_weight_packing_matches_jax_reference():
    """The GPU-only jax.experimental.rnn peer's weight layout, checked with its CPU reference."""
    from jax.experimental import rnn

    config = Config(2, 5, 3, 4, layers=2, bidirectional=True)
    params = lj.init_lstm(jax.random.key(0), 3, 4, num_layers=2, bidirectional=True)
    x = jax.random.normal(jax.random.key(1), (2, 5, 3))
    flat = peers.pack_cudnn_weights(params)
    assert flat.shape == (rnn.get_num_params_in_lstm(3, 4, 2, True),)
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat, 3, 4, 2, True)
    zeros = jnp.zeros((4, 2, 4))
    ys, _, _ = rnn.lstm_ref(x, zeros, zeros, w_ih, w_hh, b_ih, b_hh,
                            jnp.full((2,), 5, jnp.int32), 3, 4, 2, 0.0, True)  # fmt: skip
    np.testing.assert_allclose(ys, lj.lstm(params, x)[0], atol=1e-5)
    back = peers.unpack_cudnn_weights(flat, config)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(a, b)

    def loss(w):  # the gradients map back too (the bias's once, not twice)
        w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, 3, 4, 2, True)
        ys, _, _ = rnn.lstm_ref(x, zeros, zeros, w_ih, w_hh, b_ih, b_hh,
                                jnp.full((2,), 5, jnp.int32), 3, 4, 2, 0.0, True)  # fmt: skip
        return jnp.sum(ys * jnp.sin(ys))

    grads = peers.unpack_cudnn_weights(jax.grad(loss)(flat), config)
    ref = jax.grad(lambda p: jnp.sum(lj.lstm(p, x)[0] * jnp.sin(lj.lstm(p, x)[0])))(params)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_default_out_dir_never_touches_committed_results():
    path = cli.default_out_dir("quick")
    assert os.path.basename(os.path.dirname(path)) == "results"
    assert os.path.basename(path) == "local"  # git-ignored; committed results are per machine
    assert cli.default_out_dir("full") == os.path.join(path, "full")


def test_noisy_rows_and_a_busy_machine_are_reported():
    from benchmarks import machine

    quiet = {"label": "B1", "workload": "train", "peer": "a", "median_s": 1.0, "q1_s": 0.95, "q3_s": 1.05}
    noisy = {**quiet, "peer": "b", "q1_s": 0.8, "q3_s": 1.3}
    (line,) = cli.spread_warnings([quiet, noisy])
    assert line.startswith("B1 train b: IQR is 50% of the median")
    assert machine.busy_warning({"loadavg_1_5_15": [1.0, 1.0, 1.0]}, cores=2) is None
    assert "load average 3.50 > 2 cores" in machine.busy_warning({"loadavg_1_5_15": [3.5, 2, 1]}, 2)


def test_other_processes_cpu_use_is_measured_without_the_benchmarks_own():
    from benchmarks import machine

    start = {"busy_s": 100.0, "steal_s": 1.0, "own_s": 5.0}
    end = {"busy_s": 120.0, "steal_s": 2.0, "own_s": 22.0}  # 20 s busy, 17 s of them ours
    others = machine.others_cpu(start, end, wall_s=10.0)
    assert others == pytest.approx({"cores": 0.3, "steal_cores": 0.1})
    assert machine.others_busy(others) and "kept 0.30 of 2 cores busy" in machine.others_warning(others, 2)
    quiet = machine.others_cpu(start, {**end, "own_s": 24.0}, wall_s=10.0)
    assert not machine.others_busy(quiet) and machine.others_warning(quiet, 2) is None
    assert machine.others_cpu(None, end, 10.0) is None
    reading = machine.cpu_counters()
    if reading is not None:  # Linux
        assert reading["busy_s"] >= reading["steal_s"] >= 0 and reading["own_s"] > 0


def test_the_rl_shape_stays_out_of_the_targets_geomean():
    rows = [_timed("B8", "train", FLAX, 20), _timed("B8", "train", "lstm_jax[auto]", 10),
            {**_timed("B256", "train", FLAX, 30), "tags": ["rl"]},
            {**_timed("B256", "train", "lstm_jax[auto]", 30), "tags": ["rl"]}]  # fmt: skip
    geo = {(g["peer"], g["workload"]): g["geomean"] for g in report.geomeans(report.speedups(rows))}
    assert geo["lstm_jax[auto]", "train"] == pytest.approx(2.0)
    assert geo["lstm_jax[auto]", "RL train"] == pytest.approx(1.0)


def test_short_steps_are_timed_back_to_back():
    from benchmarks import runner

    assert runner.calls_per_round(1.0) == 1
    assert runner.calls_per_round(runner.MIN_ROUND_S / 4) == 4
    assert runner.calls_per_round(1e-7) == runner.MAX_CALLS_PER_ROUND


def test_bound_tool_writes_results(tmp_path):
    from benchmarks import bound

    assert bound.main(["--tiny", "--reps", "2", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "bound.json").read_text())
    for field in ("machine", "versions", "date", "command", "gemm_peak_gflops", "rows", "geomean"):
        assert field in results, field
    (row,) = results["rows"]
    assert row["config"] == dict(zip(("batch", "time", "input", "hidden"), bound.TINY_CONFIGS[0]))
    for key in ("sequential_matmuls_s", "batched_matmuls_s", "bound_s", "flax_s", "lstm_jax_s"):
        assert row[key] > 0, key
    assert row["input_grad_rel_error_vs_flax"] < 1e-4
    assert row["max_speedup_over_flax"] == row["flax_s"] / row["bound_s"]
    assert "| max speed-up (Flax / bound) |" in (tmp_path / "bound.md").read_text()


def test_device_grid_builds_and_needs_an_accelerator(capsys):
    from benchmarks import grid

    device = grid.GRIDS["device"]()
    configs = {(c.config.batch, c.config.time, c.config.input, c.config.hidden) for c in device.cases}
    assert (16, 1024, 768, 768) in configs  # FlashRNN's setting
    assert {(c.batch, c.time, c.input, c.hidden) for c in grid.TARGETS} <= configs
    assert {c.workload for c in device.cases} == {"train", "infer"}
    assert any(c.config.dtype == "bfloat16" for c in device.cases)
    if jax.default_backend() == "cpu":
        assert cli.main(["--device", "--no-progress"]) == 2
        assert "--device measures a GPU or TPU" in capsys.readouterr().err


def test_geomeans_keep_bfloat16_apart_and_targets_are_judged():
    def row(label, workload, peer, ms):
        return {"label": label, "workload": workload, "peer": peer, "status": "ok",
                "median_s": ms / 1e3}  # fmt: skip

    rows = [row("B8", "train", FLAX, 20), row("B8", "train", "lstm_jax[auto]", 8),
            row("B8", "train", "torch", 10), row("B8 bf16", "train", FLAX, 30),
            row("B8 bf16", "train", "lstm_jax[auto]", 15), row("B8 bf16", "train", "torch", 12)]  # fmt: skip
    speedups = report.speedups(rows)
    geo = {(g["peer"], g["workload"]): g["geomean"] for g in report.geomeans(speedups)}
    assert geo[("lstm_jax[auto]", "train")] == pytest.approx(2.5)  # float32 only
    assert geo[("lstm_jax[auto]", "train bf16")] == pytest.approx(2.0)
    assert geo[("lstm_jax[auto]", "all")] == pytest.approx((2.5 * 2.0) ** 0.5)
    by_key = {((r["label"], r["workload"]), r["peer"]): r for r in rows}
    text = "\n".join(report._target_lines({"rows": rows}, by_key, geo))
    assert "geomean speed-up over Flax: **2.50×** (target >= 2.0×: met)" in text
    assert "| B8 | train | 8 | 2.50× | 1.25× |  |  |  | met |" in text
    assert "| B8 bf16 | train | 15 | 2.00× | 0.80× |  |  |  | not met |" in text
    # the Flax target follows the native kernels' instruction set: 2.12x on AVX-512
    for isa, goal in (("avx512", "target >= 2.12×: met"), ("avx2", "target >= 2.0×: met"),
                      ("portable", "target >= 2.0×: met")):  # fmt: skip
        text = "\n".join(report._geomean_lines({"rows": rows, "fma_peak": {"isa": isa}}, geo))
        assert f"**2.50×** ({goal})" in text, (isa, text)
    rows[1]["median_s"] = 20 / 2.1 / 1e3  # 2.10x: meets AVX2's target, not AVX-512's
    geo = {(g["peer"], g["workload"]): g["geomean"] for g in report.geomeans(report.speedups(rows))}
    text = "\n".join(report._geomean_lines({"rows": rows, "fma_peak": {"isa": "avx512"}}, geo))
    assert "**2.10×** (target >= 2.12×: not met)" in text


def _timed(label, workload, peer, ms, iqr=0.0):
    """A fabricated timed row: median ``ms``, IQR ``iqr`` (a share of the median)."""
    median = ms / 1e3
    return {"label": label, "workload": workload, "peer": peer, "status": "ok", "median_s": median,
            "q1_s": median * (1 - iqr / 2), "q3_s": median * (1 + iqr / 2)}  # fmt: skip


def _targets_text(rows, load):
    results = {"rows": rows, "machine": {"cores": 2}, "load_average": {"start": load, "end": load}}
    geo = {(g["peer"], g["workload"]): g["geomean"] for g in report.geomeans(report.speedups(rows))}
    by_key = {((r["label"], r["workload"]), r["peer"]): r for r in rows}
    return "\n".join(report._target_lines(results, by_key, geo))


def test_targets_are_not_judged_on_a_busy_machine_or_from_noisy_rows():
    rows = [_timed("B8", "train", FLAX, 20), _timed("B8", "train", "lstm_jax[auto]", 8),
            _timed("B8", "train", "torch", 10), _timed("B64", "train", FLAX, 40),
            _timed("B64", "train", "lstm_jax[auto]", 20), _timed("B64", "train", "torch", 30)]  # fmt: skip
    quiet = _targets_text(rows, [1.0, 1.0, 1.0])
    assert "| B8 | train | 8 | 2.50× | 1.25× |  |  |  | met |" in quiet
    assert "(target >= 2.0×: met)" in quiet and "not judged" not in quiet.split("|---|")[-1]

    busy = _targets_text(rows, [3.5, 2.0, 1.0])
    assert "met |" not in busy and "target >= 2.0×: met" not in busy
    assert "| B8 | train | 8 | 2.50× | 1.25× |  |  |  | not judged (load 3.50 on 2 cores) |" in busy
    assert "(target >= 2.0×: not judged (load 3.50 on 2 cores))" in busy

    # the load counts the benchmark's own threads: judged by what other processes used
    shared = {"rows": rows, "machine": {"cores": 2}, "load_average": {"start": [2.3], "end": [2.3]}}
    by_key = {((r["label"], r["workload"]), r["peer"]): r for r in rows}
    geo = {(g["peer"], g["workload"]): g["geomean"] for g in report.geomeans(report.speedups(rows))}
    own_load = "\n".join(report._target_lines({**shared, "others_cpu": {"cores": 0.1, "steal_cores": 0.0}},
                                              by_key, geo))
    assert "(target >= 2.0×: met)" in own_load
    others = "\n".join(report._target_lines({**shared, "others_cpu": {"cores": 0.6, "steal_cores": 0.0}},
                                            by_key, geo))
    assert "(target >= 2.0×: not judged (others used 0.60 cores))" in others

    rows[2] = _timed("B8", "train", "torch", 10, iqr=0.3)  # PyTorch noisy in one case
    noisy = _targets_text(rows, [1.0, 1.0, 1.0])
    assert "| 1.25× |  |  |  | not judged (IQR 30% of row B8 train torch) |" in noisy
    assert "| B64 | train | 20 | 2.00× | 1.50× |  |  |  | met |" in noisy  # its own rows are quiet
    assert "(target >= 2.0×: met)" in noisy  # the geomean compares lstm_jax and Flax only
    rows[0] = _timed("B8", "train", FLAX, 20, iqr=0.16)
    assert "(target >= 2.0×: not judged (IQR 16% of row B8 train flax_linen_optimized))" in (
        _targets_text(rows, [1.0, 1.0, 1.0])
    )


def test_nominal_peak_arithmetic_and_sources():
    from benchmarks import machine

    assert machine.flop_per_cycle(["sse2", "avx", "avx2", "fma", "avx512f"])[0] == 64
    assert machine.flop_per_cycle(["sse2", "avx", "avx2", "fma"])[0] == 32
    assert machine.flop_per_cycle(["sse2", "avx", "avx2"])[0] == 16  # no FMA
    assert machine.flop_per_cycle(["neon"]) == (None, "no x86 SIMD flags found (unknown ISA)")
    zen4, zen5 = (["avx2", "fma", "avx512f"], "AuthenticAMD", 25), (["avx2", "fma", "avx512f"], "AuthenticAMD", 26)
    assert machine.flop_per_cycle(*zen4)[0] == 32 and machine.flop_per_cycle(*zen5)[0] == 64
    cpuinfo = "processor\t: 0\ncpu MHz\t\t: 2596.124\nflags\t\t: fpu avx512f\n"
    assert machine.clock("", cpuinfo) == (2596.124e6, "/proc/cpuinfo 'cpu MHz' of the first CPU")
    assert machine.clock("CPU max MHz:  3700.0000\n", cpuinfo) == (3700e6, "lscpu 'CPU max MHz'")
    peak = machine.nominal_peak()
    if peak["flops"] is not None:
        assert peak["flops"] == peak["flop_per_cycle"] * peak["clock_hz"] * peak["cores"]
    assert peak["cores"] == machine.num_cores()
    nominal = {"flops": 64 * 2.5e9 * 2, "flop_per_cycle": 64, "isa": "AVX-512: x",
               "clock_hz": 2.5e9, "clock_source": "lscpu", "cores": 2, "cores_source": "affinity"}  # fmt: skip
    rows = [_timed("B8", "train", "lstm_jax[auto]", 10), _timed("B8", "train", "torch", 10)]
    rows[0]["matmul_flops"] = 0.64e9  # 64 GFLOP/s: 20% of the nominal 320, 50% of 128 measured
    # the native kernels forced to AVX2 on this AVX-512 CPU, its cores at 4 GHz: 256 GFLOP/s
    fma = {"flops": 256e9, "isa": "avx2", "cores": 2, "flop_per_cycle": 32, "clock_hz": 4e9}
    results = {"rows": rows, "nominal_peak": nominal, "flop_peak": 128e9, "fma_peak": fma}
    text = "\n".join(report._target_lines(results, {(("B8", "train"), r["peer"]): r for r in rows}, {}))
    assert "nominal: **320 GFLOP/s** = 64 FLOP/cycle (AVX-512: x; " in text
    assert "× 2.50 GHz (lscpu) × 2 cores (affinity)" in text
    assert ("Measured FMA peak: **256 GFLOP/s**: the native kernels' AVX2, 2 threads of independent "
            "float32 multiply-adds (best of 3), 32 FLOP/cycle at 4.00 GHz per core. The native "
            "kernels run AVX2, narrower than the CPU's") in text  # fmt: skip
    assert "Measured GEMM peak: **128 GFLOP/s**" in text
    assert "| B8 | train | 10 | — | 1.00× | 20.0 | 25.0 | 50.0 | met |" in text
    del results["fma_peak"]  # none measured (no native kernels): an empty column
    text = "\n".join(report._target_lines(results, {(("B8", "train"), r["peer"]): r for r in rows}, {}))
    assert "FMA peak: **" not in text and "| B8 | train | 10 | — | 1.00× | 20.0 |  | 50.0 | met |" in text


def test_fma_peak_is_the_native_isa_at_a_plausible_clock():
    """The measured FMA peak of the kernels' instruction set: lanes x 2 FLOP x 2 pipes per
    cycle (64 AVX-512, 32 AVX2) x cores x a clock a CPU can have."""
    from benchmarks import machine
    from lstm_jax.kernels import native_ops

    with pytest.raises(ValueError, match="threads must be >= 1"):
        native_ops.native_fma_peak(0)
    if native_ops.native_isa() in (None, "portable"):
        assert machine.fma_peak() is None and native_ops.native_fma_peak(1) is None
        return
    peak = machine.fma_peak()
    assert peak["isa"] == native_ops.native_isa() and peak["cores"] == machine.num_cores()
    assert peak["flop_per_cycle"] in ((32,) if peak["isa"] == "avx2" else (32, 64))
    assert peak["flops"] == pytest.approx(peak["flop_per_cycle"] * peak["clock_hz"] * peak["cores"])
    # no x86 core runs above 6.5 GHz: counting twice the lanes, FMAs or threads gives 7+ GHz
    # on this project's CPUs (3.3-3.7 GHz). Other processes only lower it (each thread's
    # rate counts its wall time), hence the low bound far below any real clock.
    assert 0.3e9 < peak["clock_hz"] < 6.5e9, peak


def test_gru_peers_compute_lstm_jax_gru():
    """Flax GRUCell (biases folded) and PyTorch nn.GRU against lstm_jax[scan]'s GRU."""
    names = [SCAN, "lstm_jax[auto]", "flax_linen_gru", "torch"]
    chosen = [p for p in peers.all_peers() if p.name in names and p.unavailable() is None]
    config = Config(3, 7, 5, 6, cell="gru")
    grid = Grid("gru", (Case(config, "train"), Case(config, "infer")), repeats=2, min_repeats=2,
                budget_s=1.0)  # fmt: skip
    results = run(grid, chosen, progress=False)
    for row in results["rows"]:
        assert row["status"] == "ok" and row["same_function"] is True, row
        assert row["outputs_max_abs_diff"] <= 1e-5 and row["grads_max_rel_diff"] <= 1e-5, row
    # the baseline of GRU cases is Flax's GRUCell
    assert {s["speedup"] for s in report.speedups(results["rows"])
            if s["peer"] == "flax_linen_gru"} == {1.0}  # fmt: skip
    assert peers.FlaxLinenPeer("optimized").unsupported(config) == "no GRU in this peer"


class _IgnoresResets(peers.FlaxLinenPeer):
    """Flax's nn.RNN that drops the resets: what a benchmark must not time as equal."""

    def __init__(self):
        super().__init__("optimized")
        self.name = "flax_without_resets"

    def apply(self, peer_params, x, config):
        plain = dataclasses.replace(config, reset_rate=0.0)
        return super().apply(peer_params, x.xs, plain)


def test_rl_case_peers_equal_with_resets_and_a_peer_ignoring_them_is_invalid():
    config = Config(3, 9, 5, 6, layers=2, reset_rate=0.3)
    _, x, _ = runner.make_inputs(config)
    assert isinstance(x, peers.WithResets) and x.resets.shape == (3, 9) and bool(x.resets.any())
    grid = Grid("rl", (Case(config, "train"), Case(config, "infer")), repeats=2, min_repeats=2,
                budget_s=1.0)  # fmt: skip
    chosen = [peers.LstmJaxPeer("scan"), peers.LstmJaxPeer("auto"), peers.FlaxLinenPeer("optimized"),
              _IgnoresResets(), peers.TorchPeer()]  # fmt: skip
    results = run(grid, chosen, progress=False)
    for row in results["rows"]:
        if row["peer"] in (SCAN, "lstm_jax[auto]", FLAX):
            assert row["status"] == "ok" and row["same_function"] is True, row
            assert row["outputs_max_abs_diff"] <= 1e-5 and row["grads_max_rel_diff"] <= 1e-5, row
        elif row["peer"] == "torch":
            assert row["status"] == "unsupported" and row["note"] == "no per-step resets in this peer"
        else:
            assert row["status"] == "invalid" and row["outputs_max_abs_diff"] > 1e-3, row


def test_rl_report_puts_the_ratio_beside_the_plain_case():
    from benchmarks import grid

    plain, with_resets = (dataclasses.replace(grid.RL_CONFIG, reset_rate=r) for r in (0.0, 0.02))
    assert with_resets.label == "B256 T128 I32 H128 resets 2%"
    rows = [_timed(plain.label, "train", FLAX, 30), _timed(plain.label, "train", "lstm_jax[auto]", 10),
            _timed(with_resets.label, "train", FLAX, 40),
            _timed(with_resets.label, "train", "lstm_jax[auto]", 16)]  # fmt: skip
    for row, config in zip(rows, (plain, plain, with_resets, with_resets)):
        row["config"] = config.as_dict()
    results = {"rows": rows, "machine": {"cores": 2}, "load_average": {"start": [0.5], "end": [3.0]}}
    by_key = {((r["label"], r["workload"]), r["peer"]): r for r in rows}
    (line,) = [x for x in report._rl_lines(results, by_key) if x.startswith("| B256")]
    assert line == ("| B256 T128 I32 H128 resets 2% | train | 16 | 40 | 2.50× | 3.00× | "
                    "not judged (load 3.00 on 2 cores) |")  # fmt: skip
    assert {c.config for c in grid.GRIDS["rl"]().cases} == {plain, with_resets}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_deploy_timing_checks_and_times_every_route(cell):
    """benchmarks/deploy.py: every deployed form is checked against jit, then timed."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("flatbuffers")
    from benchmarks import deploy

    rows = deploy.run_case((cell, 2, 4, 3, 8, 2, True), rounds=2)
    routes = [row.split(" | ")[1] for row in rows]
    portable = f"export portable ({deploy.PORTABLE[cell]}), jit(.call)"
    assert routes == ["jit", "export auto, .call", "export auto, jit(.call)", portable,
                      "onnxruntime"]  # fmt: skip
    assert all(float(row.split(" | ")[2]) > 0 for row in rows)
