// matmul.h — y[n][out] = x[n][in] · W[out][in]^T on the CPU (F32/F16/BF16 weights).
#pragma once

#include <cstdint>

namespace mp::cpu {

// W row-major [out][in] in wdtype; x [n][in] and y [n][out] F32; fp32 accumulation.
// Each y element is one dot product computed by the rule of simd.h, so the result for a
// token does not depend on n or on the thread count.
void matmul(int32_t wdtype, const void *w, const float *x, int64_t n, int64_t in, int64_t out,
            float *y);

}  // namespace mp::cpu
