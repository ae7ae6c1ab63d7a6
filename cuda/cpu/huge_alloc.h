// huge_alloc.h — large host buffers on transparent huge pages.
//
// Sampled attention gathers rows at random from hundreds of megabytes (K, V, the bucket
// entries). With 4 KiB pages nearly every gathered row misses the TLB and pays a page
// walk on top of the DRAM access; 2 MiB pages make the TLB cover the working set. Linux
// often runs THP in "madvise" mode, so large buffers are 2 MiB-aligned and marked with
// madvise(MADV_HUGEPAGE). Small buffers use plain malloc. huge_alloc does not touch the
// memory; fault_in faults it in on every core when a caller wants that done up front.
#pragma once

#include <sys/mman.h>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>
#include <type_traits>
#include <utility>

#include "common/common.h"

namespace mp {

constexpr size_t HUGE_PAGE = (size_t)2 << 20;

inline void *huge_alloc(size_t bytes) {
  if (bytes == 0) bytes = 1;
  void *p;
  if (bytes >= HUGE_PAGE) {
    const size_t rounded = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    p = std::aligned_alloc(HUGE_PAGE, rounded);
    if (p) (void)madvise(p, rounded, MADV_HUGEPAGE);  // advisory: failure is harmless
  } else {
    p = std::malloc(bytes);
  }
  if (!p) throw std::bad_alloc();
  return p;
}

inline void huge_free(void *p) { std::free(p); }

// The bytes a pinnable array of `bytes` owns: whole huge pages (huge_alloc) from HUGE_PAGE
// up, whole 4 KiB pages below (pinnable_alloc), so that page-locking it never touches a page
// of another allocation (a page cannot be registered twice).
inline size_t pinnable_bytes(size_t bytes) {
  if (bytes == 0) bytes = 1;
  const size_t unit = bytes >= HUGE_PAGE ? HUGE_PAGE : (size_t)4096;
  return (bytes + unit - 1) / unit * unit;
}
inline void *pinnable_alloc(size_t bytes) {
  if (bytes >= HUGE_PAGE) return huge_alloc(bytes);
  void *p = std::aligned_alloc(4096, pinnable_bytes(bytes));
  if (!p) throw std::bad_alloc();
  return p;
}

// Faults in the pages of [p, p + bytes) (uninitialised memory: it writes a zero to each 4 KiB
// page) on every thread of mp::threads(), each its own contiguous range, so that the kernel's
// zeroing of fresh pages runs on every core instead of on the thread that first writes them.
// Threads writing near each other instead (a parallel loop that faults pages as it fills
// them) race for the same 2 MiB huge page, and all but one clear a page they then give back.
inline void fault_in(void *p, size_t bytes) {
  constexpr size_t PAGE = 4096;
  char *c = static_cast<char *>(p);
  const long long pages = (long long)((bytes + PAGE - 1) / PAGE);
#pragma omp parallel for num_threads(threads()) schedule(static)
  for (long long i = 0; i < pages; i++) c[(size_t)i * PAGE] = 0;
}

// Page-locking of host arrays that a device reads in place (the LSH index's blocks, which
// the CUDA backend's GPU retrieval reads over PCIe). A CUDA backend installs a registrar;
// without one (CPU engines) pin_host and unpin_host do nothing. pin_host is called once an
// array is faulted in (registering untouched pages would fault them on one thread);
// unpin_host(p) before p is freed, and is a no-op for a pointer that was never pinned. Only
// pinnable_alloc arrays may be pinned (they own whole pages: pinnable_bytes).
struct HostRegistrar {
  void (*pin)(void *p, size_t bytes);
  void (*unpin)(void *p);
};
inline std::atomic<const HostRegistrar *> g_host_registrar{nullptr};
inline void set_host_registrar(const HostRegistrar *r) { g_host_registrar.store(r); }
inline void pin_host(void *p, size_t bytes) {
  if (const HostRegistrar *r = g_host_registrar.load(std::memory_order_acquire))
    if (p && bytes > 0) r->pin(p, pinnable_bytes(bytes));
}
inline void unpin_host(void *p) {
  if (const HostRegistrar *r = g_host_registrar.load(std::memory_order_acquire)) r->unpin(p);
}

// std allocator over huge_alloc, for std::vector of large arrays.
template <class T>
struct HugeAllocator {
  using value_type = T;
  HugeAllocator() = default;
  template <class U>
  HugeAllocator(const HugeAllocator<U> &) {}
  T *allocate(size_t n) { return (T *)huge_alloc(n * sizeof(T)); }
  void deallocate(T *p, size_t) { huge_free(p); }
  template <class U>
  bool operator==(const HugeAllocator<U> &) const { return true; }
  template <class U>
  bool operator!=(const HugeAllocator<U> &) const { return false; }
};

// HugeAllocator whose vectors default-initialise: resize(n) of a vector of a trivial type
// leaves the new elements unwritten (no zero-fill pass), so the pages are first touched
// (faulted in, zeroed by the kernel) by whoever writes them, e.g. the threads of the
// parallel loop that fills the array. resize(n, value) and copies still write. Its arrays
// own whole pages (pinnable_alloc) and may be pinned (pin_host); they are unpinned before
// they are freed.
template <class T>
struct HugeUninitAllocator : HugeAllocator<T> {
  template <class U>
  struct rebind {
    using other = HugeUninitAllocator<U>;
  };
  HugeUninitAllocator() = default;
  template <class U>
  HugeUninitAllocator(const HugeUninitAllocator<U> &) {}
  T *allocate(size_t n) { return (T *)pinnable_alloc(n * sizeof(T)); }
  void deallocate(T *p, size_t) {
    unpin_host(p);
    huge_free(p);
  }
  template <class U>
  void construct(U *p) noexcept(std::is_nothrow_default_constructible<U>::value) {
    ::new ((void *)p) U;
  }
  template <class U, class... A>
  void construct(U *p, A &&...a) {
    ::new ((void *)p) U(std::forward<A>(a)...);
  }
};

// An owning pointer to huge_alloc memory.
struct HugeFree {
  void operator()(void *p) const { huge_free(p); }
};

}  // namespace mp
