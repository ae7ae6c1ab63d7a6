// index_build.cpp — times the CPU part of an LSH index build as a session commit does it
// (engine/policy.cpp build_with_codes): Index::init_mean, then Index::add(keys, m,
// merge = true, auto_merge = true, &codes) with the codes computed beforehand (on the GPU
// in production; here by lsh::hash_keys_cpu, outside the timed region).
//
// A standalone program, not part of libmagicpig; it compiles the few sources it needs:
//   g++ -std=c++17 -O3 -march=native -fopenmp -fno-math-errno -Icuda/include -Icuda
//     bench/cpu/index_build.cpp cuda/cpu/lsh_index.cpp cuda/cpu/lsh_hash.cpp
//     cuda/common/common.cpp cuda/common/task_pool.cpp -o build/index_build
//   build/index_build [--m 98300] [--cap 131072] [--threads N] [--reps 4] [--free]
//                     [--check] [--dump FILE]
//
// Shape: Llama-3.1-8B (Hkv = 8, d = 128), K10L150, bf16 keys laid out like a session's
// cache (head-major rows, head_rows = cap ≥ m). Every build goes into a fresh Index (fresh
// memory, so its page faults are counted, as for each layer of a commit); the indexes are
// kept alive until the end, as a session keeps its layers' (--free: each is freed before
// the next build, whose memory then comes from pages the process has used before, which
// in a virtual machine can fault much faster than never-used ones). Per build it prints
// init_mean, add, and add's phases (Index::times()).
// --check compares the first build with a plain reimplementation (sequential double mean,
// scalar norms, one stable counting sort per (block, head, table)): every value must be
// bit-identical, and add_sorted (the CPU part of a first build made on the GPU) fed with the
// first build's μ and blocks must give the same image. --dump writes the first build's
// image (Index::write), to compare builds of two versions of lsh_index.cpp with cmp.
#include <omp.h>
#include <sys/resource.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/common.h"
#include "cpu/lsh_index.h"

using namespace mp;

namespace {

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Index::add's arithmetic, spelled out the plain way. Returns the number of mismatches.
int64_t check(const lsh::Index &I, const lsh::KeyRows &keys, int64_t m, const uint16_t *codes) {
  const int hkv = I.n_kv_heads(), d = I.head_dim(), L = I.params().L, NB = 1 << I.params().K;
  int64_t bad = 0;
  std::map<std::string, int64_t> kinds;  // mismatches by what differs
  auto fail = [&](const char *what, int h, int64_t i) {
    kinds[what]++;
    if (bad++ < 10) std::printf("  MISMATCH %s (head %d, %lld)\n", what, h, (long long)i);
  };
  struct Report {  // printed when check() returns
    std::map<std::string, int64_t> &k;
    double &rel;
    ~Report() {
      for (const auto &kv : k) std::printf("  %s: %lld mismatches\n", kv.first.c_str(), (long long)kv.second);
      if (rel > 0) std::printf("  largest relative norm difference: %.3g\n", rel);
    }
  };
  double norm_rel = 0;
  Report report{kinds, norm_rel};
  const uint16_t *k = (const uint16_t *)keys.k;
  if (I.n() != m || I.n_blocked() != m || I.n_tail() != 0) fail("token counts", -1, I.n());
  for (int h = 0; h < hkv; h++) {
    std::vector<float> mu(d);
    for (int e = 0; e < d; e++) {
      double acc = 0;
      for (int64_t j = 0; j < m; j++) acc += bf16_to_f32(k[(h * keys.head_rows + j) * d + e]);
      mu[e] = (float)(acc / (double)m);
      if (std::memcmp(&mu[e], &I.head(h).mean[e], 4) != 0) fail("mean", h, e);
    }
    if ((int64_t)I.head(h).norms.size() != m) fail("norms size", h, 0);
    for (int64_t j = 0; j < m && j < (int64_t)I.head(h).norms.size(); j++) {
      float ss = 0.0f;
      for (int e = 0; e < d; e++) {
        float v = bf16_to_f32(k[(h * keys.head_rows + j) * d + e]) - mu[e];
        ss += v * v;
      }
      const float nj = std::sqrt(ss);
      if (std::memcmp(&nj, &I.head(h).norms[j], 4) != 0) {
        fail("norm", h, j);
        norm_rel = std::max(norm_rel, std::fabs((double)I.head(h).norms[j] - nj) / std::max(1e-30, (double)nj));
      }
    }
  }
  const auto &blocks = I.blocks();
  if ((int64_t)blocks.size() != (m + lsh::BLOCK - 1) / lsh::BLOCK) fail("block count", -1, 0);
  std::vector<uint32_t> off(NB + 1);
  std::vector<uint16_t> ent;
  for (size_t bi = 0; bi < blocks.size(); bi++) {
    const lsh::Block &b = blocks[bi];
    const int64_t start = (int64_t)bi * lsh::BLOCK, n = std::min<int64_t>(lsh::BLOCK, m - start);
    if (b.start != start || b.n != n) fail("block shape", -1, (int64_t)bi);
    if (b.offsets.size() != (size_t)hkv * L * (NB + 1) || b.entries.size() != (size_t)hkv * L * n)
      fail("block sizes", -1, (int64_t)bi);
    ent.resize(n);
    for (int h = 0; h < hkv; h++)
      for (int t = 0; t < L; t++) {
        const uint16_t *c = codes + ((size_t)h * L + t) * m + start;
        std::fill(off.begin(), off.end(), 0u);
        for (int64_t j = 0; j < n; j++) off[c[j] + 1]++;
        for (int x = 0; x < NB; x++) off[x + 1] += off[x];
        std::vector<uint32_t> cur(off.begin(), off.end() - 1);
        for (int64_t j = 0; j < n; j++) ent[cur[c[j]]++] = (uint16_t)j;
        if (std::memcmp(off.data(), I.offsets(b, h, t), sizeof(uint32_t) * (NB + 1)) != 0)
          fail("offsets", h, t);
        if (std::memcmp(ent.data(), I.entries(b, h, t), sizeof(uint16_t) * n) != 0)
          fail("entries", h, t);
      }
  }
  return bad;
}

}  // namespace

int main(int argc, char **argv) {
  int64_t m = 98300, cap = 131072;
  int reps = 4, nthreads = 0;
  bool do_check = false, do_free = false;
  std::string dump;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&]() -> const char * {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--m") m = std::atoll(next());
    else if (a == "--cap") cap = std::atoll(next());
    else if (a == "--threads") nthreads = std::atoi(next());
    else if (a == "--reps") reps = std::atoi(next());
    else if (a == "--check") do_check = true;
    else if (a == "--free") do_free = true;
    else if (a == "--dump") dump = next();
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (cap < m) cap = m;
  set_threads(nthreads);
  const int hkv = 8, d = 128;
  lsh::Params p;  // K10L150, as index_params() with the default attention parameters
  p.K = 10;
  p.L = 150;
  p.seed = 42;
  std::printf("index build: m %lld, head_rows %lld, Hkv %d, d %d, K%dL%d, bf16, %d threads\n",
              (long long)m, (long long)cap, hkv, d, p.K, p.L, threads());

  // keys: ≈ N(0, 1) plus a per-dimension offset (real keys have a large mean)
  std::vector<uint16_t> keys((size_t)hkv * cap * d);
#pragma omp parallel for num_threads(threads()) schedule(static)
  for (int64_t r = 0; r < hkv * cap; r++)
    for (int e = 0; e < d; e++) {
      const uint64_t u = mix((uint64_t)r * d + e);
      const float g = ((float)(u & 0xffff) + (float)((u >> 16) & 0xffff) +
                       (float)((u >> 32) & 0xffff) + (float)((u >> 48) & 0xffff)) /
                          65536.0f * 1.7320508f - 3.4641016f;
      keys[(size_t)r * d + e] = f32_to_bf16(g + 2.0f * ((float)e / d - 0.5f));
    }
  const lsh::KeyRows kr{keys.data(), MP_DTYPE_BF16, cap};

  // codes, table-major [Hkv][L][m], as ForwardBackend::hash_keys gives them
  std::vector<uint16_t> codes((size_t)hkv * p.L * m);
  {
    lsh::Index proto(p, hkv, d);
    proto.init_mean(kr, m);
    std::vector<float> mean((size_t)hkv * d);
    for (int h = 0; h < hkv; h++)
      std::copy(proto.head(h).mean.begin(), proto.head(h).mean.end(), mean.begin() + h * d);
    const double t0 = omp_get_wtime();
    lsh::hash_keys_cpu(proto.projection(), kr, m, hkv, mean.data(), codes.data(), m);
    std::printf("(codes on the CPU, not timed below: %.1f ms)\n", (omp_get_wtime() - t0) * 1e3);
  }

  std::printf("%-6s %10s %10s | %8s %8s %8s %8s %8s  (ms) %8s\n", "build", "init_mean", "add",
              "alloc", "norms", "codes", "sort", "rest", "faults");
  auto faults = [] {
    rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (long)u.ru_minflt;
  };
  std::vector<std::unique_ptr<lsh::Index>> built;
  for (int r = 0; r < reps; r++) {
    auto idx = std::make_unique<lsh::Index>(p, hkv, d);
    const long f0 = faults();
    const double t0 = omp_get_wtime();
    idx->init_mean(kr, m);
    const double t1 = omp_get_wtime();
    const lsh::Codes c{codes.data(), m};
    idx->add(kr, m, /*merge=*/true, /*auto_merge=*/true, &c);
    const double t2 = omp_get_wtime();
    const lsh::Index::Times &T = idx->times();
    std::printf("%-6d %10.1f %10.1f | %8.1f %8.1f %8.1f %8.1f %8.1f       %8ld\n", r,
                (t1 - t0) * 1e3, (t2 - t1) * 1e3, T.alloc * 1e3, T.norms * 1e3, T.codes * 1e3,
                T.sort * 1e3, (T.total - T.alloc - T.norms - T.codes - T.sort) * 1e3,
                faults() - f0);
    if (do_free && r > 0) continue;  // keep the first one (--check, --dump)
    built.push_back(std::move(idx));
  }
  // The CPU part of a first build done on the GPU (ForwardBackend::build_first): μ and the
  // blocks' CSR arrive in one host buffer (here: copied out of build 0), Index::add_sorted
  // computes the norms and copies the blocks in. Its image must equal build 0's.
  bool sorted_same = true;
  {
    const lsh::Index &I0 = *built[0];
    const int nb = (int)I0.blocks().size();
    std::vector<float> mean((size_t)hkv * d);
    for (int h = 0; h < hkv; h++)
      std::copy(I0.head(h).mean.begin(), I0.head(h).mean.end(), mean.begin() + h * d);
    std::vector<std::vector<uint32_t>> off((size_t)nb);
    std::vector<std::vector<uint16_t>> ent((size_t)nb);
    lsh::SortedPiece piece;
    piece.mean = mean.data();
    piece.n_blocks = nb;
    for (int b = 0; b < nb; b++) {
      const lsh::Block &bl = I0.blocks()[(size_t)b];
      off[(size_t)b].assign(bl.offsets.begin(), bl.offsets.end());
      ent[(size_t)b].assign(bl.entries.begin(), bl.entries.end());
      piece.offsets[b] = off[(size_t)b].data();
      piece.entries[b] = ent[(size_t)b].data();
    }
    std::printf("%-6s %10s %10s | %8s %8s %8s %8s  (ms, add_sorted: the CPU part of a GPU "
                "first build)\n",
                "sorted", "", "total", "alloc", "norms", "copy", "rest");
    for (int r = 0; r < std::max(1, reps / 2); r++) {
      lsh::Index J(p, hkv, d);
      const double t0 = omp_get_wtime();
      J.add_sorted(kr, m, piece);
      const double t1 = omp_get_wtime();
      const lsh::Index::Times &T = J.times();
      std::printf("%-6d %10s %10.1f | %8.1f %8.1f %8.1f %8.1f\n", r, "", (t1 - t0) * 1e3,
                  T.alloc * 1e3, T.norms * 1e3, T.sort * 1e3,
                  (T.total - T.alloc - T.norms - T.sort) * 1e3);
      if (r == 0 && do_check) {
        std::vector<uint8_t> a, b;
        auto into = [](std::vector<uint8_t> &v) {
          return [&v](const void *q, size_t n) {
            v.insert(v.end(), (const uint8_t *)q, (const uint8_t *)q + n);
          };
        };
        I0.write(into(a));
        J.write(into(b));
        sorted_same = a == b;
      }
    }
  }
  const lsh::Index::Bytes B = built[0]->bytes();
  std::printf("index: %.1f MB entries, %.1f MB offsets, %.1f MB norms+means\n", B.entries / 1e6,
              B.offsets / 1e6, B.norms / 1e6);
  int rc = 0;
  if (do_check) {
    const int64_t bad = check(*built[0], kr, m, codes.data());
    std::printf("check against the plain build: %s (%lld mismatches)\n", bad ? "FAILED" : "ok",
                (long long)bad);
    if (bad) rc = 1;
    std::printf("add_sorted from build 0's blocks: %s\n",
                sorted_same ? "ok (the same image)" : "FAILED (the image differs)");
    if (!sorted_same) rc = 1;
  }
  if (!dump.empty()) {
    FILE *f = std::fopen(dump.c_str(), "wb");
    if (!f) {
      std::perror(dump.c_str());
      return 1;
    }
    built[0]->write([f](const void *q, size_t n) { std::fwrite(q, 1, n, f); });
    std::fclose(f);
    std::printf("image: %s (%llu bytes)\n", dump.c_str(),
                (unsigned long long)built[0]->image_bytes());
  }
  return rc;
}
