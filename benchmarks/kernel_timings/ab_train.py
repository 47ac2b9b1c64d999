"""Single-core CPU time of a native training step, two builds interleaved.

    taskset -c 0 env LSTM_JAX_NATIVE_THREADS=1 \\
        python benchmarks/kernel_timings/ab_train.py OLD_ROOT NEW_ROOT

OLD_ROOT and NEW_ROOT are two copies of the repository, each with its built
extension. One worker process per build (``PYTHONPATH`` = its root) compiles
``grad`` of ``sum(ys)`` w.r.t. params and xs (``backend="native"``) for every
cell and ``(B, T, I, H)``; then, per configuration, ``ROUNDS`` rounds ask each
worker in turn (the order alternating) for the median ``time.process_time`` of
``REPS`` calls. Prints the medians over rounds, new / old, and the load
average. ``CELLS``, ``CONFIGS``, ``ROUNDS=7``, ``REPS=5``.
"""

import os
import statistics
import subprocess
import sys
import time

CONFIGS = [(8, 512, 32, 64), (64, 128, 128, 256), (32, 256, 64, 128), (128, 64, 256, 512)]
if os.environ.get("CONFIGS"):
    CONFIGS = [tuple(int(v) for v in c.split(",")) for c in os.environ["CONFIGS"].split(";")]
CELLS = os.environ.get("CELLS", "lstm,gru").split(",")
ROUNDS = int(os.environ.get("ROUNDS", "7"))
REPS = int(os.environ.get("REPS", "5"))


def worker():
    """Compiles every step, then answers each line (a step's index) with its median ms."""
    import jax
    import jax.numpy as jnp

    import lstm_jax as lj

    networks = {"lstm": (lj.init_lstm, lj.lstm), "gru": (lj.init_gru, lj.gru)}
    steps = []
    for cell in CELLS:
        init, run = networks[cell]
        for B, T, I, H in CONFIGS:
            params = init(jax.random.key(0), I, H)
            xs = jax.random.normal(jax.random.key(1), (B, T, I))
            loss = lambda p, x, run=run: jnp.sum(run(p, x, backend="native")[0])  # noqa: E731
            fn = jax.jit(jax.grad(loss, (0, 1)))
            for _ in range(2):
                jax.block_until_ready(fn(params, xs))
            steps.append((fn, params, xs))
    print("ready", flush=True)
    for line in sys.stdin:
        fn, params, xs = steps[int(line)]
        times = []
        for _ in range(REPS):
            start = time.process_time()
            jax.block_until_ready(fn(params, xs))
            times.append(1e3 * (time.process_time() - start))
        print(statistics.median(times), flush=True)


def main(old_root, new_root):
    workers = {}
    for name, root in (("old", old_root), ("new", new_root)):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
        workers[name] = subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker"], env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    for w in workers.values():
        assert w.stdout.readline().strip() == "ready"
    print(f"load average {os.getloadavg()}, {ROUNDS} rounds of {REPS} calls", flush=True)
    index = 0
    for cell in CELLS:
        for config in CONFIGS:
            samples = {"old": [], "new": []}
            for r in range(ROUNDS):
                for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    workers[name].stdin.write(f"{index}\n")
                    workers[name].stdin.flush()
                    samples[name].append(float(workers[name].stdout.readline()))
            old, new = (statistics.median(samples[n]) for n in ("old", "new"))
            print(f"{cell} {config}: old {old:8.2f} ms  new {new:8.2f} ms  new/old {new / old:.3f}  "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
            index += 1
    for w in workers.values():
        w.stdin.close()
        w.wait()
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        worker()
    else:
        main(*sys.argv[1:3])
