// buffer.h — HostBuffer: a 64-byte aligned, move-only block of host memory.
//
// Weights and KV caches live in HostBuffers. Allocation failures throw std::bad_alloc,
// which mp::guard maps to MP_ERR_OOM. The memory is not cleared (first touch happens in
// the thread that fills it); use zero() where a defined value is needed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace mp {

class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(size_t bytes) { allocate(bytes); }
  ~HostBuffer() { std::free(ptr_); }
  HostBuffer(const HostBuffer &) = delete;
  HostBuffer &operator=(const HostBuffer &) = delete;
  HostBuffer(HostBuffer &&o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  HostBuffer &operator=(HostBuffer &&o) noexcept {
    if (this != &o) {
      std::free(ptr_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }

  // Replaces the contents with `bytes` uninitialised bytes (0: empty).
  void allocate(size_t bytes) {
    void *p = nullptr;
    if (bytes > 0) {
      size_t rounded = (bytes + 63) / 64 * 64;
      p = std::aligned_alloc(64, rounded);
      if (!p) throw std::bad_alloc();
    }
    std::free(ptr_);
    ptr_ = p;
    bytes_ = bytes;
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
  void *ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace mp
