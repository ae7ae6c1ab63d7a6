/*
 * sampled_attention.cpp — LSH collision retrieval and importance-weighted sampled
 * attention on the CPU (magicpig.md §6–8).
 *
 * Work split. One task per (sequence b, KV head, token chunk): a chunk is a contiguous
 * token range inside one block of the index (a power of two ≤ 65,536, chosen so that a
 * call has >= 4 tasks per thread where it can), or a range of the unsorted tail. A task
 * serves all G = H/Hkv query heads of its KV head at once:
 *
 *   A. collisions. For each query head g and table t, the query's bucket in this block
 *      is sorted by token id, so the chunk's part of it is a contiguous sub-range (binary
 *      search for its start, scan to its end). A per-chunk uint8 counter per token
 *      counts hits; the second hit of head g sets bit g of the token's head mask and, if
 *      the mask was empty, appends the token to the chunk's union list U. The counters
 *      are cleared by rescanning the same sub-ranges (still in L1), the masks by walking
 *      U: no memset proportional to the context. Tail tokens compare their L codes with
 *      each head's query codes, 16 at a time.
 *   B. scores. Each key row in U is gathered once (converted to fp32 once when stored as
 *      bf16) and dotted with the query of every head whose bit is set: s = q·k in fp32.
 *   C. weights, per head, vectorised over its sample: s̃ = s − q·μ (= q·(k − μ)),
 *      cos = s̃ / (‖q‖·‖k − μ‖) clamped to [−1, 1], p = (1 − acos(cos)/π)^K,
 *      u = −expm1((L−1)·log1p(−p) + log1p((L−1)·p)) (a 4-term series of ln u when
 *      (L−1)·p < 0.05, where that form cancels), ℓ = s/√d − ln(u + eps); max-subtracted
 *      exponentials.
 *   D. values. Each V row in U is gathered once and accumulated, in fp32, into the
 *      output of every head that sampled it.
 *
 *   Each task leaves, per head, a partial softmax state (max m, sum l, accumulator);
 *   the states of a (b, head) are merged by log-sum-exp after the parallel region:
 *   out = Σ acc_c·e^(m_c − M) / Σ l_c·e^(m_c − M), lse2 = (M + ln Σ l_c·e^(m_c − M))·log2 e.
 *
 * The logits use the stored keys (s = q·k, not q·(k − μ)): centering only changes the
 * angles the hash and u see, while the output and the base-2 LSE stay those of the
 * stored keys, so they merge directly with an exact attention over other stored keys.
 *
 * Memory traffic per task: the bucket offsets (8 B per head and table), the scanned
 * entries (2 B each), then one K row and one V row (2·d·2 B in bf16) and one norm per
 * union token. Rows are prefetched PREFETCH tokens ahead; the gather is the bound.
 */
#include "cpu/sampled_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/common.h"
#include "cpu/simd.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace mp::lsh {

namespace S = mp::simd;
using S::vf;
using S::vm;

namespace {

constexpr int PREFETCH = 8;             // union tokens ahead whose rows are prefetched
constexpr int64_t MIN_CHUNK = 2048;     // smallest task token range
constexpr uint16_t QUERY_PAD = 0xffff;  // query code padding (tail rows pad with 0)

// ------------------------------------------------------------
// collision probability u(cos) and the logit correction

struct UConst {
  int K = 10, L = 150;
  float eps = 1e-4f;
  float lnC2 = 0, Lm1 = 0, Lm2 = 0, c1 = 0, c2 = 0, c3 = 0;
  UConst(int K_, int L_, float eps_) : K(K_), L(L_), eps(eps_) {
    const double l = L;
    lnC2 = (float)std::log(l * (l - 1.0) / 2.0);
    Lm1 = (float)(l - 1.0);
    Lm2 = (float)(l - 2.0);
    c1 = (float)((l - 2.0) / 3.0);
    c2 = (float)((l - 2.0) * (l - 3.0) / 12.0);
    c3 = (float)((l - 2.0) * (l - 3.0) * (l - 4.0) / 60.0);
  }
};

// u and lnw = ln(u + eps) (eps = 0: ln u, floored at −100) for W cosines in [−1, 1].
static inline void u_vec(const UConst &c, vf cosv, vf *u_out, vf *lnw_out) {
  const vf one = S::set1(1.0f), zero = S::zero();
  vf r = S::one_minus_acos_over_pi(cosv);
  vf p = S::powi(r, c.K);
  vf x = S::mul(S::set1(c.Lm1), p);
  // (1 − p)^(L−1)·(1 + (L−1)p) = e^a, a ≤ 0
  vf a = S::add(S::mul(S::set1(c.Lm1), S::log1p(S::sub(zero, p))), S::log1p(x));
  vf ub = S::max(S::sub(zero, S::expm1_neg(S::min(a, zero))), zero);
  vm small = S::lt(x, S::set1(0.05f));
  vf u = ub;
  vf lnu_small = zero;
  if (S::any(small)) {
    // u = C(L,2)·p²·(1−p)^(L−2)·Σ_m 2/((m+1)(m+2))·C(L−2,m)·(p/(1−p))^m, 4 terms
    vf qq = S::div(p, S::max(S::sub(one, p), S::set1(1e-30f)));
    vf ser = S::fma(qq, S::set1(c.c3), S::set1(c.c2));
    ser = S::fma(qq, ser, S::set1(c.c1));
    ser = S::fma(qq, ser, one);
    lnu_small = S::add(S::set1(c.lnC2), S::mul(S::set1(2.0f * (float)c.K), S::log(r)));
    lnu_small = S::fma(S::set1(c.Lm2), S::log1p(S::sub(zero, p)), lnu_small);
    lnu_small = S::add(lnu_small, S::log(ser));
    u = S::sel(small, S::exp(lnu_small), ub);
  }
  vf lnw;
  if (c.eps > 0.0f) {
    lnw = S::log(S::add(u, S::set1(c.eps)));
  } else {
    lnw = S::sel(small, lnu_small, S::log(ub));
    lnw = S::max(lnw, S::set1(-100.0f));
  }
  *u_out = u;
  *lnw_out = lnw;
}

// The same in float64 scalar code (FLAG_EXACT_U and the reference for the vector path).
static void u_exact(const UConst &c, double cosv, double *u_out, double *lnw_out) {
  const double cl = std::min(1.0, std::max(-1.0, cosv));
  const double r = cl >= 0 ? 1.0 - std::acos(cl) / M_PI : std::acos(-cl) / M_PI;
  const double p = std::pow(r, c.K);
  const double L = c.L;
  const double x = (L - 1.0) * p;
  double u, lnu;
  if (x < 1e-3) {
    const double q = p / (1.0 - p);
    const double ser =
        1.0 + q * ((L - 2.0) / 3.0 + q * ((L - 2.0) * (L - 3.0) / 12.0 +
                                         q * (L - 2.0) * (L - 3.0) * (L - 4.0) / 60.0));
    lnu = std::log(L * (L - 1.0) / 2.0) + 2.0 * c.K * std::log(r) +
          (L - 2.0) * std::log1p(-p) + std::log(ser);
    u = std::exp(lnu);
  } else {
    u = -std::expm1((L - 1.0) * std::log1p(-p) + std::log1p(x));
    lnu = std::log(u);
  }
  *u_out = u;
  *lnw_out = c.eps > 0 ? std::log(u + (double)c.eps) : std::max(lnu, -100.0);
}

// ell[i] = base_i·scale − ln(u_i + eps) for a head's sample (in place over s).
//   s[i]  = q·k_i (raw scores), kn[i] = ‖k_i − μ‖
//   s̃_i = s_i − qmu, cos_i = s̃_i / (qn·kn_i); base_i = s_i, or s̃_i when base_centered.
static void log_weights(const UConst &c, int32_t flags, int64_t n, float *s, const float *kn,
                        float qmu, float qn, float scale, bool base_centered) {
  if (flags & FLAG_EXACT_U) {
    for (int64_t i = 0; i < n; i++) {
      const double sc = (double)s[i] - qmu;
      const double den = (double)qn * kn[i];
      const double base = base_centered ? sc : (double)s[i];
      if (flags & FLAG_FORCE_U1) {
        s[i] = (float)(base * scale);
        continue;
      }
      double u, lnw;
      u_exact(c, den > 0 ? sc / den : 0.0, &u, &lnw);
      s[i] = (float)(base * scale - lnw);
    }
    return;
  }
  const vf vqmu = S::set1(qmu), vqn = S::set1(qn), vscale = S::set1(scale);
  const vf one = S::set1(1.0f), mone = S::set1(-1.0f), zero = S::zero();
  for (int64_t i = 0; i < n; i += S::W) {
    const int m = (int)std::min<int64_t>(S::W, n - i);
    vf sv = m == S::W ? S::load(s + i) : S::load_n(s + i, m);
    vf base = sv;
    vf ell;
    if (flags & FLAG_FORCE_U1) {
      if (base_centered) base = S::sub(sv, vqmu);
      ell = S::mul(base, vscale);
    } else {
      vf kv = m == S::W ? S::load(kn + i) : S::load_n(kn + i, m);
      vf sc = S::sub(sv, vqmu);
      vf den = S::mul(vqn, kv);
      vm ok = S::gt(den, zero);
      vf cosv = S::div(sc, S::sel(ok, den, one));
      cosv = S::sel(ok, S::min(S::max(cosv, mone), one), zero);
      vf u, lnw;
      u_vec(c, cosv, &u, &lnw);
      if (base_centered) base = sc;
      ell = S::sub(S::mul(base, vscale), lnw);
    }
    if (m == S::W) S::store(s + i, ell);
    else S::store_n(s + i, ell, m);
  }
}

// ------------------------------------------------------------
// small vector helpers

static inline float dot(const float *a, const float *b, int d) {
  vf acc0 = S::zero(), acc1 = S::zero();
  int i = 0;
  for (; i + 2 * S::W <= d; i += 2 * S::W) {
    acc0 = S::fma(S::load(a + i), S::load(b + i), acc0);
    acc1 = S::fma(S::load(a + i + S::W), S::load(b + i + S::W), acc1);
  }
  for (; i + S::W <= d; i += S::W) acc0 = S::fma(S::load(a + i), S::load(b + i), acc0);
  float s = S::hsum(S::add(acc0, acc1));
  for (; i < d; i++) s += a[i] * b[i];
  return s;
}

// y += w·x
static inline void axpy(float w, const float *x, float *y, int d) {
  const vf wv = S::set1(w);
  int i = 0;
  for (; i + S::W <= d; i += S::W) S::store(y + i, S::fma(wv, S::load(x + i), S::load(y + i)));
  for (; i < d; i++) y[i] += w * x[i];
}

static inline void bf16_row(const uint16_t *src, float *dst, int d) {
  int i = 0;
  for (; i + S::W <= d; i += S::W) S::store(dst + i, S::load_bf16(src + i));
  for (; i < d; i++) dst[i] = bf16_to_f32(src[i]);
}

static inline void prefetch_row(const void *p, int bytes) {
  const char *c = (const char *)p;
  for (int o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 3);
}

// Number of positions where two padded code rows agree.
static inline int count_eq(const uint16_t *a, const uint16_t *b, int Lp) {
  int n = 0;
#if defined(__AVX512BW__)
  for (int t = 0; t < Lp; t += 32) {
    if (t + 32 <= Lp) {
      __m512i x = _mm512_loadu_si512((const void *)(a + t));
      __m512i y = _mm512_loadu_si512((const void *)(b + t));
      n += __builtin_popcount(_mm512_cmpeq_epi16_mask(x, y));
    } else {
      __m256i x = _mm256_loadu_si256((const __m256i *)(a + t));
      __m256i y = _mm256_loadu_si256((const __m256i *)(b + t));
      n += __builtin_popcount((unsigned)_mm256_movemask_epi8(_mm256_cmpeq_epi16(x, y))) / 2;
    }
  }
#elif defined(__AVX2__)
  for (int t = 0; t < Lp; t += 16) {
    __m256i x = _mm256_loadu_si256((const __m256i *)(a + t));
    __m256i y = _mm256_loadu_si256((const __m256i *)(b + t));
    n += __builtin_popcount((unsigned)_mm256_movemask_epi8(_mm256_cmpeq_epi16(x, y))) / 2;
  }
#else
  for (int t = 0; t < Lp; t++) n += a[t] == b[t];
#endif
  return n;
}

// ------------------------------------------------------------
// the call context and its tasks

struct Task {
  int b, hkv;
  int blk;         // block index, or −1 for the tail
  int64_t lo, hi;  // global token ids [lo, hi)
};

enum class Mode { RETRIEVE, ATTEND };

struct Ctx {
  const Batch *batch;
  Mode mode;
  int32_t flags;
  int Hkv, G, d, H, B;
  float scale;
  // per (b, h): padded query codes [Lp], effective query [d], ‖q‖, q·μ
  std::vector<uint16_t> qc;
  std::vector<int> qc_stride;  // Lp of sequence b
  std::vector<float> qv;
  std::vector<float> qn, qmu;
  // explicit samples: per (b, h) sorted unique ids
  std::vector<std::vector<int32_t>> sets;
  bool use_sets = false;
  std::vector<Task> tasks;
  std::vector<int> task_begin;  // [B·Hkv + 1]
  // results per (task, g)
  std::vector<float> res_m, res_l, res_acc;
  std::vector<int32_t> res_nnz;
  std::vector<std::vector<int32_t>> res_list;  // RETRIEVE
  std::vector<Stats> task_stats;
};

// Per-thread scratch, reused across tasks and calls. cnt and hm are all-zero between tasks.
struct Scratch {
  std::vector<uint8_t> cnt;
  std::vector<uint32_t> hm;
  std::vector<int32_t> U;
  std::vector<uint32_t> rs, re;  // per table: scanned entry range [rs, re)
  std::vector<float> s, kn;      // per-head samples, flat
  std::vector<float> kf, vf_, acc;
  void reserve(int64_t chunk, int L, int G, int d) {
    if ((int64_t)cnt.size() < chunk) {
      cnt.resize(chunk, 0);
      hm.resize(chunk, 0);
    }
    if ((int)rs.size() < L) {
      rs.resize(L);
      re.resize(L);
    }
    if ((int)kf.size() < d) {
      kf.resize(d);
      vf_.resize(d);
    }
    if ((int64_t)acc.size() < (int64_t)G * d) acc.resize((size_t)G * d);
  }
};

static Scratch &scratch() {
  static thread_local Scratch s;
  return s;
}

// Phase A over one task: fills sc.U and sc.hm, returns per-head sample counts.
static void collect(const Ctx &cx, const Task &tk, Scratch &sc, int32_t *nnz, Stats &st) {
  const Index &I = *cx.batch->idx[tk.b];
  const HeadIndex &hd = I.head(tk.hkv);
  const int G = cx.G, H = cx.H;
  const int64_t n = tk.hi - tk.lo;
  sc.U.clear();
  for (int g = 0; g < G; g++) nnz[g] = 0;
  auto mark = [&](int64_t i, int g) {
    const uint32_t bit = 1u << g;
    uint32_t m = sc.hm[i];
    if (m & bit) return;
    if (!m) sc.U.push_back((int32_t)i);
    sc.hm[i] = m | bit;
    nnz[g]++;
  };
  if (cx.use_sets) {
    for (int g = 0; g < G; g++) {
      const std::vector<int32_t> &set = cx.sets[(size_t)tk.b * H + tk.hkv * G + g];
      auto it = std::lower_bound(set.begin(), set.end(), (int32_t)tk.lo);
      for (; it != set.end() && *it < tk.hi; ++it) mark(*it - tk.lo, g);
    }
    return;
  }
  if (cx.flags & FLAG_RETRIEVE_ALL) {
    const uint32_t all = G >= 32 ? 0xffffffffu : ((1u << G) - 1u);
    sc.U.resize(n);
    for (int64_t i = 0; i < n; i++) {
      sc.U[i] = (int32_t)i;
      sc.hm[i] = all;
    }
    for (int g = 0; g < G; g++) nnz[g] = (int32_t)n;
    return;
  }
  const int L = I.params().L;
  const int Lp = cx.qc_stride[tk.b];
  if (tk.blk < 0) {
    // tail: compare code rows
    const uint16_t *tail = hd.tail.data();
    const int64_t nb = I.n_blocked();
    for (int64_t tok = tk.lo; tok < tk.hi; tok++) {
      const uint16_t *row = tail + (size_t)(tok - nb) * Lp;
      for (int g = 0; g < G; g++) {
        const uint16_t *qg = &cx.qc[((size_t)tk.b * H + tk.hkv * G + g) * Lp];
        if (count_eq(row, qg, Lp) >= 2) mark(tok - tk.lo, g);
      }
    }
    st.entries += n;
    st.bytes += n * Lp * 2;
    return;
  }
  const Block &blk = hd.blocks[tk.blk];
  const int NB1 = (1 << I.params().K) + 1;
  const uint32_t lo = (uint32_t)(tk.lo - blk.start), hi = (uint32_t)(tk.hi - blk.start);
  const bool whole = lo == 0 && hi == (uint32_t)blk.n;
  uint8_t *cnt = sc.cnt.data();
  for (int g = 0; g < G; g++) {
    const uint16_t *qg = &cx.qc[((size_t)tk.b * H + tk.hkv * G + g) * Lp];
    const uint32_t bit = 1u << g;
    // locate the chunk's part of each bucket (prefetch first, then search)
    for (int t = 0; t < L; t++)
      __builtin_prefetch(&blk.offsets[(size_t)t * NB1 + qg[t]], 0, 3);
    for (int t = 0; t < L; t++) {
      const uint32_t *o = &blk.offsets[(size_t)t * NB1 + qg[t]];
      sc.rs[t] = o[0];
      sc.re[t] = o[1];
      if (!whole && o[1] > o[0]) {
        const uint16_t *e = &blk.entries[(size_t)t * blk.n];
        const uint32_t guess = o[0] + (uint32_t)((uint64_t)(o[1] - o[0]) * lo / blk.n);
        __builtin_prefetch(e + guess, 0, 3);
      }
    }
    int64_t scanned = 0;
    for (int t = 0; t < L; t++) {
      const uint16_t *e = &blk.entries[(size_t)t * blk.n];
      uint32_t s = sc.rs[t], end = sc.re[t];
      if (!whole) {
        // first entry >= lo (branch-free binary search), then stop at hi
        uint32_t len = end - s;
        const uint16_t *base = e + s;
        while (len > 1) {
          uint32_t half = len / 2;
          base = base[half - 1] < lo ? base + half : base;
          len -= half;
        }
        if (len == 1 && *base < lo) base++;
        s = (uint32_t)(base - e);
        uint32_t j = s;
        while (j < end && e[j] < hi) j++;
        end = j;
        sc.rs[t] = s;
        sc.re[t] = end;
      }
      scanned += end - s;
      for (uint32_t j = s; j < end; j++) {
        const uint32_t i = e[j] - lo;
        if (++cnt[i] == 2) {
          uint32_t m = sc.hm[i];
          if (!(m & bit)) {
            if (!m) sc.U.push_back((int32_t)i);
            sc.hm[i] = m | bit;
            nnz[g]++;
          }
        }
      }
    }
    for (int t = 0; t < L; t++) {
      const uint16_t *e = &blk.entries[(size_t)t * blk.n];
      for (uint32_t j = sc.rs[t]; j < sc.re[t]; j++) cnt[e[j] - lo] = 0;
    }
    st.entries += scanned;
    st.bytes += scanned * 2 + (int64_t)L * 8;
  }
}

static void run_task(Ctx &cx, int ti) {
  const Task &tk = cx.tasks[ti];
  const Index &I = *cx.batch->idx[tk.b];
  const HeadIndex &hd = I.head(tk.hkv);
  const int G = cx.G, H = cx.H, d = cx.d;
  Scratch &sc = scratch();
  sc.reserve(tk.hi - tk.lo, I.params().L, G, d);
  Stats &st = cx.task_stats[ti];
  int32_t *nnz = &cx.res_nnz[(size_t)ti * G];
  collect(cx, tk, sc, nnz, st);
  const int64_t nu = (int64_t)sc.U.size();
  st.rows += cx.mode == Mode::ATTEND ? nu : 0;
  for (int g = 0; g < G; g++) st.sampled += nnz[g];

  if (cx.mode == Mode::RETRIEVE) {
    for (int g = 0; g < G; g++) {
      std::vector<int32_t> &out = cx.res_list[(size_t)ti * G + g];
      out.clear();
      out.reserve(nnz[g]);
    }
    for (int64_t j = 0; j < nu; j++) {
      const int32_t i = sc.U[j];
      uint32_t m = sc.hm[i];
      sc.hm[i] = 0;
      while (m) {
        const int g = __builtin_ctz(m);
        m &= m - 1;
        cx.res_list[(size_t)ti * G + g].push_back((int32_t)(tk.lo + i));
      }
    }
    for (int g = 0; g < G; g++) {
      std::vector<int32_t> &out = cx.res_list[(size_t)ti * G + g];
      std::sort(out.begin(), out.end());
    }
    return;
  }

  // B. scores: per-head flat arrays in U order
  int64_t off[33];
  off[0] = 0;
  for (int g = 0; g < G; g++) off[g + 1] = off[g] + nnz[g];
  if ((int64_t)sc.s.size() < off[G]) {
    sc.s.resize(off[G]);
    sc.kn.resize(off[G]);
  }
  const KVView &kv = cx.batch->kv[tk.b];
  const bool bf16 = kv.dtype == MP_DTYPE_BF16;
  const int esz = bf16 ? 2 : 4;
  const int row_bytes = d * esz;
  const int64_t row0 = tk.hkv * kv.head_rows + kv.base + tk.lo;  // row of token lo
  const char *K = (const char *)kv.k;
  const char *V = (const char *)kv.v;
  const float *norms = hd.norms.data() + tk.lo;
  const float *qv = &cx.qv[((size_t)tk.b * H + tk.hkv * G) * d];
  {
    int64_t cur[32];
    for (int g = 0; g < G; g++) cur[g] = off[g];
    for (int64_t j = 0; j < std::min<int64_t>(PREFETCH, nu); j++)
      prefetch_row(K + (row0 + sc.U[j]) * row_bytes, row_bytes);
    for (int64_t j = 0; j < nu; j++) {
      if (j + PREFETCH < nu) prefetch_row(K + (row0 + sc.U[j + PREFETCH]) * row_bytes, row_bytes);
      const int32_t i = sc.U[j];
      const float *kr;
      if (bf16) {
        bf16_row((const uint16_t *)(K + (row0 + i) * row_bytes), sc.kf.data(), d);
        kr = sc.kf.data();
      } else {
        kr = (const float *)(K + (row0 + i) * row_bytes);
      }
      const float kn = norms[i];
      uint32_t m = sc.hm[i];
      while (m) {
        const int g = __builtin_ctz(m);
        m &= m - 1;
        sc.s[cur[g]] = dot(qv + (size_t)g * d, kr, d);
        sc.kn[cur[g]] = kn;
        cur[g]++;
      }
    }
  }

  // C. weights and exponentials per head
  const UConst uc(I.params().K, I.params().L, I.params().eps);
  float mx[32], sum[32];
  for (int g = 0; g < G; g++) {
    const size_t bh = (size_t)tk.b * H + tk.hkv * G + g;
    float *s = sc.s.data() + off[g];
    const int64_t m = nnz[g];
    log_weights(uc, cx.flags, m, s, sc.kn.data() + off[g], cx.qmu[bh], cx.qn[bh], cx.scale,
                (cx.flags & FLAG_CENTER_QUERY) != 0);
    float mmax = -INFINITY;
    for (int64_t i = 0; i < m; i++) mmax = std::max(mmax, s[i]);
    float l = 0.0f;
    if (m > 0) {
      const vf mv = S::set1(mmax);
      vf acc = S::zero();
      int64_t i = 0;
      for (; i + S::W <= m; i += S::W) {
        vf e = S::exp(S::sub(S::load(s + i), mv));
        S::store(s + i, e);
        acc = S::add(acc, e);
      }
      l = S::hsum(acc);
      for (; i < m; i++) {
        s[i] = std::exp(s[i] - mmax);
        l += s[i];
      }
    }
    mx[g] = mmax;
    sum[g] = l;
  }

  // D. values
  float *acc = sc.acc.data();
  std::fill(acc, acc + (size_t)G * d, 0.0f);
  {
    int64_t cur[32];
    for (int g = 0; g < G; g++) cur[g] = off[g];
    for (int64_t j = 0; j < std::min<int64_t>(PREFETCH, nu); j++)
      prefetch_row(V + (row0 + sc.U[j]) * row_bytes, row_bytes);
    for (int64_t j = 0; j < nu; j++) {
      if (j + PREFETCH < nu) prefetch_row(V + (row0 + sc.U[j + PREFETCH]) * row_bytes, row_bytes);
      const int32_t i = sc.U[j];
      const float *vr;
      if (bf16) {
        bf16_row((const uint16_t *)(V + (row0 + i) * row_bytes), sc.vf_.data(), d);
        vr = sc.vf_.data();
      } else {
        vr = (const float *)(V + (row0 + i) * row_bytes);
      }
      uint32_t m = sc.hm[i];
      sc.hm[i] = 0;
      while (m) {
        const int g = __builtin_ctz(m);
        m &= m - 1;
        axpy(sc.s[cur[g]++], vr, acc + (size_t)g * d, d);
      }
    }
  }
  for (int g = 0; g < G; g++) {
    cx.res_m[(size_t)ti * G + g] = mx[g];
    cx.res_l[(size_t)ti * G + g] = sum[g];
    std::memcpy(&cx.res_acc[((size_t)ti * G + g) * d], acc + (size_t)g * d, sizeof(float) * d);
  }
  st.bytes += nu * (2 * (int64_t)row_bytes + 4);
}

// Validates the batch, prepares query codes and constants, and lays out the tasks.
static void prepare(Ctx &cx, const Batch &batch, Mode mode, int32_t flags) {
  MP_CHECK(batch.B >= 1, MP_ERR_INVALID, "batch size \"%d\" must be >= 1", batch.B);
  MP_CHECK(batch.idx && batch.q, MP_ERR_INVALID, "indexes and queries are required");
  for (int b = 0; b < batch.B; b++)
    MP_CHECK(batch.idx[b], MP_ERR_INVALID, "index %d of the batch is null", b);
  const Index &I0 = *batch.idx[0];
  cx.batch = &batch;
  cx.mode = mode;
  cx.flags = flags;
  cx.B = batch.B;
  cx.H = batch.H;
  cx.Hkv = I0.n_kv_heads();
  cx.d = I0.head_dim();
  MP_CHECK(batch.H >= cx.Hkv && batch.H % cx.Hkv == 0, MP_ERR_INVALID,
           "query heads \"%d\" must be a multiple of the index's %d KV heads", batch.H, cx.Hkv);
  cx.G = batch.H / cx.Hkv;
  MP_CHECK(cx.G <= 32, MP_ERR_UNSUPPORTED, "GQA group \"%d\" is larger than 32", cx.G);
  for (int b = 1; b < batch.B; b++)
    MP_CHECK(batch.idx[b]->n_kv_heads() == cx.Hkv && batch.idx[b]->head_dim() == cx.d,
             MP_ERR_INVALID, "index %d of the batch has another shape than index 0", b);
  if (mode == Mode::ATTEND) {
    MP_CHECK(batch.kv, MP_ERR_INVALID, "attention needs the keys and values");
    for (int b = 0; b < batch.B; b++)
      MP_CHECK(batch.kv[b].dtype == MP_DTYPE_F32 || batch.kv[b].dtype == MP_DTYPE_BF16,
               MP_ERR_UNSUPPORTED, "KV dtype %s is not supported by sampled attention",
               dtype_name(batch.kv[b].dtype));
  }
  const int B = cx.B, H = cx.H, d = cx.d, G = cx.G;
  cx.scale = 1.0f / std::sqrt((float)d);
  // effective queries, norms, q·μ
  cx.qv.resize((size_t)B * H * d);
  cx.qn.resize((size_t)B * H);
  cx.qmu.resize((size_t)B * H);
  for (int b = 0; b < B; b++) {
    const Index &I = *batch.idx[b];
    for (int h = 0; h < H; h++) {
      const size_t bh = (size_t)b * H + h;
      const float *q = batch.q + bh * d;
      const float *mu = I.head(h / G).mean.data();
      float *qv = &cx.qv[bh * d];
      double nn = 0, qm = 0;
      for (int e = 0; e < d; e++) {
        qv[e] = (flags & FLAG_CENTER_QUERY) ? q[e] - mu[e] : q[e];
        nn += (double)qv[e] * qv[e];
        qm += (double)qv[e] * mu[e];
      }
      cx.qn[bh] = (float)std::sqrt(nn);
      cx.qmu[bh] = (float)qm;
    }
  }
  // query codes, padded to Lp per sequence
  const bool need_codes = !cx.use_sets && !(flags & FLAG_RETRIEVE_ALL);
  cx.qc_stride.resize(B);
  int64_t qc_total = 0;
  for (int b = 0; b < B; b++) {
    cx.qc_stride[b] = batch.idx[b]->Lp();
    MP_CHECK(cx.qc_stride[b] == cx.qc_stride[0], MP_ERR_INVALID,
             "the indexes of a batch must have the same table count");
    qc_total += (int64_t)H * cx.qc_stride[b];
  }
  if (need_codes) {
    cx.qc.assign(qc_total, QUERY_PAD);
    const int Lp = cx.qc_stride[0];
    for (int b = 0; b < B; b++) {
      const Index &I = *batch.idx[b];
      const int L = I.params().L;
      uint16_t *dst = &cx.qc[(size_t)b * H * Lp];
      if (batch.qcodes) {
        const uint16_t mask = I.params().K >= 16 ? 0xffff : (uint16_t)((1u << I.params().K) - 1);
        for (int h = 0; h < H; h++)
          for (int t = 0; t < L; t++) {
            const uint16_t c = batch.qcodes[((size_t)b * H + h) * L + t];
            MP_CHECK(c <= mask, MP_ERR_INVALID, "query code \"%u\" has more than %d bits",
                     (unsigned)c, I.params().K);
            dst[(size_t)h * Lp + t] = c;
          }
      } else {
        hash_rows(I.projection(), &cx.qv[(size_t)b * H * d], H, d, dst, Lp, 1);
      }
    }
  }
  // tasks: chunk size so that there are >= 4 per thread where possible
  int64_t total = 0;
  for (int b = 0; b < B; b++) total += batch.idx[b]->n() * cx.Hkv;
  const int64_t want = 4 * (int64_t)threads();
  int64_t chunk = BLOCK;
  while (chunk > MIN_CHUNK) {
    int64_t tasks = 0;
    for (int b = 0; b < B; b++) {
      const Index &I = *batch.idx[b];
      tasks += cx.Hkv * ((I.n_blocked() + chunk - 1) / chunk + (I.n_tail() + chunk - 1) / chunk);
    }
    if (tasks >= want) break;
    chunk /= 2;
  }
  (void)total;
  cx.tasks.clear();
  cx.task_begin.assign((size_t)B * cx.Hkv + 1, 0);
  for (int b = 0; b < B; b++) {
    const Index &I = *batch.idx[b];
    for (int h = 0; h < cx.Hkv; h++) {
      cx.task_begin[(size_t)b * cx.Hkv + h] = (int)cx.tasks.size();
      for (int64_t lo = 0; lo < I.n_blocked(); lo += chunk)
        cx.tasks.push_back({b, h, (int)(lo / BLOCK), lo, std::min(lo + chunk, I.n_blocked())});
      for (int64_t lo = I.n_blocked(); lo < I.n(); lo += chunk)
        cx.tasks.push_back({b, h, -1, lo, std::min(lo + chunk, I.n())});
    }
  }
  cx.task_begin[(size_t)B * cx.Hkv] = (int)cx.tasks.size();
  const size_t nt = cx.tasks.size();
  cx.res_nnz.assign(nt * G, 0);
  cx.task_stats.assign(nt, Stats{});
  if (mode == Mode::ATTEND) {
    cx.res_m.assign(nt * G, -INFINITY);
    cx.res_l.assign(nt * G, 0.0f);
    cx.res_acc.assign(nt * G * d, 0.0f);
  } else {
    cx.res_list.assign(nt * G, {});
  }
}

static void run_all(Ctx &cx) {
  const int nt = (int)cx.tasks.size();
#pragma omp parallel for num_threads(threads()) schedule(dynamic, 1)
  for (int t = 0; t < nt; t++) run_task(cx, t);
}

static void sum_stats(const Ctx &cx, Stats *stats) {
  if (!stats) return;
  Stats s;
  for (const Stats &t : cx.task_stats) {
    s.rows += t.rows;
    s.sampled += t.sampled;
    s.entries += t.entries;
    s.bytes += t.bytes;
  }
  s.tasks = (int64_t)cx.tasks.size();
  *stats = s;
}

}  // namespace

// ------------------------------------------------------------
// entry points

void retrieve(const Batch &batch, int32_t flags, int64_t cap, int32_t *indices, int32_t *nnz,
              Stats *stats) {
  Ctx cx;
  prepare(cx, batch, Mode::RETRIEVE, flags);
  run_all(cx);
  const int G = cx.G, H = cx.H;
  for (int b = 0; b < cx.B; b++)
    for (int h = 0; h < H; h++) {
      const int hkv = h / G, g = h % G;
      const size_t bh = (size_t)b * H + h;
      int64_t k = 0;
      for (int ti = cx.task_begin[(size_t)b * cx.Hkv + hkv];
           ti < cx.task_begin[(size_t)b * cx.Hkv + hkv + 1]; ti++) {
        const std::vector<int32_t> &l = cx.res_list[(size_t)ti * G + g];
        if (indices)
          for (size_t j = 0; j < l.size() && k + (int64_t)j < cap; j++)
            indices[bh * cap + k + j] = l[j];
        k += (int64_t)l.size();
      }
      if (nnz) nnz[bh] = (int32_t)k;
    }
  sum_stats(cx, stats);
}

void attention(const Batch &batch, int32_t flags, const int32_t *sets, const int32_t *set_n,
               int64_t set_cap, float *out, float *lse2, int32_t *nnz, Stats *stats) {
  Ctx cx;
  if (sets) {
    MP_CHECK(set_n, MP_ERR_INVALID, "explicit samples need their sizes");
    cx.use_sets = true;
    const int64_t BH = (int64_t)batch.B * batch.H;
    cx.sets.resize(BH);
    for (int64_t bh = 0; bh < BH; bh++) {
      const int64_t n = batch.idx[bh / batch.H]->n();
      MP_CHECK(set_n[bh] >= 0 && set_n[bh] <= set_cap, MP_ERR_INVALID,
               "sample size \"%d\" is outside 0..%lld", set_n[bh], (long long)set_cap);
      std::vector<int32_t> &s = cx.sets[bh];
      s.assign(sets + bh * set_cap, sets + bh * set_cap + set_n[bh]);
      for (int32_t i : s)
        MP_CHECK(i >= 0 && i < n, MP_ERR_INVALID, "token id \"%d\" is outside 0..%lld", i,
                 (long long)n - 1);
      std::sort(s.begin(), s.end());
      s.erase(std::unique(s.begin(), s.end()), s.end());
    }
  }
  prepare(cx, batch, Mode::ATTEND, flags);
  run_all(cx);
  const int G = cx.G, H = cx.H, d = cx.d;
  const double log2e = 1.4426950408889634;
  for (int b = 0; b < cx.B; b++)
    for (int h = 0; h < H; h++) {
      const int hkv = h / G, g = h % G;
      const size_t bh = (size_t)b * H + h;
      const int t0 = cx.task_begin[(size_t)b * cx.Hkv + hkv];
      const int t1 = cx.task_begin[(size_t)b * cx.Hkv + hkv + 1];
      float M = -INFINITY;
      int64_t k = 0;
      for (int ti = t0; ti < t1; ti++) {
        const size_t r = (size_t)ti * G + g;
        k += cx.res_nnz[r];
        if (cx.res_nnz[r] > 0) M = std::max(M, cx.res_m[r]);
      }
      float *o = out + bh * d;
      if (nnz) nnz[bh] = (int32_t)k;
      if (k == 0 || !std::isfinite(M)) {
        std::fill(o, o + d, 0.0f);
        lse2[bh] = -INFINITY;
        continue;
      }
      std::vector<double> acc(d, 0.0);
      double l = 0.0;
      for (int ti = t0; ti < t1; ti++) {
        const size_t r = (size_t)ti * G + g;
        if (cx.res_nnz[r] == 0) continue;
        const double w = std::exp((double)cx.res_m[r] - (double)M);
        l += w * cx.res_l[r];
        const float *a = &cx.res_acc[r * d];
        for (int e = 0; e < d; e++) acc[e] += w * a[e];
      }
      for (int e = 0; e < d; e++) o[e] = (float)(acc[e] / l);
      lse2[bh] = (float)(((double)M + std::log(l)) * log2e);
    }
  sum_stats(cx, stats);
}

void collision_weights(int K, int L, float eps, const float *cos, int64_t n, float *u,
                       float *lnw) {
  const UConst c(K, L, eps);
  const int64_t nv = n / S::W * S::W;
#pragma omp parallel for num_threads(threads()) schedule(static) if (n > 65536)
  for (int64_t i = 0; i < nv; i += S::W) {
    vf uu, ll;
    u_vec(c, S::min(S::max(S::load(cos + i), S::set1(-1.0f)), S::set1(1.0f)), &uu, &ll);
    S::store(u + i, uu);
    S::store(lnw + i, ll);
  }
  if (nv < n) {
    const int m = (int)(n - nv);
    vf uu, ll;
    u_vec(c, S::min(S::max(S::load_n(cos + nv, m), S::set1(-1.0f)), S::set1(1.0f)), &uu, &ll);
    S::store_n(u + nv, uu, m);
    S::store_n(lnw + nv, ll, m);
  }
}

}  // namespace mp::lsh
