// lsh_sort.cu — a layer's first LSH index on the GPU: the mean key μ and the per-block
// counting sort of the codes (ForwardBackend::build_first, cuda_backend.cu; the CPU's
// lsh::Index::add builds the same bytes, cuda/cpu/lsh_index.cpp).
//
// Both kernels must reproduce the CPU bit for bit, so both keep the CPU's order of work:
//
// lsh_mean_kernel: μ[e] = (float)(Σ_j (double)k[j][e] / (double)m), the sum taken over the
//   tokens j = 0, 1, … in order, in double (bf16 → float → double is exact), one IEEE add
//   per token: one thread per dimension does the whole chain (the order is the result).
//   The chain (m dependent double adds) is the floor, so the loads must keep up with it: a
//   block owns 32 dimensions of one head; its warp 0 sums while warps 1..8 fetch the next
//   tile of MEAN_TJ rows × 32 dimensions (bf16, 64 B of each row, coalesced) into the other
//   half of a double buffer in shared memory; one __syncthreads per tile.
//
// lsh_sort_kernel: per (block b, table t) of one KV head — block b = tokens
//   [b·65,536, min(m, (b+1)·65,536)), n_b of them — the CSR of the CPU's sort_table:
//     offsets[c] = Σ_{c' < c} hist[c'], offsets[2^K] = n_b       (uint32)
//     entries[offsets[c] + r] = the r-th in-block id j (ascending) with code c   (uint16)
//   One warp per item, with its own 2^K uint32 counters in shared memory (K <= 12):
//     1. histogram: lanes stride over the item's codes, shared atomicAdd;
//     2. exclusive scan: lane l owns a contiguous run of 2^K/32 counters (sums it, a warp
//        shuffle scan of the run sums, then rewrites its run as exclusive prefixes, which
//        are also the offsets);
//     3. stable scatter, 32 tokens per step in lane order: peers = the lanes with the same
//        code (__match_any_sync), rank = peers below this lane, base = cnt[c] read by every
//        peer, __syncwarp, the lowest peer stores cnt[c] = base + popc(peers), __syncwarp,
//        entries[base + rank] = j. Ids go out in increasing order within each bucket, as
//        the CPU's sequential loop puts them. Lanes past n_b take part in every collective
//        with a code no token has (0xFFFFFFFF) and write nothing.
//   Every collective runs on the full warp; an item index past the end retires the whole
//   warp (the kernel has no __syncthreads).
// Layouts (per KV head, as the host Block holds them for that head):
//   codes    [L][ld]                  table-major (lsh_hash with code_row 1, code_table ld)
//   offsets  [n_blocks][L][2^K + 1]
//   entries  block b at b·65,536·L:   [L][n_b]
#include <algorithm>

#include "gpu/kernels.h"

namespace mp::gpu {

namespace {
constexpr int MEAN_TJ = 256;          // rows per tile
constexpr int MEAN_LOADERS = 8;       // loader warps (warp 0 sums)
constexpr int SORT_BLOCK_BITS = 16;   // lsh::BLOCK_BITS
constexpr int SORT_MAX_K = 12;        // 16 KB of counters per warp
constexpr int SORT_SMEM = 32 * 1024;  // counters per thread block
}  // namespace

// grid: (ceil(d / 32), heads) blocks of 32·(1 + MEAN_LOADERS) threads; block (x, h) owns dims
// [32x, 32x + 32) of head h (keys at k + h·head_stride, μ at mu + h·d).
__global__ void __launch_bounds__(32 * (1 + MEAN_LOADERS))
    lsh_mean_kernel(const bf16 *__restrict__ k, int64_t m, int d, int64_t head_stride,
                    float *__restrict__ mu) {
  __shared__ bf16 tile[2][MEAN_TJ][32];
  k += (size_t)blockIdx.y * head_stride;
  mu += (size_t)blockIdx.y * d;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int e = blockIdx.x * 32 + lane;
  const bool col = e < d;
  const int64_t tiles = (m + MEAN_TJ - 1) / MEAN_TJ;
  const bf16 zero = __float2bfloat16(0.0f);
  // rows first, first + stride, … of tile ti into buffer buf
  auto load = [&](int64_t ti, int buf, int first, int stride) {
    const int64_t j0 = ti * MEAN_TJ;
#pragma unroll 8
    for (int r = first; r < MEAN_TJ; r += stride) {
      const int64_t j = j0 + r;
      tile[buf][r][lane] = (col && j < m) ? k[j * d + e] : zero;
    }
  };
  if (tiles > 0) load(0, 0, warp, 1 + MEAN_LOADERS);
  __syncthreads();
  double acc = 0.0;
  for (int64_t ti = 0; ti < tiles; ti++) {
    const int buf = (int)(ti & 1);
    if (warp == 0) {
      const int64_t left = m - ti * MEAN_TJ;
      const int rows = left < MEAN_TJ ? (int)left : MEAN_TJ;
#pragma unroll 8
      for (int r = 0; r < rows; r++)
        acc = __dadd_rn(acc, (double)__bfloat162float(tile[buf][r][lane]));
    } else if (ti + 1 < tiles) {
      load(ti + 1, buf ^ 1, warp - 1, MEAN_LOADERS);
    }
    __syncthreads();  // tile ti consumed, tile ti + 1 in place
  }
  if (warp == 0 && col) mu[e] = __double2float_rn(__ddiv_rn(acc, (double)m));
}

// One warp per item (block b, table t) = b·L + t; items = n_blocks·L; blockIdx.y = the head
// (its codes, offsets and entries at head_stride[0..2] elements from the previous head's).
struct SortStrides {
  int64_t codes, offsets, entries;
};
__global__ void lsh_sort_kernel(const uint16_t *__restrict__ codes, int64_t ld, int64_t m, int L,
                                int K, int items, uint32_t *__restrict__ offsets,
                                uint16_t *__restrict__ entries, SortStrides hs) {
  extern __shared__ uint32_t cnt_all[];
  codes += (size_t)blockIdx.y * hs.codes;
  offsets += (size_t)blockIdx.y * hs.offsets;
  entries += (size_t)blockIdx.y * hs.entries;
  const unsigned FULL = 0xffffffffu;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int item = blockIdx.x * (blockDim.x >> 5) + warp;
  if (item >= items) return;  // the whole warp
  const int NB = 1 << K;
  uint32_t *cnt = cnt_all + (size_t)warp * NB;
  const int b = item / L, t = item % L;
  const int64_t j0 = (int64_t)b << SORT_BLOCK_BITS;
  const int64_t left = m - j0;
  const int n = left < ((int64_t)1 << SORT_BLOCK_BITS) ? (int)left : 1 << SORT_BLOCK_BITS;
  const uint16_t *c = codes + (size_t)t * ld + j0;
  uint32_t *off = offsets + ((size_t)b * L + t) * (size_t)(NB + 1);
  uint16_t *ent = entries + (size_t)j0 * L + (size_t)t * n;

  // 1. histogram
  for (int i = lane; i < NB; i += 32) cnt[i] = 0;
  __syncwarp();
  for (int j = lane; j < n; j += 32) atomicAdd(&cnt[c[j]], 1u);
  __syncwarp();

  // 2. exclusive scan: lane owns counters [lo, hi)
  const int per = (NB + 31) / 32;
  const int lo = min(NB, lane * per), hi = min(NB, lo + per);
  uint32_t own = 0;
  for (int i = lo; i < hi; i++) own += cnt[i];
  uint32_t incl = own;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t y = __shfl_up_sync(FULL, incl, o);
    if (lane >= o) incl += y;
  }
  uint32_t run = incl - own;
  for (int i = lo; i < hi; i++) {
    const uint32_t v = cnt[i];
    cnt[i] = run;
    off[i] = run;
    run += v;
  }
  if (lane == 0) off[NB] = (uint32_t)n;
  __syncwarp();

  // 3. stable scatter
  const unsigned below = (1u << lane) - 1u;
  for (int g = 0; g < n; g += 32) {
    const int j = g + lane;
    const bool act = j < n;
    const uint32_t key = act ? (uint32_t)c[j] : 0xffffffffu;
    const unsigned peers = __match_any_sync(FULL, key);
    const int rank = __popc(peers & below);
    const uint32_t base = act ? cnt[key] : 0u;
    __syncwarp();
    if (act && rank == 0) cnt[key] = base + (uint32_t)__popc(peers);
    __syncwarp();
    if (act) ent[base + rank] = (uint16_t)j;
  }
}

// ------------------------------------------------------------
// launchers

void lsh_mean(const bf16 *k, int64_t m, int d, float *mu, cudaStream_t s, int heads,
              int64_t head_stride) {
  if (m <= 0 || d <= 0 || heads <= 0) return;
  const dim3 grid((unsigned)((d + 31) / 32), (unsigned)heads);
  lsh_mean_kernel<<<grid, 32 * (1 + MEAN_LOADERS), 0, s>>>(k, m, d, head_stride, mu);
  MP_CUDA_LAUNCH("lsh_mean_kernel");
}

bool lsh_sort_supported(int K) { return K >= 1 && K <= SORT_MAX_K; }

void lsh_sort(const uint16_t *codes, int64_t ld, int64_t m, int L, int K, uint32_t *offsets,
              uint16_t *entries, cudaStream_t s, int heads) {
  if (m <= 0 || heads <= 0) return;
  MP_CHECK(lsh_sort_supported(K) && L >= 1 && ld >= m, MP_ERR_INTERNAL,
           "lsh_sort: K%d L%d over %lld codes (ld %lld) is not supported", K, L, (long long)m,
           (long long)ld);
  const int n_blocks = (int)((m + ((int64_t)1 << SORT_BLOCK_BITS) - 1) >> SORT_BLOCK_BITS);
  const int items = n_blocks * L;
  const int per_warp = (1 << K) * (int)sizeof(uint32_t);
  const int warps = std::max(1, std::min(8, SORT_SMEM / per_warp));
  const dim3 grid((unsigned)((items + warps - 1) / warps), (unsigned)heads);
  // heads one after the other in each array: codes [L][ld], offsets [n_blocks][L][2^K + 1],
  // entries [L][m] (blocks of [L][n_b])
  const SortStrides hs{(int64_t)L * ld, (int64_t)items * ((1 << K) + 1), (int64_t)L * m};
  lsh_sort_kernel<<<grid, 32 * warps, (size_t)warps * per_warp, s>>>(codes, ld, m, L, K, items,
                                                                     offsets, entries, hs);
  MP_CUDA_LAUNCH("lsh_sort_kernel");
}

}  // namespace mp::gpu
