// swiglu.cpp — out = silu(gate) ⊙ up, elementwise over n floats (flattened [tokens][ffn]).
// Computed in float as llama2.c does: g · (1 / (1 + expf(−g))) · u. Parallel over blocks.
#include "cpu/swiglu.h"

#include <cmath>

#include "common/common.h"

namespace mp::cpu {

void swiglu(const float *gate, const float *up, int64_t n, float *out) {
#pragma omp parallel for num_threads(threads()) schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) {
    const float g = gate[i];
    out[i] = g * (1.0f / (1.0f + std::exp(-g))) * up[i];
  }
}

}  // namespace mp::cpu
