// lsh.cu — SimHash codes of keys and queries (magicpig.md §4).
//
// codes[v][t] = Σ_j [x_v · R[:, t·K + j] > 0] << j for tables t < L, bit 0 the least
// significant, packed with integer operations (exact for any K <= 16). R is [d][K·L] f32
// (mp_lsh_projection), x rows are f32 or bf16 (centered keys, queries).
//
// The projections are a (n × d)·(d × K·L) product, large at prefill (96K keys × 8 KV heads
// × 30 layers × 1500 columns × 128 dims ≈ 4.5e12 FMA), so the kernel is a register-tiled
// f32 GEMM rather than one dot product per thread:
//   - a block owns 128 vectors and a range of tables; it walks that range's columns in
//     tiles of 128 and d in chunks of 16, staging xᵀ [16][128 + 4] (padded against bank
//     conflicts on the transposing store) and R [16][128] (f32) in shared memory;
//   - each of the 256 threads accumulates an 8 vectors × 8 columns tile with four 16-byte
//     shared loads per 64 FMAs (4 × 4 tiles of 64 × 64 took 15–18 ms of a 96K layer's
//     first index build); every dot product is a sequential fmaf chain over d, so the
//     result does not depend on the tiling (it matches a plain f32 loop bit for bit);
//   - the signs go into a per-vector bit mask in shared memory (atomicOr), and after the
//     last column tile each thread packs whole tables' K bits into uint16 codes.
// Bits can differ from another backend only where |x·r| is at f32 rounding level.
#include <algorithm>

#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/reduce.cuh"

namespace mp::gpu {

namespace {
constexpr int LSH_VB = 128;         // vectors per block
constexpr int LSH_CB = 128;         // columns per tile
constexpr int LSH_DB = 16;          // d per chunk
constexpr int LSH_XS = LSH_VB + 4;  // padded row of the xᵀ tile (transposing store)
constexpr int LSH_THREADS = 256;    // 16 × 16 threads, 8 vectors × 8 columns each
constexpr int LSH_MAX_COLS = 1536;  // columns per launch (bit mask: 128 × 48 words = 24 KB)
constexpr int LSH_FEW = 64;         // up to this many vectors: lsh_hash_few_kernel

__device__ __forceinline__ float ld_f32(const float *p) { return *p; }
__device__ __forceinline__ float ld_f32(const bf16 *p) { return __bfloat162float(*p); }
}  // namespace

// ------------------------------------------------------------
// kernels

// Tables [t0, t0 + nt) of vectors [128·blockIdx.x, +128). Thread (tx, ty) owns vectors
// ty·4 + {0..3} and 64 + ty·4 + {0..3}, columns tx·4 + {0..3} and 64 + tx·4 + {0..3} of the
// tile (two float4 per operand and step, 16 bytes apart between neighbours: no bank
// conflicts).
template <class XT>
__global__ void __launch_bounds__(LSH_THREADS)
    lsh_hash_kernel(const float *__restrict__ R, int KL, const XT *__restrict__ x,
                    int64_t x_stride, int n, int d, int K, int L, int t0, int nt,
                    uint16_t *__restrict__ codes, int64_t code_row, int64_t code_table) {
  __shared__ __align__(16) float xs[LSH_DB][LSH_XS];
  __shared__ __align__(16) float rs[LSH_DB][LSH_CB];
  extern __shared__ uint32_t bits[];  // [LSH_VB][words]
  const int c_begin = t0 * K, c_end = (t0 + nt) * K;
  const int words = (c_end - c_begin + 31) / 32;
  const int v0 = blockIdx.x * LSH_VB;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;

  for (int i = tid; i < LSH_VB * words; i += LSH_THREADS) bits[i] = 0;

  for (int c0 = c_begin; c0 < c_end; c0 += LSH_CB) {
    float acc[8][8];
#pragma unroll
    for (int a = 0; a < 8; a++)
#pragma unroll
      for (int b = 0; b < 8; b++) acc[a][b] = 0.f;
    for (int i0 = 0; i0 < d; i0 += LSH_DB) {
      __syncthreads();  // previous chunk consumed
      for (int e = tid; e < LSH_DB * LSH_VB; e += LSH_THREADS) {
        const int v = e / LSH_DB, i = e % LSH_DB;  // consecutive threads: consecutive i
        const bool ok = v0 + v < n && i0 + i < d;
        xs[i][v] = ok ? ld_f32(x + (int64_t)(v0 + v) * x_stride + i0 + i) : 0.f;
      }
      for (int e = tid; e < LSH_DB * LSH_CB; e += LSH_THREADS) {
        const int i = e / LSH_CB, c = e % LSH_CB;
        const bool ok = i0 + i < d && c0 + c < c_end;
        rs[i][c] = ok ? R[(int64_t)(i0 + i) * KL + c0 + c] : 0.f;
      }
      __syncthreads();
      const int di = min(LSH_DB, d - i0);
      for (int i = 0; i < di; i++) {
        const float4 x0 = *reinterpret_cast<const float4 *>(&xs[i][ty * 4]);
        const float4 x1 = *reinterpret_cast<const float4 *>(&xs[i][64 + ty * 4]);
        const float4 r0 = *reinterpret_cast<const float4 *>(&rs[i][tx * 4]);
        const float4 r1 = *reinterpret_cast<const float4 *>(&rs[i][64 + tx * 4]);
        const float xa[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
        const float ra[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
#pragma unroll
        for (int a = 0; a < 8; a++)
#pragma unroll
          for (int b = 0; b < 8; b++) acc[a][b] = fmaf(xa[a], ra[b], acc[a][b]);
      }
    }
    // Signs into the bit mask.
#pragma unroll
    for (int a = 0; a < 8; a++) {
      const int v = (a < 4 ? 0 : 60) + ty * 4 + a;  // a < 4: ty·4 + a; else 64 + ty·4 + a − 4
#pragma unroll
      for (int b = 0; b < 8; b++) {
        const int c = c0 + (b < 4 ? 0 : 60) + tx * 4 + b;
        if (c < c_end && acc[a][b] > 0.f) {
          const int rel = c - c_begin;
          atomicOr(&bits[v * words + (rel >> 5)], 1u << (rel & 31));
        }
      }
    }
  }
  __syncthreads();

  // Pack K bits per (vector, table); consecutive threads write consecutive codes (vectors
  // for a table-major output, tables for a vector-major one).
  const bool table_major = code_row == 1;
  for (int e = tid; e < LSH_VB * nt; e += LSH_THREADS) {
    const int v = table_major ? e % LSH_VB : e / nt;
    const int tt = table_major ? e / LSH_VB : e % nt;
    if (v0 + v >= n) continue;
    const int rel = tt * K;
    const uint32_t *wv = bits + v * words;
    const int w = rel >> 5, sh = rel & 31;
    uint64_t pair = wv[w];
    if (w + 1 < words) pair |= (uint64_t)wv[w + 1] << 32;
    const uint32_t code = (uint32_t)(pair >> sh) & ((1u << K) - 1u);
    codes[(int64_t)(v0 + v) * code_row + (int64_t)(t0 + tt) * code_table] = (uint16_t)code;
  }
}

// A few vectors (decode queries: one row per query head): the tiled kernel would give them
// one block. Here a thread owns one (vector, column): the same sequential fmaf chain over d
// (the same bits), R read coalesced (consecutive threads, consecutive columns) with the
// loads unrolled ahead of the chain; a block covers whole tables of one vector, so its
// threads pack the codes from a shared bit mask. Grid: (table groups, vectors).
constexpr int LSH_FEW_THREADS = 256;
template <class XT>
__global__ void __launch_bounds__(LSH_FEW_THREADS)
    lsh_hash_few_kernel(const float *__restrict__ R, int KL, const XT *__restrict__ x,
                        int64_t x_stride, int d, int K, int L, int tpb,
                        uint16_t *__restrict__ codes, int64_t code_row, int64_t code_table) {
  extern __shared__ float xv[];  // [d], then the bit mask
  uint32_t *bits = reinterpret_cast<uint32_t *>(xv + d);
  const int v = blockIdx.y, t0 = blockIdx.x * tpb;
  const int nt = min(tpb, L - t0), ncol = nt * K;
  for (int e = threadIdx.x; e < d; e += blockDim.x) xv[e] = ld_f32(x + (int64_t)v * x_stride + e);
  for (int w = threadIdx.x; w < (ncol + 31) / 32; w += blockDim.x) bits[w] = 0;
  __syncthreads();
  const int c = threadIdx.x;
  if (c < ncol) {
    const float *r = R + (int64_t)t0 * K + c;
    float acc = 0.f;
#pragma unroll 16
    for (int e = 0; e < d; e++) acc = fmaf(xv[e], __ldg(r + (int64_t)e * KL), acc);
    if (acc > 0.f) atomicOr(&bits[c >> 5], 1u << (c & 31));
  }
  __syncthreads();
  if (c < nt) {
    const int rel = c * K, w = rel >> 5, sh = rel & 31;
    uint64_t pair = bits[w];
    if (w + 1 < (ncol + 31) / 32) pair |= (uint64_t)bits[w + 1] << 32;
    const uint32_t code = (uint32_t)(pair >> sh) & ((1u << K) - 1u);
    codes[(int64_t)v * code_row + (int64_t)(t0 + c) * code_table] = (uint16_t)code;
  }
}

// x[r][e] = f32(k[r][e]) − mu[e] for n rows of d: the CPU's centering (lsh_index.cpp),
// one IEEE subtraction per element, so the same f32 values.
__global__ void lsh_center_kernel(const bf16 *__restrict__ k, const float *__restrict__ mu,
                                  int64_t total, int d, float *__restrict__ x) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x)
    x[i] = __fsub_rn(__bfloat162float(k[i]), mu[i % d]);
}

// ------------------------------------------------------------
// launchers

void lsh_center(const bf16 *k, const float *mu, int n, int d, float *x, cudaStream_t s) {
  const int64_t total = (int64_t)n * d;
  if (total <= 0) return;
  const unsigned blocks = (unsigned)std::min<int64_t>((total + 255) / 256, 4096);
  lsh_center_kernel<<<blocks, 256, 0, s>>>(k, mu, total, d, x);
  MP_CUDA_LAUNCH("lsh_center_kernel");
}

template <class XT>
void lsh_hash(const float *R, const XT *x, int64_t x_stride, int n, int d, int K, int L,
              uint16_t *codes, cudaStream_t s, int64_t code_row, int64_t code_table) {
  if (n <= 0 || L <= 0) return;
  if (code_row == 0) code_row = L;
  MP_CHECK(K >= 1 && K <= 16, MP_ERR_INVALID, "lsh: K = %d is outside 1..16", K);
  MP_CHECK(d >= 1, MP_ERR_INVALID, "lsh: d = %d", d);
  const int KL = K * L;
  if (n <= LSH_FEW) {
    const int tpb = LSH_FEW_THREADS / K;  // whole tables per block
    const dim3 grid((unsigned)((L + tpb - 1) / tpb), (unsigned)n);
    const size_t smem = (size_t)d * sizeof(float) + (LSH_FEW_THREADS / 32 + 1) * 4;
    lsh_hash_few_kernel<XT><<<grid, LSH_FEW_THREADS, smem, s>>>(R, KL, x, x_stride, d, K, L,
                                                                  tpb, codes, code_row,
                                                                  code_table);
    MP_CUDA_LAUNCH("lsh_hash_few_kernel");
    return;
  }
  const int tables_per_launch = std::max(1, LSH_MAX_COLS / K);
  const unsigned blocks = (unsigned)((n + LSH_VB - 1) / LSH_VB);
  for (int t0 = 0; t0 < L; t0 += tables_per_launch) {
    const int nt = std::min(tables_per_launch, L - t0);
    const int words = (nt * K + 31) / 32;
    const size_t smem = (size_t)LSH_VB * words * sizeof(uint32_t);
    lsh_hash_kernel<XT><<<blocks, LSH_THREADS, smem, s>>>(R, KL, x, x_stride, n, d, K, L, t0,
                                                          nt, codes, code_row, code_table);
    MP_CUDA_LAUNCH("lsh_hash_kernel");
  }
}

template void lsh_hash<float>(const float *, const float *, int64_t, int, int, int, int,
                              uint16_t *, cudaStream_t, int64_t, int64_t);
template void lsh_hash<bf16>(const float *, const bf16 *, int64_t, int, int, int, int,
                             uint16_t *, cudaStream_t, int64_t, int64_t);

// ------------------------------------------------------------
// host-pointer op (tests)

void lsh_hash(const float *R, const float *x, int n, int d, int K, int L, uint16_t *codes) {
  MP_CHECK(n >= 0 && d > 0 && L > 0, MP_ERR_INVALID, "lsh: bad shape");
  require_device();
  Stream s;
  DevBuf<float> d_r = upload(R, (size_t)d * K * L, s);
  DevBuf<float> d_x = upload(x, (size_t)n * d, s);
  DevBuf<uint16_t> d_c((size_t)n * L);
  lsh_hash<float>(d_r.p, d_x.p, d, n, d, K, L, d_c.p, s);
  to_host(codes, d_c.p, d_c.n, s);
  s.sync();
}

}  // namespace mp::gpu
