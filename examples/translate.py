"""Dates in human formats and five languages -> ISO 8601: seq2seq with attention and beam search.

The data are generated at run time: a date between 1900-01-01 and 2099-12-31
written in one of 21 formats in English, French, German, Spanish and Italian
(month and weekday names, abbreviations, ordinals, numeric day-first and
year-first forms, sometimes upper case), e.g. "mercredi 3 mars 2021",
"3. März 2021", "Mar 3 2021", "3rd of March 2021", "03.03.2021" -> "2021-03-03".
10% of the calendar days are held out: a held-out date never occurs in
training, in any format.

The model reads characters. Encoder: a bidirectional LSTM over the ragged
batch (``lj.lstm(..., seq_lengths=...)``); its final states initialise the
decoder. Decoder: an LSTM fed one step at a time (``training.stream_step``)
with Luong "general" attention over the encoder outputs (masked past each
source's length) and input feeding (the previous attentional vector is part of
the next input). Training uses teacher forcing. Decoding is greedy and beam
search (``lstm_jax.decoding``; batched, jitted, length-normalised), both
through the same step function. The baseline is the same model without
attention: the decoder sees the source only through the encoder's final
state.

``--task numbers`` trains the same models on English number words below
10**9 -> digits ("four thousand twenty-one" -> "4021", sources of up to 102
characters), holding out 10% of the numbers from 100 up.

    python examples/translate.py --out runs/translate              # full run
    python examples/translate.py --quick --out /tmp/translate      # smoke test
    python examples/translate.py --task numbers --out runs/numbers

Writes metrics.json (``exact_match``: held-out exact match with beam search,
``exact_match_greedy``, the no-attention baseline's, accuracy per source
length), attention.png (attention heat maps), accuracy_vs_length.png,
training.png and metrics.jsonl/.csv.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from typing import Callable, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _common  # noqa: E402
import lstm_jax as lj  # noqa: E402
from lstm_jax import decoding, training as tr  # noqa: E402

# ----------------------------------------------------------------------------- data

MONTHS = {
    "en": "January February March April May June July August September October November December",
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
    "es": "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre",
    "it": "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre "
          "dicembre",
}
MONTHS = {k: v.split() for k, v in MONTHS.items()}
WEEKDAYS = {  # Monday first, as datetime.weekday()
    "en": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(),
    "fr": "lundi mardi mercredi jeudi vendredi samedi dimanche".split(),
    "de": "Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag".split(),
    "es": "lunes martes miércoles jueves viernes sábado domingo".split(),
    "it": "lunedì martedì mercoledì giovedì venerdì sabato domenica".split(),
}


def _ordinal(d: int) -> str:
    suffix = "th" if 11 <= d % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
    return f"{d}{suffix}"


def _fmt(lang, pattern):
    def render(date: dt.date) -> str:
        month = MONTHS[lang][date.month - 1] if lang else ""
        return pattern.format(
            d=date.day, dd=f"{date.day:02d}", m=date.month, mm=f"{date.month:02d}", y=date.year,
            month=month, mon=month[:3], wd=WEEKDAYS[lang][date.weekday()] if lang else "",
            ord=_ordinal(date.day), fr_d="1er" if date.day == 1 else str(date.day),
        )  # fmt: skip

    return render


FORMATS = [
    _fmt("en", "{month} {d}, {y}"), _fmt("en", "{wd}, {month} {d}, {y}"),
    _fmt("en", "{d} {month} {y}"), _fmt("en", "{ord} of {month} {y}"),
    _fmt("en", "{mon} {d} {y}"), _fmt("en", "{dd}-{mon}-{y}"), _fmt("en", "{wd} {ord} {month} {y}"),
    _fmt("fr", "{fr_d} {month} {y}"), _fmt("fr", "{wd} {fr_d} {month} {y}"),
    _fmt("fr", "le {fr_d} {month} {y}"),
    _fmt("de", "{d}. {month} {y}"), _fmt("de", "{wd}, {d}. {month} {y}"),
    _fmt("de", "{dd}.{mm}.{y}"),
    _fmt("es", "{d} de {month} de {y}"), _fmt("es", "{wd}, {d} de {month} de {y}"),
    _fmt("it", "{d} {month} {y}"), _fmt("it", "{wd} {d} {month} {y}"),
    _fmt(None, "{y}-{m}-{d}"), _fmt(None, "{y}/{mm}/{dd}"), _fmt(None, "{dd}/{mm}/{y}"),
    _fmt(None, "{y}{mm}{dd}"),
]  # fmt: skip

FIRST, LAST = dt.date(1900, 1, 1), dt.date(2099, 12, 31)
TARGET_CHARS = "0123456789-"
PAD, BOS, EOS = 0, 1, 2  # target ids; characters follow
TGT_LEN = 10 + 1  # YYYY-MM-DD and EOS
SRC_LEN = 40  # the longest source, "miércoles, 12 de septiembre de 1900", has 35


def render(date: dt.date, fmt: int, upper: bool) -> str:
    text = FORMATS[fmt](date)
    return text.upper() if upper else text


def split_days(seed: int, held_out: float = 0.1):
    days = np.arange((LAST - FIRST).days + 1)
    rng = np.random.default_rng(seed)
    test = rng.random(len(days)) < held_out
    return days[~test], days[test]


def sample(days: np.ndarray, n: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    picked = rng.choice(days, n)
    fmts = rng.integers(0, len(FORMATS), n)
    upper = rng.random(n) < 0.1
    dates = [FIRST + dt.timedelta(days=int(d)) for d in picked]
    return [render(d, f, u) for d, f, u in zip(dates, fmts, upper)], [d.isoformat() for d in dates]


# ----------------------------------------------------------------------------- numbers

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen").split()
TENS = "- - twenty thirty forty fifty sixty seventy eighty ninety".split()
NUM_SRC_LEN = 110  # the longest, 777777777, is 102 characters in words


def _below_1000(n: int) -> list[str]:
    words = [ONES[n // 100], "hundred"] if n >= 100 else []
    n %= 100
    if n >= 20:
        words.append(TENS[n // 10] + (f"-{ONES[n % 10]}" if n % 10 else ""))
    elif n:
        words.append(ONES[n])
    return words


def number_words(n: int) -> str:
    """English words for ``0 <= n < 10**9``: 4021 -> "four thousand twenty-one"."""
    if n == 0:
        return "zero"
    words = []
    for value, name in ((10**6, "million"), (10**3, "thousand"), (1, "")):
        if n >= value:
            words += _below_1000(n // value) + ([name] if name else [])
            n %= value
    return " ".join(words)


def _held_out_number(n: np.ndarray) -> np.ndarray:
    # a fixed pseudo-random 10% of the numbers from 100 up; every number below 100 is trained
    # on (each is a word, or a compound of two, that cannot be guessed unseen: "zero", "eleven")
    return ((n * 2654435761) % 1000 < 100) & (n >= 100)


def sample_numbers(n: int, rng: np.random.Generator, held_out: bool):
    """``n`` numbers from one side of the split, each digit count equally likely.

    Training numbers have 1..9 digits, held-out ones 3..9 (all of 0..99 is in training).
    """
    out = []
    while len(out) < n:
        digits = rng.integers(3 if held_out else 1, 10, 2 * n)
        nums = rng.integers(10 ** (digits - 1) * (digits > 1), 10**digits)
        out += [int(k) for k in nums[_held_out_number(nums) == held_out]]
    return [number_words(k) for k in out[:n]], [str(k) for k in out[:n]]


class Task(NamedTuple):
    name: str
    title: str
    src_len: int
    tgt_len: int
    train_sample: Callable  # (n, rng) -> (sources, targets)
    test_sample: Callable
    bins: list  # source-length bins [lo, hi) of the accuracy-vs-length plot
    examples: list  # sources whose attention is plotted
    held_out: str


def make_task(name: str, seed: int) -> Task:
    if name == "dates":
        train_days, test_days = split_days(seed)
        examples = [render(FIRST + dt.timedelta(days=int(test_days[k])), f, False)
                    for k, f in ((5, 1), (len(test_days) // 2, 8), (-30, 14))]  # fmt: skip
        return Task("dates", "dates -> ISO 8601", SRC_LEN, TGT_LEN,
                    lambda n, rng: sample(train_days, n, rng),
                    lambda n, rng: sample(test_days, n, rng),
                    [(0, 12), (12, 17), (17, 21), (21, 25), (25, SRC_LEN + 1)], examples,
                    f"{len(test_days)} of {len(train_days) + len(test_days)} calendar days")
    if name == "numbers":
        rng = np.random.default_rng(seed)
        return Task("numbers", "number words -> digits", NUM_SRC_LEN, TGT_LEN,
                    lambda n, rng: sample_numbers(n, rng, False),
                    lambda n, rng: sample_numbers(n, rng, True),
                    [(0, 20), (20, 40), (40, 60), (60, 80), (80, NUM_SRC_LEN + 1)],
                    sample_numbers(3, rng, True)[0], "10% of the numbers from 100 to 10**9 - 1")
    raise ValueError(f"unknown task {name!r}: use dates or numbers.")


class Vocab:
    def __init__(self, src_len: int = SRC_LEN):
        self.src_len = src_len
        chars = set("0123456789-/., abcdefghijklmnopqrstuvwxyz")
        for lang in MONTHS:
            for word in MONTHS[lang] + WEEKDAYS[lang] + ["of", "le", "de", "st", "nd", "rd", "th",
                                                          "er"]:
                chars |= set(word) | set(word.upper())
        self.src = ["<pad>"] + sorted(chars)
        self.src_index = {c: k for k, c in enumerate(self.src)}
        self.tgt = ["<pad>", "<bos>", "<eos>"] + list(TARGET_CHARS)

    def encode_src(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros((len(texts), self.src_len), np.int32)
        for i, t in enumerate(texts):
            ids[i, : len(t)] = [self.src_index[c] for c in t]
        return ids, np.array([len(t) for t in texts], np.int32)

    def encode_tgt(self, texts: list[str]) -> np.ndarray:
        """Target ids, EOS after the end (repeated up to the longest text's length + 1)."""
        width = max(len(t) for t in texts) + 1
        return np.array([[3 + TARGET_CHARS.index(c) for c in t] + [EOS] * (width - len(t))
                         for t in texts], np.int32)  # fmt: skip

    def decode_tgt(self, ids) -> str:
        out = []
        for k in np.asarray(ids):
            if k == EOS:
                break
            out.append(self.tgt[k] if k >= 3 else "?")
        return "".join(out)


# ----------------------------------------------------------------------------- model


def init_model(key, vocab: Vocab, *, embed: int, enc_hidden: int, dec_hidden: int) -> dict:
    ks = jax.random.split(key, 9)
    return {
        "src_embed": jax.random.normal(ks[0], (len(vocab.src), embed)) * 0.1,
        "tgt_embed": jax.random.normal(ks[1], (len(vocab.tgt), embed)) * 0.1,
        "encoder": lj.init_lstm(ks[2], embed, enc_hidden, bidirectional=True),
        "bridge_h": tr.init_dense(ks[3], 2 * enc_hidden, dec_hidden),
        "bridge_c": tr.init_dense(ks[4], 2 * enc_hidden, dec_hidden),
        "decoder": lj.init_lstm(ks[5], embed + dec_hidden, dec_hidden),
        "attn": tr.init_dense(ks[6], 2 * enc_hidden, dec_hidden),  # Luong "general": h W enc
        "combine": tr.init_dense(ks[7], dec_hidden + 2 * enc_hidden, dec_hidden),
        "out": tr.init_dense(ks[8], dec_hidden, len(vocab.tgt)),
    }


def encode(params, src, src_len, attention: bool):
    """The decoder's first carry ``((h, c), att_vec, memory)``, every leaf batch-first.

    Batch-first leaves are what ``decoding.beam_search`` needs (it repeats and
    reorders the carry along axis 0); the decoder's ``LSTMState`` (layer axis
    first) is rebuilt from ``h, c`` in :func:`decode_step`.
    """
    ys, state = lj.lstm(params["encoder"], params["src_embed"][src], seq_lengths=src_len)
    # ys: [B, S, 2E] (zeros past each length); state.h: [2, B, E] forward then reverse
    h = jnp.tanh(tr.dense(params["bridge_h"], jnp.concatenate([state.h[0], state.h[1]], -1)))
    c = tr.dense(params["bridge_c"], jnp.concatenate([state.c[0], state.c[1]], -1))
    memory = {"values": ys, "keys": tr.dense(params["attn"], ys),  # [B, S, D]
              "mask": jnp.arange(src.shape[1])[None, :] < src_len[:, None]}  # fmt: skip
    if not attention:
        memory = {k: jnp.zeros_like(v) for k, v in memory.items()}
    att_vec = jnp.zeros_like(h)  # [B, D]
    return ((h, c), att_vec, memory)


def decode_step(params, carry, tokens, attention: bool):
    """One decoder step for a batch: ``tokens [N]`` -> ``logits [N, V]``, alphas ``[N, S]``."""
    (h, c), att_vec, memory = carry  # h, c: [N, D]
    x = jnp.concatenate([params["tgt_embed"][tokens], att_vec], -1)  # input feeding
    h, state = tr.stream_step(params["decoder"], lj.LSTMState(h[None], c[None]), x)
    if attention:
        scores = jnp.einsum("nd,nsd->ns", h, memory["keys"])
        scores = jnp.where(memory["mask"], scores, -1e9)
        alphas = jax.nn.softmax(scores, axis=-1)  # [N, S]
        context = jnp.einsum("ns,nsk->nk", alphas, memory["values"])
    else:
        alphas = jnp.zeros(memory["mask"].shape)
        context = jnp.zeros((h.shape[0], memory["values"].shape[-1]))
    att_vec = jnp.tanh(tr.dense(params["combine"], jnp.concatenate([h, context], -1)))
    return tr.dense(params["out"], att_vec), alphas, ((state.h[0], state.c[0]), att_vec, memory)


def teacher_forced(params, src, src_len, tgt, attention: bool):
    """Logits ``[B, T, V]`` and attention ``[B, T, S]`` given the true previous tokens."""
    carry = encode(params, src, src_len, attention)
    inputs = jnp.concatenate([jnp.full((tgt.shape[0], 1), BOS), tgt[:, :-1]], axis=1)

    def step(carry, tokens):
        logits, alphas, carry = decode_step(params, carry, tokens, attention)
        return carry, (logits, alphas)

    _, (logits, alphas) = jax.lax.scan(step, carry, inputs.T)  # [T, B, ...]
    return jnp.swapaxes(logits, 0, 1), jnp.swapaxes(alphas, 0, 1)


def make_decoders(attention: bool, beam_size: int, length_penalty: float, max_len: int = TGT_LEN):
    def step_fn(params):
        def step(carry, tokens):
            logits, _, carry = decode_step(params, carry, tokens, attention)
            return jax.nn.log_softmax(logits), carry

        return step

    @jax.jit
    def greedy(params, src, src_len):
        return decoding.greedy_search(step_fn(params), encode(params, src, src_len, attention),
                                      bos_id=BOS, eos_id=EOS, max_len=max_len)  # fmt: skip

    @jax.jit
    def beam(params, src, src_len):
        seqs, _ = decoding.beam_search(
            step_fn(params), encode(params, src, src_len, attention), bos_id=BOS, eos_id=EOS,
            beam_size=beam_size, max_len=max_len, length_penalty=length_penalty)
        return seqs[:, 0]

    return greedy, beam


# ----------------------------------------------------------------------------- run


def parse_args(argv=None):
    parser = _common.base_parser(__doc__.splitlines()[0], "runs/translate")
    parser.add_argument("--task", choices=["dates", "numbers"], default="dates")
    parser.add_argument("--embed", type=int, default=32)
    parser.add_argument("--enc-hidden", type=int, default=64)
    parser.add_argument("--dec-hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--no-baseline", action="store_true", help="skip the model without attention")
    args = parser.parse_args(argv)
    if args.quick:
        args.test_size = min(args.test_size, 1000)
    args.steps = args.steps or (1200 if args.quick else 4000)
    return args


def train_model(args, vocab, task: Task, attention: bool, desc: str):
    key = jax.random.key(args.seed)
    params = init_model(key, vocab, embed=args.embed, enc_hidden=args.enc_hidden,
                        dec_hidden=args.dec_hidden)  # fmt: skip

    def loss_fn(params, batch, key):
        del key
        logits, _ = teacher_forced(params, batch["src"], batch["src_len"], batch["tgt"], attention)
        loss = tr.softmax_cross_entropy(logits, batch["tgt"])
        return loss, {"token_accuracy": tr.accuracy(logits, batch["tgt"])}

    optimizer = tr.make_optimizer(args.lr, clip_norm=1.0, warmup_steps=100, decay_steps=args.steps)
    state = tr.init_train_state(params, optimizer, jax.random.fold_in(key, 1))
    step_fn = tr.make_train_step(loss_fn, optimizer)
    rng = np.random.default_rng(args.seed + (0 if attention else 1))
    from tqdm.auto import tqdm

    history, pending, t0 = [], [], time.perf_counter()
    every = _common.log_every(args.steps)
    for step in tqdm(range(args.steps), disable=args.no_progress, desc=desc):
        srcs, tgts = task.train_sample(args.batch, rng)
        src, src_len = vocab.encode_src(srcs)
        tgt = np.full((args.batch, task.tgt_len), EOS, np.int32)  # one shape: one compilation
        enc = vocab.encode_tgt(tgts)
        tgt[:, : enc.shape[1]] = enc
        state, metrics = step_fn(state, {"src": src, "src_len": src_len, "tgt": tgt})
        pending.append(metrics)
        if (step + 1) % every == 0 or step + 1 == args.steps:
            means = jax.device_get(pending)
            pending = []
            history.append({"step": step + 1, "time_s": round(time.perf_counter() - t0, 2),
                            **{n: float(np.mean([m[n] for m in means]))
                               for n in ("loss", "token_accuracy")}})  # fmt: skip
    return state.params, history, time.perf_counter() - t0


def evaluate(params, vocab, srcs, tgts, attention, args, task: Task) -> dict:
    greedy, beam = make_decoders(attention, args.beam, args.length_penalty, task.tgt_len)
    out = {"greedy": [], "beam": []}
    t0 = time.perf_counter()
    for start in range(0, len(srcs), 500):
        src, src_len = vocab.encode_src(srcs[start : start + 500])
        for name, fn in (("greedy", greedy), ("beam", beam)):
            out[name] += [vocab.decode_tgt(s) for s in np.asarray(fn(params, src, src_len))]
    correct = {k: np.array([p == t for p, t in zip(v, tgts)]) for k, v in out.items()}
    lengths = np.array([len(s) for s in srcs])
    bins = task.bins
    by_length = {f"{lo}-{hi - 1}": {"n": int(np.sum((lengths >= lo) & (lengths < hi))),
                                    **{k: float(c[(lengths >= lo) & (lengths < hi)].mean())
                                       for k, c in correct.items()}}
                 for lo, hi in bins if np.any((lengths >= lo) & (lengths < hi))}  # fmt: skip
    errors = [(s, p, t) for s, p, t in zip(srcs, out["beam"], tgts) if p != t][:10]
    return {"exact_match": float(correct["beam"].mean()),
            "exact_match_greedy": float(correct["greedy"].mean()), "by_length": by_length,
            "errors": errors, "decode_s": round(time.perf_counter() - t0, 2)}  # fmt: skip


def plot_attention(params, vocab, srcs, path: str, attention: bool, max_len: int):
    from matplotlib.figure import Figure

    src, src_len = vocab.encode_src(srcs)
    greedy, _ = make_decoders(attention, 1, 1.0, max_len)
    pred = np.asarray(greedy(params, src, src_len))
    _, alphas = jax.jit(teacher_forced, static_argnums=4)(params, src, src_len, pred, attention)
    fig = Figure(figsize=(10, 2.6 * len(srcs)))
    axes = fig.subplots(len(srcs), 1, squeeze=False)[:, 0]
    for ax, text, p, a, n in zip(axes, srcs, pred, np.asarray(alphas), src_len):
        out = [vocab.tgt[k] if k >= 3 else "<eos>" for k in p]
        ax.imshow(a[:, :n], cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ax.set_xticks(range(n), list(text), fontsize=8)
        ax.set_yticks(range(len(out)), out, fontsize=8)
        ax.set_xlabel("source character")
        ax.set_ylabel("output")
        ax.set_title(f"{text!r} -> {vocab.decode_tgt(p)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_by_length(results: dict, path: str, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for name, r in results.items():
        bins = list(r["by_length"])
        ax.plot(range(len(bins)), [r["by_length"][b]["beam"] for b in bins], marker="o", label=name)
        ax.set_xticks(range(len(bins)), bins)
    ax.set_xlabel("source length (characters)")
    ax.set_ylabel("held-out exact match (beam search)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}: accuracy vs source length")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(args) -> dict:
    os.makedirs(args.out, exist_ok=True)
    task = make_task(args.task, args.seed)
    vocab = Vocab(task.src_len)
    test_src, test_tgt = task.test_sample(args.test_size, np.random.default_rng(args.seed + 7))
    writer = tr.MetricsWriter(args.out, start_step=0)
    results, histories, walls = {}, {}, {}
    for attention in (True,) if args.no_baseline else (True, False):
        name = "attention" if attention else "no_attention"
        params, history, wall = train_model(args, vocab, task, attention, f"seq2seq {name}")
        for row in history:
            writer.write({**row, "model": name})
        results[name] = evaluate(params, vocab, test_src, test_tgt, attention, args, task)
        histories[name], walls[name] = history, wall
        print(f"  {name}: held-out exact match beam {results[name]['exact_match']:.4f}, "
              f"greedy {results[name]['exact_match_greedy']:.4f} ({wall:.0f} s training)",
              flush=True)
        if attention:
            plot_attention(params, vocab, task.examples, os.path.join(args.out, "attention.png"),
                           True, task.tgt_len)  # fmt: skip
    plot_by_length({("LSTM + attention" if k == "attention" else "LSTM, no attention"): v
                    for k, v in results.items()}, os.path.join(args.out, "accuracy_vs_length.png"),
                   task.title)  # fmt: skip
    rows = [{**r, "loss_" + k: r["loss"]} for k, h in histories.items() for r in h]
    _common.plot_history(rows, os.path.join(args.out, "training.png"),
                         [("training loss (nats/token)", [f"loss_{k}" for k in histories], True)],
                         title=f"{task.title}: teacher-forced training loss")  # fmt: skip
    att = results["attention"]
    result = {
        "task": f"translate_{task.name}", "held_out": task.held_out,
        "test_size": len(test_src), "steps": args.steps,
        "batch": args.batch, "beam": args.beam, "length_penalty": args.length_penalty,
        "exact_match": att["exact_match"], "exact_match_greedy": att["exact_match_greedy"],
        "models": results, "train_wall_s": walls, "run": _common.run_info(),
    }  # fmt: skip
    if "no_attention" in results:
        result["exact_match_no_attention"] = results["no_attention"]["exact_match"]
        result["exact_match_greedy_no_attention"] = results["no_attention"]["exact_match_greedy"]
    tr.write_json(os.path.join(args.out, "metrics.json"), result)
    print(f"translate: held-out exact match {att['exact_match']:.4f} (beam {args.beam}), "
          f"{att['exact_match_greedy']:.4f} (greedy)"
          + (f"; without attention {result['exact_match_no_attention']:.4f}"
             if "no_attention" in results else ""))
    _common.print_outputs(args.out)
    return result


if __name__ == "__main__":
    run(parse_args())
