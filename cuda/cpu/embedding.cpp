// embedding.cpp — out[i][:] = table[tokens[i]][:], converting F16/BF16 rows to float.
// Layout: table[v][j] = table + v*dim + j (row-major [vocab][dim]). Exact (conversion to
// float is lossless), parallel over tokens.
#include "cpu/embedding.h"

#include "common/common.h"

namespace mp::cpu {

void embedding(int32_t dtype, const void *table, int64_t dim, const int32_t *tokens, int64_t n,
               float *out) {
  const size_t es = dtype_size(dtype);
#pragma omp parallel for num_threads(threads()) schedule(static) if (n * dim > 65536)
  for (int64_t i = 0; i < n; i++) {
    const uint8_t *row = (const uint8_t *)table + (size_t)tokens[i] * (size_t)dim * es;
    float *o = out + i * dim;
    if (dtype == MP_DTYPE_F32) {
      std::memcpy(o, row, (size_t)dim * 4);
    } else if (dtype == MP_DTYPE_BF16) {
      const uint16_t *r = (const uint16_t *)row;
      for (int64_t j = 0; j < dim; j++) o[j] = bf16_to_f32(r[j]);
    } else {
      const uint16_t *r = (const uint16_t *)row;
      for (int64_t j = 0; j < dim; j++) o[j] = f16_to_f32(r[j]);
    }
  }
}

}  // namespace mp::cpu
