// zerocopy.cu — how fast can the GPU gather random KV rows straight from page-locked host
// memory (mapped, no copy), alone and while the CPU gathers other rows at the same time?
// Decides whether the GPU should take a share of split decode's sampled attention.
//
//   nvcc -O3 -arch=sm_90 -Xcompiler -fopenmp bench/gpu/zerocopy.cu -o build/zerocopy
//   build/zerocopy [GiB=2]
// Prints GB/s of 256-byte rows gathered (rows × 256 B / time) for several in-flight depths.
#include <cuda_runtime.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#define CK(x)                                                                   \
  do {                                                                          \
    cudaError_t e_ = (x);                                                       \
    if (e_ != cudaSuccess) {                                                    \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)

// Each warp gathers rows idx[w], idx[w + nwarps], ...; U rows in flight per warp; a lane
// reads 8 bytes of each 256-byte row.
template <int U>
__global__ void gather(const uint2 *__restrict__ base, const int *__restrict__ idx, int n,
                       unsigned long long *out) {
  const int lane = threadIdx.x & 31;
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int nw = (gridDim.x * blockDim.x) >> 5;
  unsigned long long acc = 0;
  for (int i = warp; i < n; i += nw * U) {
    uint2 v[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int j = i + u * nw;
      v[u] = j < n ? base[(size_t)idx[j] * 32 + lane] : make_uint2(0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; u++) acc += v[u].x ^ v[u].y;
  }
  if (acc == 42) *out = acc;
}

static double cpu_gather(const char *p, const std::vector<int> &idx, int threads) {
  const auto t0 = std::chrono::steady_clock::now();
  unsigned long long tot = 0;
#pragma omp parallel for num_threads(threads) reduction(^ : tot) schedule(static)
  for (size_t i = 0; i < idx.size(); i++) {
    if (i + 8 < idx.size()) {
      const char *q = p + (size_t)idx[i + 8] * 256;
      for (int c = 0; c < 256; c += 64) __builtin_prefetch(q + c);
    }
    const unsigned long long *r = (const unsigned long long *)(p + (size_t)idx[i] * 256);
    for (int c = 0; c < 32; c++) tot ^= r[c];
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (tot == 42) std::printf(" ");
  return idx.size() * 256.0 / s / 1e9;
}

int main(int argc, char **argv) {
  const size_t bytes = (size_t)(argc > 1 ? std::atof(argv[1]) : 2.0) * (1ull << 30);
  const size_t rows = bytes / 256;
  char *h = (char *)std::aligned_alloc(2 << 20, bytes);
  madvise(h, bytes, MADV_HUGEPAGE);
  std::memset(h, 1, bytes);
  const auto r0 = std::chrono::steady_clock::now();
  CK(cudaHostRegister(h, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped));
  std::printf("cudaHostRegister of %.1f GiB: %.2f s\n", bytes / 1073741824.0,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count());
  uint2 *dh = nullptr;
  CK(cudaHostGetDevicePointer((void **)&dh, h, 0));
  // 2 % of the rows, random, sorted (as a chunk's union list is)
  const int n = (int)(rows * 0.02);
  std::mt19937 rng(7);
  std::vector<int> idx(n), idx2(n);
  for (auto &i : idx) i = (int)(rng() % rows);
  for (auto &i : idx2) i = (int)(rng() % rows);
  std::sort(idx.begin(), idx.end());
  std::sort(idx2.begin(), idx2.end());
  int *di = nullptr;
  unsigned long long *dout = nullptr;
  CK(cudaMalloc(&di, n * sizeof(int)));
  CK(cudaMalloc(&dout, 8));
  CK(cudaMemcpy(di, idx.data(), n * sizeof(int), cudaMemcpyHostToDevice));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int threads = omp_get_num_procs();
  std::printf("rows %d of %zu (256 B), %d SMs, %d CPU threads\n", n, rows, sms, threads);
  std::printf("cpu alone: %.1f GB/s\n", cpu_gather(h, idx2, threads));
  std::printf("cpu alone: %.1f GB/s\n", cpu_gather(h, idx2, threads));
  auto run = [&](auto kern, int blocks, const char *name) {
    float best = 1e9;
    for (int rep = 0; rep < 5; rep++) {
      CK(cudaEventRecord(a));
      kern<<<blocks, 256>>>(dh, di, n, dout);
      CK(cudaGetLastError());
      CK(cudaEventRecord(b));
      CK(cudaEventSynchronize(b));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, a, b));
      best = std::min(best, ms);
    }
    std::printf("gpu %-4s blocks %4d: %.1f GB/s (%.3f ms for %.1f MB)\n", name, blocks,
                n * 256.0 / (best * 1e-3) / 1e9, best, n * 256.0 / 1e6);
  };
  for (int mult : {1, 2, 4, 8}) {
    run(gather<1>, sms * mult, "U1");
    run(gather<4>, sms * mult, "U4");
    run(gather<8>, sms * mult, "U8");
  }
  // both at once: the GPU kernel in a loop while the CPU gathers
  {
    CK(cudaEventRecord(a));
    for (int k = 0; k < 20; k++) gather<4><<<sms * 4, 256>>>(dh, di, n, dout);
    CK(cudaEventRecord(b));
    const double cpu = cpu_gather(h, idx2, threads);
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    std::printf("together: cpu %.1f GB/s, gpu %.1f GB/s (20 kernels)\n", cpu,
                20.0 * n * 256.0 / (ms * 1e-3) / 1e9);
  }
  return 0;
}
