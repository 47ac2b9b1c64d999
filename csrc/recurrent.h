// What the recurrent kernels (recurrent_kernel.inc, one per instruction set
// and cell) and the handler skeleton (recurrent.cc) share: the per-call
// problems, a kernel table, and the cells.
#ifndef LSTM_JAX_RECURRENT_H_
#define LSTM_JAX_RECURRENT_H_

#include <cstddef>
#include <cstdint>

#include "runtime.h"

namespace lstm_jax {

// The cells with native kernels; the RNN's nonlinearity is compiled in.
enum class Cell { kLstm, kGru, kRnnTanh, kRnnRelu };

// Where step t of sequence b sits in a (T, B, F) time-major or (B, T, F)
// batch-major array: row(t, b) * F. xs, ys and dys are in the caller's layout
// (no transposed copies); the saved activations and cell states, dz and valid
// are always time-major, so that one step's rows are contiguous.
struct Layout {
  int64_t steps, batch;
  bool batch_major;
  size_t next_row;  // rows between (t, b) and (t, b + 1)
  Layout() : Layout(0, 0, false) {}
  Layout(int64_t t, int64_t b, bool bm) : steps(t), batch(b), batch_major(bm), next_row(bm ? t : 1) {}
  size_t row(int64_t t, int64_t b) const { return batch_major ? size_t(b * steps + t) : size_t(t * batch + b); }
};

// A call's saved activations, or its gate gradients: acts * H floats per
// (step, row) r = t * B + b, block a of row r at block[a] + r * stride. One
// (T, B, A) buffer (interleaved: block[a] = block[0] + a * H, stride A; the
// LSTM's, whose XLA side reads whole rows) or one (T, B, H) buffer per block
// (planar, stride H). The GRU's XLA side takes different sets of blocks for
// its input and recurrent weights, and XLA copies column slices before a GEMM,
// so where XLA computes the weight gradients the GRU's calls are planar; where
// its loop does, they stay interleaved (planar was slower there on two
// threads). The kernels address them with gate_at (recurrent_kernel.inc).
struct GateRows {
  float* block[4] = {};  // block a of row 0
  size_t stride = 0;     // floats from one row to the next
  explicit operator bool() const { return block[0] != nullptr; }
};

// One forward call (one vmap index). G = gates * H columns of the weights,
// A = acts * H saved activations per row (Kernels); what a cell lacks is null.
struct FwdProblem {
  int64_t steps;
  int batch, input, hidden;
  Layout seq;
  const float* xs;        // (T, B, I) inputs
  const float* bias;      // (G): LSTM b, GRU b_ih, RNN b
  const float* bias_hh;   // (G): GRU b_hh
  const float* mask;      // (B, H) recurrent mask, or null
  const uint8_t* valid;   // (T, B) step validity, or null (all valid)
  float* ys;              // (T, B, H)
  GateRows act;           // gate activations, or none (inference)
  float* cs;              // (T, B, H) LSTM: carried cell state after each step, or null
  float* c;               // (B, H) LSTM: cell carry, updated in place
  float* h[2];            // (B, H) hidden carry, double-buffered by step parity
  float* hm[2];           // h * mask (the GEMM's input), or == h
  uint16_t* xhT;          // (I + H, T * B) bf16 [x_t; h * mask] per step, transposed, or null
  const float* wpack;
  // resets (null without): starts (T, B) is 1 where the carry is reset before
  // step t, 2 where in addition the carry before it is the final one (the
  // reverse direction's first reset; h_final, c_final); reset_h, reset_c (B, H)
  // the carry a reset restores
  const uint8_t* starts;
  const float* reset_h;
  const float* reset_c;   // LSTM
  float* h_final;
  float* c_final;         // LSTM
};

struct BwdProblem {
  int64_t steps;
  int batch, hidden;
  Layout seq;
  GateRows dz;            // activations in (where saved), gate gradients out
  const float* cs;        // (T, B, H) LSTM
  const float* c0;        // (B, H) LSTM
  const float* dys;       // (T, B, H)
  const float* mask;      // (B, H), or null
  const uint8_t* valid;   // (T, B), or null
  const float* ys;        // (T, B, H): the carry after each step (the outputs, or with a
                          // per-step mask the carried h), read as h_{t-1}; h0 / reset_h
                          // where t = 0 or a segment starts (h_before)
  const float* h0;        // (B, H)
  const float* xs;        // (T, B, I) in the seq layout, read by the in-loop dw_ih (with dw)
  int input;              // I
  float* dh;              // (B, H) carry in place: dh_T in, dh_0 out
  float* dc;              // (B, H) LSTM: carry in place
  float* dm;              // (B, H) mask gradient, accumulated, or null
  uint16_t* dzb;          // (T, B, A) dz rounded to bfloat16 (bf16 kernels only)
  // weight gradients in the loop (null: XLA computes them from dz): per row
  // partition (dw_parts; 1 where the loop is split by panels), [dw_ih; dw_hh]
  // (I + H, G): dw_ih = sum x_t^T @ dz's input blocks (Cell::kDzIn), dw_hh =
  // sum h_{t-1}^T (* mask) @ its recurrent blocks (Cell::kDz); then db (A) =
  // sum dz over rows; accumulated, and summed over partitions by the handler
  float* dw;
  int dw_parts;
  const float* wpack;
  // resets (null without), as FwdProblem's: at a start the carry gradient
  // flowing into step t - 1 is added to d_reset_h (d_reset_c) and replaced by
  // zero, or at a start marked 2 by the final carry's cotangent dh_final (dc_final)
  const uint8_t* starts;
  const float* reset_h;
  const float* reset_c;   // LSTM
  const float* dh_final;
  const float* dc_final;  // LSTM
  float* d_reset_h;
  float* d_reset_c;       // LSTM
};

// The resets flag of step t, row b (starts (T, B)): 0 without resets and past the last step.
inline uint8_t start_flag(const uint8_t* starts, int64_t steps, int batch, int64_t t, int b) {
  return starts != nullptr && t < steps ? starts[size_t(t) * batch + b] : 0;
}

// One instruction set's kernels for one cell: its shape (weight columns and
// saved activations per hidden unit, and their layout), the hidden units per panel of each
// loop, weight packing for each loop, and the two loops' items. A pack
// function writes every float of its pack size (padding included): the
// handlers reuse their scratch without zeroing that part (CallScratch).
struct Kernels {
  int gates, acts, fwd_width, bwd_width;
  bool may_be_planar;  // whether a call's act and dz may be planar (GateRows)
  void (*pack_fwd)(const float*, const float*, int, int, float*);
  void (*pack_bwd)(const float*, int, float*);
  size_t (*fwd_pack_size)(int, int);
  size_t (*bwd_pack_size)(int);
  ItemFn fwd_item;
  ItemFn bwd_item;
};

// The cell's kernels for the chosen instruction set (kernels.cc); its
// bfloat16 kernels (the LSTM's and the GRU's), or null where there are none.
const Kernels& CellKernels(Cell cell);
const Kernels* Bf16Kernels(Cell cell);

// The chosen instruction set's timed loop of independent multiply-adds
// (fma_loop.inc; for the measured FMA peak, fma_peak.cc): seconds for `iters`
// rounds of `chains` vector FMAs of `lanes` floats. Null for the portable
// kernels, which have no vector FMA to time.
struct FmaLoop {
  double (*seconds)(int64_t iters);
  int lanes, chains;
};
const FmaLoop* ChosenFmaLoop();

// The float32 kernels, or with bf16 the bfloat16 ones (null where there are none).
inline const Kernels* ChosenKernels(Cell cell, bool bf16) { return bf16 ? Bf16Kernels(cell) : &CellKernels(cell); }

// Calls f(r0, rows) over [0, batch) in blocks of at most MAX rows, as even as
// possible: 8 rows run as 4 + 4, not 6 + 2 (a thin block streams the weights
// for few rows).
template <int MAX, class F>
inline void for_row_blocks(int batch, F&& f) {
  const int blocks = (batch + MAX - 1) / MAX;
  for (int j = 0, r0 = 0; j < blocks; ++j) {
    const int rows = (batch - r0) / (blocks - j);
    f(r0, rows);
    r0 += rows;
  }
}

}  // namespace lstm_jax

#endif  // LSTM_JAX_RECURRENT_H_
