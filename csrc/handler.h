// The handler skeleton, written once for every cell (handler.cc): shape
// parsing, the loop over vmap axes, the empty cases (T = 0, B = 0), the
// per-call problem and packed weights, and the call into the runtime. A
// cell's handlers (lstm_native.cc, gru_native.cc, rnn_native.cc) bind its FFI
// arguments and pass what only it has.
//
// Shapes (N.. are vmap axes, ffi_call's broadcast_all, looped over; G = gates
// * H and A = acts * H from the cell's Kernels): xs (N.., T, B, I), or with
// batch_major (N.., B, T, I); w_ih (N.., I, G), w_hh (N.., H, G), biases
// (N.., G), h0 and the state (N.., B, H), mask (N.., B, H) or empty, valid
// and the resets' starts (N.., T, B) or empty, the reset carry (N.., B, H); ys and dys in the layout of xs; act and dz
// (N.., T, B, A) and cs (N.., T, B, H) time-major.
#ifndef LSTM_JAX_HANDLER_H_
#define LSTM_JAX_HANDLER_H_

#include <cstdint>

#include "recurrent.h"
#include "xla/ffi/api/ffi.h"

namespace lstm_jax {

// A forward call's buffers that not every cell has; null where absent.
struct FwdCellBuffers {
  bool training = false;
  const float* bias = nullptr;     // LSTM b, GRU b_ih, RNN b
  const float* bias_hh = nullptr;  // GRU b_hh
  const float* c0 = nullptr;       // LSTM
  float* c_out = nullptr;          // LSTM
  float* act = nullptr;            // saved activations (training; not the RNN)
  float* cs = nullptr;             // LSTM training
  uint16_t* xhT = nullptr;         // bfloat16 training: (N.., I + H, T * B)
  const uint8_t* starts = nullptr;  // resets (FwdProblem): (N.., T, B), or null
  const float* reset_h = nullptr;   // resets: (N.., B, H)
  const float* reset_c = nullptr;   // LSTM resets
};

xla::ffi::Error Forward(xla::ffi::ThreadPool& pool, const Kernels& kern, bool batch_major,
                        xla::ffi::Buffer<xla::ffi::F32> xs, xla::ffi::Buffer<xla::ffi::F32> w_ih,
                        xla::ffi::Buffer<xla::ffi::F32> w_hh, xla::ffi::Buffer<xla::ffi::F32> h0,
                        xla::ffi::Buffer<xla::ffi::F32> mask, xla::ffi::Buffer<xla::ffi::U8> valid,
                        xla::ffi::ResultBuffer<xla::ffi::F32> ys, xla::ffi::ResultBuffer<xla::ffi::F32> h_out,
                        const FwdCellBuffers& cell);

// A backward call's buffers that not every cell has; null where absent.
struct BwdCellBuffers {
  const float* act = nullptr;    // saved activations, copied into dz unless aliased (not the RNN)
  const float* cs = nullptr;     // LSTM
  const float* c0 = nullptr;     // LSTM
  const float* dc_in = nullptr;  // LSTM
  float* dc_out = nullptr;       // LSTM
  uint16_t* dzb = nullptr;       // bfloat16: dz rounded, (N.., T, B, A)
  const uint8_t* starts = nullptr;  // resets (BwdProblem): (N.., T, B), or null
  const float* reset_h = nullptr;   // resets: (N.., B, H)
  const float* reset_c = nullptr;   // LSTM resets
  float* d_reset_h = nullptr;       // resets: (N.., B, H)
  float* d_reset_c = nullptr;       // LSTM resets
};

xla::ffi::Error Backward(xla::ffi::ThreadPool& pool, const Kernels& kern, bool batch_major,
                         xla::ffi::Buffer<xla::ffi::F32> w_hh, xla::ffi::Buffer<xla::ffi::F32> dys,
                         xla::ffi::Buffer<xla::ffi::F32> dh_in, xla::ffi::Buffer<xla::ffi::F32> mask,
                         xla::ffi::Buffer<xla::ffi::U8> valid, xla::ffi::Buffer<xla::ffi::F32> ys,
                         xla::ffi::Buffer<xla::ffi::F32> h0, xla::ffi::ResultBuffer<xla::ffi::F32> dz,
                         xla::ffi::ResultBuffer<xla::ffi::F32> dh_out,
                         xla::ffi::ResultBuffer<xla::ffi::F32> dm_out, const BwdCellBuffers& cell);

// A bfloat16 call where the CPU has no bfloat16 kernels (Bf16Kernels is null).
inline xla::ffi::Error NoBf16Kernels() {
  return xla::ffi::Error::InvalidArgument("no bfloat16 kernels on this CPU");
}

// The buffer's data, or null when it is empty (an absent optional operand).
template <class Buffer>
auto Data(Buffer& b) -> decltype(b.typed_data()) {
  return b.element_count() == 0 ? nullptr : b.typed_data();
}

}  // namespace lstm_jax

#endif  // LSTM_JAX_HANDLER_H_
