// cuda_util.h — helpers shared by the CUDA translation units (included from .cu files only).
//
// Errors: every CUDA runtime call goes through MP_CUDA(call), which throws mp::Error with
// "file:line: <call>: <cudaGetErrorString>" and a status chosen by the error kind:
//   - sticky errors (illegal address, launch failure, ...): MP_ERR_CUDA_FATAL — the context
//     is lost and the engine must be freed;
//   - allocation failures: MP_ERR_OOM;
//   - no device / no driver: MP_ERR_NO_DEVICE;
//   - anything else: MP_ERR_CUDA.
// After a kernel launch, MP_CUDA_LAUNCH() checks cudaGetLastError (launch configuration
// errors); asynchronous faults surface at the next synchronising call, which is checked too.
//
// DevBuf<T> owns a cudaMalloc'd array (plain device memory, never managed memory);
// HostPinned<T> a cudaHostAlloc'd one. Both free in their destructors without throwing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "common/common.h"

namespace mp::gpu {

using bf16 = __nv_bfloat16;

// ------------------------------------------------------------
// errors

// Status for a CUDA error code (see the file comment).
int32_t cuda_status(cudaError_t rc);

// Throws mp::Error for rc != cudaSuccess. `what` is the failing expression.
void cuda_throw(cudaError_t rc, const char *what, const char *file, int line);

#define MP_CUDA(call)                                                       \
  do {                                                                      \
    cudaError_t mp_cuda_rc_ = (call);                                       \
    if (mp_cuda_rc_ != cudaSuccess)                                         \
      ::mp::gpu::cuda_throw(mp_cuda_rc_, #call, __FILE__, __LINE__);        \
  } while (0)

#define MP_CUDA_LAUNCH(name)                                                \
  do {                                                                      \
    cudaError_t mp_cuda_rc_ = cudaGetLastError();                           \
    if (mp_cuda_rc_ != cudaSuccess)                                         \
      ::mp::gpu::cuda_throw(mp_cuda_rc_, "launch of " name, __FILE__, __LINE__); \
  } while (0)

// ------------------------------------------------------------
// memory

template <class T>
struct DevBuf {
  T *p = nullptr;
  size_t n = 0;
  DevBuf() = default;
  explicit DevBuf(size_t count) { alloc(count); }
  DevBuf(const DevBuf &) = delete;
  DevBuf &operator=(const DevBuf &) = delete;
  DevBuf(DevBuf &&o) noexcept : p(o.p), n(o.n) { o.p = nullptr, o.n = 0; }
  DevBuf &operator=(DevBuf &&o) noexcept {
    if (this != &o) {
      release();
      p = o.p, n = o.n;
      o.p = nullptr, o.n = 0;
    }
    return *this;
  }
  ~DevBuf() { release(); }
  void alloc(size_t count) {
    release();
    if (count == 0) return;
    MP_CUDA(cudaMalloc((void **)&p, count * sizeof(T)));
    n = count;
  }
  void release() noexcept {
    if (p) (void)cudaFree(p);
    p = nullptr, n = 0;
  }
  size_t bytes() const { return n * sizeof(T); }
  T *get() const { return p; }
};

template <class T>
struct HostPinned {
  T *p = nullptr;
  size_t n = 0;
  HostPinned() = default;
  explicit HostPinned(size_t count) { alloc(count); }
  HostPinned(const HostPinned &) = delete;
  HostPinned &operator=(const HostPinned &) = delete;
  HostPinned(HostPinned &&o) noexcept : p(o.p), n(o.n) { o.p = nullptr, o.n = 0; }
  HostPinned &operator=(HostPinned &&o) noexcept {
    if (this != &o) {
      release();
      p = o.p, n = o.n;
      o.p = nullptr, o.n = 0;
    }
    return *this;
  }
  ~HostPinned() { release(); }
  void alloc(size_t count) {
    release();
    if (count == 0) return;
    MP_CUDA(cudaHostAlloc((void **)&p, count * sizeof(T), cudaHostAllocDefault));
    n = count;
  }
  void release() noexcept {
    if (p) (void)cudaFreeHost(p);
    p = nullptr, n = 0;
  }
  T *get() const { return p; }
};

// A stream that is destroyed with its owner (used by the host-pointer ops).
struct Stream {
  cudaStream_t s = nullptr;
  Stream() { MP_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  Stream(const Stream &) = delete;
  Stream &operator=(const Stream &) = delete;
  ~Stream() {
    if (s) (void)cudaStreamDestroy(s);
  }
  operator cudaStream_t() const { return s; }
  void sync() const { MP_CUDA(cudaStreamSynchronize(s)); }
};

// Copies n elements host -> device / device -> host on a stream (pageable memory is fine
// for the test ops: the copy is synchronous with respect to the host buffer).
template <class T>
void to_device(T *dst, const T *src, size_t n, cudaStream_t s) {
  if (n) MP_CUDA(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyHostToDevice, s));
}
template <class T>
void to_host(T *dst, const T *src, size_t n, cudaStream_t s) {
  if (n) MP_CUDA(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDeviceToHost, s));
}

// Uploads n floats as bf16 (round to nearest even, as mp::f32_to_bf16).
DevBuf<bf16> upload_bf16(const float *src, size_t n, cudaStream_t s);
// Uploads n elements given in `dtype` (F32/F16/BF16) as bf16.
DevBuf<bf16> upload_as_bf16(int32_t dtype, const void *src, size_t n, cudaStream_t s);
template <class T>
DevBuf<T> upload(const T *src, size_t n, cudaStream_t s) {
  DevBuf<T> d(n);
  to_device(d.p, src, n, s);
  return d;
}

// Selects device 0 for the host-pointer ops; throws MP_ERR_NO_DEVICE when none exists.
void require_device();

// Multiprocessor count of the current device (cached per device).
int sm_count();

// Waits until the work queued on `s` has finished, like cudaStreamSynchronize, but never
// forever: after $MP_GPU_TIMEOUT seconds (default 120) it throws MP_ERR_CUDA_FATAL naming
// `what` ("the GPU did not finish <what> within 120 s"), so a hung kernel fails a call
// instead of hanging the process. Spins (yielding) for the first 20 ms, then polls every
// 0.5 ms.
void stream_wait(cudaStream_t s, const char *what);
void event_wait(cudaEvent_t e, const char *what);

// True when $MP_TRACE is set to a non-empty value other than "0": the engine then writes a
// line per stage of its GPU work to stderr (diagnostics on the GPU server only).
bool trace_enabled();
// printf-style line to stderr with a timestamp, when trace_enabled().
void trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// ------------------------------------------------------------
// kernel variants (tests and benchmarks force one; 0 = automatic choice)

enum Op : int {
  OP_MATMUL = 0,     // 1 = cuBLAS, 2 = skinny tensor-core kernel, 3 = simple, 4 = GEMV
  OP_ATTENTION = 1,  // 1 = flash (mma.sync), 2 = split-K decode, 3 = generic, 4 = wgmma (sm_90a),
                     // 5-7 = tuned flash
  OP_LSH = 2,        // index-build key hashing: 1 = GPU always, 2 = CPU, 3 = CPU via codes,
                     // 4 = automatic without build_first (GPU codes, CPU sort)
  OP_KV = 3,         // decode KV placement: 1 = resident on the GPU, 2 = streamed from host
  OP_GRAPHS = 4,     // decode CUDA graphs: 1 = on, 2 = off
  OP_PIN = 5,        // sessions' host KV in page-locked memory: 1 = on, 2 = off
  OP_OFFLOAD = 6,    // split decode's GPU share of sampled attention (KV heads): 1 = none,
                     // 2 = all, 3 = a quarter, 4 = three quarters, 5 = half; automatic =
                     // tuned per batch size from the measured lag (half at first)
  OP_QCODES = 7,     // split decode's MAGICPIG query codes: 1 = GPU, 2 = CPU; automatic = GPU
  OP_RETRIEVAL = 8,  // where the GPU share's samples are retrieved: 1 = GPU, 2 = CPU (hand-offs);
                     // automatic = GPU where the index's blocks are page-locked
  OP_COUNT = 9,
};
int forced_variant(Op op);

using mp::env_equals;  // common.h

// Programmatic dependent launch (a kernel's blocks start while the previous kernel in the
// stream drains; the kernel orders itself with griddepcontrol.wait): an sm_90 device with a
// CUDA 12.3+ runtime and driver (graph capture of such launches), unless the environment
// variable `env` is "0". Not cached: call sites keep the answer in a static.
bool pdl_supported(const char *env);

// kernel<<<grid, block, smem, s>>>(args...) through cudaLaunchKernelEx, with programmatic
// stream serialization when `pdl`; the launch is checked.
template <class... KArgs, class... Args>
void launch_ex(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
               bool pdl, Args &&...args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  MP_CUDA(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}
void force_variant(Op op, int variant);

}  // namespace mp::gpu
