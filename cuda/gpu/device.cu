// device.cu — device discovery, CUDA error mapping, small upload helpers and the kernel
// variant switches (see cuda_util.h). cudart is linked statically; on a machine without a
// driver or GPU every runtime call fails cleanly, which counts as zero devices.
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "gpu/cuda_util.h"
#include "gpu/gpu.h"

namespace mp::gpu {

// ------------------------------------------------------------
// devices

int device_count() {
  int n = 0;
  cudaError_t rc = cudaGetDeviceCount(&n);
  if (rc != cudaSuccess) {
    (void)cudaGetLastError();  // clear, so later calls do not see it
    return 0;
  }
  return n;
}

void require_device() {
  if (device_count() <= 0) MP_FAIL(MP_ERR_NO_DEVICE, "no usable CUDA device");
  MP_CUDA(cudaSetDevice(0));
}

int sm_count() {
  static std::mutex mu;
  static std::vector<int> cache;
  int dev = 0;
  MP_CUDA(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if ((int)cache.size() <= dev) cache.resize(dev + 1, 0);
  if (cache[dev] == 0) {
    int n = 0;
    MP_CUDA(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    cache[dev] = n > 0 ? n : 1;
  }
  return cache[dev];
}

// ------------------------------------------------------------
// bounded waits and tracing

static double gpu_timeout_s() {
  static const double t = [] {
    const char *v = std::getenv("MP_GPU_TIMEOUT");
    const double x = v ? std::atof(v) : 0.0;
    return x > 0 ? x : 120.0;
  }();
  return t;
}

template <class Query>
static void bounded_wait(Query &&query, const char *what) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  for (long polls = 0;; polls++) {
    const cudaError_t rc = query();
    if (rc == cudaSuccess) return;
    if (rc != cudaErrorNotReady) cuda_throw(rc, what, __FILE__, __LINE__);
    if ((polls & 63) == 0) {
      const double el = std::chrono::duration<double>(clock::now() - t0).count();
      if (el > gpu_timeout_s())
        MP_FAIL(MP_ERR_CUDA_FATAL,
                "the GPU did not finish %s within %.0f s (a hung kernel?); set MP_GPU_TIMEOUT "
                "to wait longer",
                what, gpu_timeout_s());
      if (el > 0.02) {
        std::this_thread::sleep_for(std::chrono::microseconds(500));
        continue;
      }
    }
    std::this_thread::yield();
  }
}

void stream_wait(cudaStream_t s, const char *what) {
  bounded_wait([&] { return cudaStreamQuery(s); }, what);
}

void event_wait(cudaEvent_t e, const char *what) {
  bounded_wait([&] { return cudaEventQuery(e); }, what);
}

bool trace_enabled() {
  static const bool on = [] {
    const char *v = std::getenv("MP_TRACE");
    return v && *v && std::strcmp(v, "0") != 0;
  }();
  return on;
}

void trace(const char *fmt, ...) {
  if (!trace_enabled()) return;
  static const auto t0 = std::chrono::steady_clock::now();
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "[mp %10.3f ms] %s\n", ms, buf);
  std::fflush(stderr);
}

std::string describe() {
  require_device();
  cudaDeviceProp p;
  MP_CUDA(cudaGetDeviceProperties(&p, 0));
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s, cc %d.%d, %d SMs, %.1f GiB, L2 %.0f MB", p.name, p.major,
                p.minor, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0,
                p.l2CacheSize / 1e6);
  return buf;
}

// ------------------------------------------------------------
// errors

int32_t cuda_status(cudaError_t rc) {
  switch (rc) {
    case cudaSuccess:
      return MP_OK;
    case cudaErrorMemoryAllocation:
      return MP_ERR_OOM;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return MP_ERR_NO_DEVICE;
    // Sticky errors: the context is corrupt; every later call fails the same way.
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchTimeout:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorContextIsDestroyed:
      return MP_ERR_CUDA_FATAL;
    default:
      return MP_ERR_CUDA;
  }
}

void cuda_throw(cudaError_t rc, const char *what, const char *file, int line) {
  int32_t status = cuda_status(rc);
  // Non-sticky errors are also recorded as the "last error"; clear it so that the next
  // launch check does not report this one again.
  if (status != MP_ERR_CUDA_FATAL) (void)cudaGetLastError();
  ::mp::raise(status, file, line, "%s: %s (%s)", what, cudaGetErrorString(rc),
              cudaGetErrorName(rc));
}

// ------------------------------------------------------------
// uploads

DevBuf<bf16> upload_bf16(const float *src, size_t n, cudaStream_t s) {
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(src[i]);
  DevBuf<bf16> d(n);
  if (n) {
    MP_CUDA(cudaMemcpyAsync(d.p, h.data(), n * 2, cudaMemcpyHostToDevice, s));
    MP_CUDA(cudaStreamSynchronize(s));  // h goes out of scope
  }
  return d;
}

DevBuf<bf16> upload_as_bf16(int32_t dtype, const void *src, size_t n, cudaStream_t s) {
  if (dtype == MP_DTYPE_BF16) {
    DevBuf<bf16> d(n);
    if (n) {
      MP_CUDA(cudaMemcpyAsync(d.p, src, n * 2, cudaMemcpyHostToDevice, s));
      MP_CUDA(cudaStreamSynchronize(s));
    }
    return d;
  }
  std::vector<float> f(n);
  to_f32(dtype, src, f.data(), n);
  return upload_bf16(f.data(), n, s);
}

// ------------------------------------------------------------
// kernel variants

static std::atomic<int> g_variant[OP_COUNT];

int forced_variant(Op op) { return g_variant[op].load(std::memory_order_relaxed); }
void force_variant(Op op, int variant) { g_variant[op].store(variant, std::memory_order_relaxed); }

void set_kernel_variant(const char *op, int variant) {
  MP_CHECK(op != nullptr, MP_ERR_INVALID, "op is NULL");
  // the highest variant of each op family (cuda_util.h Op; matmul: 4 is the GEMV kernel;
  // attention: 4 is the sm_90a kernel, 5..7 the tuned mma.sync flash kernels)
  static const struct {
    const char *name;
    Op op;
    int max;
  } kOps[] = {{"matmul", OP_MATMUL, 4},   {"attention", OP_ATTENTION, 7},
              {"kv", OP_KV, 2},           {"graphs", OP_GRAPHS, 2},
              {"pin", OP_PIN, 2},         {"lsh", OP_LSH, 4},
              {"offload", OP_OFFLOAD, 5}, {"qcodes", OP_QCODES, 2},
              {"retrieval", OP_RETRIEVAL, 2}};
  for (const auto &o : kOps) {
    if (std::strcmp(op, o.name) != 0) continue;
    MP_CHECK(variant >= 0 && variant <= o.max, MP_ERR_INVALID,
             "variant \"%d\" is invalid for \"%s\": must be 0..%d", variant, op, o.max);
    return force_variant(o.op, variant);
  }
  MP_FAIL(MP_ERR_INVALID,
          "op \"%s\" is invalid: must be \"matmul\", \"attention\", \"kv\", \"graphs\", "
          "\"pin\", \"lsh\", \"offload\", \"qcodes\" or \"retrieval\"",
          op);
}

int lsh_key_hashing() { return forced_variant(OP_LSH); }

bool pdl_supported(const char *env) {
  const char *v = env ? std::getenv(env) : nullptr;
  if (v && std::strcmp(v, "0") == 0) return false;
  int dev = 0, major = 0, rt = 0, drv = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
    return false;
  if (cudaRuntimeGetVersion(&rt) != cudaSuccess || cudaDriverGetVersion(&drv) != cudaSuccess)
    return false;
  return major >= 9 && rt >= 12030 && drv >= 12030;
}

}  // namespace mp::gpu
