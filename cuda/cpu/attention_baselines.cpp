/*
 * attention_baselines.cpp — TopK, Quest and oracle sampling on the CPU, the baselines of
 * the MagicPIG paper (magicpig.md §14.2), for evaluation next to sampled attention.
 *
 * All three work per query head (OpenMP over heads) on K/V rows laid out as
 * [Hkv][rows][d] (lsh::KVView), F32 or BF16, and return a partial attention over the
 * region they were given — output and base-2 log-sum-exp of the scaled scores — that
 * merges with an exact attention over other tokens by LSE, like sampled attention.
 *
 *   TopK    scores every key exactly (n·d per head), keeps the ⌈budget·n⌉ largest
 *           (nth_element), softmax over those.
 *   Quest   pages of P consecutive tokens; per page and dimension the min and max key
 *           (computed once per KV head per call); bound = Σ_e max(q_e·min_e, q_e·max_e)
 *           ≥ q·k for every key of the page; exact attention over the keys of the top
 *           ⌈budget·n_pages⌉ pages.
 *   Oracle  exact softmax p over all keys; m = max(1, round(budget·n)) draws with
 *           replacement (inverse CDF, seeded per head); output = mean of the drawn V
 *           rows, an unbiased estimate of Σ p_i v_i; its LSE is the exact one.
 */
#include "cpu/attention_baselines.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/common.h"

namespace mp::baseline {

namespace {

constexpr double LOG2E = 1.4426950408889634;

inline const char *row_ptr(const lsh::KVView &v, const void *base, int h, int64_t i, int d) {
  const int64_t esz = v.dtype == MP_DTYPE_BF16 ? 2 : 4;
  return (const char *)base + ((int64_t)h * v.head_rows + v.base + i) * d * esz;
}

inline void load_row(const lsh::KVView &v, const char *p, int d, float *out) {
  if (v.dtype == MP_DTYPE_BF16) {
    const uint16_t *s = (const uint16_t *)p;
    for (int e = 0; e < d; e++) out[e] = bf16_to_f32(s[e]);
  } else {
    std::memcpy(out, p, sizeof(float) * d);
  }
}

void check(const KV &kv, int H, float budget) {
  MP_CHECK(kv.view.dtype == MP_DTYPE_F32 || kv.view.dtype == MP_DTYPE_BF16, MP_ERR_UNSUPPORTED,
           "KV dtype %s is not supported by the baselines", dtype_name(kv.view.dtype));
  MP_CHECK(kv.Hkv >= 1 && kv.d >= 1 && H >= kv.Hkv && H % kv.Hkv == 0, MP_ERR_INVALID,
           "query heads \"%d\" must be a multiple of the %d KV heads", H, kv.Hkv);
  MP_CHECK(kv.n >= 0, MP_ERR_INVALID, "token count \"%lld\" must be >= 0", (long long)kv.n);
  MP_CHECK(budget >= 0.0f && budget <= 1.0f, MP_ERR_INVALID,
           "budget \"%g\" must be in [0, 1]", (double)budget);
}

// Softmax-weighted sum over the given token ids of KV head hk: writes out[d], returns
// lse2 (−∞ and a zero output for an empty list).
float attend(const KV &kv, int hk, const float *q, const std::vector<int64_t> &ids,
             const std::vector<float> &scores, float *out) {
  const int d = kv.d;
  std::fill(out, out + d, 0.0f);
  if (ids.empty()) return -INFINITY;
  float m = -INFINITY;
  for (float s : scores) m = std::max(m, s);
  std::vector<double> acc(d, 0.0);
  std::vector<float> v(d);
  double l = 0.0;
  for (size_t j = 0; j < ids.size(); j++) {
    const double w = std::exp((double)scores[j] - m);
    l += w;
    load_row(kv.view, row_ptr(kv.view, kv.view.v, hk, ids[j], d), d, v.data());
    for (int e = 0; e < d; e++) acc[e] += w * v[e];
  }
  for (int e = 0; e < d; e++) out[e] = (float)(acc[e] / l);
  (void)q;
  return (float)(((double)m + std::log(l)) * LOG2E);
}

// scores[i] = q·k_i/√d for all n keys of KV head hk
void all_scores(const KV &kv, int hk, const float *q, std::vector<float> &scores) {
  const int d = kv.d;
  const float scale = 1.0f / std::sqrt((float)d);
  scores.resize(kv.n);
  std::vector<float> k(d);
  for (int64_t i = 0; i < kv.n; i++) {
    load_row(kv.view, row_ptr(kv.view, kv.view.k, hk, i, d), d, k.data());
    float s = 0.0f;
    for (int e = 0; e < d; e++) s += q[e] * k[e];
    scores[i] = s * scale;
  }
}

// ⌈budget·n⌉, forgiving the float rounding of budget (0.05f·2000 = 100.0000015 → 100)
int64_t count_of(double budget, int64_t n) {
  return std::min<int64_t>(n, (int64_t)std::ceil(budget * (double)n * (1.0 - 1e-6)));
}

}  // namespace

void topk(const KV &kv, const float *q, int H, float budget, float *out, float *lse2,
          int32_t *nsel) {
  check(kv, H, budget);
  const int G = H / kv.Hkv, d = kv.d;
  const int64_t k = count_of(budget, kv.n);
#pragma omp parallel for num_threads(threads()) schedule(dynamic, 1)
  for (int h = 0; h < H; h++) {
    std::vector<float> scores;
    all_scores(kv, h / G, q + (size_t)h * d, scores);
    std::vector<int64_t> ids(kv.n);
    std::iota(ids.begin(), ids.end(), 0);
    if (k < kv.n)
      std::nth_element(ids.begin(), ids.begin() + k, ids.end(),
                       [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
    ids.resize(k);
    std::sort(ids.begin(), ids.end());
    std::vector<float> sel(k);
    for (int64_t j = 0; j < k; j++) sel[j] = scores[ids[j]];
    lse2[h] = attend(kv, h / G, q + (size_t)h * d, ids, sel, out + (size_t)h * d);
    if (nsel) nsel[h] = (int32_t)k;
  }
}

// min/max of the keys of page p of KV head hk (tokens [p·page, min(n, (p+1)·page)))
static void page_minmax(const KV &kv, int hk, int64_t p, int page, float *mn, float *mx) {
  const int d = kv.d;
  std::fill(mn, mn + d, INFINITY);
  std::fill(mx, mx + d, -INFINITY);
  std::vector<float> k(d);
  for (int64_t i = p * page; i < std::min(kv.n, (p + 1) * page); i++) {
    load_row(kv.view, row_ptr(kv.view, kv.view.k, hk, i, d), d, k.data());
    for (int e = 0; e < d; e++) {
      mn[e] = std::min(mn[e], k[e]);
      mx[e] = std::max(mx[e], k[e]);
    }
  }
}

void quest_pages(const KV &kv, int page, QuestPages &meta) {
  const int d = kv.d;
  const int64_t full = kv.n / page;
  if (full <= meta.pages) return;
  if (full > meta.stride) {  // grow: new stride, keep the filled pages
    const int64_t stride = std::max<int64_t>(full, meta.stride * 2);
    std::vector<float> mins((size_t)kv.Hkv * stride * d), maxs((size_t)kv.Hkv * stride * d);
    for (int h = 0; h < kv.Hkv; h++)
      for (int64_t p = 0; p < meta.pages; p++) {
        std::memcpy(&mins[((size_t)h * stride + p) * d], &meta.mins[((size_t)h * meta.stride + p) * d],
                    sizeof(float) * d);
        std::memcpy(&maxs[((size_t)h * stride + p) * d], &meta.maxs[((size_t)h * meta.stride + p) * d],
                    sizeof(float) * d);
      }
    meta.mins.swap(mins);
    meta.maxs.swap(maxs);
    meta.stride = stride;
  }
  const int64_t p0 = meta.pages, np = full - p0;
#pragma omp parallel for num_threads(threads()) schedule(static)
  for (int64_t hp = 0; hp < kv.Hkv * np; hp++) {
    const int hk = (int)(hp / np);
    const int64_t p = p0 + hp % np;
    page_minmax(kv, hk, p, page, &meta.mins[((size_t)hk * meta.stride + p) * d],
                &meta.maxs[((size_t)hk * meta.stride + p) * d]);
  }
  meta.pages = full;
}

void quest(const KV &kv, const float *q, int H, float budget, int page, float *out,
           float *lse2, int32_t *nsel, const QuestPages *meta) {
  check(kv, H, budget);
  MP_CHECK(page >= 1, MP_ERR_INVALID, "page size \"%d\" must be >= 1", page);
  const int G = H / kv.Hkv, d = kv.d;
  const int64_t np = (kv.n + page - 1) / page;
  const int64_t kp = count_of(budget, np);
  // metadata of the pages `meta` does not hold, per KV head
  const int64_t cached = meta ? std::min(meta->pages, np) : 0;
  const int64_t rest = np - cached;
  std::vector<float> mins((size_t)kv.Hkv * rest * d), maxs((size_t)kv.Hkv * rest * d);
#pragma omp parallel for num_threads(threads()) schedule(static)
  for (int64_t hp = 0; hp < kv.Hkv * rest; hp++) {
    const int hk = (int)(hp / rest);
    const int64_t p = cached + hp % rest;
    page_minmax(kv, hk, p, page, &mins[(size_t)hp * d], &maxs[(size_t)hp * d]);
  }
  auto page_meta = [&](int hk, int64_t p, const float **mn, const float **mx) {
    if (p < cached) {
      *mn = &meta->mins[((size_t)hk * meta->stride + p) * d];
      *mx = &meta->maxs[((size_t)hk * meta->stride + p) * d];
    } else {
      *mn = &mins[((size_t)hk * rest + (p - cached)) * d];
      *mx = &maxs[((size_t)hk * rest + (p - cached)) * d];
    }
  };
  const float scale = 1.0f / std::sqrt((float)d);
#pragma omp parallel for num_threads(threads()) schedule(dynamic, 1)
  for (int h = 0; h < H; h++) {
    const int hk = h / G;
    const float *qh = q + (size_t)h * d;
    std::vector<float> bound(np);
    for (int64_t p = 0; p < np; p++) {
      const float *mn, *mx;
      page_meta(hk, p, &mn, &mx);
      float b = 0.0f;
      for (int e = 0; e < d; e++) b += std::max(qh[e] * mn[e], qh[e] * mx[e]);
      bound[p] = b;
    }
    std::vector<int64_t> pages(np);
    std::iota(pages.begin(), pages.end(), 0);
    if (kp < np)
      std::nth_element(pages.begin(), pages.begin() + kp, pages.end(),
                       [&](int64_t a, int64_t b) { return bound[a] > bound[b]; });
    pages.resize(kp);
    std::sort(pages.begin(), pages.end());
    std::vector<int64_t> ids;
    std::vector<float> sc;
    std::vector<float> k(d);
    for (int64_t p : pages)
      for (int64_t i = p * page; i < std::min(kv.n, (p + 1) * page); i++) {
        load_row(kv.view, row_ptr(kv.view, kv.view.k, hk, i, d), d, k.data());
        float s = 0.0f;
        for (int e = 0; e < d; e++) s += qh[e] * k[e];
        ids.push_back(i);
        sc.push_back(s * scale);
      }
    lse2[h] = attend(kv, hk, qh, ids, sc, out + (size_t)h * d);
    if (nsel) nsel[h] = (int32_t)ids.size();
  }
}

void oracle(const KV &kv, const float *q, int H, float budget, uint64_t seed, float *out,
            float *lse2, int32_t *nsel) {
  check(kv, H, budget);
  const int G = H / kv.Hkv, d = kv.d;
  const int64_t draws = kv.n == 0 ? 0 : std::max<int64_t>(1, std::llround(budget * (double)kv.n));
#pragma omp parallel for num_threads(threads()) schedule(dynamic, 1)
  for (int h = 0; h < H; h++) {
    const int hk = h / G;
    float *o = out + (size_t)h * d;
    std::fill(o, o + d, 0.0f);
    if (kv.n == 0) {
      lse2[h] = -INFINITY;
      if (nsel) nsel[h] = 0;
      continue;
    }
    std::vector<float> scores;
    all_scores(kv, hk, q + (size_t)h * d, scores);
    float m = -INFINITY;
    for (float s : scores) m = std::max(m, s);
    std::vector<double> cdf(kv.n);
    double l = 0.0;
    for (int64_t i = 0; i < kv.n; i++) {
      l += std::exp((double)scores[i] - m);
      cdf[i] = l;
    }
    lse2[h] = (float)(((double)m + std::log(l)) * LOG2E);
    Rng rng(seed + (uint64_t)h);
    std::vector<int64_t> picks(draws);
    for (int64_t j = 0; j < draws; j++) {
      const double x = rng.uniform() * l;
      int64_t i = std::upper_bound(cdf.begin(), cdf.end(), x) - cdf.begin();
      picks[j] = std::min(i, kv.n - 1);
    }
    std::sort(picks.begin(), picks.end());
    std::vector<double> acc(d, 0.0);
    std::vector<float> v(d);
    int64_t distinct = 0;
    for (int64_t j = 0; j < draws;) {
      int64_t e = j;
      while (e < draws && picks[e] == picks[j]) e++;
      load_row(kv.view, row_ptr(kv.view, kv.view.v, hk, picks[j], d), d, v.data());
      for (int x = 0; x < d; x++) acc[x] += (double)(e - j) * v[x];
      distinct++;
      j = e;
    }
    for (int x = 0; x < d; x++) o[x] = (float)(acc[x] / (double)draws);
    if (nsel) nsel[h] = (int32_t)distinct;
  }
}

}  // namespace mp::baseline
