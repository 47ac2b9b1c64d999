// The handler skeleton (handler.h).
#include "handler.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ffi = xla::ffi;

namespace lstm_jax {
namespace {

// Runs one call of `fn` over the problem P, which owns (with `buffers`) what
// the items read until the last helper thread is done.
template <class Problem>
void Run(ffi::ThreadPool& pool, std::shared_ptr<Problem> P, std::shared_ptr<Scratch> buffers,
         ItemFn fn, int64_t items, Split split, int panels) {
  std::shared_ptr<void> keep = std::make_shared<std::pair<decltype(P), decltype(buffers)>>(P, buffers);
  RunItems(pool, std::move(keep), fn, P.get(), items, split, panels, P->batch);
}

// Resets before step 0, as fwd_reset (recurrent_kernel.inc) does before later steps.
void ResetBeforeFirstStep(const FwdProblem& P) {
  const size_t bytes = P.hidden * sizeof(float);
  for (int b = 0; b < P.batch; ++b) {
    const uint8_t flag = start_flag(P.starts, P.steps, P.batch, 0, b);
    if (flag == 0) continue;
    const size_t at = size_t(b) * P.hidden;
    if (flag == 2) std::memcpy(P.h_final + at, P.h[0] + at, bytes);
    std::memcpy(P.h[0] + at, P.reset_h + at, bytes);
    if (P.c == nullptr) continue;
    if (flag == 2) std::memcpy(P.c_final + at, P.c + at, bytes);
    std::memcpy(P.c + at, P.reset_c + at, bytes);
  }
}

// Whether row b has a start marked 2: its final carry is the one before it.
template <class Problem>
bool FinalBeforeStart(const Problem& P, int b) {
  for (int64_t t = 0; t < P.steps; ++t) {
    if (start_flag(P.starts, P.steps, P.batch, t, b) == 2) return true;
  }
  return false;
}

// The final carry into h_out (and the LSTM's P.c, which is c_out): the carry
// after the last step, or where a row has a start marked 2 the one saved before it.
void StoreFinal(const FwdProblem& P, float* h_out) {
  const size_t bh = size_t(P.batch) * P.hidden, bytes = P.hidden * sizeof(float);
  std::memcpy(h_out, P.h[P.steps & 1], bh * sizeof(float));
  if (P.starts == nullptr) return;
  for (int b = 0; b < P.batch; ++b) {
    if (!FinalBeforeStart(P, b)) continue;
    const size_t at = size_t(b) * P.hidden;
    std::memcpy(h_out + at, P.h_final + at, bytes);
    if (P.c != nullptr) std::memcpy(P.c + at, P.c_final + at, bytes);
  }
}

// The backward's resets; the carry gradients of rows whose final carry comes
// before a start marked 2 enter there (BwdProblem), so they start at zero.
void SetResets(BwdProblem& P, const BwdCellBuffers& cell, const float* dh_in, const float* dc_in, int64_t n) {
  const int64_t bh = int64_t(P.batch) * P.hidden;
  P.starts = cell.starts + n * P.steps * P.batch;
  P.reset_h = cell.reset_h + n * bh;
  P.dh_final = dh_in + n * bh;
  P.d_reset_h = cell.d_reset_h + n * bh;
  if (P.dc != nullptr) {
    P.reset_c = cell.reset_c + n * bh;
    P.dc_final = dc_in + n * bh;
    P.d_reset_c = cell.d_reset_c + n * bh;
  }
  for (int b = 0; b < P.batch; ++b) {
    if (!FinalBeforeStart(P, b)) continue;
    std::fill_n(P.dh + size_t(b) * P.hidden, P.hidden, 0.f);
    if (P.dc != nullptr) std::fill_n(P.dc + size_t(b) * P.hidden, P.hidden, 0.f);
  }
}

// The weight gradients the loop accumulated per row partition (P.dw:
// dw_parts x [dw_ih (ig floats), dw_hh (hg), db (acts)]), summed into dw_ih, dw_hh and db.
void SumPartitions(const BwdProblem& P, size_t ig, size_t hg, size_t acts, float* dw_ih, float* dw_hh,
                   float* db) {
  const size_t part = ig + hg + acts;
  for (size_t e = 0; e < part; ++e) {
    float sum = 0.f;
    for (int r = 0; r < P.dw_parts; ++r) sum += P.dw[r * part + e];
    if (e < ig) {
      dw_ih[e] = sum;
    } else if (e < ig + hg) {
      dw_hh[e - ig] = sum;
    } else {
      db[e - ig - hg] = sum;
    }
  }
}

// Buffers of act and dz: one, or one per block where the call is planar.
int GateBuffers(const Kernels& kern, bool planar) { return planar ? kern.acts : 1; }

// A planar call to kernels that address act and dz interleaved at compile time.
ffi::Error NotPlanarKernels() { return ffi::Error::InvalidArgument("this cell's act and dz are one (T, B, A) array"); }

// The GateRows of vmap index n (T * B = rows) in `buffers` (GateBuffers of them).
GateRows RowsOf(const Kernels& kern, bool planar, float* const (&buffers)[4], int hidden, int64_t rows, int64_t n) {
  GateRows r;
  r.stride = size_t(planar ? 1 : kern.acts) * hidden;
  const size_t offset = size_t(n) * rows * r.stride;
  for (int a = 0; a < kern.acts; ++a) {
    r.block[a] = planar ? buffers[a] + offset : buffers[0] + offset + size_t(a) * hidden;
  }
  return r;
}

}  // namespace

ffi::Error Forward(ffi::ThreadPool& pool, const Kernels& kern, bool batch_major, ffi::Buffer<ffi::F32> xs,
                   ffi::Buffer<ffi::F32> w_ih, ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> h0,
                   ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::U8> valid, ffi::ResultBuffer<ffi::F32> ys,
                   ffi::ResultBuffer<ffi::F32> h_out, const FwdCellBuffers& cell) {
  if (ffi::Error error = SettingsChecked(); error.failure()) return error;
  if (cell.planar && !kern.may_be_planar) return NotPlanarKernels();
  auto xdims = xs.dimensions();
  auto wdims = w_hh.dimensions();
  const size_t rank = xdims.size();
  if (rank < 3 || wdims.size() != rank - 1) {
    return ffi::Error::InvalidArgument("xs must be (..., T, B, I) and w_hh (..., H, " +
                                       std::to_string(kern.gates) + "H)");
  }
  const int64_t steps = xdims[rank - (batch_major ? 2 : 3)];
  const int batch = int(xdims[rank - (batch_major ? 3 : 2)]), input = int(xdims[rank - 1]);
  const int hidden = int(wdims[rank - 3]), gates = kern.gates * hidden, acts = kern.acts * hidden;
  int64_t count = 1;
  for (size_t d = 0; d + 3 < rank; ++d) count *= xdims[d];
  const int64_t bh = int64_t(batch) * hidden;
  const int panels = (hidden + kern.fwd_width - 1) / kern.fwd_width;
  const bool has_mask = mask.element_count() != 0, has_valid = valid.element_count() != 0;
  float* hT = h_out->typed_data();
  if (steps == 0 || bh == 0) {  // the state passes through
    if (bh > 0) {
      std::memcpy(hT, h0.typed_data(), h0.element_count() * sizeof(float));
      if (cell.c_out != nullptr) std::memcpy(cell.c_out, cell.c0, h0.element_count() * sizeof(float));
    }
    return ffi::Error::Success();
  }
  HugePagesHint(ys->typed_data(), ys->element_count() * sizeof(float));
  const int act_buffers = GateBuffers(kern, cell.planar);
  for (int a = 0; a < act_buffers && cell.act[0] != nullptr; ++a) {
    HugePagesHint(cell.act[a], size_t(count) * steps * batch * acts / act_buffers * sizeof(float));
  }
  if (cell.cs != nullptr) HugePagesHint(cell.cs, size_t(count) * steps * bh * sizeof(float));
  if (cell.xhT != nullptr) {
    HugePagesHint(cell.xhT, size_t(count) * (input + hidden) * steps * batch * sizeof(uint16_t));
  }
  // inference only: a training forward keeps the backward's split, so that
  // each core reads back the activations it wrote (measured: units here
  // made the LSTM's training step 8-30% slower)
  const Split split = StepPartitions(pool, batch, int64_t(batch) * (input + hidden) * gates, panels,
                                     /*inference=*/!cell.training);
  const size_t pack = kern.fwd_pack_size(input, hidden);
  for (int64_t n = 0; n < count; ++n) {
    const bool resets = cell.starts != nullptr;
    auto buffers = CallScratch(pack + (resets ? 6 : 4) * bh, pack);  // pack_fwd writes all of its part
    float* wpack = buffers->data();
    float* hbuf = wpack + pack;
    kern.pack_fwd(w_ih.typed_data() + n * input * gates, w_hh.typed_data() + n * hidden * gates,
                  input, hidden, wpack);
    auto P = std::make_shared<FwdProblem>();
    P->seq = Layout(steps, batch, batch_major);
    P->steps = steps;
    P->batch = batch;
    P->input = input;
    P->hidden = hidden;
    P->xs = xs.typed_data() + n * steps * batch * input;
    P->bias = cell.bias + n * gates;
    P->bias_hh = cell.bias_hh != nullptr ? cell.bias_hh + n * gates : nullptr;
    P->mask = has_mask ? mask.typed_data() + n * bh : nullptr;
    P->valid = has_valid ? valid.typed_data() + n * steps * batch : nullptr;
    P->ys = ys->typed_data() + n * steps * bh;
    if (cell.act[0] != nullptr) P->act = RowsOf(kern, cell.planar, cell.act, hidden, steps * batch, n);
    P->cs = cell.cs != nullptr ? cell.cs + n * steps * bh : nullptr;
    if (cell.c_out != nullptr) {
      P->c = cell.c_out + n * bh;
      std::memcpy(P->c, cell.c0 + n * bh, bh * sizeof(float));
    }
    P->h[0] = hbuf;
    P->h[1] = hbuf + bh;
    std::memcpy(P->h[0], h0.typed_data() + n * bh, bh * sizeof(float));
    if (resets) {
      P->starts = cell.starts + n * steps * batch;
      P->reset_h = cell.reset_h + n * bh;
      P->reset_c = cell.reset_c != nullptr ? cell.reset_c + n * bh : nullptr;
      P->h_final = hbuf + 4 * bh;
      P->c_final = hbuf + 5 * bh;
      ResetBeforeFirstStep(*P);
    }
    if (has_mask) {
      P->hm[0] = hbuf + 2 * bh;
      P->hm[1] = hbuf + 3 * bh;
      for (int64_t e = 0; e < bh; ++e) P->hm[0][e] = P->h[0][e] * P->mask[e];
    } else {
      P->hm[0] = P->h[0];
      P->hm[1] = P->h[1];
    }
    P->wpack = wpack;
    P->xhT = cell.xhT != nullptr ? cell.xhT + n * (input + hidden) * steps * batch : nullptr;
    Run(pool, P, buffers, kern.fwd_item, steps, split, panels);
    StoreFinal(*P, hT + n * bh);
  }
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool& pool, const Kernels& kern, bool batch_major, ffi::Buffer<ffi::F32> w_hh,
                    ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> dh_in, ffi::Buffer<ffi::F32> mask,
                    ffi::Buffer<ffi::U8> valid, ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::F32> h0,
                    ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dh_out,
                    ffi::ResultBuffer<ffi::F32> dm_out, const BwdCellBuffers& cell) {
  if (ffi::Error error = SettingsChecked(); error.failure()) return error;
  if (cell.planar && !kern.may_be_planar) return NotPlanarKernels();
  if (cell.dzb != nullptr && cell.dw_hh != nullptr) {
    return ffi::Error::InvalidArgument("the bfloat16 backward has no in-loop weight gradients");
  }
  auto dims = dz->dimensions();
  const size_t rank = dims.size();
  if (rank < 3) {
    const std::string width = cell.planar ? "H) per block" : std::to_string(kern.acts) + "H)";
    return ffi::Error::InvalidArgument("act and dz must be (..., T, B, " + width);
  }
  const int64_t steps = dims[rank - 3];
  const int batch = int(dims[rank - 2]), hidden = int(dims[rank - 1]) / (cell.planar ? 1 : kern.acts);
  const int64_t bh = int64_t(batch) * hidden, per = steps * batch * dims[rank - 1];  // per buffer
  const int64_t count = per == 0 ? 0 : int64_t(dz->element_count()) / per;
  const int panels = (hidden + kern.bwd_width - 1) / kern.bwd_width;
  const bool has_mask = mask.element_count() != 0, has_valid = valid.element_count() != 0;
  float* dm = Data(*dm_out);
  if (dm != nullptr) std::memset(dm, 0, dm_out->element_count() * sizeof(float));
  for (float* d : {cell.d_reset_h, cell.d_reset_c}) {
    if (d != nullptr) std::memset(d, 0, dh_in.element_count() * sizeof(float));
  }
  if (per == 0) {
    if (cell.dw_hh != nullptr) {  // nothing to accumulate
      if (cell.dw_ih != nullptr) std::fill_n(cell.dw_ih, size_t(cell.input) * kern.gates * hidden, 0.f);
      std::fill_n(cell.dw_hh, w_hh.element_count(), 0.f);
      if (hidden > 0) std::fill_n(cell.db, w_hh.element_count() / kern.gates / hidden * kern.acts, 0.f);
    }
    if (bh > 0) {
      std::memcpy(dh_out->typed_data(), dh_in.typed_data(), dh_in.element_count() * sizeof(float));
      if (cell.dc_out != nullptr) std::memcpy(cell.dc_out, cell.dc_in, dh_in.element_count() * sizeof(float));
    }
    return ffi::Error::Success();
  }
  float* const dz_buffers[4] = {dz->typed_data(), cell.dz[1], cell.dz[2], cell.dz[3]};
  if (cell.dzb != nullptr) {
    HugePagesHint(cell.dzb, dz->element_count() * GateBuffers(kern, cell.planar) * sizeof(uint16_t));
  }
  for (int a = 0; a < GateBuffers(kern, cell.planar); ++a) {
    if (cell.act[a] == nullptr) {
      HugePagesHint(dz_buffers[a], dz->element_count() * sizeof(float));
    } else if (dz_buffers[a] != cell.act[a]) {  // XLA did not alias: copy the activations over
      std::memcpy(dz_buffers[a], cell.act[a], dz->element_count() * sizeof(float));
    }
  }
  if (cell.dw_hh != nullptr && cell.input > 0 &&
      (cell.dw_ih == nullptr || cell.xs_count != count * steps * batch * cell.input)) {
    return ffi::Error::InvalidArgument("in-loop weight gradients: xs must be (..., T, B, I) like dz, with dw_ih");
  }
  const Split split = StepPartitions(pool, batch, bh * kern.gates * hidden, panels, /*inference=*/false);
  const int64_t dw_input = cell.dw_hh != nullptr ? cell.input : 0;
  const size_t dw_size = size_t(dw_input + hidden) * kern.gates * hidden + kern.acts * hidden;  // dw, db
  for (int64_t n = 0; n < count; ++n) {
    const int dw_parts = cell.dw_hh == nullptr ? 0 : split.rows ? split.parts : 1;
    // pack_bwd writes all of its part; the weight-gradient partitions start at zero
    auto buffers = CallScratch(kern.bwd_pack_size(hidden) + dw_parts * dw_size, kern.bwd_pack_size(hidden));
    kern.pack_bwd(w_hh.typed_data() + n * hidden * kern.gates * hidden, hidden, buffers->data());
    auto P = std::make_shared<BwdProblem>();
    P->seq = Layout(steps, batch, batch_major);
    P->steps = steps;
    P->batch = batch;
    P->hidden = hidden;
    P->dz = RowsOf(kern, cell.planar, dz_buffers, hidden, steps * batch, n);
    P->cs = cell.cs != nullptr ? cell.cs + n * steps * bh : nullptr;
    P->c0 = cell.c0 != nullptr ? cell.c0 + n * bh : nullptr;
    P->dys = dys.typed_data() + n * steps * bh;
    P->mask = has_mask ? mask.typed_data() + n * bh : nullptr;
    P->valid = has_valid ? valid.typed_data() + n * steps * batch : nullptr;
    P->ys = ys.typed_data() + n * steps * bh;
    P->h0 = h0.typed_data() + n * bh;
    P->input = int(dw_input);
    P->xs = P->input > 0 ? cell.xs + n * steps * batch * P->input : nullptr;
    P->dh = dh_out->typed_data() + n * bh;
    std::memcpy(P->dh, dh_in.typed_data() + n * bh, bh * sizeof(float));
    if (cell.dc_out != nullptr) {
      P->dc = cell.dc_out + n * bh;
      std::memcpy(P->dc, cell.dc_in + n * bh, bh * sizeof(float));
    }
    if (cell.starts != nullptr) SetResets(*P, cell, dh_in.typed_data(), cell.dc_in, n);
    P->dm = has_mask ? dm + n * bh : nullptr;
    P->dzb = cell.dzb != nullptr ? cell.dzb + n * steps * batch * kern.acts * hidden : nullptr;
    P->wpack = buffers->data();
    if (cell.dw_hh != nullptr) {
      P->dw_parts = dw_parts;
      P->dw = buffers->data() + kern.bwd_pack_size(hidden);
    }
    Run(pool, P, buffers, kern.bwd_item, steps + 1, split, panels);
    if (cell.dw_hh != nullptr) {
      const size_t hg = size_t(hidden) * kern.gates * hidden, acts = size_t(kern.acts) * hidden;
      const size_t ig = size_t(P->input) * kern.gates * hidden;
      SumPartitions(*P, ig, hg, acts, cell.dw_ih + n * ig, cell.dw_hh + n * hg, cell.db + n * acts);
    }
  }
  return ffi::Error::Success();
}

}  // namespace lstm_jax
