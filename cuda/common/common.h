// common.h — internal helpers shared by every translation unit of libmagicpig.
//
// Errors: internal code throws mp::Error (status + "file:line: message"); every exported
// C function runs its body through mp::guard(), which turns exceptions into a status and
// a message in the caller's buffer. Nothing escapes the C ABI, nothing aborts.
//
// Threads: OpenMP's thread count is a per-thread setting and FFI calls arrive on
// different threads, so the library keeps one global count (mp_set_num_threads) and
// every parallel region names it: `#pragma omp parallel for num_threads(mp::threads())`.
//
// Number formats: bf16 and f16 are stored as uint16_t; conversions below.
#pragma once

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "magicpig.h"

namespace mp {

// Whether environment variable `name` is set to exactly `value` (A/B switches read once per
// process by their callers, e.g. MP_GEMV_FUSE=0).
inline bool env_equals(const char *name, const char *value) {
  const char *v = std::getenv(name);
  return v && std::strcmp(v, value) == 0;
}

// ------------------------------------------------------------
// errors

struct Error : std::exception {
  int32_t status;
  std::string message;
  Error(int32_t s, std::string m) : status(s), message(std::move(m)) {}
  const char *what() const noexcept override { return message.c_str(); }
};

[[noreturn]] void raise(int32_t status, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

// Writes msg into the caller's buffer (truncating, always NUL-terminated).
void write_error(char *err, size_t cap, const char *msg);

// Throws mp::Error(status, "file:line: ...") unless cond holds.
#define MP_CHECK(cond, status, ...)                                  \
  do {                                                               \
    if (!(cond)) ::mp::raise((status), __FILE__, __LINE__, __VA_ARGS__); \
  } while (0)
#define MP_FAIL(status, ...) ::mp::raise((status), __FILE__, __LINE__, __VA_ARGS__)

// Runs f(), mapping exceptions to a status and a message. Use for every exported function.
template <class F>
int32_t guard(char *err, size_t cap, F &&f) noexcept {
  try {
    int32_t rc = f();
    if (rc == MP_OK && err && cap) err[0] = 0;
    return rc;
  } catch (const Error &e) {
    write_error(err, cap, e.message.c_str());
    return e.status;
  } catch (const std::bad_alloc &) {
    write_error(err, cap, "out of host memory");
    return MP_ERR_OOM;
  } catch (const std::exception &e) {
    write_error(err, cap, e.what());
    return MP_ERR_INTERNAL;
  } catch (...) {
    write_error(err, cap, "unknown internal error");
    return MP_ERR_INTERNAL;
  }
}

// ------------------------------------------------------------
// threads

int threads();           // current global OpenMP thread count (>= 1)
void set_threads(int n); // n <= 0: all cores

// ------------------------------------------------------------
// number formats

static inline float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
static inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

size_t dtype_size(int32_t dtype); // bytes per element; throws on an unknown dtype
const char *dtype_name(int32_t dtype);

// Converts n elements of src (src_dtype) to float.
void to_f32(int32_t src_dtype, const void *src, float *dst, size_t n);
// Converts n floats to dst_dtype.
void from_f32(int32_t dst_dtype, const float *src, void *dst, size_t n);

// ------------------------------------------------------------
// random numbers: splitmix64 seeding + xoshiro256** (same stream on every backend)

struct Rng {
  uint64_t s[4];
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1)
  double normal();   // N(0, 1), Box–Muller
};

}  // namespace mp
