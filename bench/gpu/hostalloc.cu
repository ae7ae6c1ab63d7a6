// hostalloc.cu — how fast can a session's host KV cache (12.3 GB for 96K tokens of the 8B
// shape, 64 pieces of 192.5 MiB) be allocated, faulted in and page-locked on this machine?
// Diagnostic for the GPU server (bench/gpu/NOTES.md): each method allocates the same bytes,
// reports the time per phase and how much ended up on huge pages, and frees them.
//   nvcc -O2 -Xcompiler -fopenmp bench/gpu/hostalloc.cu -o /tmp/hostalloc && /tmp/hostalloc
#include <cuda_runtime.h>
#include <omp.h>
#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

static double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

static long anon_huge_kb() {
  std::ifstream f("/proc/meminfo");
  std::string k;
  long v;
  std::string unit;
  while (f >> k >> v >> unit)
    if (k == "AnonHugePages:") return v;
  return -1;
}

static void touch(char *p, size_t bytes, size_t step) {
  const long n = (long)((bytes + step - 1) / step);
#pragma omp parallel for schedule(static)
  for (long i = 0; i < n; i++) p[(size_t)i * step] = 0;
}

int main(int argc, char **argv) {
  const size_t piece = (size_t)(argc > 1 ? std::atof(argv[1]) : 192.5) * (1 << 20);
  const int pieces = argc > 2 ? std::atoi(argv[2]) : 64;
  const size_t H = (size_t)2 << 20;
  const size_t rounded = (piece + H - 1) / H * H;
  std::printf("threads %d, %d pieces of %.1f MiB (%.2f GB)\n", omp_get_max_threads(), pieces,
              piece / 1048576.0, pieces * (double)rounded / 1e9);
  for (const char *f : {"/sys/kernel/mm/transparent_hugepage/enabled",
                        "/sys/kernel/mm/transparent_hugepage/defrag"}) {
    std::ifstream in(f);
    std::string line;
    std::getline(in, line);
    std::printf("%s: %s\n", f, line.c_str());
  }
  cudaFree(nullptr);
  for (int method = 0; method < 5; method++) {
    const char *names[] = {"aligned_alloc+madvise, touch 4K, register",
                           "aligned_alloc+madvise, touch 2M, register",
                           "mmap+madvise+MADV_POPULATE_WRITE, register",
                           "cudaHostAlloc (driver allocates and pins)",
                           "aligned_alloc+madvise, touch 4K, no register"};
    std::vector<void *> ps((size_t)pieces);
    double t_alloc = 0, t_fault = 0, t_pin = 0;
    const long h0 = anon_huge_kb();
    for (int i = 0; i < pieces; i++) {
      double t = now_ms();
      void *p = nullptr;
      if (method == 3) {
        cudaHostAlloc(&p, rounded, cudaHostAllocPortable | cudaHostAllocMapped);
        t_pin += now_ms() - t;
        ps[(size_t)i] = p;
        continue;
      }
      if (method == 2) {
        p = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        madvise(p, rounded, MADV_HUGEPAGE);
      } else {
        p = std::aligned_alloc(H, rounded);
        madvise(p, rounded, MADV_HUGEPAGE);
      }
      t_alloc += now_ms() - t;
      t = now_ms();
      if (method == 2) {
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
        // one call per thread's share, in parallel
        const long nchunks = (long)(rounded / H);
#pragma omp parallel for schedule(static)
        for (long c = 0; c < nchunks; c++) madvise((char *)p + (size_t)c * H, H, MADV_POPULATE_WRITE);
      } else {
        touch((char *)p, rounded, method == 1 ? H : 4096);
      }
      t_fault += now_ms() - t;
      t = now_ms();
      if (method != 4) cudaHostRegister(p, rounded, cudaHostRegisterPortable | cudaHostRegisterMapped);
      t_pin += now_ms() - t;
      ps[(size_t)i] = p;
    }
    const long h1 = anon_huge_kb();
    const double t = now_ms();
    for (void *p : ps) {
      if (method == 3) {
        cudaFreeHost(p);
        continue;
      }
      if (method != 4) cudaHostUnregister(p);
      if (method == 2) munmap(p, rounded);
      else std::free(p);
    }
    std::printf("%-48s alloc %7.1f ms  fault %7.1f ms  pin %7.1f ms  free %7.1f ms  huge +%.1f GB  %s\n",
                names[method], t_alloc, t_fault, t_pin, now_ms() - t, (h1 - h0) / 1e6,
                cudaGetErrorString(cudaGetLastError()));
  }
  return 0;
}
