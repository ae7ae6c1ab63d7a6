// sampled_attention.cu — MagicPIG sampled attention of offloaded heads, on the GPU, over
// K/V rows read straight from page-locked host memory (split decode's GPU share).
//
// The CPU retrieves every head's sample (cpu/sampled_attention.cpp, phase A) and hands the
// samples of some KV heads to the GPU (Offload), which gathers their K and V rows from the
// session's mapped host cache over PCIe (measured 51 GB/s for random 256-byte rows on the
// H200 host, beside the CPU's own ~30–40 GB/s of gathers: bench/gpu/zerocopy.cu) while the
// CPU attends the others. Same estimator as the CPU (magicpig.md §7):
//   s = q·k (fp32, bf16 keys widened exactly), kn = ‖k − μ‖,
//   cos = clamp((s − q·μ)/(‖q‖·kn), −1, 1) (0 when the denominator is 0),
//   r = 1 − acos(cos)/π (the CPU's polynomial), p = r^K, u = P[≥ 2 of L collide] with the
//   CPU's series below (L−1)·p < 0.05, ℓ = s/√d − ln(u + eps)  (ℓ = s/√d with force_u1),
//   softmax over the sample → out (f32) and lse2 = log2 Σ e^ℓ.
//
// Work: a warp owns a tile of up to TILE keys of one job (one (sequence, query head)) and
// keeps an online softmax (m, l, acc) with 4 of d = 128 dims per lane; a lane reads 8 bytes
// of each K and V row (a warp: one 256-byte row), U keys' rows in flight before use. Tiles
// write partial states; a combine kernel (one block per job) merges a job's tiles and
// writes its row of out/lse2. A layer's GPU share may come in several launches (one per
// group of KV heads whose samples are ready): sampled_clear sets every row to 0/−∞ first,
// and each launch writes only its jobs' rows.
#include <algorithm>
#include <cmath>
#include <vector>

#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/reduce.cuh"

namespace mp::gpu {

namespace {

constexpr int SA_D = 128;    // head_dim handled
constexpr int SA_TILE = 32;  // keys per warp tile
constexpr int SA_U = 4;      // keys in flight per warp
constexpr int SA_WARPS = 4;  // warps (tiles) per block

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// 1 − acos(c)/π by the CPU's polynomial (cpu/lsh_simd.h one_minus_acos_over_pi).
__device__ __forceinline__ float one_minus_acos_over_pi(float c) {
  const float a = fabsf(c);
  const bool big = a > 0.5f;
  const float z = big ? 0.5f * (1.0f - a) : a * a;
  const float s = big ? sqrtf(z) : a;
  float p = 4.2163199048e-2f;
  p = fmaf(p, z, 2.4181311049e-2f);
  p = fmaf(p, z, 4.5470025998e-2f);
  p = fmaf(p, z, 7.4953002686e-2f);
  p = fmaf(p, z, 1.6666752422e-1f);
  p = fmaf(p * z, s, s);
  const float inv_pi = 0.318309886183790672f;
  if (big) {
    const float two_p_pi = (p + p) * inv_pi;
    return c < 0.f ? two_p_pi : 1.0f - two_p_pi;
  }
  const float p_pi = p * inv_pi;
  return c < 0.f ? 0.5f - p_pi : 0.5f + p_pi;
}

// ln(u + eps) (eps = 0: ln u floored at −100) for one cosine (the CPU's u_vec).
__device__ __forceinline__ float log_weight(const SampledParams &c, float cosv) {
  const float r = one_minus_acos_over_pi(cosv);
  float p = 1.0f;
  for (int k = 0; k < c.K; k++) p *= r;
  const float x = c.Lm1 * p;
  const float a = c.Lm1 * log1pf(-p) + log1pf(x);
  const float ub = fmaxf(-expm1f(fminf(a, 0.f)), 0.f);
  const bool small = x < 0.05f;
  float u = ub, lnu_small = 0.f;
  if (small) {
    const float qq = p / fmaxf(1.0f - p, 1e-30f);
    float ser = fmaf(qq, c.c3, c.c2);
    ser = fmaf(qq, ser, c.c1);
    ser = fmaf(qq, ser, 1.0f);
    lnu_small = c.lnC2 + 2.0f * (float)c.K * logf(r);
    lnu_small = fmaf(c.Lm2, log1pf(-p), lnu_small);
    lnu_small = lnu_small + logf(ser);
    u = expf(lnu_small);
  }
  if (c.eps > 0.f) return logf(u + c.eps);
  return fmaxf(small ? lnu_small : logf(ub), -100.0f);
}

// A warp's online softmax over keys (lane: dims 4·lane .. 4·lane + 3).
struct SaState {
  float m = -INFINITY, l = 0.f, acc0 = 0.f, acc1 = 0.f, acc2 = 0.f, acc3 = 0.f;
};

// One key's K and V row parts (lane: 4 dims), widened from bf16, and ‖k − μ‖ (0 with
// force_u1, which does not use it).
struct SaKey {
  float k0, k1, k2, k3, v0, v1, v2, v3, kn;
};
__device__ __forceinline__ SaKey sa_unpack(const SampledParams &prm, const float4 &m4, uint2 kr,
                                           uint2 vr) {
  SaKey k;
  k.k0 = __uint_as_float(kr.x << 16), k.k1 = __uint_as_float(kr.x & 0xffff0000u);
  k.k2 = __uint_as_float(kr.y << 16), k.k3 = __uint_as_float(kr.y & 0xffff0000u);
  k.v0 = __uint_as_float(vr.x << 16), k.v1 = __uint_as_float(vr.x & 0xffff0000u);
  k.v2 = __uint_as_float(vr.y << 16), k.v3 = __uint_as_float(vr.y & 0xffff0000u);
  k.kn = 0.f;
  if (!prm.force_u1) {
    const float c0 = k.k0 - m4.x, c1 = k.k1 - m4.y, c2 = k.k2 - m4.z, c3 = k.k3 - m4.w;
    float n2 = c0 * c0;
    n2 = fmaf(c1, c1, n2);
    n2 = fmaf(c2, c2, n2);
    n2 = fmaf(c3, c3, n2);
    k.kn = sqrtf(warp_sum(n2));
  }
  return k;
}

// One key folded into one query head's online softmax (the head's q part, ‖q‖, q·μ).
__device__ __forceinline__ void sa_head(const SampledParams &prm, const float4 &q4, float qn,
                                        float qmu, const SaKey &k, SaState &st) {
  float s = q4.x * k.k0;
  s = fmaf(q4.y, k.k1, s);
  s = fmaf(q4.z, k.k2, s);
  s = fmaf(q4.w, k.k3, s);
  s = warp_sum(s);
  float ell;
  if (prm.force_u1) {
    ell = s * prm.scale;
  } else {
    const float den = qn * k.kn;
    const float cosv = den > 0.f ? fminf(fmaxf((s - qmu) / den, -1.f), 1.f) : 0.f;
    ell = s * prm.scale - log_weight(prm, cosv);
  }
  if (ell > st.m) {
    const float sc = st.m == -INFINITY ? 0.f : expf(st.m - ell);
    st.l *= sc, st.acc0 *= sc, st.acc1 *= sc, st.acc2 *= sc, st.acc3 *= sc;
    st.m = ell;
  }
  const float w = expf(ell - st.m);
  st.l += w;
  st.acc0 = fmaf(w, k.v0, st.acc0);
  st.acc1 = fmaf(w, k.v1, st.acc1);
  st.acc2 = fmaf(w, k.v2, st.acc2);
  st.acc3 = fmaf(w, k.v3, st.acc3);
}

// Loads SA_U keys' K and V row parts (ids[u] for u < n; indexed token ids of the job's KV
// head), all in flight at once.
__device__ __forceinline__ void sa_load(const SampledJob &jb, const int32_t (&id)[SA_U], int n,
                                        int lane, uint2 (&kr)[SA_U], uint2 (&vr)[SA_U]) {
  const uint2 *K = reinterpret_cast<const uint2 *>(jb.k);
  const uint2 *V = reinterpret_cast<const uint2 *>(jb.v);
#pragma unroll
  for (int u = 0; u < SA_U; u++) {
    if (u < n) {
      const size_t row = (size_t)id[u] * (SA_D / 4);
      kr[u] = K[row + lane];
      vr[u] = V[row + lane];
    } else {
      kr[u] = vr[u] = make_uint2(0, 0);
    }
  }
}

// Keys ids[0 .. n) of a job (indexed token ids), SA_U rows in flight.
__device__ __forceinline__ void sa_keys(const SampledParams &prm, const SampledJob &jb,
                                        const float4 &q4, const float4 &m4, float qn, float qmu,
                                        const int32_t (&id)[SA_U], int n, int lane, SaState &st) {
  uint2 kr[SA_U], vr[SA_U];
  sa_load(jb, id, n, lane, kr, vr);
#pragma unroll
  for (int u = 0; u < SA_U; u++) {
    if (u >= n) break;  // warp-uniform
    sa_head(prm, q4, qn, qmu, sa_unpack(prm, m4, kr[u], vr[u]), st);
  }
}

// A tile's partial state [t]: m, l, 2 pad, acc[128] (16-byte aligned).
__device__ __forceinline__ void sa_write(float *ws, int t, int lane, const SaState &st) {
  float *o = ws + (size_t)t * (SA_D + 4);
  if (lane == 0) o[0] = st.m, o[1] = st.l;
  reinterpret_cast<float4 *>(o + 4)[lane] = make_float4(st.acc0, st.acc1, st.acc2, st.acc3);
}

__global__ void __launch_bounds__(32 * SA_WARPS)
    sampled_tiles_kernel(const SampledJob *__restrict__ jobs, const SampledTile *__restrict__ tiles,
                         int ntiles, const int32_t *__restrict__ ids, SampledParams prm,
                         float *__restrict__ ws) {
  const int lane = threadIdx.x & 31;
  const int t = blockIdx.x * SA_WARPS + (threadIdx.x >> 5);
  if (t >= ntiles) return;  // warp-uniform
  const SampledTile tl = tiles[t];
  const SampledJob jb = jobs[tl.job];
  const float4 q4 = reinterpret_cast<const float4 *>(jb.q)[lane];
  const float4 m4 = reinterpret_cast<const float4 *>(jb.mu)[lane];
  const int32_t *id = ids + jb.ids_off + tl.start;
  SaState st;
  for (int k0 = 0; k0 < tl.n; k0 += SA_U) {
    int32_t g[SA_U];
#pragma unroll
    for (int u = 0; u < SA_U; u++) g[u] = k0 + u < tl.n ? id[k0 + u] : 0;
    sa_keys(prm, jb, q4, m4, jb.qn, jb.qmu, g, tl.n - k0, lane, st);
  }
  sa_write(ws, t, lane, st);
}

// GPU retrieval's attention, a GQA group of GS query heads at once: a warp owns up to 32
// words of the group's sample bitmaps (tile words [start, start + n); job tl.job + g's
// bitmap at bits + its ids_off; bit i = indexed token i), walks the union of the GS bitmaps
// in token order, reads each K/V row once over PCIe and folds it into the state of every
// head whose bit is set. Head g's partial state goes to ws slot t·GS + g. ‖q‖ and q·μ are
// computed here, in double as the CPU does.
template <int GS>
__global__ void __launch_bounds__(32 * SA_WARPS)
    sampled_bitmap_kernel(const SampledJob *__restrict__ jobs, const SampledTile *__restrict__ tiles,
                          int ntiles, const uint64_t *__restrict__ bits, SampledParams prm,
                          float *__restrict__ ws) {
  const int lane = threadIdx.x & 31;
  const int t = blockIdx.x * SA_WARPS + (threadIdx.x >> 5);
  if (t >= ntiles) return;  // warp-uniform
  const SampledTile tl = tiles[t];
  const SampledJob jb = jobs[tl.job];  // K, V and μ are the group's KV head's
  const float4 m4 = reinterpret_cast<const float4 *>(jb.mu)[lane];
  float4 q4[GS];
  float qn[GS], qmu[GS];
  uint64_t my[GS], any = 0ull;
#pragma unroll
  for (int g = 0; g < GS; g++) {
    const SampledJob &jg = jobs[tl.job + g];
    q4[g] = reinterpret_cast<const float4 *>(jg.q)[lane];
    double nn = (double)q4[g].x * q4[g].x, qm = (double)q4[g].x * m4.x;
    nn = fma((double)q4[g].y, (double)q4[g].y, nn), qm = fma((double)q4[g].y, (double)m4.y, qm);
    nn = fma((double)q4[g].z, (double)q4[g].z, nn), qm = fma((double)q4[g].z, (double)m4.z, qm);
    nn = fma((double)q4[g].w, (double)q4[g].w, nn), qm = fma((double)q4[g].w, (double)m4.w, qm);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      nn += __shfl_xor_sync(0xffffffffu, nn, o);
      qm += __shfl_xor_sync(0xffffffffu, qm, o);
    }
    qn[g] = (float)sqrt(nn), qmu[g] = (float)qm;
    my[g] = lane < tl.n ? bits[(size_t)jg.ids_off + tl.start + lane] : 0ull;
    any |= my[g];
  }
  unsigned nz = __ballot_sync(0xffffffffu, any != 0ull);  // words left, warp-uniform
  uint64_t cw = 0ull, cwg[GS];  // the current word's union bits left, and each head's word
  int cwi = 0;                  // its word index
#pragma unroll
  for (int g = 0; g < GS; g++) cwg[g] = 0ull;
  SaState st[GS];
  for (;;) {
    int32_t id[SA_U];
    uint32_t hm[SA_U];  // the heads sampling each key
    int n = 0;
#pragma unroll
    for (int u = 0; u < SA_U; u++) {
      while (cw == 0ull && nz) {
        const int src = __ffs(nz) - 1;
        nz &= nz - 1;
        cw = __shfl_sync(0xffffffffu, any, src);
#pragma unroll
        for (int g = 0; g < GS; g++) cwg[g] = __shfl_sync(0xffffffffu, my[g], src);
        cwi = tl.start + src;
      }
      id[u] = 0, hm[u] = 0;
      if (cw) {
        const int b = __ffsll((long long)cw) - 1;
        id[u] = cwi * 64 + b;
#pragma unroll
        for (int g = 0; g < GS; g++) hm[u] |= (uint32_t)((cwg[g] >> b) & 1ull) << g;
        cw &= cw - 1;
        n = u + 1;
      }
    }
    if (n == 0) break;
    uint2 kr[SA_U], vr[SA_U];
    sa_load(jb, id, n, lane, kr, vr);
#pragma unroll
    for (int u = 0; u < SA_U; u++) {
      if (u >= n) break;  // warp-uniform
      const SaKey k = sa_unpack(prm, m4, kr[u], vr[u]);
#pragma unroll
      for (int g = 0; g < GS; g++)
        if ((hm[u] >> g) & 1u) sa_head(prm, q4[g], qn[g], qmu[g], k, st[g]);
    }
  }
#pragma unroll
  for (int g = 0; g < GS; g++) sa_write(ws, t * GS + g, lane, st[g]);
}

// GPU retrieval (magicpig.md §6, the CPU's count_block): one block per (job, index block).
// The query's L bucket ranges come from the block's offsets, every entry of those buckets
// is counted in two shared-memory bitmaps (seen once, seen twice), and the seen-twice bits
// (the tokens colliding in >= 2 tables) go to the job's bitmap; their count is added to
// *it.nnz. Offsets and entries are read in place from page-locked host memory: one round
// trip for the L ranges, then RT_U entries per thread in flight.
constexpr int RT_THREADS = 512;
constexpr int RT_U = 8;
constexpr int RT_MAXL = 1024;
constexpr int RT_WORDS = 65536 / 64;  // an index block's tokens (lsh::BLOCK), in bitmap words

__global__ void __launch_bounds__(RT_THREADS)
    lsh_retrieve_kernel(const RetrieveItem *__restrict__ items, int L) {
  __shared__ uint64_t seen1[RT_WORDS], seen2[RT_WORDS];
  __shared__ uint32_t rs[RT_MAXL], pre[RT_MAXL + 1];
  __shared__ int red[RT_THREADS / 32];
  const RetrieveItem it = items[blockIdx.x];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int i = tid; i < RT_WORDS; i += RT_THREADS) seen1[i] = seen2[i] = 0ull;
  // bucket ranges: pre[t] holds the length of table t's bucket until the scan
  for (int t = tid; t < L; t += RT_THREADS) {
    const uint32_t *o = it.off + (size_t)t * it.stride + it.qc[t];
    const uint32_t s0 = o[0], e0 = o[1];
    rs[t] = s0;
    pre[t] = e0 - s0;
  }
  __syncthreads();
  if (warp == 0) {  // exclusive scan of the lengths: lane owns a run of tables
    const int per = (L + 31) / 32, t0 = min(L, lane * per), t1 = min(L, t0 + per);
    uint32_t sum = 0;
    for (int t = t0; t < t1; t++) sum += pre[t];
    uint32_t x = sum;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t y = __shfl_up_sync(0xffffffffu, x, o);
      if (lane >= o) x += y;
    }
    uint32_t run = x - sum;
    for (int t = t0; t < t1; t++) {
      const uint32_t len = pre[t];
      pre[t] = run;
      run += len;
    }
    if (lane == 31) pre[L] = x;
  }
  __syncthreads();
  const uint32_t total = pre[L];
  for (uint32_t base = 0; base < total; base += RT_THREADS * RT_U) {
    uint32_t id[RT_U];
#pragma unroll
    for (int u = 0; u < RT_U; u++) {
      const uint32_t f = base + (uint32_t)(u * RT_THREADS + tid);
      id[u] = 0xffffffffu;
      if (f < total) {
        int lo = 0, hi = L;  // the table t with pre[t] <= f < pre[t + 1]
        while (hi - lo > 1) {
          const int mid = (lo + hi) >> 1;
          if (pre[mid] <= f) lo = mid;
          else hi = mid;
        }
        id[u] = it.ent[(size_t)lo * it.n + rs[lo] + (f - pre[lo])];
      }
    }
#pragma unroll
    for (int u = 0; u < RT_U; u++) {
      if (id[u] == 0xffffffffu) continue;
      const unsigned long long b = 1ull << (id[u] & 63);
      const unsigned long long old = atomicOr((unsigned long long *)&seen1[id[u] >> 6], b);
      if (old & b) atomicOr((unsigned long long *)&seen2[id[u] >> 6], b);
    }
  }
  __syncthreads();
  const int nw = (it.n + 63) / 64;
  int cnt = 0;
  for (int w = tid; w < nw; w += RT_THREADS) {
    const uint64_t x = seen2[w];
    it.bits[w] = x;
    cnt += __popcll(x);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) cnt += __shfl_xor_sync(0xffffffffu, cnt, o);
  if (lane == 0) red[warp] = cnt;
  __syncthreads();
  if (tid == 0) {
    int sum = 0;
    for (int w = 0; w < RT_THREADS / 32; w++) sum += red[w];
    atomicAdd(it.nnz, sum);
  }
}

// One block (SA_D threads) per job: merges its tiles into its output row.
__global__ void sampled_combine_kernel(const SampledJob *__restrict__ jobs,
                                       const float *__restrict__ ws, float *__restrict__ out,
                                       float *__restrict__ lse2) {
  const int c = threadIdx.x;
  const SampledJob jb = jobs[blockIdx.x];
  float *o = out + (size_t)jb.row * SA_D;
  float M = -INFINITY;
  for (int i = 0; i < jb.ntiles; i++)
    M = fmaxf(M, ws[(size_t)(jb.tile0 + i * jb.tstride) * (SA_D + 4)]);
  if (M == -INFINITY) {
    o[c] = 0.f;
    if (c == 0) lse2[jb.row] = -INFINITY;
    return;
  }
  float L = 0.f, a = 0.f;
  for (int i = 0; i < jb.ntiles; i++) {
    const float *p = ws + (size_t)(jb.tile0 + i * jb.tstride) * (SA_D + 4);
    if (p[0] == -INFINITY) continue;
    const float w = expf(p[0] - M);
    L = fmaf(w, p[1], L);
    a = fmaf(w, p[4 + c], a);
  }
  o[c] = a / L;
  if (c == 0) lse2[jb.row] = (M + logf(L)) * 1.4426950408889634f;
}

__global__ void sampled_clear_kernel(float *__restrict__ out, float *__restrict__ lse2,
                                     int nrows, int d) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < nrows * d; i += gridDim.x * blockDim.x) {
    out[i] = 0.f;
    if (i % d == 0) lse2[i / d] = -INFINITY;
  }
}

}  // namespace

SampledParams sampled_params(int K, int L, float eps, float scale, bool force_u1) {
  SampledParams c{};
  const double l = L;
  c.K = K;
  c.eps = eps;
  c.scale = scale;
  c.force_u1 = force_u1 ? 1 : 0;
  c.lnC2 = (float)std::log(l * (l - 1.0) / 2.0);
  c.Lm1 = (float)(l - 1.0);
  c.Lm2 = (float)(l - 2.0);
  c.c1 = (float)((l - 2.0) / 3.0);
  c.c2 = (float)((l - 2.0) * (l - 3.0) / 12.0);
  c.c3 = (float)((l - 2.0) * (l - 3.0) * (l - 4.0) / 60.0);
  return c;
}

size_t sampled_workspace_floats(int ntiles) { return (size_t)std::max(1, ntiles) * (SA_D + 4); }

int sampled_tile_keys() { return SA_TILE; }

void sampled_attention(const SampledJob *jobs, const SampledTile *tiles, int ntiles,
                       const int32_t *ids, int njobs, int d, const SampledParams &prm, float *ws,
                       float *out, float *lse2, cudaStream_t s) {
  MP_CHECK(d == SA_D, MP_ERR_UNSUPPORTED, "GPU sampled attention supports head_dim %d, not %d",
           SA_D, d);
  if (njobs <= 0) return;
  if (ntiles > 0) {
    sampled_tiles_kernel<<<(ntiles + SA_WARPS - 1) / SA_WARPS, 32 * SA_WARPS, 0, s>>>(
        jobs, tiles, ntiles, ids, prm, ws);
    MP_CUDA_LAUNCH("sampled_tiles_kernel");
  }
  sampled_combine_kernel<<<njobs, SA_D, 0, s>>>(jobs, ws, out, lse2);
  MP_CUDA_LAUNCH("sampled_combine_kernel");
}

void lsh_retrieve(const RetrieveItem *items, int nitems, int L, cudaStream_t s) {
  MP_CHECK(L >= 1 && L <= RT_MAXL, MP_ERR_UNSUPPORTED,
           "GPU retrieval supports up to %d tables, not %d", RT_MAXL, L);
  if (nitems <= 0) return;
  lsh_retrieve_kernel<<<nitems, RT_THREADS, 0, s>>>(items, L);
  MP_CUDA_LAUNCH("lsh_retrieve_kernel");
}

int sampled_bitmap_group(int G) {
  for (int gs : {8, 4, 2})
    if (G % gs == 0) return gs;
  return 1;
}

void sampled_attention_bitmap(const SampledJob *jobs, const SampledTile *tiles, int ntiles,
                              const uint64_t *bits, int njobs, int d, int gs,
                              const SampledParams &prm, float *ws, float *out, float *lse2,
                              cudaStream_t s) {
  MP_CHECK(d == SA_D, MP_ERR_UNSUPPORTED, "GPU sampled attention supports head_dim %d, not %d",
           SA_D, d);
  MP_CHECK(gs == 1 || gs == 2 || gs == 4 || gs == 8, MP_ERR_INTERNAL,
           "GPU sampled attention: group of %d heads", gs);
  if (njobs <= 0) return;
  if (ntiles > 0) {
    const int grid = (ntiles + SA_WARPS - 1) / SA_WARPS;
    switch (gs) {
      case 1:
        sampled_bitmap_kernel<1><<<grid, 32 * SA_WARPS, 0, s>>>(jobs, tiles, ntiles, bits, prm, ws);
        break;
      case 2:
        sampled_bitmap_kernel<2><<<grid, 32 * SA_WARPS, 0, s>>>(jobs, tiles, ntiles, bits, prm, ws);
        break;
      case 4:
        sampled_bitmap_kernel<4><<<grid, 32 * SA_WARPS, 0, s>>>(jobs, tiles, ntiles, bits, prm, ws);
        break;
      default:
        sampled_bitmap_kernel<8><<<grid, 32 * SA_WARPS, 0, s>>>(jobs, tiles, ntiles, bits, prm, ws);
    }
    MP_CUDA_LAUNCH("sampled_bitmap_kernel");
  }
  sampled_combine_kernel<<<njobs, SA_D, 0, s>>>(jobs, ws, out, lse2);
  MP_CUDA_LAUNCH("sampled_combine_kernel");
}

void op_lsh_retrieve(const RetrieveItemHost *items, int nitems, const uint16_t *qcodes,
                     int njobs, int L, int64_t words, const void *const *regions,
                     const size_t *region_bytes, int nregions, uint64_t *bits, int32_t *nnz) {
  MP_CHECK(nitems >= 0 && njobs >= 0 && L >= 1 && words >= 0, MP_ERR_INVALID,
           "lsh_retrieve: bad shape");
  require_device();
  // the host arrays read in place: registered here unless they already are (an index
  // built while a CUDA backend exists is), unregistered again after
  std::vector<void *> mine;
  struct Unregister {
    std::vector<void *> &v;
    ~Unregister() {
      for (void *p : v) (void)cudaHostUnregister(p);
    }
  } unregister{mine};
  for (int r = 0; r < nregions; r++) {
    void *p = const_cast<void *>(regions[r]);
    const cudaError_t rc =
        cudaHostRegister(p, region_bytes[r], cudaHostRegisterPortable | cudaHostRegisterMapped);
    if (rc == cudaSuccess) {
      mine.push_back(p);
    } else {
      (void)cudaGetLastError();
      MP_CHECK(rc == cudaErrorHostMemoryAlreadyRegistered, MP_ERR_CUDA,
               "cannot page-lock an index array: %s", cudaGetErrorString(rc));
    }
  }
  Stream s;
  DevBuf<uint16_t> d_qc = upload(qcodes, (size_t)njobs * L, s);
  DevBuf<uint64_t> d_bits((size_t)std::max<int64_t>(1, njobs * words));
  DevBuf<int32_t> d_nnz((size_t)std::max(1, njobs));
  MP_CUDA(cudaMemsetAsync(d_nnz.p, 0, d_nnz.n * sizeof(int32_t), s));
  std::vector<RetrieveItem> dev((size_t)nitems);
  for (int i = 0; i < nitems; i++) {
    const RetrieveItemHost &h = items[i];
    MP_CHECK(h.job >= 0 && h.job < njobs && h.word0 >= 0 && h.word0 + (h.n + 63) / 64 <= words,
             MP_ERR_INVALID, "lsh_retrieve: item %d is outside its job's bitmap", i);
    dev[(size_t)i] = {d_qc.p + (size_t)h.job * L, h.off, h.ent,
                      d_bits.p + (size_t)h.job * words + h.word0, d_nnz.p + h.job, h.n, h.stride};
  }
  DevBuf<RetrieveItem> d_items = upload(dev.data(), dev.size(), s);
  lsh_retrieve(d_items.p, nitems, L, s);
  to_host(bits, d_bits.p, (size_t)njobs * words, s);
  to_host(nnz, d_nnz.p, (size_t)njobs, s);
  s.sync();
}

void sampled_clear(float *out, float *lse2, int nrows, int d, cudaStream_t s) {
  if (nrows <= 0) return;
  const int blocks = std::min(64, (nrows * d + 255) / 256);
  sampled_clear_kernel<<<blocks, 256, 0, s>>>(out, lse2, nrows, d);
  MP_CUDA_LAUNCH("sampled_clear_kernel");
}

}  // namespace mp::gpu
