// The float32 multiply-add peak of the instruction set the kernels use,
// measured: for the benchmarks' share of peak. A VM's /proc/cpuinfo usually
// reports the host's base clock while the cores run at their boost clock
// (a 2-core Xeon reporting 2.6 GHz ran AVX2 FMAs at ~3.55 GHz), so the nominal
// peak from the reported clock understates what a kernel can reach. The timed
// loop itself is compiled per instruction set with the kernels (fma_loop.inc).
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include "recurrent.h"

namespace lstm_jax {
namespace {

// The slowest of `threads` threads each running `loop` for `iters` rounds at once.
double SlowestOf(const FmaLoop& loop, int threads, int64_t iters) {
  std::vector<double> seconds(threads);
  std::vector<std::thread> helpers;
  for (int t = 1; t < threads; ++t) helpers.emplace_back([&, t] { seconds[t] = loop.seconds(iters); });
  seconds[0] = loop.seconds(iters);
  for (auto& helper : helpers) helper.join();
  return *std::max_element(seconds.begin(), seconds.end());
}

}  // namespace
}  // namespace lstm_jax

// Float32 FLOP/s of `threads` threads each running independent multiply-adds
// of the chosen instruction set's vectors for about `seconds` (best of 3
// rounds); 0 where the kernels are the portable ones (no vector FMA to time).
LSTM_JAX_EXPORT double LstmJaxFmaPeak(int threads, double seconds);

double LstmJaxFmaPeak(int threads, double seconds) {
  using namespace lstm_jax;
  const FmaLoop* loop = ChosenFmaLoop();
  if (loop == nullptr || threads < 1 || !(seconds > 0)) return 0;
  int64_t iters = 1 << 16;
  while (SlowestOf(*loop, 1, iters) < 0.02) iters *= 2;  // calibrated on one thread
  const int64_t rounds = std::max<int64_t>(1, int64_t(iters * (seconds / 3) / 0.02));
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    const double s = SlowestOf(*loop, threads, rounds);
    best = std::max(best, double(threads) * rounds * loop->chains * loop->lanes * 2 / s);
  }
  return best;
}
