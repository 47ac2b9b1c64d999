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

#define LSTM_JAX_RNN_FORWARD_ARGS                                                                      \
  ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_ih, ffi::Buffer<ffi::F32> b, \
      ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> mask,                \
      ffi::Buffer<ffi::U8> valid, ffi::Buffer<ffi::U8> starts, ffi::Buffer<ffi::F32> reset_h,          \
      ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_out, bool relu

ffi::Error Forward(LSTM_JAX_RNN_FORWARD_ARGS, bool training) {
  FwdCellBuffers cell;
  cell.training = training;
  cell.bias = b.typed_data();
  cell.starts = Data(starts);
  cell.reset_h = Data(reset_h);
  return lstm_jax::Forward(pool, Chosen(relu), false, xs, w_ih, w_hh, h0, mask, valid, ys, h_out, cell);
}

ffi::Error ForwardTrain(LSTM_JAX_RNN_FORWARD_ARGS) {
  return Forward(pool, xs, w_ih, b, w_hh, h0, mask, valid, starts, reset_h, ys, h_out, relu, true);
}

ffi::Error ForwardInfer(LSTM_JAX_RNN_FORWARD_ARGS) {
  return Forward(pool, xs, w_ih, b, w_hh, h0, mask, valid, starts, reset_h, ys, h_out, relu, false);
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> dys,
                    ffi::Buffer<ffi::F32> dh_in, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::U8> valid,
                    ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::U8> starts,
                    ffi::Buffer<ffi::F32> reset_h, ffi::ResultBuffer<ffi::F32> dz,
                    ffi::ResultBuffer<ffi::F32> dh_out, ffi::ResultBuffer<ffi::F32> dm_out,
                    ffi::ResultBuffer<ffi::F32> d_reset_h, bool relu) {
  BwdCellBuffers cell;
  cell.starts = Data(starts);
  cell.reset_h = Data(reset_h);
  cell.d_reset_h = Data(*d_reset_h);
  return lstm_jax::Backward(pool, Chosen(relu), false, w_hh, dys, dh_in, mask, valid, ys, h0, dz, dh_out,
                            dm_out, cell);
}

}  // namespace
}  // namespace rnn
}  // namespace lstm_jax

#define LSTM_JAX_EXPORT extern "C" __attribute__((visibility("default")))
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxRnnForwardTrain(XLA_FFI_CallFrame*);
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxRnnForwardInfer(XLA_FFI_CallFrame*);
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxRnnBackward(XLA_FFI_CallFrame*);

// Both forward calls bind the same arguments and results.
static auto ForwardBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()  // xs
      .Arg<ffi::Buffer<ffi::F32>>()  // w_ih
      .Arg<ffi::Buffer<ffi::F32>>()  // b
      .Arg<ffi::Buffer<ffi::F32>>()  // w_hh
      .Arg<ffi::Buffer<ffi::F32>>()  // h0
      .Arg<ffi::Buffer<ffi::F32>>()  // mask
      .Arg<ffi::Buffer<ffi::U8>>()   // valid
      .Arg<ffi::Buffer<ffi::U8>>()   // starts (resets), or empty
      .Arg<ffi::Buffer<ffi::F32>>()  // reset h, or empty
      .Ret<ffi::Buffer<ffi::F32>>()  // ys
      .Ret<ffi::Buffer<ffi::F32>>()  // h
      .Attr<bool>("relu");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxRnnForwardTrain, lstm_jax::rnn::ForwardTrain, ForwardBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxRnnForwardInfer, lstm_jax::rnn::ForwardInfer, ForwardBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxRnnBackward, lstm_jax::rnn::Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dys
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mask
                                  .Arg<ffi::Buffer<ffi::U8>>()   // valid
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ys
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::U8>>()   // starts (resets), or empty
                                  .Arg<ffi::Buffer<ffi::F32>>()  // reset h, or empty
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dz
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dmask
                                  .Ret<ffi::Buffer<ffi::F32>>()  // reset h's gradient, or empty
                                  .Attr<bool>("relu")
);
