// attention.cpp — exact causal GQA attention, blockwise with a fixed fold order.
//
// Algorithm. The keys a query attends, 0..L-1, are cut into fixed blocks of KB keys
// (block b = keys [b·KB, min((b+1)·KB, L))). For each block and each query head g of the
// KV group:
//   s_t = (q_g · k_t) · scale          (dot product by the rule of simd.h)
//   m   = max_t s_t,  p_t = exp(s_t − m),  l = Σ p_t (double),  o = Σ p_t v_t (float)
// Block partials (m, l, o) are folded left to right, in double:
//   M' = max(M, m),  L' = L·e^(M−M') + l·e^(m−M'),  O' = O·e^(M−M') + o·e^(m−M')
// and the output is O/L with lse2 = (M + ln L)/ln 2. The blocks and the fold order depend
// only on the query's own key count, so a query gives the same bits however the work is
// split, which lets the kernel choose between two schedules freely:
//
//  * tiled (many queries): work items are (KV head, tile of QT consecutive queries); an
//    item walks the key blocks once and, for each block, updates every query of the tile
//    and every query head of the group — a key block is read from memory once per tile
//    and reused from cache by up to QT·G query heads (GQA sharing).
//  * split (few queries, e.g. decode): work items are (query, KV head, key block); the
//    partials go to a scratch array and a second pass folds them. This keeps every core
//    busy on one long sequence (flash-decoding).
//
// Memory layout: q[i][h][d], out[i][h][d], lse2[i][h]; K/V through KvView (attention.h).
#include "cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/common.h"
#include "cpu/simd.h"

namespace mp::cpu {

namespace {

constexpr int64_t KB = 256;  // keys per block (fixed: it decides the numerics)
constexpr int64_t QT = 8;    // queries per tile (tiled schedule)

// y[0..d) += a · x[0..d)
template <class W>
inline void axpy(float *y, float a, const W *x, int32_t dt, int64_t d) {
  const int64_t nv = d - d % VW;
  const vf av = vset1(a);
  for (int64_t i = 0; i < nv; i += VW) vstore(y + i, vfma(av, vload(x + i, dt), vload(y + i)));
  for (int64_t i = nv; i < d; i++) y[i] = __builtin_fmaf(a, load1(x + i, dt), y[i]);
}

// Fold state of one query head.
struct Fold {
  double m;
  double l;
  double *o;  // [d]
};

// Partial of one block for the G heads of a group: m[G], l[G], o[G][d].
template <class W>
void block_partial(const float *qg, int32_t G, int64_t d, float scale, const W *kbase,
                   const W *vbase, int32_t dt, int64_t t_stride, int64_t t0, int64_t t1,
                   float *s /*[G][KB]*/, float *m, double *l, float *o /*[G][d]*/) {
  const int64_t nt = t1 - t0;
  for (int64_t j = 0; j < nt; j++) {
    const W *k = kbase + (t0 + j) * t_stride;
    for (int32_t g = 0; g < G; g++) s[g * KB + j] = dot(k, dt, qg + g * d, d) * scale;
  }
  for (int32_t g = 0; g < G; g++) {
    float *sg = s + g * KB;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < nt; j++) mx = std::max(mx, sg[j]);
    double sum = 0;
    for (int64_t j = 0; j < nt; j++) {
      sg[j] = std::exp(sg[j] - mx);
      sum += sg[j];
    }
    m[g] = mx;
    l[g] = sum;
    std::fill(o + g * d, o + (g + 1) * d, 0.0f);
  }
  for (int64_t j = 0; j < nt; j++) {
    const W *v = vbase + (t0 + j) * t_stride;
    for (int32_t g = 0; g < G; g++) axpy(o + g * d, s[g * KB + j], v, dt, d);
  }
}

inline void fold(Fold &f, bool first, float m, double l, const float *o, int64_t d) {
  if (first) {
    f.m = m;
    f.l = l;
    for (int64_t i = 0; i < d; i++) f.o[i] = o[i];
    return;
  }
  const double mn = std::max(f.m, (double)m);
  const double a = std::exp(f.m - mn), b = std::exp((double)m - mn);
  f.m = mn;
  f.l = f.l * a + l * b;
  for (int64_t i = 0; i < d; i++) f.o[i] = f.o[i] * a + (double)o[i] * b;
}

inline void finish(const Fold &f, int64_t d, float *out, float *lse2) {
  const double inv = 1.0 / f.l;
  for (int64_t i = 0; i < d; i++) out[i] = (float)(f.o[i] * inv);
  if (lse2) *lse2 = (float)((f.m + std::log(f.l)) * 1.4426950408889634);
}

template <class W>
void run(const float *q, int64_t n, int32_t H, int32_t Hkv, int32_t d, int64_t q_pos0,
         int64_t T, const KvView &kv, float *out, float *lse2) {
  const int32_t G = H / Hkv;
  const float scale = (float)(1.0 / std::sqrt((double)d));
  const W *K = (const W *)kv.k;
  const W *V = (const W *)kv.v;
  const int32_t dt = kv.dtype;
  auto nkeys = [&](int64_t i) { return std::min(q_pos0 + i, T - 1) + 1; };
  auto nblocks = [&](int64_t i) { return (nkeys(i) + KB - 1) / KB; };
  const int nth = threads();
  const int64_t ntiles = (n + QT - 1) / QT;
  const int64_t max_blocks = nblocks(n - 1);

  if (ntiles * Hkv >= 2 * (int64_t)nth || max_blocks == 1) {
    // ---------------- tiled schedule
    const int64_t items = ntiles * Hkv;
#pragma omp parallel num_threads(nth) if (items > 1 && n * (q_pos0 + n) * H * d > 32768)
    {
      std::vector<float> s((size_t)G * KB), m(G), o((size_t)G * d);
      std::vector<double> l(G), fo((size_t)QT * G * d);
      std::vector<Fold> folds((size_t)QT * G);
      for (size_t i = 0; i < folds.size(); i++) folds[i].o = fo.data() + i * d;
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < items; it++) {
        const int32_t h = (int32_t)(it % Hkv);
        const int64_t i0 = (it / Hkv) * QT, i1 = std::min(n, i0 + QT);
        const W *kb = K + h * kv.h_stride;
        const W *vb = V + h * kv.h_stride;
        const int64_t nb = nblocks(i1 - 1);
        for (int64_t b = 0; b < nb; b++) {
          for (int64_t i = i0; i < i1; i++) {
            const int64_t L = nkeys(i);
            if (b * KB >= L) continue;
            const float *qg = q + (i * H + (int64_t)h * G) * d;
            block_partial<W>(qg, G, d, scale, kb, vb, dt, kv.t_stride, b * KB,
                             std::min(L, (b + 1) * KB), s.data(), m.data(), l.data(), o.data());
            for (int32_t g = 0; g < G; g++)
              fold(folds[(size_t)(i - i0) * G + g], b == 0, m[g], l[g], o.data() + g * d, d);
          }
        }
        for (int64_t i = i0; i < i1; i++)
          for (int32_t g = 0; g < G; g++) {
            const int64_t hq = (int64_t)h * G + g;
            finish(folds[(size_t)(i - i0) * G + g], d, out + (i * H + hq) * d,
                   lse2 ? lse2 + i * H + hq : nullptr);
          }
      }
    }
    return;
  }

  // ---------------- split schedule: partials per (query, kv head, block), then fold
  const int64_t rows = n * Hkv;
  const size_t stride = (size_t)max_blocks * G;  // partials per (query, kv head)
  std::vector<float> pm((size_t)rows * stride), po((size_t)rows * stride * d);
  std::vector<double> pl((size_t)rows * stride);
  const int64_t items = rows * max_blocks;
#pragma omp parallel num_threads(nth)
  {
    std::vector<float> s((size_t)G * KB);
    std::vector<double> fo((size_t)d);
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; it++) {
      const int64_t row = it / max_blocks, b = it % max_blocks;
      const int64_t i = row / Hkv;
      const int32_t h = (int32_t)(row % Hkv);
      const int64_t L = nkeys(i);
      if (b * KB >= L) continue;
      const size_t base = (size_t)row * stride + (size_t)b * G;
      block_partial<W>(q + (i * H + (int64_t)h * G) * d, G, d, scale, K + h * kv.h_stride,
                       V + h * kv.h_stride, dt, kv.t_stride, b * KB, std::min(L, (b + 1) * KB),
                       s.data(), pm.data() + base, pl.data() + base, po.data() + base * d);
    }
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows * G; row++) {
      const int64_t r = row / G;
      const int32_t g = (int32_t)(row % G);
      const int64_t i = r / Hkv;
      const int32_t h = (int32_t)(r % Hkv);
      Fold f{0, 0, fo.data()};
      const int64_t nb = nblocks(i);
      for (int64_t b = 0; b < nb; b++) {
        const size_t idx = (size_t)r * stride + (size_t)b * G + g;
        fold(f, b == 0, pm[idx], pl[idx], po.data() + idx * d, d);
      }
      const int64_t hq = (int64_t)h * G + g;
      finish(f, d, out + (i * H + hq) * d, lse2 ? lse2 + i * H + hq : nullptr);
    }
  }
}

}  // namespace

void attention(const float *q, int64_t n, int32_t H, int32_t Hkv, int32_t d, int64_t q_pos0,
               int64_t T, const KvView &kv, float *out, float *lse2) {
  if (n <= 0) return;
  MP_CHECK(T >= 1 && q_pos0 >= 0 && Hkv > 0 && H % Hkv == 0 && d > 0, MP_ERR_INTERNAL,
           "attention: bad shape");
  if (kv.dtype == MP_DTYPE_F32)
    run<float>(q, n, H, Hkv, d, q_pos0, T, kv, out, lse2);
  else
    run<uint16_t>(q, n, H, Hkv, d, q_pos0, T, kv, out, lse2);
}

}  // namespace mp::cpu
