// matmul.cu — y[n][out] (+)= x[n][in] · W[out][in]^T with bf16 W and x, f32 accumulation.
//
// Three implementations, chosen per call (matmul(..., variant)):
//
// 1. cuBLAS (builds with MP_HAVE_CUBLAS): cublasGemmEx, bf16 A/B, f32 compute, C in f32 or
//    bf16; beta = 1 fuses the residual add (y += ...). Row-major y = x·Wᵀ is column-major
//    yᵀ = W·xᵀ: W stored [out][in] is a column-major (in × out) matrix, so op(A) = T,
//    m = out, n = n, k = in, lda = in, ldb = ldx, ldc = ldy. Used for prefill-sized n.
//
// 2. Skinny tensor-core kernel (decode, n <= 16 by default): memory-bound, so the goal is
//    to stream W from HBM exactly once at full bandwidth. A warp owns 16 output rows and a
//    strided set of 32-wide k chunks; per chunk each lane issues one 16-byte streaming load
//    of row g and one of row g+8 (g = lane/4, t = lane%4, k offset 8t) and one 16-byte load
//    of x row g per 8-row n tile. Those 8 consecutive k values feed two mma.m16n8k16 steps
//    through a per-lane permutation of k (logical columns {2t, 2t+1, 2t+8, 2t+9} of a step
//    are physical k = 8t + {0,1,2,3} for step 0 and 8t + {4..7} for step 1) applied to A and
//    B alike, so no shuffles or shared-memory staging are needed: the dot products are
//    unchanged because the sum over k does not care about its order. The WARPS warps of a
//    block split k and reduce through shared memory; blockIdx.y walks 8·NT-row tiles of x,
//    so any n works (W is re-read per tile, from L2 when it fits). Needs in % 8 == 0 and
//    16-byte aligned W/x rows.
//    WARPS (4, 8 or 16) is chosen per shape so that the grid holds about 24 warps per SM:
//    a 4096-row matrix has only 256 blocks of 16 rows, and with 4 warps each warp walked
//    8 dependent load→mma rounds over k = 4096 (31% of HBM bandwidth in GPU run 1); with 16
//    warps it is 2 rounds and 4× the loads in flight.
//
// 3. Simple kernel: one warp per output value, any shape and alignment (tests, odd models
//    such as stories260K's ffn 172).
#include <cstdlib>

#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/mma.cuh"
#include "gpu/reduce.cuh"

#ifdef MP_HAVE_CUBLAS
#include <cublas_v2.h>
#endif

namespace mp::gpu {

// ------------------------------------------------------------
// kernels

// NT: 8-row tiles of x per block (1 or 2); U: k chunks in flight per warp iteration.
template <int NT, int U, int WARPS, class OutT>
__global__ void __launch_bounds__(32 * WARPS)
    gemm_skinny_kernel(const bf16 *__restrict__ W, const bf16 *__restrict__ x, int64_t ldx,
                       int n, int in, int out, OutT *__restrict__ y, int64_t ldy,
                       int accumulate) {
  __shared__ float red[WARPS][NT][4][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int r0 = blockIdx.x * 16;
  const int m0 = blockIdx.y * 8 * NT;

  const bool ra = r0 + g < out, rb = r0 + g + 8 < out;
  const bf16 *wa = W + (int64_t)(ra ? r0 + g : 0) * in + 8 * t;
  const bf16 *wb = W + (int64_t)(rb ? r0 + g + 8 : 0) * in + 8 * t;
  const bf16 *xp[NT];
  bool xv[NT];
#pragma unroll
  for (int j = 0; j < NT; j++) {
    const int row = m0 + 8 * j + g;
    xv[j] = row < n;
    xp[j] = x + (int64_t)(xv[j] ? row : 0) * ldx + 8 * t;
  }

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

  const int nchunks = (in + 31) >> 5;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int c0 = warp; c0 < nchunks; c0 += WARPS * U) {
    uint4 va[U], vb[U], vx[U][NT];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = c0 + WARPS * u;
      const int k = c * 32;
      const bool kv = c < nchunks && k + 8 * t + 8 <= in;
      va[u] = (kv && ra) ? ld_stream_16(wa + k) : zero;
      vb[u] = (kv && rb) ? ld_stream_16(wb + k) : zero;
#pragma unroll
      for (int j = 0; j < NT; j++)
        vx[u][j] = (kv && xv[j]) ? __ldg(reinterpret_cast<const uint4 *>(xp[j] + k)) : zero;
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
#pragma unroll
      for (int j = 0; j < NT; j++) {
        mma_bf16_16816(acc[j], va[u].x, vb[u].x, va[u].y, vb[u].y, vx[u][j].x, vx[u][j].y);
        mma_bf16_16816(acc[j], va[u].z, vb[u].z, va[u].w, vb[u].w, vx[u][j].z, vx[u][j].w);
      }
    }
  }

#pragma unroll
  for (int j = 0; j < NT; j++)
#pragma unroll
    for (int e = 0; e < 4; e++) red[warp][j][e][lane] = acc[j][e];
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int j = 0; j < NT; j++) {
#pragma unroll
    for (int e = 0; e < 4; e++) {
      float v = 0.f;
#pragma unroll
      for (int w = 0; w < WARPS; w++) v += red[w][j][e][lane];
      // c0,c1: (W row g, x row 2t, 2t+1); c2,c3: (W row g+8, same x rows).
      const int orow = r0 + g + ((e & 2) ? 8 : 0);
      const int xrow = m0 + 8 * j + 2 * t + (e & 1);
      if (orow < out && xrow < n) {
        OutT *dst = y + (int64_t)xrow * ldy + orow;
        if (accumulate)
          *dst = to_out<OutT>(to_f32(*dst) + v);
        else
          *dst = to_out<OutT>(v);
      }
    }
  }
}

// One warp per y[i][o]; 4 warps per block over consecutive o.
template <class OutT>
__global__ void gemm_simple_kernel(const bf16 *__restrict__ W, const bf16 *__restrict__ x,
                                   int64_t ldx, int n, int in, int out, OutT *__restrict__ y,
                                   int64_t ldy, int accumulate) {
  const int lane = threadIdx.x & 31;
  const int o = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int i = blockIdx.y;
  if (o >= out || i >= n) return;
  const bf16 *w = W + (int64_t)o * in;
  const bf16 *xr = x + (int64_t)i * ldx;
  float s = 0.f;
  for (int k = lane; k < in; k += 32) s += __bfloat162float(w[k]) * __bfloat162float(xr[k]);
  s = warp_sum(s);
  if (lane == 0) {
    OutT *dst = y + (int64_t)i * ldy + o;
    *dst = to_out<OutT>(accumulate ? to_f32(*dst) + s : s);
  }
}

// ------------------------------------------------------------
// launchers

#ifdef MP_HAVE_CUBLAS
static void cublas_check(cublasStatus_t st, const char *what, const char *file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  // A failed execution may hide a sticky CUDA error: report that one if present.
  cudaError_t rc = cudaPeekAtLastError();
  if (rc != cudaSuccess) cuda_throw(rc, what, file, line);
  int32_t status = st == CUBLAS_STATUS_ALLOC_FAILED ? MP_ERR_OOM : MP_ERR_CUDA;
  ::mp::raise(status, file, line, "%s: %s", what, cublasGetStatusString(st));
}
#define MP_CUBLAS(call) cublas_check((call), #call, __FILE__, __LINE__)
#endif

Gemm::Gemm(cudaStream_t s) : stream(s) {
#ifdef MP_HAVE_CUBLAS
  cublasHandle_t h = nullptr;
  MP_CUBLAS(cublasCreate(&h));
  handle = h;
  try {
    MP_CUBLAS(cublasSetStream(h, s));
    // cuBLAS recommends 32 MiB of workspace on Hopper; a fixed workspace also keeps it
    // from allocating during CUDA graph capture.
    workspace_bytes = 32u << 20;
    MP_CUDA(cudaMalloc(&workspace, workspace_bytes));
    MP_CUBLAS(cublasSetWorkspace(h, workspace, workspace_bytes));
  } catch (...) {
    if (workspace) (void)cudaFree(workspace);
    (void)cublasDestroy(h);
    throw;
  }
#endif
}

Gemm::~Gemm() {
#ifdef MP_HAVE_CUBLAS
  if (handle) (void)cublasDestroy((cublasHandle_t)handle);
  if (workspace) (void)cudaFree(workspace);
#endif
}

// Warps per block for a grid of `blocks` blocks over k = in: about 24 warps per SM, and at
// least U chunks of 32 per warp. $MP_SKINNY_WARPS (4, 8 or 16) forces it (opbench).
static int skinny_warps(int64_t blocks, int in) {
  static const int forced = [] {
    const char *v = std::getenv("MP_SKINNY_WARPS");
    return v ? std::atoi(v) : 0;
  }();
  if (forced == 4 || forced == 8 || forced == 16) return forced;
  const int64_t target = 24LL * sm_count();
  const int64_t chunks = (in + 31) / 32;
  int w = 4;
  while (w < 16 && blocks * w < target && chunks >= 2LL * w * 4) w *= 2;
  return w;
}

template <int NT, int WARPS, class OutT>
static void launch_skinny_w(dim3 grid, const bf16 *W, const bf16 *x, int64_t ldx, int n, int in,
                            int out, OutT *y, int64_t ldy, bool accumulate, cudaStream_t s) {
  gemm_skinny_kernel<NT, 4, WARPS, OutT>
      <<<grid, 32 * WARPS, 0, s>>>(W, x, ldx, n, in, out, y, ldy, accumulate ? 1 : 0);
}

template <class OutT>
static void launch_skinny(const bf16 *W, const bf16 *x, int64_t ldx, int n, int in, int out,
                          OutT *y, int64_t ldy, bool accumulate, cudaStream_t s) {
  const unsigned gx = (unsigned)((out + 15) / 16);
  const unsigned gy = n <= 8 ? 1u : (unsigned)((n + 15) / 16);
  MP_CHECK(gy <= 65535u, MP_ERR_INVALID, "matmul: n = %d is too large for the skinny kernel", n);
  const dim3 grid(gx, gy);
  const int w = skinny_warps((int64_t)gx * gy, in);
  if (n <= 8) {
    if (w == 16) launch_skinny_w<1, 16, OutT>(grid, W, x, ldx, n, in, out, y, ldy, accumulate, s);
    else if (w == 8) launch_skinny_w<1, 8, OutT>(grid, W, x, ldx, n, in, out, y, ldy, accumulate, s);
    else launch_skinny_w<1, 4, OutT>(grid, W, x, ldx, n, in, out, y, ldy, accumulate, s);
  } else {
    if (w == 16) launch_skinny_w<2, 16, OutT>(grid, W, x, ldx, n, in, out, y, ldy, accumulate, s);
    else if (w == 8) launch_skinny_w<2, 8, OutT>(grid, W, x, ldx, n, in, out, y, ldy, accumulate, s);
    else launch_skinny_w<2, 4, OutT>(grid, W, x, ldx, n, in, out, y, ldy, accumulate, s);
  }
  MP_CUDA_LAUNCH("gemm_skinny_kernel");
}

template <class OutT>
static void launch_simple(const bf16 *W, const bf16 *x, int64_t ldx, int n, int in, int out,
                          OutT *y, int64_t ldy, bool accumulate, cudaStream_t s) {
  MP_CHECK(n <= 65535, MP_ERR_INVALID, "matmul: n = %d is too large for the simple kernel", n);
  gemm_simple_kernel<OutT><<<dim3((unsigned)((out + 3) / 4), (unsigned)n), 128, 0, s>>>(
      W, x, ldx, n, in, out, y, ldy, accumulate ? 1 : 0);
  MP_CUDA_LAUNCH("gemm_simple_kernel");
}

template <class OutT>
int matmul(Gemm &g, const bf16 *W, const bf16 *x, int64_t ldx, int n, int in, int out, OutT *y,
           int64_t ldy, bool accumulate, int variant) {
  if (n <= 0 || out <= 0) return variant;
  if (variant == GEMM_AUTO) variant = forced_variant(OP_MATMUL);
  const bool aligned = in % 8 == 0 && ldx % 8 == 0 && ((uintptr_t)W & 15) == 0 &&
                       ((uintptr_t)x & 15) == 0;
  if (variant == GEMM_AUTO) {
#ifdef MP_HAVE_CUBLAS
    variant = (n <= 16 && aligned) ? GEMM_SKINNY : GEMM_CUBLAS;
#else
    variant = aligned ? GEMM_SKINNY : GEMM_SIMPLE;
#endif
  }
#ifndef MP_HAVE_CUBLAS
  if (variant == GEMM_CUBLAS) variant = aligned ? GEMM_SKINNY : GEMM_SIMPLE;
#endif
  if (variant == GEMM_SKINNY && !aligned) variant = GEMM_SIMPLE;

  switch (variant) {
#ifdef MP_HAVE_CUBLAS
    case GEMM_CUBLAS: {
      const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
      const cudaDataType_t ctype = sizeof(OutT) == 4 ? CUDA_R_32F : CUDA_R_16BF;
      MP_CHECK(!accumulate || sizeof(OutT) == 4, MP_ERR_INTERNAL,
               "matmul: accumulate needs an f32 output");
      MP_CUBLAS(cublasSetStream((cublasHandle_t)g.handle, g.stream));
      MP_CUBLAS(cublasGemmEx((cublasHandle_t)g.handle, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in,
                             &alpha, W, CUDA_R_16BF, in, x, CUDA_R_16BF, (int)ldx, &beta, y,
                             ctype, (int)ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      return GEMM_CUBLAS;
    }
#endif
    case GEMM_SKINNY:
      launch_skinny<OutT>(W, x, ldx, n, in, out, y, ldy, accumulate, g.stream);
      return GEMM_SKINNY;
    default:
      launch_simple<OutT>(W, x, ldx, n, in, out, y, ldy, accumulate, g.stream);
      return GEMM_SIMPLE;
  }
}

template int matmul<float>(Gemm &, const bf16 *, const bf16 *, int64_t, int, int, int, float *,
                           int64_t, bool, int);
template int matmul<bf16>(Gemm &, const bf16 *, const bf16 *, int64_t, int, int, int, bf16 *,
                          int64_t, bool, int);

// ------------------------------------------------------------
// host-pointer op (tests)

// The weights are converted to bf16 as the engine stores them (F32/F16 sources rounded to
// nearest even), and so is x: the op measures what the forward pass computes.
void op_matmul(int32_t wdtype, const void *w, const float *x, int n, int in, int out, float *y) {
  require_device();
  Stream s;
  Gemm g(s);
  DevBuf<bf16> d_w = upload_as_bf16(wdtype, w, (size_t)out * in, s);
  DevBuf<bf16> d_x = upload_bf16(x, (size_t)n * in, s);
  DevBuf<float> d_y((size_t)n * out);
  matmul<float>(g, d_w.p, d_x.p, in, n, in, out, d_y.p, out, false);
  to_host(y, d_y.p, d_y.n, s);
  s.sync();
}

}  // namespace mp::gpu
