// attention_baselines.h — the sparse-attention baselines MagicPIG is compared with
// (magicpig.md §14.2): TopK, Quest page selection and oracle sampling, over raw K/V.
#pragma once

#include <cstdint>
#include <vector>

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

// Quest page metadata: per KV head and page, the per-dimension min and max key,
// mins/maxs[(h·stride + p)·d + e]. Pages [0, pages) are filled.
struct QuestPages {
  std::vector<float> mins, maxs;
  int64_t pages = 0, stride = 0;
};

// Fills pages [pages, ⌊n/page⌋) (complete pages only) of `meta`, growing its storage.
void quest_pages(const KV &kv, int page, QuestPages &meta);

// Quest: pages of `page` tokens with per-dimension key min/max; a page's bound is
// Σ_e max(q_e·min_e, q_e·max_e); exact attention over the top ⌈budget·pages⌉ pages.
// `meta` (may be null) holds the metadata of its first pages; the rest is computed here.
void quest(const KV &kv, const float *q, int H, float budget, int page, float *out,
           float *lse2, int32_t *nsel, const QuestPages *meta = nullptr);

// Oracle sampling: max(1, round(budget·n)) draws with replacement from the exact
// softmax; out = mean of the drawn values, lse2 = the exact LSE over all n; nsel =
// distinct keys drawn. Draws of head h use mp::Rng(seed + h).
void oracle(const KV &kv, const float *q, int H, float budget, uint64_t seed, float *out,
            float *lse2, int32_t *nsel);

}  // namespace mp::baseline
