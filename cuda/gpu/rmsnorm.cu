// rmsnorm.cu — RMSNorm over rows of the f32 residual stream.
//
// out[i][:] = x[i][:] · rsqrt(mean(x[i]²) + eps) · w[:], x [n][dim] f32, w [dim] f32,
// out [n][dim] in f32 or bf16 (the bf16 output feeds the next GEMM directly). One block
// per row: a block-wide f32 sum of squares, then a second pass over the row (it is in L1/L2
// by then) that scales and converts. Rows of a few thousand values make this a bandwidth
// op: 4 bytes read + 2–4 written per element.
#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/reduce.cuh"

namespace mp::gpu {

// ------------------------------------------------------------
// kernels

template <class OutT>
__global__ void rmsnorm_kernel(const float *__restrict__ x, const float *__restrict__ w,
                               int dim, float eps, OutT *__restrict__ out) {
  __shared__ float scratch[32];
  const float *row = x + (int64_t)blockIdx.x * dim;
  OutT *o = out + (int64_t)blockIdx.x * dim;
  float ss = 0.f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    float v = row[c];
    ss += v * v;
  }
  ss = block_sum(ss, scratch);
  const float r = rsqrtf(ss / (float)dim + eps);
  for (int c = threadIdx.x; c < dim; c += blockDim.x) o[c] = to_out<OutT>(row[c] * r * w[c]);
}

// The same with the row in registers: NV float4 per thread (blockDim.x = dim / (4·NV), a
// multiple of 32), read once with 16-byte loads, written with 8- or 16-byte stores. At the
// prefill's 8192 × 4096 the scalar kernel's two passes reached 1.9 TB/s.
__device__ __forceinline__ void store4(float *p, float4 v) { *reinterpret_cast<float4 *>(p) = v; }
__device__ __forceinline__ void store4(bf16 *p, float4 v) {
  const __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
  uint2 u;
  u.x = *reinterpret_cast<const uint32_t *>(&a);
  u.y = *reinterpret_cast<const uint32_t *>(&b);
  *reinterpret_cast<uint2 *>(p) = u;
}

template <class OutT, int NV>
__global__ void rmsnorm_vec_kernel(const float *__restrict__ x, const float *__restrict__ w,
                                   int dim, float eps, OutT *__restrict__ out) {
  __shared__ float scratch[32];
  const float4 *row = reinterpret_cast<const float4 *>(x + (int64_t)blockIdx.x * dim);
  const float4 *w4 = reinterpret_cast<const float4 *>(w);
  OutT *o = out + (int64_t)blockIdx.x * dim;
  float4 v[NV];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < NV; k++) {
    v[k] = __ldcs(row + threadIdx.x + k * blockDim.x);  // read once: streamed
    ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
  }
  ss = block_sum(ss, scratch);
  const float r = rsqrtf(ss / (float)dim + eps);
#pragma unroll
  for (int k = 0; k < NV; k++) {
    const int c4 = threadIdx.x + k * blockDim.x;
    const float4 g = w4[c4];
    store4(o + 4 * c4, make_float4(v[k].x * r * g.x, v[k].y * r * g.y, v[k].z * r * g.z,
                                   v[k].w * r * g.w));
  }
}

// ------------------------------------------------------------
// launchers

template <class OutT>
void rmsnorm(const float *x, const float *w, int n, int dim, float eps, OutT *out,
             cudaStream_t s) {
  if (n <= 0 || dim <= 0) return;
  const bool aligned = dim % 4 == 0 && ((uintptr_t)x & 15) == 0 && ((uintptr_t)w & 15) == 0 &&
                       ((uintptr_t)out & (4 * sizeof(OutT) - 1)) == 0;
  // 4 float4 per thread from 512 values on (dim 4096: 256 threads), fewer below
  for (int nv : {4, 2, 1}) {
    const int threads = aligned && dim % (4 * nv) == 0 ? dim / (4 * nv) : 0;
    if (threads == 0 || threads % 32 != 0 || threads > 1024) continue;
    if (nv == 4) rmsnorm_vec_kernel<OutT, 4><<<n, threads, 0, s>>>(x, w, dim, eps, out);
    if (nv == 2) rmsnorm_vec_kernel<OutT, 2><<<n, threads, 0, s>>>(x, w, dim, eps, out);
    if (nv == 1) rmsnorm_vec_kernel<OutT, 1><<<n, threads, 0, s>>>(x, w, dim, eps, out);
    MP_CUDA_LAUNCH("rmsnorm_vec_kernel");
    return;
  }
  const int threads = dim >= 1024 ? 512 : (dim >= 256 ? 256 : 64);
  rmsnorm_kernel<OutT><<<n, threads, 0, s>>>(x, w, dim, eps, out);
  MP_CUDA_LAUNCH("rmsnorm_kernel");
}

template void rmsnorm<float>(const float *, const float *, int, int, float, float *,
                             cudaStream_t);
template void rmsnorm<bf16>(const float *, const float *, int, int, float, bf16 *, cudaStream_t);

// ------------------------------------------------------------
// host-pointer op (tests)

void op_rmsnorm(const float *x, const float *w, int n, int dim, float eps, float *out) {
  require_device();
  Stream s;
  DevBuf<float> d_x = upload(x, (size_t)n * dim, s);
  DevBuf<float> d_w = upload(w, (size_t)dim, s);
  DevBuf<float> d_out((size_t)n * dim);
  rmsnorm<float>(d_x.p, d_w.p, n, dim, eps, d_out.p, s);
  to_host(out, d_out.p, d_out.n, s);
  s.sync();
}

}  // namespace mp::gpu
