// merge.cu — merge two partial attention results by their base-2 log-sum-exps.
//
// With a = lse1[i], b = lse2[i] (log2 Σ exp(s/√d) over each part's keys) and M = max(a, b):
//   o = (2^(a−M)·o1 + 2^(b−M)·o2) / (2^(a−M) + 2^(b−M)),  lse = M + log2(2^(a−M) + 2^(b−M)).
// A side with lse −∞ (no keys) gets weight 0; both −∞ give o = 0 and lse −∞. This is how
// the GPU's exact attention over sinks, window and new tokens joins the CPU's sampled
// attention over the offloaded keys (magicpig.md §7, FlashInfer's merge_state). Rows are
// [n][d]; one block per row, threads over d.
#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/reduce.cuh"

namespace mp::gpu {

// ------------------------------------------------------------
// kernels

template <class T1, class T2, class OutT>
__global__ void merge_kernel(const T1 *__restrict__ o1, const float *__restrict__ lse1,
                             const T2 *__restrict__ o2, const float *__restrict__ lse2, int d,
                             OutT *__restrict__ out, float *__restrict__ lse_out) {
  const int64_t i = blockIdx.x;
  const float a = lse1[i], b = lse2[i];
  const float M = fmaxf(a, b);
  float wa = 0.f, wb = 0.f;
  if (M != -INFINITY) {
    wa = exp2f(a - M);
    wb = exp2f(b - M);
  }
  const float sum = wa + wb;
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  wa *= inv, wb *= inv;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    // A zero weight must not let a NaN/Inf of an empty side through.
    const float x = wa > 0.f ? wa * to_f32(o1[i * d + c]) : 0.f;
    const float y = wb > 0.f ? wb * to_f32(o2[i * d + c]) : 0.f;
    out[i * d + c] = to_out<OutT>(x + y);
  }
  if (lse_out && threadIdx.x == 0) lse_out[i] = sum > 0.f ? M + log2f(sum) : -INFINITY;
}

// ------------------------------------------------------------
// launchers

template <class T1, class T2, class OutT>
void merge(const T1 *o1, const float *lse1, const T2 *o2, const float *lse2, int n, int d,
           OutT *out, float *lse_out, cudaStream_t s) {
  if (n <= 0 || d <= 0) return;
  const int threads = d >= 128 ? 128 : ((d + 31) / 32) * 32;
  merge_kernel<T1, T2, OutT><<<n, threads, 0, s>>>(o1, lse1, o2, lse2, d, out, lse_out);
  MP_CUDA_LAUNCH("merge_kernel");
}

template void merge<float, float, float>(const float *, const float *, const float *,
                                         const float *, int, int, float *, float *,
                                         cudaStream_t);
template void merge<float, float, bf16>(const float *, const float *, const float *,
                                        const float *, int, int, bf16 *, float *, cudaStream_t);
template void merge<float, bf16, bf16>(const float *, const float *, const bf16 *, const float *,
                                       int, int, bf16 *, float *, cudaStream_t);

// ------------------------------------------------------------
// host-pointer op (tests)

void op_merge(const float *o1, const float *lse1, const float *o2, const float *lse2, int n,
              int d, float *out, float *lse_out) {
  require_device();
  Stream s;
  DevBuf<float> d_o1 = upload(o1, (size_t)n * d, s), d_o2 = upload(o2, (size_t)n * d, s);
  DevBuf<float> d_l1 = upload(lse1, (size_t)n, s), d_l2 = upload(lse2, (size_t)n, s);
  DevBuf<float> d_out((size_t)n * d), d_lse((size_t)n);
  merge<float, float, float>(d_o1.p, d_l1.p, d_o2.p, d_l2.p, n, d, d_out.p, d_lse.p, s);
  to_host(out, d_out.p, d_out.n, s);
  if (lse_out) to_host(lse_out, d_lse.p, d_lse.n, s);
  s.sync();
}

}  // namespace mp::gpu
