// The native kernels' runtime, shared by every cell: the instruction set
// chosen for this process, the per-step thread loop over XLA's intra-op pool
// and its split policy, and the huge-page hint for large buffers. Nothing
// here knows a cell's gates (recurrent.h, cells.inc do).
#ifndef LSTM_JAX_RUNTIME_H_
#define LSTM_JAX_RUNTIME_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "settings.h"
#include "xla/ffi/api/ffi.h"

namespace lstm_jax {

// INVALID_ARGUMENT naming the first invalid LSTM_JAX_NATIVE_* setting, else
// success: every handler checks first, so a mistyped value set after the
// extension was loaded (the per-call settings) fails the call, not quietly.
inline xla::ffi::Error SettingsChecked() {
  const std::string error = SettingsError();
  return error.empty() ? xla::ffi::Error::Success() : xla::ffi::Error::InvalidArgument(error);
}

// The float32 kernels' instruction set, and the bfloat16 kernels' (AVX512_BF16's
// vdpbf16ps or AMX tiles; only with kAvx512). Named only for Python (IsaName).
enum class Isa { kPortable, kAvx2, kAvx512 };
enum class Bf16Isa { kNone, kAvx512Bf16, kAmx };

// Chosen once per process: the best the CPU has, or LSTM_JAX_NATIVE_ISA /
// LSTM_JAX_NATIVE_BF16 when set and the CPU has it (runtime.cc).
Isa ChosenIsa();
Bf16Isa ChosenBf16Isa();

// One item: step `step` for hidden-unit panels [p0, p1) and batch rows [b0, b1).
using ItemFn = void (*)(const void* problem, int64_t step, int p0, int p1, int b0, int b1);

// How a call is split across threads: batch rows (`rows`: sequences are
// independent, no synchronisation) or hidden-unit panels (one per step).
struct Split {
  int parts;
  bool rows;
};

// The split for steps of `macs` multiply-adds: one partition below the split
// threshold (LSTM_JAX_NATIVE_SPLIT_MACS); rows with at least 4 per thread
// (LSTM_JAX_NATIVE_MIN_ROWS), except for large `inference` steps; else panels,
// one partition per thread.
Split StepPartitions(xla::ffi::ThreadPool& pool, int batch, int64_t macs, int panels, bool inference);

// The row partition r of `parts` whose rows start at b0: a split by rows
// gives partition r rows [r * batch / parts, (r + 1) * batch / parts), and
// with batch >= parts each start is distinct.
inline int RowPartition(int b0, int batch, int parts) {
  return int((int64_t(b0) * parts + batch - 1) / batch);
}

// Runs `fn` over items (step, partition), steps [0, steps) in order, on up to
// `split.parts` threads; returns when every item is done. `keep` owns what the
// items read (late helper threads hold it until they exit).
void RunItems(xla::ffi::ThreadPool& pool, std::shared_ptr<void> keep, ItemFn fn,
              const void* problem, int64_t steps, Split split, int panels, int batch);

// madvise(MADV_HUGEPAGE) on the whole 2 MiB pages of a large output buffer
// (see runtime.cc); LSTM_JAX_NATIVE_HUGEPAGES=0 turns it off.
void HugePagesHint(void* data, size_t bytes);

// The kernels load whole vectors (up to 64 bytes) at multiples of the vector
// width from their own buffers: those must start on a cache line, or every
// AVX-512 load splits two lines (malloc gives 16 bytes: measured 11-21% of
// the forward loop, kernel_ab_s14.md).
constexpr size_t kCacheLine = 64;

// std::allocator's interface for cache-line-aligned element storage.
template <class T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <class U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kCacheLine))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(kCacheLine)); }
  template <class U>
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
  template <class U>
  bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};

template <class T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

// A call's own zeroed floats (packed weights, carries, weight-gradient
// partitions): cache-line aligned, and from 1 MiB on whole 2 MiB pages with
// the huge-page hint (packed weights read every step: measured up to 5% of
// the forward loop at H = 512 over aligned 4 KiB pages).
class Scratch {
 public:
  explicit Scratch(size_t floats);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* data() const { return data_; }
  size_t size() const { return floats_; }

 private:
  size_t floats_ = 0;
  float* data_ = nullptr;
  void* mapped_ = nullptr;  // the mapping, where the floats are in one
  size_t mapped_bytes_ = 0;
};

// `floats` floats of Scratch for one call, zero past the first `overwritten`
// (which the caller writes in full before reading them: the packed weights):
// the calling thread's buffer from its last call when no helper thread holds
// it any more and it is large enough, else a new one, kept for the next call
// if at most 32 MiB. Mapping and faulting in a fresh buffer per call made
// short calls (T = 1 at H = 512) 15-45% slower than malloc's reused memory;
// zeroing the packed part again cost a quarter of a T = 1 call at H = 512.
// LSTM_JAX_NATIVE_POISON_REUSED=1 (tests) fills that part with NaN instead.
std::shared_ptr<Scratch> CallScratch(size_t floats, size_t overwritten);

}  // namespace lstm_jax

#endif  // LSTM_JAX_RUNTIME_H_
