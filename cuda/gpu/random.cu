// random.cu — seeded normal random numbers generated on the device (benchmark weights,
// test inputs).
//
// Element i of a fill with seed s is a pure function of (s, i): z = splitmix64(s ⊕ f(i))
// gives two 32-bit uniforms for a Box–Muller normal. No state, any grid, any order, the
// same values on every run and every GPU. Not the host's mp::Rng stream (which is
// sequential); the point is only a reproducible, well-mixed N(0, scale²) fill.
#include <cmath>

#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "gpu/reduce.cuh"

namespace mp::gpu {

namespace {
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ float normal_at(uint64_t seed, uint64_t i) {
  const uint64_t z = mix64(seed ^ mix64(i * 0xd1342543de82ef95ull + 0x632be59bd9b4e019ull));
  const float u1 = ((uint32_t)(z >> 40) + 0.5f) * (1.f / 16777216.f);  // (0, 1)
  const float u2 = (uint32_t)(z & 0xffffffu) * (1.f / 16777216.f);     // [0, 1)
  return sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
}
}  // namespace

// ------------------------------------------------------------
// kernels

template <class T>
__global__ void fill_normal_kernel(T *__restrict__ p, int64_t n, uint64_t seed, float scale,
                                   float mean) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    p[i] = to_out<T>(mean + scale * normal_at(seed, (uint64_t)i));
}

// ------------------------------------------------------------
// launchers

template <class T>
void fill_normal(T *p, int64_t n, uint64_t seed, float scale, float mean, cudaStream_t s) {
  if (n <= 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 132LL * 32);
  fill_normal_kernel<T><<<(unsigned)blocks, threads, 0, s>>>(p, n, seed, scale, mean);
  MP_CUDA_LAUNCH("fill_normal_kernel");
}

template void fill_normal<float>(float *, int64_t, uint64_t, float, float, cudaStream_t);
template void fill_normal<bf16>(bf16 *, int64_t, uint64_t, float, float, cudaStream_t);

}  // namespace mp::gpu
