// lstm_jax's native CPU backend for the GRU: the sequential part of one GRU
// layer (one direction) as XLA FFI custom calls, forward and backward, over
// the shared handler skeleton (handler.h) and kernels (recurrent_kernel.inc
// with cells.inc's GruCell):
//
//   forward   per step r, z and the two parts of n from [x_t, h] @ [w_ih; w_hh],
//             the gate math, the carry; for training it saves r, z, n and
//             h W_hn + b_hn: with the `planar` attribute a (T, B, H) array
//             each, else one (T, B, 4H) array (the first; the others empty).
//   backward  per step the pre-activation gradients (written over the saved
//             activations, aliased again) and dh = z * dh + ([dr, dz, dhn] @
//             w_hh^T) * mask; dw_ih, dw_hh and the biases' gradient in the
//             loop where Python asks (native_ops.IN_LOOP_MAX_HIDDEN), else XLA
//             computes them after it, as it does dx.
// With resets (optional operands: the (T, B) starts and the reset carry) as
// the LSTM's (lstm_native.cc). With the `bf16` attribute the per-step GEMMs
// take bfloat16 inputs (bf16_kernel.inc), and the handlers also return the
// weight gradients' bfloat16 operands as the LSTM's: [x_t; h * mask]
// transposed and dz.
#include <algorithm>

#include "handler.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace lstm_jax {
namespace gru {
namespace {

// Both forward calls' operands; training also returns the saved activations.
#define LSTM_JAX_GRU_FORWARD_ARGS                                                              \
  ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_ih,                  \
      ffi::Buffer<ffi::F32> b_ih, ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> b_hh,      \
      ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::U8> valid,        \
      ffi::Buffer<ffi::U8> starts, ffi::Buffer<ffi::F32> reset_h,                              \
      ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_out

FwdCellBuffers Common(ffi::Buffer<ffi::F32> b_ih, ffi::Buffer<ffi::F32> b_hh, ffi::Buffer<ffi::U8> starts,
                      ffi::Buffer<ffi::F32> reset_h) {
  FwdCellBuffers cell;
  cell.bias = b_ih.typed_data();
  cell.bias_hh = b_hh.typed_data();
  cell.starts = Data(starts);
  cell.reset_h = Data(reset_h);
  return cell;
}

// The call's layout of the saved activations (and dz) as four arrays r, z,
// n, hn: whether, planar, all have the shape of the first, or else the last
// three are empty (the first holds all four blocks).
template <class Buffer>
bool LayoutShapes(bool planar, Buffer& r, Buffer& z, Buffer& n, Buffer& hn) {
  auto first = r.dimensions();
  for (auto* b : {&z, &n, &hn}) {
    auto dims = b->dimensions();
    if (!planar && b->element_count() != 0) return false;
    if (planar && (dims.size() != first.size() || !std::equal(dims.begin(), dims.end(), first.begin()))) {
      return false;
    }
  }
  return true;
}

ffi::Error BadLayout() {
  return ffi::Error::InvalidArgument(
      "the GRU's saved activations r, z, n, hn must be (..., T, B, H) each (planar) or one (..., T, B, 4H)");
}

// The `planar` attribute: the saved activations and dz one array per block.
constexpr char kPlanar[] = "planar";

ffi::Error ForwardTrain(LSTM_JAX_GRU_FORWARD_ARGS, ffi::ResultBuffer<ffi::F32> act_r,
                        ffi::ResultBuffer<ffi::F32> act_z, ffi::ResultBuffer<ffi::F32> act_n,
                        ffi::ResultBuffer<ffi::F32> act_hn, ffi::ResultBuffer<ffi::BF16> xhT,
                        ffi::Attr<bool, kBf16> bf16, ffi::Attr<bool, kPlanar> planar) {
  const Kernels* kern = ChosenKernels(Cell::kGru, *bf16);
  if (kern == nullptr) return NoBf16Kernels();
  if (!LayoutShapes(*planar, *act_r, *act_z, *act_n, *act_hn)) return BadLayout();
  FwdCellBuffers cell = Common(b_ih, b_hh, starts, reset_h);
  cell.training = true;
  cell.planar = *planar;
  float* const act[4] = {act_r->typed_data(), act_z->typed_data(), act_n->typed_data(), act_hn->typed_data()};
  std::copy(act, act + 4, cell.act);
  cell.xhT = *bf16 ? xhT->typed_data() : nullptr;
  return Forward(pool, *kern, false, xs, w_ih, w_hh, h0, mask, valid, ys, h_out, cell);
}

ffi::Error ForwardInfer(LSTM_JAX_GRU_FORWARD_ARGS, ffi::Attr<bool, kBf16> bf16) {
  const Kernels* kern = ChosenKernels(Cell::kGru, *bf16);
  if (kern == nullptr) return NoBf16Kernels();
  return Forward(pool, *kern, false, xs, w_ih, w_hh, h0, mask, valid, ys, h_out,
                 Common(b_ih, b_hh, starts, reset_h));
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> act_r,
                    ffi::Buffer<ffi::F32> act_z, ffi::Buffer<ffi::F32> act_n, ffi::Buffer<ffi::F32> act_hn,
                    ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> dh_in, ffi::Buffer<ffi::F32> mask,
                    ffi::Buffer<ffi::U8> valid, ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::F32> h0,
                    ffi::Buffer<ffi::U8> starts, ffi::Buffer<ffi::F32> reset_h, ffi::Buffer<ffi::F32> xs,
                    ffi::ResultBuffer<ffi::F32> dr, ffi::ResultBuffer<ffi::F32> dz,
                    ffi::ResultBuffer<ffi::F32> dn, ffi::ResultBuffer<ffi::F32> dhn, ffi::ResultBuffer<ffi::F32> dh_out,
                    ffi::ResultBuffer<ffi::F32> dm_out, ffi::ResultBuffer<ffi::F32> d_reset_h,
                    ffi::ResultBuffer<ffi::BF16> dzb, ffi::ResultBuffer<ffi::F32> dw_ih,
                    ffi::ResultBuffer<ffi::F32> dw_hh, ffi::ResultBuffer<ffi::F32> db,
                    ffi::Attr<bool, kBf16> bf16, ffi::Attr<bool, kPlanar> planar) {
  const Kernels* kern = ChosenKernels(Cell::kGru, *bf16);
  if (kern == nullptr) return NoBf16Kernels();
  if (!LayoutShapes(*planar, act_r, act_z, act_n, act_hn) || !LayoutShapes(*planar, *dr, *dz, *dn, *dhn) ||
      act_r.element_count() != dr->element_count()) {
    return BadLayout();
  }
  BwdCellBuffers cell;
  cell.planar = *planar;
  const float* const act[4] = {act_r.typed_data(), act_z.typed_data(), act_n.typed_data(), act_hn.typed_data()};
  std::copy(act, act + 4, cell.act);
  cell.dz[1] = dz->typed_data();
  cell.dz[2] = dn->typed_data();
  cell.dz[3] = dhn->typed_data();
  cell.starts = Data(starts);
  cell.reset_h = Data(reset_h);
  cell.d_reset_h = Data(*d_reset_h);
  cell.dzb = *bf16 ? dzb->typed_data() : nullptr;
  SetInLoopInput(cell, xs, dw_ih);
  cell.dw_hh = Data(*dw_hh);
  cell.db = Data(*db);
  return lstm_jax::Backward(pool, *kern, false, w_hh, dys, dh_in, mask, valid, ys, h0, dr, dh_out, dm_out,
                            cell);
}

}  // namespace
}  // namespace gru
}  // namespace lstm_jax

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxGruForwardTrain, lstm_jax::gru::ForwardTrain);
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxGruForwardInfer, lstm_jax::gru::ForwardInfer);
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxGruBackward, lstm_jax::gru::Backward);
