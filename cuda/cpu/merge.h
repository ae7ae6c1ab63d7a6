// merge.h — merging two partial attentions by their base-2 log-sum-exps, on the CPU.
#pragma once

#include <cstdint>

namespace mp::cpu {

// o = (2^a·o1 + 2^b·o2) / (2^a + 2^b), lse_out = log2(2^a + 2^b), per row of o[n][d]
// (a = lse1[i], b = lse2[i]). A −∞ side contributes nothing; both −∞ give a zero row and
// −∞. out may alias o1 or o2; lse_out may alias lse1 or lse2.
void merge(const float *o1, const float *lse1, const float *o2, const float *lse2, int64_t n,
           int64_t d, float *out, float *lse_out);

}  // namespace mp::cpu
