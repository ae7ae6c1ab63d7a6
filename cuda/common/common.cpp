// common.cpp — errors, thread count, number formats and the seeded RNG (see common.h).
#include "common/common.h"

#include <omp.h>

#include <atomic>
#include <cmath>

namespace mp {

// ------------------------------------------------------------
// errors

void write_error(char *err, size_t cap, const char *msg) {
  if (!err || cap == 0) return;
  size_t n = std::strlen(msg);
  if (n >= cap) n = cap - 1;
  std::memcpy(err, msg, n);
  err[n] = 0;
}

void raise(int32_t status, const char *file, int line, const char *fmt, ...) {
  const char *base = std::strrchr(file, '/');
  base = base ? base + 1 : file;
  char buf[1024];
  int off = std::snprintf(buf, sizeof buf, "%s:%d: ", base, line);
  if (off < 0) off = 0;
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf + off, sizeof buf - (size_t)off, fmt, ap);
  va_end(ap);
  throw Error(status, buf);
}

// ------------------------------------------------------------
// threads

static std::atomic<int> g_threads{0};

int threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  if (n <= 0) {
    n = omp_get_num_procs();
    if (n < 1) n = 1;
  }
  return n;
}

void set_threads(int n) { g_threads.store(n > 0 ? n : 0, std::memory_order_relaxed); }

// ------------------------------------------------------------
// number formats

float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        e++;
        mant <<= 1;
      } while (!(mant & 0x400));
      u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000;
  int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
  uint32_t mant = u & 0x7fffff;
  if (((u >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
  if (exp >= 31) return (uint16_t)(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return (uint16_t)sign;
    mant |= 0x800000;
    uint32_t shift = (uint32_t)(14 - exp);
    uint32_t half = 1u << (shift - 1);
    uint32_t r = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    if (rem > half || (rem == half && (r & 1))) r++;
    return (uint16_t)(sign | r);
  }
  uint32_t r = ((uint32_t)exp << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
  return (uint16_t)(sign | r);
}

size_t dtype_size(int32_t dtype) {
  switch (dtype) {
    case MP_DTYPE_F32: return 4;
    case MP_DTYPE_F16: return 2;
    case MP_DTYPE_BF16: return 2;
  }
  MP_FAIL(MP_ERR_INVALID, "unknown dtype %d", dtype);
}

const char *dtype_name(int32_t dtype) {
  switch (dtype) {
    case MP_DTYPE_F32: return "F32";
    case MP_DTYPE_F16: return "F16";
    case MP_DTYPE_BF16: return "BF16";
  }
  return "unknown";
}

void to_f32(int32_t src_dtype, const void *src, float *dst, size_t n) {
  switch (src_dtype) {
    case MP_DTYPE_F32:
      std::memcpy(dst, src, n * 4);
      return;
    case MP_DTYPE_F16: {
      const uint16_t *s = (const uint16_t *)src;
#pragma omp parallel for num_threads(threads()) schedule(static) if (n > (1 << 16))
      for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case MP_DTYPE_BF16: {
      const uint16_t *s = (const uint16_t *)src;
#pragma omp parallel for num_threads(threads()) schedule(static) if (n > (1 << 16))
      for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
      return;
    }
  }
  MP_FAIL(MP_ERR_INVALID, "unknown dtype %d", src_dtype);
}

void from_f32(int32_t dst_dtype, const float *src, void *dst, size_t n) {
  switch (dst_dtype) {
    case MP_DTYPE_F32:
      std::memcpy(dst, src, n * 4);
      return;
    case MP_DTYPE_F16: {
      uint16_t *d = (uint16_t *)dst;
#pragma omp parallel for num_threads(threads()) schedule(static) if (n > (1 << 16))
      for (size_t i = 0; i < n; i++) d[i] = f32_to_f16(src[i]);
      return;
    }
    case MP_DTYPE_BF16: {
      uint16_t *d = (uint16_t *)dst;
#pragma omp parallel for num_threads(threads()) schedule(static) if (n > (1 << 16))
      for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
      return;
    }
  }
  MP_FAIL(MP_ERR_INVALID, "unknown dtype %d", dst_dtype);
}

// ------------------------------------------------------------
// random numbers

static uint64_t splitmix64(uint64_t &x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

Rng::Rng(uint64_t seed) {
  uint64_t x = seed;
  for (auto &v : s) v = splitmix64(x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t Rng::next() {
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double Rng::uniform() { return (double)(next() >> 11) * (1.0 / 9007199254740992.0); }

double Rng::normal() {
  double u1 = uniform();
  double u2 = uniform();
  if (u1 < 1e-300) u1 = 1e-300;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

}  // namespace mp
