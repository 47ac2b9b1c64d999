// lstm_jax's native CPU backend for the GRU: the sequential part of one GRU
// layer (one direction) as XLA FFI custom calls, forward and backward. The
// same design as the LSTM's (lstm_native.cc, whose thread loop and
// instruction-set choice these handlers share through native_loop.h):
//
//   forward   per step r, z and the two parts of n from [x_t, h] @ [w_ih; w_hh]
//             (one register-blocked GEMM, packed once per call), the gate
//             math, the carry; for training it saves r, z, n and h W_hn + b_hn.
//   backward  per step the pre-activation gradients (written over the saved
//             activations, aliased again) and dh = z * dh + ([dr, dz, dhn] @
//             w_hh^T) * mask. XLA computes the weight and input gradients
//             after the loop.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "native_loop.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace lstm_jax {
namespace gru {

struct GruFwdProblem {
  int64_t steps;
  int batch, input, hidden;
  const float* xs;        // (T, B, I) inputs
  const float* b_ih;      // (3H)
  const float* b_hh;      // (3H)
  const float* mask;      // (B, H) recurrent mask, or null
  const uint8_t* valid;   // (T, B) step validity, or null (all valid)
  float* ys;              // (T, B, H)
  float* act;             // (T, B, 4H) r, z, n, hn, or null (inference)
  float* h[2];            // (B, H) carry, double-buffered by step parity
  float* hm[2];           // h * mask (the GEMM's input), or == h
  const float* wpack;
};

struct GruBwdProblem {
  int64_t steps;
  int batch, hidden;
  float* dz;              // (T, B, 4H) activations in, pre-activation gradients out
  const float* dys;       // (T, B, H)
  const float* mask;      // (B, H), or null
  const uint8_t* valid;   // (T, B), or null
  const float* ys;        // (T, B, H): h_{t-1}
  const float* h0;        // (B, H)
  float* dh;              // (B, H) carry in place: dh_T in, dh_0 out
  float* dm;              // (B, H) mask gradient, accumulated, or null
  const float* wpack;
};

namespace portable {
using V = ScalarVec;
#include "gru_kernel.inc"
}  // namespace portable

#ifdef LSTM_JAX_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
using V = Avx2Vec;
#include "gru_kernel.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")
namespace avx512 {
using V = Avx512Vec;
#include "gru_kernel.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

namespace {

const Kernels& GruKernels() {  // the LSTM's choice of instruction set
  static const Kernels* kernels = [] {
    const std::string isa = IsaName();
#ifdef LSTM_JAX_X86
    if (isa == "avx512") return &avx512::kKernels;
    if (isa == "avx2") return &avx2::kKernels;
#endif
    return &portable::kKernels;
  }();
  return *kernels;
}

// Shapes: xs (N.., T, B, I), w_ih (N.., I, 3H), b_ih/b_hh (N.., 3H), w_hh (N.., H, 3H),
// h0 (N.., B, H), mask (N.., B, H) or empty, valid (N.., T, B) or empty.
// N.. are vmap axes (ffi_call's broadcast_all), looped over.
ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_ih,
                   ffi::Buffer<ffi::F32> b_ih, ffi::Buffer<ffi::F32> w_hh,
                   ffi::Buffer<ffi::F32> b_hh, ffi::Buffer<ffi::F32> h0,
                   ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::U8> valid,
                   ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_out, float* act) {
  if (ffi::Error error = SettingsChecked(); error.failure()) return error;
  auto xdims = xs.dimensions();
  auto wdims = w_hh.dimensions();
  const size_t rank = xdims.size();
  if (rank < 3 || wdims.size() != rank - 1) {
    return ffi::Error::InvalidArgument("xs must be (..., T, B, I) and w_hh (..., H, 3H)");
  }
  const int64_t steps = xdims[rank - 3];
  const int batch = int(xdims[rank - 2]), input = int(xdims[rank - 1]);
  const int hidden = int(wdims[rank - 3]), gates = 3 * hidden;
  int64_t count = 1;
  for (size_t d = 0; d + 3 < rank; ++d) count *= xdims[d];
  const int64_t bh = int64_t(batch) * hidden;
  const Kernels& kern = GruKernels();
  const int panels = (hidden + kern.width - 1) / kern.width;
  const bool has_mask = mask.element_count() != 0, has_valid = valid.element_count() != 0;
  float* hT = h_out->typed_data();
  if (steps == 0 || bh == 0) {  // the state passes through
    if (bh > 0) std::memcpy(hT, h0.typed_data(), h0.element_count() * sizeof(float));
    return ffi::Error::Success();
  }
  HugePagesHint(ys->typed_data(), ys->element_count() * sizeof(float));
  if (act != nullptr) HugePagesHint(act, size_t(count) * steps * 4 * bh * sizeof(float));
  const Split split = StepPartitions(pool, batch, int64_t(batch) * (input + hidden) * gates, panels,
                                     /*inference=*/act == nullptr);
  const size_t pack = kern.fwd_pack_size(input, hidden);
  for (int64_t n = 0; n < count; ++n) {
    auto buffers = std::make_shared<std::vector<float>>(pack + 4 * bh);
    float* wpack = buffers->data();
    float* hbuf = wpack + pack;
    kern.pack_fwd(w_ih.typed_data() + n * input * gates, w_hh.typed_data() + n * hidden * gates,
                  input, hidden, wpack);
    auto P = std::make_shared<GruFwdProblem>();
    P->steps = steps;
    P->batch = batch;
    P->input = input;
    P->hidden = hidden;
    P->xs = xs.typed_data() + n * steps * batch * input;
    P->b_ih = b_ih.typed_data() + n * gates;
    P->b_hh = b_hh.typed_data() + n * gates;
    P->mask = has_mask ? mask.typed_data() + n * bh : nullptr;
    P->valid = has_valid ? valid.typed_data() + n * steps * batch : nullptr;
    P->ys = ys->typed_data() + n * steps * bh;
    P->act = act != nullptr ? act + n * steps * 4 * bh : nullptr;
    P->h[0] = hbuf;
    P->h[1] = hbuf + bh;
    std::memcpy(P->h[0], h0.typed_data() + n * bh, bh * sizeof(float));
    if (has_mask) {
      P->hm[0] = hbuf + 2 * bh;
      P->hm[1] = hbuf + 3 * bh;
      for (int64_t e = 0; e < bh; ++e) P->hm[0][e] = P->h[0][e] * P->mask[e];
    } else {
      P->hm[0] = P->h[0];
      P->hm[1] = P->h[1];
    }
    P->wpack = wpack;
    std::shared_ptr<void> keep = std::make_shared<std::pair<decltype(P), decltype(buffers)>>(P, buffers);
    RunItems(pool, keep, kern.fwd_item, P.get(), steps, split, panels, batch);
    std::memcpy(hT + n * bh, P->h[steps & 1], bh * sizeof(float));
  }
  return ffi::Error::Success();
}

#define LSTM_JAX_GRU_FORWARD_ARGS                                                              \
  ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_ih,                  \
      ffi::Buffer<ffi::F32> b_ih, ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> b_hh,      \
      ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::U8> valid,        \
      ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_out

ffi::Error ForwardTrain(LSTM_JAX_GRU_FORWARD_ARGS, ffi::ResultBuffer<ffi::F32> act) {
  return Forward(pool, xs, w_ih, b_ih, w_hh, b_hh, h0, mask, valid, ys, h_out, Data(*act));
}

ffi::Error ForwardInfer(LSTM_JAX_GRU_FORWARD_ARGS) {
  return Forward(pool, xs, w_ih, b_ih, w_hh, b_hh, h0, mask, valid, ys, h_out, nullptr);
}

// Shapes: w_hh (N.., H, 3H), act (N.., T, B, 4H), dys/ys (N.., T, B, H),
// h0/dh (N.., B, H), mask/valid as in Forward.
ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> act,
                    ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> dh_in,
                    ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::U8> valid,
                    ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::F32> h0,
                    ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dh_out,
                    ffi::ResultBuffer<ffi::F32> dm_out) {
  if (ffi::Error error = SettingsChecked(); error.failure()) return error;
  auto dims = act.dimensions();
  const size_t rank = dims.size();
  if (rank < 3) return ffi::Error::InvalidArgument("act must be (..., T, B, 4H)");
  const int64_t steps = dims[rank - 3];
  const int batch = int(dims[rank - 2]), hidden = int(dims[rank - 1]) / 4;
  const int64_t bh = int64_t(batch) * hidden, per = steps * 4 * bh;
  const int64_t count = per == 0 ? 0 : int64_t(act.element_count()) / per;
  const Kernels& kern = GruKernels();
  const int panels = (hidden + kern.width - 1) / kern.width;
  const bool has_mask = mask.element_count() != 0, has_valid = valid.element_count() != 0;
  float* dm = Data(*dm_out);
  if (dm != nullptr) std::memset(dm, 0, dm_out->element_count() * sizeof(float));
  if (per == 0) {
    if (bh > 0) {
      std::memcpy(dh_out->typed_data(), dh_in.typed_data(), dh_in.element_count() * sizeof(float));
    }
    return ffi::Error::Success();
  }
  if (dz->typed_data() != act.typed_data()) {  // XLA did not alias: copy the activations over
    std::memcpy(dz->typed_data(), act.typed_data(), act.element_count() * sizeof(float));
  }
  const Split split = StepPartitions(pool, batch, bh * 3 * hidden, panels, false);
  for (int64_t n = 0; n < count; ++n) {
    auto buffers = std::make_shared<std::vector<float>>(kern.bwd_pack_size(hidden));
    kern.pack_bwd(w_hh.typed_data() + n * hidden * 3 * hidden, hidden, buffers->data());
    auto P = std::make_shared<GruBwdProblem>();
    P->steps = steps;
    P->batch = batch;
    P->hidden = hidden;
    P->dz = dz->typed_data() + n * per;
    P->dys = dys.typed_data() + n * steps * bh;
    P->mask = has_mask ? mask.typed_data() + n * bh : nullptr;
    P->valid = has_valid ? valid.typed_data() + n * steps * batch : nullptr;
    P->ys = ys.typed_data() + n * steps * bh;
    P->h0 = h0.typed_data() + n * bh;
    P->dh = dh_out->typed_data() + n * bh;
    std::memcpy(P->dh, dh_in.typed_data() + n * bh, bh * sizeof(float));
    P->dm = has_mask ? dm + n * bh : nullptr;
    P->wpack = buffers->data();
    std::shared_ptr<void> keep = std::make_shared<std::pair<decltype(P), decltype(buffers)>>(P, buffers);
    RunItems(pool, keep, kern.bwd_item, P.get(), steps + 1, split, panels, batch);
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace gru
}  // namespace lstm_jax

#define LSTM_JAX_EXPORT extern "C" __attribute__((visibility("default")))
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxGruForwardTrain(XLA_FFI_CallFrame*);
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxGruForwardInfer(XLA_FFI_CallFrame*);
LSTM_JAX_EXPORT XLA_FFI_Error* LstmJaxGruBackward(XLA_FFI_CallFrame*);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxGruForwardTrain, lstm_jax::gru::ForwardTrain,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_ih
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_ih
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mask
                                  .Arg<ffi::Buffer<ffi::U8>>()   // valid
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h
                                  .Ret<ffi::Buffer<ffi::F32>>()  // act
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxGruForwardInfer, lstm_jax::gru::ForwardInfer,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_ih
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_ih
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mask
                                  .Arg<ffi::Buffer<ffi::U8>>()   // valid
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxGruBackward, lstm_jax::gru::Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // act
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dys
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mask
                                  .Arg<ffi::Buffer<ffi::U8>>()   // valid
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ys
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dz
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dmask
);
