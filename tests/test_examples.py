"""Each example's --quick run: it finishes and writes metrics JSON, PNG plots and a checkpoint."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


# the scripts import lstm_jax from this checkout, not from wherever it is installed
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}


def run_example(name, out, *extra):
    cmd = [sys.executable, os.path.join(EXAMPLES, name), "--quick", "--no-progress", "--out",
           str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def load(path):
    with open(path) as f:
        return json.load(f)


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path


def assert_checkpoint(directory):
    steps = [d for d in os.listdir(directory) if d.isdigit()]
    assert steps, f"no checkpoint in {directory}"


def test_digits_quick(tmp_path):
    out = run_example("digits.py", tmp_path)
    assert f"outputs in {tmp_path}" in out
    m = load(tmp_path / "metrics.json")
    assert 0.3 < m["test_accuracy"] <= 1.0  # well above chance (0.1) after 120 steps
    assert m["params"] > 0 and len(m["grad_norm_h"]) == 8
    assert set(m["saturation"]) == {"i", "f", "g", "o"}
    for png in ("training.png", "gradient_flow.png", "gates.png"):
        assert_png(tmp_path / png)
    assert_checkpoint(tmp_path / "checkpoints")
    assert os.path.getsize(tmp_path / "metrics.csv") > 0


def test_sunspots_quick(tmp_path):
    run_example("sunspots.py", tmp_path)
    m = load(tmp_path / "metrics.json")
    assert m["test_years"] == [1950, 2008]
    for name in ("model", "persistence", "seasonal_naive_11y", "ar9", "ar2"):
        assert math.isfinite(m[name]["rmse"]) and m[name]["mae"] <= m[name]["rmse"]
    assert 18.7 < m["ar9"]["rmse"] < 18.8 and 22.1 < m["ar2"]["rmse"] < 22.2  # statsmodels AR
    assert m["best_rmse"] in ("model", "persistence", "seasonal_naive_11y", "ar9", "ar2")
    assert_png(tmp_path / "forecast.png")
    assert_checkpoint(tmp_path / "seed0" / "checkpoints")


def test_char_lm_quick(tmp_path):
    run_example("char_lm.py", tmp_path)
    m = load(tmp_path / "metrics.json")
    assert 0.0 < m["val_bpc"] < math.log2(m["vocab_size"]) + 1.0
    assert m["corpus_files"] >= 1 and m["corpus_chars"] == 60_000
    for sample in m["samples"].values():
        assert sample.startswith("def ") and len(sample) == len("def ") + 80
    assert_png(tmp_path / "training.png")
    assert_png(tmp_path / "gradient_flow.png")
    assert_checkpoint(tmp_path / "checkpoints")


@pytest.mark.slow
def test_char_lm_reads_a_given_text_file(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    run_example("char_lm.py", tmp_path / "out", "--text", str(text), "--steps", "5",
                "--prime", "the ")
    m = load(tmp_path / "out" / "metrics.json")
    assert m["corpus_files"] == 1 and m["vocab_size"] == len(set("the quick brown fox jumps over the lazy dog. "))


@pytest.fixture(scope="module")
def long_range_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("long_range")
    run_example("long_range.py", out)
    return out


def test_long_range_quick(long_range_quick):
    out = long_range_quick
    m = load(out / "metrics.json")
    assert set(m) >= {"adding/lstm", "adding/rnn", "memory/lstm", "memory/rnn"}
    assert abs(m["adding_baseline_mse"] - 1 / 6) < 1e-9
    for task in ("adding", "memory"):
        assert_png(out / f"gradient_flow_{task}.png")
        for cell in ("lstm", "rnn"):
            r = load(out / f"{task}_{cell}" / "metrics.json")
            assert len(r["grad_norm_h_init"]) == 12 + 12 // 10  # T_max = T + T // 10
            assert_checkpoint(out / f"{task}_{cell}" / "checkpoints")
            assert_png(out / f"{task}_{cell}" / "training.png")  # 20 logged points, not 1


def test_compare_cells_quick(long_range_quick, tmp_path):
    out = run_example_compare(tmp_path, long_range_quick)
    table = open(tmp_path / "comparison.md").read()
    assert table.count("\n") == 2 + 4  # header, rule, 2 tasks x 2 cells
    assert "| adding, T=12 |" in table and "| sunspots |" in table and "RNN" in table
    assert "AR(9)" in table
    assert "adding" in out and f"wrote {tmp_path / 'comparison.md'}" in out


def run_example_compare(tmp_path, long_range_dir):
    cmd = [sys.executable, os.path.join(EXAMPLES, "compare_cells.py"), "--quick", "--out",
           str(tmp_path), "--long-range-dir", str(long_range_dir), "--tasks", "adding,sunspots",
           "--cells", "lstm,rnn"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_plot_history_skips_curves_with_too_few_points(tmp_path, capsys):
    sys.path.insert(0, EXAMPLES)
    import _common

    panels = [("loss", ["loss"], True), ("accuracy", ["val_accuracy"], False)]
    one = [{"step": 20, "loss": 0.5, "val_accuracy": 0.5}]
    assert _common.plot_history(one, str(tmp_path / "a.png"), panels, title="t") is None
    assert "skipped" in capsys.readouterr().out and not (tmp_path / "a.png").exists()
    rows = [{"step": s, "loss": 1.0 / s, "val_accuracy": 0.1 * s} for s in range(1, 6)]
    assert_png(_common.plot_history(rows, str(tmp_path / "b.png"), panels, title="t"))
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)] + [{"step": 5, "val_accuracy": 0.5}]
    assert_png(_common.plot_history(rows, str(tmp_path / "c.png"), panels, title="t"))
    assert "left out val_accuracy" in capsys.readouterr().out


def test_kneser_ney_is_a_distribution():
    sys.path.insert(0, EXAMPLES)
    import numpy as np
    from char_lm_baselines import KneserNey

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, 3000)
    ids[::3] = 2  # some structure, and symbol 5 never seen
    for order in (1, 2, 4):
        model = KneserNey(ids, order, 6)
        for context in ([2, 1, 0], [0, 0, 0], [5, 5, 5]):
            seqs = np.array([context + [w] for w in range(6)]).reshape(-1)
            probs = 2.0 ** model.log2_probs(seqs, np.arange(3, len(seqs), 4))
            assert abs(probs.sum() - 1.0) < 1e-9 and probs.min() > 0


def test_char_lm_baselines_quick(tmp_path):
    run_example("char_lm_baselines.py", tmp_path)
    m = load(tmp_path / "metrics.json")
    assert m["corpus_chars"] == 60_000 and set(m["ngram"]) == {"1", "2", "3", "4", "5"}
    bpc = [m["ngram"][str(n)]["bpc"] for n in range(1, 6)]
    assert bpc[0] < math.log2(m["vocab_size"]) and bpc[3] < bpc[0]  # context helps
    for r in m["compressors"].values():
        assert 0.5 < r["bpc_given_train"] < 8 and 0.5 < r["bpc_alone"] < 8
    assert m["winner"] == m["ranking"][0][0]
    assert_png(tmp_path / "baselines.png")


def test_rl_memory_smoke(tmp_path):
    pytest.importorskip("gymnax")
    run_example("rl_memory.py", tmp_path, "--steps", "3", "--sweep", "", "--memory-length", "4",
                "--num-envs", "8", "--eval-episodes", "16", "--no-baseline")  # the MLP: slow test
    m = load(tmp_path / "metrics.json")
    assert 0.0 <= m["success_rate"] <= 1.0 and m["success_rate_mlp"] is None
    assert m["env_steps"] == 3 * 8 * 10 and len(m["history_lstm"]) == 3
    assert_png(tmp_path / "success.png")
    assert_png(tmp_path / "memory_length.png")


@pytest.mark.slow
def test_rl_memory_quick(tmp_path):
    pytest.importorskip("gymnax")
    run_example("rl_memory.py", tmp_path)
    m = load(tmp_path / "metrics.json")
    assert m["memory_length"] == 20 and m["success_rate"] >= 0.9
    assert m["success_rate_mlp"] < 0.65  # a memoryless policy can only guess
    assert set(m["sweep"]) == {"5", "10", "20"}


def test_translate_smoke(tmp_path):
    run_example("translate.py", tmp_path, "--steps", "3", "--test-size", "20", "--batch", "8",
                "--beam", "2", "--no-baseline")  # the model without attention: the slow test
    m = load(tmp_path / "metrics.json")
    assert 0.0 <= m["exact_match"] <= 1.0 and 0.0 <= m["exact_match_greedy"] <= 1.0
    assert m["test_size"] == 20 and "exact_match_no_attention" not in m
    for png in ("attention.png", "accuracy_vs_length.png"):
        assert_png(tmp_path / png)


def test_translate_data_hold_out_whole_dates():
    sys.path.insert(0, EXAMPLES)
    import numpy as np
    import translate

    train_days, test_days = translate.split_days(0)
    assert not set(train_days) & set(test_days) and 0.08 < len(test_days) / 73049 < 0.12
    srcs, tgts = translate.sample(test_days, 500, np.random.default_rng(0))
    vocab = translate.Vocab()
    src, lengths = vocab.encode_src(srcs)  # every character is in the vocabulary
    assert lengths.max() <= translate.SRC_LEN
    assert all(vocab.decode_tgt(t) == g for t, g in zip(vocab.encode_tgt(tgts), tgts))
    d = translate.dt.date(2021, 3, 1)
    assert {translate.render(d, f, False) for f in (1, 8, 11)} == {
        "Monday, March 1, 2021", "lundi 1er mars 2021", "Montag, 1. März 2021"}


@pytest.mark.slow
def test_translate_quick(tmp_path):
    run_example("translate.py", tmp_path)
    m = load(tmp_path / "metrics.json")
    assert m["exact_match"] >= 0.9 and m["exact_match_greedy"] >= 0.9
    assert m["exact_match_no_attention"] < m["exact_match"]


def test_translate_numbers_data():
    sys.path.insert(0, EXAMPLES)
    import numpy as np
    import translate

    words = {0: "zero", 13: "thirteen", 40: "forty", 101: "one hundred one",
             4021: "four thousand twenty-one", 90_000_010: "ninety million ten",
             777_777_777: "seven hundred seventy-seven million seven hundred seventy-seven "
                          "thousand seven hundred seventy-seven"}  # fmt: skip
    assert {n: translate.number_words(n) for n in words} == words
    rng = np.random.default_rng(0)
    train = set(translate.sample_numbers(5000, rng, False)[1])
    srcs, test = translate.sample_numbers(1000, rng, True)
    assert not train & set(test) and min(int(t) for t in test) >= 100
    assert max(map(len, srcs)) <= translate.NUM_SRC_LEN and "0" in {t[0] for t in train}
