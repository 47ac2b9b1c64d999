// The handler skeleton, written once for every cell (handler.cc): shape
// parsing, the loop over vmap axes, the empty cases (T = 0, B = 0), the
// per-call problem and packed weights, and the call into the runtime. A
// cell's handlers (lstm_native.cc, gru_native.cc, rnn_native.cc) take its FFI
// operands and pass what only it has.
//
// A handler's signature is its binding (XLA_FFI_DEFINE_HANDLER_SYMBOL without
// an explicit one): Buffer parameters are the arguments and ResultBuffer ones
// the results, each in order; Attr<T, name> parameters are attributes, found
// by name; the ThreadPool is the context. Adding an operand to a cell is
// adding a parameter to its handlers.
//
// Shapes (N.. are vmap axes, ffi_call's broadcast_all, looped over; G = gates
// * H and A = acts * H from the cell's Kernels): xs (N.., T, B, I), or with
// batch_major (N.., B, T, I); w_ih (N.., I, G), w_hh (N.., H, G), biases
// (N.., G), h0 and the state (N.., B, H), mask (N.., B, H) or empty, valid
// and the resets' starts (N.., T, B) or empty, the reset carry (N.., B, H); ys and dys in the layout of xs; act and dz
// (N.., T, B, A), or where the call is planar (the cell buffers' `planar`) one (N.., T, B, H) per block, and
// cs (N.., T, B, H) time-major.
#ifndef LSTM_JAX_HANDLER_H_
#define LSTM_JAX_HANDLER_H_

#include <cstdint>

#include "recurrent.h"
#include "xla/ffi/api/ffi.h"

// The handlers the Python side loads by name (lstm_jax/kernels/native_ops.py, _TARGETS), each
// defined in its cell's file; the build hides every other symbol.
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxForwardTrain(XLA_FFI_CallFrame*);  // lstm_native.cc
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxForwardInfer(XLA_FFI_CallFrame*);
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxBackward(XLA_FFI_CallFrame*);
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxGruForwardTrain(XLA_FFI_CallFrame*);  // gru_native.cc
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxGruForwardInfer(XLA_FFI_CallFrame*);
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxGruBackward(XLA_FFI_CallFrame*);
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxRnnForwardTrain(XLA_FFI_CallFrame*);  // rnn_native.cc
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxRnnForwardInfer(XLA_FFI_CallFrame*);
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxRnnBackward(XLA_FFI_CallFrame*);

namespace xla::ffi {
// The intra-op thread pool as a handler parameter, for bindings inferred from a signature.
template <>
struct CtxBinding<ThreadPool> {
  using Ctx = ThreadPool;
};
}  // namespace xla::ffi

namespace lstm_jax {

// A forward call's buffers that not every cell has; null where absent.
struct FwdCellBuffers {
  bool training = false;
  const float* bias = nullptr;     // LSTM b, GRU b_ih, RNN b
  const float* bias_hh = nullptr;  // GRU b_hh
  const float* c0 = nullptr;       // LSTM
  float* c_out = nullptr;          // LSTM
  float* act[4] = {};              // saved activations (training; not the RNN): one buffer, or
                                   // one per block where `planar` (GateRows)
  bool planar = false;             // act one buffer per block (Kernels::may_be_planar cells)
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
  const float* act[4] = {};      // saved activations, copied into dz unless aliased (not the RNN),
                                 // buffers as FwdCellBuffers' act
  float* dz[4] = {};             // planar: dz's blocks 1.. (block 0 is Backward's dz)
  bool planar = false;           // act and dz one buffer per block (Kernels::may_be_planar cells)
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
  // weight gradients in the loop (BwdProblem::dw), or null: dw_ih = x^T dz's input
  // blocks (N.., I, G) from xs (N.., T, B, I) in the call's layout, dw_hh (N.., H, G),
  // and db, dz summed over rows (N.., A)
  const float* xs = nullptr;
  int64_t xs_count = 0;  // xs's elements
  int input = 0;
  float* dw_ih = nullptr;
  float* dw_hh = nullptr;
  float* db = nullptr;
};

xla::ffi::Error Backward(xla::ffi::ThreadPool& pool, const Kernels& kern, bool batch_major,
                         xla::ffi::Buffer<xla::ffi::F32> w_hh, xla::ffi::Buffer<xla::ffi::F32> dys,
                         xla::ffi::Buffer<xla::ffi::F32> dh_in, xla::ffi::Buffer<xla::ffi::F32> mask,
                         xla::ffi::Buffer<xla::ffi::U8> valid, xla::ffi::Buffer<xla::ffi::F32> ys,
                         xla::ffi::Buffer<xla::ffi::F32> h0, xla::ffi::ResultBuffer<xla::ffi::F32> dz,
                         xla::ffi::ResultBuffer<xla::ffi::F32> dh_out,
                         xla::ffi::ResultBuffer<xla::ffi::F32> dm_out, const BwdCellBuffers& cell);

// The in-loop weight gradients' xs operand and dw_ih result (empty: none) into `cell`.
inline void SetInLoopInput(BwdCellBuffers& cell, xla::ffi::Buffer<xla::ffi::F32> xs,
                           xla::ffi::ResultBuffer<xla::ffi::F32> dw_ih) {
  auto dims = xs.dimensions();
  cell.xs = xs.element_count() == 0 ? nullptr : xs.typed_data();
  cell.xs_count = int64_t(xs.element_count());
  cell.input = cell.xs == nullptr || dims.size() == 0 ? 0 : int(dims.back());
  cell.dw_ih = dw_ih->element_count() == 0 ? nullptr : dw_ih->typed_data();
}

// The LSTM's and GRU's attribute: the per-step GEMMs take bfloat16 inputs.
constexpr char kBf16[] = "bf16";

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
