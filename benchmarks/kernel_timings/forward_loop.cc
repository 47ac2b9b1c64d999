// The native forward loop alone, on one thread, without JAX: for judging a
// kernel change by the kernel's own time (a Python step adds noise around it).
// Build one binary per source tree (e.g. a git worktree of the base commit):
//
//   g++ -O3 -falign-loops=64 -std=c++17 -Icsrc benchmarks/kernel_timings/forward_loop.cc \
//       csrc/kernels.cc csrc/runtime.cc csrc/settings.cc -o /tmp/fwd_new -lpthread
//
// and run `forward_loop B T I H cell train reps` (cell 0 LSTM, 1 GRU, 2 RNN
// tanh; train 1 saves the activations as a training forward does), pinned
// (`taskset -c 0`), LSTM_JAX_NATIVE_ISA as usual (build with setup.py's flags:
// without -falign-loops, loop placement alone moved timings by 4-10%); forward_loop_ab.sh
// interleaves two binaries. Prints the median over `reps` calls after two
// warm-ups, GFLOP/s of the step GEMMs, and a checksum of the outputs (equal
// for two builds that compute the same function).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <random>
#include "recurrent.h"
using namespace lstm_jax;
int main(int argc, char** argv) {
  int B = atoi(argv[1]), T = atoi(argv[2]), I = atoi(argv[3]), H = atoi(argv[4]), cell = atoi(argv[5]), reps = atoi(argv[7]);
  bool train = atoi(argv[6]);
  const Kernels& K = CellKernels(Cell(cell));
  int G = K.gates * H, A = K.acts * H;
  std::mt19937 rng(0); std::normal_distribution<float> nd(0.f, 0.1f);
  auto rnd = [&](size_t n) { std::vector<float> v(n); for (auto& x : v) x = nd(rng); return v; };
  auto wih = rnd(size_t(I) * G), whh = rnd(size_t(H) * G), bias = rnd(G), bhh = rnd(G), xs = rnd(size_t(T) * B * I);
  std::vector<float> pack(K.fwd_pack_size(I, H)); K.pack_fwd(wih.data(), whh.data(), I, H, pack.data());
  std::vector<float> ys(size_t(T) * B * H), act(train ? size_t(T) * B * A : 0), cs(train && cell == 0 ? size_t(T) * B * H : 0);
  std::vector<float> c(size_t(B) * H), h0(size_t(B) * H), h1(size_t(B) * H);
  FwdProblem P{};
  P.seq = Layout(T, B, false); P.steps = T; P.batch = B; P.input = I; P.hidden = H;
  P.xs = xs.data(); P.bias = bias.data(); P.bias_hh = cell == 1 ? bhh.data() : nullptr;
  P.ys = ys.data(); P.act = train ? act.data() : nullptr; P.cs = cs.empty() ? nullptr : cs.data();
  P.c = cell == 0 ? c.data() : nullptr; P.h[0] = h0.data(); P.h[1] = h1.data(); P.hm[0] = h0.data(); P.hm[1] = h1.data();
  P.wpack = pack.data();
  int panels = (H + K.fwd_width - 1) / K.fwd_width;
  std::vector<double> ts;
  for (int r = 0; r < reps + 2; ++r) {
    std::fill(h0.begin(), h0.end(), 0.f); std::fill(c.begin(), c.end(), 0.f);
    auto s = std::chrono::steady_clock::now();
    for (int t = 0; t < T; ++t) K.fwd_item(&P, t, 0, panels, 0, B);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s).count();
    if (r >= 2) ts.push_back(ms);
  }
  std::sort(ts.begin(), ts.end());
  double med = ts[ts.size() / 2];
  double flop = 2.0 * T * B * double(I + H) * G;
  double chk = 0; for (float v : ys) chk += v;
  printf("%.3f ms %.1f GFLOP/s chk %.6g\n", med, flop / med / 1e6, chk);
}
