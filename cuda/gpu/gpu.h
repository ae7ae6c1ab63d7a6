// gpu.h — the host-side interface of the CUDA backend, callable from C++ code that is
// compiled without nvcc. In a CPU-only build (no MP_HAVE_CUDA) every function here has
// an inline fallback: no devices, and anything that needs one throws MP_ERR_NO_DEVICE.
//
// The op_* functions back the mp_op_* entry points with backend = MP_BACKEND_CUDA: they
// take host pointers, copy inputs to the device, run the kernel on the current device's
// stream, copy results back and synchronise. They throw mp::Error on failure.
#pragma once

#include <cstdint>
#include <string>

#include "common/common.h"

namespace mp::gpu {

// One index block of a GPU retrieval job (op_lsh_retrieve).
struct RetrieveItemHost {
  const uint32_t *off;  // the block's bucket offsets of the job's KV head, table 0
  const uint16_t *ent;  // the block's entries of the job's KV head, table 0
  int32_t n, stride, job;
  int64_t word0;
};

#ifdef MP_HAVE_CUDA
// Usable CUDA devices (0 when the driver or device is missing). Never throws.
int device_count();

void op_embedding(int32_t dtype, const void *table, int vocab, int dim, const int32_t *tokens,
                  int n, float *out);
void op_rmsnorm(const float *x, const float *w, int n, int dim, float eps, float *out);
void op_rope(float *x, int n, int heads, int head_dim, const int32_t *positions,
             const mp_rope_params *rope);
void op_matmul(int32_t wdtype, const void *w, const float *x, int n, int in, int out,
               float *y);
void op_attention(int32_t kv_dtype, const float *q, const void *k, const void *v, int n, int T,
                  int H, int Hkv, int d, int q_pos0, float *out, float *lse2);
void op_swiglu(const float *gate, const float *up, int64_t n, float *out);
void op_merge(const float *o1, const float *lse1, const float *o2, const float *lse2, int n,
              int d, float *out, float *lse_out);
void lsh_hash(const float *R, const float *x, int n, int d, int K, int L, uint16_t *codes);
// GPU retrieval (kernels.h lsh_retrieve) over host index blocks: item i counts block
// (off, ent, n tokens, offsets stride) for job `job` into words [word0, word0 + ⌈n/64⌉) of
// that job's bitmap bits[job][words]; nnz[job] = the job's set bits. The regions (the host
// arrays the items point into) are page-locked for the call unless they already are.
void op_lsh_retrieve(const RetrieveItemHost *items, int nitems, const uint16_t *qcodes,
                     int njobs, int L, int64_t words, const void *const *regions,
                     const size_t *region_bytes, int nregions, uint64_t *bits, int32_t *nnz);
// tokens[i] from logits[i][vocab]: greedy when temperature <= 0, else temperature/top-k/
// top-p sampling by inverse CDF with the uniform draw u[i] (sampling.cu).
void op_sample(const float *logits, int n, int vocab, float temperature, int top_k, float top_p,
               const float *u, int32_t *tokens);
// Forces a kernel variant of an op family for later op_* calls (tests/benchmarks); 0 = auto.
// op: "matmul" (1 cuBLAS, 2 skinny, 3 simple, 4 GEMV), "attention" (1 flash, 2 decode, 3 generic).
void set_kernel_variant(const char *op, int variant);
// Where MAGICPIG index builds hash keys (mp_gpu_set_kernel "lsh"): 0 automatic (on the GPU
// of a CUDA engine when a build indexes >= 1024 tokens of a layer; a failure falls back to
// the CPU), 1 on the GPU whatever the size (a failure is an error), 2 on the CPU, 3 on the CPU but through the precomputed-codes path that the GPU
// uses (tests that path without a GPU), 4 as automatic but a first build only hashes on the
// GPU (the CPU sorts: the path before ForwardBackend::build_first). In 0 and 1 a layer's
// first build computes μ, the codes and the sorted blocks on the GPU (build_first).
int lsh_key_hashing();
// "NVIDIA H200, cc 9.0, 132 SMs, 139.8 GiB, L2 50 MB" for device 0.
std::string describe();
// $MP_TRACE lines (cuda_util.h), for the engine's C++ files.
bool trace_enabled();
void trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#else
inline int device_count() { return 0; }

#define MP_GPU_UNAVAILABLE(...) \
  { MP_FAIL(MP_ERR_NO_DEVICE, "this build has no CUDA backend (nvcc was not found at build time)"); }
inline void op_embedding(int32_t, const void *, int, int, const int32_t *, int, float *)
    MP_GPU_UNAVAILABLE()
inline void op_rmsnorm(const float *, const float *, int, int, float, float *)
    MP_GPU_UNAVAILABLE()
inline void op_rope(float *, int, int, int, const int32_t *, const mp_rope_params *)
    MP_GPU_UNAVAILABLE()
inline void op_matmul(int32_t, const void *, const float *, int, int, int, float *)
    MP_GPU_UNAVAILABLE()
inline void op_attention(int32_t, const float *, const void *, const void *, int, int, int,
                         int, int, int, float *, float *) MP_GPU_UNAVAILABLE()
inline void op_lsh_retrieve(const RetrieveItemHost *, int, const uint16_t *, int, int, int64_t,
                            const void *const *, const size_t *, int, uint64_t *, int32_t *)
    MP_GPU_UNAVAILABLE()
inline void op_swiglu(const float *, const float *, int64_t, float *) MP_GPU_UNAVAILABLE()
inline void op_merge(const float *, const float *, const float *, const float *, int, int,
                     float *, float *) MP_GPU_UNAVAILABLE()
inline void lsh_hash(const float *, const float *, int, int, int, int, uint16_t *)
    MP_GPU_UNAVAILABLE()
inline void op_sample(const float *, int, int, float, int, float, const float *, int32_t *)
    MP_GPU_UNAVAILABLE()
inline void set_kernel_variant(const char *, int) MP_GPU_UNAVAILABLE()
inline int lsh_key_hashing() { return 0; }
inline std::string describe() MP_GPU_UNAVAILABLE()
inline bool trace_enabled() { return false; }
inline void trace(const char *, ...) {}
#undef MP_GPU_UNAVAILABLE
#endif

}  // namespace mp::gpu
