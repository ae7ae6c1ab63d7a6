// lsh_count.h — MagicPIG retrieval's collision count over one block of an index: the inner
// loop of phase A (cpu/sampled_attention.cpp), in a header so that bench/cpu/phase_a_probe.cpp
// times this very loop.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/lsh_index.h"

namespace mp::lsh {

// The count's scratch: per table, the bucket's offsets and entry range [rs, re); two bitmaps
// over the index's blocked tokens, seen once and seen twice (all zero between query heads);
// with LIST, the words made non-zero go to touched (one slot past the count is written).
struct CountScratch {
  const uint32_t **optr;
  uint32_t *rs, *re;
  uint64_t *seen1, *seen2;
  uint32_t *touched;
};

// Collision counting over one block for one query head (codes q[L]) of KV head hkv: every
// token id hit in >= 2 of the L buckets ends with its bit set in seen2. The L bucket lookups
// are random DRAM accesses: they run as a software pipeline (offsets of table t + 2D
// prefetched, those of t + D read and their entry lines prefetched, table t counted), and the
// count is branch-free on the two bitmaps, which stay in L1. With LIST, nt_io counts the
// words listed in touched. Returns the entries scanned.
template <bool LIST>
inline int64_t count_block(const Index &I, const Block &blk, int hkv, const uint16_t *q,
                           const CountScratch &sc, uint32_t &nt_io) {
  const int L = I.params().L;
  constexpr int D = 16;  // tables ahead (the offsets are 2·D ahead)
  const uint32_t **optr = sc.optr;
  uint32_t *rs = sc.rs, *re = sc.re;
  uint64_t *__restrict seen1 = sc.seen1;
  uint64_t *__restrict seen2 = sc.seen2;
  uint32_t *__restrict touched = sc.touched;
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
  uint32_t nt = nt_io;  // a local: `touched` could alias a reference, forcing memory round trips
  for (int t = 0; t < std::min(2 * D, L); t++) locate(t);
  for (int t = 0; t < std::min(D, L); t++) fetch(t);
  for (int t = 0; t < L; t++) {
    if (t + 2 * D < L) locate(t + 2 * D);
    if (t + D < L) fetch(t + D);
    const uint16_t *__restrict e = I.entries(blk, hkv, t);
    const uint32_t j0 = rs[t], j1 = re[t];
    scanned += j1 - j0;
    // a second hit moves the token's bit from seen1 into seen2
    for (uint32_t j = j0; j < j1; j++) {
      const uint32_t i = base + e[j];
      const uint32_t w = i >> 6;
      const uint64_t b = 1ull << (i & 63);
      const uint64_t x = seen1[w];
      if (LIST) {
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

}  // namespace mp::lsh
