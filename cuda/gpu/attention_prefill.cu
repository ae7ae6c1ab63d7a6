// attention_prefill.cu — causal GQA attention for a chunk of queries of one sequence.
//
// Flash kernel (head_dim 64 or 128; FlashAttention-2 structure on mma.sync tensor cores):
//   - A block owns BR = 64 queries of one query head h (4 warps × 16 rows) and walks the
//     key/value tiles of BC = 64 keys of KV head h / G (G = H / Hkv) up to its last query's
//     position. Blocks are ordered longest-first (blockIdx.y reversed) so that the causal
//     triangle's long rows start early.
//   - Q, K and V tiles go global → shared with 16-byte cp.async; K/V are double-buffered
//     (tile j+1 loads while tile j computes). Shared rows are D bf16 long and XOR-swizzled
//     in 16-byte chunks (chunk c of row r lives at c ^ (r & 7)), so the 8 row addresses of
//     every ldmatrix phase fall in 8 different bank groups.
//   - Each warp keeps its Q fragments in registers (ldmatrix once), computes S = Q·Kᵀ for
//     16×64 with mma.m16n8k16 (K fragments by ldmatrix), applies the causal mask on the
//     tiles that cross the diagonal or the end, and runs the online softmax in base 2
//     (scores pre-scaled by log2(e)/√d, exp2f). The row max is shared by the 4 lanes of a
//     row with two xor-shuffles; the row sum stays per-lane until the end.
//   - P is packed to bf16 straight from the S accumulators: the C fragment of two adjacent
//     n8 tiles is exactly the A fragment of one k16 step. O += P·V uses V fragments from
//     ldmatrix.trans. O (16×D per warp) stays in f32 registers.
//   - Epilogue: O / l, written as OutT; lse2 = m + log2(l) (base-2 log-sum-exp of s/√d).
//   Shared memory: (BR + 4·BC)·D·2 bytes = 80 KB at D = 128 (opt-in above 48 KB).
//
// Tuned flash kernel (variants 5-7; same outputs and semantics):
//   - Each warp owns 32 rows (two m16 tiles), so every K and V fragment read by ldmatrix
//     feeds two mma instead of one: half the shared-memory traffic per mma of the kernel
//     above (its 16-row warps are bounded near 535 TFLOP/s by ldmatrix bandwidth alone).
//     Q is re-read from shared memory per tile (its fragments would take 64 registers);
//     O is 128 f32 registers per lane at D = 128.
//   - Block = NW warps × 32 rows = BR rows, filled with the GB heads of one KV head (GB the
//     largest power of two dividing G with at least 32 queries per block; GB = 4 at the 8B
//     shape: 4 heads × 32 queries): each K/V tile loaded serves every head of the group,
//     and the causal diagonal spans 32 queries instead of 128.
//   - Only the diagonal / end tiles evaluate the mask (a block-uniform branch; two copies
//     of the loop body spilled at D = 128).
//   - K and V have separate cp.async groups: QK and the softmax of tile j wait only for
//     K(j); V(j) keeps loading until P·V. Tile j + 1 loads while tile j computes.
//   - Softmax on raw scores: the row max first (the scale is positive), then one FFMA and
//     one ex2.approx.ftz per score: p = 2^(s·log2(e)/√d − m).
//   - Fragment addresses are 32-bit shared-window offsets; the swizzle of fragment step s
//     is a single XOR of a per-lane offset (every fragment row has row & 7 == lane & 7).
//   Variants: 5 = 4 warps, BC = 64 (96 KB shared, 2 blocks per SM); 6 = 8 warps (256 rows,
//   128 KB, 1 block per SM); 7 = 4 warps, BC = 32 (64 KB). 255 registers at D = 128, BC = 64.
//
// Automatic choice: on Hopper for head_dim 128 the wgmma kernel of
// attention_prefill_sm90a.cu (variant ATTN_WGMMA, 4); otherwise the tuned flash kernel
// (variant 5); the original flash kernel stays variant ATTN_FLASH (1).
//
// Generic kernel (any head_dim <= 256; tests, tiny models): one block per (query, head),
// scores of 512-key chunks in shared memory, online softmax across chunks, thread c owns
// output dims c and c + 128.
//
// Layouts: q[i][h][:] = q + i·q_stride + h·d; K[t][hk][:] = k + t·stride_t + hk·stride_h;
// out[i][h][:] = out + i·out_stride + h·d; lse2[i·H + h]. Query i sits at position
// q_pos0 + i and sees keys 0..min(q_pos0 + i, T − 1).
#include <cmath>

#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/mma.cuh"
#include "gpu/reduce.cuh"

namespace mp::gpu {

namespace {

constexpr int FA_BR = 64;
constexpr int FA_BC = 64;
constexpr float LOG2E = 1.4426950408889634f;

template <int D>
constexpr size_t flash_smem_bytes() {
  return (size_t)(FA_BR + 4 * FA_BC) * D * sizeof(bf16);
}

// Element offset of (row, 16-byte chunk) in a swizzled [rows][D] bf16 tile.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

__device__ __forceinline__ void store2(float *p, float a, float b) {
  *reinterpret_cast<float2 *>(p) = make_float2(a, b);
}
__device__ __forceinline__ void store2(bf16 *p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(a, b);
}

}  // namespace

// ------------------------------------------------------------
// kernels

template <int D, class OutT>
__global__ void __launch_bounds__(128)
    flash_prefill_kernel(const bf16 *__restrict__ q, int64_t q_stride,
                         const bf16 *__restrict__ k, const bf16 *__restrict__ v, int64_t kv_st,
                         int64_t kv_sh, int n, int T, int G, int q_pos0, float sl2,
                         OutT *__restrict__ out, int64_t out_stride, float *__restrict__ lse2,
                         int H) {
  constexpr int CH = D / 8;  // 16-byte chunks per row
  extern __shared__ uint4 smem_u4[];
  bf16 *Qs = reinterpret_cast<bf16 *>(smem_u4);
  bf16 *Ks = Qs + FA_BR * D;      // [2][BC][D]
  bf16 *Vs = Ks + 2 * FA_BC * D;  // [2][BC][D]

  const int h = blockIdx.x;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * FA_BR;
  const int hk = h / G;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;

  const int rows_here = min(FA_BR, n - m0);
  const int pmin = q_pos0 + m0;                  // position of the block's first query
  const int pmax = q_pos0 + m0 + rows_here - 1;  // and of its last
  const int kv_end = min(T, pmax + 1);
  const int ntiles = kv_end > 0 ? (kv_end + FA_BC - 1) / FA_BC : 0;

  // Q tile (rows past n zero-filled).
  for (int i = tid; i < FA_BR * CH; i += 128) {
    const int r = i / CH, c = i % CH;
    const bool ok = r < rows_here;
    const bf16 *src = q + (int64_t)(ok ? m0 + r : 0) * q_stride + (int64_t)h * D + c * 8;
    cp_async_16(Qs + swz<D>(r, c), src, ok);
  }
  auto load_kv = [&](int tile, int buf) {
    const int k0 = tile * FA_BC;
    bf16 *kd = Ks + buf * FA_BC * D;
    bf16 *vd = Vs + buf * FA_BC * D;
    for (int i = tid; i < FA_BC * CH; i += 128) {
      const int r = i / CH, c = i % CH;
      const bool ok = k0 + r < kv_end;
      const int64_t off = (int64_t)(ok ? k0 + r : 0) * kv_st + (int64_t)hk * kv_sh + c * 8;
      cp_async_16(kd + swz<D>(r, c), k + off, ok);
      cp_async_16(vd + swz<D>(r, c), v + off, ok);
    }
  };
  if (ntiles > 0) load_kv(0, 0);
  cp_async_commit();

  uint32_t qf[D / 16][4];
  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY};
  float lrow[2] = {0.f, 0.f};

  // Positions of this lane's two query rows.
  const int prow0 = pmin + warp * 16 + g;
  const int prow1 = prow0 + 8;

  for (int j = 0; j < ntiles; j++) {
    if (j + 1 < ntiles) load_kv(j + 1, (j + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    if (j == 0) {
#pragma unroll
      for (int s = 0; s < D / 16; s++) {
        const int row = warp * 16 + (lane & 15);
        const int chunk = 2 * s + (lane >> 4);
        ldmatrix_x4(qf[s][0], qf[s][1], qf[s][2], qf[s][3], Qs + swz<D>(row, chunk));
      }
    }

    const bf16 *Kt = Ks + (j & 1) * FA_BC * D;
    const bf16 *Vt = Vs + (j & 1) * FA_BC * D;
    const int k0 = j * FA_BC;

    // S = Q·Kᵀ (16 × 64 per warp)
    float sc[FA_BC / 8][4];
#pragma unroll
    for (int jj = 0; jj < FA_BC / 8; jj++) sc[jj][0] = sc[jj][1] = sc[jj][2] = sc[jj][3] = 0.f;
#pragma unroll
    for (int s = 0; s < D / 16; s++) {
#pragma unroll
      for (int jj = 0; jj < FA_BC / 8; jj += 2) {
        const int row = 8 * jj + (lane & 7) + ((lane >> 4) << 3);
        const int chunk = 2 * s + ((lane >> 3) & 1);
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4(b0, b1, b2, b3, Kt + swz<D>(row, chunk));
        mma_bf16_16816(sc[jj], qf[s][0], qf[s][1], qf[s][2], qf[s][3], b0, b1);
        mma_bf16_16816(sc[jj + 1], qf[s][0], qf[s][1], qf[s][2], qf[s][3], b2, b3);
      }
    }

    // Scale to the log2 domain; mask keys past a row's position or past the end.
    const bool need_mask = (k0 + FA_BC - 1 > pmin) || (k0 + FA_BC > kv_end);
#pragma unroll
    for (int jj = 0; jj < FA_BC / 8; jj++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        float x = sc[jj][e] * sl2;
        if (need_mask) {
          const int col = k0 + 8 * jj + 2 * t + (e & 1);
          const int prow = (e & 2) ? prow1 : prow0;
          if (col > prow || col >= kv_end) x = -INFINITY;
        }
        sc[jj][e] = x;
      }
    }

    // Online softmax, rows g (r = 0) and g + 8 (r = 1).
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = -INFINITY;
#pragma unroll
      for (int jj = 0; jj < FA_BC / 8; jj++) mx = fmaxf(mx, fmaxf(sc[jj][2 * r], sc[jj][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(mrow[r], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(mrow[r] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int jj = 0; jj < FA_BC / 8; jj++) {
        const float p0 = exp2f(sc[jj][2 * r] - m_use);
        const float p1 = exp2f(sc[jj][2 * r + 1] - m_use);
        sc[jj][2 * r] = p0;
        sc[jj][2 * r + 1] = p1;
        sum += p0 + p1;
      }
      lrow[r] = lrow[r] * alpha + sum;
      mrow[r] = m_new;
#pragma unroll
      for (int dj = 0; dj < D / 8; dj++) {
        o[dj][2 * r] *= alpha;
        o[dj][2 * r + 1] *= alpha;
      }
    }

    // O += P·V
#pragma unroll
    for (int u = 0; u < FA_BC / 16; u++) {
      const uint32_t a0 = pack_bf16x2(sc[2 * u][0], sc[2 * u][1]);
      const uint32_t a1 = pack_bf16x2(sc[2 * u][2], sc[2 * u][3]);
      const uint32_t a2 = pack_bf16x2(sc[2 * u + 1][0], sc[2 * u + 1][1]);
      const uint32_t a3 = pack_bf16x2(sc[2 * u + 1][2], sc[2 * u + 1][3]);
#pragma unroll
      for (int dj = 0; dj < D / 8; dj += 2) {
        const int row = 16 * u + (lane & 7) + (((lane >> 3) & 1) << 3);
        const int chunk = dj + (lane >> 4);
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans(b0, b1, b2, b3, Vt + swz<D>(row, chunk));
        mma_bf16_16816(o[dj], a0, a1, a2, a3, b0, b1);
        mma_bf16_16816(o[dj + 1], a0, a1, a2, a3, b2, b3);
      }
    }
    __syncthreads();  // the next iteration's cp.async overwrites this buffer
  }
  cp_async_wait<0>();

  // Epilogue
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float l = lrow[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int row = m0 + warp * 16 + g + 8 * r;
    if (row >= n) continue;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    OutT *dst = out + (int64_t)row * out_stride + (int64_t)h * D + 2 * t;
#pragma unroll
    for (int dj = 0; dj < D / 8; dj++) store2(dst + 8 * dj, o[dj][2 * r] * inv, o[dj][2 * r + 1] * inv);
    if (lse2 && t == 0) lse2[(int64_t)row * H + h] = l > 0.f ? mrow[r] + log2f(l) : -INFINITY;
  }
}

// ------------------------------------------------------------
// Tuned flash kernel (variants ATTN_FLASH2*; see the file comment)

// ex2.approx.ftz: one MUFU.EX2 (exp2f adds a range fix-up for denormal results; the
// probabilities it would keep are below 2^-126 and vanish in the bf16 P anyway).
__device__ __forceinline__ float ex2_fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ldmatrix / cp.async on 32-bit shared-window addresses (a hoisted generic pointer costs two
// registers, and [reg + imm] addressing folds the per-fragment row offsets).
__device__ __forceinline__ void lds_x4(uint32_t (&r)[4], uint32_t a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}
__device__ __forceinline__ void lds_x4_t(uint32_t (&r)[4], uint32_t a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}
__device__ __forceinline__ void cp16(uint32_t a, const void *gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
}

template <int D, int NW, int BC>
struct Fa2 {
  static constexpr int WM = 2;             // m16 tiles per warp (32 rows)
  static constexpr int BR = NW * 16 * WM;  // rows per block (queries × heads)
  static constexpr int THREADS = NW * 32;
  static constexpr int MINB = NW == 4 ? 2 : 1;  // blocks per SM the registers must allow
  static constexpr size_t SMEM = (size_t)(BR + 4 * BC) * D * sizeof(bf16);
};

template <int D, int NW, int BC, class OutT>
__global__ void __launch_bounds__(Fa2<D, NW, BC>::THREADS, Fa2<D, NW, BC>::MINB)
    flash2_prefill_kernel(const bf16 *__restrict__ q, int64_t q_stride,
                          const bf16 *__restrict__ k, const bf16 *__restrict__ v, int64_t kv_st,
                          int64_t kv_sh, int n, int T, int G, int lg_gb, int q_pos0, float sl2,
                          OutT *__restrict__ out, int64_t out_stride, float *__restrict__ lse2,
                          int H) {
  using C = Fa2<D, NW, BC>;
  constexpr int BR = C::BR, THREADS = C::THREADS, WM = C::WM;
  constexpr int CH = D / 8;            // 16-byte chunks per row
  constexpr int RB = 2 * D;            // bytes per shared row
  constexpr int RSTEP = THREADS / CH;  // rows per pass of the tile loaders
  static_assert(THREADS % CH == 0 && RSTEP % 8 == 0 && BC % RSTEP == 0 && BR % RSTEP == 0,
                "loader shape");
  extern __shared__ uint4 smem_u4[];
  const uint32_t Qa = (uint32_t)__cvta_generic_to_shared(smem_u4);  // [BR][D]
  const uint32_t Ka = Qa + BR * RB;                                  // [2][BC][D]
  const uint32_t Va = Ka + 2 * BC * RB;                              // [2][BC][D]

  // Rows: r = hg·BRq + qi is query m0 + qi of head h0 + hg (GB = 2^lg_gb heads of one KV
  // head per block, BRq = BR / GB queries, a multiple of 32: each warp is one head).
  const int lg_brq = __ffs(BR) - 1 - lg_gb;
  const int BRq = 1 << lg_brq;
  const int h0 = blockIdx.x << lg_gb;
  const int hk = h0 / G;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * BRq;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;

  const int rows_here = min(BRq, n - m0);
  const int pmin = q_pos0 + m0;
  const int pmax = pmin + rows_here - 1;
  const int kv_end = min(T, pmax + 1);
  const int ntiles = kv_end > 0 ? (kv_end + BC - 1) / BC : 0;
  // Tiles before n_full need no mask: every row of the block sees all their keys.
  const int n_full = kv_end > 0 ? min(ntiles, (min(pmin, kv_end - 1) + 1) / BC) : 0;

  // Loaders: this thread copies chunk lc of rows lr, lr + RSTEP, ... (RSTEP is a multiple of
  // 8, so the swizzled chunk is the same for all of them).
  const int lr = tid / CH, lc = tid % CH;
  const uint32_t ld_off = lr * RB + ((lc ^ (lr & 7)) << 4);
  // Q tile (rows past n zero-filled).
#pragma unroll
  for (int rr = 0; rr < BR; rr += RSTEP) {
    const int r = lr + rr;
    const int hg = r >> lg_brq, qi = r & (BRq - 1);
    const bool ok = qi < rows_here;
    const bf16 *src = q + (int64_t)(ok ? m0 + qi : m0) * q_stride + (int64_t)(h0 + hg) * D + lc * 8;
    cp16(Qa + ld_off + rr * RB, src, ok);
  }
  auto load_tile = [&](const bf16 *kvp, uint32_t dst, int tile) {
    const bf16 *base = kvp + (int64_t)hk * kv_sh + lc * 8;
    const int key0 = tile * BC + lr;
    const bf16 *src = base + (int64_t)key0 * kv_st;
    const int64_t step = (int64_t)RSTEP * kv_st;
#pragma unroll
    for (int rr = 0; rr < BC; rr += RSTEP) {
      const bool ok = key0 + rr < kv_end;
      cp16(dst + ld_off + rr * RB, ok ? src : base, ok);
      src += step;
    }
  };
  // Groups in commit order: {Q, K0}, {V0}, then per tile j: {K(j+1)}, {V(j+1)} (maybe empty).
  if (ntiles > 0) load_tile(k, Ka, 0);
  cp_async_commit();
  if (ntiles > 0) load_tile(v, Va, 0);
  cp_async_commit();

  float o[WM][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < WM; mt++)
#pragma unroll
    for (int j = 0; j < D / 8; j++) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.f;
  float mrow[WM][2], lrow[WM][2];
  const int qw = (warp * 16 * WM) & (BRq - 1);  // the warp's first query within the block
#pragma unroll
  for (int mt = 0; mt < WM; mt++)
#pragma unroll
    for (int r = 0; r < 2; r++) {
      mrow[mt][r] = -INFINITY;
      lrow[mt][r] = 0.f;
    }

  // Per-lane fragment offsets at s = 0 / dj = 0. Every fragment row r has r & 7 == lane & 7
  // and its chunk is c0 | x with c0 even, so its swizzled offset is off0 ^ (c0 << 4).
  const int x7 = lane & 7;
  const uint32_t q_off = (warp * 16 * WM + (lane & 15)) * RB + (((lane >> 4) ^ x7) << 4);
  const uint32_t k_off = (x7 + ((lane >> 4) << 3)) * RB + ((((lane >> 3) & 1) ^ x7) << 4);
  const uint32_t v_off = (x7 + (((lane >> 3) & 1) << 3)) * RB + (((lane >> 4) ^ x7) << 4);

  auto tile = [&](int j) {
    cp_async_wait<1>();  // K(j) (and Q) landed; V(j) may still be in flight
    __syncthreads();     // ... for every thread; and tile j−1's buffers are free
    if (j + 1 < ntiles) load_tile(k, Ka + ((j + 1) & 1) * BC * RB, j + 1);
    cp_async_commit();
    if (j + 1 < ntiles) load_tile(v, Va + ((j + 1) & 1) * BC * RB, j + 1);
    cp_async_commit();

    const uint32_t Kt = Ka + (j & 1) * BC * RB;
    const uint32_t Vt = Va + (j & 1) * BC * RB;

    // S = Q·Kᵀ (32 × BC per warp); Q fragments re-read from shared memory per tile.
    float sc[WM][BC / 8][4];
#pragma unroll
    for (int mt = 0; mt < WM; mt++)
#pragma unroll
      for (int jj = 0; jj < BC / 8; jj++)
        sc[mt][jj][0] = sc[mt][jj][1] = sc[mt][jj][2] = sc[mt][jj][3] = 0.f;
#pragma unroll
    for (int s = 0; s < D / 16; s++) {
      uint32_t qa[WM][4];
      const uint32_t qs = Qa + (q_off ^ (s << 5));
#pragma unroll
      for (int mt = 0; mt < WM; mt++) lds_x4(qa[mt], qs + mt * 16 * RB);
      const uint32_t ks = Kt + (k_off ^ (s << 5));
#pragma unroll
      for (int jj = 0; jj < BC / 8; jj += 2) {
        uint32_t b[4];
        lds_x4(b, ks + jj * 8 * RB);
#pragma unroll
        for (int mt = 0; mt < WM; mt++) {
          mma_bf16_16816(sc[mt][jj], qa[mt][0], qa[mt][1], qa[mt][2], qa[mt][3], b[0], b[1]);
          mma_bf16_16816(sc[mt][jj + 1], qa[mt][0], qa[mt][1], qa[mt][2], qa[mt][3], b[2], b[3]);
        }
      }
    }

    // Causal / end mask (only the tiles that reach past some row's last key).
    if (j >= n_full) {  // block-uniform branch
      // Key j·BC + 8jj + 2t + (e & 1) is visible to row pmin + qw + 16mt + 8(e >> 1) + g
      // up to kv_end − 1.
      const int c0 = j * BC + 2 * t;
      const int p0 = pmin + qw + g;
#pragma unroll
      for (int mt = 0; mt < WM; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
          const int lim = min(p0 + 16 * mt + 8 * r, kv_end - 1) - c0;
#pragma unroll
          for (int jj = 0; jj < BC / 8; jj++)
#pragma unroll
            for (int e = 0; e < 2; e++)
              if (8 * jj + e > lim) sc[mt][jj][2 * r + e] = -INFINITY;
        }
    }

    // Online softmax in base 2 on raw scores: max first (the scale is positive), then
    // p = 2^(s·sl2 − m) with one FFMA per score.
#pragma unroll
    for (int mt = 0; mt < WM; mt++)
#pragma unroll
      for (int r = 0; r < 2; r++) {
        float mx = -INFINITY;
#pragma unroll
        for (int jj = 0; jj < BC / 8; jj++)
          mx = fmaxf(mx, fmaxf(sc[mt][jj][2 * r], sc[mt][jj][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(mrow[mt][r], mx * sl2);
        const float m_use = m_new == -INFINITY ? 0.f : m_new;
        const float alpha = ex2_fast(mrow[mt][r] - m_use);
        float sum = 0.f;
#pragma unroll
        for (int jj = 0; jj < BC / 8; jj++) {
          const float p0 = ex2_fast(fmaf(sc[mt][jj][2 * r], sl2, -m_use));
          const float p1 = ex2_fast(fmaf(sc[mt][jj][2 * r + 1], sl2, -m_use));
          sc[mt][jj][2 * r] = p0;
          sc[mt][jj][2 * r + 1] = p1;
          sum += p0 + p1;
        }
        lrow[mt][r] = lrow[mt][r] * alpha + sum;
        mrow[mt][r] = m_new;
#pragma unroll
        for (int dj = 0; dj < D / 8; dj++) {
          o[mt][dj][2 * r] *= alpha;
          o[mt][dj][2 * r + 1] *= alpha;
        }
      }

    cp_async_wait<2>();  // V(j) landed (K(j+1), V(j+1) may be in flight)
    __syncthreads();

    // O += P·V; one V fragment serves both m16 tiles.
#pragma unroll
    for (int u = 0; u < BC / 16; u++) {
      uint32_t a[WM][4];
#pragma unroll
      for (int mt = 0; mt < WM; mt++) {
        a[mt][0] = pack_bf16x2(sc[mt][2 * u][0], sc[mt][2 * u][1]);
        a[mt][1] = pack_bf16x2(sc[mt][2 * u][2], sc[mt][2 * u][3]);
        a[mt][2] = pack_bf16x2(sc[mt][2 * u + 1][0], sc[mt][2 * u + 1][1]);
        a[mt][3] = pack_bf16x2(sc[mt][2 * u + 1][2], sc[mt][2 * u + 1][3]);
      }
#pragma unroll
      for (int dj = 0; dj < D / 8; dj += 2) {
        uint32_t b[4];
        lds_x4_t(b, Vt + (v_off ^ (dj << 4)) + u * 16 * RB);
#pragma unroll
        for (int mt = 0; mt < WM; mt++) {
          mma_bf16_16816(o[mt][dj], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b[0], b[1]);
          mma_bf16_16816(o[mt][dj + 1], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b[2], b[3]);
        }
      }
    }
  };
#pragma unroll 1
  for (int j = 0; j < ntiles; j++) tile(j);
  cp_async_wait<0>();

  // Epilogue: O / l as OutT; lse2 = m + log2(l).
  const int h = h0 + ((warp * 16 * WM) >> lg_brq);
#pragma unroll
  for (int mt = 0; mt < WM; mt++)
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float l = lrow[mt][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int qi = qw + 16 * mt + g + 8 * r;
      if (qi >= rows_here) continue;
      const int row = m0 + qi;
      const float inv = l > 0.f ? 1.f / l : 0.f;
      OutT *dst = out + (int64_t)row * out_stride + (int64_t)h * D + 2 * t;
#pragma unroll
      for (int dj = 0; dj < D / 8; dj++)
        store2(dst + 8 * dj, o[mt][dj][2 * r] * inv, o[mt][dj][2 * r + 1] * inv);
      if (lse2 && t == 0) lse2[(int64_t)row * H + h] = l > 0.f ? mrow[mt][r] + log2f(l) : -INFINITY;
    }
}

constexpr int GEN_CHUNK = 512;

template <class OutT>
__global__ void __launch_bounds__(128)
    attn_generic_kernel(const bf16 *__restrict__ q, int64_t q_stride,
                        const bf16 *__restrict__ k, const bf16 *__restrict__ v, int64_t kv_st,
                        int64_t kv_sh, int T, int H, int G, int d, int q_pos0, float sl2,
                        OutT *__restrict__ out, int64_t out_stride, float *__restrict__ lse2) {
  __shared__ float qs[256];
  __shared__ float sc[GEN_CHUNK];
  __shared__ float scratch[32];
  const int i = blockIdx.x, h = blockIdx.y, hk = h / G;
  const int tid = threadIdx.x;
  for (int c = tid; c < d; c += blockDim.x)
    qs[c] = __bfloat162float(q[(int64_t)i * q_stride + (int64_t)h * d + c]);
  __syncthreads();
  const int kv_end = min(T, q_pos0 + i + 1);
  const bf16 *kb = k + (int64_t)hk * kv_sh;
  const bf16 *vb = v + (int64_t)hk * kv_sh;
  float m = -INFINITY, l = 0.f, acc0 = 0.f, acc1 = 0.f;
  for (int c0 = 0; c0 < kv_end; c0 += GEN_CHUNK) {
    const int cn = min(GEN_CHUNK, kv_end - c0);
    float mx = -INFINITY;
    for (int j = tid; j < cn; j += blockDim.x) {
      const bf16 *kr = kb + (int64_t)(c0 + j) * kv_st;
      float s = 0.f;
      for (int c = 0; c < d; c++) s += qs[c] * __bfloat162float(kr[c]);
      s *= sl2;
      sc[j] = s;
      mx = fmaxf(mx, s);
    }
    mx = block_max(mx, scratch);
    const float m_new = fmaxf(m, mx);
    const float alpha = exp2f(m - m_new);  // m_new is finite: the chunk is not empty
    float sum = 0.f;
    for (int j = tid; j < cn; j += blockDim.x) {
      const float p = exp2f(sc[j] - m_new);
      sc[j] = p;
      sum += p;
    }
    sum = block_sum(sum, scratch);  // its barriers also publish sc[]
    l = l * alpha + sum;
    acc0 *= alpha;
    acc1 *= alpha;
    for (int j = 0; j < cn; j++) {
      const float p = sc[j];
      const bf16 *vr = vb + (int64_t)(c0 + j) * kv_st;
      if (tid < d) acc0 += p * __bfloat162float(vr[tid]);
      if (tid + 128 < d) acc1 += p * __bfloat162float(vr[tid + 128]);
    }
    m = m_new;
    __syncthreads();  // sc[] is rewritten by the next chunk
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
  OutT *dst = out + (int64_t)i * out_stride + (int64_t)h * d;
  if (tid < d) dst[tid] = to_out<OutT>(acc0 * inv);
  if (tid + 128 < d) dst[tid + 128] = to_out<OutT>(acc1 * inv);
  if (lse2 && tid == 0) lse2[(int64_t)i * H + h] = l > 0.f ? m + log2f(l) : -INFINITY;
}

// ------------------------------------------------------------
// launchers

template <int D, class OutT>
static void launch_flash(const bf16 *q, int64_t q_stride, KVView kv, int n, int T, int H,
                         int G, int q_pos0, OutT *out, int64_t out_stride, float *lse2,
                         cudaStream_t s) {
  constexpr size_t smem = flash_smem_bytes<D>();
  static bool configured = false;  // idempotent attribute set; a race only repeats it
  if (!configured) {
    MP_CUDA(cudaFuncSetAttribute(flash_prefill_kernel<D, OutT>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    configured = true;
  }
  const int ntq = (n + FA_BR - 1) / FA_BR;
  MP_CHECK(ntq <= 65535, MP_ERR_INVALID, "attention: %d queries is too many for one launch", n);
  const float sl2 = LOG2E / sqrtf((float)D);
  flash_prefill_kernel<D, OutT><<<dim3(H, ntq), 128, smem, s>>>(
      q, q_stride, kv.k, kv.v, kv.stride_t, kv.stride_h, n, T, G, q_pos0, sl2, out, out_stride,
      lse2, H);
  MP_CUDA_LAUNCH("flash_prefill_kernel");
}

template <int D, int NW, int BC, class OutT>
static void launch_flash2(const bf16 *q, int64_t q_stride, KVView kv, int n, int T, int H,
                          int G, int q_pos0, OutT *out, int64_t out_stride, float *lse2,
                          cudaStream_t s) {
  using C = Fa2<D, NW, BC>;
  static bool configured = false;  // idempotent attribute set; a race only repeats it
  if (!configured) {
    MP_CUDA(cudaFuncSetAttribute(flash2_prefill_kernel<D, NW, BC, OutT>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)C::SMEM));
    // All of L1 as shared memory (the loads bypass L1), so that two 96 KB blocks fit.
    MP_CUDA(cudaFuncSetAttribute(flash2_prefill_kernel<D, NW, BC, OutT>,
                                 cudaFuncAttributePreferredSharedMemoryCarveout,
                                 (int)cudaSharedmemCarveoutMaxShared));
    configured = true;
  }
  // Heads per block: the largest power of two dividing G with ≥ 32 queries per block.
  int lg_gb = 0;
  while (lg_gb < 3 && G % (2 << lg_gb) == 0 && (C::BR >> (lg_gb + 1)) >= 32) lg_gb++;
  const int brq = C::BR >> lg_gb;
  const int ntq = (n + brq - 1) / brq;
  MP_CHECK(ntq <= 65535, MP_ERR_INVALID, "attention: %d queries is too many for one launch", n);
  const float sl2 = LOG2E / sqrtf((float)D);
  flash2_prefill_kernel<D, NW, BC, OutT><<<dim3(H >> lg_gb, ntq), C::THREADS, C::SMEM, s>>>(
      q, q_stride, kv.k, kv.v, kv.stride_t, kv.stride_h, n, T, G, lg_gb, q_pos0, sl2, out,
      out_stride, lse2, H);
  MP_CUDA_LAUNCH("flash2_prefill_kernel");
}

template <int NW, int BC, class OutT>
static void launch_flash2_d(const bf16 *q, int64_t q_stride, KVView kv, int n, int T, int H,
                            int G, int d, int q_pos0, OutT *out, int64_t out_stride, float *lse2,
                            cudaStream_t s) {
  if (d == 64)
    launch_flash2<64, NW, BC, OutT>(q, q_stride, kv, n, T, H, G, q_pos0, out, out_stride, lse2, s);
  else
    launch_flash2<128, NW, BC, OutT>(q, q_stride, kv, n, T, H, G, q_pos0, out, out_stride, lse2,
                                     s);
}

template <class OutT>
int attention_prefill(const bf16 *q, int64_t q_stride, KVView kv, int n, int T, int H, int Hkv,
                      int d, int q_pos0, OutT *out, int64_t out_stride, float *lse2,
                      cudaStream_t s, int variant) {
  if (n <= 0) return variant;
  MP_CHECK(H > 0 && Hkv > 0 && H % Hkv == 0, MP_ERR_INVALID,
           "attention: %d query heads are not a multiple of %d KV heads", H, Hkv);
  MP_CHECK(d > 0 && d <= 256, MP_ERR_UNSUPPORTED, "attention: head_dim %d is not supported", d);
  MP_CHECK(H <= 65535 && n <= 65535 * 64, MP_ERR_INVALID, "attention: too many heads or queries");
  const int G = H / Hkv;
  if (variant == ATTN_AUTO) variant = forced_variant(OP_ATTENTION);
  const bool flash_ok = (d == 64 || d == 128) && q_stride % 8 == 0 && kv.stride_t % 8 == 0 &&
                        kv.stride_h % 8 == 0 && out_stride % 2 == 0 &&
                        ((uintptr_t)q & 15) == 0 && ((uintptr_t)kv.k & 15) == 0 &&
                        ((uintptr_t)kv.v & 15) == 0 && ((uintptr_t)out & 7) == 0;
  // Hopper: the wgmma kernel (attention_prefill_sm90a.cu) for head_dim 128 when it is
  // available (sm_90 device, sm_90a build); otherwise the choice below.
  if ((variant == ATTN_AUTO || variant == ATTN_WGMMA) && flash_ok && d == 128 &&
      attention_prefill_sm90a<OutT>(q, q_stride, kv, n, T, H, Hkv, d, q_pos0, out, out_stride,
                                    lse2, s))
    return ATTN_WGMMA;
  if (variant == ATTN_WGMMA) variant = ATTN_AUTO;
  if (variant == ATTN_AUTO || variant == ATTN_DECODE) variant = flash_ok ? ATTN_FLASH2 : ATTN_GENERIC;
  const bool flash2 = variant == ATTN_FLASH2 || variant == ATTN_FLASH2_W8 || variant == ATTN_FLASH2_BC32;
  if ((variant == ATTN_FLASH || flash2) && !flash_ok) variant = ATTN_GENERIC;
  if (variant == ATTN_FLASH2) {
    launch_flash2_d<4, 64, OutT>(q, q_stride, kv, n, T, H, G, d, q_pos0, out, out_stride, lse2, s);
    return variant;
  }
  if (variant == ATTN_FLASH2_W8) {
    launch_flash2_d<8, 64, OutT>(q, q_stride, kv, n, T, H, G, d, q_pos0, out, out_stride, lse2, s);
    return variant;
  }
  if (variant == ATTN_FLASH2_BC32) {
    launch_flash2_d<4, 32, OutT>(q, q_stride, kv, n, T, H, G, d, q_pos0, out, out_stride, lse2, s);
    return variant;
  }
  if (variant == ATTN_FLASH) {
    if (d == 64)
      launch_flash<64, OutT>(q, q_stride, kv, n, T, H, G, q_pos0, out, out_stride, lse2, s);
    else
      launch_flash<128, OutT>(q, q_stride, kv, n, T, H, G, q_pos0, out, out_stride, lse2, s);
    return ATTN_FLASH;
  }
  const float sl2 = LOG2E / sqrtf((float)d);
  attn_generic_kernel<OutT><<<dim3(n, H), 128, 0, s>>>(q, q_stride, kv.k, kv.v, kv.stride_t,
                                                       kv.stride_h, T, H, G, d, q_pos0, sl2, out,
                                                       out_stride, lse2);
  MP_CUDA_LAUNCH("attn_generic_kernel");
  return ATTN_GENERIC;
}

template int attention_prefill<float>(const bf16 *, int64_t, KVView, int, int, int, int, int,
                                      int, float *, int64_t, float *, cudaStream_t, int);
template int attention_prefill<bf16>(const bf16 *, int64_t, KVView, int, int, int, int, int,
                                     int, bf16 *, int64_t, float *, cudaStream_t, int);

// ------------------------------------------------------------
// host-pointer op (tests)

// q is rounded to bf16 (as the forward pass feeds it); K/V are given in kv_dtype and stored
// as bf16. Variant ATTN_DECODE runs the split-K decode kernel with one "sequence" per query
// (query i sees min(T, q_pos0 + i + 1) keys), which is exactly its use in decoding.
void op_attention(int32_t kv_dtype, const float *q, const void *k, const void *v, int n, int T,
                  int H, int Hkv, int d, int q_pos0, float *out, float *lse2) {
  MP_CHECK(n >= 0 && T >= 0 && q_pos0 >= 0, MP_ERR_INVALID, "attention: negative size");
  require_device();
  Stream s;
  DevBuf<bf16> d_q = upload_bf16(q, (size_t)n * H * d, s);
  DevBuf<bf16> d_k = upload_as_bf16(kv_dtype, k, (size_t)T * Hkv * d, s);
  DevBuf<bf16> d_v = upload_as_bf16(kv_dtype, v, (size_t)T * Hkv * d, s);
  DevBuf<float> d_out((size_t)n * H * d);
  DevBuf<float> d_lse((size_t)n * H);
  int variant = forced_variant(OP_ATTENTION);
  if (variant == ATTN_AUTO && n == 1) variant = ATTN_DECODE;
  if (variant == ATTN_DECODE) {
    std::vector<SeqKV> seqs((size_t)n);
    int max_len = 0;
    for (int i = 0; i < n; i++) {
      const int len = std::min(T, q_pos0 + i + 1);
      seqs[i] = SeqKV{d_k.p, d_v.p, (int64_t)Hkv * d, (int64_t)d, len};
      max_len = std::max(max_len, len);
    }
    DevBuf<SeqKV> d_seqs = upload(seqs.data(), seqs.size(), s);
    const int splits = decode_splits(n, Hkv, max_len);
    DevBuf<float> ws(decode_workspace_floats(n, H, d, splits));
    if (decode2_enabled()) {
      // The decode step's form ($MP_DECODE2=0: the original): folded merge, PDL, prefetch.
      DevBuf<unsigned> cnt((size_t)n * Hkv);
      MP_CUDA(cudaMemsetAsync(cnt.p, 0, cnt.bytes(), s));
      attention_decode2<bf16, float>(d_q.p, (int64_t)H * d, d_seqs.p, n, H, Hkv, d, splits, d_out.p,
                                     d_lse.p, ws.p, cnt.p, decode2_pdl(), s);
      s.sync();  // cnt must outlive the kernel
    } else {
      attention_decode<bf16, float>(d_q.p, (int64_t)H * d, d_seqs.p, n, H, Hkv, d, splits, d_out.p,
                                    d_lse.p, ws.p, s);
    }
    s.sync();  // seqs and ws must outlive the kernels
  } else {
    KVView kv{d_k.p, d_v.p, (int64_t)Hkv * d, (int64_t)d};
    // The key-norm bound, as the engine's prefill passes it (the Hopper kernel's fixed
    // maxima; other kernels ignore it).
    DevBuf<float> kmax((size_t)std::max(Hkv, 1));
    if (d == 128 && T > 0 && key_bound_enabled()) {
      key_norm_max(d_k.p, kv.stride_t, kv.stride_h, 0, T, Hkv, d, kmax.p, true, s);
      kv.kmax = kmax.p;
    }
    attention_prefill<float>(d_q.p, (int64_t)H * d, kv, n, T, H, Hkv, d, q_pos0, d_out.p,
                             (int64_t)H * d, d_lse.p, s, variant);
  }
  to_host(out, d_out.p, d_out.n, s);
  if (lse2) to_host(lse2, d_lse.p, d_lse.n, s);
  s.sync();
}

}  // namespace mp::gpu
