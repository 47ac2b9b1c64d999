// What the GRU handlers (gru_native.cc) share with lstm_native.cc, which
// defines these: the per-step thread loop over XLA's intra-op pool (see that
// file's comment) and the instruction set chosen for this process.
#ifndef LSTM_JAX_NATIVE_LOOP_H_
#define LSTM_JAX_NATIVE_LOOP_H_

#include <cstdint>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace lstm_jax {

// One item: step `step` for panels [p0, p1).
using ItemFn = void (*)(const void* problem, int64_t step, int p0, int p1);

// Runs `fn` over items (step, partition), steps [0, steps) in order, on up to
// `parts` threads; returns when every item is done. `keep` owns what the items
// read (late helper threads hold it until they exit).
void RunItems(xla::ffi::ThreadPool& pool, std::shared_ptr<void> keep, ItemFn fn,
              const void* problem, int64_t steps, int parts, int panels);

// Partitions for steps of `macs` multiply-adds over `panels` panels: 1 below
// the split threshold (LSTM_JAX_NATIVE_SPLIT_MACS), else one per thread.
int StepPartitions(xla::ffi::ThreadPool& pool, int64_t macs, int panels);

// "avx512", "avx2" or "portable" (LSTM_JAX_NATIVE_ISA when set and supported).
const char* IsaName();

template <class Buffer>
float* Data(Buffer& b) {
  return b.element_count() == 0 ? nullptr : b.typed_data();
}

}  // namespace lstm_jax

#endif  // LSTM_JAX_NATIVE_LOOP_H_
