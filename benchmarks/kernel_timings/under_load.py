"""The default LSTM backend vs Flax with and without a busy loop on one core.

Issue 22's robustness check: a call must not collapse when the other core is
busy. Run from the repo root (once per build to compare)::

    PYTHONPATH=. python benchmarks/kernel_timings/under_load.py

Per ``(B, T, I, H)`` and mode (a training step: ``grad`` of ``sum(ys)``;
inference), the median wall time over ``ROUNDS`` interleaved rounds of
``REPS`` calls, of ``lj.lstm`` (default backend) and Flax ``nn.RNN(
OptimizedLSTMCell)`` with the same weights (checked equal first), each round
once quiet, once beside a Python busy loop pinned to the last CPU
(``BUSY_CPU``) and once quiet with the native kernel on one thread
(``LSTM_JAX_NATIVE_THREADS=1``). Prints lstm_jax's times, the ratio to Flax
quiet and loaded, and the loaded time over the one-thread time: about 1 when a
busy core costs the call no more than its second thread's share.
"""

import os
import statistics
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax as lj

CONFIGS = [(8, 512, 32, 64), (64, 128, 128, 256), (32, 256, 64, 128), (128, 64, 256, 512)]
if os.environ.get("CONFIGS"):
    CONFIGS = [tuple(int(v) for v in c.split(",")) for c in os.environ["CONFIGS"].split(";")]
ROUNDS = int(os.environ.get("ROUNDS", "5"))
REPS = int(os.environ.get("REPS", "5"))
BUSY_CPU = int(os.environ.get("BUSY_CPU", str(os.cpu_count() - 1)))


def cases(B, T, I, H):
    """``{(system, mode): fn}`` for one shape, lstm_jax and Flax checked equal."""
    params = lj.init_lstm(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    model = nn.RNN(nn.OptimizedLSTMCell(H))
    flax_params = {"params": {"cell": lj.to_flax(params.layers[0][0])}}
    forwards = {
        "lstm_jax": (lambda p, x: lj.lstm(p, x)[0], params),
        "flax": (lambda p, x: model.apply(p, x), flax_params),
    }
    np.testing.assert_allclose(jax.jit(forwards["lstm_jax"][0])(params, xs),
                               jax.jit(forwards["flax"][0])(flax_params, xs), atol=1e-5)
    out = {}
    for system, (forward, p) in forwards.items():
        train = jax.jit(jax.grad(lambda p, x, f=forward: jnp.sum(f(p, x)), (0, 1)))
        infer = jax.jit(forward)
        out[system, "train"] = lambda train=train, p=p: train(p, xs)
        out[system, "infer"] = lambda infer=infer, p=p: infer(p, xs)
    for fn in out.values():
        jax.block_until_ready(fn())
        jax.block_until_ready(fn())
    return out


def time_ms(fn) -> float:
    start = time.perf_counter()
    for _ in range(REPS):
        jax.block_until_ready(fn())
    return 1e3 * (time.perf_counter() - start) / REPS


def busy_loop() -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", str(BUSY_CPU), sys.executable, "-c", "while True: pass"])


def run_round(fns, condition, times):
    """One round of every case under ``condition``: "quiet", "loaded" (a busy loop
    on BUSY_CPU) or "one thread" (quiet, the native kernel on one thread)."""
    busy = busy_loop() if condition == "loaded" else None
    if condition == "one thread":
        os.environ["LSTM_JAX_NATIVE_THREADS"] = "1"  # read by the native kernel per call
    try:
        time.sleep(0.05 if busy else 0.0)
        for key, fn in fns.items():
            times[key, condition].append(time_ms(fn))
    finally:
        os.environ.pop("LSTM_JAX_NATIVE_THREADS", None)
        if busy is not None:
            busy.kill()
            busy.wait()


def main():
    print(f"{os.cpu_count()} CPUs, busy loop on CPU {BUSY_CPU}, load average {os.getloadavg()}")
    print("| (B,T,I,H) | mode | lstm_jax ms: quiet / one thread / loaded | quiet vs Flax | "
          "loaded vs Flax | loaded / quiet ratio | loaded / one-thread time |")
    print("|---|---|---|---:|---:|---:|---:|")
    conditions = ("quiet", "loaded", "one thread")
    for config in CONFIGS:
        fns = cases(*config)
        times = {(k, c): [] for k in fns for c in conditions}
        for _ in range(ROUNDS):
            for condition in conditions:
                run_round(fns, condition, times)
        med = {k: statistics.median(v) for k, v in times.items()}
        for mode in ("train", "infer"):
            ours = {c: med[("lstm_jax", mode), c] for c in conditions}
            quiet = med[("flax", mode), "quiet"] / ours["quiet"]
            loaded = med[("flax", mode), "loaded"] / ours["loaded"]
            print(f"| {','.join(map(str, config))} | {mode} | {ours['quiet']:.2f} / {ours['one thread']:.2f} / "
                  f"{ours['loaded']:.2f} | {quiet:.2f}x | {loaded:.2f}x | {loaded / quiet:.2f} | "
                  f"{ours['loaded'] / ours['one thread']:.2f} |", flush=True)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
