"""The benchmark suite on a tiny grid: files, schema, fairness check."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax as lj
from benchmarks import Case, Config, Grid, run, write
from benchmarks import cli, peers, report

SCAN = "lstm_jax[scan]"
FLAX = "flax_linen_optimized"


def _rows(results, peer):
    return [r for r in results["rows"] if r["peer"] == peer]


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
    assert "- B8 train: 8 ms vs `torch` 10 ms, **1.25×** (target: no slower: met)" in text
    assert "- B8 bf16 train: 15 ms vs `torch` 12 ms, **0.80×** (target: no slower: not met)" in text


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
