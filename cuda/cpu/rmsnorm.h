// rmsnorm.h — RMSNorm on the CPU.
#pragma once

#include <cstdint>

namespace mp::cpu {

// out[i][j] = w[j] · (x[i][j] · r_i), r_i = 1/sqrt(mean_j x[i][j]² + eps). out may alias x.
void rmsnorm(const float *x, const float *w, int64_t n, int64_t dim, float eps, float *out);

}  // namespace mp::cpu
