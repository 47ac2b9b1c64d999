// The native loops alone, without JAX: for judging a kernel change by the
// kernel's own time (a Python step adds noise around it). Build one binary per
// source tree (e.g. a `git archive` of the base commit's csrc) with setup.py's
// flags (without -falign-loops, loop placement alone moved timings by 4-10%):
//
//   g++ -O3 -falign-loops=64 -std=c++17 -Icsrc -o /tmp/loops_new -lpthread
//       benchmarks/kernel_timings/native_loops.cc csrc/kernels.cc csrc/runtime.cc csrc/settings.cc
//   (one command)
//
// Run `native_loops B T I H cell train reps [split]`: cell 0 LSTM, 1 GRU, 2 RNN
// tanh; train 1 saves the activations as a training forward does; split 0 one
// thread, 1 two threads on halves of the rows, 2 two threads on halves of the
// hidden units (a spin barrier per step), 3 as 1 with the helper started and
// spinning before the clock starts (prints when the caller's half and both
// halves finished, the last call). Environment: LSTM_JAX_NATIVE_ISA as
// usual; BWD=1 (with train 1) also times the backward loop (phase A and B, one
// thread, weight gradients left to XLA); FRESH=1 writes the forward's outputs
// to freshly mapped pages every call (as XLA's new buffers), FRESH=2 also
// madvise(MADV_HUGEPAGE); BM=1 lays xs and ys out batch-major (rows b * T + t, as a
// batch-major caller's; act and cs stay time-major); PACKMALLOC=1 packs the weights into a std::vector
// (see below); SPREAD=1 also prints the forward's quartiles and extremes. Prints the time to pack the weights, then per loop
// the median over `reps` calls after two warm-ups, GFLOP/s of the step GEMMs
// and a checksum of the outputs (equal for builds that compute the same
// function). Pin single-thread runs (`taskset -c 0`); native_loops_ab.sh
// interleaves two binaries.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "recurrent.h"

using namespace lstm_jax;
using Clock = std::chrono::steady_clock;

static double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

static double sum(const float* v, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += v[i];
  return s;
}

// act or dz in one allocation of T * B * A floats (`rows` = T * B): interleaved rows, or
// where the cell may be planar (the GRU; PLANAR=0: interleaved) one block of T * B * H after another.
GateRows gate_rows(float* base, const Kernels& K, int H, size_t rows) {
  const bool planar = K.may_be_planar && !(getenv("PLANAR") && atoi(getenv("PLANAR")) == 0);
  GateRows g;
  g.stride = size_t(planar ? 1 : K.acts) * H;
  for (int a = 0; a < K.acts; ++a) g.block[a] = base + (planar ? a * rows * H : size_t(a) * H);
  return g;
}

int main(int argc, char** argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: native_loops B T I H cell train reps [split]\n");
    return 2;
  }
  const int B = atoi(argv[1]), T = atoi(argv[2]), I = atoi(argv[3]), H = atoi(argv[4]);
  const int cell = atoi(argv[5]), reps = atoi(argv[7]), split = argc > 8 ? atoi(argv[8]) : 0;
  const bool train = atoi(argv[6]) != 0, lstm = cell == 0, gru = cell == 1;
  const int fresh = getenv("FRESH") ? atoi(getenv("FRESH")) : 0;
  const Kernels& K = CellKernels(Cell(cell));
  const int G = K.gates * H, A = K.acts * H;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.f, 0.1f);
  auto random = [&](size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng);
    return v;
  };
  const auto w_ih = random(size_t(I) * G), w_hh = random(size_t(H) * G), bias = random(G), bias_hh = random(G);
  const auto xs = random(size_t(T) * B * I);

  // the packed weights in the handler's own scratch (cache-line aligned, huge
  // pages from 1 MiB unless LSTM_JAX_NATIVE_HUGEPAGES=0), or PACKMALLOC=1 in a
  // std::vector (16-byte aligned: how the handler allocated them before session 14)
  const bool pack_malloc = getenv("PACKMALLOC") && atoi(getenv("PACKMALLOC")) != 0;
  const size_t pack_floats = K.fwd_pack_size(I, H);
  std::vector<float> pack_vec(pack_malloc ? pack_floats : 0);
  Scratch pack_scratch(pack_malloc ? 0 : pack_floats);
  float* pack_data = pack_malloc ? pack_vec.data() : pack_scratch.data();
  std::vector<double> pack_ms;
  for (int r = 0; r < 2; ++r) {
    const auto start = Clock::now();
    K.pack_fwd(w_ih.data(), w_hh.data(), I, H, pack_data);
    pack_ms.push_back(ms_since(start));
  }
  printf("pack %.3f ms, again %.3f ms\n", pack_ms[0], pack_ms[1]);

  std::vector<float> ys(size_t(T) * B * H), act(train ? size_t(T) * B * A : 0);
  std::vector<float> cs(train && lstm ? size_t(T) * B * H : 0);
  std::vector<float> c(size_t(B) * H), h0(size_t(B) * H), h1(size_t(B) * H);
  FwdProblem P{};
  P.seq = Layout(T, B, getenv("BM") != nullptr && atoi(getenv("BM")) != 0);  // BM=1: batch-major xs and ys
  P.steps = T;
  P.batch = B;
  P.input = I;
  P.hidden = H;
  P.xs = xs.data();
  P.bias = bias.data();
  P.bias_hh = gru ? bias_hh.data() : nullptr;
  P.c = lstm ? c.data() : nullptr;
  P.h[0] = P.hm[0] = h0.data();
  P.h[1] = P.hm[1] = h1.data();
  P.wpack = pack_data;
  const int panels = (H + K.fwd_width - 1) / K.fwd_width;
  std::vector<double> times;
  double checksum = 0;
  for (int r = 0; r < reps + 2; ++r) {
    std::fill(h0.begin(), h0.end(), 0.f);
    std::fill(c.begin(), c.end(), 0.f);
    const size_t bytes = (ys.size() + act.size() + cs.size()) * sizeof(float);
    float* mapped = nullptr;
    if (fresh) {
      mapped = static_cast<float*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
      if (fresh == 2) madvise(mapped, bytes, MADV_HUGEPAGE);
    }
    float* out = fresh ? mapped : nullptr;
    P.ys = fresh ? out : ys.data();
    P.act = !train ? GateRows{} : gate_rows(fresh ? out + ys.size() : act.data(), K, H, size_t(T) * B);
    P.cs = cs.empty() ? nullptr : fresh ? out + ys.size() + act.size() : cs.data();
    auto start = Clock::now();
    if (split == 0) {
      for (int t = 0; t < T; ++t) K.fwd_item(&P, t, 0, panels, 0, B);
    } else if (split == 3) {
      std::atomic<int> go{0};
      std::thread helper([&] {
        while (go.load(std::memory_order_acquire) == 0) {
        }
        for (int t = 0; t < T; ++t) K.fwd_item(&P, t, 0, panels, B / 2, B);
      });
      usleep(2000);
      start = Clock::now();  // the helper spins by now
      go.store(1, std::memory_order_release);
      for (int t = 0; t < T; ++t) K.fwd_item(&P, t, 0, panels, 0, B / 2);
      const double own = ms_since(start);
      helper.join();
      if (r == reps + 1) printf("caller's half %.3f ms, both %.3f ms\n", own, ms_since(start));
    } else if (split == 1) {  // halves of the rows: independent sequences, no synchronisation
      std::thread helper([&] {
        for (int t = 0; t < T; ++t) K.fwd_item(&P, t, 0, panels, B / 2, B);
      });
      for (int t = 0; t < T; ++t) K.fwd_item(&P, t, 0, panels, 0, B / 2);
      helper.join();
    } else {  // halves of the units: step t waits for both halves of step t - 1
      std::atomic<int> done[2];
      done[0] = 0;
      done[1] = 0;
      auto work = [&](int q) {
        for (int t = 0; t < T; ++t) {
          while (done[1 - q].load(std::memory_order_acquire) < t) {
          }
          K.fwd_item(&P, t, q * panels / 2, (q + 1) * panels / 2, 0, B);
          done[q].store(t + 1, std::memory_order_release);
        }
      };
      std::thread helper(work, 1);
      work(0);
      helper.join();
    }
    if (r >= 2) times.push_back(ms_since(start));
    checksum = sum(P.ys, ys.size());
    if (fresh) munmap(mapped, bytes);
  }
  const double ms = median(times);
  printf("fwd %.3f ms %.1f GFLOP/s chk %.6g\n", ms, 2.0 * T * B * double(I + H) * G / ms / 1e6, checksum);
  if (getenv("SPREAD") != nullptr) {
    std::sort(times.begin(), times.end());
    const size_t n = times.size();
    printf("fwd spread over %zu calls: min %.3f q1 %.3f median %.3f q3 %.3f max %.3f ms\n", n, times[0],
           times[n / 4], times[n / 2], times[(3 * n) / 4], times[n - 1]);
  }

  if (getenv("BWD") == nullptr || !train || fresh) return 0;
  // the backward loop after this forward: phase A and B, weight gradients left to XLA
  std::vector<float> bwd_vec(pack_malloc ? K.bwd_pack_size(H) : 0);
  Scratch bwd_scratch(pack_malloc ? 0 : K.bwd_pack_size(H));
  float* bwd_pack = pack_malloc ? bwd_vec.data() : bwd_scratch.data();
  K.pack_bwd(w_hh.data(), H, bwd_pack);
  const auto dys = random(ys.size());
  std::vector<float> dz(act.size()), dh(size_t(B) * H), dc(size_t(B) * H), zeros(size_t(B) * H);
  BwdProblem Q{};
  Q.steps = T;
  Q.batch = B;
  Q.hidden = H;
  Q.input = I;
  Q.seq = Layout(T, B, false);
  Q.dz = gate_rows(dz.data(), K, H, size_t(T) * B);
  Q.cs = lstm ? cs.data() : nullptr;
  Q.c0 = zeros.data();
  Q.h0 = zeros.data();
  Q.dys = dys.data();
  Q.ys = ys.data();
  Q.xs = xs.data();
  Q.dh = dh.data();
  Q.dc = lstm ? dc.data() : nullptr;
  Q.wpack = bwd_pack;
  const int bwd_panels = (H + K.bwd_width - 1) / K.bwd_width;
  times.clear();
  for (int r = 0; r < reps + 2; ++r) {
    std::copy(act.begin(), act.end(), dz.begin());
    std::fill(dh.begin(), dh.end(), 0.f);
    std::fill(dc.begin(), dc.end(), 0.f);
    const auto start = Clock::now();
    for (int k = 0; k <= T; ++k) K.bwd_item(&Q, k, 0, bwd_panels, 0, B);
    if (r >= 2) times.push_back(ms_since(start));
  }
  const double bwd_ms = median(times);
  printf("bwd %.3f ms %.1f GFLOP/s (the dh GEMM) chk %.6g\n", bwd_ms, 2.0 * T * B * double(H) * G / bwd_ms / 1e6,
         sum(dh.data(), dh.size()));
  return 0;
}
