// embedding.h — token embedding lookup on the CPU.
#pragma once

#include <cstdint>

namespace mp::cpu {

// out[i][dim] = table[tokens[i]][dim] converted to float; table [vocab][dim] in dtype
// (F32/F16/BF16). Tokens must be in range (callers check).
void embedding(int32_t dtype, const void *table, int64_t dim, const int32_t *tokens, int64_t n,
               float *out);

}  // namespace mp::cpu
