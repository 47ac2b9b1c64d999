// Vector traits for the kernels: one struct per instruction set, each with
// the same static interface (W lanes, loads/stores of the first n lanes,
// arithmetic, clamp, exp, register-block sizes). recurrent_kernel.inc is
// written once against this interface and compiled once per struct, inside a
// `#pragma GCC target` region (kernels.cc), so no file is built with
// -march=native.
#ifndef LSTM_JAX_SIMD_H_
#define LSTM_JAX_SIMD_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LSTM_JAX_X86 1
// The bfloat16 kernels need AVX512_BF16 and AMX intrinsics (GCC 11, clang 12);
// older compilers build the extension without them (native then declines bf16).
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11)
#define LSTM_JAX_BF16 1
#endif
#endif

namespace lstm_jax {

// The bfloat16 bits of x, rounded to nearest even as XLA's conversion; NaN stays (quiet) NaN.
inline uint16_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Portable C++: one lane.
struct ScalarVec {
  using T = float;
  static constexpr int W = 1;
  static constexpr int MR = 4;   // rows per forward register block
  static constexpr int NVF = 4;  // weight vectors per forward register block (per pass over k)
  static constexpr int MRB = 4;  // rows per backward register block
  static constexpr int NVB = 1;  // panels per backward register block
  static inline T zero() { return 0.f; }
  static inline T set1(float x) { return x; }
  static inline T loadn(const float* p, int) { return *p; }
  static inline void storen(float* p, T v, int) { *p = v; }
  static inline T fmadd(T a, T b, T c) { return a * b + c; }
  static inline T add(T a, T b) { return a + b; }
  static inline T sub(T a, T b) { return a - b; }
  static inline T mul(T a, T b) { return a * b; }
  static inline T div(T a, T b) { return a / b; }
  static inline T exp(T x) { return std::exp(x); }
  static inline T clamp(T x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }
  static inline T where_positive(T x, T a) { return x > 0.f ? a : 0.f; }  // a where x > 0, else 0
};

#ifdef LSTM_JAX_X86

// Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-6
// polynomial (relative error ~1e-7); inputs clamped to the float range (NaN passes).
#define LSTM_JAX_EXP_POLY(V, x, n, r)                                      \
  typename V::T p = V::set1(1.9875691500E-4f);                             \
  p = V::fmadd(p, r, V::set1(1.3981999507E-3f));                           \
  p = V::fmadd(p, r, V::set1(8.3334519073E-3f));                           \
  p = V::fmadd(p, r, V::set1(4.1665795894E-2f));                           \
  p = V::fmadd(p, r, V::set1(1.6666665459E-1f));                           \
  p = V::fmadd(p, r, V::set1(5.0000001201E-1f));                           \
  p = V::fmadd(V::mul(p, r), r, V::add(r, V::set1(1.f)));

#pragma GCC push_options
#pragma GCC target("avx2,fma")
struct Avx2Vec {
  using T = __m256;
  static constexpr int W = 8;
  // 16 registers: 6 x 2 accumulators, 2 weight vectors and a broadcast (as a
  // GEMM micro-kernel); a cell's 4 weight vectors take two passes over k.
  static constexpr int MR = 6;
  static constexpr int NVF = 2;
  // backward 4 x 3 accumulators (+ 3 weights, a broadcast): measured ahead of 6 x 2 and 4 x 2
  static constexpr int MRB = 4;
  static constexpr int NVB = 3;
  static inline __m256i lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline T zero() { return _mm256_setzero_ps(); }
  static inline T set1(float x) { return _mm256_set1_ps(x); }
  static inline T loadn(const float* p, int n) {
    return n == W ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes(n));
  }
  static inline void storen(float* p, T v, int n) {
    if (n == W) {
      _mm256_storeu_ps(p, v);
    } else {
      _mm256_maskstore_ps(p, lanes(n), v);
    }
  }
  static inline T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static inline T add(T a, T b) { return _mm256_add_ps(a, b); }
  static inline T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static inline T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static inline T div(T a, T b) { return _mm256_div_ps(a, b); }
  // min/max return their second operand when either is NaN: x goes second, NaN stays NaN
  static inline T clamp(T x, float lo, float hi) {
    return _mm256_min_ps(set1(hi), _mm256_max_ps(set1(lo), x));
  }
  static inline T where_positive(T x, T a) { return _mm256_and_ps(_mm256_cmp_ps(x, zero(), _CMP_GT_OQ), a); }
  static inline T exp(T x) {
    x = clamp(x, -87.3f, 88.3f);
    T n = _mm256_round_ps(_mm256_mul_ps(x, set1(1.44269504088896341f)),
                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    T r = _mm256_fnmadd_ps(n, set1(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, set1(-2.12194440e-4f), r);
    LSTM_JAX_EXP_POLY(Avx2Vec, x, n, r)
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  }
};
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")
struct Avx512Vec {
  using T = __m512;
  static constexpr int W = 16;
  static constexpr int MR = 6;
  static constexpr int NVF = 4;
  static constexpr int MRB = 6;
  static constexpr int NVB = 4;
  static inline __mmask16 lanes(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static inline T zero() { return _mm512_setzero_ps(); }
  static inline T set1(float x) { return _mm512_set1_ps(x); }
  static inline T loadn(const float* p, int n) {
    return n == W ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(lanes(n), p);
  }
  static inline void storen(float* p, T v, int n) {
    if (n == W) {
      _mm512_storeu_ps(p, v);
    } else {
      _mm512_mask_storeu_ps(p, lanes(n), v);
    }
  }
  static inline T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static inline T add(T a, T b) { return _mm512_add_ps(a, b); }
  static inline T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static inline T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static inline T div(T a, T b) { return _mm512_div_ps(a, b); }
  // min/max return their second operand when either is NaN: x goes second, NaN stays NaN
  static inline T clamp(T x, float lo, float hi) {
    return _mm512_min_ps(set1(hi), _mm512_max_ps(set1(lo), x));
  }
  static inline T where_positive(T x, T a) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, zero(), _CMP_GT_OQ), a); }
  static inline T exp(T x) {
    x = clamp(x, -87.3f, 88.3f);
    T n = _mm512_roundscale_ps(_mm512_mul_ps(x, set1(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    T r = _mm512_fnmadd_ps(n, set1(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, set1(-2.12194440e-4f), r);
    LSTM_JAX_EXP_POLY(Avx512Vec, x, n, r)
    return _mm512_scalef_ps(p, n);
  }
};
#pragma GCC pop_options

#endif  // LSTM_JAX_X86

}  // namespace lstm_jax

#endif  // LSTM_JAX_SIMD_H_
