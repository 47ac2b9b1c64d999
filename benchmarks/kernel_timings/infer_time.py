"""Median wall time of one jitted native LSTM forward (inference), for A/B runs of settings
in alternating processes.

    EMU=1 PYTHONPATH=. python benchmarks/kernel_timings/infer_time.py 128,64,256,512

``EMU=1`` narrows every part to AVX2 first (``benchmarks/isa_emulation.py``, as ``--isa
avx2``); ``N`` timed calls (default 15) after three warm-ups; prints the median in ms. Used
for the unit vs row split of an inference call (``LSTM_JAX_NATIVE_UNITS_MACS``):
``benchmarks/results/cpu-intel-xeon-2c/kernel_ab_s19.md``.
"""
import os
import statistics
import sys
import time

from benchmarks import isa_emulation

if os.environ.get("EMU"):
    isa_emulation.emulate("avx2")

import jax

import lstm_jax as lj

batch, steps, inputs, hidden = (int(v) for v in sys.argv[1].split(","))
params = lj.init_lstm(jax.random.key(0), inputs, hidden)
xs = jax.random.normal(jax.random.key(1), (batch, steps, inputs))
forward = jax.jit(lambda p, x: lj.lstm(p, x, backend="native")[0])
for _ in range(3):
    forward(params, xs).block_until_ready()
times = []
for _ in range(int(os.environ.get("N", "15"))):
    start = time.perf_counter()
    forward(params, xs).block_until_ready()
    times.append(time.perf_counter() - start)
print(f"{1e3 * statistics.median(times):.2f}")
