// Every cell's kernels (recurrent_kernel.inc with the policies of cells.inc),
// compiled once per instruction set, and the LSTM's and GRU's bfloat16 kernels
// (bf16_kernel.inc; the LSTM's also on AMX tiles, lstm_kernel_amx.inc); the
// handlers find the chosen set's through CellKernels and Bf16Kernels (recurrent.h).
// With the x86 sets, also the timed FMA loop of the measured peak (fma_loop.inc,
// ChosenFmaLoop; fma_peak.cc).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <vector>

#include "recurrent.h"
#include "simd.h"

namespace lstm_jax {

namespace portable {
using V = ScalarVec;
#include "recurrent_kernel.inc"
#include "cells.inc"
}  // namespace portable

#ifdef LSTM_JAX_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
using V = Avx2Vec;
#include "recurrent_kernel.inc"
#include "cells.inc"
#include "fma_loop.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")
namespace avx512 {
using V = Avx512Vec;
#include "recurrent_kernel.inc"
#include "cells.inc"
#include "fma_loop.inc"
}  // namespace avx512
#pragma GCC pop_options

#ifdef LSTM_JAX_BF16
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,amx-tile,amx-bf16,fma")
namespace avx512bf16 {
using V = Avx512Vec;
#include "recurrent_kernel.inc"
#include "cells.inc"
#include "bf16_kernel.inc"
#include "lstm_kernel_amx.inc"
}  // namespace avx512bf16
#pragma GCC pop_options
#endif  // LSTM_JAX_BF16
#endif  // LSTM_JAX_X86

const Kernels& CellKernels(Cell cell) {
  switch (ChosenIsa()) {
#ifdef LSTM_JAX_X86
    case Isa::kAvx512: return avx512::kCells[int(cell)];
    case Isa::kAvx2: return avx2::kCells[int(cell)];
#endif
    default: return portable::kCells[int(cell)];
  }
}

const FmaLoop* ChosenFmaLoop() {
  switch (ChosenIsa()) {
#ifdef LSTM_JAX_X86
    case Isa::kAvx512: return &avx512::kFmaLoop;
    case Isa::kAvx2: return &avx2::kFmaLoop;
#endif
    default: return nullptr;
  }
}

const Kernels* Bf16Kernels(Cell cell) {
  if (cell != Cell::kLstm && cell != Cell::kGru) return nullptr;
  switch (ChosenBf16Isa()) {
#ifdef LSTM_JAX_BF16
    case Bf16Isa::kAmx:  // AMX tiles for the LSTM; a CPU with AMX also has vdpbf16ps
      if (cell == Cell::kLstm) return &avx512bf16::kLstmAmx;
      return &avx512bf16::kBf16Cells[int(cell)];
    case Bf16Isa::kAvx512Bf16: return &avx512bf16::kBf16Cells[int(cell)];
#endif
    default: return nullptr;
  }
}

}  // namespace lstm_jax
