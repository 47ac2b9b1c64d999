// lstm_jax's native CPU backend: the sequential part of one LSTM layer
// (one direction) as XLA FFI custom calls, forward and backward.
//
// XLA computes the large GEMMs of the backward pass (the weight and input
// gradients after the loop). These handlers own the time loop:
//
//   forward   per step z = x_t @ w_ih + b + h @ w_hh (one register-blocked
//             GEMM over [x_t, h] and [w_ih; w_hh], packed once per call), the
//             gate math, the carry; optionally saves the gate activations and
//             the carried cell state. Computing the input projection per step
//             keeps every operand in cache: a (T, B, 4H) projection made by
//             XLA before the loop measured ~3x slower for inference.
//   backward  per step the gate gradients dz (written over the saved
//             activations, aliased again) and dh = (dz @ w_hh^T) * mask.
//
// With the `bf16` attribute (compute_dtype=bfloat16) the per-step GEMMs take
// bfloat16 inputs and sum in float32 (lstm_kernel_amx.inc on AMX tiles, or
// lstm_kernel_bf16.inc with vdpbf16ps), and the handlers also return the
// gradient GEMMs' bfloat16 operands row-major for XLA: dz, [x_t; h * mask]
// transposed, w_ih^T.
//
// Threads (one partition per thread of XLA's intra-op pool, handed to the
// handler through the FFI ThreadPool context): with at least 4 batch rows per
// thread, the rows are split: sequences are independent, so each partition
// runs the whole loop for its rows with no synchronisation. Smaller batches
// split the hidden units: steps depend on each other through h (forward) or dz
// (backward), so item (step s, partition p) starts once every partition
// finished step s - 1, one synchronisation per step. Either way the calling
// thread works too and takes over whatever no other thread has claimed, so
// the call completes even when the pool runs none of the helper tasks (the FFI
// allows that).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#ifdef __linux__
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "native_loop.h"
#include "settings.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace lstm_jax {

// Where step t of sequence b sits in a (T, B, F) time-major or (B, T, F)
// batch-major array: row(t, b) * F. xs, ys and dys are in the caller's layout
// (no transposed copies); the saved activations and cell states, dz and valid
// are always time-major, so that one step's rows are contiguous.
struct Layout {
  int64_t steps, batch;
  bool batch_major;
  size_t next_row;  // rows between (t, b) and (t, b + 1)
  Layout() : Layout(0, 0, false) {}
  Layout(int64_t t, int64_t b, bool bm) : steps(t), batch(b), batch_major(bm), next_row(bm ? t : 1) {}
  size_t row(int64_t t, int64_t b) const { return batch_major ? size_t(b * steps + t) : size_t(t * batch + b); }
};

struct FwdProblem {
  int64_t steps;
  int batch, input, hidden;
  Layout seq;
  const float* xs;        // (T, B, I) inputs
  const float* bias;      // (4H)
  const float* mask;      // (B, H) recurrent mask, or null
  const uint8_t* valid;   // (T, B) step validity, or null (all valid)
  float* ys;              // (T, B, H)
  float* act;             // (T, B, 4H) gate activations, or null (inference)
  float* cs;              // (T, B, H) carried cell state after each step, or null
  float* c;               // (B, H) cell carry, updated in place
  float* h[2];            // (B, H) hidden carry, double-buffered by step parity
  float* hm[2];           // h * mask (the GEMM's input), or == h
  uint16_t* xhT;          // (I + H, T * B) bf16 [x_t; h * mask] per step, transposed, or null
  const float* wpack;
};

struct BwdProblem {
  int64_t steps;
  int batch, hidden;
  Layout seq;
  float* dz;              // (T, B, 4H) activations in, gate gradients out
  const float* cs;        // (T, B, H)
  const float* c0;        // (B, H)
  const float* dys;       // (T, B, H)
  const float* mask;      // (B, H), or null
  const uint8_t* valid;   // (T, B), or null
  const float* ys;        // (T, B, H), read with mask only (h_{t-1})
  const float* h0;        // (B, H), read with mask only
  float* dh;              // (B, H) carry in place: dh_T in, dh_0 out
  float* dc;              // (B, H) carry in place
  float* dm;              // (B, H) mask gradient, accumulated, or null
  uint16_t* dzb;          // (T, B, 4H) dz rounded to bfloat16 (bf16 kernels only)
  const float* wpack;
};

namespace portable {
using V = ScalarVec;
#include "lstm_kernel.inc"
}  // namespace portable

#ifdef LSTM_JAX_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
using V = Avx2Vec;
#include "lstm_kernel.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")
namespace avx512 {
using V = Avx512Vec;
#include "lstm_kernel.inc"
}  // namespace avx512
#pragma GCC pop_options

// The bfloat16 kernels need AVX512_BF16 and AMX intrinsics (GCC 11, clang 12);
// older compilers build the extension without them (native then declines bf16).
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11)
#define LSTM_JAX_BF16 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,amx-tile,amx-bf16,fma")
namespace avx512bf16 {
using V = Avx512Vec;
#include "lstm_kernel.inc"
#include "lstm_kernel_bf16.inc"
#include "lstm_kernel_amx.inc"
}  // namespace avx512bf16
#pragma GCC pop_options
#endif  // bf16 compiler support
#endif

namespace {

// The instruction set: the best the CPU has, or LSTM_JAX_NATIVE_ISA
// (avx512, avx2, portable; settings.cc) when set and the CPU has it, for tests
// of every path (Python warns when the CPU lacks it: native.py). The bfloat16
// kernels come with avx512 on CPUs with AVX512_BF16: AMX tiles where the CPU
// has them and Linux grants their use, else vdpbf16ps, or
// LSTM_JAX_NATIVE_BF16=avx512bf16 for the latter; other ISAs have none.
struct Isa {
  const char* name;
  const Kernels* kernels;
  const Kernels* bf16;
  const char* bf16_name;
};

#ifdef LSTM_JAX_BF16
// AMX-TILE and AMX-BF16 (cpuid leaf 7) and the kernel's permission to use tile data.
bool AmxUsable() {
#ifdef __linux__
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 22))) return false;
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
#endif

Isa ChooseIsa() {
  const std::string want = ChoiceSetting("LSTM_JAX_NATIVE_ISA");  // "" when unset
#ifdef LSTM_JAX_X86
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if ((want.empty() || want == "avx512") && has512) {
#ifdef LSTM_JAX_BF16
    if (__builtin_cpu_supports("avx512bf16")) {
      const std::string bf16 = ChoiceSetting("LSTM_JAX_NATIVE_BF16");
      if ((bf16.empty() || bf16 == "amx") && AmxUsable()) {
        return {"avx512", &avx512::kKernels, &avx512bf16::kKernelsAmx, "amx"};
      }
      return {"avx512", &avx512::kKernels, &avx512bf16::kKernelsBf16, "avx512bf16"};
    }
#endif
    return {"avx512", &avx512::kKernels, nullptr, ""};
  }
  if ((want.empty() || want == "avx512" || want == "avx2") && has2) {
    return {"avx2", &avx2::kKernels, nullptr, ""};
  }
#endif
  return {"portable", &portable::kKernels, nullptr, ""};
}

const Isa& GetIsa() {
  static const Isa isa = ChooseIsa();
  return isa;
}

// Below this many multiply-adds per step (B * H * 4H) a step runs on one
// thread: the per-step synchronisation would cost more than it saves.
// Both are read per call (environment overrides for measurements; settings.cc).
int64_t SplitThreshold() { return IntegerSetting("LSTM_JAX_NATIVE_SPLIT_MACS", 32768); }

int MaxThreads() { return int(IntegerSetting("LSTM_JAX_NATIVE_THREADS", 0)); }  // 0: the pool's size

inline void CpuRelax() {
#ifdef LSTM_JAX_X86
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

struct alignas(64) Counter {
  std::atomic<int64_t> value{0};
};

// Items (step, partition) over `steps` steps; see the file comment.
struct Loop {
  ItemFn fn;
  const void* problem;
  int64_t steps;
  int parts, panels;
  std::unique_ptr<Counter[]> claimed;  // next unclaimed step, per partition
  std::unique_ptr<Counter[]> done;     // steps finished, per partition

  int batch;

  Loop(ItemFn f, const void* pr, int64_t s, int np, int npanels, int nbatch)
      : fn(f), problem(pr), steps(s), parts(np), panels(npanels),
        claimed(new Counter[np]), done(new Counter[np]), batch(nbatch) {}

  bool AllDone(int64_t step) const {
    for (int r = 0; r < parts; ++r) {
      if (done[r].value.load(std::memory_order_acquire) < step) return false;
    }
    return true;
  }

  void WaitAllDone(int64_t step) const {
    for (int spins = 0; !AllDone(step); ++spins) {
      if (spins < 2000) {
        CpuRelax();
      } else {
        std::this_thread::yield();  // the partner may be descheduled: give it the core
      }
    }
  }

  // Runs items, own partition `q` first at every step, until all are claimed.
  void Work(int q) {
    int64_t step = steps;
    for (int r = 0; r < parts; ++r) {
      step = std::min(step, claimed[r].value.load(std::memory_order_acquire));
    }
    for (; step < steps; ++step) {
      WaitAllDone(step);
      for (int j = 0; j < parts; ++j) {
        const int r = (q + j) % parts;
        int64_t expected = step;
        if (claimed[r].value.compare_exchange_strong(expected, step + 1,
                                                     std::memory_order_acq_rel)) {
          fn(problem, step, int(int64_t(r) * panels / parts), int(int64_t(r + 1) * panels / parts),
             0, batch);
          done[r].value.store(step + 1, std::memory_order_release);
        }
      }
    }
  }
};

// Batch rows are independent sequences: partition r runs every step for its
// rows, with no synchronisation at all. A thread claims whole partitions (its
// own first); the caller claims whatever no helper has started.
struct RowLoop {
  ItemFn fn;
  const void* problem;
  int64_t steps;
  int parts, panels, batch;
  std::unique_ptr<Counter[]> claimed, done;  // 0/1 per partition

  RowLoop(ItemFn f, const void* pr, int64_t s, int np, int npanels, int nbatch)
      : fn(f), problem(pr), steps(s), parts(np), panels(npanels), batch(nbatch),
        claimed(new Counter[np]), done(new Counter[np]) {}

  void Work(int q) {
    for (int j = 0; j < parts; ++j) {
      const int r = (q + j) % parts;
      int64_t expected = 0;
      if (!claimed[r].value.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) continue;
      const int b0 = int(int64_t(r) * batch / parts), b1 = int(int64_t(r + 1) * batch / parts);
      for (int64_t step = 0; step < steps; ++step) fn(problem, step, 0, panels, b0, b1);
      done[r].value.store(1, std::memory_order_release);
    }
  }

  void WaitAllDone() const {
    for (int r = 0; r < parts; ++r) {
      for (int spins = 0; done[r].value.load(std::memory_order_acquire) == 0; ++spins) {
        if (spins < 2000) {
          CpuRelax();
        } else {
          std::this_thread::yield();
        }
      }
    }
  }
};

// Runs `fn` over all items on up to `split.parts` threads: this one plus
// helpers on XLA's pool. Returns when every item is done. `keep` owns whatever
// the items read (the problem, packed weights); late helpers hold it until
// they exit.
void RunLoop(ffi::ThreadPool& pool, std::shared_ptr<void> keep, ItemFn fn, const void* problem,
             int64_t steps, Split split, int panels, int batch) {
  if (split.rows) {
    auto loop = std::make_shared<RowLoop>(fn, problem, steps, split.parts, panels, batch);
    for (int q = 1; q < split.parts; ++q) pool.Schedule([loop, keep, q]() { loop->Work(q); });
    loop->Work(0);
    loop->WaitAllDone();
    return;
  }
  auto loop = std::make_shared<Loop>(fn, problem, steps, split.parts, panels, batch);
  for (int q = 1; q < split.parts; ++q) pool.Schedule([loop, keep, q]() { loop->Work(q); });
  loop->Work(0);
  loop->WaitAllDone(steps);
}

// Rows per thread below which a call splits hidden units instead of rows: a
// register block streams the weights for its rows, so thinner blocks waste
// the loads (LSTM_JAX_NATIVE_MIN_ROWS overrides, for measurements).
int MinRowsPerThread() { return int(IntegerSetting("LSTM_JAX_NATIVE_MIN_ROWS", 4)); }

Split Partitions(ffi::ThreadPool& pool, int batch, int input, int hidden, int panels, bool inference) {
  return StepPartitions(pool, batch, int64_t(batch) * (input + hidden) * 4 * hidden, panels, inference);
}

// Asks the kernel to back the whole 2 MiB pages inside [data, data + bytes)
// with transparent huge pages. Large XLA:CPU buffers are fresh mmap'd memory
// on every call, and faulting them in 4 KiB at a time measured as a third of
// the training forward's CPU time at (B, T, H) = (128, 64, 512) (TIMINGS.md).
// Only a hint: with THP off, off Linux, or with LSTM_JAX_NATIVE_HUGEPAGES=0,
// nothing changes.
}  // namespace

bool HugePagesWanted() {
  static const bool wanted = ChoiceSetting("LSTM_JAX_NATIVE_HUGEPAGES") != "0";
  return wanted;
}

void HugePagesHint(void* data, size_t bytes) {
  if (!HugePagesWanted()) return;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = uintptr_t(1) << 21;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + huge - 1) & ~(huge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(huge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

namespace {

// Shapes: xs (N.., T, B, I) or with batch_major (N.., B, T, I), w_ih (N.., I, 4H),
// b (N.., 4H), w_hh (N.., H, 4H), h0/c0 (N.., B, H), mask (N.., B, H) or empty,
// valid (N.., T, B) or empty; ys in the layout of xs, act (N.., T, B, 4H) and
// cs (N.., T, B, H) time-major.
// N.. are vmap axes (ffi_call's broadcast_all), looped over.
ffi::Error Forward(ffi::ThreadPool pool, bool batch_major, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_ih,
                   ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> w_hh,
                   ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                   ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::U8> valid,
                   ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_out,
                   ffi::ResultBuffer<ffi::F32> c_out, bool bf16, float* act, float* cs,
                   uint16_t* xhT, uint16_t* w_ihT) {
  if (ffi::Error error = SettingsChecked(); error.failure()) return error;
  auto xdims = xs.dimensions();
  auto wdims = w_hh.dimensions();
  const size_t rank = xdims.size();
  if (rank < 3 || wdims.size() != rank - 1) {
    return ffi::Error::InvalidArgument("xs must be (..., T, B, I) and w_hh (..., H, 4H)");
  }
  const int64_t steps = xdims[rank - (batch_major ? 2 : 3)];
  const int batch = int(xdims[rank - (batch_major ? 3 : 2)]), input = int(xdims[rank - 1]);
  const int hidden = int(wdims[rank - 3]), gates = 4 * hidden;
  int64_t count = 1;
  for (size_t d = 0; d + 3 < rank; ++d) count *= xdims[d];
  const int64_t bh = int64_t(batch) * hidden;
  const Kernels* chosen = bf16 ? GetIsa().bf16 : GetIsa().kernels;
  if (chosen == nullptr) return ffi::Error::InvalidArgument("no bfloat16 kernels on this CPU");
  const Kernels& kern = *chosen;
  const int panels = (hidden + kern.width - 1) / kern.width;
  const bool has_mask = mask.element_count() != 0, has_valid = valid.element_count() != 0;
  float* hT = h_out->typed_data();
  float* cT = c_out->typed_data();
  if (steps == 0 || bh == 0) {  // the state passes through
    if (bh > 0) {
      const size_t n = h0.element_count();
      std::memcpy(hT, h0.typed_data(), n * sizeof(float));
      std::memcpy(cT, c0.typed_data(), n * sizeof(float));
    }
    return ffi::Error::Success();
  }
  HugePagesHint(ys->typed_data(), ys->element_count() * sizeof(float));
  if (act != nullptr) HugePagesHint(act, size_t(count) * steps * batch * gates * sizeof(float));
  if (cs != nullptr) HugePagesHint(cs, size_t(count) * steps * bh * sizeof(float));
  if (xhT != nullptr) HugePagesHint(xhT, size_t(count) * (input + hidden) * steps * batch * sizeof(uint16_t));
  // inference only: a training forward keeps the backward's split, so that
  // each core reads back the activations it wrote (measured: units here
  // made the training step 8-30% slower)
  const Split split = Partitions(pool, batch, input, hidden, panels, /*inference=*/act == nullptr);
  const size_t pack = kern.fwd_pack_size(input, hidden);
  for (int64_t n = 0; n < count; ++n) {
    auto buffers = std::make_shared<std::vector<float>>(pack + 4 * bh);
    float* wpack = buffers->data();
    float* hbuf = wpack + pack;
    kern.pack_fwd(w_ih.typed_data() + n * input * gates, w_hh.typed_data() + n * hidden * gates,
                  input, hidden, wpack);
    auto P = std::make_shared<FwdProblem>();
    P->seq = Layout(steps, batch, batch_major);
    P->steps = steps;
    P->batch = batch;
    P->input = input;
    P->hidden = hidden;
    P->xs = xs.typed_data() + n * steps * batch * input;
    P->bias = bias.typed_data() + n * gates;
    P->mask = has_mask ? mask.typed_data() + n * bh : nullptr;
    P->valid = has_valid ? valid.typed_data() + n * steps * batch : nullptr;
    P->ys = ys->typed_data() + n * steps * bh;
    P->act = act != nullptr ? act + n * steps * batch * gates : nullptr;
    P->cs = cs != nullptr ? cs + n * steps * bh : nullptr;
    P->c = cT + n * bh;
    std::memcpy(P->c, c0.typed_data() + n * bh, bh * sizeof(float));
    P->h[0] = hbuf;
    P->h[1] = hbuf + bh;
    std::memcpy(P->h[0], h0.typed_data() + n * bh, bh * sizeof(float));
    if (has_mask) {
      P->hm[0] = hbuf + 2 * bh;
      P->hm[1] = hbuf + 3 * bh;
      for (int64_t e = 0; e < bh; ++e) P->hm[0][e] = P->h[0][e] * P->mask[e];
    } else {
      P->hm[0] = P->h[0];
      P->hm[1] = P->h[1];
    }
    P->wpack = wpack;
    P->xhT = xhT != nullptr ? xhT + n * (input + hidden) * steps * batch : nullptr;
    if (w_ihT != nullptr) {  // (4H, I) bf16, for XLA's dx GEMM
      const float* w = w_ih.typed_data() + n * input * gates;
      for (int g = 0; g < gates; ++g) {
        for (int i = 0; i < input; ++i) w_ihT[(n * gates + g) * input + i] = bf16_bits(w[i * gates + g]);
      }
    }
    std::shared_ptr<void> keep = std::make_shared<std::pair<decltype(P), decltype(buffers)>>(P, buffers);
    RunLoop(pool, keep, kern.fwd_item, P.get(), steps, split, panels, batch);
    std::memcpy(hT + n * bh, P->h[steps & 1], bh * sizeof(float));
  }
  return ffi::Error::Success();
}

#define LSTM_JAX_FORWARD_ARGS                                                                   \
  ffi::ThreadPool pool, bool batch_major, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_ih,                  \
      ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> h0,        \
      ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::U8> valid,        \
      ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_out,                       \
      ffi::ResultBuffer<ffi::F32> c_out

ffi::Error ForwardTrain(LSTM_JAX_FORWARD_ARGS, ffi::ResultBuffer<ffi::F32> act,
                        ffi::ResultBuffer<ffi::F32> cs, ffi::ResultBuffer<ffi::BF16> xhT,
                        ffi::ResultBuffer<ffi::BF16> w_ihT, bool bf16) {
  return Forward(pool, batch_major, xs, w_ih, bias, w_hh, h0, c0, mask, valid, ys, h_out, c_out,
                 bf16, Data(*act), Data(*cs), bf16 ? Data(*xhT) : nullptr,
                 bf16 ? Data(*w_ihT) : nullptr);
}

ffi::Error ForwardInfer(LSTM_JAX_FORWARD_ARGS, bool bf16) {
  return Forward(pool, batch_major, xs, w_ih, bias, w_hh, h0, c0, mask, valid, ys, h_out, c_out,
                 bf16, nullptr, nullptr, nullptr, nullptr);
}

// Shapes: w_hh (N.., H, 4H), act (N.., T, B, 4H), cs (N.., T, B, H), dys/ys
// (N.., T, B, H) or (N.., B, T, H) with batch_major; c0/h0/dh/dc (N.., B, H),
// mask/valid as in Forward.
ffi::Error Backward(ffi::ThreadPool pool, bool batch_major, ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> act,
                    ffi::Buffer<ffi::F32> cs, ffi::Buffer<ffi::F32> c0,
                    ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> dh_in,
                    ffi::Buffer<ffi::F32> dc_in, ffi::Buffer<ffi::F32> mask,
                    ffi::Buffer<ffi::U8> valid, ffi::Buffer<ffi::F32> ys,
                    ffi::Buffer<ffi::F32> h0, ffi::ResultBuffer<ffi::F32> dz,
                    ffi::ResultBuffer<ffi::F32> dh_out, ffi::ResultBuffer<ffi::F32> dc_out,
                    ffi::ResultBuffer<ffi::F32> dm_out, ffi::ResultBuffer<ffi::BF16> dzb,
                    bool bf16) {
  if (ffi::Error error = SettingsChecked(); error.failure()) return error;
  auto dims = act.dimensions();
  const size_t rank = dims.size();
  if (rank < 3) return ffi::Error::InvalidArgument("act must be (..., T, B, 4H)");
  const int64_t steps = dims[rank - 3];
  const int batch = int(dims[rank - 2]), gates = int(dims[rank - 1]);
  const int hidden = gates / 4;
  const int64_t per = steps * batch * gates;
  const int64_t bh = int64_t(batch) * hidden;
  const int64_t count = per == 0 ? 0 : int64_t(act.element_count()) / per;
  const Kernels* chosen = bf16 ? GetIsa().bf16 : GetIsa().kernels;
  if (chosen == nullptr) return ffi::Error::InvalidArgument("no bfloat16 kernels on this CPU");
  const Kernels& kern = *chosen;
  const int panels = (hidden + kern.width - 1) / kern.width;
  const bool has_mask = mask.element_count() != 0, has_valid = valid.element_count() != 0;
  float* dm = Data(*dm_out);
  if (dm != nullptr) std::memset(dm, 0, dm_out->element_count() * sizeof(float));
  if (per == 0) {
    if (bh > 0) {
      std::memcpy(dh_out->typed_data(), dh_in.typed_data(), dh_in.element_count() * sizeof(float));
      std::memcpy(dc_out->typed_data(), dc_in.typed_data(), dc_in.element_count() * sizeof(float));
    }
    return ffi::Error::Success();
  }
  if (bf16) HugePagesHint(dzb->typed_data(), dzb->element_count() * sizeof(uint16_t));
  if (dz->typed_data() != act.typed_data()) {  // XLA did not alias: copy the activations over
    std::memcpy(dz->typed_data(), act.typed_data(), act.element_count() * sizeof(float));
  }
  const Split split = Partitions(pool, batch, 0, hidden, panels, /*inference=*/false);
  for (int64_t n = 0; n < count; ++n) {
    auto buffers = std::make_shared<std::vector<float>>(kern.bwd_pack_size(hidden));
    kern.pack_bwd(w_hh.typed_data() + n * hidden * gates, hidden, buffers->data());
    auto P = std::make_shared<BwdProblem>();
    P->seq = Layout(steps, batch, batch_major);
    P->steps = steps;
    P->batch = batch;
    P->hidden = hidden;
    P->dz = dz->typed_data() + n * per;
    P->cs = cs.typed_data() + n * steps * bh;
    P->c0 = c0.typed_data() + n * bh;
    P->dys = dys.typed_data() + n * steps * bh;
    P->mask = has_mask ? mask.typed_data() + n * bh : nullptr;
    P->valid = has_valid ? valid.typed_data() + n * steps * batch : nullptr;
    P->ys = ys.typed_data() + n * steps * bh;
    P->h0 = h0.typed_data() + n * bh;
    P->dh = dh_out->typed_data() + n * bh;
    P->dc = dc_out->typed_data() + n * bh;
    std::memcpy(P->dh, dh_in.typed_data() + n * bh, bh * sizeof(float));
    std::memcpy(P->dc, dc_in.typed_data() + n * bh, bh * sizeof(float));
    P->dm = has_mask ? dm + n * bh : nullptr;
    P->dzb = bf16 ? dzb->typed_data() + n * per : nullptr;
    P->wpack = buffers->data();
    std::shared_ptr<void> keep = std::make_shared<std::pair<decltype(P), decltype(buffers)>>(P, buffers);
    RunLoop(pool, keep, kern.bwd_item, P.get(), steps + 1, split, panels, batch);
  }
  return ffi::Error::Success();
}

}  // namespace

// native_loop.h: shared with the GRU handlers (gru_native.cc).
void RunItems(ffi::ThreadPool& pool, std::shared_ptr<void> keep, ItemFn fn, const void* problem,
              int64_t steps, Split split, int panels, int batch) {
  RunLoop(pool, std::move(keep), fn, problem, steps, split, panels, batch);
}

// Per-step multiply-adds from which an inference forward splits hidden units
// even where it could split rows: each thread then streams only its share of
// the weights, and one synchronisation per step is cheap next to the step
// ((B, H) = (64, 256) and (128, 512) measured ~4% faster; TIMINGS.md).
// Training keeps rows in both loops: split by units, the backward would
// exchange all of dz between the cores every step.
// LSTM_JAX_NATIVE_UNITS_MACS overrides.
int64_t ForwardUnitsThreshold() { return IntegerSetting("LSTM_JAX_NATIVE_UNITS_MACS", int64_t(1) << 24); }

Split StepPartitions(ffi::ThreadPool& pool, int batch, int64_t macs, int panels, bool inference) {
  if (macs < SplitThreshold()) return {1, false};
  int64_t threads = pool.num_threads();
  if (MaxThreads() > 0) threads = MaxThreads();
  const int64_t by_rows = std::min<int64_t>(threads, batch / MinRowsPerThread());
  const bool units = inference && macs >= ForwardUnitsThreshold() && panels >= threads;
  if (by_rows >= 2 && !units) return {int(by_rows), true};
  return {int(std::max<int64_t>(1, std::min<int64_t>(threads, panels))), false};
}

const char* IsaName() { return GetIsa().name; }

}  // namespace lstm_jax

#define LSTM_JAX_EXPORT extern "C" __attribute__((visibility("default")))
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxForwardTrain(XLA_FFI_CallFrame*);
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxForwardInfer(XLA_FFI_CallFrame*);
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxBackward(XLA_FFI_CallFrame*);
LSTM_JAX_EXPORT const char* LstmJaxNativeIsa();
LSTM_JAX_EXPORT const char* LstmJaxNativeBf16Isa();

using lstm_jax::Backward;
using lstm_jax::ForwardInfer;
using lstm_jax::ForwardTrain;

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxForwardTrain, ForwardTrain,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Attr<bool>("batch_major")
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_ih
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mask
                                  .Arg<ffi::Buffer<ffi::U8>>()   // valid
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c
                                  .Ret<ffi::Buffer<ffi::F32>>()  // act
                                  .Ret<ffi::Buffer<ffi::F32>>()  // cs
                                  .Ret<ffi::Buffer<ffi::BF16>>() // xhT, or empty (float32)
                                  .Ret<ffi::Buffer<ffi::BF16>>() // w_ih^T, or empty (float32)
                                  .Attr<bool>("bf16")            // bfloat16 GEMM inputs
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxForwardInfer, ForwardInfer,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Attr<bool>("batch_major")
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_ih
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mask
                                  .Arg<ffi::Buffer<ffi::U8>>()   // valid
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c
                                  .Attr<bool>("bf16")
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Attr<bool>("batch_major")
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // act
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dys
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dc
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mask
                                  .Arg<ffi::Buffer<ffi::U8>>()   // valid
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ys
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dz
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dc0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dmask
                                  .Ret<ffi::Buffer<ffi::BF16>>() // dz in bf16, or empty
                                  .Attr<bool>("bf16")
);

const char* LstmJaxNativeIsa() { return lstm_jax::GetIsa().name; }
const char* LstmJaxNativeBf16Isa() { return lstm_jax::GetIsa().bf16_name; }
