// simd.h — the few vector primitives the CPU kernels share, for three targets picked at
// compile time (-march=native): AVX-512F (16 floats; the GPU server's Xeon), AVX2+FMA+F16C
// (8 floats; the dev/CI EPYCs), and a scalar fallback (1 float).
//
// Reductions in the kernels follow one rule so results do not depend on blocking or on
// the thread count: a dot product of length n keeps ONE vector accumulator over the first
// n - n % VW elements (fused multiply-add, in order), reduces it with vhsum() (a fixed
// tree), then adds the remaining elements one by one, in order. Every kernel path (one
// token or many, one row or many) computes each dot product with exactly that sequence.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
// GCC 12 reports its own _mm512_undefined_*() placeholders as uninitialised (PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include "common/common.h"

namespace mp::cpu {

#if defined(__AVX512F__)

constexpr int VW = 16;
using vf = __m512;
static inline vf vzero() { return _mm512_setzero_ps(); }
static inline vf vset1(float x) { return _mm512_set1_ps(x); }
static inline vf vload(const float *p) { return _mm512_loadu_ps(p); }
static inline vf vload(const uint16_t *p, int32_t dtype) {  // BF16 or F16
  __m256i h = _mm256_loadu_si256((const __m256i *)p);
  if (dtype == MP_DTYPE_F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
static inline void vstore(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline float vhsum(vf v) {
  // halves, then the AVX2 tree below
  __m256 lo = _mm512_castps512_ps256(v);
  __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  __m256 s8 = _mm256_add_ps(lo, hi);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
  return _mm_cvtss_f32(s1);
}

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

constexpr int VW = 8;
using vf = __m256;
static inline vf vzero() { return _mm256_setzero_ps(); }
static inline vf vset1(float x) { return _mm256_set1_ps(x); }
static inline vf vload(const float *p) { return _mm256_loadu_ps(p); }
static inline vf vload(const uint16_t *p, int32_t dtype) {
  __m128i h = _mm_loadu_si128((const __m128i *)p);
  if (dtype == MP_DTYPE_F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline void vstore(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline float vhsum(vf v) {
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
  return _mm_cvtss_f32(s1);
}

#else

constexpr int VW = 1;
struct vf {
  float x;
};
static inline vf vzero() { return {0.0f}; }
static inline vf vset1(float x) { return {x}; }
static inline vf vload(const float *p) { return {*p}; }
static inline vf vload(const uint16_t *p, int32_t dtype) {
  return {dtype == MP_DTYPE_F16 ? f16_to_f32(*p) : bf16_to_f32(*p)};
}
static inline void vstore(float *p, vf v) { *p = v.x; }
static inline vf vfma(vf a, vf b, vf c) { return {__builtin_fmaf(a.x, b.x, c.x)}; }
static inline vf vmul(vf a, vf b) { return {a.x * b.x}; }
static inline vf vadd(vf a, vf b) { return {a.x + b.x}; }
static inline vf vsub(vf a, vf b) { return {a.x - b.x}; }
static inline float vhsum(vf v) { return v.x; }

#endif

// ------------------------------------------------------------
// exp: Cody–Waite reduction x = n·ln2 + r, |r| <= ln2/2, and a degree-6 polynomial
// (the classic single-precision minimax coefficients), then scaling by 2^n. About 1 ulp
// over the range; inputs below −87.3 give ≈ 1e-38 (never −∞ here: callers pass
// s − max ≤ 0 for finite scores). vexp and exp1 compute the same operations, so a value
// gets the same bits in a vector lane or in a scalar tail.

static inline float exp1(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float n = __builtin_nearbyintf(x * 1.44269504088896341f);
  float r = __builtin_fmaf(n, -0.693359375f, x);
  r = __builtin_fmaf(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = __builtin_fmaf(p, r, 1.3981999507e-3f);
  p = __builtin_fmaf(p, r, 8.3334519073e-3f);
  p = __builtin_fmaf(p, r, 4.1665795894e-2f);
  p = __builtin_fmaf(p, r, 1.6666665459e-1f);
  p = __builtin_fmaf(p, r, 5.0000001201e-1f);
  const float r2 = r * r;
  p = __builtin_fmaf(p, r2, r) + 1.0f;
  const int32_t e = (int32_t)n + 127;
  uint32_t bits = (uint32_t)e << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

#if defined(__AVX512F__)
static inline vf vexp(vf x) {
  x = _mm512_max_ps(_mm512_min_ps(x, vset1(88.3f)), vset1(-87.3f));
  const vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, vset1(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf r = vfma(n, vset1(-0.693359375f), x);
  r = vfma(n, vset1(2.12194440e-4f), r);
  vf p = vset1(1.9875691500e-4f);
  p = vfma(p, r, vset1(1.3981999507e-3f));
  p = vfma(p, r, vset1(8.3334519073e-3f));
  p = vfma(p, r, vset1(4.1665795894e-2f));
  p = vfma(p, r, vset1(1.6666665459e-1f));
  p = vfma(p, r, vset1(5.0000001201e-1f));
  const vf r2 = vmul(r, r);
  p = vadd(vfma(p, r2, r), vset1(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return vmul(p, _mm512_castsi512_ps(e));
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
static inline vf vexp(vf x) {
  x = _mm256_max_ps(_mm256_min_ps(x, vset1(88.3f)), vset1(-87.3f));
  const vf n = _mm256_round_ps(_mm256_mul_ps(x, vset1(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf r = vfma(n, vset1(-0.693359375f), x);
  r = vfma(n, vset1(2.12194440e-4f), r);
  vf p = vset1(1.9875691500e-4f);
  p = vfma(p, r, vset1(1.3981999507e-3f));
  p = vfma(p, r, vset1(8.3334519073e-3f));
  p = vfma(p, r, vset1(4.1665795894e-2f));
  p = vfma(p, r, vset1(1.6666665459e-1f));
  p = vfma(p, r, vset1(5.0000001201e-1f));
  const vf r2 = vmul(r, r);
  p = vadd(vfma(p, r2, r), vset1(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return vmul(p, _mm256_castsi256_ps(e));
}
#else
static inline vf vexp(vf x) { return {exp1(x.x)}; }
#endif

// One element of a weight/KV row as float.
static inline float load1(const float *p, int32_t) { return *p; }
static inline float load1(const uint16_t *p, int32_t dtype) {
  return dtype == MP_DTYPE_F16 ? f16_to_f32(*p) : bf16_to_f32(*p);
}
static inline vf vload(const float *p, int32_t) { return vload(p); }

// Dot product of x[n] (float) and w[n] (float or 16-bit dtype) by the rule above.
template <class W>
static inline float dot(const W *w, int32_t dtype, const float *x, int64_t n) {
  const int64_t nv = n - n % VW;
  vf acc = vzero();
  for (int64_t i = 0; i < nv; i += VW) acc = vfma(vload(w + i, dtype), vload(x + i), acc);
  float s = vhsum(acc);
  for (int64_t i = nv; i < n; i++) s = __builtin_fmaf(load1(w + i, dtype), x[i], s);
  return s;
}

}  // namespace mp::cpu

namespace mp::cpu {

// dst[i] = bf16(src[i]), round to nearest even (f32_to_bf16); the AVX-512 BF16 instruction
// rounds the same way for normal numbers (it flushes subnormal inputs to zero).
static inline void to_bf16(const float *src, uint16_t *dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512BF16__) && defined(__AVX512VL__)
  for (; i + 16 <= n; i += 16) {
    __m256bh b = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
    _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)b);
  }
#endif
  for (; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}

}  // namespace mp::cpu
