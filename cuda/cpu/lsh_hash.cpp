/*
 * lsh_hash.cpp — SimHash codes on the CPU.
 *
 * Algorithm: the projection x·R is a small GEMM, X[n][d] × R[d][cols_pad]. Only the
 * signs are kept: each 16-column group of a row becomes one uint16 of a per-row bit
 * string, in column order, so bit (t·K + j) of that string is bit j of table t. A code
 * is then read out of the bit string with shifts and a mask, which is integer-exact for
 * every K ≤ 16 (magicpig.md §4 pitfall: the reference's fp16 packing is exact only up
 * to K = 11).
 *
 * Memory layout: R is row-major [d][cols_pad] (columns padded with zeros to a multiple of
 * 64), so one k-step of the micro-kernel loads 64 contiguous columns. Rows are hashed in
 * chunks of CHUNK rows; a chunk's bit strings live in a scratch buffer
 * bits[CHUNK][cols_pad/16 + 2] (uint16) before the codes are unpacked.
 *
 * Micro-kernels (register tiles, accumulators stay in registers over the whole d loop):
 *   AVX-512: 6 rows × 64 columns = 24 zmm accumulators, 4 loads of R + 6 broadcasts per k;
 *            a compare-to-mask turns 16 columns into one uint16 directly.
 *   AVX2:    6 rows × 16 columns = 12 ymm accumulators; movemask gives 8 bits at a time.
 *   scalar:  the same tile shape, plain loops.
 * Sign convention: a projection of exactly 0 (or NaN) gives bit 0.
 */
#include "cpu/lsh_hash.h"

#include <omp.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "common/common.h"
#include "common/task_pool.h"
#include "cpu/lsh_simd.h"

namespace mp::lsh {

// ------------------------------------------------------------
// hyperplanes

void projection(uint64_t seed, int d, int K, int L, float *R) {
  Rng rng(seed);
  size_t n = (size_t)d * (size_t)K * (size_t)L;
  for (size_t i = 0; i < n; i++) R[i] = (float)rng.normal();
}

static std::shared_ptr<Projection> make_padded(const float *R, int d, int K, int L) {
  auto p = std::make_shared<Projection>();
  p->d = d;
  p->K = K;
  p->L = L;
  p->cols = K * L;
  p->cols_pad = (p->cols + 63) / 64 * 64;
  p->R.assign((size_t)d * p->cols_pad, 0.0f);
  for (int k = 0; k < d; k++)
    std::memcpy(&p->R[(size_t)k * p->cols_pad], R + (size_t)k * p->cols, sizeof(float) * p->cols);
  return p;
}

std::shared_ptr<const Projection> Projection::get(uint64_t seed, int d, int K, int L) {
  // Weak cache: a projection lives while some index uses it.
  static std::mutex mu;
  static std::map<std::tuple<uint64_t, int, int, int>, std::weak_ptr<const Projection>> cache;
  auto key = std::make_tuple(seed, d, K, L);
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) {
      if (auto sp = it->second.lock()) return sp;
    }
  }
  std::vector<float> R((size_t)d * K * L);
  projection(seed, d, K, L, R.data());
  std::shared_ptr<Projection> p = make_padded(R.data(), d, K, L);
  p->seed = seed;
  p->seeded = true;
  std::lock_guard<std::mutex> lock(mu);
  for (auto it = cache.begin(); it != cache.end();) {
    if (it->second.expired()) it = cache.erase(it);
    else ++it;
  }
  cache[key] = p;
  return p;
}

std::shared_ptr<const Projection> Projection::from_matrix(const float *R, int d, int K, int L) {
  return make_padded(R, d, K, L);
}

// ------------------------------------------------------------
// kernels

namespace {

constexpr int MR = 6;        // rows per register tile
constexpr int CHUNK = 1536;  // rows per scratch chunk (a multiple of MR)
constexpr int SMALL_ROWS = 512;  // up to this many rows: the task pool, not OpenMP

#if defined(__AVX512F__)
constexpr int NR = 64;  // columns per register tile
// bits[r][c0/16 + j] for rows x[0..MR) (pointers), columns [c0, c0 + 64).
static inline void tile(const float *const *x, int d, const float *R, int ldr, int c0,
                        uint16_t *const *bits) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; r++)
    for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
  const float *rp = R + c0;
  for (int k = 0; k < d; k++, rp += ldr) {
    __m512 r0 = _mm512_loadu_ps(rp), r1 = _mm512_loadu_ps(rp + 16);
    __m512 r2 = _mm512_loadu_ps(rp + 32), r3 = _mm512_loadu_ps(rp + 48);
    for (int r = 0; r < MR; r++) {
      __m512 xv = _mm512_set1_ps(x[r][k]);
      acc[r][0] = _mm512_fmadd_ps(xv, r0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xv, r1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(xv, r2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(xv, r3, acc[r][3]);
    }
  }
  const __m512 z = _mm512_setzero_ps();
  for (int r = 0; r < MR; r++)
    for (int j = 0; j < 4; j++)
      bits[r][c0 / 16 + j] = (uint16_t)_mm512_cmp_ps_mask(acc[r][j], z, _CMP_GT_OQ);
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int NR = 16;
static inline void tile(const float *const *x, int d, const float *R, int ldr, int c0,
                        uint16_t *const *bits) {
  __m256 acc[MR][2];
  for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  const float *rp = R + c0;
  for (int k = 0; k < d; k++, rp += ldr) {
    __m256 r0 = _mm256_loadu_ps(rp), r1 = _mm256_loadu_ps(rp + 8);
    for (int r = 0; r < MR; r++) {
      __m256 xv = _mm256_set1_ps(x[r][k]);
      acc[r][0] = _mm256_fmadd_ps(xv, r0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(xv, r1, acc[r][1]);
    }
  }
  const __m256 z = _mm256_setzero_ps();
  for (int r = 0; r < MR; r++) {
    int lo = _mm256_movemask_ps(_mm256_cmp_ps(acc[r][0], z, _CMP_GT_OQ));
    int hi = _mm256_movemask_ps(_mm256_cmp_ps(acc[r][1], z, _CMP_GT_OQ));
    bits[r][c0 / 16] = (uint16_t)(lo | (hi << 8));
  }
}
#else
constexpr int NR = 16;
static inline void tile(const float *const *x, int d, const float *R, int ldr, int c0,
                        uint16_t *const *bits) {
  float acc[MR][16] = {};
  for (int k = 0; k < d; k++) {
    const float *rp = R + (size_t)k * ldr + c0;
    for (int r = 0; r < MR; r++) {
      float xv = x[r][k];
      for (int j = 0; j < 16; j++) acc[r][j] += xv * rp[j];
    }
  }
  for (int r = 0; r < MR; r++) {
    unsigned m = 0;
    for (int j = 0; j < 16; j++) m |= (unsigned)(acc[r][j] > 0.0f) << j;
    bits[r][c0 / 16] = (uint16_t)m;
  }
}
#endif

}  // namespace

void hash_rows(const Projection &P, const float *x, int64_t n, int64_t ldx, uint16_t *codes,
               int64_t row_stride, int64_t table_stride) {
  if (n <= 0) return;
  const int d = P.d, K = P.K, L = P.L, ldr = P.cols_pad;
  const int words = P.cols_pad / 16 + 2;  // +2: an unpack may read one word past the end
  const int col_tiles = P.cols_pad / NR;
  const uint32_t mask = K >= 16 ? 0xffffu : ((1u << K) - 1u);
  const int64_t chunk = std::min<int64_t>(CHUNK, (n + MR - 1) / MR * MR);
  std::vector<uint16_t> bits((size_t)chunk * words, 0);

  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t rows = std::min<int64_t>(chunk, n - c0);
    const int64_t row_tiles = (rows + MR - 1) / MR;
    const int64_t tiles = row_tiles * col_tiles;
    auto do_tile = [&](int64_t t) {
      const int64_t rt = t / col_tiles;
      const int ct = (int)(t % col_tiles);
      const float *xr[MR];
      uint16_t *br[MR];
      for (int r = 0; r < MR; r++) {
        int64_t row = std::min<int64_t>(rt * MR + r, rows - 1);  // pad with the last row
        xr[r] = x + (c0 + row) * ldx;
        br[r] = &bits[(size_t)(rt * MR + r) * words];
      }
      tile(xr, d, P.R.data(), ldr, ct * NR, br);
    };
    auto unpack = [&](int64_t r) {
      const uint16_t *b = &bits[(size_t)r * words];
      uint16_t *out = codes + (c0 + r) * row_stride;
      for (int t = 0; t < L; t++) {
        const int pos = t * K;
        const int w = pos >> 4, off = pos & 15;
        const uint32_t v = (uint32_t)b[w] | ((uint32_t)b[w + 1] << 16);
        out[(int64_t)t * table_stride] = (uint16_t)((v >> off) & mask);
      }
    };
    if (rows <= SMALL_ROWS) {
      // decode queries: the spinning pool (common/task_pool.h) starts in ~1 µs where an
      // OpenMP team may have to wake its threads
      pool_run((int)tiles, [&](int t) { do_tile(t); });
      for (int64_t r = 0; r < rows; r++) unpack(r);
      continue;
    }
#pragma omp parallel num_threads(threads())
    {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tiles; t++) do_tile(t);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; r++) unpack(r);
    }
  }
}

}  // namespace mp::lsh
