// sampling.cpp — token sampling: greedy, temperature, top-k, top-p, seeded.
//
// Order of the filters (as Hugging Face's logits processors): temperature, then top-k, then
// top-p. Candidates and their order:
//   greedy (temperature 0, or top_k 1)  the first maximum (lowest id among equal maxima)
//   top_k > 0                           the k best by (logit desc, id asc)
//   top_p < 1                           all tokens by (logit desc, id asc); the shortest
//                                       prefix whose probability reaches top_p is kept
//   neither                             all tokens in id order
// Weights are exp((l − max)/T) in double; one uniform u ∈ [0, 1) from the caller's state
// (splitmix64: state += 0x9e37…; mix) picks the first candidate whose cumulative weight
// exceeds u·total. The same state and logits give the same token on every machine.
//
// Log-probabilities (the chosen token's and the top-n alternatives') are under the raw
// distribution: log_softmax(logits), with the log-sum-exp in double. The alternatives
// are sorted by logit descending, ties by lower id.
//
// top-p without top-k on a large vocabulary sorts only the best 1024 tokens when they
// already reach top_p (exact: the kept prefix is the same), else everything.
#include "cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace mp::cpu {

namespace {

struct Better {
  const float *l;
  bool operator()(int32_t a, int32_t b) const { return l[a] > l[b] || (l[a] == l[b] && a < b); }
};

}  // namespace

double sample_uniform(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

void sample(const float *logits, int32_t vocab, const mp_sampling_params &p,
            uint64_t *rng_state, int32_t *token, float *logprob, int32_t *top_ids,
            float *top_logprobs) {
  // ---- scan: validity, first maximum, log-sum-exp
  int32_t best = 0;
  for (int32_t i = 0; i < vocab; i++) {
    const float x = logits[i];
    MP_CHECK(!std::isnan(x) && x != INFINITY, MP_ERR_INVALID, "logits[%d] is \"%g\": must be finite or -inf",
             i, (double)x);
    if (x > logits[best]) best = i;
  }
  const double mx = logits[best];
  MP_CHECK(mx != -INFINITY, MP_ERR_INVALID, "every logit is -inf: nothing can be sampled");
  double sum = 0;
  for (int32_t i = 0; i < vocab; i++) sum += std::exp((double)logits[i] - mx);
  const double lse = mx + std::log(sum);

  // ---- choose
  int32_t chosen = best;
  const bool greedy = p.temperature == 0.0f || p.top_k == 1;
  if (!greedy) {
    const Better better{logits};
    const double inv_t = 1.0 / (double)p.temperature;
    auto weight = [&](int32_t i) { return std::exp(((double)logits[i] - mx) * inv_t); };
    std::vector<int32_t> cand;
    bool sorted = false;
    if (p.top_k > 0 && p.top_k < vocab) {
      cand.resize((size_t)vocab);
      std::iota(cand.begin(), cand.end(), 0);
      std::nth_element(cand.begin(), cand.begin() + (p.top_k - 1), cand.end(), better);
      cand.resize((size_t)p.top_k);
      std::sort(cand.begin(), cand.end(), better);
      sorted = true;
    } else if (p.top_p < 1.0f) {
      double total = 0;
      for (int32_t i = 0; i < vocab; i++) total += weight(i);
      const int32_t head = 1024;
      cand.resize((size_t)vocab);
      std::iota(cand.begin(), cand.end(), 0);
      bool done = false;
      if (vocab > 4 * head) {
        std::nth_element(cand.begin(), cand.begin() + (head - 1), cand.end(), better);
        std::sort(cand.begin(), cand.begin() + head, better);
        double cum = 0;
        for (int32_t j = 0; j < head && !done; j++) {
          cum += weight(cand[(size_t)j]);
          done = cum >= (double)p.top_p * total;
        }
        if (done) cand.resize((size_t)head);
      }
      if (!done) std::sort(cand.begin(), cand.end(), better);
      sorted = true;
    } else {
      cand.resize((size_t)vocab);
      std::iota(cand.begin(), cand.end(), 0);
    }
    std::vector<double> w(cand.size());
    double total = 0;
    for (size_t j = 0; j < cand.size(); j++) total += (w[j] = weight(cand[j]));
    size_t keep = cand.size();
    if (sorted && p.top_p < 1.0f) {
      const double target = (double)p.top_p * total;
      double cum = 0;
      for (size_t j = 0; j < cand.size(); j++) {
        cum += w[j];
        if (cum >= target) {
          keep = j + 1;
          break;
        }
      }
      total = 0;
      for (size_t j = 0; j < keep; j++) total += w[j];
    }
    const double u = sample_uniform(rng_state) * total;
    double cum = 0;
    chosen = cand[keep - 1];
    for (size_t j = 0; j < keep; j++) {
      cum += w[j];
      if (cum > u) {
        chosen = cand[j];
        break;
      }
    }
  }
  *token = chosen;
  if (logprob) *logprob = (float)((double)logits[chosen] - lse);

  // ---- top-n alternatives (insertion into a small sorted list)
  const int32_t n = std::min(p.n_logprobs, vocab);
  if (n > 0) {
    const Better better{logits};
    std::vector<int32_t> top;
    top.reserve((size_t)n + 1);
    for (int32_t i = 0; i < vocab; i++) {
      if ((int32_t)top.size() == n && !better(i, top.back())) continue;
      auto at = std::upper_bound(top.begin(), top.end(), i, better);
      top.insert(at, i);
      if ((int32_t)top.size() > n) top.pop_back();
    }
    for (int32_t j = 0; j < n; j++) {
      top_ids[j] = top[(size_t)j];
      top_logprobs[j] = (float)((double)logits[top[(size_t)j]] - lse);
    }
  }
  for (int32_t j = n; j < p.n_logprobs; j++) {
    top_ids[j] = -1;
    top_logprobs[j] = -INFINITY;
  }
}

}  // namespace mp::cpu
