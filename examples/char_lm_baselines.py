"""Baselines for the character LM: Kneser-Ney n-grams and general-purpose compressors.

Scores the held-out text of ``examples/char_lm.py`` (same corpus, same 90/10
split, same character vocabulary) with

* an interpolated modified Kneser-Ney character n-gram (Chen & Goodman 1998:
  three discounts per order, continuation counts below the top order, a
  uniform distribution over the vocabulary at the bottom), n = 1..--max-order,
  fitted on the training text in numpy. It is scored on exactly the positions
  whose bits the LSTM's ``val_bpc`` averages (the characters the 8 held-out
  streams predict), with the preceding text as context;
* ``lzma`` (xz, preset 9 extreme), ``bz2`` (level 9) and ``zlib`` (level 9):
  bits per character of the held-out text given the training text as a
  prefix, ``8 * (len(C(train + held_out)) - len(C(train))) / len(held_out)``,
  i.e. what the compressor adds for the held-out part once it has seen the
  training text. (bz2 works on 900 kB blocks and zlib on a 32 kB window, so
  they use little of the prefix; lzma's window covers all of it.)

It then reads the LSTM's ``metrics.json`` (``--lstm`` directories, e.g.
``examples/results/char_lm``) and says which wins. The n-gram order reported
as "best" is chosen on the held-out text itself, which favours the n-gram.

    python examples/char_lm_baselines.py --out runs/char_lm_baselines \
        --lstm examples/results/char_lm
    python examples/char_lm_baselines.py --quick --out /tmp/char_lm_baselines

Writes metrics.json and baselines.png (bits/char against the n-gram order,
with the compressors and the LSTM runs as horizontal lines).
"""

from __future__ import annotations

import bz2
import json
import lzma
import os
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import _common  # noqa: E402
from lstm_jax import data, training as tr  # noqa: E402


def parse_args(argv=None):
    parser = _common.base_parser(__doc__.splitlines()[0], "runs/char_lm_baselines")
    parser.add_argument("--text", default=None, help="as for char_lm.py")
    parser.add_argument("--max-chars", type=int, default=1_000_000)
    parser.add_argument("--max-order", type=int, default=8, help="largest n of the n-grams")
    parser.add_argument("--val-streams", type=int, default=8, help="as char_lm.py evaluates")
    parser.add_argument("--chunk", type=int, default=100, help="as char_lm.py evaluates")
    parser.add_argument("--lstm", action="append", default=[],
                        help="a char_lm.py output directory (metrics.json) to compare with")
    args = parser.parse_args(argv)
    if args.quick:  # the same corpus size as char_lm.py --quick
        args.max_chars = min(args.max_chars, 60_000)
        args.max_order = min(args.max_order, 5)
        args.chunk = min(args.chunk, 32)
    return args


# ----------------------------------------------------------------------------- the n-gram


def _keys(ids: np.ndarray, ends: np.ndarray, order: int, vocab: int) -> np.ndarray:
    """Integer key of the ``order`` characters ending at each of ``ends`` (inclusive)."""
    key = np.zeros(len(ends), np.int64)
    for j in range(order):
        key = key * vocab + ids[ends - order + 1 + j]
    return key


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``values`` at ``queries`` in ``sorted_keys``; 0 where a query is absent."""
    pos = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == queries, values[pos], 0)


class KneserNey:
    """Interpolated modified Kneser-Ney over integer symbols ``0..vocab-1``.

    ``p_k(w | h) = (c(hw) - D_k(c(hw)) + gamma_k(h) p_{k-1}(w | h')) / c(h)`` with
    ``c`` the raw counts at the top order and continuation counts (the number of
    distinct characters seen before ``hw``) below it; ``gamma_k(h) = D_k1 N1(h)
    + D_k2 N2(h) + D_k3 N3+(h)``; an unseen context backs off entirely,
    ``p_k = p_{k-1}``; ``p_0`` is uniform over the vocabulary.
    """

    def __init__(self, ids: np.ndarray, order: int, vocab: int):
        ids = np.asarray(ids, np.int64)
        if vocab ** order >= 2**62:
            raise ValueError(f"vocab**order = {vocab}**{order} does not fit int64 keys.")
        self.order, self.vocab = order, vocab
        self.levels = []  # per k = 1..order: gram keys, counts, context tables, discounts
        upper = None  # unique (k+1)-gram keys, for continuation counts
        for k in range(order, 0, -1):
            grams = _keys(ids, np.arange(k - 1, len(ids)), k, vocab)
            if k == order:
                keys, counts = np.unique(grams, return_counts=True)
            else:  # continuation count: distinct left neighbours of each k-gram
                keys, counts = np.unique(upper % vocab**k, return_counts=True)
            upper = np.unique(grams)
            n = [np.sum(counts == r) for r in (1, 2, 3, 4)]
            y = n[0] / max(n[0] + 2 * n[1], 1)
            discounts = np.array([0.0] + [
                max(r - (r + 1) * y * n[r] / max(n[r - 1], 1), 0.0) for r in (1, 2, 3)
            ])  # fmt: skip
            ctx = keys // vocab
            ctx_keys, first = np.unique(ctx, return_index=True)
            totals = np.add.reduceat(counts, first)
            capped = np.minimum(counts, 3)
            gamma = np.add.reduceat(discounts[capped], first)
            self.levels.append((keys, counts, discounts, ctx_keys, totals, gamma))
        self.levels.reverse()

    def log2_probs(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """``log2 p(ids[t] | ids[t-order+1 : t])`` for each ``t`` in ``positions``."""
        ids = np.asarray(ids, np.int64)
        positions = np.asarray(positions)
        if positions.min() < self.order - 1:
            raise ValueError(f"positions must be >= order - 1 = {self.order - 1}.")
        p = np.full(len(positions), 1.0 / self.vocab)
        for k, (keys, counts, discounts, ctx_keys, totals, gamma) in enumerate(self.levels, 1):
            gram = _keys(ids, positions, k, self.vocab)
            c = _lookup(keys, counts, gram)
            total = _lookup(ctx_keys, totals, gram // self.vocab).astype(np.float64)
            g = _lookup(ctx_keys, gamma, gram // self.vocab)
            seen = total > 0
            safe = np.where(seen, total, 1.0)
            p = np.where(seen, (c - discounts[np.minimum(c, 3)] + g * p) / safe, p)
        return np.log2(p)


# ----------------------------------------------------------------------------- the rest


def lstm_positions(num_held_out: int, num_streams: int, chunk: int) -> np.ndarray:
    """Offsets in the held-out ids of the characters that ``char_lm.bits_per_char`` scores."""
    length = num_held_out // num_streams
    offsets = []
    for s in range(num_streams):
        for start in range(0, length - chunk - 1, chunk):
            offsets.append(s * length + np.arange(start + 1, start + chunk + 1))
    return np.concatenate(offsets)


COMPRESSORS = {
    "lzma": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
    "bz2": lambda b: bz2.compress(b, 9),
    "zlib": lambda b: zlib.compress(b, 9),
}


def compressed_bits_per_char(train: str, held_out: str) -> dict:
    out = {}
    prefix, both = train.encode("utf-8"), (train + held_out).encode("utf-8")
    for name, compress in COMPRESSORS.items():
        t0 = time.perf_counter()
        extra = len(compress(both)) - len(compress(prefix))
        alone = len(compress(held_out.encode("utf-8")))
        out[name] = {"bpc_given_train": 8 * extra / len(held_out),
                     "bpc_alone": 8 * alone / len(held_out),
                     "time_s": round(time.perf_counter() - t0, 2)}  # fmt: skip
    return out


def load_lstm_runs(dirs: list[str]) -> dict:
    runs = {}
    for d in dirs:
        with open(os.path.join(d, "metrics.json")) as f:
            m = json.load(f)
        if "hidden" not in m:  # a run recorded before char_lm.py wrote its sizes: its command's
            import char_lm

            m.update(vars(char_lm.parse_args(m["run"]["argv"][1:])))  # sizes and defaults
        name = f"LSTM {m['layers']}x{m['hidden']} ({os.path.basename(d.rstrip('/'))})"
        runs[name] = {"val_bpc": m["val_bpc"], "train_wall_s": m.get("train_wall_s"),
                      "steps": m.get("steps"), "corpus_chars": m.get("corpus_chars"),
                      "dir": d}  # fmt: skip
    return runs


def plot(result: dict, path: str) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    orders = sorted(int(n) for n in result["ngram"])
    ax.plot(orders, [result["ngram"][str(n)]["bpc"] for n in orders], marker="o",
            label="Kneser-Ney n-gram")
    styles = iter(["--", ":", "-."] * 4)
    for name, r in result["compressors"].items():
        ax.axhline(r["bpc_given_train"], ls=next(styles), color="gray",
                   label=f"{name} (held-out given train)")
    for k, (name, r) in enumerate(result["lstm"].items()):
        ax.axhline(r["val_bpc"], color=f"C{k + 1}", label=name)
    ax.set_xlabel("n-gram order n (characters of context + 1)")
    ax.set_ylabel("held-out bits per character")
    ax.set_title("char LM on Python stdlib sources: LSTM vs n-gram vs compressors")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def run(args) -> dict:
    os.makedirs(args.out, exist_ok=True)
    text, files = data.load_text(args.text, max_chars=args.max_chars)
    vocab = data.CharVocab.from_text(text)
    ids = vocab.encode(text).astype(np.int64)
    split = int(0.9 * len(ids))
    positions = split + lstm_positions(len(ids) - split, args.val_streams, args.chunk)
    result = {"task": "char_lm_baselines", "corpus_chars": len(text), "corpus_files": len(files),
              "vocab_size": vocab.size, "held_out_chars": len(ids) - split,
              "scored_chars": len(positions), "ngram": {}}  # fmt: skip
    from tqdm.auto import tqdm

    for n in tqdm(range(1, args.max_order + 1), disable=args.no_progress, desc="n-grams"):
        t0 = time.perf_counter()
        model = KneserNey(ids[:split], n, vocab.size)
        bits = -model.log2_probs(ids, positions)
        result["ngram"][str(n)] = {"bpc": float(bits.mean()),
                                   "time_s": round(time.perf_counter() - t0, 2)}
        print(f"  Kneser-Ney {n}-gram: {bits.mean():.3f} bits/char "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    best = min(result["ngram"], key=lambda n: result["ngram"][n]["bpc"])
    result["ngram_best_order"] = int(best)
    result["ngram_best_bpc"] = result["ngram"][best]["bpc"]
    result["compressors"] = compressed_bits_per_char(text[:split], text[split:])
    for name, r in result["compressors"].items():
        print(f"  {name}: {r['bpc_given_train']:.3f} bits/char given the training text "
              f"({r['bpc_alone']:.3f} alone)")
    result["lstm"] = load_lstm_runs(args.lstm)
    scores = {f"Kneser-Ney {best}-gram": result["ngram_best_bpc"],
              **{k: r["bpc_given_train"] for k, r in result["compressors"].items()},
              **{k: r["val_bpc"] for k, r in result["lstm"].items()}}
    result["ranking"] = sorted(scores.items(), key=lambda kv: kv[1])
    result["winner"] = result["ranking"][0][0]
    result["run"] = _common.run_info()
    plot(result, os.path.join(args.out, "baselines.png"))
    tr.write_json(os.path.join(args.out, "metrics.json"), result)
    print("ranking (bits/char, lower is better): "
          + ", ".join(f"{k} {v:.3f}" for k, v in result["ranking"]))
    print(f"winner: {result['winner']}")
    _common.print_outputs(args.out)
    return result


if __name__ == "__main__":
    run(parse_args())
