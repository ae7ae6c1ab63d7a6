// kvcache.cu — moving key/value rows between the fused QKV projection output and the KV
// caches on the device, and dtype conversions of activations.
//
// The QKV GEMM writes qkv[m][(H + 2·Hkv)·d] bf16: per row, H query heads, then Hkv key heads
// (offset H·d), then Hkv value heads (offset (H + Hkv)·d). Caches are [Hkv][cap][d] bf16
// (the session's host layout, so that a layer moves between host and device with one 2-D
// copy per K or V).
//   kv_scatter: rows i < m of one sequence into K/V rows pos0 + i (prefill chunk);
//   kv_append:  row i of qkv into sequence i's cache at row len_i − 1 (decode; one query
//               per sequence, caches addressed through the SeqKV table; a null cache is
//               skipped) and into staging rows [n][Hkv][d] for the host caches.
//   stage_to_host: the whole step's staged rows [layer][K|V][n][Hkv][d] into the sessions'
//               host caches, written over PCIe into their mapped page-locked memory (the
//               engine runs it on a side stream, off the step's critical path).
// All copy 16 bytes (8 values) per thread.
#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/reduce.cuh"

namespace mp::gpu {

// ------------------------------------------------------------
// kernels

__global__ void kv_scatter_kernel(const bf16 *__restrict__ qkv, int64_t row_stride, int koff,
                                  int voff, int m, int Hkv, int d, bf16 *__restrict__ K,
                                  bf16 *__restrict__ V, int64_t cap, int64_t pos0) {
  const int per_row = Hkv * d / 8;  // 16-byte pieces per row of K (and of V)
  const int64_t total = (int64_t)m * per_row;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = e / per_row;
    const int r = (int)(e % per_row);
    const int h = r / (d / 8), c = (r % (d / 8)) * 8;
    const bf16 *src = qkv + i * row_stride;
    const int64_t dst = ((int64_t)h * cap + pos0 + i) * d + c;
    *reinterpret_cast<uint4 *>(K + dst) =
        *reinterpret_cast<const uint4 *>(src + koff + h * d + c);
    *reinterpret_cast<uint4 *>(V + dst) =
        *reinterpret_cast<const uint4 *>(src + voff + h * d + c);
  }
}

__global__ void kv_append_kernel(const bf16 *__restrict__ qkv, int64_t row_stride, int koff,
                                 int voff, const SeqKV *__restrict__ seqs, int Hkv, int d,
                                 bf16 *__restrict__ stage_k, bf16 *__restrict__ stage_v) {
  const int i = blockIdx.x;
  const SeqKV s = seqs[i];
  const bool cache = s.len > 0 && s.k != nullptr;
  const int64_t t = s.len - 1;
  const bf16 *src = qkv + (int64_t)i * row_stride;
  const int per = Hkv * d / 8;
  for (int e = threadIdx.x; e < per; e += blockDim.x) {
    const int h = e / (d / 8), c = (e % (d / 8)) * 8;
    const uint4 kv = *reinterpret_cast<const uint4 *>(src + koff + h * d + c);
    const uint4 vv = *reinterpret_cast<const uint4 *>(src + voff + h * d + c);
    if (cache) {
      const int64_t dst = t * s.stride_t + (int64_t)h * s.stride_h + c;
      *reinterpret_cast<uint4 *>(const_cast<bf16 *>(s.k) + dst) = kv;
      *reinterpret_cast<uint4 *>(const_cast<bf16 *>(s.v) + dst) = vv;
    }
    if (stage_k) {
      *reinterpret_cast<uint4 *>(stage_k + (int64_t)i * Hkv * d + h * d + c) = kv;
      *reinterpret_cast<uint4 *>(stage_v + (int64_t)i * Hkv * d + h * d + c) = vv;
    }
  }
}

__global__ void stage_to_host_kernel(const bf16 *__restrict__ stage,
                                     const HostRow *__restrict__ rows, int layers, int n, int Hkv,
                                     int d) {
  const int per = Hkv * d / 8;  // 16-byte pieces of one K (or V) row
  const int64_t total = (int64_t)layers * 2 * n * per;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int r = (int)(e % per);
    const int64_t row = e / per;  // (layer·2 + kv)·n + i: the stage's row order
    const int i = (int)(row % n);
    const int kv = (int)(row / n % 2);
    const int l = (int)(row / n / 2);
    const int h = r / (d / 8), c = (r % (d / 8)) * 8;
    const HostRow hr = rows[(int64_t)l * n + i];
    bf16 *dst = (kv ? hr.v : hr.k) + (int64_t)h * hr.stride_h + c;
    *reinterpret_cast<uint4 *>(dst) =
        *reinterpret_cast<const uint4 *>(stage + row * Hkv * d + h * d + c);
  }
}

template <class From, class To>
__global__ void convert_kernel(const From *__restrict__ a, To *__restrict__ b, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    b[i] = to_out<To>(to_f32(a[i]));
}

// kmax[h] = max(kmax[h], ||K row r of head h||) over rows r0 <= r < r1. A group of LPR lanes
// (LPR · 8 bf16 per 16-byte load: one load per lane for d = 128 with LPR = 16) reads a row, and
// the grid's groups stride over the rows × heads, a few each, so that the loads of many rows are
// in flight at once (one warp per row and 64 rows per warp took 55 µs per 8192-row chunk, a
// latency chain). A group's maximum goes out through an integer atomicMax (norms are >= 0, so
// their float bits order like integers) whenever its head changes, and at the end.
template <int LPR>
__global__ void key_norm_max_kernel(const bf16 *__restrict__ K, int64_t stride_t,
                                    int64_t stride_h, int64_t r0, int64_t rows, int Hkv, int d,
                                    float *__restrict__ kmax) {
  const int sub = threadIdx.x % LPR;
  const int64_t items = rows * Hkv;
  const int64_t groups = (int64_t)gridDim.x * (blockDim.x / LPR);
  float best = 0.f;
  int best_h = -1;
  // The loop runs while the warp's first group has a row (the shuffles need the whole warp);
  // a group past the end reads nothing.
  const int64_t first = ((int64_t)blockIdx.x * blockDim.x + (threadIdx.x & ~31)) / LPR;
  for (int64_t w0 = first; w0 < items; w0 += groups) {
    const int64_t w = w0 + (threadIdx.x & 31) / LPR;
    const bool here = w < items;
    const int h = (int)(w % Hkv);
    const bf16 *row = K + (r0 + w / Hkv) * stride_t + (int64_t)h * stride_h;
    float ss = 0.f;
    for (int c = 8 * sub; here && c < d; c += 8 * LPR) {
      const uint4 u = *reinterpret_cast<const uint4 *>(row + c);
      const __nv_bfloat162 *p = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const float2 f = __bfloat1622float2(p[i]);
        ss += f.x * f.x + f.y * f.y;
      }
    }
#pragma unroll
    for (int o = LPR / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (!here) continue;
    if (h != best_h) {
      if (best_h >= 0 && sub == 0)
        atomicMax(reinterpret_cast<int *>(kmax + best_h), __float_as_int(best));
      best_h = h, best = 0.f;
    }
    best = fmaxf(best, sqrtf(ss));
  }
  if (best_h >= 0 && sub == 0)
    atomicMax(reinterpret_cast<int *>(kmax + best_h), __float_as_int(best));
}

__global__ void add_kernel(float *__restrict__ x, const float *__restrict__ y, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    x[i] += y[i];
}

// ------------------------------------------------------------
// launchers

static unsigned grid_for(int64_t n, int threads) {
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 132LL * 32));
}

void kv_scatter(const bf16 *qkv, int64_t row_stride, int koff, int voff, int m, int Hkv, int d,
                bf16 *K, bf16 *V, int64_t cap, int64_t pos0, cudaStream_t s) {
  if (m <= 0) return;
  MP_CHECK(d % 8 == 0, MP_ERR_UNSUPPORTED, "kv cache: head_dim %d is not a multiple of 8", d);
  const int64_t total = (int64_t)m * Hkv * d / 8;
  kv_scatter_kernel<<<grid_for(total, 256), 256, 0, s>>>(qkv, row_stride, koff, voff, m, Hkv, d,
                                                         K, V, cap, pos0);
  MP_CUDA_LAUNCH("kv_scatter_kernel");
}

void key_norm_max(const bf16 *K, int64_t stride_t, int64_t stride_h, int64_t r0, int64_t r1,
                  int Hkv, int d, float *kmax, bool reset, cudaStream_t s) {
  if (reset) MP_CUDA(cudaMemsetAsync(kmax, 0, (size_t)Hkv * sizeof(float), s));
  if (r1 <= r0 || Hkv <= 0) return;
  MP_CHECK(d % 8 == 0 && stride_t % 8 == 0 && stride_h % 8 == 0 && ((uintptr_t)K & 15) == 0,
           MP_ERR_UNSUPPORTED, "key_norm_max: rows must be 16-byte aligned (head_dim %d)", d);
  const int64_t items = (r1 - r0) * Hkv;
  // lanes per row: d / 8 up to 16 (a power of two: the group's shuffles stay inside it); about
  // 8 rows per group, at most 8 blocks of 256 threads per SM. The grid-stride keeps a group on
  // one head when the number of groups is a multiple of Hkv (Hkv a power of two).
  const int lpr = d >= 128 ? 16 : d >= 64 ? 8 : d >= 32 ? 4 : d >= 16 ? 2 : 1;
  const int64_t groups_per_block = 256 / lpr;
  const unsigned blocks = (unsigned)std::max<int64_t>(
      1, std::min<int64_t>((items + 8 * groups_per_block - 1) / (8 * groups_per_block), 132LL * 8));
  auto *kernel = lpr == 16  ? key_norm_max_kernel<16>
                 : lpr == 8 ? key_norm_max_kernel<8>
                 : lpr == 4 ? key_norm_max_kernel<4>
                 : lpr == 2 ? key_norm_max_kernel<2>
                            : key_norm_max_kernel<1>;
  kernel<<<blocks, 256, 0, s>>>(K, stride_t, stride_h, r0, r1 - r0, Hkv, d, kmax);
  MP_CUDA_LAUNCH("key_norm_max_kernel");
}

bool key_bound_enabled() {
  static const bool off = env_equals("MP_KEY_BOUND", "0");
  return !off;
}

void kv_append(const bf16 *qkv, int64_t row_stride, int koff, int voff, const SeqKV *seqs, int n,
               int Hkv, int d, bf16 *stage_k, bf16 *stage_v, cudaStream_t s) {
  if (n <= 0) return;
  MP_CHECK(d % 8 == 0, MP_ERR_UNSUPPORTED, "kv cache: head_dim %d is not a multiple of 8", d);
  kv_append_kernel<<<n, 128, 0, s>>>(qkv, row_stride, koff, voff, seqs, Hkv, d, stage_k, stage_v);
  MP_CUDA_LAUNCH("kv_append_kernel");
}

void stage_to_host(const bf16 *stage, const HostRow *rows, int layers, int n, int Hkv, int d,
                   cudaStream_t s) {
  if (layers <= 0 || n <= 0) return;
  MP_CHECK(d % 8 == 0, MP_ERR_UNSUPPORTED, "kv cache: head_dim %d is not a multiple of 8", d);
  const int64_t total = (int64_t)layers * 2 * n * Hkv * d / 8;
  stage_to_host_kernel<<<grid_for(total, 128), 128, 0, s>>>(stage, rows, layers, n, Hkv, d);
  MP_CUDA_LAUNCH("stage_to_host_kernel");
}

template <class From, class To>
void convert(const From *a, To *b, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  convert_kernel<From, To><<<grid_for(n, 256), 256, 0, s>>>(a, b, n);
  MP_CUDA_LAUNCH("convert_kernel");
}
template void convert<bf16, float>(const bf16 *, float *, int64_t, cudaStream_t);
template void convert<float, bf16>(const float *, bf16 *, int64_t, cudaStream_t);

void add_inplace(float *x, const float *y, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  add_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, y, n);
  MP_CUDA_LAUNCH("add_kernel");
}

}  // namespace mp::gpu
