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
  const uint2 *K = reinterpret_cast<const uint2 *>(jb.k);
  const uint2 *V = reinterpret_cast<const uint2 *>(jb.v);
  const int32_t *id = ids + jb.ids_off + tl.start;
  const int n = tl.n;
  float m = -INFINITY, l = 0.f, acc0 = 0.f, acc1 = 0.f, acc2 = 0.f, acc3 = 0.f;
  for (int k0 = 0; k0 < n; k0 += SA_U) {
    uint2 kr[SA_U], vr[SA_U];
#pragma unroll
    for (int u = 0; u < SA_U; u++) {
      if (k0 + u < n) {
        const size_t row = (size_t)id[k0 + u] * (SA_D / 4);
        kr[u] = K[row + lane];
        vr[u] = V[row + lane];
      } else {
        kr[u] = vr[u] = make_uint2(0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < SA_U; u++) {
      if (k0 + u >= n) break;  // warp-uniform
      const float k0f = __uint_as_float(kr[u].x << 16), k1f = __uint_as_float(kr[u].x & 0xffff0000u);
      const float k2f = __uint_as_float(kr[u].y << 16), k3f = __uint_as_float(kr[u].y & 0xffff0000u);
      float s = q4.x * k0f;
      s = fmaf(q4.y, k1f, s);
      s = fmaf(q4.z, k2f, s);
      s = fmaf(q4.w, k3f, s);
      s = warp_sum(s);
      float ell;
      if (prm.force_u1) {
        ell = s * prm.scale;
      } else {
        const float c0 = k0f - m4.x, c1 = k1f - m4.y, c2 = k2f - m4.z, c3 = k3f - m4.w;
        float n2 = c0 * c0;
        n2 = fmaf(c1, c1, n2);
        n2 = fmaf(c2, c2, n2);
        n2 = fmaf(c3, c3, n2);
        const float kn = sqrtf(warp_sum(n2));
        const float den = jb.qn * kn;
        const float cosv = den > 0.f ? fminf(fmaxf((s - jb.qmu) / den, -1.f), 1.f) : 0.f;
        ell = s * prm.scale - log_weight(prm, cosv);
      }
      const float v0 = __uint_as_float(vr[u].x << 16), v1 = __uint_as_float(vr[u].x & 0xffff0000u);
      const float v2 = __uint_as_float(vr[u].y << 16), v3 = __uint_as_float(vr[u].y & 0xffff0000u);
      if (ell > m) {
        const float sc = m == -INFINITY ? 0.f : expf(m - ell);
        l *= sc, acc0 *= sc, acc1 *= sc, acc2 *= sc, acc3 *= sc;
        m = ell;
      }
      const float w = expf(ell - m);
      l += w;
      acc0 = fmaf(w, v0, acc0);
      acc1 = fmaf(w, v1, acc1);
      acc2 = fmaf(w, v2, acc2);
      acc3 = fmaf(w, v3, acc3);
    }
  }
  // partial state [t]: m, l, 2 pad, acc[128] (16-byte aligned)
  float *o = ws + (size_t)t * (SA_D + 4);
  if (lane == 0) o[0] = m, o[1] = l;
  reinterpret_cast<float4 *>(o + 4)[lane] = make_float4(acc0, acc1, acc2, acc3);
}

// One block (SA_D threads) per job: merges its tiles into its output row.
__global__ void sampled_combine_kernel(const SampledJob *__restrict__ jobs,
                                       const float *__restrict__ ws, float *__restrict__ out,
                                       float *__restrict__ lse2) {
  const int c = threadIdx.x;
  const SampledJob jb = jobs[blockIdx.x];
  float *o = out + (size_t)jb.row * SA_D;
  float M = -INFINITY;
  for (int t = jb.tile0; t < jb.tile0 + jb.ntiles; t++) M = fmaxf(M, ws[(size_t)t * (SA_D + 4)]);
  if (M == -INFINITY) {
    o[c] = 0.f;
    if (c == 0) lse2[jb.row] = -INFINITY;
    return;
  }
  float L = 0.f, a = 0.f;
  for (int t = jb.tile0; t < jb.tile0 + jb.ntiles; t++) {
    const float *p = ws + (size_t)t * (SA_D + 4);
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

void sampled_clear(float *out, float *lse2, int nrows, int d, cudaStream_t s) {
  if (nrows <= 0) return;
  const int blocks = std::min(64, (nrows * d + 255) / 256);
  sampled_clear_kernel<<<blocks, 256, 0, s>>>(out, lse2, nrows, d);
  MP_CUDA_LAUNCH("sampled_clear_kernel");
}

}  // namespace mp::gpu
