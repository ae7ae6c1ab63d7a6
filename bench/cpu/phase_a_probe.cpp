// phase A micro-bench: count + harvest variants over real lsh::Index blocks.
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>
#include <memory>
#include <algorithm>
#include "common/common.h"
#include "cpu/lsh_index.h"
using namespace mp;
using namespace mp::lsh;

struct Sc {
  std::vector<uint64_t> seen1, seen2;
  std::vector<uint32_t> touched, rs, re;
  std::vector<const uint32_t *> optr;
  std::vector<int32_t> hits;
};

template <int D, bool TOUCH>
static int64_t count_block(const Index &I, const Block &blk, int hkv, const uint16_t *q, Sc &sc, uint32_t &nt_io) {
  const int L = I.params().L;
  const uint32_t **optr = sc.optr.data();
  uint32_t *rs = sc.rs.data(), *re = sc.re.data();
  uint64_t *__restrict seen1 = sc.seen1.data();
  uint64_t *__restrict seen2 = sc.seen2.data();
  uint32_t *__restrict touched = sc.touched.data();
  const uint32_t base = (uint32_t)blk.start;
  auto locate = [&](int t) {
    optr[t] = I.offsets(blk, hkv, t) + q[t];
    __builtin_prefetch(optr[t], 0, 3);
  };
  auto fetch = [&](int t) {
    const uint32_t s = optr[t][0], e = optr[t][1];
    rs[t] = s;
    re[t] = e;
    if (e > s) {
      const uint16_t *ent = I.entries(blk, hkv, t);
      const char *p0 = (const char *)(ent + s), *p1 = (const char *)(ent + e);
      for (const char *p = (const char *)((uintptr_t)p0 & ~(uintptr_t)63); p < p1; p += 64)
        __builtin_prefetch(p, 0, 3);
    }
  };
  int64_t scanned = 0;
  uint32_t nt = nt_io;
  for (int t = 0; t < std::min(2 * D, L); t++) locate(t);
  for (int t = 0; t < std::min(D, L); t++) fetch(t);
  for (int t = 0; t < L; t++) {
    if (t + 2 * D < L) locate(t + 2 * D);
    if (t + D < L) fetch(t + D);
    const uint16_t *__restrict e = I.entries(blk, hkv, t);
    const uint32_t j0 = rs[t], j1 = re[t];
    scanned += j1 - j0;
    for (uint32_t j = j0; j < j1; j++) {
      const uint32_t i = base + e[j];
      const uint32_t w = i >> 6;
      const uint64_t b = 1ull << (i & 63);
      const uint64_t x = seen1[w];
      if (TOUCH) {
        touched[nt] = w;
        nt += x == 0;
      }
      seen2[w] |= x & b;
      seen1[w] = x | b;
    }
  }
  nt_io = nt;
  return scanned;
}

static inline void emit(uint64_t m, uint32_t base, int32_t *out, size_t &n) {
  // branch-light: 4 unconditional writes, then a loop for the rest
  const int c = __builtin_popcountll(m);
  int32_t *o = out + n;
  o[0] = (int32_t)(base + __builtin_ctzll(m | (1ull << 63)));
  m &= m - 1;
  o[1] = (int32_t)(base + __builtin_ctzll(m | (1ull << 63)));
  m &= m - 1;
  o[2] = (int32_t)(base + __builtin_ctzll(m | (1ull << 63)));
  m &= m - 1;
  o[3] = (int32_t)(base + __builtin_ctzll(m | (1ull << 63)));
  m &= m - 1;
  int k = 4;
  while (m) { o[k++] = (int32_t)(base + __builtin_ctzll(m)); m &= m - 1; }
  n += c;
}

template <int D, int VAR>
static size_t sample(const Index &I, int hkv, const uint16_t *q, Sc &sc) {
  const size_t words = (size_t)(I.n_blocked() + 63) / 64;
  if (sc.seen1.size() < words) { sc.seen1.assign(words, 0); sc.seen2.assign(words, 0); sc.touched.assign(words + 1, 0); }
  const int L = I.params().L;
  if (sc.rs.size() < (size_t)L) { sc.rs.resize(L); sc.re.resize(L); sc.optr.resize(L); }
  if (sc.hits.size() < (size_t)I.n() + 64) sc.hits.resize(I.n() + 64);
  uint32_t nt = 0;
  for (const Block &blk : I.blocks()) count_block<D, VAR == 0>(I, blk, hkv, q, sc, nt);
  size_t nh = 0;
  int32_t *hits = sc.hits.data();
  if (VAR == 0) {
    for (uint32_t k = 0; k < nt; k++) {
      const uint32_t w = sc.touched[k];
      uint64_t m = sc.seen2[w];
      sc.seen1[w] = 0;
      sc.seen2[w] = 0;
      while (m) { hits[nh++] = (int32_t)(w * 64 + (uint32_t)__builtin_ctzll(m)); m &= m - 1; }
    }
  } else if (VAR == 2) {
    for (size_t w = 0; w < words; w++) {
      uint64_t m = sc.seen2[w];
      sc.seen1[w] = 0;
      sc.seen2[w] = 0;
      while (m) { hits[nh++] = (int32_t)(w * 64 + (uint32_t)__builtin_ctzll(m)); m &= m - 1; }
    }
  } else {
    uint64_t *s1 = sc.seen1.data(), *s2 = sc.seen2.data();
    for (size_t w = 0; w < words; w++) {
      const uint64_t m = s2[w];
      s2[w] = 0;
      s1[w] = 0;
      if (m) emit(m, (uint32_t)(w * 64), hits, nh);
    }
  }
  return nh;
}

int main(int argc, char **argv) {
  const int64_t n = 98304;
  const int hkv = 8, d = 128, H = 32, NI = getenv("NI") ? atoi(getenv("NI")) : 6, reps = argc > 1 ? atoi(argv[1]) : 20;
  Params p;
  std::vector<std::unique_ptr<Index>> idx;
  std::mt19937_64 rng(1);
  std::vector<uint16_t> keys((size_t)hkv * n * d);
  for (auto &k : keys) k = 0x3f80 ^ (uint16_t)(rng() & 0x80ff);  // ~±1 bf16-ish
  std::vector<uint16_t> codes((size_t)hkv * p.L * n);
  for (int i = 0; i < NI; i++) {
    for (auto &c : codes) c = (uint16_t)(rng() & 1023);
    auto I = std::make_unique<Index>(p, hkv, d);
    KeyRows kr{keys.data(), MP_DTYPE_BF16, n};
    Codes cd{codes.data(), n};
    I->add(kr, n, true, true, &cd);
    idx.push_back(std::move(I));
  }
  std::vector<uint16_t> qc((size_t)H * 160);
  for (auto &c : qc) c = (uint16_t)(rng() & 1023);
  const int T = omp_get_max_threads();
  std::vector<Sc> scs(T);
  auto run = [&](auto fn, const char *name) {
    double best = 1e30; size_t tot = 0;
    for (int r = 0; r < reps; r++) {
      const Index &I = *idx[r % NI];
      auto t0 = std::chrono::steady_clock::now();
      size_t sum = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : sum)
      for (int h = 0; h < H; h++) sum += fn(I, h / 4, &qc[(size_t)h * 160], scs[omp_get_thread_num()]);
      double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      if (r >= 2) best = std::min(best, us);
      tot = sum;
    }
    printf("%-24s %8.1f us per layer (32 heads, %d threads), hits %zu\n", name, best, T, tot);
  };
  for (int k = 0; k < 2; k++) {
  run([](const Index &I, int h, const uint16_t *q, Sc &s) { return sample<16, 0>(I, h, q, s); }, "V0 current D16");
  run([](const Index &I, int h, const uint16_t *q, Sc &s) { return sample<16, 1>(I, h, q, s); }, "V1 fullscan D16");
  run([](const Index &I, int h, const uint16_t *q, Sc &s) { return sample<16, 2>(I, h, q, s); }, "V2 sweep-simple D16");
  run([](const Index &I, int h, const uint16_t *q, Sc &s) { return sample<32, 1>(I, h, q, s); }, "V1 fullscan D32");
  }
}
