// What the GRU handlers (gru_native.cc) share with lstm_native.cc, which
// defines these: the per-step thread loop over XLA's intra-op pool (see that
// file's comment) and the instruction set chosen for this process.
#ifndef LSTM_JAX_NATIVE_LOOP_H_
#define LSTM_JAX_NATIVE_LOOP_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

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

// One item: step `step` for hidden-unit panels [p0, p1) and batch rows [b0, b1).
using ItemFn = void (*)(const void* problem, int64_t step, int p0, int p1, int b0, int b1);

// One instruction set's kernels for one cell (lstm_kernel.inc, gru_kernel.inc):
// vector width, weight packing for each loop, and the two loops' items.
struct Kernels {
  int width;
  void (*pack_fwd)(const float*, const float*, int, int, float*);
  void (*pack_bwd)(const float*, int, float*);
  size_t (*fwd_pack_size)(int, int);
  size_t (*bwd_pack_size)(int);
  ItemFn fwd_item;
  ItemFn bwd_item;
};

// How a call is split across threads: batch rows (`rows`: sequences are
// independent, no synchronisation) or hidden-unit panels (one per step).
struct Split {
  int parts;
  bool rows;
};

// Runs `fn` over items (step, partition), steps [0, steps) in order, on up to
// `split.parts` threads; returns when every item is done. `keep` owns what the
// items read (late helper threads hold it until they exit).
void RunItems(xla::ffi::ThreadPool& pool, std::shared_ptr<void> keep, ItemFn fn,
              const void* problem, int64_t steps, Split split, int panels, int batch);

// The split for steps of `macs` multiply-adds: one partition below the split
// threshold (LSTM_JAX_NATIVE_SPLIT_MACS); rows with at least 4 per thread
// (LSTM_JAX_NATIVE_MIN_ROWS), except for large `inference` steps; else panels,
// one partition per thread.
Split StepPartitions(xla::ffi::ThreadPool& pool, int batch, int64_t macs, int panels, bool inference);

// madvise(MADV_HUGEPAGE) on the whole 2 MiB pages of a large output buffer
// (see lstm_native.cc); LSTM_JAX_NATIVE_HUGEPAGES=0 turns it off.
void HugePagesHint(void* data, size_t bytes);

// "avx512", "avx2" or "portable" (LSTM_JAX_NATIVE_ISA when set and the CPU has it).
const char* IsaName();

// Calls f(r0, rows) over [0, batch) in blocks of at most MAX rows, as even as
// possible: 8 rows run as 4 + 4, not 6 + 2 (a thin block streams the weights
// for few rows).
template <int MAX, class F>
inline void for_row_blocks(int batch, F&& f) {
  const int blocks = (batch + MAX - 1) / MAX;
  for (int j = 0, r0 = 0; j < blocks; ++j) {
    const int rows = (batch - r0) / (blocks - j);
    f(r0, rows);
    r0 += rows;
  }
}

template <class Buffer>
auto Data(Buffer& b) -> decltype(b.typed_data()) {
  return b.element_count() == 0 ? nullptr : b.typed_data();
}

}  // namespace lstm_jax

#endif  // LSTM_JAX_NATIVE_LOOP_H_
