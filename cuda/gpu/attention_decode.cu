// attention_decode.cu — one query per sequence over GPU-resident keys/values, split-K, with
// the base-2 log-sum-exp (FlashInfer's convention) so that partial results merge.
//
// Decoding attention is bandwidth-bound: every key and value row (2·d bf16) is read once
// and serves the G = H / Hkv query heads of its KV head. So a block owns one (sequence,
// KV head, split) and computes all G heads at once from each row it reads.
//   - grid (splits, Hkv, B), 128 threads. Split s of a sequence of length len takes keys
//     [s·c, min(len, (s+1)·c)) with c = ceil(len / splits): the split count is fixed per
//     launch (so a captured graph stays valid while lengths grow) and short sequences of a
//     batch simply get short splits.
//   - A "key group" of LPK = d/8 lanes reads one key row with 16-byte loads (8 dims per
//     lane); a warp has 32/LPK groups; each group takes KPG consecutive keys per step, all
//     loads of K and V issued before the math. Scores: per-lane partial dots for G heads,
//     reduced across the group's lanes with xor-shuffles (every lane ends with the full
//     score), then a per-group online softmax in base 2 (q pre-scaled by log2(e)/√d) and
//     f32 accumulation of p·v into 8·G registers per lane.
//   - The K/V loads are double-buffered: a warp requests its next step's rows before the
//     math of the current one.
//   - The block's groups combine through shared memory; with one split the block writes the
//     final output and lse directly, otherwise f32 partials [B][H][splits][d] and
//     [B][H][splits] that a second kernel merges by their LSEs.
// Sequences of length 0 (or splits past the end) produce lse −∞ and a zero output.
//
// Decode-step form (attention_decode2, V2 = true; $MP_DECODE2=0 returns the engine to the
// form above), built to shorten the kernel's fixed costs at short contexts (GPU run 3: 21.5 µs
// at 8K for 8.4 µs of HBM traffic, 12.8 µs at 700 keys):
//   - programmatic dependent launch: each block reads its SeqKV (host-written before the
//     step), issues L2 prefetches of the first pf_keys K/V rows of its split (pf_keys sized
//     by the launcher so that the whole grid prefetches at most $MP_DECODE_PF_MB, default
//     32 MB), lets the next kernel launch, and only then waits for the previous kernel
//     (griddepcontrol.wait) before reading q and the K/V rows. The rows below len − 1 are
//     not written by the previous kernels of the step; row len − 1 is (rope_kv_append), and
//     a prefetch into L2 — the coherence point — cannot make the later loads see stale data
//     (the loads use the non-coherent path only after the wait). So the K/V stream starts
//     while the previous kernel drains, and the main loop mostly hits L2.
//   - the split merge is folded in: every block writes its partials, fences, and bumps a
//     per-(sequence, KV head) counter; the block that brings it to `splits` merges all
//     splits of its G heads in split order (the result does not depend on which block is
//     last) and resets the counter to 0 for the next launch (graph replays included).
//     The merge stages the G·splits LSEs in the block's shared accumulator (1024·G floats:
//     NGB·D = 1024 for every D), then each thread owns 4 dims of one head and sums the
//     splits with 16-byte L2 loads (__ldcg), 16 in flight. No combine kernel, no launch gap.
//
// q[b][h][:] = q + b·q_stride + h·d (bf16); K[t][hk][:] = seqs[b].k + t·stride_t + hk·stride_h;
// out[b][h][:]; lse2[b·H + h].
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/mma.cuh"
#include "gpu/reduce.cuh"

namespace mp::gpu {

namespace {
constexpr float LOG2E = 1.4426950408889634f;
constexpr int DEC_THREADS = 128;
constexpr int DEC_KPG = 4;

__device__ __forceinline__ void load8(const bf16 *p, float (&f)[8]) {
  const uint4 u = *reinterpret_cast<const uint4 *>(p);
  float2 x;
  x = unpack_bf16x2(u.x), f[0] = x.x, f[1] = x.y;
  x = unpack_bf16x2(u.y), f[2] = x.x, f[3] = x.y;
  x = unpack_bf16x2(u.z), f[4] = x.x, f[5] = x.y;
  x = unpack_bf16x2(u.w), f[6] = x.x, f[7] = x.y;
}
}  // namespace

// ------------------------------------------------------------
// kernels

template <int D, int G, class QT, class OutT, bool V2>
__global__ void __launch_bounds__(DEC_THREADS)
    decode_attn_kernel(const QT *__restrict__ q, int64_t q_stride, const SeqKV *__restrict__ seqs,
                       int H, float sl2, float *__restrict__ part_o, float *__restrict__ part_lse,
                       OutT *__restrict__ out, float *__restrict__ lse2,
                       unsigned *__restrict__ counters, int pf_keys) {
  constexpr int LPK = D / 8;                 // lanes per key row
  constexpr int NG = 32 / LPK;               // key groups per warp
  constexpr int NGB = NG * (DEC_THREADS / 32);  // key groups per block
  __shared__ float sm_m[NGB][G];
  __shared__ float sm_l[NGB][G];
  __shared__ float sm_acc[NGB][G][D];

  const int s = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int splits = gridDim.x;
  const SeqKV sq = seqs[b];
  const int len = sq.len;
  const int chunk = (len + splits - 1) / splits;
  const int kb = s * chunk;
  const int ke = min(len, kb + chunk);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int grp = lane / LPK, gl = lane % LPK;
  const int gid = warp * NG + grp;

  if (V2) {
    // L2 prefetch of the split's first pf_keys K and V rows (128-byte lines), then PDL (see
    // the file comment). Every block reaches the wait: no return before it.
    constexpr int LPR = D * 2 >= 128 ? D * 2 / 128 : 1;  // lines per row
    const int pe = min(ke, kb + pf_keys);
    const int nl = pe > kb ? (pe - kb) * LPR : 0;
    for (int i = threadIdx.x; i < nl; i += DEC_THREADS) {
      const int64_t off = (int64_t)(kb + i / LPR) * sq.stride_t + (int64_t)hk * sq.stride_h +
                          (i % LPR) * 64;
      asm volatile("prefetch.global.L2 [%0];\n" ::"l"(sq.k + off));
      asm volatile("prefetch.global.L2 [%0];\n" ::"l"(sq.v + off));
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
  }

  float qv[G][8];
#pragma unroll
  for (int gi = 0; gi < G; gi++) {
    load8(q + (int64_t)b * q_stride + (int64_t)(hk * G + gi) * D + gl * 8, qv[gi]);
#pragma unroll
    for (int e = 0; e < 8; e++) qv[gi][e] *= sl2;
  }

  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int gi = 0; gi < G; gi++) {
    m[gi] = -INFINITY, l[gi] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; e++) acc[gi][e] = 0.f;
  }

  const bf16 *kbase = sq.k + (int64_t)hk * sq.stride_h + gl * 8;
  const bf16 *vbase = sq.v + (int64_t)hk * sq.stride_h + gl * 8;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  // The loop bound is warp-uniform (w0 is the same for every lane of a warp): the
  // __shfl_xor_sync below names all 32 lanes, so the key groups of a warp must run the same
  // number of iterations. A group whose keys are all past the end scores −∞ and adds
  // nothing. (A per-group bound made the groups of a warp diverge whenever a split's length
  // was not a multiple of NG·KPG, and the full-mask shuffle then waited forever.)
  // Double-buffered: the K/V rows of the warp's next step are requested before the math of
  // this one, so a warp keeps 2 steps (up to 8 KB) in flight instead of waiting a full
  // round trip per step.
  constexpr int WSTEP = NGB * DEC_KPG;
  auto load_step = [&](int w, uint4 (&kk)[DEC_KPG], uint4 (&vv)[DEC_KPG]) {
    const int t0 = w + grp * DEC_KPG;
#pragma unroll
    for (int u = 0; u < DEC_KPG; u++) {
      const int tt = t0 + u;
      const bool ok = tt < ke;
      kk[u] = ok ? ld_stream_16(kbase + (int64_t)tt * sq.stride_t) : zero;
      vv[u] = ok ? ld_stream_16(vbase + (int64_t)tt * sq.stride_t) : zero;
    }
  };
  uint4 kr[DEC_KPG], vr[DEC_KPG];
  const int wfirst = kb + warp * NG * DEC_KPG;
  if (wfirst < ke) load_step(wfirst, kr, vr);
  for (int w0 = wfirst; w0 < ke; w0 += WSTEP) {
    const int t0 = w0 + grp * DEC_KPG;
    uint4 kn[DEC_KPG], vn[DEC_KPG];
    if (w0 + WSTEP < ke) {
      load_step(w0 + WSTEP, kn, vn);
    } else {
#pragma unroll
      for (int u = 0; u < DEC_KPG; u++) kn[u] = vn[u] = zero;
    }
    float sc[G][DEC_KPG];
#pragma unroll
    for (int u = 0; u < DEC_KPG; u++) {
      float kf[8];
      float2 x;
      x = unpack_bf16x2(kr[u].x), kf[0] = x.x, kf[1] = x.y;
      x = unpack_bf16x2(kr[u].y), kf[2] = x.x, kf[3] = x.y;
      x = unpack_bf16x2(kr[u].z), kf[4] = x.x, kf[5] = x.y;
      x = unpack_bf16x2(kr[u].w), kf[6] = x.x, kf[7] = x.y;
#pragma unroll
      for (int gi = 0; gi < G; gi++) {
        float a = 0.f;
#pragma unroll
        for (int e = 0; e < 8; e++) a = fmaf(qv[gi][e], kf[e], a);
        sc[gi][u] = a;
      }
    }
#pragma unroll
    for (int off = LPK / 2; off > 0; off >>= 1)
#pragma unroll
      for (int gi = 0; gi < G; gi++)
#pragma unroll
        for (int u = 0; u < DEC_KPG; u++) sc[gi][u] += __shfl_xor_sync(0xffffffffu, sc[gi][u], off);
#pragma unroll
    for (int u = 0; u < DEC_KPG; u++)
      if (t0 + u >= ke)
#pragma unroll
        for (int gi = 0; gi < G; gi++) sc[gi][u] = -INFINITY;

#pragma unroll
    for (int gi = 0; gi < G; gi++) {
      float mx = sc[gi][0];
#pragma unroll
      for (int u = 1; u < DEC_KPG; u++) mx = fmaxf(mx, sc[gi][u]);
      const float m_new = fmaxf(m[gi], mx);  // −∞ while this group has seen no key
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m[gi] - m_use);
      l[gi] *= alpha;
#pragma unroll
      for (int e = 0; e < 8; e++) acc[gi][e] *= alpha;
#pragma unroll
      for (int u = 0; u < DEC_KPG; u++) {
        const float p = exp2f(sc[gi][u] - m_use);
        l[gi] += p;
        float2 x;
        x = unpack_bf16x2(vr[u].x), acc[gi][0] = fmaf(p, x.x, acc[gi][0]), acc[gi][1] = fmaf(p, x.y, acc[gi][1]);
        x = unpack_bf16x2(vr[u].y), acc[gi][2] = fmaf(p, x.x, acc[gi][2]), acc[gi][3] = fmaf(p, x.y, acc[gi][3]);
        x = unpack_bf16x2(vr[u].z), acc[gi][4] = fmaf(p, x.x, acc[gi][4]), acc[gi][5] = fmaf(p, x.y, acc[gi][5]);
        x = unpack_bf16x2(vr[u].w), acc[gi][6] = fmaf(p, x.x, acc[gi][6]), acc[gi][7] = fmaf(p, x.y, acc[gi][7]);
      }
      m[gi] = m_new;
    }
#pragma unroll
    for (int u = 0; u < DEC_KPG; u++) kr[u] = kn[u], vr[u] = vn[u];
  }

  // Combine the block's key groups.
#pragma unroll
  for (int gi = 0; gi < G; gi++) {
    if (gl == 0) sm_m[gid][gi] = m[gi], sm_l[gid][gi] = l[gi];
#pragma unroll
    for (int e = 0; e < 8; e++) sm_acc[gid][gi][gl * 8 + e] = acc[gi][e];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * D; idx += DEC_THREADS) {
    const int gi = idx / D, dd = idx % D;
    float M = -INFINITY;
    for (int j = 0; j < NGB; j++) M = fmaxf(M, sm_m[j][gi]);
    float L = 0.f, O = 0.f;
    if (M != -INFINITY) {
      for (int j = 0; j < NGB; j++) {
        const float w = exp2f(sm_m[j][gi] - M);
        L += sm_l[j][gi] * w;
        O += sm_acc[j][gi][dd] * w;
      }
    }
    const float inv = L > 0.f ? 1.f / L : 0.f;
    const float lse = L > 0.f ? M + log2f(L) : -INFINITY;
    const int h = hk * G + gi;
    if (splits == 1) {
      out[((int64_t)b * H + h) * D + dd] = to_out<OutT>(O * inv);
      if (lse2 && dd == 0) lse2[(int64_t)b * H + h] = lse;
    } else {
      const int64_t row = ((int64_t)b * H + h) * splits + s;
      part_o[row * D + dd] = O * inv;
      if (dd == 0) part_lse[row] = lse;
    }
  }
  if constexpr (V2) {
  if (splits == 1 || counters == nullptr) return;
  // Folded split merge (V2): the last block of this (sequence, KV head) to finish merges.
  __shared__ unsigned s_last;
  __threadfence();  // this block's partials are visible device-wide before the count
  __syncthreads();
  unsigned *cnt = counters + (int64_t)b * gridDim.y + hk;
  if (threadIdx.x == 0) s_last = atomicAdd(cnt, 1u) == (unsigned)(splits - 1) ? 1u : 0u;
  __syncthreads();
  if (!s_last) return;  // block-uniform
  __threadfence();      // see the other blocks' partials
  // LSEs of the G heads × splits into shared memory (sm_acc: NGB·G·D = 1024·G floats >= G·splits,
  // splits <= COMB_MAX_SPLITS = 1024; its last reads were before the __syncthreads above).
  float *sl = &sm_acc[0][0][0];
  const int64_t row0 = (int64_t)b * H + hk * G;
  for (int i = threadIdx.x; i < G * splits; i += DEC_THREADS)
    sl[i] = __ldcg(part_lse + row0 * splits + i);  // rows row0.. are consecutive: [G][splits]
  __syncthreads();
  constexpr int D4 = D / 4;
  for (int it = threadIdx.x; it < G * D4; it += DEC_THREADS) {
    const int gi = it / D4, c4 = it % D4;
    const float *lg = sl + gi * splits;
    float M = -INFINITY;
    for (int j = 0; j < splits; j++) M = fmaxf(M, lg[j]);
    float L = 0.f;
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
    const int64_t row = row0 + gi;
    if (M != -INFINITY) {
      const float4 *po = reinterpret_cast<const float4 *>(part_o + row * splits * D) + c4;
#pragma unroll 16
      for (int j = 0; j < splits; j++) {
        const float4 v = __ldcg(po + (int64_t)j * D4);
        const float w = exp2f(lg[j] - M);
        L += w;
        o.x = fmaf(w, v.x, o.x), o.y = fmaf(w, v.y, o.y);
        o.z = fmaf(w, v.z, o.z), o.w = fmaf(w, v.w, o.w);
      }
    }
    const float inv = L > 0.f ? 1.f / L : 0.f;
    OutT *dst = out + row * D + 4 * c4;
    dst[0] = to_out<OutT>(o.x * inv), dst[1] = to_out<OutT>(o.y * inv);
    dst[2] = to_out<OutT>(o.z * inv), dst[3] = to_out<OutT>(o.w * inv);
    if (lse2 && c4 == 0) lse2[row] = L > 0.f ? M + log2f(L) : -INFINITY;
  }
  if (threadIdx.x == 0) *cnt = 0u;  // for the next launch (kernel boundary orders it)
  }
}

// Merges the splits of each (sequence, head) row by their LSEs: one block of 128 threads
// per row. The split weights 2^(lse_s − M) go to shared memory once; then warp w sums splits
// w, w+4, ... with 16-byte loads (lane l holds dims 4l..4l+3 and 128+4l..), four splits in
// flight per warp, and the 4 warps add up through shared memory. (The first version looped
// over the splits per output value with a dependent exp2f per step: ~splits round trips.)
constexpr int COMB_THREADS = 128;
constexpr int COMB_MAX_SPLITS = 1024;

template <class OutT>
__global__ void __launch_bounds__(COMB_THREADS)
    decode_combine_kernel(const float *__restrict__ part_o, const float *__restrict__ part_lse,
                          int splits, int d, OutT *__restrict__ out, float *__restrict__ lse2) {
  __shared__ float sw[COMB_MAX_SPLITS];
  __shared__ float scratch[32];
  __shared__ __align__(16) float sacc[COMB_THREADS / 32][256];
  const int64_t row = blockIdx.x;  // b·H + h
  const float *pl = part_lse + row * splits;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float mx = -INFINITY;
  for (int s = threadIdx.x; s < splits; s += COMB_THREADS) mx = fmaxf(mx, pl[s]);
  const float M = block_max(mx, scratch);
  float l = 0.f;
  for (int s = threadIdx.x; s < splits; s += COMB_THREADS) {
    const float w = M == -INFINITY ? 0.f : exp2f(pl[s] - M);
    sw[s] = w;
    l += w;
  }
  const float L = block_sum(l, scratch);  // its __syncthreads also publishes sw
  const float inv = L > 0.f ? 1.f / L : 0.f;

  const int d4 = d >> 2;  // d % 4 == 0 (head_dim 8..256)
  float4 a0 = make_float4(0.f, 0.f, 0.f, 0.f), a1 = a0;
#pragma unroll 4
  for (int s = warp; s < splits; s += COMB_THREADS / 32) {
    const float w = sw[s];
    const float4 *po = reinterpret_cast<const float4 *>(part_o + (row * splits + s) * d);
    if (lane < d4) {
      const float4 v = po[lane];
      a0.x = fmaf(w, v.x, a0.x), a0.y = fmaf(w, v.y, a0.y);
      a0.z = fmaf(w, v.z, a0.z), a0.w = fmaf(w, v.w, a0.w);
    }
    if (lane + 32 < d4) {
      const float4 v = po[lane + 32];
      a1.x = fmaf(w, v.x, a1.x), a1.y = fmaf(w, v.y, a1.y);
      a1.z = fmaf(w, v.z, a1.z), a1.w = fmaf(w, v.w, a1.w);
    }
  }
  if (lane < d4) *reinterpret_cast<float4 *>(&sacc[warp][4 * lane]) = a0;
  if (lane + 32 < d4) *reinterpret_cast<float4 *>(&sacc[warp][4 * lane + 128]) = a1;
  __syncthreads();
  for (int dd = threadIdx.x; dd < d; dd += COMB_THREADS) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < COMB_THREADS / 32; w++) o += sacc[w][dd];
    out[row * d + dd] = to_out<OutT>(o * inv);
  }
  if (lse2 && threadIdx.x == 0) lse2[row] = L > 0.f ? M + log2f(L) : -INFINITY;
}

// ------------------------------------------------------------
// launchers

// One wave of blocks: the split count is the largest that keeps B·Hkv·splits within the
// blocks per SM of decode_attn_kernel<128, 4> (Llama-3's d and GQA group; 168 registers with
// nvcc 13: 3 blocks of 128 threads per SM, so 49 splits for B = 1, Hkv = 8 on 132 SMs; run 2
// used 32 at 8K, 256-key splits, 8 warps per SM, and measured 29 % of HBM). Short
// sequences: a power of two <= len / 64 (>= 64 keys per split), so the count — part of a
// captured decode graph's key — changes only when the length doubles, until it reaches the
// cap.
static int decode_blocks_per_sm() {
  static const int nb = [] {
    int v = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &v, decode_attn_kernel<128, 4, bf16, bf16, false>, DEC_THREADS, 0) != cudaSuccess) {
      (void)cudaGetLastError();
      v = 3;
    }
    return std::max(1, v);
  }();
  return nb;
}

int decode_splits(int B, int Hkv, int max_len) {
  // MP_DECODE_SPLITS=N: at most N splits (tuning runs); unset: one resident wave.
  static const int forced = [] {
    const char *v = std::getenv("MP_DECODE_SPLITS");
    return v ? std::max(0, std::atoi(v)) : 0;
  }();
  if (forced > 0) return std::max(1, std::min({forced, std::max(1, max_len / 64), COMB_MAX_SPLITS}));
  const int pairs = std::max(1, B * Hkv);
  const int by_gpu = std::max(1, decode_blocks_per_sm() * sm_count() / pairs);
  const int by_len = std::max(1, max_len / 64);
  int p2 = 1;
  while (p2 * 2 <= by_len) p2 *= 2;
  return std::max(1, std::min({by_gpu, p2, COMB_MAX_SPLITS}));
}

size_t decode_workspace_floats(int B, int H, int d, int splits) {
  return splits > 1 ? (size_t)B * H * splits * (d + 1) : 0;
}

// Options of the decode-step form (attention_decode2); v2 = false is the original form.
struct DecOpts {
  bool v2 = false;
  bool pdl = false;
  unsigned *counters = nullptr;
  int pf_keys = 0;
};

template <int D, int G, class QT, class OutT>
static void launch_decode(const QT *q, int64_t q_stride, const SeqKV *seqs, int B, int H, int Hkv, int splits,
                          OutT *out, float *lse2, float *ws, const DecOpts &o, cudaStream_t s) {
  const float sl2 = LOG2E / sqrtf((float)D);
  float *part_o = ws;
  float *part_lse = ws ? ws + (size_t)B * H * splits * D : nullptr;
  if (!o.v2) {
    decode_attn_kernel<D, G, QT, OutT, false><<<dim3(splits, Hkv, B), DEC_THREADS, 0, s>>>(
        q, q_stride, seqs, H, sl2, part_o, part_lse, out, lse2, nullptr, 0);
    MP_CUDA_LAUNCH("decode_attn_kernel");
  } else {
    launch_ex(decode_attn_kernel<D, G, QT, OutT, true>, dim3(splits, Hkv, B), dim3(DEC_THREADS), 0,
              s, o.pdl, q, q_stride, seqs, H, sl2, part_o, part_lse, out, lse2, o.counters,
              o.pf_keys);
    MP_CUDA_LAUNCH("decode_attn_kernel (v2)");
  }
  if (splits > 1 && !(o.v2 && o.counters)) {
    decode_combine_kernel<OutT><<<B * H, COMB_THREADS, 0, s>>>(part_o, part_lse, splits, D, out,
                                                              lse2);
    MP_CUDA_LAUNCH("decode_combine_kernel");
  }
}

template <int D, class QT, class OutT>
static void dispatch_g(const QT *q, int64_t q_stride, const SeqKV *seqs, int B, int H, int Hkv, int splits,
                       OutT *out, float *lse2, float *ws, const DecOpts &o, cudaStream_t s) {
  switch (H / Hkv) {
    case 1: return launch_decode<D, 1, QT, OutT>(q, q_stride, seqs, B, H, Hkv, splits, out, lse2, ws, o, s);
    case 2: return launch_decode<D, 2, QT, OutT>(q, q_stride, seqs, B, H, Hkv, splits, out, lse2, ws, o, s);
    case 4: return launch_decode<D, 4, QT, OutT>(q, q_stride, seqs, B, H, Hkv, splits, out, lse2, ws, o, s);
    case 8: return launch_decode<D, 8, QT, OutT>(q, q_stride, seqs, B, H, Hkv, splits, out, lse2, ws, o, s);
  }
  MP_FAIL(MP_ERR_UNSUPPORTED, "decode attention: GQA group of %d heads is not supported",
          H / Hkv);
}

template <class QT, class OutT>
static void attention_decode_impl(const QT *q, int64_t q_stride, const SeqKV *seqs, int B, int H, int Hkv, int d,
                                  int splits, OutT *out, float *lse2, float *workspace, const DecOpts &o,
                                  cudaStream_t s) {
  if (B <= 0) return;
  MP_CHECK(H > 0 && Hkv > 0 && H % Hkv == 0, MP_ERR_INVALID,
           "decode attention: %d query heads are not a multiple of %d KV heads", H, Hkv);
  MP_CHECK(B <= 65535 && Hkv <= 65535 && splits >= 1 && splits <= COMB_MAX_SPLITS,
           MP_ERR_INVALID, "decode attention: grid too large");
  MP_CHECK(splits == 1 || workspace, MP_ERR_INTERNAL, "decode attention: no workspace");
  switch (d) {
    case 8: return dispatch_g<8>(q, q_stride, seqs, B, H, Hkv, splits, out, lse2, workspace, o, s);
    case 16: return dispatch_g<16>(q, q_stride, seqs, B, H, Hkv, splits, out, lse2, workspace, o, s);
    case 32: return dispatch_g<32>(q, q_stride, seqs, B, H, Hkv, splits, out, lse2, workspace, o, s);
    case 64: return dispatch_g<64>(q, q_stride, seqs, B, H, Hkv, splits, out, lse2, workspace, o, s);
    case 128: return dispatch_g<128>(q, q_stride, seqs, B, H, Hkv, splits, out, lse2, workspace, o, s);
    case 256: return dispatch_g<256>(q, q_stride, seqs, B, H, Hkv, splits, out, lse2, workspace, o, s);
  }
  MP_FAIL(MP_ERR_UNSUPPORTED, "decode attention: head_dim %d is not supported", d);
}

template <class QT, class OutT>
void attention_decode(const QT *q, int64_t q_stride, const SeqKV *seqs, int B, int H, int Hkv, int d, int splits,
                      OutT *out, float *lse2, float *workspace, cudaStream_t s) {
  attention_decode_impl<QT, OutT>(q, q_stride, seqs, B, H, Hkv, d, splits, out, lse2, workspace,
                                  DecOpts{}, s);
}

// $MP_DECODE2 = 0: the engine's decode step uses the original kernels (rope + kv_append,
// attention_decode with the combine kernel, no PDL outside the GEMVs).
bool decode2_enabled() {
  static const bool on = [] {
    const char *v = std::getenv("MP_DECODE2");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
}

// PDL for the decode-step kernels of this branch: sm_90, CUDA 12.3+ runtime and driver (as
// the GEMVs' gemv_pdl), unless $MP_DECODE2_PDL=0.
bool decode2_pdl() {
  static const bool on = pdl_supported("MP_DECODE2_PDL");
  return on;
}

// Bytes the whole grid may prefetch into L2: $MP_DECODE_PF_MB (MiB, default 32; 0 = off).
static int64_t decode2_pf_bytes() {
  static const int64_t b = [] {
    const char *v = std::getenv("MP_DECODE_PF_MB");
    const int64_t mb = v ? std::max(0, std::atoi(v)) : 32;
    return mb << 20;
  }();
  return b;
}

template <class QT, class OutT>
void attention_decode2(const QT *q, int64_t q_stride, const SeqKV *seqs, int B, int H, int Hkv, int d, int splits,
                       OutT *out, float *lse2, float *workspace, unsigned *counters, bool pdl,
                       cudaStream_t s) {
  DecOpts o;
  o.v2 = true;
  o.pdl = pdl;
  o.counters = counters;
  const int64_t per_key = (int64_t)std::max(1, B) * Hkv * splits * 4 * d;  // K + V bf16, all blocks
  o.pf_keys = (int)std::min<int64_t>(1 << 30, decode2_pf_bytes() / std::max<int64_t>(1, per_key));
  attention_decode_impl<QT, OutT>(q, q_stride, seqs, B, H, Hkv, d, splits, out, lse2, workspace, o,
                                  s);
}

template void attention_decode2<bf16, float>(const bf16 *, int64_t, const SeqKV *, int, int, int,
                                             int, int, float *, float *, float *, unsigned *, bool,
                                             cudaStream_t);
template void attention_decode2<bf16, bf16>(const bf16 *, int64_t, const SeqKV *, int, int, int,
                                            int, int, bf16 *, float *, float *, unsigned *, bool,
                                            cudaStream_t);

template void attention_decode<bf16, float>(const bf16 *, int64_t, const SeqKV *, int, int, int,
                                            int, int, float *, float *, float *, cudaStream_t);
template void attention_decode<bf16, bf16>(const bf16 *, int64_t, const SeqKV *, int, int, int,
                                           int, int, bf16 *, float *, float *, cudaStream_t);

}  // namespace mp::gpu
