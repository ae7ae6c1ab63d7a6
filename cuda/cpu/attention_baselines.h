// attention_baselines.h — the sparse-attention baselines MagicPIG is compared with
// (magicpig.md §14.2): TopK, Quest page selection and oracle sampling, over raw K/V.
#pragma once

#include <cstdint>

#include "cpu/sampled_attention.h"

namespace mp::baseline {

// Keys and values of n tokens: token i of KV head h is the row (h·head_rows + base + i)
// of k and v (F32 or BF16, d elements per row).
struct KV {
  lsh::KVView view;
  int64_t n = 0;
  int Hkv = 0, d = 0;
};

// Exact top ⌈budget·n⌉ scores of each query head, softmax over them: out[H][d], lse2[H]
// (base-2 LSE of q·k/√d over the selected keys), nsel[H] keys attended.
void topk(const KV &kv, const float *q, int H, float budget, float *out, float *lse2,
          int32_t *nsel);

// Quest: pages of `page` tokens with per-dimension key min/max; a page's bound is
// Σ_e max(q_e·min_e, q_e·max_e); exact attention over the top ⌈budget·pages⌉ pages.
void quest(const KV &kv, const float *q, int H, float budget, int page, float *out,
           float *lse2, int32_t *nsel);

// Oracle sampling: max(1, round(budget·n)) draws with replacement from the exact
// softmax; out = mean of the drawn values, lse2 = the exact LSE over all n; nsel =
// distinct keys drawn. Draws of head h use mp::Rng(seed + h).
void oracle(const KV &kv, const float *q, int H, float budget, uint64_t seed, float *out,
            float *lse2, int32_t *nsel);

}  // namespace mp::baseline
