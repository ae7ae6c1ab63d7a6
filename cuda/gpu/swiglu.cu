// swiglu.cu — the SwiGLU activation of the Llama MLP.
//
// out[r][c] = silu(gate[r][c]) · up[r][c], silu(x) = x / (1 + e^(−x)), in f32. gate and up
// are any two [rows][cols] views with row stride in_stride, so the forward pass reads one
// fused [rows][gate | up] GEMM output (in_stride = 2·cols, up = gate + cols). One thread per
// element, grid-stride.
#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/reduce.cuh"

namespace mp::gpu {

// ------------------------------------------------------------
// kernels

template <class T, class OutT>
__global__ void swiglu_kernel(const T *__restrict__ gate, const T *__restrict__ up, int64_t rows,
                              int64_t cols, int64_t in_stride, OutT *__restrict__ out,
                              int64_t out_stride) {
  const int64_t total = rows * cols;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const float g = to_f32(gate[r * in_stride + c]);
    const float u = to_f32(up[r * in_stride + c]);
    out[r * out_stride + c] = to_out<OutT>(g / (1.f + expf(-g)) * u);
  }
}

// ------------------------------------------------------------
// launchers

template <class T, class OutT>
void swiglu(const T *gate, const T *up, int64_t rows, int64_t cols, int64_t in_stride, OutT *out,
            int64_t out_stride, cudaStream_t s) {
  const int64_t total = rows * cols;
  if (total <= 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 132LL * 64);
  swiglu_kernel<T, OutT>
      <<<(unsigned)blocks, threads, 0, s>>>(gate, up, rows, cols, in_stride, out, out_stride);
  MP_CUDA_LAUNCH("swiglu_kernel");
}

template void swiglu<float, float>(const float *, const float *, int64_t, int64_t, int64_t,
                                   float *, int64_t, cudaStream_t);
template void swiglu<bf16, bf16>(const bf16 *, const bf16 *, int64_t, int64_t, int64_t, bf16 *,
                                 int64_t, cudaStream_t);
template void swiglu<float, bf16>(const float *, const float *, int64_t, int64_t, int64_t,
                                  bf16 *, int64_t, cudaStream_t);

// ------------------------------------------------------------
// host-pointer op (tests)

void op_swiglu(const float *gate, const float *up, int64_t n, float *out) {
  require_device();
  Stream s;
  DevBuf<float> d_g = upload(gate, (size_t)n, s), d_u = upload(up, (size_t)n, s);
  DevBuf<float> d_out((size_t)n);
  swiglu<float, float>(d_g.p, d_u.p, 1, n, n, d_out.p, n, s);
  to_host(out, d_out.p, d_out.n, s);
  s.sync();
}

}  // namespace mp::gpu
