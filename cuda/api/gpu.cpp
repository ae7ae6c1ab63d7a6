// gpu.cpp — the exported CUDA-backend entry points (magicpig.h, section "CUDA backend"):
// kernel selection and GPU-only ops for tests and benchmarks. Thin: validate, call
// mp::gpu (cuda/gpu/gpu.h), guard. A CPU-only build answers MP_ERR_NO_DEVICE.
#include "common/common.h"
#include "engine/profile.h"
#include "gpu/gpu.h"

extern "C" {

MP_API int32_t mp_gpu_set_kernel(const char *op, int32_t variant, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    mp::gpu::set_kernel_variant(op, variant);
    return MP_OK;
  });
}

MP_API int32_t mp_gpu_sample(const float *logits, int32_t n, int32_t vocab,
                             const mp_sampling_params *p, const float *u, int32_t *tokens,
                             char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(p != nullptr, MP_ERR_INVALID, "p is NULL");
    MP_CHECK(n >= 0, MP_ERR_INVALID, "n \"%d\" is invalid: must be >= 0", n);
    MP_CHECK(vocab >= 1, MP_ERR_INVALID, "vocab \"%d\" is invalid: must be >= 1", vocab);
    MP_CHECK(p->top_k >= 0, MP_ERR_INVALID, "top_k \"%d\" is invalid: must be >= 0", p->top_k);
    MP_CHECK(p->top_p > 0 && p->top_p <= 1, MP_ERR_INVALID,
             "top_p \"%g\" is invalid: must be in (0, 1]", (double)p->top_p);
    if (n == 0) return MP_OK;
    MP_CHECK(logits != nullptr && tokens != nullptr, MP_ERR_INVALID, "logits or tokens is NULL");
    MP_CHECK(p->temperature <= 0 || u != nullptr, MP_ERR_INVALID,
             "u is NULL: sampling with temperature > 0 needs one uniform draw per row");
    mp::gpu::op_sample(logits, n, vocab, p->temperature, p->top_k, p->top_p, u, tokens);
    return MP_OK;
  });
}

MP_API int32_t mp_gpu_describe(char *out, size_t cap, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(out != nullptr && cap > 0, MP_ERR_INVALID, "out is NULL or cap is 0");
    mp::write_error(out, cap, mp::gpu::describe().c_str());
    return MP_OK;
  });
}

MP_API int32_t mp_decode_profile(double *out, int32_t n, int32_t reset) {
  if (!out || n <= 0) return 0;
  return mp::decode_profile_read(out, n, reset != 0);
}

}  // extern "C"
