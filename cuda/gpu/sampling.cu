// sampling.cu — token choice on the GPU from logits [n][vocab] (f32), one block per row.
//
// Greedy: the first index of the maximum (a NaN never wins; a row of −∞ gives index 0).
//
// Sampling with temperature T, top-k and top-p (Hugging Face order: top-k first, then top-p
// on the renormalised top-k distribution): with x = logits / T and w_i = exp(x_i − max x),
//   1. the kept set is {i : x_i >= τ}. τ is found by a bitwise search over the monotone
//      uint32 image of the floats (32 passes, each a block-wide count or sum over the row):
//      the largest key t with Σ_{key_i >= t} c_i >= target. Top-k: c = 1, target = k.
//      Top-p: c = w restricted to the top-k set, target = p · Σ(top-k w). τ is the larger of
//      the two thresholds (ties at τ are all kept);
//   2. the token is the first index whose running sum of kept w (in index order) exceeds
//      u · Σ kept w, u the caller's uniform draw for the row. Each thread owns a contiguous
//      segment of the row; segment sums are scanned in shared memory, so the result is
//      deterministic for a given u.
// The row is re-read from L2 on each pass (a 128K-entry row is 512 KB); sampling one row
// costs tens of microseconds, far below a decode step.
#include <climits>

#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/reduce.cuh"

namespace mp::gpu {

namespace {
constexpr int SAMPLE_THREADS = 1024;

// Monotone map float -> uint32 (a < b  <=>  key(a) < key(b); NaN sorts above +inf or
// below −inf by sign and is treated as "not kept" by the callers).
__device__ __forceinline__ uint32_t fkey(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct ArgBest {
  float v;
  int i;
};

__device__ __forceinline__ ArgBest better(ArgBest a, ArgBest b) {
  if (b.v > a.v || (b.v == a.v && b.i < a.i)) return b;
  return a;
}

// Block-wide first-max over a row; every thread gets the result.
__device__ ArgBest block_argmax(const float *row, int vocab, float scale) {
  __shared__ float sv[32];
  __shared__ int si[32];
  ArgBest best{-INFINITY, INT_MAX};
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = row[i] * scale;
    if (v > best.v || (v == best.v && i < best.i)) best = ArgBest{v, i};
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    ArgBest other{__shfl_xor_sync(0xffffffffu, best.v, o), __shfl_xor_sync(0xffffffffu, best.i, o)};
    best = better(best, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sv[warp] = best.v, si[warp] = best.i;
  __syncthreads();
  const int nw = blockDim.x >> 5;
  best = lane < nw ? ArgBest{sv[lane], si[lane]} : ArgBest{-INFINITY, INT_MAX};
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    ArgBest other{__shfl_xor_sync(0xffffffffu, best.v, o), __shfl_xor_sync(0xffffffffu, best.i, o)};
    best = better(best, other);
  }
  if (best.i == INT_MAX) best.i = 0;
  return best;
}
}  // namespace

// ------------------------------------------------------------
// kernels

__global__ void __launch_bounds__(SAMPLE_THREADS)
    argmax_kernel(const float *__restrict__ logits, int vocab, int32_t *__restrict__ tokens) {
  const ArgBest b = block_argmax(logits + (int64_t)blockIdx.x * vocab, vocab, 1.f);
  if (threadIdx.x == 0) tokens[blockIdx.x] = b.i;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(const float *__restrict__ logits, int vocab, float temperature, int top_k,
                  float top_p, const float *__restrict__ u, int32_t *__restrict__ tokens) {
  __shared__ float scratch[32];
  __shared__ float seg[SAMPLE_THREADS];
  const float *row = logits + (int64_t)blockIdx.x * vocab;
  if (!(temperature > 0.f)) {
    const ArgBest b = block_argmax(row, vocab, 1.f);
    if (threadIdx.x == 0) tokens[blockIdx.x] = b.i;
    return;
  }
  const float inv_t = 1.f / temperature;
  const ArgBest best = block_argmax(row, vocab, inv_t);
  const float mx = best.v;
  if (!(mx > -INFINITY) || isinf(mx)) {  // degenerate row: nothing finite to sample from
    if (threadIdx.x == 0) tokens[blockIdx.x] = best.i;
    return;
  }

  // 1a. top-k threshold (key space); 0 keeps everything.
  uint32_t tk = 0;
  if (top_k > 0 && top_k < vocab) {
    uint32_t prefix = 0;
    for (int bit = 31; bit >= 0; bit--) {
      const uint32_t cand = prefix | (1u << bit);
      float cnt = 0.f;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float x = row[i] * inv_t;
        if (x == x && fkey(x) >= cand) cnt += 1.f;
      }
      cnt = block_sum(cnt, scratch);
      if (cnt >= (float)top_k) prefix = cand;
    }
    tk = prefix;
  }
  // 1b. top-p threshold within the top-k set.
  uint32_t tau = tk;
  if (top_p < 1.f) {
    float z = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float x = row[i] * inv_t;
      if (x == x && fkey(x) >= tk) z += expf(x - mx);
    }
    z = block_sum(z, scratch);
    const float target = fmaxf(top_p, 0.f) * z;
    uint32_t prefix = 0;
    for (int bit = 31; bit >= 0; bit--) {
      const uint32_t cand = prefix | (1u << bit);
      float mass = 0.f;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float x = row[i] * inv_t;
        if (x == x && fkey(x) >= cand && fkey(x) >= tk) mass += expf(x - mx);
      }
      mass = block_sum(mass, scratch);
      if (mass >= target) prefix = cand;
    }
    tau = prefix > tk ? prefix : tk;
  }
  // The maximum is always kept (guards against rounding in the mass test).
  if (fkey(mx) < tau) tau = fkey(mx);

  // 2. inverse CDF in index order over contiguous per-thread segments.
  const int per = (vocab + blockDim.x - 1) / blockDim.x;
  const int b0 = threadIdx.x * per, b1 = min(vocab, b0 + per);
  float local = 0.f;
  for (int i = b0; i < b1; i++) {
    const float x = row[i] * inv_t;
    if (x == x && fkey(x) >= tau) local += expf(x - mx);
  }
  seg[threadIdx.x] = local;
  __syncthreads();
  // Inclusive scan of the segment sums (Hillis–Steele; 1024 entries).
  for (int off = 1; off < (int)blockDim.x; off <<= 1) {
    const float add = threadIdx.x >= (unsigned)off ? seg[threadIdx.x - off] : 0.f;
    __syncthreads();
    seg[threadIdx.x] += add;
    __syncthreads();
  }
  const float total = seg[blockDim.x - 1];
  const float target = fminf(fmaxf(u[blockIdx.x], 0.f), 1.f) * total;
  __shared__ int chosen;
  if (threadIdx.x == 0) chosen = best.i;  // fallback: the maximum
  __syncthreads();
  const float before = threadIdx.x > 0 ? seg[threadIdx.x - 1] : 0.f;
  if (before <= target && target < seg[threadIdx.x] && b0 < b1) {
    float run = before;
    int pick = -1, last = -1;
    for (int i = b0; i < b1; i++) {
      const float x = row[i] * inv_t;
      if (!(x == x && fkey(x) >= tau)) continue;
      last = i;
      run += expf(x - mx);
      if (run > target) {
        pick = i;
        break;
      }
    }
    if (pick < 0) pick = last;  // rounding: the segment's last kept token
    if (pick >= 0) chosen = pick;
  }
  __syncthreads();
  if (threadIdx.x == 0) tokens[blockIdx.x] = chosen;
}

// ------------------------------------------------------------
// launchers

void argmax(const float *logits, int n, int vocab, int32_t *tokens, cudaStream_t s) {
  if (n <= 0) return;
  argmax_kernel<<<n, SAMPLE_THREADS, 0, s>>>(logits, vocab, tokens);
  MP_CUDA_LAUNCH("argmax_kernel");
}

void sample(const float *logits, int n, int vocab, float temperature, int top_k, float top_p,
            const float *u, int32_t *tokens, cudaStream_t s) {
  if (n <= 0) return;
  sample_kernel<<<n, SAMPLE_THREADS, 0, s>>>(logits, vocab, temperature, top_k, top_p, u, tokens);
  MP_CUDA_LAUNCH("sample_kernel");
}

// ------------------------------------------------------------
// host-pointer op (tests)

void op_sample(const float *logits, int n, int vocab, float temperature, int top_k, float top_p,
               const float *u, int32_t *tokens) {
  MP_CHECK(n >= 0 && vocab > 0, MP_ERR_INVALID, "sample: bad shape %d x %d", n, vocab);
  require_device();
  Stream s;
  DevBuf<float> d_l = upload(logits, (size_t)n * vocab, s);
  DevBuf<float> d_u((size_t)n);
  if (u) to_device(d_u.p, u, (size_t)n, s);
  else if (n) MP_CUDA(cudaMemsetAsync(d_u.p, 0, (size_t)n * sizeof(float), s));
  DevBuf<int32_t> d_t((size_t)n);
  sample(d_l.p, n, vocab, temperature, top_k, top_p, d_u.p, d_t.p, s);
  to_host(tokens, d_t.p, d_t.n, s);
  s.sync();
}

}  // namespace mp::gpu
