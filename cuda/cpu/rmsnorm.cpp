// rmsnorm.cpp — out = w ⊙ (x · 1/sqrt(mean(x²) + eps)), one row per token.
//
// The sum of squares is accumulated in double (exact enough that the result is the
// correctly rounded float r in practice); r is rounded to float and applied as
// w[j] * (x[j] * r) in float, the order of llama2.c and of Hugging Face's LlamaRMSNorm.
// Layout: x[i][j] = x + i*dim + j. Parallel over rows.
#include "cpu/rmsnorm.h"

#include <cmath>

#include "common/common.h"

namespace mp::cpu {

void rmsnorm(const float *x, const float *w, int64_t n, int64_t dim, float eps, float *out) {
#pragma omp parallel for num_threads(threads()) schedule(static) if (n * dim > 65536)
  for (int64_t i = 0; i < n; i++) {
    const float *xi = x + i * dim;
    float *oi = out + i * dim;
    double ss = 0;
    for (int64_t j = 0; j < dim; j++) ss += (double)xi[j] * (double)xi[j];
    const float r = (float)(1.0 / std::sqrt(ss / (double)dim + (double)eps));
    for (int64_t j = 0; j < dim; j++) oi[j] = w[j] * (xi[j] * r);
  }
}

}  // namespace mp::cpu
