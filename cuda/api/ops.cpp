// ops.cpp — the exported single ops (magicpig.h, section "single ops"): argument checks
// with messages naming the argument, then dispatch to the CPU kernels (cuda/cpu/) or to
// the CUDA launchers (mp::gpu::op_*, cuda/gpu/gpu.h).
#include <cmath>
#include <limits>

#include "common/common.h"
#include "cpu/attention.h"
#include "cpu/embedding.h"
#include "cpu/matmul.h"
#include "cpu/merge.h"
#include "cpu/rmsnorm.h"
#include "cpu/rope.h"
#include "cpu/swiglu.h"
#include "engine/engine.h"
#include "gpu/gpu.h"

namespace {

// true for CUDA, false for CPU; throws on anything else.
bool on_gpu(int32_t backend) {
  MP_CHECK(backend == MP_BACKEND_CPU || backend == MP_BACKEND_CUDA, MP_ERR_INVALID,
           "backend \"%d\" is invalid: must be 1 (cpu) or 2 (cuda)", backend);
  return backend == MP_BACKEND_CUDA;
}

#define MP_NOT_NULL(p) MP_CHECK((p) != nullptr, MP_ERR_INVALID, #p " is NULL")
#define MP_AT_LEAST(v, lo)                                                                  \
  MP_CHECK((v) >= (lo), MP_ERR_INVALID, #v " \"%lld\" is invalid: must be >= %lld",         \
           (long long)(v), (long long)(lo))

void check_dtype(int32_t dtype, const char *name) {
  MP_CHECK(dtype == MP_DTYPE_F32 || dtype == MP_DTYPE_F16 || dtype == MP_DTYPE_BF16,
           MP_ERR_INVALID, "%s \"%d\" is invalid: must be 0 (F32), 1 (F16) or 2 (BF16)", name,
           dtype);
}

// Products of dimensions must stay addressable (and fit the int arguments of the GPU ops).
void check_elems(double elems, const char *what) {
  MP_CHECK(elems <= (double)std::numeric_limits<int32_t>::max() * 64.0, MP_ERR_INVALID,
           "%s is too large (%.0f elements)", what, elems);
}

}  // namespace

extern "C" {

MP_API int32_t mp_op_embedding(int32_t backend, int32_t dtype, const void *table,
                               int32_t vocab, int32_t dim, const int32_t *tokens, int32_t n,
                               float *out, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    const bool gpu = on_gpu(backend);
    check_dtype(dtype, "dtype");
    MP_NOT_NULL(table);
    MP_AT_LEAST(vocab, 1);
    MP_AT_LEAST(dim, 1);
    MP_AT_LEAST(n, 0);
    if (n == 0) return MP_OK;
    MP_NOT_NULL(tokens);
    MP_NOT_NULL(out);
    for (int32_t i = 0; i < n; i++)
      MP_CHECK(tokens[i] >= 0 && tokens[i] < vocab, MP_ERR_INVALID,
               "tokens[%d] \"%d\" is out of range: vocab is %d", i, tokens[i], vocab);
    if (gpu)
      mp::gpu::op_embedding(dtype, table, vocab, dim, tokens, n, out);
    else
      mp::cpu::embedding(dtype, table, dim, tokens, n, out);
    return MP_OK;
  });
}

MP_API int32_t mp_op_rmsnorm(int32_t backend, const float *x, const float *w, int32_t n,
                             int32_t dim, float eps, float *out, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    const bool gpu = on_gpu(backend);
    MP_AT_LEAST(n, 0);
    MP_AT_LEAST(dim, 1);
    MP_CHECK(std::isfinite(eps) && eps >= 0, MP_ERR_INVALID,
             "eps \"%g\" is invalid: must be a finite number >= 0", (double)eps);
    if (n == 0) return MP_OK;
    MP_NOT_NULL(x);
    MP_NOT_NULL(w);
    MP_NOT_NULL(out);
    check_elems((double)n * dim, "x");
    if (gpu)
      mp::gpu::op_rmsnorm(x, w, n, dim, eps, out);
    else
      mp::cpu::rmsnorm(x, w, n, dim, eps, out);
    return MP_OK;
  });
}

MP_API int32_t mp_op_rope(int32_t backend, float *x, int32_t n, int32_t heads,
                          int32_t head_dim, const int32_t *positions,
                          const mp_rope_params *rope, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    const bool gpu = on_gpu(backend);
    MP_AT_LEAST(n, 0);
    MP_AT_LEAST(heads, 1);
    MP_AT_LEAST(head_dim, 2);
    MP_CHECK(head_dim % 2 == 0, MP_ERR_INVALID, "head_dim \"%d\" is invalid: must be even",
             head_dim);
    MP_NOT_NULL(rope);
    mp::validate_rope(*rope, "rope");
    if (n == 0) return MP_OK;
    MP_NOT_NULL(x);
    MP_NOT_NULL(positions);
    check_elems((double)n * heads * head_dim, "x");
    if (gpu)
      mp::gpu::op_rope(x, n, heads, head_dim, positions, rope);
    else
      mp::cpu::rope(x, n, heads, head_dim, positions, *rope);
    return MP_OK;
  });
}

MP_API int32_t mp_op_matmul(int32_t backend, int32_t wdtype, const void *w, const float *x,
                            int32_t n, int32_t in, int32_t out, float *y, char *err,
                            size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    const bool gpu = on_gpu(backend);
    check_dtype(wdtype, "wdtype");
    MP_AT_LEAST(n, 0);
    MP_AT_LEAST(in, 1);
    MP_AT_LEAST(out, 1);
    MP_NOT_NULL(w);
    if (n == 0) return MP_OK;
    MP_NOT_NULL(x);
    MP_NOT_NULL(y);
    check_elems((double)in * out, "w");
    check_elems((double)n * in, "x");
    check_elems((double)n * out, "y");
    if (gpu)
      mp::gpu::op_matmul(wdtype, w, x, n, in, out, y);
    else
      mp::cpu::matmul(wdtype, w, x, n, in, out, y);
    return MP_OK;
  });
}

MP_API int32_t mp_op_attention(int32_t backend, int32_t kv_dtype, const float *q,
                               const void *k, const void *v, int32_t n, int32_t T,
                               int32_t H, int32_t Hkv, int32_t d, int32_t q_pos0, float *out,
                               float *lse2, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    const bool gpu = on_gpu(backend);
    check_dtype(kv_dtype, "kv_dtype");
    MP_AT_LEAST(n, 0);
    MP_AT_LEAST(T, 1);
    MP_AT_LEAST(H, 1);
    MP_AT_LEAST(Hkv, 1);
    MP_AT_LEAST(d, 1);
    MP_AT_LEAST(q_pos0, 0);
    MP_CHECK(H % Hkv == 0, MP_ERR_INVALID, "Hkv \"%d\" is invalid: must divide H (%d)", Hkv, H);
    MP_NOT_NULL(k);
    MP_NOT_NULL(v);
    if (n == 0) return MP_OK;
    MP_NOT_NULL(q);
    MP_NOT_NULL(out);
    check_elems((double)T * Hkv * d, "k");
    check_elems((double)n * H * d, "q");
    if (gpu) {
      mp::gpu::op_attention(kv_dtype, q, k, v, n, T, H, Hkv, d, q_pos0, out, lse2);
    } else {
      const mp::cpu::KvView kv{k, v, kv_dtype, (int64_t)Hkv * d, d};
      mp::cpu::attention(q, n, H, Hkv, d, q_pos0, T, kv, out, lse2);
    }
    return MP_OK;
  });
}

MP_API int32_t mp_op_swiglu(int32_t backend, const float *gate, const float *up, int64_t n,
                            float *out, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    const bool gpu = on_gpu(backend);
    MP_AT_LEAST(n, 0);
    if (n == 0) return MP_OK;
    MP_NOT_NULL(gate);
    MP_NOT_NULL(up);
    MP_NOT_NULL(out);
    if (gpu)
      mp::gpu::op_swiglu(gate, up, n, out);
    else
      mp::cpu::swiglu(gate, up, n, out);
    return MP_OK;
  });
}

MP_API int32_t mp_op_merge(int32_t backend, const float *o1, const float *lse1,
                           const float *o2, const float *lse2, int32_t n, int32_t d,
                           float *out, float *lse_out, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    const bool gpu = on_gpu(backend);
    MP_AT_LEAST(n, 0);
    MP_AT_LEAST(d, 1);
    if (n == 0) return MP_OK;
    MP_NOT_NULL(o1);
    MP_NOT_NULL(lse1);
    MP_NOT_NULL(o2);
    MP_NOT_NULL(lse2);
    MP_NOT_NULL(out);
    MP_NOT_NULL(lse_out);
    check_elems((double)n * d, "o1");
    if (gpu)
      mp::gpu::op_merge(o1, lse1, o2, lse2, n, d, out, lse_out);
    else
      mp::cpu::merge(o1, lse1, o2, lse2, n, d, out, lse_out);
    return MP_OK;
  });
}

}  // extern "C"
