#!/usr/bin/env bash
# The checks for a short lease of a GPU machine, in one command: the kernel tests there
# (the backend matrix then holds "cudnn" and "pallas", which the CPU runs cannot compile;
# test_kernels.py's test_cudnn_matches_scan_on_gpu first: "auto" runs cuDNN on cuda from
# H = 512 because it passed there, benchmarks/results/gpu-nvidia-h200/README.md), then the
# --device benchmark, stopped in time to write its results.
#
#   benchmarks/device_run.sh OUT_DIR [TEST_SECONDS] [BENCH_MINUTES]
#
# About 90 + TEST_SECONDS (150) + 60 x BENCH_MINUTES (3.5) + up to 180 seconds.
# OUT_DIR receives tests.log, bench.log and device/ (results.json, results.md, the plots).
# Runs from the repository root with the machine's python3 (its JAX with CUDA, Flax,
# PyTorch); lstm_jax from this checkout, without the native CPU extension.
set -u
out=${1:?usage: benchmarks/device_run.sh OUT_DIR [TEST_SECONDS] [BENCH_MINUTES]}
test_s=${2:-150}
bench_min=${3:-3.5}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX, PyTorch and the test workers share the GPU

{
  nvidia-smi -L
  python3 -c 'import sys, jax, jaxlib, flax, torch
print(sys.version.split()[0], "jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax",
      flax.__version__, "torch", torch.__version__, jax.devices())'
  # float32 matmuls in float32 as on CPU (XLA would use TF32 here); -v names each test as
  # it ends, which survives the stop at the limit (xdist's summary may not)
  export JAX_DEFAULT_MATMUL_PRECISION=float32
  pytest=(python3 -m pytest -o addopts= -p no:cacheprovider -v -rfEs)
  # first the check that "auto"'s use of cuDNN on cuda rests on
  timeout -s INT -k 20 90 "${pytest[@]}" -n 4 tests/test_kernels.py -k cudnn
  echo "cuDNN tests exit status $?"
  timeout -s INT -k 20 "$test_s" "${pytest[@]}" -n 12 --dist loadfile \
    tests/test_kernels.py tests/test_accel.py tests/test_backends.py tests/test_higher_order.py
  echo "tests exit status $?"
} >"$out/tests.log" 2>&1

# the last case may start just before the limit: the hard stop leaves it 3 minutes
timeout "$(python3 -c "print(int(60 * $bench_min + 180))")" python3 -m benchmarks --device \
  --no-progress --time-limit "$bench_min" --case-budget 3 \
  --peers 'lstm_jax[auto],lstm_jax[scan],lstm_jax[cudnn],lstm_jax[pallas],flax_linen_optimized,torch,jax_cudnn' \
  --out "$out/device" >"$out/bench.log" 2>&1
echo "benchmark exit status $?" >>"$out/bench.log"
tail -n 3 "$out/tests.log" "$out/bench.log"
