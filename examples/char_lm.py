"""Character language model trained with truncated BPTT on a real text corpus.

Default corpus: the Python standard library's own source files on this
machine (top-level ``*.py`` under ``os.path.dirname(os.__file__)``, sorted by
name, first --max-chars characters); or any file with --text. The last 10%
is held out for validation.

Training cuts the corpus into --batch parallel streams and trains on chunks
of --chunk characters, carrying the LSTM state from chunk to chunk behind
``lax.stop_gradient`` (``training.make_tbptt_train_step``). Validation bits
per character are measured the same way over the held-out streams. Text is
generated one character at a time with ``training.stream_step`` and
temperature sampling.

    python examples/char_lm.py --out runs/char_lm              # full run
    python examples/char_lm.py --quick --out /tmp/char_lm      # smoke test
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _common  # noqa: E402
from lstm_jax import data, diagnostics as dg, training as tr  # noqa: E402


def parse_args(argv=None):
    parser = _common.base_parser(__doc__.splitlines()[0], "runs/char_lm")
    parser.add_argument("--text", default=None, help="a text file or a directory of .py files")
    parser.add_argument("--max-chars", type=int, default=1_000_000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="dropout between the layers and before the readout (training only)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--sample-chars", type=int, default=400)
    parser.add_argument("--prime", default="def ")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_chars = min(args.max_chars, 60_000)
        args.hidden = min(args.hidden, 64)
        args.chunk = min(args.chunk, 32)
        args.batch = min(args.batch, 16)
        args.sample_chars = min(args.sample_chars, 80)
    args.steps = args.steps or (40 if args.quick else 2000)
    return args


def streams(ids: np.ndarray, num_streams: int) -> np.ndarray:
    """``(N,) -> (num_streams, N // num_streams)``: contiguous parallel streams."""
    length = len(ids) // num_streams
    return ids[: num_streams * length].reshape(num_streams, length)


def init_params(args, key, vocab_size: int) -> dict:
    k_emb, k_model = jax.random.split(key)
    model = _common.init_model(args.cell, k_model, args.embed, args.hidden, vocab_size,
                               num_layers=args.layers)  # fmt: skip
    model["embed"] = jax.random.normal(k_emb, (vocab_size, args.embed)) * 0.1
    return model


def logits_and_state(params, tokens, carry, *, dropout=0.0, key=None):
    xs = params["embed"][tokens]  # [B, K, E]
    if key is None or dropout == 0.0:  # evaluation and sampling: no dropout
        ys, state = tr.apply_network(params["rnn"], xs, initial_state=carry)
    else:
        k_rnn, k_out = jax.random.split(key)
        ys, state = tr.apply_network(params["rnn"], xs, initial_state=carry, dropout=dropout,
                                     key=k_rnn)  # fmt: skip
        keep = jax.random.bernoulli(k_out, 1.0 - dropout, ys.shape)
        ys = jnp.where(keep, ys / (1.0 - dropout), 0.0)
    return tr.dense(params["head"], ys), state  # [B, K, V]


def zero_carry(params, batch: int):
    return tr.init_stream_state(params["rnn"], (batch,))


def make_chunk_loss(dropout: float):
    def chunk_loss(params, chunk, carry, key):
        logits, state = logits_and_state(params, chunk["x"], carry, dropout=dropout, key=key)
        loss = tr.softmax_cross_entropy(logits, chunk["y"])
        return loss, (state, {"bpc": tr.bits_per_token(loss)})

    return chunk_loss


@jax.jit
def _eval_chunk(params, x, y, carry):
    logits, state = logits_and_state(params, x, carry)
    return tr.softmax_cross_entropy(logits, y), state


def bits_per_char(params, stream_ids: np.ndarray, chunk: int) -> float:
    """Mean bits per character over whole chunks of the streams, state carried."""
    carry = zero_carry(params, stream_ids.shape[0])
    total, count = 0.0, 0
    for start in range(0, stream_ids.shape[1] - chunk - 1, chunk):
        x = stream_ids[:, start : start + chunk]
        y = stream_ids[:, start + 1 : start + chunk + 1]
        loss, carry = _eval_chunk(params, x, y, carry)
        total += float(loss) * x.size
        count += x.size
    return float(tr.bits_per_token(total / count))


def sample(params, vocab: data.CharVocab, prime: str, num_chars: int, temperature: float,
           key) -> str:  # fmt: skip
    """Feed ``prime`` one character at a time, then sample ``num_chars`` characters."""
    rnn = params["rnn"]

    def step(state, token):
        y, state = tr.stream_step(rnn, state, params["embed"][token])
        return state, tr.dense(params["head"], y)

    prime_ids = jnp.asarray(vocab.encode(prime))
    state, logits = jax.lax.scan(step, tr.init_stream_state(rnn), prime_ids)

    def generate(carry, key):
        state, last_logits = carry
        token = jax.random.categorical(key, last_logits / temperature)
        state, logits = step(state, token)
        return (state, logits), token

    keys = jax.random.split(key, num_chars)
    _, tokens = jax.lax.scan(generate, (state, logits[-1]), keys)
    return prime + vocab.decode(np.asarray(tokens))


def run(args) -> dict:
    os.makedirs(args.out, exist_ok=True)
    text, files = data.load_text(args.text, max_chars=args.max_chars)
    vocab = data.CharVocab.from_text(text)
    ids = vocab.encode(text)
    split = int(0.9 * len(ids))
    train_streams = streams(ids[:split], args.batch)  # [B, N]
    val_streams = streams(ids[split:], 8)
    num_chunks = (train_streams.shape[1] - 1) // args.chunk
    key = jax.random.key(args.seed)
    params = init_params(args, key, vocab.size)
    optimizer = tr.make_optimizer(args.lr, clip_norm=1.0, warmup_steps=100,
                                  decay_steps=args.steps)  # fmt: skip
    state = tr.init_train_state(params, optimizer, jax.random.fold_in(key, 1))
    step_fn = tr.make_tbptt_train_step(make_chunk_loss(args.dropout), optimizer)
    writer = tr.MetricsWriter(args.out, start_step=0)  # a new run: a new log
    manager = _common.checkpoint_manager(args.out, save_every=max(args.steps // 4, 1))
    from lstm_jax import checkpoint as ckpt
    from tqdm.auto import tqdm

    carry = zero_carry(params, args.batch)
    history, pending = [], []
    eval_every = max(args.steps // (2 if args.quick else 8), 1)
    t0 = time.perf_counter()
    for step in tqdm(range(args.steps), disable=args.no_progress, desc=f"char_lm {args.cell}"):
        k = step % num_chunks
        if k == 0:  # a new pass over the streams starts from a zero state
            carry = zero_carry(params, args.batch)
        chunk = {"x": train_streams[:, k * args.chunk : (k + 1) * args.chunk],
                 "y": train_streams[:, k * args.chunk + 1 : (k + 1) * args.chunk + 1]}
        state, carry, metrics = step_fn(state, carry, chunk)
        pending.append(metrics)
        ckpt.save(manager, state, force=step + 1 == args.steps)
        if ((step + 1) % _common.log_every(args.steps) == 0 or (step + 1) % eval_every == 0
                or step + 1 == args.steps):
            row = {"step": step + 1, "time_s": round(time.perf_counter() - t0, 2)}
            if pending:
                means = jax.device_get(pending)
                row.update({n: float(np.mean([m[n] for m in means])) for n in means[0]})
                pending = []
            if (step + 1) % eval_every == 0 or step + 1 == args.steps:
                row["val_bpc"] = bits_per_char(state.params, val_streams, args.chunk)
                print(f"  step {step + 1}: train bpc {row.get('bpc', float('nan')):.3f}, "
                      f"val bpc {row['val_bpc']:.3f}", flush=True)
            history.append(row)
            writer.write(row)
    ckpt.wait(manager)
    wall = time.perf_counter() - t0
    val_bpc = history[-1]["val_bpc"]
    samples = {f"temperature_{t}": sample(state.params, vocab, args.prime, args.sample_chars, t,
                                          jax.random.fold_in(key, 100 + i))
               for i, t in enumerate((0.5, 1.0))}  # fmt: skip
    with open(os.path.join(args.out, "samples.txt"), "w") as f:
        for name, value in samples.items():
            f.write(f"===== {name} =====\n{value}\n\n")

    # gradient flow over one validation chunk: how far back does the loss reach?
    x = jnp.asarray(val_streams[:, : args.chunk])
    y = jnp.asarray(val_streams[:, 1 : args.chunk + 1])
    p = state.params

    def last_step_loss(ys, final_state):
        del final_state
        return tr.softmax_cross_entropy(tr.dense(p["head"], ys[:, -1]), y[:, -1])

    _, grads = jax.jit(lambda r: dg.state_gradients(last_step_loss, r, p["embed"][x]))(p["rnn"])
    norms = dg.gradient_norms(grads)
    curves = {f"{args.cell} ||dL/dh_t||": norms["h"][-1]}
    if "c" in norms:
        curves[f"{args.cell} ||dL/dc_t||"] = norms["c"][-1]
    dg.plot_gradient_flow(curves, os.path.join(args.out, "gradient_flow.png"),
                          title="char LM: loss of the last character of a chunk")
    _common.plot_history(history, os.path.join(args.out, "training.png"),
                         [("bits per character", ["bpc", "val_bpc"], False)],
                         title=f"char LM, {args.cell}: training (bpc) and validation (val_bpc)")
    result = {
        "task": "char_lm", "cell": args.cell, "params": tr.count_params(state.params),
        "layers": args.layers, "hidden": args.hidden, "dropout": args.dropout, "lr": args.lr,
        "corpus_chars": len(text), "corpus_files": len(files),
        "corpus_first_last_file": [os.path.basename(files[0]), os.path.basename(files[-1])],
        "vocab_size": vocab.size, "steps": args.steps, "chunk": args.chunk, "batch": args.batch,
        "val_bpc": val_bpc, "train_wall_s": wall, "samples": samples,
        "run": _common.run_info(),
    }  # fmt: skip
    tr.write_json(os.path.join(args.out, "metrics.json"), result)
    print(f"char_lm {args.cell}: validation {val_bpc:.3f} bits/char "
          f"({result['params']} params, {wall:.0f} s)\n{samples['temperature_0.5'][:300]}")
    _common.print_outputs(args.out)
    return result


if __name__ == "__main__":
    run(parse_args())
