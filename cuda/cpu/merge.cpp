// merge.cpp — combines attention over two disjoint key sets (e.g. the dense local window
// on the GPU and the sampled offloaded keys on the CPU) into attention over their union.
//
// With a = lse1, b = lse2 (base 2) and m = max(a, b): wa = 2^(a−m), wb = 2^(b−m),
// o = (wa·o1 + wb·o2)/(wa + wb), lse = m + log2(wa + wb). Weights in double. Rows of
// o1/o2/out are [n][d] contiguous; lse arrays are [n].
#include "cpu/merge.h"

#include <cmath>

#include "common/common.h"

namespace mp::cpu {

void merge(const float *o1, const float *lse1, const float *o2, const float *lse2, int64_t n,
           int64_t d, float *out, float *lse_out) {
#pragma omp parallel for num_threads(threads()) schedule(static) if (n * d > 65536)
  for (int64_t i = 0; i < n; i++) {
    const double a = lse1[i], b = lse2[i];
    const float *x1 = o1 + i * d;
    const float *x2 = o2 + i * d;
    float *y = out + i * d;
    if (std::isinf(a) && a < 0 && std::isinf(b) && b < 0) {
      for (int64_t j = 0; j < d; j++) y[j] = 0.0f;
      lse_out[i] = -INFINITY;
      continue;
    }
    const double m = std::max(a, b);
    const double wa = std::exp2(a - m), wb = std::exp2(b - m);  // exp2(−∞) = 0
    const double inv = 1.0 / (wa + wb);
    const double ca = wa * inv, cb = wb * inv;
    for (int64_t j = 0; j < d; j++) {
      // a side with weight 0 must not leak NaN/Inf from its (unused) output
      const double t1 = ca != 0.0 ? ca * (double)x1[j] : 0.0;
      const double t2 = cb != 0.0 ? cb * (double)x2[j] : 0.0;
      y[j] = (float)(t1 + t2);
    }
    lse_out[i] = (float)(m + std::log2(wa + wb));
  }
}

}  // namespace mp::cpu
