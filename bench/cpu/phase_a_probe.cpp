// phase_a_probe.cpp — times MagicPIG retrieval's collision counting (sampled_attention.cpp,
// phase A) in isolation: the count over one head's L buckets per 64K-token block, then the
// harvest of the tokens hit in >= 2 tables, for the 32 query heads of one layer of a 96K
// context, with the two harvest forms the library chooses between:
//   list  — the count loop lists the bitmap words it makes non-zero and the harvest visits
//           only those (the library's form when L·64 < 2^K);
//   sweep — no list in the count loop, the harvest sweeps every word (K10L150's form).
// The count loop is the library's own (cpu/lsh_count.h).
//
// A standalone program, not part of libmagicpig; it compiles the few sources it needs:
//   g++ -std=c++17 -O3 -march=native -fopenmp -fno-math-errno -Icuda/include -Icuda
//     bench/cpu/phase_a_probe.cpp cuda/cpu/lsh_index.cpp cuda/cpu/lsh_hash.cpp
//     cuda/common/common.cpp cuda/common/task_pool.cpp -o build/phase_a_probe
//   OMP_NUM_THREADS=16 [NI=6] build/phase_a_probe [reps]
//
// Shape: 8 KV heads × 98,304 tokens, K10L150, uniform random codes (each bucket ~n/2^K
// tokens), NI indexes cycled so the buckets come from DRAM (NI=1: the same index every
// time). Prints the best time per layer over the reps (32 heads over OMP_NUM_THREADS).
// Measured (bench/gpu/NOTES.md round 7): 31 µs per head on one thread (dev VM and server
// alike, compute-bound: NI=1 is no faster); on the server's 16 threads 110 µs per layer for
// the sweep against 139 for the list.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "common/common.h"
#include "cpu/lsh_count.h"
#include "cpu/lsh_index.h"

using namespace mp;
using namespace mp::lsh;

namespace {

struct Scratch {
  std::vector<uint64_t> seen1, seen2;
  std::vector<uint32_t> touched, rs, re;
  std::vector<const uint32_t *> optr;
  std::vector<int32_t> hits;
};

template <bool LIST>
size_t sample(const Index &I, int hkv, const uint16_t *q, Scratch &sc) {
  const size_t words = (size_t)(I.n_blocked() + 63) / 64;
  if (sc.seen1.size() < words) {
    sc.seen1.assign(words, 0), sc.seen2.assign(words, 0), sc.touched.assign(words + 1, 0);
  }
  const int L = I.params().L;
  if (sc.rs.size() < (size_t)L) sc.rs.resize(L), sc.re.resize(L), sc.optr.resize(L);
  sc.hits.clear();
  uint32_t nt = 0;
  const CountScratch cs{sc.optr.data(),  sc.rs.data(),    sc.re.data(),
                        sc.seen1.data(), sc.seen2.data(), sc.touched.data()};
  for (const Block &blk : I.blocks()) count_block<LIST>(I, blk, hkv, q, cs, nt);
  auto take = [&](uint32_t w) {
    uint64_t m = sc.seen2[w];
    sc.seen1[w] = 0, sc.seen2[w] = 0;
    for (; m; m &= m - 1) sc.hits.push_back((int32_t)(w * 64 + __builtin_ctzll(m)));
  };
  if (LIST) {
    for (uint32_t k = 0; k < nt; k++) take(sc.touched[k]);
  } else {
    for (uint32_t w = 0; w < (uint32_t)words; w++) take(w);
  }
  return sc.hits.size();
}

}  // namespace

int main(int argc, char **argv) {
  const int64_t n = 98304;
  const int hkv = 8, d = 128, H = 32;
  const int NI = std::max(1, getenv("NI") ? atoi(getenv("NI")) : 6);
  const int reps = argc > 1 ? std::max(3, atoi(argv[1])) : 20;
  Params p;  // K10L150
  std::mt19937_64 rng(1);
  std::vector<uint16_t> keys((size_t)hkv * n * d);
  for (auto &k : keys) k = 0x3f80 ^ (uint16_t)(rng() & 0x80ff);  // only μ and norms read them
  std::vector<uint16_t> codes((size_t)hkv * p.L * n);
  std::vector<std::unique_ptr<Index>> idx;
  for (int i = 0; i < NI; i++) {
    for (auto &c : codes) c = (uint16_t)(rng() & ((1u << p.K) - 1));
    auto I = std::make_unique<Index>(p, hkv, d);
    const KeyRows kr{keys.data(), MP_DTYPE_BF16, n};
    const Codes cd{codes.data(), n};
    I->add(kr, n, true, true, &cd);
    idx.push_back(std::move(I));
  }
  std::vector<uint16_t> qc((size_t)H * p.L);
  for (auto &c : qc) c = (uint16_t)(rng() & ((1u << p.K) - 1));
  const int T = omp_get_max_threads();
  std::vector<Scratch> scs(T);
  auto run = [&](auto fn, const char *name) {
    double best = 1e30;
    size_t hits = 0;
    for (int r = 0; r < reps; r++) {
      const Index &I = *idx[r % NI];
      const auto t0 = std::chrono::steady_clock::now();
      size_t sum = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : sum)
      for (int h = 0; h < H; h++)
        sum += fn(I, h / (H / hkv), &qc[(size_t)h * p.L], scs[omp_get_thread_num()]);
      const double us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      if (r >= 2) best = std::min(best, us);
      hits = sum;
    }
    std::printf("%-6s %8.1f us per layer (%d heads, %d threads, %d indexes), %zu hits\n", name,
                best, H, T, NI, hits);
  };
  for (int k = 0; k < 2; k++) {
    run([](const Index &I, int h, const uint16_t *q, Scratch &s) { return sample<true>(I, h, q, s); },
        "list");
    run([](const Index &I, int h, const uint16_t *q, Scratch &s) { return sample<false>(I, h, q, s); },
        "sweep");
  }
  return 0;
}
