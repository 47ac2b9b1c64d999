// The runtime (runtime.h): instruction-set choice, threads, huge pages.
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
#include "runtime.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>

#ifdef __linux__
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "simd.h"  // LSTM_JAX_X86, LSTM_JAX_BF16

#ifdef LSTM_JAX_X86
#include <cpuid.h>
#endif

namespace ffi = xla::ffi;

namespace lstm_jax {
namespace {

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

struct Isas {
  Isa isa;
  Bf16Isa bf16;
};

// The bfloat16 kernels come with avx512 on CPUs with AVX512_BF16: AMX tiles
// where the CPU has them and Linux grants their use, else vdpbf16ps, or
// LSTM_JAX_NATIVE_BF16=avx512bf16 for the latter; other ISAs have none.
// Python warns when the CPU lacks what was asked for (native.py).
Isas Choose() {
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
      if ((bf16.empty() || bf16 == "amx") && AmxUsable()) return {Isa::kAvx512, Bf16Isa::kAmx};
      return {Isa::kAvx512, Bf16Isa::kAvx512Bf16};
    }
#endif
    return {Isa::kAvx512, Bf16Isa::kNone};
  }
  if ((want.empty() || want == "avx512" || want == "avx2") && has2) return {Isa::kAvx2, Bf16Isa::kNone};
#endif
  return {Isa::kPortable, Bf16Isa::kNone};
}

const Isas& Chosen() {
  static const Isas isas = Choose();
  return isas;
}

// Below this many multiply-adds per step a step runs on one thread: the
// per-step synchronisation would cost more than it saves. These are read per
// call (environment overrides for measurements; settings.cc).
int64_t SplitThreshold() { return IntegerSetting("LSTM_JAX_NATIVE_SPLIT_MACS", 32768); }

int MaxThreads() { return int(IntegerSetting("LSTM_JAX_NATIVE_THREADS", 0)); }  // 0: the pool's size

// Rows per thread below which a call splits hidden units instead of rows: a
// register block streams the weights for its rows, so thinner blocks waste
// the loads (LSTM_JAX_NATIVE_MIN_ROWS overrides, for measurements).
int MinRowsPerThread() { return int(IntegerSetting("LSTM_JAX_NATIVE_MIN_ROWS", 4)); }

// Per-step multiply-adds from which an inference forward splits hidden units
// even where it could split rows: each thread then streams only its share of
// the weights, and one synchronisation per step is cheap next to the step
// ((B, H) = (64, 256) and (128, 512) measured ~4% faster; TIMINGS.md).
// Training keeps rows in both loops: split by units, the backward would
// exchange all of dz between the cores every step.
// LSTM_JAX_NATIVE_UNITS_MACS overrides.
int64_t ForwardUnitsThreshold() { return IntegerSetting("LSTM_JAX_NATIVE_UNITS_MACS", int64_t(1) << 24); }

inline void CpuRelax() {
#ifdef LSTM_JAX_X86
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins, then yields: the partner may be descheduled, so give it the core.
template <class F>
void WaitUntil(F&& ready) {
  for (int spins = 0; !ready(); ++spins) {
    if (spins < 2000) {
      CpuRelax();
    } else {
      std::this_thread::yield();
    }
  }
}

struct alignas(64) Counter {
  std::atomic<int64_t> value{0};
};

// Items (step, partition) over `steps` steps; see the file comment.
struct Loop {
  ItemFn fn;
  const void* problem;
  int64_t steps;
  int parts, panels, batch;
  std::unique_ptr<Counter[]> claimed;  // next unclaimed step, per partition
  std::unique_ptr<Counter[]> done;     // steps finished, per partition

  Loop(ItemFn f, const void* pr, int64_t s, int np, int npanels, int nbatch)
      : fn(f), problem(pr), steps(s), parts(np), panels(npanels), batch(nbatch),
        claimed(new Counter[np]), done(new Counter[np]) {}

  bool AllDone(int64_t step) const {
    for (int r = 0; r < parts; ++r) {
      if (done[r].value.load(std::memory_order_acquire) < step) return false;
    }
    return true;
  }

  // Runs items, own partition `q` first at every step, until all are claimed.
  void Work(int q) {
    int64_t step = steps;
    for (int r = 0; r < parts; ++r) {
      step = std::min(step, claimed[r].value.load(std::memory_order_acquire));
    }
    for (; step < steps; ++step) {
      WaitUntil([&] { return AllDone(step); });
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

  void WaitAllDone() const {
    WaitUntil([&] { return AllDone(steps); });
  }
};

// Batch rows are independent sequences: partition r runs every step for its
// rows, with no synchronisation between partitions. A partition's steps are
// claimed in order, kRowChunk at a time, by whichever thread is free: each
// thread runs its own partition's chunks, and the caller also takes the next
// chunk of any partition that nobody holds. So a helper thread that starts
// late or is descheduled (the other core busy) delays its partition by at
// most the chunk it holds: the caller runs the rest.
struct RowLoop {
  static constexpr int64_t kRowChunk = 4;  // steps per claim

  ItemFn fn;
  const void* problem;
  int64_t steps, chunks;
  int parts, panels, batch;
  std::unique_ptr<Counter[]> claimed, done;  // chunks claimed / finished, per partition

  RowLoop(ItemFn f, const void* pr, int64_t s, int np, int npanels, int nbatch)
      : fn(f), problem(pr), steps(s), chunks((s + kRowChunk - 1) / kRowChunk), parts(np),
        panels(npanels), batch(nbatch), claimed(new Counter[np]), done(new Counter[np]) {}

  bool Finished(int r) const { return done[r].value.load(std::memory_order_acquire) >= chunks; }

  // Runs the next chunk of partition r if it is free (its previous chunk
  // finished and nobody claimed it); whether it did.
  bool RunChunk(int r) {
    int64_t c = done[r].value.load(std::memory_order_acquire);
    if (c >= chunks || !claimed[r].value.compare_exchange_strong(c, c + 1, std::memory_order_acq_rel)) {
      return false;
    }
    const int b0 = int(int64_t(r) * batch / parts), b1 = int(int64_t(r + 1) * batch / parts);
    const int64_t end = std::min(steps, (c + 1) * kRowChunk);
    for (int64_t step = c * kRowChunk; step < end; ++step) fn(problem, step, 0, panels, b0, b1);
    done[r].value.store(c + 1, std::memory_order_release);
    return true;
  }

  // A helper (q > 0) runs its own partition to the end, then whatever chunk is
  // free; the caller (q == 0) does the same and then waits for every partition,
  // taking each chunk that comes free.
  void Work(int q) {
    while (!Finished(q)) WaitUntil([&] { return RunChunk(q) || Finished(q); });
    for (bool ran = true; ran;) {
      ran = false;
      for (int j = 1; j < parts; ++j) ran = RunChunk((q + j) % parts) || ran;
    }
  }

  void WaitAllDone() {
    for (int r = 0; r < parts; ++r) {
      WaitUntil([&] { return Finished(r) || (RunChunk(r), Finished(r)); });
    }
  }
};

// The calling thread works as partition 0, helpers on XLA's pool as the others.
template <class L>
void Run(ffi::ThreadPool& pool, const std::shared_ptr<void>& keep, std::shared_ptr<L> loop, int parts) {
  for (int q = 1; q < parts; ++q) pool.Schedule([loop, keep, q]() { loop->Work(q); });
  loop->Work(0);
  loop->WaitAllDone();
}

bool HugePagesWanted() {
  static const bool wanted = ChoiceSetting("LSTM_JAX_NATIVE_HUGEPAGES") != "0";
  return wanted;
}

}  // namespace

Isa ChosenIsa() { return Chosen().isa; }
Bf16Isa ChosenBf16Isa() { return Chosen().bf16; }

Split StepPartitions(ffi::ThreadPool& pool, int batch, int64_t macs, int panels, bool inference) {
  if (macs < SplitThreshold()) return {1, false};
  int64_t threads = pool.num_threads();
  if (MaxThreads() > 0) threads = MaxThreads();
  const int64_t by_rows = std::min<int64_t>(threads, batch / MinRowsPerThread());
  const bool units = inference && macs >= ForwardUnitsThreshold() && panels >= threads;
  if (by_rows >= 2 && !units) return {int(by_rows), true};
  return {int(std::max<int64_t>(1, std::min<int64_t>(threads, panels))), false};
}

void RunItems(ffi::ThreadPool& pool, std::shared_ptr<void> keep, ItemFn fn, const void* problem,
              int64_t steps, Split split, int panels, int batch) {
  if (split.rows) {
    Run(pool, keep, std::make_shared<RowLoop>(fn, problem, steps, split.parts, panels, batch), split.parts);
  } else {
    Run(pool, keep, std::make_shared<Loop>(fn, problem, steps, split.parts, panels, batch), split.parts);
  }
}

// Asks the kernel to back the whole 2 MiB pages inside [data, data + bytes)
// with transparent huge pages. Large XLA:CPU buffers are fresh mmap'd memory
// on every call, and faulting them in 4 KiB at a time measured as a third of
// the training forward's CPU time at (B, T, H) = (128, 64, 512) (TIMINGS.md).
// Only a hint: with THP off, off Linux, or with LSTM_JAX_NATIVE_HUGEPAGES=0,
// nothing changes.
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

Scratch::Scratch(size_t floats) : floats_(floats) {
  const size_t bytes = std::max<size_t>(floats, 1) * sizeof(float);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t huge = size_t(1) << 21;
  if (bytes >= (size_t(1) << 20) && HugePagesWanted()) {
    // anonymous memory is zero; one extra huge page of address space for the alignment
    const size_t rounded = (bytes + huge - 1) & ~(huge - 1);
    void* m = mmap(nullptr, rounded + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m != MAP_FAILED) {
      mapped_ = m;
      mapped_bytes_ = rounded + huge;
      data_ = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(m) + huge - 1) & ~(huge - 1));
      HugePagesHint(data_, rounded);
      return;
    }
  }
#endif
  data_ = static_cast<float*>(::operator new(bytes, std::align_val_t(kCacheLine)));
  std::memset(data_, 0, bytes);
}

Scratch::~Scratch() {
#ifdef __linux__
  if (mapped_ != nullptr) {
    munmap(mapped_, mapped_bytes_);
    return;
  }
#endif
  ::operator delete(data_, std::align_val_t(kCacheLine));
}

std::shared_ptr<Scratch> CallScratch(size_t floats, size_t overwritten) {
  // kept at most this large, so that one large call does not pin its memory in
  // the thread; past it a call maps its own (its time dwarfs the mapping's)
  constexpr size_t kKeptFloats = (size_t(32) << 20) / sizeof(float);
  thread_local std::shared_ptr<Scratch> last;
  // use_count 1: only this cache holds it (helpers release theirs when their tasks end)
  if (last != nullptr && last.use_count() == 1 && last->size() >= floats) {
    if (floats > overwritten) std::memset(last->data() + overwritten, 0, (floats - overwritten) * sizeof(float));
    // tests: NaN where the caller promises to write everything, so that any
    // float it leaves unwritten (and reads) shows
    static const bool poison = ChoiceSetting("LSTM_JAX_NATIVE_POISON_REUSED") == "1";
    if (poison) std::fill_n(last->data(), std::min(overwritten, floats), NAN);
    return last;
  }
  if (floats > kKeptFloats) return std::make_shared<Scratch>(floats);
  last = std::make_shared<Scratch>(floats);
  return last;
}

}  // namespace lstm_jax


// The chosen instruction sets' names, for Python (native_isa, native_bf16_isa):
// "avx512", "avx2" or "portable"; "amx", "avx512bf16" or "" (none).
LSTM_JAX_EXPORT const char* LstmJaxNativeIsa();
LSTM_JAX_EXPORT const char* LstmJaxNativeBf16Isa();

const char* LstmJaxNativeIsa() {
  switch (lstm_jax::ChosenIsa()) {
    case lstm_jax::Isa::kAvx512: return "avx512";
    case lstm_jax::Isa::kAvx2: return "avx2";
    case lstm_jax::Isa::kPortable: break;
  }
  return "portable";
}

const char* LstmJaxNativeBf16Isa() {
  switch (lstm_jax::ChosenBf16Isa()) {
    case lstm_jax::Bf16Isa::kAmx: return "amx";
    case lstm_jax::Bf16Isa::kAvx512Bf16: return "avx512bf16";
    case lstm_jax::Bf16Isa::kNone: break;
  }
  return "";
}
