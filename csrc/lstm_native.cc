// lstm_jax's native CPU backend for the LSTM: the sequential part of one
// LSTM layer (one direction) as XLA FFI custom calls, forward and backward,
// over the shared handler skeleton (handler.h) and kernels
// (recurrent_kernel.inc with cells.inc's LstmCell).
//
// XLA computes the large GEMMs of the backward pass after the loop (dx; the
// weight gradients dw_ih, dw_hh and db too, except where Python asks the loop
// to sum them, native_ops.IN_LOOP_MAX_HIDDEN). These handlers own the time loop:
//
//   forward   per step z = x_t @ w_ih + b + h @ w_hh, the gate math, the
//             carry; for training it saves the gate activations and the
//             carried cell state.
//   backward  per step the gate gradients dz (written over the saved
//             activations, aliased again) and dh = (dz @ w_hh^T) * mask.
//
// With resets (optional operands: the (T, B) starts and the reset carry) the
// carry is reset before the flagged steps, and the backward returns the
// reset carry's gradients (recurrent.h, FwdProblem and BwdProblem).
//
// With the `bf16` attribute (compute_dtype=bfloat16) the per-step GEMMs take
// bfloat16 inputs and sum in float32 (lstm_kernel_amx.inc on AMX tiles, or
// bf16_kernel.inc with vdpbf16ps), and the handlers also return the
// gradient GEMMs' bfloat16 operands row-major for XLA: dz, [x_t; h * mask]
// transposed, w_ih^T.
#include <cstdint>

#include "handler.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace lstm_jax {
namespace lstm {
namespace {

const Kernels* Chosen(bool bf16) { return ChosenKernels(Cell::kLstm, bf16); }

constexpr char kBatchMajor[] = "batch_major";

// Both forward calls' operands; training also returns the saved activations and cell states
// and, with bf16, the gradient GEMMs' bfloat16 operands.
#define LSTM_JAX_FORWARD_ARGS                                                                       \
  ffi::ThreadPool pool, ffi::Attr<bool, kBatchMajor> batch_major, ffi::Buffer<ffi::F32> xs,          \
      ffi::Buffer<ffi::F32> w_ih, ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> w_hh,          \
      ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> mask,              \
      ffi::Buffer<ffi::U8> valid,                                                                   \
      ffi::Buffer<ffi::U8> starts, ffi::Buffer<ffi::F32> reset_h, ffi::Buffer<ffi::F32> reset_c,   \
      ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_out,                           \
      ffi::ResultBuffer<ffi::F32> c_out

// w_ih^T (N.., 4H, I) in bfloat16, for XLA's dx GEMM.
void TransposeBf16(ffi::Buffer<ffi::F32> w_ih, uint16_t* out) {
  auto dims = w_ih.dimensions();
  const int64_t input = dims[dims.size() - 2], gates = dims[dims.size() - 1];
  const int64_t count = input * gates == 0 ? 0 : int64_t(w_ih.element_count()) / (input * gates);
  for (int64_t n = 0; n < count; ++n) {
    const float* w = w_ih.typed_data() + n * input * gates;
    for (int64_t g = 0; g < gates; ++g) {
      for (int64_t i = 0; i < input; ++i) out[(n * gates + g) * input + i] = bf16_bits(w[i * gates + g]);
    }
  }
}

FwdCellBuffers Common(ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::U8> starts,
                      ffi::Buffer<ffi::F32> reset_h, ffi::Buffer<ffi::F32> reset_c,
                      ffi::ResultBuffer<ffi::F32> c_out) {
  FwdCellBuffers cell;
  cell.bias = bias.typed_data();
  cell.c0 = c0.typed_data();
  cell.c_out = c_out->typed_data();
  cell.starts = Data(starts);
  cell.reset_h = Data(reset_h);
  cell.reset_c = Data(reset_c);
  return cell;
}

ffi::Error ForwardTrain(LSTM_JAX_FORWARD_ARGS, ffi::ResultBuffer<ffi::F32> act,
                        ffi::ResultBuffer<ffi::F32> cs, ffi::ResultBuffer<ffi::BF16> xhT,
                        ffi::ResultBuffer<ffi::BF16> w_ihT, ffi::Attr<bool, kBf16> bf16) {
  const Kernels* kern = Chosen(*bf16);
  if (kern == nullptr) return NoBf16Kernels();
  FwdCellBuffers cell = Common(bias, c0, starts, reset_h, reset_c, c_out);
  cell.training = true;
  cell.act[0] = act->typed_data();
  cell.cs = cs->typed_data();
  if (*bf16) {
    cell.xhT = xhT->typed_data();
    TransposeBf16(w_ih, w_ihT->typed_data());
  }
  return Forward(pool, *kern, *batch_major, xs, w_ih, w_hh, h0, mask, valid, ys, h_out, cell);
}

ffi::Error ForwardInfer(LSTM_JAX_FORWARD_ARGS, ffi::Attr<bool, kBf16> bf16) {
  const Kernels* kern = Chosen(*bf16);
  if (kern == nullptr) return NoBf16Kernels();
  return Forward(pool, *kern, *batch_major, xs, w_ih, w_hh, h0, mask, valid, ys, h_out,
                 Common(bias, c0, starts, reset_h, reset_c, c_out));
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Attr<bool, kBatchMajor> batch_major,
                    ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> act, ffi::Buffer<ffi::F32> cs,
                    ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> dh_in,
                    ffi::Buffer<ffi::F32> dc_in, ffi::Buffer<ffi::F32> mask,
                    ffi::Buffer<ffi::U8> valid, ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::F32> h0,
                    ffi::Buffer<ffi::U8> starts, ffi::Buffer<ffi::F32> reset_h, ffi::Buffer<ffi::F32> reset_c,
                    ffi::Buffer<ffi::F32> xs, ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dh_out,
                    ffi::ResultBuffer<ffi::F32> dc_out, ffi::ResultBuffer<ffi::F32> dm_out,
                    ffi::ResultBuffer<ffi::BF16> dzb, ffi::ResultBuffer<ffi::F32> d_reset_h,
                    ffi::ResultBuffer<ffi::F32> d_reset_c, ffi::ResultBuffer<ffi::F32> dw_ih,
                    ffi::ResultBuffer<ffi::F32> dw_hh, ffi::ResultBuffer<ffi::F32> db,
                    ffi::Attr<bool, kBf16> bf16) {
  const Kernels* kern = Chosen(*bf16);
  if (kern == nullptr) return NoBf16Kernels();
  BwdCellBuffers cell;
  cell.act[0] = act.typed_data();
  cell.cs = cs.typed_data();
  cell.c0 = c0.typed_data();
  cell.dc_in = dc_in.typed_data();
  cell.dc_out = dc_out->typed_data();
  cell.dzb = *bf16 ? dzb->typed_data() : nullptr;
  cell.starts = Data(starts);
  cell.reset_h = Data(reset_h);
  cell.reset_c = Data(reset_c);
  cell.d_reset_h = Data(*d_reset_h);
  cell.d_reset_c = Data(*d_reset_c);
  SetInLoopInput(cell, xs, dw_ih);
  cell.dw_hh = Data(*dw_hh);
  cell.db = Data(*db);
  return lstm_jax::Backward(pool, *kern, *batch_major, w_hh, dys, dh_in, mask, valid, ys, h0, dz, dh_out,
                            dm_out, cell);
}

}  // namespace
}  // namespace lstm
}  // namespace lstm_jax

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxForwardTrain, lstm_jax::lstm::ForwardTrain);
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxForwardInfer, lstm_jax::lstm::ForwardInfer);
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxBackward, lstm_jax::lstm::Backward);
