// ops_pending.cu — TEMPORARY: GPU ops whose kernels are still being written. Each throws
// MP_ERR_UNSUPPORTED so the library links in CUDA builds meanwhile. The GPU work removes
// a function from here as it lands the real one in its own file; this file must be gone
// before the GPU backend is called done.
#include "gpu/gpu.h"

namespace mp::gpu {

#define MP_PENDING(name) \
  MP_FAIL(MP_ERR_UNSUPPORTED, "the CUDA kernel for %s is not implemented yet", name)

void op_embedding(int32_t, const void *, int, int, const int32_t *, int, float *) {
  MP_PENDING("embedding");
}
void op_rmsnorm(const float *, const float *, int, int, float, float *) { MP_PENDING("rmsnorm"); }
void op_rope(float *, int, int, int, const int32_t *, const mp_rope_params *) {
  MP_PENDING("rope");
}
void op_matmul(int32_t, const void *, const float *, int, int, int, float *) {
  MP_PENDING("matmul");
}
void op_attention(int32_t, const float *, const void *, const void *, int, int, int, int, int,
                  int, float *, float *) {
  MP_PENDING("attention");
}
void op_swiglu(const float *, const float *, int64_t, float *) { MP_PENDING("swiglu"); }
void op_merge(const float *, const float *, const float *, const float *, int, int, float *,
              float *) {
  MP_PENDING("merge");
}
void lsh_hash(const float *, const float *, int, int, int, int, uint16_t *) {
  MP_PENDING("lsh_hash");
}

}  // namespace mp::gpu
