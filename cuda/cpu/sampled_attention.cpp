/*
 * sampled_attention.cpp — LSH collision retrieval and importance-weighted sampled
 * attention on the CPU (magicpig.md §6–8).
 *
 * Work split, two kinds of task in one dynamically scheduled list (see run_all), run by
 * the process's spinning task pool (common/task_pool.h):
 *
 *   A. collisions, one task per (sequence, query head), over the whole context. For each
 *      block and table the query's bucket is a random DRAM access; the L lookups run as a
 *      software pipeline (offsets prefetched 2·D tables ahead, entry lines D ahead). Hits
 *      are counted branch-free on two bitmaps, seen once / seen twice (a second hit moves
 *      the token's bit into seen2). When the buckets hold fewer entries than the bitmaps
 *      have words (L·64 < 2^K), the words that became non-zero are listed and the harvest
 *      visits and clears only those; otherwise (K10L150: ~14 entries per word) nearly
 *      every word is hit, so the harvest sweeps the bitmaps and the count loop keeps no
 *      list. Tail tokens compare their L codes with the query's, 16 at a time.
 *      The sample is grouped by token chunk (a counting sort).
 *
 *   Phases B–D, one task per (sequence, KV head, token chunk): chunks are powers of two
 *   (≤ 65,536) chosen for >= 4 tasks per thread where the context allows. A task serves
 *   all G = H/Hkv query heads of its KV head: the heads' samples in the chunk are merged
 *   into a union list U with a head mask per token (cleared by walking U).
 *
 *   B. scores. Each key row in U is gathered once (converted to fp32 once when stored as
 *      bf16: a shift, exact) and dotted with the query of every head whose bit is set:
 *      s = q·k in fp32. No _mm512_dpbf16_ps: it would need the fp32 query split into 2–3
 *      bf16 parts to keep fp32 accuracy (the same instruction count as convert + FMA), and
 *      this phase is bound by the row gather, not by arithmetic (measured on a Sapphire
 *      Rapids-class VM: ≤ 28 ns/row with the rows in cache vs ≈ 64 ns/row from DRAM).
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
 * entries (2 B each), then one K row and one V row (2·d·2 B in bf16) per union token;
 * ‖k − μ‖ is recomputed from the gathered K row rather than read from the stored norms
 * (a random 4-byte read costs a whole cache line). Rows are prefetched PREFETCH tokens
 * ahead; the gather is the bound.
 */
#include "cpu/sampled_attention.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <vector>

#include "common/common.h"
#include "common/task_pool.h"
#include "cpu/lsh_count.h"
#include "cpu/lsh_simd.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// Phase timers for tuning: only in a build with -DMP_LSH_PROFILE (never in the library
// the project ships); read with mp_lsh_profile().
#ifdef MP_LSH_PROFILE
#include <x86intrin.h>
#define PROF_T(x) uint64_t x = __rdtsc()
#define PROF_ADD(i, a, b) __atomic_fetch_add((uint64_t *)&mp::lsh::g_prof_u[i], (b) - (a), __ATOMIC_RELAXED)
namespace mp::lsh {
uint64_t g_prof_u[8];
}
extern "C" MP_API void mp_lsh_profile(double *out) {
  for (int i = 0; i < 8; i++) {
    out[i] = (double)mp::lsh::g_prof_u[i];
    mp::lsh::g_prof_u[i] = 0;
  }
}
#else
#define PROF_T(x)
#define PROF_ADD(i, a, b)
#endif

namespace mp::lsh {

namespace S = mp::simd;
using S::vf;
using S::vm;

namespace {

#ifndef MP_LSH_PREFETCH
#define MP_LSH_PREFETCH 8
#endif
#ifndef MP_LSH_PF_HINT
#define MP_LSH_PF_HINT 3
#endif
constexpr int PREFETCH = MP_LSH_PREFETCH;  // union tokens ahead whose rows are prefetched
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

// ‖x − μ‖ in fp32
static inline float centered_norm(const float *x, const float *mu, int d) {
  vf acc0 = S::zero(), acc1 = S::zero();
  int i = 0;
  for (; i + 2 * S::W <= d; i += 2 * S::W) {
    vf a = S::sub(S::load(x + i), S::load(mu + i));
    vf b = S::sub(S::load(x + i + S::W), S::load(mu + i + S::W));
    acc0 = S::fma(a, a, acc0);
    acc1 = S::fma(b, b, acc1);
  }
  for (; i + S::W <= d; i += S::W) {
    vf a = S::sub(S::load(x + i), S::load(mu + i));
    acc0 = S::fma(a, a, acc0);
  }
  float s = S::hsum(S::add(acc0, acc1));
  for (; i < d; i++) s += (x[i] - mu[i]) * (x[i] - mu[i]);
  return std::sqrt(s);
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
  for (int o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, MP_LSH_PF_HINT);
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
// the call context

enum class Mode { RETRIEVE, ATTEND };

// A phase B–D task: KV head hkv of sequence b, tokens [lo, hi) = chunk c.
struct Task {
  int b, hkv, c;
  int64_t lo, hi;
};

struct Ctx {
  const Batch *batch;
  Mode mode;
  int32_t flags;
  int Hkv, G, d, H, B;
  float scale;
  // per (b, h): padded query codes [Lp], effective query [d], ‖q‖, q·μ
  std::vector<uint16_t> qc;
  int Lp = 0;
  std::vector<float> qv, qn, qmu;
  // explicit samples (sorted, unique) per (b, h)
  const std::vector<std::vector<int32_t>> *sets = nullptr;
  int64_t chunk = BLOCK;      // a power of two
  int chunk_bits = BLOCK_BITS;
  std::vector<int> nchunks;  // [B]
  // phase A output per (b, h): its sample, grouped by chunk: ids[at[c] .. at[c+1])
  std::vector<std::vector<int32_t>> ids, at;
  std::vector<Stats> a_stats;  // [B·H]
  // phase B–D tasks and their partial softmax states per (task, g)
  std::vector<Task> tasks;
  std::vector<int> task_begin;  // [B·Hkv + 1]
  std::vector<float> res_m, res_l, res_acc;
  std::vector<int32_t> res_nnz;
  std::vector<Stats> task_stats;
  // offloaded KV heads (Batch::offload): [B·Hkv] flags, and whether any is set
  const Offload *offload = nullptr;
  std::vector<uint8_t> off_kv;
  bool any_off = false;
  // KV heads whose blocked tokens the caller attends (Offload::blocks): [B·Hkv] flags; the
  // CPU does their tail only
  std::vector<uint8_t> tail_only;
  // Batch::timing: the call's start and the stamps run_all takes
  std::chrono::steady_clock::time_point t0;
  Timing *timing = nullptr;
};

static double ms_from(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Per-thread scratch, reused across tasks and calls. seen1, seen2 and hm are all-zero
// between tasks.
struct Scratch {
  std::vector<uint64_t> seen1, seen2;  // per token: hit once / hit twice (bitmaps)
  std::vector<uint32_t> touched;       // words of seen1 that became non-zero (+1 slot)
  std::vector<uint32_t> rs, re;        // per table: the bucket's entry range
  std::vector<const uint32_t *> optr;  // per table: the bucket's offsets
  std::vector<int32_t> hits;           // phase A: the sample, unordered
  std::vector<int32_t> cur;            // phase A: per-chunk cursors
  std::vector<uint32_t> hm;            // phase B–D: per chunk token, the heads sampling it
  std::vector<int32_t> U;              // phase B–D: tokens sampled by any head of the group
  std::vector<float> s, kn;            // per-head samples, flat
  std::vector<float> kf, vf_, acc;
};

static Scratch &scratch() {
  static thread_local Scratch s;
  return s;
}

template <class V>
static void grow(V &v, size_t n) {
  if (v.size() < n) v.resize(n, typename V::value_type{});
}

// ------------------------------------------------------------
// phase A: the sample of one query head

static void sample_head(Ctx &cx, int b, int h) {
  const Index &I = *cx.batch->idx[b];
  const size_t bh = (size_t)b * cx.H + h;
  Scratch &sc = scratch();
  std::vector<int32_t> &hits = sc.hits;
  hits.clear();
  PROF_T(q0);
  if (cx.sets) {
    const std::vector<int32_t> &set = (*cx.sets)[bh];
    hits.assign(set.begin(), set.end());
  } else {
    const int hkv = h / cx.G, L = I.params().L, Lp = cx.Lp;
    const uint16_t *q = &cx.qc[bh * Lp];
    Stats &st = cx.a_stats[bh];
    const size_t words = (size_t)(I.n_blocked() + 63) / 64;
    grow(sc.seen1, words);
    grow(sc.seen2, words);
    grow(sc.touched, words + 1);  // the branch-free store writes one slot past the count
    grow(sc.rs, L);
    grow(sc.re, L);
    grow(sc.optr, L);
    const CountScratch cs{sc.optr.data(),  sc.rs.data(),    sc.re.data(),
                          sc.seen1.data(), sc.seen2.data(), sc.touched.data()};
    uint32_t nt = 0;
    // Sweep instead of a list when the buckets' entries outnumber the bitmap words.
    const bool sweep = (int64_t)L * 64 >= ((int64_t)1 << I.params().K);
    const bool tail_only = !cx.tail_only.empty() && cx.tail_only[(size_t)b * cx.Hkv + hkv];
    for (const Block &blk : I.blocks()) {
      if (tail_only) break;
      const int64_t scanned = sweep ? count_block<false>(I, blk, hkv, q, cs, nt)
                                    : count_block<true>(I, blk, hkv, q, cs, nt);
      st.entries += scanned;
      st.bytes += scanned * 2 + (int64_t)L * 8;
    }
    // harvest: the seen-twice bits, zeroing the words on the way
    auto take = [&](uint32_t w) {
      uint64_t m = sc.seen2[w];
      sc.seen1[w] = 0;
      sc.seen2[w] = 0;
      while (m) {
        hits.push_back((int32_t)(w * 64 + (uint32_t)__builtin_ctzll(m)));
        m &= m - 1;
      }
    };
    if (tail_only) {
      // nothing counted
    } else if (sweep) {
      for (uint32_t w = 0; w < (uint32_t)words; w++) take(w);
    } else {
      for (uint32_t k = 0; k < nt; k++) take(sc.touched[k]);
    }
    // the tail: compare code rows
    const uint16_t *tail = I.head(hkv).tail.data();
    const int64_t nb = I.n_blocked(), n = I.n();
    for (int64_t tok = nb; tok < n; tok++)
      if (count_eq(tail + (size_t)(tok - nb) * Lp, q, Lp) >= 2) hits.push_back((int32_t)tok);
    st.entries += n - nb;
    st.bytes += (n - nb) * Lp * 2;
    st.sampled += (int64_t)hits.size();
  }
  // group by chunk (counting sort; order within a chunk does not matter)
  const int nc = cx.nchunks[b];
  const int shift = cx.chunk_bits;
  std::vector<int32_t> &at = cx.at[bh];
  std::vector<int32_t> &ids = cx.ids[bh];
  at.assign(nc + 1, 0);
  for (int32_t i : hits) at[(i >> shift) + 1]++;
  for (int c = 0; c < nc; c++) at[c + 1] += at[c];
  ids.resize(hits.size());
  grow(sc.cur, (size_t)nc);
  int32_t *cur = sc.cur.data();
  std::copy(at.begin(), at.end() - 1, cur);
  for (int32_t i : hits) ids[cur[i >> shift]++] = i;
  PROF_T(q1);
  PROF_ADD(7, q0, q1);
}

// ------------------------------------------------------------
// phases B–D: the attention of one KV head's group over one chunk

static void run_task(Ctx &cx, int ti) {
  const Task &tk = cx.tasks[ti];
  const Index &I = *cx.batch->idx[tk.b];
  const HeadIndex &hd = I.head(tk.hkv);
  const int G = cx.G, H = cx.H, d = cx.d;
  const int64_t n = tk.hi - tk.lo;
  Scratch &sc = scratch();
  grow(sc.hm, n);
  grow(sc.kf, d);
  grow(sc.vf_, d);
  grow(sc.acc, (size_t)G * d);
  Stats &st = cx.task_stats[ti];
  int32_t *nnz = &cx.res_nnz[(size_t)ti * G];
  PROF_T(p0);
  // the union of the group's samples in this chunk, with a head mask per token
  sc.U.clear();
  if (cx.flags & FLAG_RETRIEVE_ALL && !cx.sets) {
    const uint32_t all = G >= 32 ? 0xffffffffu : ((1u << G) - 1u);
    sc.U.resize(n);
    for (int64_t i = 0; i < n; i++) {
      sc.U[i] = (int32_t)i;
      sc.hm[i] = all;
    }
    for (int g = 0; g < G; g++) nnz[g] = (int32_t)n;
  } else {
    for (int g = 0; g < G; g++) {
      const size_t bh = (size_t)tk.b * H + tk.hkv * G + g;
      const uint32_t bit = 1u << g;
      const int32_t *p = cx.ids[bh].data() + cx.at[bh][tk.c];
      const int32_t *e = cx.ids[bh].data() + cx.at[bh][tk.c + 1];
      nnz[g] = (int32_t)(e - p);
      for (; p < e; p++) {
        const int64_t i = *p - tk.lo;
        const uint32_t m = sc.hm[i];
        if (!m) sc.U.push_back((int32_t)i);
        sc.hm[i] = m | bit;
      }
    }
  }
  const int64_t nu = (int64_t)sc.U.size();
  st.rows += nu;
  PROF_T(p1);
  PROF_ADD(0, p0, p1);

  // B. scores: per-head flat arrays in U order
  int64_t off[33];
  off[0] = 0;
  for (int g = 0; g < G; g++) off[g + 1] = off[g] + nnz[g];
  grow(sc.s, off[G]);
  grow(sc.kn, off[G]);
  const KVView &kv = cx.batch->kv[tk.b];
  const bool bf16 = kv.dtype == MP_DTYPE_BF16;
  const int esz = bf16 ? 2 : 4;
  const int row_bytes = d * esz;
  const int64_t row0 = tk.hkv * kv.head_rows + kv.base + tk.lo;  // row of token lo
  const char *K = (const char *)kv.k;
  const char *V = (const char *)kv.v;
  // ‖k − μ‖ is recomputed from the gathered row (cheaper than a random read of the
  // stored norm, which would cost one more cache line per row)
  const float *mu = hd.mean.data();
  const bool need_norm = !(cx.flags & FLAG_FORCE_U1);
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
      const float kn = need_norm ? centered_norm(kr, mu, d) : 0.0f;
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
  PROF_T(p2);
  PROF_ADD(1, p1, p2);

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
  PROF_T(p3);
  PROF_ADD(2, p2, p3);

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
  st.bytes += nu * 2 * (int64_t)row_bytes;
  PROF_T(p4);
  PROF_ADD(3, p3, p4);
}

// ------------------------------------------------------------
// setup

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
    MP_CHECK(batch.idx[b]->n_kv_heads() == cx.Hkv && batch.idx[b]->head_dim() == cx.d &&
                 batch.idx[b]->Lp() == I0.Lp(),
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
  // effective queries, their norms, q·μ
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
  // query codes, padded to Lp (the padding never equals a tail row's padding)
  cx.Lp = I0.Lp();
  const bool need_codes = !cx.sets && !(flags & FLAG_RETRIEVE_ALL);
  if (need_codes) {
    const int Lp = cx.Lp;
    cx.qc.assign((size_t)B * H * Lp, QUERY_PAD);
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
  // chunks of the phase B–D tasks: >= 4 tasks per thread where the context allows
  const int64_t want = 4 * (int64_t)threads();
  int64_t chunk = BLOCK;
  while (chunk > MIN_CHUNK) {
    int64_t tasks = 0;
    for (int b = 0; b < B; b++) tasks += cx.Hkv * ((batch.idx[b]->n() + chunk - 1) / chunk);
    if (tasks >= want) break;
    chunk /= 2;
  }
  cx.chunk = chunk;
  cx.chunk_bits = __builtin_ctzll((unsigned long long)chunk);
  cx.nchunks.resize(B);
  cx.tasks.clear();
  cx.task_begin.assign((size_t)B * cx.Hkv + 1, 0);
  // offloaded KV heads: retrieved here, attended by the caller's `ready` (no B–D tasks)
  cx.offload = nullptr;
  cx.any_off = false;
  cx.off_kv.assign((size_t)B * cx.Hkv, 0);
  cx.tail_only.clear();
  if (mode == Mode::ATTEND && batch.offload && batch.offload->kv_heads &&
      batch.offload->blocks && need_codes) {
    // the caller attends these KV heads' blocked tokens: the CPU's tasks cover the tail
    cx.tail_only.assign((size_t)B * cx.Hkv, 0);
    for (size_t i = 0; i < cx.tail_only.size(); i++)
      cx.tail_only[i] = batch.offload->kv_heads[i] ? 1 : 0;
  } else if (mode == Mode::ATTEND && batch.offload && batch.offload->kv_heads &&
             batch.offload->ready && need_codes) {
    cx.offload = batch.offload;
    for (size_t i = 0; i < cx.off_kv.size(); i++) {
      cx.off_kv[i] = batch.offload->kv_heads[i] ? 1 : 0;
      cx.any_off |= cx.off_kv[i] != 0;
    }
  }
  for (int b = 0; b < B; b++) {
    const int64_t n = batch.idx[b]->n();
    cx.nchunks[b] = (int)((n + chunk - 1) / chunk);
    for (int h = 0; h < cx.Hkv; h++) {
      cx.task_begin[(size_t)b * cx.Hkv + h] = (int)cx.tasks.size();
      if (cx.off_kv[(size_t)b * cx.Hkv + h]) continue;
      // a tail-only KV head: the chunks that hold tail tokens
      const int64_t lo = !cx.tail_only.empty() && cx.tail_only[(size_t)b * cx.Hkv + h]
                             ? batch.idx[b]->n_blocked()
                             : 0;
      for (int c = 0; c < cx.nchunks[b]; c++) {
        const int64_t hi = std::min<int64_t>((c + 1) * chunk, n);
        if (hi > lo) cx.tasks.push_back({b, h, c, c * chunk, hi});
      }
    }
  }
  cx.task_begin[(size_t)B * cx.Hkv] = (int)cx.tasks.size();
  cx.ids.resize((size_t)B * H);
  cx.at.resize((size_t)B * H);
  cx.a_stats.assign((size_t)B * H, Stats{});
  const size_t nt = cx.tasks.size();
  cx.res_nnz.assign(nt * G, 0);
  cx.task_stats.assign(nt, Stats{});
  if (mode == Mode::ATTEND) {
    cx.res_m.assign(nt * G, -INFINITY);
    cx.res_l.assign(nt * G, 0.0f);
    cx.res_acc.assign(nt * G * d, 0.0f);
  }
}

// Phase A (one task per query head) and, for attention, phases B–D (one task per KV head
// and chunk) as ONE dynamically scheduled list: every phase A task comes first, and a
// B–D task starts once the G phase A tasks of its KV head are done (an atomic count per
// (b, KV head); OpenMP hands out iterations in order, so what it waits for is already
// running). No barrier between the phases: the latency-bound collision counting of some
// threads overlaps the bandwidth-bound row gathers of the others.
static void run_all(Ctx &cx) {
  const int nbh = cx.B * cx.H;
  const int nt = (int)cx.tasks.size();
  const bool phase_a = cx.sets || !(cx.flags & FLAG_RETRIEVE_ALL);
  const bool phase_bd = cx.mode == Mode::ATTEND;
  const int na = phase_a ? nbh : 0;
  const size_t ng = (size_t)cx.B * cx.Hkv;
  // Phase A order: the heads of offloaded KV heads first (KV head by KV head), then the
  // others. The task that completes an offloaded KV head's last sample hands it over
  // (Offload::ready) with any other completed one not handed over yet, and goes on.
  std::vector<int> order((size_t)na);
  {
    int k = 0;
    for (int pass = 0; pass < 2; pass++)
      for (int bh = 0; bh < na; bh++) {
        const bool off = cx.any_off && cx.off_kv[(size_t)(bh / cx.H) * cx.Hkv + (bh % cx.H) / cx.G];
        if (off == (pass == 0)) order[(size_t)k++] = bh;
      }
  }
  const int total = na + (phase_bd ? nt : 0);
  std::vector<int32_t> pending(ng, phase_a ? cx.G : 0);
  int32_t *pend = pending.data();
  std::vector<uint8_t> claimed(ng, 0);  // offloaded KV heads already handed over
  std::atomic<int> a_left{na};          // phase A tasks not finished (Batch::timing)
  std::atomic<bool> busy{false};        // a hand-off is running
  int64_t last_handoff_ns = 0;          // written under `busy`
  std::vector<double> head_ms(cx.timing ? (size_t)na : 0, 0.0);
  // One hand-off at a time, never waited for: a thread that completes an offloaded KV head
  // while another hands off leaves it to that one, which looks again before it leaves
  // (sequentially consistent flag and counts: one of the two sees the other's write).
  auto handoff = [&] {
    for (;;) {
      if (busy.exchange(true, std::memory_order_seq_cst)) return;
      std::vector<uint8_t> kv(ng, 0);
      bool any = false;
      for (size_t g = 0; g < ng; g++)
        if (cx.off_kv[g] && !__atomic_load_n(&claimed[g], __ATOMIC_RELAXED) &&
            __atomic_load_n(&pend[g], __ATOMIC_SEQ_CST) == 0) {
          __atomic_store_n(&claimed[g], (uint8_t)1, __ATOMIC_SEQ_CST);
          kv[g] = 1, any = true;
        }
      if (any) {
        OffloadSamples os;
        os.B = cx.B, os.H = cx.H, os.Hkv = cx.Hkv, os.G = cx.G;
        os.ids = cx.ids.data();
        os.qn = cx.qn.data();
        os.qmu = cx.qmu.data();
        os.kv = kv.data();
        cx.offload->ready(cx.offload->ctx, os);
        last_handoff_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::steady_clock::now() - cx.t0)
                              .count();
      }
      busy.store(false, std::memory_order_seq_cst);
      bool more = false;
      for (size_t g = 0; g < ng && !more; g++)
        more = cx.off_kv[g] && !__atomic_load_n(&claimed[g], __ATOMIC_SEQ_CST) &&
               __atomic_load_n(&pend[g], __ATOMIC_SEQ_CST) == 0;
      if (!more) return;
    }
  };
  // The spinning pool (common/task_pool.h), not an OpenMP team: split decode calls this
  // 30 times per token from whichever thread the host uses, ~0.1 ms apart.
  pool_run(total, [&](int ia) {
    if (ia < na) {
      const int bh = order[(size_t)ia];
      const int b = bh / cx.H, h = bh % cx.H;
      const size_t g = (size_t)b * cx.Hkv + h / cx.G;
      // The tasks waiting for this head are released, and an offloaded KV head handed
      // over, even if it throws (no hang; Offload::ready must not throw).
      struct Release {
        int32_t *p;
        bool off;
        std::atomic<int> *left;
        const Ctx &cx;
        decltype(handoff) &hand;
        ~Release() {
          const bool last = __atomic_fetch_sub(p, 1, __ATOMIC_SEQ_CST) == 1;
          if (left->fetch_sub(1, std::memory_order_acq_rel) == 1 && cx.timing)
            cx.timing->phase_a = ms_from(cx.t0);
          if (last && off) hand();
        }
      } release{&pend[g], cx.any_off && cx.off_kv[g] != 0, &a_left, cx, handoff};
      if (cx.timing) {
        const auto h0 = std::chrono::steady_clock::now();
        sample_head(cx, b, h);
        const double ms = ms_from(h0);
        head_ms[(size_t)ia] = ms;
      } else {
        sample_head(cx, b, h);
      }
    } else {
      const Task &tk = cx.tasks[ia - na];
      const int32_t *p = &pend[(size_t)tk.b * cx.Hkv + tk.hkv];
      while (__atomic_load_n(p, __ATOMIC_ACQUIRE) != 0) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      }
      run_task(cx, ia - na);
    }
  });
  if (cx.timing) {
    cx.timing->handoff = (double)last_handoff_ns * 1e-6;
    for (double ms : head_ms) {
      cx.timing->head_max = std::max(cx.timing->head_max, ms);
      cx.timing->head_sum += ms;
    }
    for (const Stats &st : cx.a_stats) cx.timing->entries += st.entries;
  }
}

static void sum_stats(const Ctx &cx, Stats *stats) {
  if (!stats) return;
  Stats s;
  for (const Stats &t : cx.a_stats) {
    s.sampled += t.sampled;
    s.entries += t.entries;
    s.bytes += t.bytes;
  }
  for (const Stats &t : cx.task_stats) {
    s.rows += t.rows;
    s.bytes += t.bytes;
  }
  s.tasks = (int64_t)cx.tasks.size() + (int64_t)cx.B * cx.H;
  *stats = s;
}

}  // namespace

// ------------------------------------------------------------
// entry points

// The calling thread's context: its vectors keep their capacity from call to call, so a
// decode step allocates (and page-faults) nothing. Calls from different threads (different
// engines) get different contexts.
static Ctx &context() {
  static thread_local Ctx cx;
  cx.sets = nullptr;
  cx.timing = nullptr;
  return cx;
}

void retrieve(const Batch &batch, int32_t flags, int64_t cap, int32_t *indices, int32_t *nnz,
              Stats *stats) {
  Ctx &cx = context();
  prepare(cx, batch, Mode::RETRIEVE, flags);
  const int B = cx.B, H = cx.H;
  if (flags & FLAG_RETRIEVE_ALL) {
    for (int b = 0; b < B; b++) {
      const int64_t n = batch.idx[b]->n();
      for (int h = 0; h < H; h++) {
        const size_t bh = (size_t)b * H + h;
        if (indices)
          for (int64_t i = 0; i < std::min(n, cap); i++) indices[bh * cap + i] = (int32_t)i;
        nnz[bh] = (int32_t)n;
      }
    }
    return;
  }
  run_all(cx);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const size_t bh = (size_t)b * H + h;
      std::vector<int32_t> &ids = cx.ids[bh];
      std::sort(ids.begin(), ids.end());
      if (indices)
        for (size_t j = 0; j < ids.size() && (int64_t)j < cap; j++) indices[bh * cap + j] = ids[j];
      nnz[bh] = (int32_t)ids.size();
    }
  sum_stats(cx, stats);
}

void attention(const Batch &batch, int32_t flags, const int32_t *sets, const int32_t *set_n,
               int64_t set_cap, float *out, float *lse2, int32_t *nnz, Stats *stats) {
  Ctx &cx = context();
  cx.t0 = std::chrono::steady_clock::now();
  if (batch.timing) *batch.timing = Timing{};
  std::vector<std::vector<int32_t>> given;
  if (sets) {
    MP_CHECK(set_n, MP_ERR_INVALID, "explicit samples need their sizes");
    MP_CHECK(batch.B >= 1 && batch.idx, MP_ERR_INVALID, "indexes are required");
    const int64_t BH = (int64_t)batch.B * batch.H;
    given.resize(BH);
    for (int64_t bh = 0; bh < BH; bh++) {
      MP_CHECK(batch.idx[bh / batch.H], MP_ERR_INVALID, "index %lld of the batch is null",
               (long long)(bh / batch.H));
      const int64_t n = batch.idx[bh / batch.H]->n();
      MP_CHECK(set_n[bh] >= 0 && set_n[bh] <= set_cap, MP_ERR_INVALID,
               "sample size \"%d\" is outside 0..%lld", set_n[bh], (long long)set_cap);
      std::vector<int32_t> &s = given[bh];
      s.assign(sets + bh * set_cap, sets + bh * set_cap + set_n[bh]);
      for (int32_t i : s)
        MP_CHECK(i >= 0 && i < n, MP_ERR_INVALID, "token id \"%d\" is outside 0..%lld", i,
                 (long long)n - 1);
      std::sort(s.begin(), s.end());
      s.erase(std::unique(s.begin(), s.end()), s.end());
    }
    cx.sets = &given;
  }
  PROF_T(a0);
  prepare(cx, batch, Mode::ATTEND, flags);
  PROF_T(a1);
  cx.timing = batch.timing;
  if (cx.timing) cx.timing->prepare = ms_from(cx.t0);
  run_all(cx);
  PROF_T(a2);
  PROF_ADD(4, a0, a1);
  PROF_ADD(5, a1, a2);
  const int G = cx.G, H = cx.H, d = cx.d;
  const double log2e = 1.4426950408889634;
  // the tasks' partial states of each (b, h), merged by log-sum-exp (on the pool: split
  // decode is latency-bound and this is a few thousand d-wide sums)
  pool_run(cx.B * H, [&](int bhi) {
    const int b = bhi / H, h = bhi % H;
    const int hkv = h / G, g = h % G;
    const size_t bh = (size_t)bhi;
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
    const bool off = cx.any_off && cx.off_kv[(size_t)b * cx.Hkv + hkv];
    if (off) k = (int64_t)cx.ids[bh].size();
    if (nnz) nnz[bh] = (int32_t)k;
    if (off || k == 0 || !std::isfinite(M)) {  // attended by the caller, or empty
      std::fill(o, o + d, 0.0f);
      lse2[bh] = -INFINITY;
      return;
    }
    double accs[256];
    std::vector<double> accv;
    double *acc = accs;
    if (d > 256) accv.assign(d, 0.0), acc = accv.data();
    std::fill(acc, acc + d, 0.0);
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
  });
  PROF_T(a3);
  PROF_ADD(6, a2, a3);
  if (stats) {
    sum_stats(cx, stats);
    if (cx.sets || (flags & FLAG_RETRIEVE_ALL)) {
      stats->sampled = 0;
      for (int64_t r : cx.res_nnz) stats->sampled += r;
    }
  }
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
