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

// ------------------------------------------------------------
// launchers

template <class OutT>
void rmsnorm(const float *x, const float *w, int n, int dim, float eps, OutT *out,
             cudaStream_t s) {
  if (n <= 0 || dim <= 0) return;
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
