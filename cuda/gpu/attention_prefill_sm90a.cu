// attention_prefill_sm90a.cu — Hopper (sm_90a) flash-attention forward for the causal GQA
// prefill: head_dim 128, bf16 q/K/V, f32 or bf16 output. Same interface, layouts and
// semantics as the mma.sync flash kernel of attention_prefill.cu (variant ATTN_FLASH), which
// stays the fallback everywhere else.
//
// Block = 3 warpgroups (384 threads) for BR = 128 queries of one query head h:
//   - warpgroup 0 is the producer: it copies the Q tile once and then the K and V tiles of KV
//     head h / G (BC = 128 keys each) global → shared into a ring of STAGES stages (2 by
//     default; 3 fit too), and hands each tile over through mbarriers. The default
//     (flash_wgmma_tma_kernel) has one thread drive the copy engine (TMA, tensor maps with the
//     tiles' 128-byte swizzle); the other configurations copy with 128 threads' 16-byte
//     cp.async (produce_tiles), which the default falls back to where a map cannot be made;
//   - warpgroups 1 and 2 are the consumers; consumer c = 0, 1 owns query rows
//     m0 + 64c .. m0 + 64c + 63 (the M = 64 of wgmma).
// Per key tile j, each consumer warpgroup
//   1. S = Q·Kᵀ (64 × 128, f32 in registers): 8 × wgmma.m64n128k16, B = K from shared memory,
//      K-major (d contiguous, exactly how the rows are stored); A = Q from registers (the
//      default: its A fragments loaded once from the Q tile) or from shared memory;
//   2. masks (only tiles that cross the warpgroup's diagonal or the end of the keys), runs the
//      online softmax in base 2 (scores scaled by log2(e)/√d inside the exp2's FMA), rescales O;
//   3. O += P·V: P is packed to bf16 straight from the S accumulators (the wgmma D fragment of
//      two adjacent n8 blocks is the A fragment of one k16 step, as for mma.m16n8k16), so
//      8 × wgmma.m64n128k16 with A from registers and B = V from shared memory, MN-major for
//      this product (d contiguous), i.e. with the transpose bit set.
//   The default (consume_tiles_overlap) keeps P·V_{j−1} in flight under Q·K_jᵀ and the
//   softmax of S_j (FA3's intra-warpgroup overlap), with registers moved from the producer to
//   the consumers by setmaxnreg. The kernel before it (consume_tiles, WGMMA_PINGPONG and
//   WGMMA_NO_PINGPONG) waits for each product and instead lets the two consumer warpgroups
//   cover each other's softmax: they issue their Q·Kᵀ wgmmas in turn (two "turn" mbarriers).
//   Under the power cap the default runs a 96K prompt's attention at 606 TFLOP/s, the
//   ping-pong kernel at 509 (bench/gpu/NOTES.md, round 9). Measured and no better with the
//   TMA producer (round 10; the code is in commit 8efc014): 3 K/V stages, the consumers' turns
//   through named barriers, and K/V tiles multicast to the two blocks of a cluster.
// Fixed maxima: given a bound on the keys' norms (KVView::kmax), a warp whose 16 rows all
// have |q|·kmax within 2^48 of the first key tile's maximum keeps those maxima for the later
// tiles: step 2 then skips the row maxima and O's rescale (exact: softmax is shift-invariant,
// and no P can exceed 2^48). 96K layers back to back: 681 against 576 TFLOP/s, the 96K
// prefill 5.78 against 6.44 s (round 11).
//
// Shared memory (1024-byte aligned): Q [2 warpgroups][2 halves][64 rows][128 B], then
// K [STAGES][2 halves][128 rows][128 B] and V likewise, then the mbarriers. A 256-byte row of
// d = 128 bf16 is stored as two 128-byte halves (d 0..63, d 64..127) in separate [rows][128 B]
// blocks, and inside a block the 16-byte chunk c of row r sits at chunk c ^ (r & 7): the
// 128-byte swizzle of the wgmma descriptors (8-row, 1024-byte atoms). Descriptors:
//   - K-major (Q as A, K as B): start = half base + 32·(k16 step within the half), stride byte
//     offset 1024 (next 8 rows), leading byte offset unused (16), swizzle mode 1 (128 B);
//   - MN-major (V as B of P·V): start = V base + 2048·(k16 step: 16 keys), leading byte
//     offset = the distance between the two d halves (BC·128 B), stride byte offset 1024
//     (next 8 keys), swizzle mode 1.
// Hand-over: with TMA a full barrier completes when its one arrival (with the tile's byte
// count) and the copies' bytes are in; with cp.async, when the 128 producer lanes have waited
// for their own cp.async groups and issued fence.proxy.async (cp.async writes through the
// generic proxy; wgmma reads through the async proxy); empty barriers (8 arrivals: lane 0
// of each of the 8 consumer warps after wgmma.wait_group) free a stage: K_j as soon as Q·K_jᵀ
// has completed, V_j when P·V_j has.
// A watchdog turns a wait of more than 20 s into a trap (an error instead of a hang); the trap
// is out of line (watchdog_trap), or ptxas ignores setmaxnreg.
//
// Blocks are ordered longest-first (blockIdx.y reversed), like the mma.sync kernel. The
// device code exists only in the sm_90a compilation (__CUDA_ARCH_FEAT_SM90_ALL; the build
// compiles files named *_sm90a.cu for compute_90a and defines MP_SM90A there); the launcher
// returns false, launching nothing, on any other device or build.
#include <cuda.h>  // CUtensorMap (the encoder comes through the runtime: no -lcuda)
#include <cudaTypedefs.h>

#include <cmath>
#include <cstdlib>

#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/mma.cuh"

namespace mp::gpu {

namespace {

constexpr int WG_D = 128;                          // head_dim
constexpr int WG_BR = 128;                         // queries per block (2 warpgroups × 64)
constexpr int WG_BC = 128;                         // keys per tile
constexpr int WG_THREADS = 384;                    // producer warpgroup + 2 consumers
constexpr int WG_Q_BYTES = WG_BR * WG_D * 2;       // 32 KB
constexpr int WG_T_BYTES = WG_BC * WG_D * 2;       // 32 KB per K or V tile
// How far (base 2) a row's score bound may lie above its first key tile's maximum for the
// row to keep that maximum (KVView::kmax): P <= 2^48, and l, O stay far from f32's range.
constexpr float FIXED_MAX_MARGIN = 48.f;

// Shared-memory layout for a K/V ring of STAGES (2 or 3) stages.
template <int STAGES>
struct WgLayout {
  static constexpr int off_k = WG_Q_BYTES;
  static constexpr int off_v = off_k + STAGES * WG_T_BYTES;
  static constexpr int off_bar = off_v + STAGES * WG_T_BYTES;
  static constexpr int nbar = 3 + 4 * STAGES;  // full Q, full/empty K/V[s], turn[2]
  static constexpr size_t smem = off_bar + 8 * nbar + 1024;  // + slack for the alignment
};

}  // namespace

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
namespace {

// Byte offset of 16-byte chunk c (0..15) of row r in a [2 halves][rows][128 B] swizzled tile.
__device__ __forceinline__ uint32_t tile_off(int rows, int r, int c) {
  return (uint32_t)((c >> 3) * rows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(ok ? 16 : 0)
               : "memory");
}

__device__ __forceinline__ uint32_t ld_shared_u32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}

__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The copy engine (TMA): box (c0, c1, c2) of the tensor map → shared memory at dst, completing
// `bytes` of the barrier's transaction count (set by mbar_expect_tx).
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap *map, int c0, int c1,
                                            int c2, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar)
               : "memory");
}

__device__ __forceinline__ bool mbar_try(uint32_t bar, uint32_t parity) {
  uint32_t ok;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(bar), "r"(parity)
      : "memory");
  return ok != 0;
}

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %globaltimer;\n" : "=l"(t));
  return t;
}

// The watchdog's trap, out of line: an inline trap makes ptxas 13.0 compile the consumers
// with the block's entry register count (168) despite setmaxnreg, serializing the overlapped
// wgmmas (C7512) and spilling.
__device__ __noinline__ void watchdog_trap() { __trap(); }

// Waits for the completion of the barrier's phase with this parity; traps after 20 s.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  if (mbar_try(bar, parity)) return;
  const uint64_t t0 = global_ns();
  for (uint32_t spin = 1;; spin++) {
    if (mbar_try(bar, parity)) return;
    if ((spin & 1023u) == 0 && global_ns() - t0 > 20000000000ull) watchdog_trap();
  }
}

// 2^x with the MUFU approximation (flush-to-zero; 2^−∞ = 0), what exp2f becomes with
// --use_fast_math.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// wgmma shared-memory matrix descriptor, 128-byte swizzle (byte offsets; 16-byte units inside).
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) |
         ((uint64_t)((sbo >> 4) & 0x3FFF) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving accesses of these registers across the wgmma asm statements.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}

// D (+)= A·B, m64n128k16, A and B from shared memory (K-major both), f32 accumulators.
__device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(scale_d));
}

// D (+)= A·B, m64n128k16, A from registers (the mma.m16n8k16 A fragment per warp), B from
// shared memory, K-major (TRANS_B = 0) or MN-major (TRANS_B = 1, transposed).
template <int TRANS_B>
__device__ __forceinline__ void wgmma_rs(float (&d)[64], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint64_t db, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(db), "r"(scale_d), "n"(TRANS_B));
}

__device__ __forceinline__ void store2(float *p, float a, float b) {
  *reinterpret_cast<float2 *>(p) = make_float2(a, b);
}
__device__ __forceinline__ void store2(bf16 *p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(a, b);
}

// The mbarriers after the tiles: full Q, full K[s], full V[s], empty K[s], empty V[s].
template <int S>
__device__ __forceinline__ uint32_t bar_full_q(uint32_t sb) {
  return sb + WgLayout<S>::off_bar;
}
template <int S>
__device__ __forceinline__ uint32_t bar_full_k(uint32_t sb, int s) {
  return sb + WgLayout<S>::off_bar + 8u * (1 + s);
}
template <int S>
__device__ __forceinline__ uint32_t bar_full_v(uint32_t sb, int s) {
  return sb + WgLayout<S>::off_bar + 8u * (1 + S + s);
}
template <int S>
__device__ __forceinline__ uint32_t bar_empty_k(uint32_t sb, int s) {
  return sb + WgLayout<S>::off_bar + 8u * (1 + 2 * S + s);
}
template <int S>
__device__ __forceinline__ uint32_t bar_empty_v(uint32_t sb, int s) {
  return sb + WgLayout<S>::off_bar + 8u * (1 + 3 * S + s);
}
template <int S>
__device__ __forceinline__ uint32_t bar_turn(uint32_t sb, int c) {
  return sb + WgLayout<S>::off_bar + 8u * (1 + 4 * S + c);
}

// Masks S_j = Q·K_jᵀ (only tiles that cross the warpgroup's diagonal or the end of the keys:
// keys past a row's position or past kv_end), then the online-softmax step in base 2 for this
// lane's rows g (r = 0) and g + 8 (r = 1) of its warp's 16: S becomes P (f32, scores scaled by
// log2(e)/√d inside the exp2's FMA), m and l are updated, and alpha[r] is the factor row r of O
// must be scaled by before P·V_j is added. (Rescaling only when a maximum grows by more than
// 2^8, FA4's rule, behind a warp vote: 15 % slower here, bench/gpu/NOTES.md round 9.)
// S (row r of this lane's two) becomes P = 2^(S·sl2 − m) in place; returns the row's sum.
__device__ __forceinline__ float exp2_row(float (&s)[64], int r, float m, float sl2) {
  float sum = 0.f;
#pragma unroll
  for (int jj = 0; jj < WG_BC / 8; jj++) {
    const float p0 = fast_exp2(fmaf(s[4 * jj + 2 * r], sl2, -m));
    const float p1 = fast_exp2(fmaf(s[4 * jj + 2 * r + 1], sl2, -m));
    s[4 * jj + 2 * r] = p0;
    s[4 * jj + 2 * r + 1] = p1;
    sum += p0 + p1;
  }
  return sum;
}

__device__ __forceinline__ void mask_tile(float (&s)[64], int k0, int wg_pmin, int prow0,
                                          int prow1, int kv_end, int t) {
  if (k0 + WG_BC - 1 > wg_pmin || k0 + WG_BC > kv_end) {
#pragma unroll
    for (int jj = 0; jj < WG_BC / 8; jj++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int col = k0 + 8 * jj + 2 * t + (e & 1);
        const int prow = (e & 2) ? prow1 : prow0;
        if (col > prow || col >= kv_end) s[4 * jj + e] = -INFINITY;
      }
    }
  }
}

__device__ __forceinline__ void softmax_tile(float (&s)[64], float (&mrow)[2], float (&lrow)[2],
                                             float (&alpha)[2], int k0, int wg_pmin, int prow0,
                                             int prow1, int kv_end, int t, float sl2) {
  mask_tile(s, k0, wg_pmin, prow0, prow1, kv_end, t);
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float mx = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < WG_BC / 8; jj++)
      mx = fmaxf(mx, fmaxf(s[4 * jj + 2 * r], s[4 * jj + 2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(mrow[r], mx * sl2);
    const float m_use = m_new == -INFINITY ? 0.f : m_new;
    alpha[r] = fast_exp2(mrow[r] - m_use);
    lrow[r] = lrow[r] * alpha[r] + exp2_row(s, r, m_use, sl2);
    mrow[r] = m_new;
  }
}

// softmax_tile with the row maxima held (mrow finite, and no score of the row above it by more
// than the caller's margin, FIXED_MAX_MARGIN): no maxima, no factor for O. P may exceed 1 (up
// to 2^margin); l and O grow alike, and their ratio is the softmax's (it is shift-invariant).
__device__ __forceinline__ void softmax_fixed(float (&s)[64], const float (&mrow)[2],
                                              float (&lrow)[2], int k0, int wg_pmin, int prow0,
                                              int prow1, int kv_end, int t, float sl2) {
  mask_tile(s, k0, wg_pmin, prow0, prow1, kv_end, t);
#pragma unroll
  for (int r = 0; r < 2; r++) lrow[r] += exp2_row(s, r, mrow[r], sl2);
}

__device__ __forceinline__ void rescale_o(float (&o)[64], const float (&alpha)[2]) {
#pragma unroll
  for (int dj = 0; dj < WG_D / 8; dj++) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
      o[4 * dj + 2 * r] *= alpha[r];
      o[4 * dj + 2 * r + 1] *= alpha[r];
    }
  }
}

// P as bf16 A fragments: the wgmma D fragment of two adjacent n8 blocks is the A fragment of one
// k16 step (as for mma.m16n8k16).
__device__ __forceinline__ void pack_p(uint32_t (&pa)[WG_BC / 16][4], const float (&s)[64]) {
#pragma unroll
  for (int u = 0; u < WG_BC / 16; u++) {
    pa[u][0] = pack_bf16x2(s[8 * u + 0], s[8 * u + 1]);
    pa[u][1] = pack_bf16x2(s[8 * u + 2], s[8 * u + 3]);
    pa[u][2] = pack_bf16x2(s[8 * u + 4], s[8 * u + 5]);
    pa[u][3] = pack_bf16x2(s[8 * u + 6], s[8 * u + 7]);
  }
}

// Issues S = Q·K_stᵀ: 8 × wgmma.m64n128k16 over d (not committed).
template <int S>
__device__ __forceinline__ void issue_qk(float (&s)[64], uint64_t dq, uint64_t dk, int st) {
#pragma unroll
  for (int kk = 0; kk < WG_D / 16; kk++) {
    const uint32_t qo = (kk >> 2) * (64 * 128) + (kk & 3) * 32;
    const uint32_t ko = st * WG_T_BYTES + (kk >> 2) * (WG_BC * 128) + (kk & 3) * 32;
    wgmma_ss(s, dq + (qo >> 4), dk + (ko >> 4), kk);
  }
}

// Issues S = Q·K_stᵀ with Q from registers (qa: this lane's A fragments of the 8 k16 steps).
template <int S>
__device__ __forceinline__ void issue_qk_rs(float (&s)[64], const uint32_t (&qa)[WG_D / 16][4],
                                            uint64_t dk, int st) {
#pragma unroll
  for (int kk = 0; kk < WG_D / 16; kk++) {
    const uint32_t ko = st * WG_T_BYTES + (kk >> 2) * (WG_BC * 128) + (kk & 3) * 32;
    wgmma_rs<0>(s, qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], dk + (ko >> 4), kk);
  }
}

// Issues O += P·V_st: 8 × wgmma.m64n128k16 over the tile's keys (not committed).
__device__ __forceinline__ void issue_pv(float (&o)[64], const uint32_t (&pa)[WG_BC / 16][4],
                                         uint64_t dv, int st) {
#pragma unroll
  for (int u = 0; u < WG_BC / 16; u++) {
    const uint32_t vo = st * WG_T_BYTES + u * 16 * 128;
    wgmma_rs<1>(o, pa[u][0], pa[u][1], pa[u][2], pa[u][3], dv + (vo >> 4), 1);
  }
}

// Producer warpgroup (thread p = 0..127): Q once, then K_j and V_j for j < ntiles.
template <int S>
__device__ __forceinline__ void produce_tiles(const bf16 *__restrict__ q, int64_t q_stride,
                                              const bf16 *__restrict__ k,
                                              const bf16 *__restrict__ v, int64_t kv_st,
                                              int64_t kv_sh, int m0, int h, int hk,
                                              int rows_here, int kv_end, int ntiles,
                                              uint32_t sb, int p) {
  // Thread p copies chunk c = p & 15 of rows 8·it + r_thr (r_thr = p >> 4): 16 threads read
  // one 256-byte row. Row r & 7 = r_thr & 7 for every it, so the swizzled destination of a
  // thread only moves by 8 rows (1024 bytes) per it.
  const int c = p & 15, r_thr = p >> 4;
  const uint32_t q_dst = sb + tile_off(64, r_thr, c);
  for (int it = 0; it < WG_BR / 8; it++) {
    const int r = 8 * it + r_thr;  // rows 0..63 in the first Q half-tile, 64..127 in the second
    const bool ok = r < rows_here;
    const bf16 *src = q + (int64_t)(ok ? m0 + r : 0) * q_stride + (int64_t)h * WG_D + c * 8;
    cp_async16(q_dst + (uint32_t)(r >> 6) * (WG_Q_BYTES / 2) + (uint32_t)(it & 7) * 1024, src,
               ok);
  }
  cp_async_commit();
  const int64_t step = 8 * kv_st;
  const bf16 *kb = k + (int64_t)hk * kv_sh + (int64_t)r_thr * kv_st + c * 8;
  const bf16 *vb = v + (int64_t)hk * kv_sh + (int64_t)r_thr * kv_st + c * 8;
  const uint32_t t_off = tile_off(WG_BC, r_thr, c);
  auto load_tile = [&](const bf16 *base, int j, uint32_t dst) {
    const int k0 = j * WG_BC;
    const bf16 *src = base + (int64_t)k0 * kv_st;
    dst += t_off;
    const int left = kv_end - k0 - r_thr;  // rows 8·it + r_thr < kv_end − k0 exist
#pragma unroll 4
    for (int it = 0; it < WG_BC / 8; it++) {
      const bool ok = 8 * it < left;
      cp_async16(dst, ok ? src : k, ok);
      src += step;
      dst += 1024;
    }
    cp_async_commit();
  };
  // Each thread waits for its own copies, fences them for the async proxy, then arrives; the
  // groups stay two deep (K_j in flight while V_{j-1} is handed over, and so on).
  load_tile(kb, 0, sb + WgLayout<S>::off_k);
  cp_async_wait<1>();
  fence_proxy_async();
  mbar_arrive(bar_full_q<S>(sb));
  load_tile(vb, 0, sb + WgLayout<S>::off_v);
  cp_async_wait<1>();
  fence_proxy_async();
  mbar_arrive(bar_full_k<S>(sb, 0));
  for (int j = 1; j < ntiles; j++) {
    const int st = j % S;
    const uint32_t use = (uint32_t)(j / S);  // earlier tiles in this stage
    if (use > 0) mbar_wait(bar_empty_k<S>(sb, st), (use - 1) & 1);
    load_tile(kb, j, sb + WgLayout<S>::off_k + st * WG_T_BYTES);
    cp_async_wait<1>();
    fence_proxy_async();
    mbar_arrive(bar_full_v<S>(sb, (j - 1) % S));
    if (use > 0) mbar_wait(bar_empty_v<S>(sb, st), (use - 1) & 1);
    load_tile(vb, j, sb + WgLayout<S>::off_v + st * WG_T_BYTES);
    cp_async_wait<1>();
    fence_proxy_async();
    mbar_arrive(bar_full_k<S>(sb, st));
  }
  cp_async_wait<0>();
  fence_proxy_async();
  mbar_arrive(bar_full_v<S>(sb, (ntiles - 1) % S));
}

// The producer with the copy engine (WGMMA_DEFAULT where tensor maps can be made): one thread
// issues every copy. Q: 4 boxes of 64 rows × 64 d (one per consumer and d half); K_j and V_j:
// 2 boxes of 128 keys × 64 d each. The maps' 128-byte swizzle is the tiles' layout
// (tile_off), and rows past the end of the tensor arrive as zeros. A full barrier completes
// when its bytes have landed (one arrival with the byte count, then the copies' transactions).
// kv_head_inner: the K/V maps' dimension 1 is the KV head (token-major caches), else the token.
template <int S>
__device__ __forceinline__ void produce_tiles_tma(const CUtensorMap *tq, const CUtensorMap *tk,
                                                  const CUtensorMap *tv, bool kv_head_inner,
                                                  int m0, int h, int hk, int ntiles,
                                                  uint32_t sb) {
  const uint32_t fq = bar_full_q<S>(sb);
  mbar_expect_tx(fq, WG_Q_BYTES);
  for (int cw = 0; cw < 2; cw++)
    for (int half = 0; half < 2; half++)
      tma_load_3d(sb + cw * (WG_Q_BYTES / 2) + half * (WG_Q_BYTES / 4), tq, 64 * half, h,
                  m0 + 64 * cw, fq);
  auto load_tile = [&](const CUtensorMap *map, int j, uint32_t dst, uint32_t bar) {
    mbar_expect_tx(bar, WG_T_BYTES);
    for (int half = 0; half < 2; half++) {
      const int c1 = kv_head_inner ? hk : j * WG_BC, c2 = kv_head_inner ? j * WG_BC : hk;
      tma_load_3d(dst + half * (WG_T_BYTES / 2), map, 64 * half, c1, c2, bar);
    }
  };
  for (int j = 0; j < ntiles; j++) {
    const int st = j % S;
    const uint32_t use = (uint32_t)(j / S);
    if (use > 0) mbar_wait(bar_empty_k<S>(sb, st), (use - 1) & 1);
    load_tile(tk, j, sb + WgLayout<S>::off_k + st * WG_T_BYTES, bar_full_k<S>(sb, st));
    if (use > 0) mbar_wait(bar_empty_v<S>(sb, st), (use - 1) & 1);
    load_tile(tv, j, sb + WgLayout<S>::off_v + st * WG_T_BYTES, bar_full_v<S>(sb, st));
  }
}

// Epilogue of a consumer lane: its rows row0 and row0 + 8 (those < n) of O / l as OutT, and
// lse2 = m + log2(l).
template <class OutT>
__device__ __forceinline__ void write_rows(OutT *__restrict__ out, int64_t out_stride,
                                           float *__restrict__ lse2, int H, int n, int h,
                                           int row0, int t, const float (&o)[64],
                                           const float (&mrow)[2], const float (&lrow)[2]) {
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float l = lrow[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int row = row0 + 8 * r;
    if (row >= n) continue;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    OutT *dst = out + (int64_t)row * out_stride + (int64_t)h * WG_D + 2 * t;
#pragma unroll
    for (int dj = 0; dj < WG_D / 8; dj++)
      store2(dst + 8 * dj, o[4 * dj + 2 * r] * inv, o[4 * dj + 2 * r + 1] * inv);
    if (lse2 && t == 0) lse2[(int64_t)row * H + h] = l > 0.f ? mrow[r] + log2f(l) : -INFINITY;
  }
}

// Consumer warpgroup cw (0, 1), warp w (0..3) inside it: query rows m0 + 64·cw + 16·w + g
// and + 8 of this lane (g = lane / 4), their O in registers; writes out and lse2.
template <class OutT, bool PINGPONG, int S>
__device__ __forceinline__ void consume_tiles(OutT *__restrict__ out, int64_t out_stride,
                                              float *__restrict__ lse2, int H, int n, int h,
                                              int m0, int q_pos0, int kv_end, int ntiles,
                                              float sl2, uint32_t sb, int cw, int w, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const int wg_pmin = q_pos0 + m0 + 64 * cw;  // position of the warpgroup's first query
  const int prow0 = wg_pmin + 16 * w + g;     // positions of this lane's two rows
  const int prow1 = prow0 + 8;

  float o[64];
#pragma unroll
  for (int i = 0; i < 64; i++) o[i] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY};
  float lrow[2] = {0.f, 0.f};

  if (ntiles > 0) {
    const uint64_t dq = make_desc(sb + cw * (WG_Q_BYTES / 2), 16, 1024);
    const uint64_t dk = make_desc(sb + WgLayout<S>::off_k, 16, 1024);
    const uint64_t dv = make_desc(sb + WgLayout<S>::off_v, WG_BC * 128, 1024);
    mbar_wait(bar_full_q<S>(sb), 0);
    __syncwarp();
    // Ping-pong: consumer c issues its Q·K_jᵀ only after the other one has issued its own
    // (completion j of barrier turn[c], 4 arrivals: lane 0 of each warp of the other one), so
    // one warpgroup's softmax runs under the other's wgmmas. turn[0] completes first by
    // consumer 1's arrivals here, then after its Q·K_jᵀ for j < ntiles − 1; turn[1] after
    // consumer 0's Q·K_jᵀ for every j. Strict alternation: no phase can complete twice ahead
    // of its waiter (mbarriers rather than named barriers, so the watchdog covers a hang).
    if (PINGPONG && cw == 1 && lane == 0) mbar_arrive(bar_turn<S>(sb, 0));
    for (int j = 0; j < ntiles; j++) {
      const int st = j % S;
      const uint32_t ph = (uint32_t)(j / S) & 1;
      const int k0 = j * WG_BC;

      // S = Q·K_jᵀ
      mbar_wait(bar_full_k<S>(sb, st), ph);
      __syncwarp();
      float s[64];
      if (PINGPONG) {
        mbar_wait(bar_turn<S>(sb, cw), (uint32_t)j & 1);
        __syncwarp();
      }
      wgmma_fence();
      issue_qk<S>(s, dq, dk, st);
      wgmma_commit();
      if (PINGPONG && lane == 0 && (cw == 0 || j + 1 < ntiles))
        mbar_arrive(bar_turn<S>(sb, 1 - cw));
      wgmma_wait<0>();
      fence_regs(s);
      fence_regs(o);
      if (lane == 0) mbar_arrive(bar_empty_k<S>(sb, st));

      float alpha[2];
      softmax_tile(s, mrow, lrow, alpha, k0, wg_pmin, prow0, prow1, kv_end, t, sl2);
      rescale_o(o, alpha);

      // P (bf16, A fragments) and O += P·V_j
      uint32_t pa[WG_BC / 16][4];
      pack_p(pa, s);
      mbar_wait(bar_full_v<S>(sb, st), ph);
      __syncwarp();
      fence_regs(o);
      wgmma_fence();
      issue_pv(o, pa, dv, st);
      wgmma_commit();
      // Waiting here keeps the live registers under the 168 of a 384-thread block (O, S and
      // the in-flight P would not fit; ptxas then serializes every wgmma instead).
      wgmma_wait<0>();
      fence_regs(o);
      if (lane == 0) mbar_arrive(bar_empty_v<S>(sb, st));
    }
  }

  write_rows(out, out_stride, lse2, H, n, h, m0 + 64 * cw + 16 * w + g, t, o, mrow, lrow);
}

// The default consumer (WGMMA_DEFAULT, and WGMMA_OVERLAP_SMEM_Q with QREG = false): FA3's
// intra-warpgroup overlap. The softmax of key tile j runs while this warpgroup's own P·V_{j−1}
// is still on the tensor cores: slot j (0..ntiles) issues Q·K_jᵀ (j < ntiles), then
// P·V_{j−1} (j > 0), waits for Q·K_jᵀ only, masks and exponentiates S_j into P_j (f32, in
// place), and only then waits for P·V_{j−1}, rescales O by S_j's factor and packs P_j to bf16
// for the next slot. S (64 registers), O (64), the in-flight P (32) and, with QREG, Q's A
// fragments (32) are live together: the kernel moves registers from the producer to the
// consumers (setmaxnreg 40 / 232), and nothing touches O between its wgmmas' issue and their
// wait, so that ptxas keeps them asynchronous. The consumers are not ordered against each
// other: measured with the turns of consume_tiles too, the overlap was 5-6 % slower
// (bench/gpu/NOTES.md, round 9).
template <class OutT, int S, bool QREG>
__device__ __forceinline__ void consume_tiles_overlap(OutT *__restrict__ out,
                                                      int64_t out_stride,
                                                      float *__restrict__ lse2, int H, int n,
                                                      int h, int m0, int q_pos0, int kv_end,
                                                      int ntiles, float sl2, uint32_t sb,
                                                      int cw, int w, int lane,
                                                      float kmax = -1.f) {
  const int g = lane >> 2, t = lane & 3;
  const int wg_pmin = q_pos0 + m0 + 64 * cw;
  const int prow0 = wg_pmin + 16 * w + g;
  const int prow1 = prow0 + 8;

  float o[64];
#pragma unroll
  for (int i = 0; i < 64; i++) o[i] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY};
  float lrow[2] = {0.f, 0.f};

  if (ntiles > 0) {
    const uint64_t dq = make_desc(sb + cw * (WG_Q_BYTES / 2), 16, 1024);
    const uint64_t dk = make_desc(sb + WgLayout<S>::off_k, 16, 1024);
    const uint64_t dv = make_desc(sb + WgLayout<S>::off_v, WG_BC * 128, 1024);
    mbar_wait(bar_full_q<S>(sb), 0);
    __syncwarp();
    // QREG: Q·Kᵀ takes Q from registers, loaded once from the swizzled Q tile (rows 16·w + g
    // and + 8, columns 16·kk + 2·t, + 1 and + 8, + 9), so that the tensor cores read only K
    // from shared memory (a fifth less shared-memory traffic per tile).
    uint32_t qa[WG_D / 16][4];
    if (QREG) {
      const uint32_t qb = sb + cw * (WG_Q_BYTES / 2) + 4 * t;
      const int r0 = 16 * w + g;
#pragma unroll
      for (int kk = 0; kk < WG_D / 16; kk++) {
        qa[kk][0] = ld_shared_u32(qb + tile_off(64, r0, 2 * kk));
        qa[kk][1] = ld_shared_u32(qb + tile_off(64, r0 + 8, 2 * kk));
        qa[kk][2] = ld_shared_u32(qb + tile_off(64, r0, 2 * kk + 1));
        qa[kk][3] = ld_shared_u32(qb + tile_off(64, r0 + 8, 2 * kk + 1));
      }
    }
    auto qk = [&](float (&s)[64], int st) {
      if (QREG) {
        issue_qk_rs<S>(s, qa, dk, st);
      } else {
        issue_qk<S>(s, dq, dk, st);
      }
    };
    // Slot 0: S_0 = Q·K_0ᵀ, P_0 (O is still 0: nothing to rescale).
    uint32_t pa[WG_BC / 16][4];
    {
      mbar_wait(bar_full_k<S>(sb, 0), 0);
      __syncwarp();
      float s[64];
      wgmma_fence();
      qk(s, 0);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(s);
      if (lane == 0) mbar_arrive(bar_empty_k<S>(sb, 0));
      float alpha[2];
      softmax_tile(s, mrow, lrow, alpha, 0, wg_pmin, prow0, prow1, kv_end, t, sl2);
      pack_p(pa, s);
    }
    // Fixed maxima (QREG, and kmax >= 0: the caller's bound on the keys' norms). A row's
    // scores are at most |q|·kmax (Cauchy-Schwarz): where that bound lies within
    // FIXED_MAX_MARGIN (base 2) of the first tile's maximum for all 16 rows of this warp, the
    // later slots keep the first tile's maxima and skip the row maxima and O's rescale (a
    // quarter of their instructions; exact: P, l and O share one factor per row). The choice
    // is per warp and uniform in it (a vote, then a broadcast from lane 0, so that ptxas sees
    // a warp-uniform branch): the wgmmas stay outside the branches, with their descriptors
    // on the uniform datapath (branching around whole loops put them in vector registers, and
    // 4f05c77 ran 13% slower for it, bench/gpu/NOTES.md round 11).
    bool fixed = false;
    if (QREG && kmax >= 0.f && ntiles > 1) {
      bool ok = true;
#pragma unroll
      for (int r = 0; r < 2; r++) {
        float qn = 0.f;
#pragma unroll
        for (int kk = 0; kk < WG_D / 16; kk++)
#pragma unroll
          for (int i = r; i < 4; i += 2) {
            const float2 f =
                __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&qa[kk][i]));
            qn += f.x * f.x + f.y * f.y;
          }
        qn += __shfl_xor_sync(0xffffffffu, qn, 1);
        qn += __shfl_xor_sync(0xffffffffu, qn, 2);
        const float bound = sqrtf(qn) * kmax * sl2;  // base 2, as mrow
        ok = ok && mrow[r] > -INFINITY && bound - mrow[r] <= FIXED_MAX_MARGIN;
      }
      fixed = __shfl_sync(0xffffffffu, (int)__all_sync(0xffffffffu, ok), 0) != 0;
    }
    // Slots 1 .. ntiles − 1: S_j = Q·K_jᵀ and O += P_{j−1}·V_{j−1} in flight together.
    for (int j = 1; j < ntiles; j++) {
      const int st = j % S, pst = (j - 1) % S;
      const uint32_t ph = (uint32_t)(j / S) & 1, pph = (uint32_t)((j - 1) / S) & 1;
      mbar_wait(bar_full_k<S>(sb, st), ph);
      __syncwarp();
      mbar_wait(bar_full_v<S>(sb, pst), pph);
      __syncwarp();
      float s[64];
      wgmma_fence();
      qk(s, st);
      wgmma_commit();
      issue_pv(o, pa, dv, pst);
      wgmma_commit();
      wgmma_wait<1>();
      fence_regs(s);
      if (lane == 0) mbar_arrive(bar_empty_k<S>(sb, st));
      float alpha[2];
      if (fixed) {
        softmax_fixed(s, mrow, lrow, j * WG_BC, wg_pmin, prow0, prow1, kv_end, t, sl2);
      } else {
        softmax_tile(s, mrow, lrow, alpha, j * WG_BC, wg_pmin, prow0, prow1, kv_end, t, sl2);
      }
      wgmma_wait<0>();
      fence_regs(o);
      if (lane == 0) mbar_arrive(bar_empty_v<S>(sb, pst));
      if (!fixed) rescale_o(o, alpha);
      pack_p(pa, s);
    }
    // Slot ntiles: the last O += P·V.
    {
      const int pst = (ntiles - 1) % S;
      const uint32_t pph = (uint32_t)((ntiles - 1) / S) & 1;
      mbar_wait(bar_full_v<S>(sb, pst), pph);
      __syncwarp();
      wgmma_fence();
      issue_pv(o, pa, dv, pst);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(o);
      if (lane == 0) mbar_arrive(bar_empty_v<S>(sb, pst));
    }
  }
  write_rows(out, out_stride, lse2, H, n, h, m0 + 64 * cw + 16 * w + g, t, o, mrow, lrow);
}

}  // namespace
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <class OutT, bool PINGPONG, int S, bool OVERLAP, bool QREG>
__global__ void __launch_bounds__(WG_THREADS, 1)
    flash_wgmma_kernel(const bf16 *__restrict__ q, int64_t q_stride, const bf16 *__restrict__ k,
                       const bf16 *__restrict__ v, int64_t kv_st, int64_t kv_sh, int n, int T,
                       int G, int q_pos0, float sl2, OutT *__restrict__ out, int64_t out_stride,
                       float *__restrict__ lse2, int H) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) uint8_t wg_smem[];
  // 1024-byte aligned: the 128-byte swizzle works on address bits 4..9.
  const uint32_t sb = ((uint32_t)__cvta_generic_to_shared(wg_smem) + 1023u) & ~1023u;
  const int h = blockIdx.x;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * WG_BR;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int rows_here = min(WG_BR, n - m0);
  const int pmax = q_pos0 + m0 + rows_here - 1;  // position of the block's last query
  const int kv_end = min(T, pmax + 1);
  const int ntiles = kv_end > 0 ? (kv_end + WG_BC - 1) / WG_BC : 0;

  if (tid == 0) {
    mbar_init(bar_full_q<S>(sb), 128);
#pragma unroll
    for (int i = 0; i < S; i++) {
      mbar_init(bar_full_k<S>(sb, i), 128);
      mbar_init(bar_full_v<S>(sb, i), 128);
      mbar_init(bar_empty_k<S>(sb, i), 8);
      mbar_init(bar_empty_v<S>(sb, i), 8);
    }
    mbar_init(bar_turn<S>(sb, 0), 4);
    mbar_init(bar_turn<S>(sb, 1), 4);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  // The warpgroup index, warp-uniform for the compiler (ptxas applies setmaxnreg only in
  // branches it can tell are uniform per warp).
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  if (wg == 0) {
    // The producer needs few registers: with OVERLAP it hands 128 of its 168 to the consumers.
    if (OVERLAP) asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (ntiles > 0)
      produce_tiles<S>(q, q_stride, k, v, kv_st, kv_sh, m0, h, h / G, rows_here, kv_end,
                       ntiles, sb, tid);
  } else if (OVERLAP) {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    consume_tiles_overlap<OutT, S, QREG>(out, out_stride, lse2, H, n, h, m0, q_pos0, kv_end,
                                             ntiles, sl2, sb, (warp >> 2) - 1, warp & 3, lane);
  } else {
    consume_tiles<OutT, PINGPONG, S>(out, out_stride, lse2, H, n, h, m0, q_pos0, kv_end, ntiles,
                                     sl2, sb, (warp >> 2) - 1, warp & 3, lane);
  }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// The default kernel: the TMA producer (one thread) and consume_tiles_overlap with Q in
// registers. The other 127 producer threads give their registers away and leave.
template <class OutT, int S>
__global__ void __launch_bounds__(WG_THREADS, 1)
    flash_wgmma_tma_kernel(const __grid_constant__ CUtensorMap tq,
                           const __grid_constant__ CUtensorMap tk,
                           const __grid_constant__ CUtensorMap tv, int kv_head_inner, int n,
                           int T, int G, int q_pos0, float sl2, OutT *__restrict__ out,
                           int64_t out_stride, float *__restrict__ lse2, int H,
                           const float *__restrict__ kmax) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) uint8_t wg_smem[];
  const uint32_t sb = ((uint32_t)__cvta_generic_to_shared(wg_smem) + 1023u) & ~1023u;
  const int h = blockIdx.x;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * WG_BR;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int rows_here = min(WG_BR, n - m0);
  const int pmax = q_pos0 + m0 + rows_here - 1;
  const int kv_end = min(T, pmax + 1);
  const int ntiles = kv_end > 0 ? (kv_end + WG_BC - 1) / WG_BC : 0;

  if (tid == 0) {
    mbar_init(bar_full_q<S>(sb), 1);
#pragma unroll
    for (int i = 0; i < S; i++) {
      mbar_init(bar_full_k<S>(sb, i), 1);
      mbar_init(bar_full_v<S>(sb, i), 1);
      mbar_init(bar_empty_k<S>(sb, i), 8);
      mbar_init(bar_empty_v<S>(sb, i), 8);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (tid == 0 && ntiles > 0)
      produce_tiles_tma<S>(&tq, &tk, &tv, kv_head_inner != 0, m0, h, h / G, ntiles, sb);
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    consume_tiles_overlap<OutT, S, true>(out, out_stride, lse2, H, n, h, m0, q_pos0, kv_end,
                                         ntiles, sl2, sb, (warp >> 2) - 1, warp & 3, lane,
                                         kmax ? kmax[h / G] : -1.f);
  }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// ------------------------------------------------------------
// launcher

#if defined(MP_SM90A)
// True when the current device is an sm_90 GPU (cached per device).
static bool device_is_sm90() {
  static int cache[64];  // 0 unknown, 1 yes, 2 no; a race only repeats the query
  int dev = 0;
  MP_CUDA(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) return false;
  if (cache[dev] == 0) {
    int major = 0, minor = 0;
    MP_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    MP_CUDA(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    cache[dev] = major == 9 && minor == 0 ? 1 : 2;
  }
  return cache[dev] == 1;
}

// $MP_WGMMA_CONFIG (a WgmmaConfig number) replaces the default configuration, for A/B runs of
// the model bench.
static int default_wgmma_config() {
  static const int c = [] {
    const char *v = std::getenv("MP_WGMMA_CONFIG");
    const int x = v ? std::atoi(v) : 0;
    return x > 0 && x <= WGMMA_CP_ASYNC ? x : (int)WGMMA_DEFAULT;
  }();
  return c;
}

// cuTensorMapEncodeTiled through the runtime's driver entry point; null where the driver has
// none (the launcher then uses the cp.async producer).
static PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void *p = nullptr;
    cudaDriverEntryPointQueryResult res{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault,
                                         &res) != cudaSuccess ||
        res != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      p = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// A bf16 tensor map of dimensions (128 = d, dim1, dim2) with byte strides s1 and s2, boxes of
// 64 d × box1 × box2, 128-byte swizzle (the tiles' layout), zeros past the end. False when
// the driver refuses it.
static bool encode_map(CUtensorMap &m, const bf16 *base, uint64_t dim1, uint64_t dim2,
                       uint64_t s1, uint64_t s2, uint32_t box1, uint32_t box2) {
  const PFN_cuTensorMapEncodeTiled_v12000 enc = tensor_map_encoder();
  if (!enc) return false;
  const cuuint64_t dims[3] = {(cuuint64_t)WG_D, dim1, dim2};
  const cuuint64_t strides[2] = {s1, s2};
  const cuuint32_t box[3] = {64, box1, box2};
  const cuuint32_t unit[3] = {1, 1, 1};
  return enc(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<bf16 *>(base), dims, strides,
             box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The default kernel (TMA producer); false, launching nothing, when a tensor map cannot be
// made. The K/V maps put the smaller of the two strides (head or token) in dimension 1.
template <class OutT>
static bool launch_wgmma_tma(const bf16 *q, int64_t q_stride, KVView kv, int n, int T, int H,
                             int Hkv, int q_pos0, OutT *out, int64_t out_stride, float *lse2,
                             cudaStream_t s) {
  constexpr int S = WGMMA_DEFAULT_STAGES;
  CUtensorMap tq, tk, tv;
  const bool head_inner = kv.stride_h <= kv.stride_t;
  const uint64_t sh = (uint64_t)kv.stride_h * 2, st = (uint64_t)kv.stride_t * 2;
  // a box is one KV head × WG_BC tokens in either order
  const uint64_t d1 = head_inner ? (uint64_t)Hkv : (uint64_t)T;
  const uint64_t d2 = head_inner ? (uint64_t)T : (uint64_t)Hkv;
  const uint64_t s1 = head_inner ? sh : st, s2 = head_inner ? st : sh;
  const uint32_t b1 = head_inner ? 1 : WG_BC, b2 = head_inner ? WG_BC : 1;
  if (!encode_map(tq, q, (uint64_t)H, (uint64_t)n, WG_D * 2, (uint64_t)q_stride * 2, 1, 64) ||
      !encode_map(tk, kv.k, d1, d2, s1, s2, b1, b2) ||
      !encode_map(tv, kv.v, d1, d2, s1, s2, b1, b2))
    return false;
  constexpr size_t smem = WgLayout<S>::smem;
  static bool configured = false;  // idempotent attribute set; a race only repeats it
  if (!configured) {
    MP_CUDA(cudaFuncSetAttribute(flash_wgmma_tma_kernel<OutT, S>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    configured = true;
  }
  const int ntq = (n + WG_BR - 1) / WG_BR;
  const float sl2 = 1.4426950408889634f / sqrtf((float)WG_D);
  flash_wgmma_tma_kernel<OutT, S><<<dim3(H, ntq), WG_THREADS, smem, s>>>(
      tq, tk, tv, head_inner ? 1 : 0, n, T, H / Hkv, q_pos0, sl2, out, out_stride, lse2, H,
      kv.kmax);
  MP_CUDA_LAUNCH("flash_wgmma_tma_kernel");
  return true;
}

template <class OutT, bool PINGPONG, int S, bool OVERLAP = false, bool QREG = false>
static void launch_wgmma(const bf16 *q, int64_t q_stride, KVView kv, int n, int T, int H, int G,
                         int q_pos0, OutT *out, int64_t out_stride, float *lse2, cudaStream_t s) {
  constexpr size_t smem = WgLayout<S>::smem;
  static bool configured = false;  // idempotent attribute set; a race only repeats it
  if (!configured) {
    MP_CUDA(cudaFuncSetAttribute(flash_wgmma_kernel<OutT, PINGPONG, S, OVERLAP, QREG>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    configured = true;
  }
  const int ntq = (n + WG_BR - 1) / WG_BR;
  const float sl2 = 1.4426950408889634f / sqrtf((float)WG_D);  // log2(e)/√d
  flash_wgmma_kernel<OutT, PINGPONG, S, OVERLAP, QREG><<<dim3(H, ntq), WG_THREADS, smem, s>>>(
      q, q_stride, kv.k, kv.v, kv.stride_t, kv.stride_h, n, T, G, q_pos0, sl2, out, out_stride,
      lse2, H);
  MP_CUDA_LAUNCH("flash_wgmma_kernel");
}

#endif  // MP_SM90A

template <class OutT>
bool attention_prefill_sm90a(const bf16 *q, int64_t q_stride, KVView kv, int n, int T, int H,
                             int Hkv, int d, int q_pos0, OutT *out, int64_t out_stride,
                             float *lse2, cudaStream_t s, int config) {
#if defined(MP_SM90A)
  if (d != WG_D || n <= 0 || H <= 0 || Hkv <= 0 || H % Hkv != 0) return false;
  if (q_stride % 8 != 0 || kv.stride_t % 8 != 0 || kv.stride_h % 8 != 0 || out_stride % 2 != 0 ||
      ((uintptr_t)q & 15) != 0 || ((uintptr_t)kv.k & 15) != 0 || ((uintptr_t)kv.v & 15) != 0 ||
      ((uintptr_t)out & 7) != 0)
    return false;
  if (H > 65535 || (n + WG_BR - 1) / WG_BR > 65535) return false;
  if (!device_is_sm90()) return false;
  const int G = H / Hkv;
  if (config == WGMMA_DEFAULT) config = default_wgmma_config();
  constexpr int S2 = WGMMA_DEFAULT_STAGES;
  switch (config) {
    case WGMMA_NO_PINGPONG:
      launch_wgmma<OutT, false, S2>(q, q_stride, kv, n, T, H, G, q_pos0, out, out_stride, lse2, s);
      break;
    case WGMMA_PINGPONG:
      launch_wgmma<OutT, true, S2>(q, q_stride, kv, n, T, H, G, q_pos0, out, out_stride, lse2, s);
      break;
    case WGMMA_PINGPONG_S3:
      launch_wgmma<OutT, true, 3>(q, q_stride, kv, n, T, H, G, q_pos0, out, out_stride, lse2, s);
      break;
    case WGMMA_OVERLAP_SMEM_Q:
      launch_wgmma<OutT, false, S2, true, false>(q, q_stride, kv, n, T, H, G, q_pos0, out,
                                                 out_stride, lse2, s);
      break;
    case WGMMA_CP_ASYNC:
      launch_wgmma<OutT, false, S2, true, true>(q, q_stride, kv, n, T, H, G, q_pos0, out,
                                                out_stride, lse2, s);
      break;
    default:
      if (!launch_wgmma_tma<OutT>(q, q_stride, kv, n, T, H, Hkv, q_pos0, out, out_stride, lse2,
                                  s))
        launch_wgmma<OutT, false, S2, true, true>(q, q_stride, kv, n, T, H, G, q_pos0, out,
                                                  out_stride, lse2, s);
  }
  return true;
#else
  return false;
#endif
}

template bool attention_prefill_sm90a<float>(const bf16 *, int64_t, KVView, int, int, int, int,
                                             int, int, float *, int64_t, float *, cudaStream_t,
                                             int);
template bool attention_prefill_sm90a<bf16>(const bf16 *, int64_t, KVView, int, int, int, int,
                                            int, int, bf16 *, int64_t, float *, cudaStream_t,
                                            int);

}  // namespace mp::gpu
