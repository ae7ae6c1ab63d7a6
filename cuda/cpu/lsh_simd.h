// lsh_simd.h — a thin fixed-width float vector type for the MagicPIG kernels, and the vector
// math the MagicPIG kernels need (exp, log, log1p, expm1, the SimHash collision
// probability's 1 − acos(c)/π).
//
// One type, `vf`, of W lanes, chosen at build time:
//   AVX-512F  W = 16 (__m512, masks are __mmask16)
//   AVX2+FMA  W = 8  (__m256, masks are all-ones/zero lanes)
//   otherwise W = 1  (plain float; the same code runs lane by lane)
// Kernels are written once against the functions below and get the widest path the build
// machine has (the library is compiled with -march=native).
//
// The math functions are Cephes-style single-precision approximations (range reduction +
// minimax polynomial), accurate to a few ulp over the ranges the kernels use; the tests
// check the composite u(θ) against a float64 closed form. Denormal inputs of log() are
// rescaled, log(0) = −∞, exp(x < −87.3) = 0.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace mp::simd {

// ------------------------------------------------------------
// the vector type

#if defined(__AVX512F__)
constexpr int W = 16;
typedef __m512 vf;
typedef __m512i vi;
typedef __mmask16 vm;
static inline vf set1(float x) { return _mm512_set1_ps(x); }
static inline vf zero() { return _mm512_setzero_ps(); }
static inline vf load(const float *p) { return _mm512_loadu_ps(p); }
static inline void store(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline vf fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf sqrt(vf a) { return _mm512_sqrt_ps(a); }
static inline vf min(vf a, vf b) { return _mm512_min_ps(a, b); }
static inline vf max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf abs(vf a) { return _mm512_abs_ps(a); }
static inline vm lt(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
static inline vm le(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
static inline vm gt(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
static inline vm eq(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
static inline vm m_and(vm a, vm b) { return (vm)(a & b); }
static inline vm m_or(vm a, vm b) { return (vm)(a | b); }
static inline bool any(vm m) { return m != 0; }
// m ? a : b
static inline vf sel(vm m, vf a, vf b) { return _mm512_mask_blend_ps(m, b, a); }
static inline float hsum(vf a) { return _mm512_reduce_add_ps(a); }
static inline float hmax(vf a) { return _mm512_reduce_max_ps(a); }
// x = m · 2^e with m in [0.5, 1) for normal positive x
static inline vf frexp(vf x, vf *e) {
  vi xi = _mm512_castps_si512(x);
  vi ei = _mm512_sub_epi32(_mm512_srli_epi32(xi, 23), _mm512_set1_epi32(126));
  *e = _mm512_cvtepi32_ps(ei);
  vi mi = _mm512_or_si512(_mm512_and_si512(xi, _mm512_set1_epi32(0x807fffff)),
                          _mm512_set1_epi32(0x3f000000));
  return _mm512_castsi512_ps(mi);
}
// 2^n for integral n in [-126, 127] (n given as a float)
static inline vf pow2i(vf n) {
  vi ni = _mm512_cvtps_epi32(n);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(ni, _mm512_set1_epi32(127)), 23));
}
static inline vf round(vf x) {
  return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// Partial loads/stores of the first n < W lanes (the rest read as 0).
static inline vf load_n(const float *p, int n) {
  return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
}
static inline void store_n(float *p, vf v, int n) {
  _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), v);
}
// W bf16 values widened to fp32 (exact: a bf16 is the top half of an fp32)
static inline vf load_bf16(const uint16_t *p) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int W = 8;
typedef __m256 vf;
typedef __m256i vi;
typedef __m256 vm;
static inline vf set1(float x) { return _mm256_set1_ps(x); }
static inline vf zero() { return _mm256_setzero_ps(); }
static inline vf load(const float *p) { return _mm256_loadu_ps(p); }
static inline void store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf sqrt(vf a) { return _mm256_sqrt_ps(a); }
static inline vf min(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline vf max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf abs(vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
static inline vm lt(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
static inline vm le(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
static inline vm gt(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
static inline vm eq(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
static inline vm m_and(vm a, vm b) { return _mm256_and_ps(a, b); }
static inline vm m_or(vm a, vm b) { return _mm256_or_ps(a, b); }
static inline bool any(vm m) { return _mm256_movemask_ps(m) != 0; }
static inline vf sel(vm m, vf a, vf b) { return _mm256_blendv_ps(b, a, m); }
static inline float hsum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline float hmax(vf a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline vf frexp(vf x, vf *e) {
  vi xi = _mm256_castps_si256(x);
  vi ei = _mm256_sub_epi32(_mm256_srli_epi32(xi, 23), _mm256_set1_epi32(126));
  *e = _mm256_cvtepi32_ps(ei);
  vi mi = _mm256_or_si256(_mm256_and_si256(xi, _mm256_set1_epi32((int)0x807fffff)),
                          _mm256_set1_epi32(0x3f000000));
  return _mm256_castsi256_ps(mi);
}
static inline vf pow2i(vf n) {
  vi ni = _mm256_cvtps_epi32(n);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
}
static inline vf round(vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline __m256i tail_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vf load_n(const float *p, int n) { return _mm256_maskload_ps(p, tail_mask(n)); }
static inline void store_n(float *p, vf v, int n) { _mm256_maskstore_ps(p, tail_mask(n), v); }
static inline vf load_bf16(const uint16_t *p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
#else
constexpr int W = 1;
typedef float vf;
typedef bool vm;
static inline vf set1(float x) { return x; }
static inline vf zero() { return 0.0f; }
static inline vf load(const float *p) { return *p; }
static inline void store(float *p, vf v) { *p = v; }
static inline vf add(vf a, vf b) { return a + b; }
static inline vf sub(vf a, vf b) { return a - b; }
static inline vf mul(vf a, vf b) { return a * b; }
static inline vf div(vf a, vf b) { return a / b; }
static inline vf fma(vf a, vf b, vf c) { return std::fma(a, b, c); }
static inline vf sqrt(vf a) { return std::sqrt(a); }
static inline vf min(vf a, vf b) { return a < b ? a : b; }
static inline vf max(vf a, vf b) { return a > b ? a : b; }
static inline vf abs(vf a) { return std::fabs(a); }
static inline vm lt(vf a, vf b) { return a < b; }
static inline vm le(vf a, vf b) { return a <= b; }
static inline vm gt(vf a, vf b) { return a > b; }
static inline vm eq(vf a, vf b) { return a == b; }
static inline vm m_and(vm a, vm b) { return a && b; }
static inline vm m_or(vm a, vm b) { return a || b; }
static inline bool any(vm m) { return m; }
static inline vf sel(vm m, vf a, vf b) { return m ? a : b; }
static inline float hsum(vf a) { return a; }
static inline float hmax(vf a) { return a; }
static inline vf frexp(vf x, vf *e) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  *e = (float)((int32_t)(u >> 23) - 126);
  u = (u & 0x807fffffu) | 0x3f000000u;
  float m;
  std::memcpy(&m, &u, 4);
  return m;
}
static inline vf pow2i(vf n) {
  uint32_t u = (uint32_t)((int32_t)n + 127) << 23;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline vf round(vf x) { return std::nearbyint(x); }
static inline vf load_n(const float *p, int n) { return n > 0 ? *p : 0.0f; }
static inline void store_n(float *p, vf v, int n) {
  if (n > 0) *p = v;
}
static inline vf load_bf16(const uint16_t *p) {
  uint32_t u = (uint32_t)*p << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
#endif

// ------------------------------------------------------------
// vector math

// Natural logarithm for x >= 0 (log(0) = −∞; x < 0 is not expected).
static inline vf log(vf x) {
  const vf one = set1(1.0f);
  // rescale denormals so that frexp sees a normal number
  vm tiny = lt(x, set1(1.17549435e-38f));
  vf xs = sel(tiny, mul(x, set1(8388608.0f)), x);  // 2^23
  vf e;
  vf m = frexp(xs, &e);
  e = sel(tiny, sub(e, set1(23.0f)), e);
  vm small = lt(m, set1(0.707106781186547524f));
  // m in [sqrt(1/2), sqrt(2)) after the shift below; t = m - 1
  vf t = sel(small, sub(add(m, m), one), sub(m, one));
  e = sel(small, sub(e, one), e);
  vf z = mul(t, t);
  vf y = set1(7.0376836292e-2f);
  y = fma(y, t, set1(-1.1514610310e-1f));
  y = fma(y, t, set1(1.1676998740e-1f));
  y = fma(y, t, set1(-1.2420140846e-1f));
  y = fma(y, t, set1(1.4249322787e-1f));
  y = fma(y, t, set1(-1.6668057665e-1f));
  y = fma(y, t, set1(2.0000714765e-1f));
  y = fma(y, t, set1(-2.4999993993e-1f));
  y = fma(y, t, set1(3.3333331174e-1f));
  y = mul(mul(y, t), z);
  y = fma(e, set1(-2.12194440e-4f), y);
  y = fma(z, set1(-0.5f), y);
  vf r = add(t, y);
  r = fma(e, set1(0.693359375f), r);
  r = sel(eq(x, zero()), set1(-INFINITY), r);
  r = sel(eq(x, set1(INFINITY)), set1(INFINITY), r);
  return r;
}

// e^x; exp(x < −87.3) = 0, exp(x > 88.7) = +∞.
static inline vf exp(vf x) {
  vf xc = min(max(x, set1(-87.3f)), set1(88.7f));
  vf fx = round(mul(xc, set1(1.44269504088896341f)));
  vf r = fma(fx, set1(-0.693359375f), xc);
  r = fma(fx, set1(2.12194440e-4f), r);
  vf z = mul(r, r);
  vf y = set1(1.9875691500e-4f);
  y = fma(y, r, set1(1.3981999507e-3f));
  y = fma(y, r, set1(8.3334519073e-3f));
  y = fma(y, r, set1(4.1665795894e-2f));
  y = fma(y, r, set1(1.6666665459e-1f));
  y = fma(y, r, set1(5.0000001201e-1f));
  y = fma(y, z, add(r, set1(1.0f)));
  y = mul(y, pow2i(fx));
  y = sel(lt(x, set1(-87.3f)), zero(), y);
  y = sel(gt(x, set1(88.7f)), set1(INFINITY), y);
  return y;
}

// log(1 + x) for x >= −1, accurate for small |x| (Goldberg's correction: the rounding
// error of w = 1 + x is undone by the factor x / (w − 1)).
static inline vf log1p(vf x) {
  vf w = add(x, set1(1.0f));
  vf d = sub(w, set1(1.0f));
  vm exact = eq(d, zero());
  vf r = mul(log(w), div(x, sel(exact, set1(1.0f), d)));
  r = sel(exact, x, r);
  r = sel(eq(w, zero()), set1(-INFINITY), r);
  return r;
}

// e^x − 1 for x <= 0, accurate for small |x| (Kahan: (w − 1)·x / log(w), w = e^x).
static inline vf expm1_neg(vf x) {
  vf w = exp(x);
  vf d = sub(w, set1(1.0f));
  vm exact = eq(d, zero());
  vf lw = log(w);
  vf r = mul(d, div(x, sel(exact, set1(1.0f), lw)));
  r = sel(exact, x, r);
  r = sel(eq(w, zero()), set1(-1.0f), r);
  return r;
}

// r = 1 − acos(c)/π for c in [−1, 1], without cancellation at either end: the Cephes
// arcsine polynomial gives asin(a) for a ≤ 1/2 and acos(a) = 2·asin(√((1−a)/2)) above.
static inline vf one_minus_acos_over_pi(vf c) {
  const vf half = set1(0.5f);
  const vf inv_pi = set1(0.318309886183790672f);
  vf a = abs(c);
  vm big = gt(a, half);
  vf z = sel(big, mul(half, sub(set1(1.0f), a)), mul(a, a));
  vf s = sel(big, sqrt(z), a);
  vf p = set1(4.2163199048e-2f);
  p = fma(p, z, set1(2.4181311049e-2f));
  p = fma(p, z, set1(4.5470025998e-2f));
  p = fma(p, z, set1(7.4953002686e-2f));
  p = fma(p, z, set1(1.6666752422e-1f));
  p = fma(mul(p, z), s, s);  // big: asin(√z) (so acos(a) = 2p); small: asin(a)
  vm neg = lt(c, zero());
  vf two_p_pi = mul(add(p, p), inv_pi);
  // big & c > 0: 1 − 2p/π; big & c < 0: 2p/π; small: 1/2 ± p/π
  vf r_big = sel(neg, two_p_pi, sub(set1(1.0f), two_p_pi));
  vf p_pi = mul(p, inv_pi);
  vf r_small = sel(neg, sub(half, p_pi), add(half, p_pi));
  return sel(big, r_big, r_small);
}

// x^k for an integer k >= 0 (square and multiply).
static inline vf powi(vf x, int k) {
  vf r = set1(1.0f);
  vf b = x;
  while (k > 0) {
    if (k & 1) r = mul(r, b);
    k >>= 1;
    if (k) b = mul(b, b);
  }
  return r;
}

}  // namespace mp::simd
