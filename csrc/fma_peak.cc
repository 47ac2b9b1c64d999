// The float32 multiply-add peak of the instruction set the kernels use,
// measured: for the benchmarks' share of peak. A VM's /proc/cpuinfo usually
// reports the host's base clock while the cores run at their boost clock
// (a 2-core Xeon reporting 2.6 GHz ran AVX2 FMAs at ~3.6 GHz), so the nominal
// peak from the reported clock understates what a kernel can reach.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "runtime.h"
#include "simd.h"

namespace lstm_jax {
namespace {

// Independent accumulators per thread: more than the FMA latency (4 cycles)
// x pipes (2) needs, few enough for 16 registers.
constexpr int kChains = 12;

// Seconds for `iters` rounds of kChains independent V::fmadd on one thread.
// Defined per instruction set (inside its `#pragma GCC target` region, as the
// kernels are) so that V's intrinsics inline.
#define LSTM_JAX_FMA_LOOP                                                      \
  double Seconds(int64_t iters) {                                              \
    V::T acc[kChains];                                                         \
    for (int j = 0; j < kChains; ++j) acc[j] = V::set1(float(j));              \
    V::T x = V::set1(1.f);                                                     \
    const V::T y = V::set1(1e-9f);                                             \
    const auto start = std::chrono::steady_clock::now();                       \
    for (int64_t i = 0; i < iters; ++i) {                                      \
      for (int j = 0; j < kChains; ++j) acc[j] = V::fmadd(y, x, acc[j]);       \
      asm volatile("" : "+x"(x)); /* x unknown each round: no hoisting */      \
    }                                                                          \
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); \
    float sink[V::W];                                                          \
    for (int j = 1; j < kChains; ++j) acc[0] = V::add(acc[0], acc[j]);         \
    V::storen(sink, acc[0], V::W);                                             \
    asm volatile("" : : "r"(sink) : "memory"); /* the sums are used */         \
    return s;                                                                  \
  }

#ifdef LSTM_JAX_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
using V = Avx2Vec;
LSTM_JAX_FMA_LOOP
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")
namespace avx512 {
using V = Avx512Vec;
LSTM_JAX_FMA_LOOP
}  // namespace avx512
#pragma GCC pop_options
#endif  // LSTM_JAX_X86

#undef LSTM_JAX_FMA_LOOP

// The slowest of `threads` threads running `seconds_of(iters)` at once.
template <class F>
double SlowestOf(int threads, int64_t iters, F seconds_of) {
  std::vector<double> seconds(threads);
  std::vector<std::thread> helpers;
  for (int t = 1; t < threads; ++t) helpers.emplace_back([&, t] { seconds[t] = seconds_of(iters); });
  seconds[0] = seconds_of(iters);
  for (auto& helper : helpers) helper.join();
  return *std::max_element(seconds.begin(), seconds.end());
}

template <class F>
double Peak(int threads, double seconds, int lanes, F seconds_of) {
  int64_t iters = 1 << 16;
  while (SlowestOf(1, iters, seconds_of) < 0.02) iters *= 2;  // calibrate on one thread
  const int64_t rounds = std::max<int64_t>(1, int64_t(iters * (seconds / 3) / 0.02));
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    const double s = SlowestOf(threads, rounds, seconds_of);
    best = std::max(best, double(threads) * rounds * kChains * lanes * 2 / s);
  }
  return best;
}

}  // namespace
}  // namespace lstm_jax

// Float32 FLOP/s of `threads` threads each running independent multiply-adds
// of the chosen instruction set's vectors for about `seconds` (best of 3
// rounds); 0 where the kernels are the portable ones (no vector FMA to time).
LSTM_JAX_EXPORT double LstmJaxFmaPeak(int threads, double seconds);

double LstmJaxFmaPeak(int threads, double seconds) {
  using namespace lstm_jax;
  if (threads < 1 || !(seconds > 0)) return 0;
  switch (ChosenIsa()) {
#ifdef LSTM_JAX_X86
    case Isa::kAvx512: return Peak(threads, seconds, Avx512Vec::W, avx512::Seconds);
    case Isa::kAvx2: return Peak(threads, seconds, Avx2Vec::W, avx2::Seconds);
#endif
    default: return 0;
  }
}
