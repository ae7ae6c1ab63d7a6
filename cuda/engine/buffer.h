// buffer.h — HostBuffer: a 64-byte aligned, move-only block of host memory.
//
// Weights and KV caches live in HostBuffers. A buffer may come from a HostAllocator (e.g.
// page-locked memory that a GPU backend copies at full PCIe speed, see
// ForwardBackend::host_allocator()); the same allocator frees it. Allocation failures throw
// std::bad_alloc, which mp::guard maps to MP_ERR_OOM. The memory is not cleared (first
// touch happens in the thread that fills it); use zero() where a defined value is needed.
// Without an allocator, buffers of 2 MiB and more sit on transparent huge pages
// (cpu/huge_alloc.h): sampled attention gathers KV rows at random from them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "cpu/huge_alloc.h"

namespace mp {

// Where a HostBuffer's memory comes from when not from aligned_alloc. alloc returns
// 64-byte aligned memory or nullptr (the buffer then throws std::bad_alloc); free gets
// back exactly what alloc returned. The allocator must outlive its buffers.
struct HostAllocator {
  void *(*alloc)(size_t bytes, void *ctx) = nullptr;
  void (*free)(void *p, size_t bytes, void *ctx) = nullptr;
  void *ctx = nullptr;
};

class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(size_t bytes) { allocate(bytes); }
  ~HostBuffer() { release(ptr_, bytes_, alloc_); }
  HostBuffer(const HostBuffer &) = delete;
  HostBuffer &operator=(const HostBuffer &) = delete;
  HostBuffer(HostBuffer &&o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_), alloc_(o.alloc_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
    o.alloc_ = nullptr;
  }
  HostBuffer &operator=(HostBuffer &&o) noexcept {
    if (this != &o) {
      release(ptr_, bytes_, alloc_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
      alloc_ = std::exchange(o.alloc_, nullptr);
    }
    return *this;
  }

  // Replaces the contents with `bytes` uninitialised bytes (0: empty), from `a` when given.
  void allocate(size_t bytes, const HostAllocator *a = nullptr) {
    void *p = nullptr;
    if (bytes > 0) {
      size_t rounded = (bytes + 63) / 64 * 64;
      p = a ? a->alloc(rounded, a->ctx) : huge_alloc(rounded);
      if (!p) throw std::bad_alloc();
    }
    release(ptr_, bytes_, alloc_);
    ptr_ = p;
    bytes_ = bytes;
    alloc_ = bytes > 0 ? a : nullptr;
  }
  void reset() { allocate(0); }
  void zero() {
    if (ptr_) std::memset(ptr_, 0, bytes_);
  }

  void *data() { return ptr_; }
  const void *data() const { return ptr_; }
  template <class T>
  T *as() {
    return static_cast<T *>(ptr_);
  }
  template <class T>
  const T *as() const {
    return static_cast<const T *>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  bool empty() const { return bytes_ == 0; }

 private:
  static void release(void *p, size_t bytes, const HostAllocator *a) {
    if (!p) return;
    if (a)
      a->free(p, (bytes + 63) / 64 * 64, a->ctx);
    else
      huge_free(p);
  }

  void *ptr_ = nullptr;
  size_t bytes_ = 0;
  const HostAllocator *alloc_ = nullptr;
};

}  // namespace mp
