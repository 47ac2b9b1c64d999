#!/usr/bin/env bash
# The second GPU lease's second command (session 13): after device_run.sh showed the
# row-major cuDNN call equal to scan, measure what "auto" should run on cuda (cuDNN or
# fused) on the device-grid cases the first command did not reach, see why
# test_remat_memory_grows_like_sqrt_t[False] failed there, and run the kernel tests
# it did not reach (not_reached.txt).   benchmarks/results/gpu-nvidia-h200/session13/run.sh OUT_DIR
set -u
out=${1:?usage: run.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 - >"$out/remat_memory.log" 2>&1 <<'PY'
# temp bytes of the fused, remat=True gradient (test_kernels._temp_bytes), B = 4, H = 32
import jax, jax.numpy as jnp, lstm_jax as lj
def temp(steps, time_major, features):
    params = lj.init_lstm(jax.random.key(0), features, 32)
    xs = jnp.zeros((steps, 4, features) if time_major else (4, steps, features))
    loss = lambda p, x: jnp.sum(lj.lstm(p, x, backend="fused", remat=True, time_major=time_major)[0])
    return jax.jit(jax.grad(loss, (0, 1))).lower(params, xs).compile().memory_analysis().temp_size_in_bytes
for time_major in (False, True):
    for features in (8, 16):
        short, long = temp(1000, time_major, features), temp(4000, time_major, features)
        print(f"time_major={time_major} I={features}: T=1000 {short}  T=4000 {long}  "
              f"ratio {long / short:.2f}  growth-2*(B,3000,I)*4 {long - short - 2 * 4 * 3000 * features * 4}")
PY
timeout 60 python3 -m pytest -o addopts= -p no:cacheprovider -v -rfEs tests/test_kernels.py \
  -k remat_memory >"$out/tests_remat.log" 2>&1
echo "remat tests exit status $?" >>"$out/tests_remat.log"
timeout 270 python3 -m benchmarks --device --no-progress --time-limit 3 --case-budget 3 \
  --cases 'B64 T512 I128 H128 t,B64 T512 I128 H128 i,B8 T2048 I512 H768 t,B8 T2048 I512 H768 i,B8 T512 I32 H64,B64 T128 I128 H256,B32 T256 I64 H128,B128 T64 I256 H512,L2 bi' \
  --peers 'lstm_jax[auto],lstm_jax[cudnn],flax_linen_optimized,torch' \
  --out "$out/device" >"$out/bench.log" 2>&1
echo "benchmark exit status $?" >>"$out/bench.log"
export JAX_DEFAULT_MATMUL_PRECISION=float32
timeout -s INT -k 10 "${TEST_S:-60}" python3 -m pytest -o addopts= -p no:cacheprovider -v -rfEs -n 8 --dist load \
  $(cat benchmarks/results/gpu-nvidia-h200/session13/not_reached.txt) >"$out/tests_rest.log" 2>&1
echo "tests exit status $?" >>"$out/tests_rest.log"
tail -n 4 "$out"/*.log
