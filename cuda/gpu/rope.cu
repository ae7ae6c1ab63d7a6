// rope.cu — rotary position embedding, both pair conventions, with Llama-3 scaling.
//
// For head vectors of head_dim values and pair index i < head_dim/2 with inverse frequency
// f_i, a token at position p rotates the pair (a, b) by θ = p·f_i:
//   a' = a·cos θ − b·sin θ,  b' = a·sin θ + b·cos θ.
// MP_ROPE_INTERLEAVED pairs (x[2i], x[2i+1]) (GGUF / llama2.c files); MP_ROPE_HALF pairs
// (x[i], x[i + head_dim/2]) (Hugging Face files).
//
// Inverse frequencies are computed once on the host in double (f_i = θ_base^(−2i/d), then
// the "llama3" rope_type: wavelengths longer than orig_ctx/low_freq_factor are divided by
// `factor`, shorter than orig_ctx/high_freq_factor kept, and the band between interpolated
// smoothly). The angle p·f_i is formed in double and cos/sin are rounded once to f32, as the
// CPU backend does, so large positions lose no precision (an f32 angle would be off by
// about p·6e-8 rad: 6e-3 at 96K).
//
// Layout: x is [n][token_stride], each token's `heads` heads contiguous from the row start
// (so a fused QKV row [q heads | k heads | v heads] rotates q and k with heads = H + Hkv).
// One block per token: its threads first fill the token's cos/sin table (head_dim/2 <= 128
// entries, double precision, in shared memory), then rotate every (head, pair).
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/reduce.cuh"

namespace mp::gpu {

// ------------------------------------------------------------
// host: inverse frequencies

std::vector<double> rope_inv_freq(const mp_rope_params &p, int head_dim) {
  const int half = head_dim / 2;
  std::vector<double> f(half);
  const double pi = 3.14159265358979323846;
  for (int i = 0; i < half; i++) {
    double inv = 1.0 / std::pow((double)p.theta, (2.0 * i) / (double)head_dim);
    if (p.scaling == MP_ROPE_SCALING_LLAMA3) {
      const double orig = (double)p.original_max_position;
      const double low_wavelen = orig / p.low_freq_factor;
      const double high_wavelen = orig / p.high_freq_factor;
      const double wavelen = 2.0 * pi / inv;
      if (wavelen > low_wavelen) {
        inv = inv / p.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth =
            (orig / wavelen - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor);
        inv = (1.0 - smooth) * inv / p.factor + smooth * inv;
      }
    }
    f[i] = inv;
  }
  return f;
}

// ------------------------------------------------------------
// kernels

// cos/sin of position p's angles into shared cs/sn [half] (double angles, f32 results).
__device__ __forceinline__ void rope_angles(double p, const double *__restrict__ inv_freq,
                                            int half, float *cs, float *sn) {
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double sd, cd;
    sincos(p * inv_freq[i], &sd, &cd);
    cs[i] = (float)cd, sn[i] = (float)sd;
  }
}

// Rotates the `heads` heads of one token's row (after rope_angles and a barrier).
template <class T>
__device__ __forceinline__ void rope_rotate(T *row, int heads, int head_dim, int style,
                                            const float *cs, const float *sn) {
  const int half = head_dim >> 1;
  for (int e = threadIdx.x; e < heads * half; e += blockDim.x) {
    const int h = e / half, i = e % half;
    T *v = row + (int64_t)h * head_dim;
    const int ia = style == MP_ROPE_INTERLEAVED ? 2 * i : i;
    const int ib = style == MP_ROPE_INTERLEAVED ? 2 * i + 1 : i + half;
    const float a = to_f32(v[ia]), b = to_f32(v[ib]);
    v[ia] = to_out<T>(a * cs[i] - b * sn[i]);
    v[ib] = to_out<T>(a * sn[i] + b * cs[i]);
  }
}

template <class T>
__global__ void rope_kernel(T *__restrict__ x, int heads, int head_dim, int64_t token_stride,
                            const int32_t *__restrict__ positions,
                            const double *__restrict__ inv_freq, int style) {
  __shared__ float cs[128], sn[128];
  const int64_t t = blockIdx.x;
  rope_angles((double)positions[t], inv_freq, head_dim >> 1, cs, sn);
  __syncthreads();
  rope_rotate(x + t * token_stride, heads, head_dim, style, cs, sn);
}

// The decode-step prologue of both rope_kv_append kernels: row i's cos/sin table (host-written
// positions: before the wait), its SeqKV, then the PDL hand-over and a barrier (the table is
// complete). Every thread of the block must call it.
__device__ __forceinline__ SeqKV rope_append_prologue(int i, const int32_t *__restrict__ positions,
                                                      const double *__restrict__ inv_freq, int half,
                                                      const SeqKV *__restrict__ seqs, float *cs,
                                                      float *sn) {
  rope_angles((double)positions[i], inv_freq, half, cs, sn);
  const SeqKV sq = seqs[i];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
  __syncthreads();
  return sq;
}

// Decode step: rope_kernel's rotation of the H + Hkv q/k heads of row blockIdx.x, then
// kv_append_kernel's copy of its K/V rows (see kernels.h, rope_kv_append). The angles come
// from host-written positions, so they are computed before the PDL wait; the rows are
// touched only after it. Every block reaches the wait (no early return).
__global__ void rope_append_kernel(bf16 *__restrict__ qkv, int H, int Hkv, int head_dim,
                                   int64_t row_stride, const int32_t *__restrict__ positions,
                                   const double *__restrict__ inv_freq, int style,
                                   const SeqKV *__restrict__ seqs, bf16 *__restrict__ stage_k,
                                   bf16 *__restrict__ stage_v) {
  __shared__ float cs[128], sn[128];
  const int i = blockIdx.x;
  const SeqKV sq = rope_append_prologue(i, positions, inv_freq, head_dim >> 1, seqs, cs, sn);
  bf16 *row = qkv + (int64_t)i * row_stride;
  rope_rotate(row, H + Hkv, head_dim, style, cs, sn);
  __syncthreads();  // the rotated k heads (global writes of this block) are visible to it
  const bool cache = sq.len > 0 && sq.k != nullptr;
  const int64_t t = sq.len - 1;
  const int d = head_dim;
  const int koff = H * d, voff = (H + Hkv) * d;
  const int per = Hkv * d / 8;
  for (int e = threadIdx.x; e < per; e += blockDim.x) {
    const int h = e / (d / 8), c = (e % (d / 8)) * 8;
    const uint4 kv = *reinterpret_cast<const uint4 *>(row + koff + h * d + c);
    const uint4 vv = *reinterpret_cast<const uint4 *>(row + voff + h * d + c);
    if (cache) {
      const int64_t dst = t * sq.stride_t + (int64_t)h * sq.stride_h + c;
      *reinterpret_cast<uint4 *>(const_cast<bf16 *>(sq.k) + dst) = kv;
      *reinterpret_cast<uint4 *>(const_cast<bf16 *>(sq.v) + dst) = vv;
    }
    if (stage_k) {
      *reinterpret_cast<uint4 *>(stage_k + (int64_t)i * Hkv * d + h * d + c) = kv;
      *reinterpret_cast<uint4 *>(stage_v + (int64_t)i * Hkv * d + h * d + c) = vv;
    }
  }
}

// rope_append_kernel's work spread over the whole GPU, for head_dim % 16 == 0 (the engine's
// decode step; GPU run of 2026-11-28: the one-block-per-row form took 8.3 µs of a 151 µs
// layer at batch 1, its 2560 scalar rotations a chain of dependent loads and stores).
// Grid (ceil(items / blockDim.x), n); an item is one head of row blockIdx.y and one group of
// 8 of its pairs: 16 values, two 16-byte loads (MP_ROPE_HALF: columns c..c+7 and
// half+c..half+c+7; MP_ROPE_INTERLEAVED: columns 2c..2c+15). Items of the H + Hkv q/k heads
// rotate (the same f32 arithmetic as rope_rotate: bit-identical results) and store back;
// items of k and v heads then also write their 16 values to the cache row len − 1 and to
// the staging rows. Each block fills the cos/sin table of its row before the PDL wait.
__global__ void rope_append16_kernel(bf16 *__restrict__ qkv, int H, int Hkv, int head_dim,
                                     int64_t row_stride, const int32_t *__restrict__ positions,
                                     const double *__restrict__ inv_freq, int style,
                                     const SeqKV *__restrict__ seqs, bf16 *__restrict__ stage_k,
                                     bf16 *__restrict__ stage_v) {
  __shared__ float cs[128], sn[128];
  const int i = blockIdx.y;
  const int half = head_dim >> 1, gph = half / 8;
  const SeqKV sq = rope_append_prologue(i, positions, inv_freq, half, seqs, cs, sn);
  const int item = blockIdx.x * blockDim.x + threadIdx.x;
  if (item >= (H + 2 * Hkv) * gph) return;  // no barrier below
  const int h = item / gph, c = (item % gph) * 8;
  const bool il = style == MP_ROPE_INTERLEAVED;
  const int oa = il ? 2 * c : c, ob = il ? 2 * c + 8 : c + half;
  bf16 *head = qkv + (int64_t)i * row_stride + (int64_t)h * head_dim;
  uint4 ua = *reinterpret_cast<const uint4 *>(head + oa);
  uint4 ub = *reinterpret_cast<const uint4 *>(head + ob);
  if (h < H + Hkv) {
    bf16 *ea = reinterpret_cast<bf16 *>(&ua), *eb = reinterpret_cast<bf16 *>(&ub);
#pragma unroll
    for (int j = 0; j < 8; j++) {
      // pair c + j: (ea[j], eb[j]) for MP_ROPE_HALF; interleaved: 4 pairs in each vector
      bf16 *pa = il ? (j < 4 ? ea + 2 * j : eb + 2 * (j - 4)) : ea + j;
      bf16 *pb = il ? pa + 1 : eb + j;
      const float a = __bfloat162float(*pa), b = __bfloat162float(*pb);
      const float cj = cs[c + j], sj = sn[c + j];
      *pa = __float2bfloat16_rn(a * cj - b * sj);
      *pb = __float2bfloat16_rn(a * sj + b * cj);
    }
    *reinterpret_cast<uint4 *>(head + oa) = ua;
    *reinterpret_cast<uint4 *>(head + ob) = ub;
  }
  if (h < H) return;
  const bool is_k = h < H + Hkv;
  const int hk = is_k ? h - H : h - H - Hkv;
  if (sq.len > 0 && sq.k != nullptr) {
    bf16 *dst = const_cast<bf16 *>(is_k ? sq.k : sq.v) + (int64_t)(sq.len - 1) * sq.stride_t +
                (int64_t)hk * sq.stride_h;
    *reinterpret_cast<uint4 *>(dst + oa) = ua;
    *reinterpret_cast<uint4 *>(dst + ob) = ub;
  }
  bf16 *st = is_k ? stage_k : stage_v;
  if (st) {
    bf16 *dst = st + ((int64_t)i * Hkv + hk) * head_dim;
    *reinterpret_cast<uint4 *>(dst + oa) = ua;
    *reinterpret_cast<uint4 *>(dst + ob) = ub;
  }
}

// ------------------------------------------------------------
// launchers

void rope_kv_append(bf16 *qkv, int n, int H, int Hkv, int head_dim, int64_t row_stride,
                    const int32_t *positions, const double *inv_freq, int style,
                    const SeqKV *seqs, bf16 *stage_k, bf16 *stage_v, bool pdl, cudaStream_t s) {
  if (n <= 0) return;
  MP_CHECK(head_dim % 8 == 0 && head_dim <= 256, MP_ERR_UNSUPPORTED,
           "rope_kv_append: head_dim %d is not a multiple of 8 up to 256", head_dim);
  static const bool v16 = [] {  // $MP_ROPE16=0: the one-block-per-row form (A/B)
    const char *v = std::getenv("MP_ROPE16");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  if (v16 && head_dim % 16 == 0 && n <= 65535) {
    const int items = (H + 2 * Hkv) * (head_dim / 16);
    launch_ex(rope_append16_kernel, dim3((unsigned)((items + 127) / 128), (unsigned)n),
              dim3(128), 0, s, pdl, qkv, H, Hkv, head_dim, row_stride, positions, inv_freq,
              style, seqs, stage_k, stage_v);
    MP_CUDA_LAUNCH("rope_append16_kernel");
    return;
  }
  launch_ex(rope_append_kernel, dim3((unsigned)n), dim3(128), 0, s, pdl, qkv, H, Hkv, head_dim,
            row_stride, positions, inv_freq, style, seqs, stage_k, stage_v);
  MP_CUDA_LAUNCH("rope_append_kernel");
}

template <class T>
void rope(T *x, int n, int heads, int head_dim, int64_t token_stride, const int32_t *positions,
          const double *inv_freq, int style, cudaStream_t s) {
  if (n <= 0 || heads <= 0 || head_dim < 2) return;
  MP_CHECK(head_dim <= 256, MP_ERR_UNSUPPORTED, "rope: head_dim %d is over 256", head_dim);
  rope_kernel<T><<<n, 128, 0, s>>>(x, heads, head_dim, token_stride, positions, inv_freq, style);
  MP_CUDA_LAUNCH("rope_kernel");
}

template void rope<float>(float *, int, int, int, int64_t, const int32_t *, const double *, int,
                          cudaStream_t);
template void rope<bf16>(bf16 *, int, int, int, int64_t, const int32_t *, const double *, int,
                         cudaStream_t);

// ------------------------------------------------------------
// host-pointer op (tests)

void op_rope(float *x, int n, int heads, int head_dim, const int32_t *positions,
             const mp_rope_params *p) {
  MP_CHECK(head_dim % 2 == 0, MP_ERR_INVALID, "rope: head_dim %d is odd", head_dim);
  MP_CHECK(p->style == MP_ROPE_INTERLEAVED || p->style == MP_ROPE_HALF, MP_ERR_INVALID,
           "rope: unknown style %d", p->style);
  require_device();
  Stream s;
  std::vector<double> f = rope_inv_freq(*p, head_dim);
  DevBuf<double> d_f = upload(f.data(), f.size(), s);
  DevBuf<float> d_x = upload(x, (size_t)n * heads * head_dim, s);
  DevBuf<int32_t> d_pos = upload(positions, (size_t)n, s);
  rope<float>(d_x.p, n, heads, head_dim, (int64_t)heads * head_dim, d_pos.p, d_f.p, p->style, s);
  to_host(x, d_x.p, d_x.n, s);
  s.sync();
}

}  // namespace mp::gpu
