// lstm_jax's native CPU backend for the Elman RNN (PyTorch nn.RNN): the
// sequential part of one layer (one direction) as XLA FFI custom calls,
// forward and backward, over the shared handler skeleton (handler.h) and
// kernels (recurrent_kernel.inc with cells.inc's RnnCell):
//
//   forward   per step h' = tanh([x_t, h * mask] @ [w_ih; w_hh] + b) (or relu);
//             nothing is saved for training: the derivative comes from h'.
//   backward  per step dz = (dh + dy_t) * tanh'(ys_t) (or relu') and
//             dh = (dz @ w_hh^T) * mask. XLA computes the weight and input
//             gradients from dz after the loop.
//
// The `relu` attribute picks the nonlinearity; the training forward differs
// from inference only in its thread split (the backward's, as the LSTM's).
// With resets (optional operands: the (T, B) starts and the reset carry) as
// the LSTM's (lstm_native.cc).
#include "handler.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace lstm_jax {
namespace rnn {
namespace {

const Kernels& Chosen(bool relu) { return CellKernels(relu ? Cell::kRnnRelu : Cell::kRnnTanh); }

constexpr char kRelu[] = "relu";

// Both forward calls; training differs from inference only in its thread split.
template <bool kTraining>
ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_ih,
                   ffi::Buffer<ffi::F32> b, ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> h0,
                   ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::U8> valid, ffi::Buffer<ffi::U8> starts,
                   ffi::Buffer<ffi::F32> reset_h, ffi::ResultBuffer<ffi::F32> ys,
                   ffi::ResultBuffer<ffi::F32> h_out, ffi::Attr<bool, kRelu> relu) {
  FwdCellBuffers cell;
  cell.training = kTraining;
  cell.bias = b.typed_data();
  cell.starts = Data(starts);
  cell.reset_h = Data(reset_h);
  return lstm_jax::Forward(pool, Chosen(*relu), false, xs, w_ih, w_hh, h0, mask, valid, ys, h_out, cell);
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> dys,
                    ffi::Buffer<ffi::F32> dh_in, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::U8> valid,
                    ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::U8> starts,
                    ffi::Buffer<ffi::F32> reset_h, ffi::ResultBuffer<ffi::F32> dz,
                    ffi::ResultBuffer<ffi::F32> dh_out, ffi::ResultBuffer<ffi::F32> dm_out,
                    ffi::ResultBuffer<ffi::F32> d_reset_h, ffi::Attr<bool, kRelu> relu) {
  BwdCellBuffers cell;
  cell.starts = Data(starts);
  cell.reset_h = Data(reset_h);
  cell.d_reset_h = Data(*d_reset_h);
  return lstm_jax::Backward(pool, Chosen(*relu), false, w_hh, dys, dh_in, mask, valid, ys, h0, dz, dh_out,
                            dm_out, cell);
}

}  // namespace
}  // namespace rnn
}  // namespace lstm_jax

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxRnnForwardTrain, lstm_jax::rnn::Forward<true>);
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxRnnForwardInfer, lstm_jax::rnn::Forward<false>);
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxRnnBackward, lstm_jax::rnn::Backward);
