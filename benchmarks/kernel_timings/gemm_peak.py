"""This CPU's float32 GEMM rate as XLA reaches it: the bound a kernel's FLOP count is judged by.

Run pinned to one core for the single-core rate (process CPU time; XLA's
threads all run on that core)::

    taskset -c 0 python benchmarks/kernel_timings/gemm_peak.py

Prints the best of ``REPS`` (default 15) calls of a jitted ``N x N x N``
float32 matmul (``N=2048``), in process CPU time and wall time, with GFLOP/s
(``2 N^3`` FLOPs) and the load average.
"""

import os
import time

import jax

N = int(os.environ.get("N", "2048"))
REPS = int(os.environ.get("REPS", "15"))


def main():
    a = jax.random.normal(jax.random.key(0), (N, N))
    b = jax.random.normal(jax.random.key(1), (N, N))
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, b).block_until_ready()
    best_cpu = best_wall = float("inf")
    for _ in range(REPS):
        cpu, wall = time.process_time(), time.perf_counter()
        matmul(a, b).block_until_ready()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    flops = 2 * N**3
    print(f"{N}^3 float32 matmul, best of {REPS}: CPU time {1e3 * best_cpu:.1f} ms "
          f"({flops / best_cpu / 1e9:.1f} GFLOP/s), wall {1e3 * best_wall:.1f} ms "
          f"({flops / best_wall / 1e9:.1f} GFLOP/s); load average {os.getloadavg()}")  # fmt: skip


if __name__ == "__main__":
    main()
