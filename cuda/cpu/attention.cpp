// attention.cpp — exact causal GQA attention, blockwise with a fixed fold order.
//
// Algorithm. The keys a query attends, 0..L-1, are cut into fixed blocks of KB keys
// (block b = keys [b·KB, min((b+1)·KB, L))). For each block and each query head g of the
// KV group:
//   s_t = (q_g · k_t) · scale          (dot product by the rule of simd.h, 4 keys at once)
//   m   = max_t s_t,  p_t = exp(s_t − m)  (simd.h vexp, ~1 ulp),  l = Σ p_t (double),
//   o   = Σ p_t v_t                     (float, one FMA chain per element, in key order)
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

#include <omp.h>

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

// Scores of one query head against 4 keys: 4 independent FMA chains (one per key) over the
// vector part, the simd.h reduction, then the scalar tail in order.
template <class W>
inline void dot4(const W *k0, int64_t ks, int32_t dt, const float *q, int64_t d, float *s) {
  const int64_t nv = d - d % VW;
  vf a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
  for (int64_t i = 0; i < nv; i += VW) {
    const vf qv = vload(q + i);
    a0 = vfma(vload(k0 + i, dt), qv, a0);
    a1 = vfma(vload(k0 + ks + i, dt), qv, a1);
    a2 = vfma(vload(k0 + 2 * ks + i, dt), qv, a2);
    a3 = vfma(vload(k0 + 3 * ks + i, dt), qv, a3);
  }
  float r[4] = {vhsum(a0), vhsum(a1), vhsum(a2), vhsum(a3)};
  for (int j = 0; j < 4; j++)
    for (int64_t i = nv; i < d; i++) r[j] = __builtin_fmaf(load1(k0 + j * ks + i, dt), q[i], r[j]);
  for (int j = 0; j < 4; j++) s[j] = r[j];
}

// o[0..d) = Σ_j p[j] · v_j for j < nt, in order of j (one FMA chain per element), keeping
// up to 4 vectors of o in registers while the keys stream by.
template <class W, int NV>
inline void pv_chunk(const float *p, const W *v, int64_t vs, int32_t dt, int64_t nt, float *o) {
  vf acc[NV];
  for (int c = 0; c < NV; c++) acc[c] = vzero();
  for (int64_t j = 0; j < nt; j++) {
    const vf pj = vset1(p[j]);
    const W *vj = v + j * vs;
    for (int c = 0; c < NV; c++) acc[c] = vfma(pj, vload(vj + c * VW, dt), acc[c]);
  }
  for (int c = 0; c < NV; c++) vstore(o + c * VW, acc[c]);
}

template <class W>
inline void pv(const float *p, const W *v, int64_t vs, int32_t dt, int64_t nt, int64_t d,
               float *o) {
  int64_t i = 0;
  for (; i + 4 * VW <= d; i += 4 * VW) pv_chunk<W, 4>(p, v + i, vs, dt, nt, o + i);
  for (; i + VW <= d; i += VW) pv_chunk<W, 1>(p, v + i, vs, dt, nt, o + i);
  for (; i < d; i++) {
    float a = 0.0f;
    for (int64_t j = 0; j < nt; j++) a = __builtin_fmaf(p[j], load1(v + j * vs + i, dt), a);
    o[i] = a;
  }
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
  const W *k = kbase + t0 * t_stride;
  for (int32_t g = 0; g < G; g++) {
    const float *q = qg + g * d;
    float *sg = s + g * KB;
    int64_t j = 0;
    for (; j + 4 <= nt; j += 4) dot4(k + j * t_stride, t_stride, dt, q, d, sg + j);
    for (; j < nt; j++) sg[j] = dot(k + j * t_stride, dt, q, d);
    float mx = -std::numeric_limits<float>::infinity();
    for (j = 0; j < nt; j++) mx = std::max(mx, sg[j] *= scale);
    const vf mv = vset1(mx);
    j = 0;
    for (; j + VW <= nt; j += VW) vstore(sg + j, vexp(vsub(vload(sg + j), mv)));
    for (; j < nt; j++) sg[j] = exp1(sg[j] - mx);
    double sum = 0;
    for (j = 0; j < nt; j++) sum += sg[j];
    m[g] = mx;
    l[g] = sum;
    pv(sg, vbase + t0 * t_stride, t_stride, dt, nt, d, o + g * d);
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
    // Per-thread scratch, allocated here: nothing may throw inside a parallel region.
    const size_t nf = (size_t)G * KB + G + (size_t)G * d, nd = G + (size_t)QT * G * d;
    std::vector<float> fscratch(nf * nth);
    std::vector<double> dscratch(nd * nth);
    std::vector<Fold> fscratch_folds((size_t)QT * G * nth);
#pragma omp parallel num_threads(nth) if (items > 1 && n * (q_pos0 + n) * H * d > 32768)
    {
      const int tid = omp_get_thread_num();
      float *s = fscratch.data() + nf * tid, *m = s + (size_t)G * KB, *o = m + G;
      double *l = dscratch.data() + nd * tid, *fo = l + G;
      Fold *folds = fscratch_folds.data() + (size_t)QT * G * tid;
      for (size_t i = 0; i < (size_t)QT * G; i++) folds[i].o = fo + i * d;
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
                             std::min(L, (b + 1) * KB), s, m, l, o);
            for (int32_t g = 0; g < G; g++)
              fold(folds[(size_t)(i - i0) * G + g], b == 0, m[g], l[g], o + g * d, d);
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
  std::vector<float> sscratch((size_t)G * KB * nth);
  std::vector<double> oscratch((size_t)d * nth);
#pragma omp parallel num_threads(nth)
  {
    float *s = sscratch.data() + (size_t)G * KB * omp_get_thread_num();
    double *fo = oscratch.data() + (size_t)d * omp_get_thread_num();
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
                       s, pm.data() + base, pl.data() + base, po.data() + base * d);
    }
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows * G; row++) {
      const int64_t r = row / G;
      const int32_t g = (int32_t)(row % G);
      const int64_t i = r / Hkv;
      const int32_t h = (int32_t)(r % Hkv);
      Fold f{0, 0, fo};
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
