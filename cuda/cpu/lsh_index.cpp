/*
 * lsh_index.cpp — the compact LSH bucket index (magicpig.md §5, architecture.md §7).
 *
 * What it stores, per KV head h of one (sequence, layer):
 *   mean[d]        μ, the mean of the keys of the first non-empty add (centering on)
 *   norms[n]       ‖k_i − μ‖ in fp32
 *   blocks         tokens [0, n_blocked) in blocks of BLOCK = 65,536 tokens. A block is
 *                  its own per-table CSR:
 *                    offsets[L][2^K + 1]  uint32, bucket c of table t is entries
 *                                         [offsets[t][c], offsets[t][c+1]) of table t
 *                    entries[L][n_block]  uint16 in-block token ids, ascending within a
 *                                         bucket (the counting sort is stable)
 *   tail[n_tail][Lp] uint16 codes of tokens [n_blocked, n), token-major, each row padded
 *                  to Lp = L rounded up to 16 with zeros (the retrieval kernel compares
 *                  16 codes per instruction; query rows are padded with a value ≠ 0).
 *
 * Bytes per token per KV head: 2·L for entries (the reference: 4·L), plus
 * 4·L·(2^K + 1)/65,536 for offsets when blocks are full (K10L150: 300 + 9.4 B), plus 4 B
 * for the norm. Codes are not kept for blocked tokens (`codes()` reads them back from
 * the CSR).
 *
 * Appending (a session's later turns, flushed generated tokens): new tokens are hashed
 * into the tail (O(m·d·K·L) flops, nothing else). Retrieval scans the tail linearly
 * (L/16 vector compares per tail token per query head). When the tail reaches tail_max
 * tokens it is merged into the block structure: the last block's buckets are copied to
 * their new positions and the tail tokens, whose ids are all larger, are appended at the
 * end of their buckets, so the merge is O(L·(n_last_block + n_tail)) sequential copying
 * with no re-sort; tokens beyond the last block's capacity start new blocks (a counting
 * sort of their codes). Full blocks are never touched again.
 *
 * Precomputed codes (Codes, table-major [Hkv][L][ld]): a caller may hash the keys itself
 * (the CUDA backend does, for index builds: ForwardBackend::hash_keys) after init_mean();
 * add() then only computes the norms and sorts. The first build's codes are used in place
 * (the counting sort reads a table's codes contiguously); otherwise they are copied next to
 * the tail's or transposed into it.
 *
 * A first build computed elsewhere (SortedPiece: μ and the blocks' CSR, from the CUDA
 * backend's build_first) joins through add_sorted(): the norms are computed here (center(),
 * the same arithmetic), the blocks allocated as merge() does and their arrays copied in.
 *
 * Build time (a session commit builds one index per sparse layer while the user waits; the
 * 8B shape at 96K is 118 M entries, 236 MB, per layer; bench/cpu/index_build.cpp times it):
 *   - init_mean works on (head, 32 dimensions) items, each summing over the tokens in
 *     order, so μ does not depend on the thread count and 8 heads still feed 16 threads.
 *   - norms: one parallel loop over (head, 16 tokens); the tokens sit in SIMD lanes, each
 *     lane summing its squares in dimension order, the arithmetic of a scalar loop.
 *   - a new block's arrays are not zero-filled (HugeUninitAllocator); their pages are
 *     faulted in by all threads, each its own range (fault_in), then written once by the
 *     sort. (A zero-fill on one thread was most of the build on 16 cores.)
 *   - the counting sort is one parallel loop over (block, head, table) items: all heads at
 *     once when the codes of every head are at hand (precomputed, first build), otherwise
 *     one head at a time through a scratch buffer.
 * index_build --check compares the result with a plain reimplementation (sequential double
 * mean, scalar norms, one counting sort per table): μ, offsets and entries are bit for bit the
 * same; the norms are too on an AVX2 build, while on the AVX-512 GPU server 17% of them differ
 * from the scalar loop's in the last bit (largest relative difference 1.95e-7: the compiler
 * fuses the scalar and the lane-wise sums of squares differently).
 */
#include "cpu/lsh_index.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "common/common.h"

namespace mp::lsh {

// A block's arrays, faulted in and written, page-locked where a device reads them in place
// (huge_alloc.h pin_host; a no-op without a CUDA backend). The allocator unpins them.
static void pin_block(Block &b) {
  pin_host(b.offsets.data(), b.offsets.size() * sizeof(uint32_t));
  pin_host(b.entries.data(), b.entries.size() * sizeof(uint16_t));
}

Index::Index(const Params &p, int n_kv_heads, int head_dim)
    : p_(p), hkv_(n_kv_heads), d_(head_dim), lp_((p.L + 15) / 16 * 16) {
  MP_CHECK(p.K >= 1 && p.K <= 16, MP_ERR_INVALID, "LSH bits per table \"%d\" must be in 1..16",
           p.K);
  MP_CHECK(p.L >= 2 && p.L <= 1024, MP_ERR_INVALID, "LSH tables \"%d\" must be in 2..1024",
           p.L);
  MP_CHECK(n_kv_heads >= 1 && head_dim >= 1, MP_ERR_INVALID,
           "invalid index shape: %d KV heads, head dim %d", n_kv_heads, head_dim);
  MP_CHECK(p.eps >= 0.0f && std::isfinite(p.eps), MP_ERR_INVALID,
           "LSH epsilon \"%g\" must be finite and >= 0", (double)p.eps);
  MP_CHECK(p.tail_max >= 0, MP_ERR_INVALID, "tail_max \"%lld\" must be >= 0",
           (long long)p.tail_max);
  proj_ = Projection::get(p.seed, head_dim, p.K, p.L);
  heads_.resize(n_kv_heads);
  for (HeadIndex &hi : heads_) hi.mean.assign(head_dim, 0.0f);
  has_mean_ = !p.center;
}

// ------------------------------------------------------------
// adding tokens

static inline float key_at(const KeyRows &k, int64_t off) {
  switch (k.dtype) {
    case MP_DTYPE_F32: return ((const float *)k.k)[off];
    case MP_DTYPE_BF16: return bf16_to_f32(((const uint16_t *)k.k)[off]);
    default: return f16_to_f32(((const uint16_t *)k.k)[off]);
  }
}

// out[e] = key element off + e, e < n (the dtype switch hoisted out of the loop)
static inline void key_span(const KeyRows &k, int64_t off, int n, float *out) {
  switch (k.dtype) {
    case MP_DTYPE_F32: std::memcpy(out, (const float *)k.k + off, sizeof(float) * n); break;
    case MP_DTYPE_BF16: {
      const uint16_t *p = (const uint16_t *)k.k + off;
      for (int e = 0; e < n; e++) out[e] = bf16_to_f32(p[e]);
      break;
    }
    default:
      for (int e = 0; e < n; e++) out[e] = key_at(k, off + e);
  }
}

// μ[e] is the sum over tokens j = 0, 1, … in that order, in double, / m. Work items are
// (head, 32 dimensions: a 64-byte line of 16-bit keys), so the order, and μ, do not
// depend on the thread count, and 16 threads have 32 items (8 heads × 4).
void Index::init_mean(const KeyRows &keys, int64_t m) {
  if (has_mean_ || m <= 0) return;
  const int d = d_;
  constexpr int EC = 32;
  const int chunks = (d + EC - 1) / EC;
#pragma omp parallel for num_threads(threads()) schedule(dynamic, 1)
  for (int w = 0; w < hkv_ * chunks; w++) {
    const int h = w / chunks, e0 = (w % chunks) * EC, ne = std::min(EC, d - e0);
    double acc[EC] = {};
    float row[EC];
    for (int64_t j = 0; j < m; j++) {
      const int64_t base = (h * keys.head_rows + j) * d + e0;
      if (ne == EC) {
        key_span(keys, base, EC, row);
        for (int e = 0; e < EC; e++) acc[e] += row[e];
      } else {
        key_span(keys, base, ne, row);
        for (int e = 0; e < ne; e++) acc[e] += row[e];
      }
    }
    for (int e = 0; e < ne; e++) heads_[h].mean[e0 + e] = (float)(acc[e] / (double)m);
  }
  has_mean_ = true;
}

// Norms TW tokens at a time, one token per SIMD lane: lane l sums (k − μ)² of its token in
// dimension order, the arithmetic of the scalar loop
//   for e: v = k[e] − μ[e]; ss += v·v
// up to how the compiler fuses v·v + ss (bit for bit on AVX2; on AVX-512 a sixth of the norms
// differ from the scalar loop's in the last bit, see the file comment).
void Index::center(const KeyRows &keys, int64_t m, int h0, int h1, float *xs) {
  constexpr int TW = 16;
  const int d = d_;
  const int64_t tiles = (m + TW - 1) / TW;
  for (int h = h0; h < h1; h++) heads_[h].norms.resize(n_ + m);
#pragma omp parallel num_threads(threads())
  {
    std::vector<float> xt((size_t)d * TW, 0.0f), row(d);  // xt[e][lane]
#pragma omp for schedule(static)
    for (int64_t w = 0; w < (h1 - h0) * tiles; w++) {
      const int h = h0 + (int)(w / tiles);
      const int64_t j0 = (w % tiles) * TW;
      const int nt = (int)std::min<int64_t>(TW, m - j0);
      const float *mu = heads_[h].mean.data();
      for (int l = 0; l < nt; l++) {
        key_span(keys, (h * keys.head_rows + j0 + l) * d, d, row.data());
        for (int e = 0; e < d; e++) row[e] -= mu[e];
        for (int e = 0; e < d; e++) xt[(size_t)e * TW + l] = row[e];
        if (xs) std::memcpy(xs + (size_t)(j0 + l) * d, row.data(), sizeof(float) * d);
      }
      float ss[TW] = {};
      for (int e = 0; e < d; e++) {
        const float *v = &xt[(size_t)e * TW];
        for (int l = 0; l < TW; l++) ss[l] += v[l] * v[l];
      }
      float *norms = heads_[h].norms.data() + n_ + j0;
      for (int l = 0; l < nt; l++) norms[l] = std::sqrt(ss[l]);
    }
  }
}

void hash_keys_cpu(const Projection &P, const KeyRows &keys, int64_t m, int hkv,
                   const float *mean, uint16_t *codes, int64_t ld) {
  const int d = P.d, L = P.L;
  std::vector<float> x((size_t)m * d);
  for (int h = 0; h < hkv; h++) {
    const float *mu = mean + (size_t)h * d;
#pragma omp parallel for num_threads(threads()) schedule(static)
    for (int64_t j = 0; j < m; j++) {
      const int64_t base = (h * keys.head_rows + j) * d;
      for (int e = 0; e < d; e++) x[(size_t)j * d + e] = key_at(keys, base + e) - mu[e];
    }
    hash_rows(P, x.data(), m, d, codes + (size_t)h * L * ld, 1, ld);
  }
}

namespace {
// Adds the wall seconds of its scope to `acc` (Index::times()).
struct Tick {
  double t0;
  double &acc;
  ~Tick() { acc += omp_get_wtime() - t0; }
};
}  // namespace

void Index::add(const KeyRows &keys, int64_t m, bool merge, bool auto_merge, const Codes *codes) {
  MP_CHECK(m >= 0, MP_ERR_INVALID, "token count \"%lld\" must be >= 0", (long long)m);
  if (m == 0) {
    if (merge) merge_tail();
    return;
  }
  MP_CHECK(keys.dtype == MP_DTYPE_F32 || keys.dtype == MP_DTYPE_BF16 ||
               keys.dtype == MP_DTYPE_F16,
           MP_ERR_INVALID, "unknown key dtype %d", keys.dtype);
  MP_CHECK(!codes || (codes->p && codes->ld >= m), MP_ERR_INTERNAL,
           "precomputed LSH codes of %lld tokens have a leading dimension of %lld",
           (long long)m, (long long)(codes ? codes->ld : 0));
  // Bound the scratch memory: add very long inputs in pieces.
  if (m > ADD_PIECE) {
    for (int64_t o = 0; o < m; o += ADD_PIECE) {
      KeyRows part = keys;
      part.k = (const uint8_t *)keys.k + (size_t)o * d_ * dtype_size(keys.dtype);
      const int64_t c = std::min(ADD_PIECE, m - o);
      Codes cp;
      if (codes) cp = Codes{codes->p + o, codes->ld};
      add(part, c, merge && o + c == m, auto_merge, codes ? &cp : nullptr);
    }
    return;
  }
  const Tick tick{omp_get_wtime(), times_.total};
  const int d = d_, L = p_.L;
  init_mean(keys, m);
  const int64_t n_tail = n_ - n_blocked_;
  const bool do_merge = merge || (auto_merge && n_tail + m >= p_.tail_max);
  // The norms; x[j] = k_j − μ (fp32) for head h when hashing here, one head at a time.
  // With precomputed codes, the norms of all heads at once.
  std::vector<float> x(codes ? 0 : (size_t)m * d);
  auto center_head = [&](int h) {
    if (codes) return;
    const double t0 = omp_get_wtime();
    center(keys, m, h, h + 1, x.data());
    times_.norms += omp_get_wtime() - t0;
  };
  if (codes) {
    const double t0 = omp_get_wtime();
    center(keys, m, 0, hkv_, nullptr);
    times_.norms += omp_get_wtime() - t0;
  }
  // head h's precomputed codes of table t
  auto pre = [&](int h, int t) { return codes->p + ((size_t)h * L + t) * codes->ld; };
  if (do_merge) {
    const int64_t T = n_tail + m;
    std::vector<uint16_t> codesT;
    // the first build's codes are already [L][ld] for every head: all heads at once
    const bool in_place = codes && n_tail == 0;
    this->merge(T, in_place ? hkv_ : 1, [&](int h) -> std::pair<const uint16_t *, int64_t> {
      if (in_place) return {pre(h, 0), codes->ld};
      center_head(h);
      const Tick tick{omp_get_wtime(), times_.codes};
      codesT.resize((size_t)L * T);
      const HeadIndex &hi = heads_[h];
      for (int64_t j = 0; j < n_tail; j++)
        for (int t = 0; t < L; t++) codesT[(size_t)t * T + j] = hi.tail[(size_t)j * lp_ + t];
      if (codes) {
        for (int t = 0; t < L; t++)
          std::memcpy(codesT.data() + (size_t)t * T + n_tail, pre(h, t), sizeof(uint16_t) * m);
      } else {
        hash_rows(*proj_, x.data(), m, d, codesT.data() + n_tail, 1, T);
      }
      return {codesT.data(), T};
    });
    n_ += m;
    n_blocked_ = n_;
  } else {
    for (int h = 0; h < hkv_; h++) {
      center_head(h);
      HeadIndex &hi = heads_[h];
      hi.tail.resize((size_t)(n_tail + m) * lp_, 0);
      uint16_t *rows = hi.tail.data() + (size_t)n_tail * lp_;
      if (codes) {
#pragma omp parallel for num_threads(threads()) schedule(static)
        for (int64_t j = 0; j < m; j++)
          for (int t = 0; t < L; t++) rows[(size_t)j * lp_ + t] = pre(h, t)[j];
      } else {
        hash_rows(*proj_, x.data(), m, d, rows, lp_, 1);
      }
    }
    n_ += m;
  }
}

void Index::add_sorted(const KeyRows &keys, int64_t m, const SortedPiece &piece) {
  const int L = p_.L, NB = 1 << p_.K;
  const size_t NB1 = (size_t)NB + 1;
  const int n_blocks = (int)((m + BLOCK - 1) / BLOCK);
  MP_CHECK(n_ == 0 && !has_mean_ && p_.center && m > 0 && m <= ADD_PIECE && piece.mean &&
               piece.n_blocks == n_blocks,
           MP_ERR_INTERNAL,
           "a precomputed first LSH build of %lld tokens (%d blocks) does not fit an index of "
           "%lld tokens",
           (long long)m, piece.n_blocks, (long long)n_);
  MP_CHECK(keys.dtype == MP_DTYPE_F32 || keys.dtype == MP_DTYPE_BF16 ||
               keys.dtype == MP_DTYPE_F16,
           MP_ERR_INVALID, "unknown key dtype %d", keys.dtype);
  for (int b = 0; b < n_blocks; b++)
    MP_CHECK(piece.offsets[b] && piece.entries[b], MP_ERR_INTERNAL,
             "a precomputed first LSH build lacks block %d", b);
  const Tick tick{omp_get_wtime(), times_.total};
  for (int h = 0; h < hkv_; h++)
    std::copy(piece.mean + (size_t)h * d_, piece.mean + (size_t)(h + 1) * d_,
              heads_[h].mean.begin());
  has_mean_ = true;
  {
    const Tick t{omp_get_wtime(), times_.norms};
    center(keys, m, 0, hkv_, nullptr);
  }
  // The blocks merge() would make, allocated and faulted in the same way.
  std::vector<Block> fresh((size_t)n_blocks);
  {
    const Tick t{omp_get_wtime(), times_.alloc};
    for (int b = 0; b < n_blocks; b++) {
      Block &bl = fresh[(size_t)b];
      bl.start = (int64_t)b * BLOCK;
      bl.n = (int32_t)std::min<int64_t>(BLOCK, m - bl.start);
      bl.offsets.resize((size_t)hkv_ * L * NB1);
      bl.entries.resize((size_t)hkv_ * L * bl.n);
      fault_in(bl.offsets.data(), bl.offsets.size() * sizeof(uint32_t));
      fault_in(bl.entries.data(), bl.entries.size() * sizeof(uint16_t));
      pin_block(bl);
    }
  }
  {
    // one parallel copy over 1 MiB pieces of every block's two arrays
    const Tick t{omp_get_wtime(), times_.sort};
    struct Span {
      void *dst;
      const void *src;
      size_t bytes;
    };
    constexpr size_t PIECE = (size_t)1 << 20;
    std::vector<Span> spans;
    auto add_span = [&](void *dst, const void *src, size_t bytes) {
      for (size_t o = 0; o < bytes; o += PIECE)
        spans.push_back({(char *)dst + o, (const char *)src + o, std::min(PIECE, bytes - o)});
    };
    for (int b = 0; b < n_blocks; b++) {
      Block &bl = fresh[(size_t)b];
      add_span(bl.offsets.data(), piece.offsets[b], bl.offsets.size() * sizeof(uint32_t));
      add_span(bl.entries.data(), piece.entries[b], bl.entries.size() * sizeof(uint16_t));
    }
#pragma omp parallel for num_threads(threads()) schedule(dynamic, 1)
    for (int64_t i = 0; i < (int64_t)spans.size(); i++)
      std::memcpy(spans[(size_t)i].dst, spans[(size_t)i].src, spans[(size_t)i].bytes);
  }
  blocks_ = std::move(fresh);
  n_ = n_blocked_ = m;
}

void Index::truncate(int64_t m) {
  if (m >= n_) return;
  MP_CHECK(m >= n_blocked_, MP_ERR_STATE,
           "cannot drop LSH-indexed tokens below %lld: they are sorted into blocks",
           (long long)n_blocked_);
  for (HeadIndex &hi : heads_) {
    hi.tail.resize((size_t)(m - n_blocked_) * lp_);
    hi.norms.resize(m);
  }
  n_ = m;
}

void Index::merge_tail() {
  const int64_t T = n_ - n_blocked_;
  if (T == 0) return;
  const int L = p_.L;
  std::vector<uint16_t> codesT((size_t)L * T);
  merge(T, 1, [&](int h) -> std::pair<const uint16_t *, int64_t> {
    const HeadIndex &hi = heads_[h];
    for (int64_t j = 0; j < T; j++)
      for (int t = 0; t < L; t++) codesT[(size_t)t * T + j] = hi.tail[(size_t)j * lp_ + t];
    return {codesT.data(), T};
  });
  n_blocked_ = n_;
}

// Appends tokens to block `nb`'s (head h, table t) part: the tokens of `ob` (n0 of them,
// may be null) keep their order, then m new ones with codes codes[j] take ids
// n0 .. n0 + m − 1 at the end of their buckets. hist, cur: scratch of 2^K.
static void sort_table(const Index &I, const Block *ob, Block &nb, int h, int t,
                       const uint16_t *codes, int64_t m, uint32_t *hist, uint32_t *cur) {
  const int NB = 1 << I.params().K;
  const int64_t n0 = ob ? ob->n : 0, n1 = nb.n;
  std::fill(hist, hist + NB, 0u);
  for (int64_t j = 0; j < m; j++) hist[codes[j]]++;
  const uint32_t *oo = ob ? I.offsets(*ob, h, t) : nullptr;
  const uint16_t *oe = ob ? I.entries(*ob, h, t) : nullptr;
  uint32_t *no = const_cast<uint32_t *>(I.offsets(nb, h, t));
  uint16_t *ne = const_cast<uint16_t *>(I.entries(nb, h, t));
  uint32_t run = 0;
  if (oo) {
    for (int c = 0; c < NB; c++) {
      const uint32_t os = oo[c], oz = oo[c + 1] - oo[c];
      no[c] = os + run;
      if (oz) std::memcpy(ne + no[c], oe + os, sizeof(uint16_t) * oz);
      cur[c] = no[c] + oz;
      run += hist[c];
    }
  } else {
    for (int c = 0; c < NB; c++) {
      no[c] = cur[c] = run;
      run += hist[c];
    }
  }
  no[NB] = (uint32_t)n1;
  for (int64_t j = 0; j < m; j++) ne[cur[codes[j]]++] = (uint16_t)(n0 + j);
}

template <class CodesOf>
void Index::merge(int64_t T, int group, CodesOf &&codes_of) {
  const int L = p_.L, NB = 1 << p_.K;
  const size_t NB1 = (size_t)NB + 1;
  // plan: which block each run of the T tokens goes to
  struct Seg {
    int64_t off, m;
    bool extends;  // fills up the existing last block
  };
  std::vector<Seg> segs;
  std::vector<Block> fresh;
  int64_t off = 0;
  const bool extend = !blocks_.empty() && blocks_.back().n < BLOCK;
  int64_t next_start =
      blocks_.empty() ? 0 : blocks_.back().start + (extend ? BLOCK : blocks_.back().n);
  if (extend) {
    const int64_t k = std::min<int64_t>(BLOCK - blocks_.back().n, T);
    segs.push_back({0, k, true});
    Block b;
    b.start = blocks_.back().start;
    b.n = (int32_t)(blocks_.back().n + k);
    fresh.push_back(std::move(b));
    off = k;
  }
  while (off < T) {
    const int64_t k = std::min<int64_t>(BLOCK, T - off);
    segs.push_back({off, k, false});
    Block b;
    b.start = next_start;
    b.n = (int32_t)k;
    next_start += k;
    fresh.push_back(std::move(b));
    off += k;
  }
  // Not zeroed (HugeUninitAllocator): every element is written below. The pages are
  // faulted in by all threads first.
  double t0 = omp_get_wtime();
  for (Block &b : fresh) {
    b.offsets.resize((size_t)hkv_ * L * NB1);
    b.entries.resize((size_t)hkv_ * L * b.n);
    fault_in(b.offsets.data(), b.offsets.size() * sizeof(uint32_t));
    fault_in(b.entries.data(), b.entries.size() * sizeof(uint16_t));
    pin_block(b);
  }
  times_.alloc += omp_get_wtime() - t0;
  const int S = (int)segs.size();
  std::vector<std::pair<const uint16_t *, int64_t>> c((size_t)group);
  for (int h0 = 0; h0 < hkv_; h0 += group) {
    const int g = std::min(group, hkv_ - h0);
    for (int i = 0; i < g; i++) c[(size_t)i] = codes_of(h0 + i);
    t0 = omp_get_wtime();
    // items in memory order of the blocks: (segment, head, table)
    const int64_t items = (int64_t)S * g * L;
#pragma omp parallel num_threads(threads())
    {
      std::vector<uint32_t> hist((size_t)NB), cur((size_t)NB);
#pragma omp for schedule(dynamic, 1)
      for (int64_t w = 0; w < items; w++) {
        const int s = (int)(w / ((int64_t)g * L));
        const int i = (int)(w / L % g), t = (int)(w % L);
        const Seg &sg = segs[(size_t)s];
        sort_table(*this, sg.extends ? &blocks_.back() : nullptr, fresh[(size_t)s], h0 + i, t,
                   c[(size_t)i].first + (size_t)t * c[(size_t)i].second + sg.off, sg.m,
                   hist.data(), cur.data());
      }
    }
    times_.sort += omp_get_wtime() - t0;
  }
  size_t i = 0;
  if (!segs.empty() && segs[0].extends) blocks_.back() = std::move(fresh[i++]);
  for (; i < fresh.size(); i++) blocks_.push_back(std::move(fresh[i]));
  for (HeadIndex &hi : heads_) {
    hi.tail.clear();
    hi.tail.shrink_to_fit();
  }
}

// ------------------------------------------------------------
// inspection

Index::Bytes Index::bytes() const {
  Bytes r;
  for (const Block &b : blocks_) {
    r.entries += (int64_t)(b.entries.capacity() * sizeof(uint16_t));
    r.offsets += (int64_t)(b.offsets.capacity() * sizeof(uint32_t));
  }
  for (const HeadIndex &hi : heads_) {
    r.tail += (int64_t)(hi.tail.capacity() * sizeof(uint16_t));
    r.norms += (int64_t)((hi.norms.capacity() + hi.mean.capacity()) * sizeof(float));
  }
  return r;
}

void Index::codes(int h, int64_t start, int64_t count, uint16_t *out) const {
  const HeadIndex &hi = heads_[h];
  const int L = p_.L, NB = 1 << p_.K;
  const int64_t end = start + count;
  for (const Block &b : blocks_) {
    if (b.start + b.n <= start || b.start >= end) continue;
    for (int t = 0; t < L; t++) {
      const uint32_t *o = offsets(b, h, t);
      const uint16_t *e = entries(b, h, t);
      for (int c = 0; c < NB; c++)
        for (uint32_t i = o[c]; i < o[c + 1]; i++) {
          int64_t tok = b.start + e[i];
          if (tok >= start && tok < end) out[(tok - start) * L + t] = (uint16_t)c;
        }
    }
  }
  for (int64_t tok = std::max(start, n_blocked_); tok < end; tok++)
    for (int t = 0; t < L; t++)
      out[(tok - start) * L + t] = hi.tail[(size_t)(tok - n_blocked_) * lp_ + t];
}

void Index::table(int h, int t, uint32_t *offs, int32_t *indices) const {
  const HeadIndex &hi = heads_[h];
  const int NB = 1 << p_.K;
  const int64_t n_tail = n_ - n_blocked_;
  // tail tokens by bucket (stable)
  std::vector<uint32_t> th(NB + 1, 0);
  for (int64_t j = 0; j < n_tail; j++) th[hi.tail[(size_t)j * lp_ + t] + 1]++;
  for (int c = 0; c < NB; c++) th[c + 1] += th[c];
  std::vector<int32_t> tt(n_tail);
  {
    std::vector<uint32_t> cur(th.begin(), th.end() - 1);
    for (int64_t j = 0; j < n_tail; j++)
      tt[cur[hi.tail[(size_t)j * lp_ + t]]++] = (int32_t)(n_blocked_ + j);
  }
  uint32_t pos = 0;
  for (int c = 0; c < NB; c++) {
    offs[c] = pos;
    for (const Block &b : blocks_) {
      const uint32_t *o = offsets(b, h, t);
      const uint16_t *e = entries(b, h, t);
      for (uint32_t i = o[c]; i < o[c + 1]; i++) indices[pos++] = (int32_t)(b.start + e[i]);
    }
    for (uint32_t i = th[c]; i < th[c + 1]; i++) indices[pos++] = tt[i];
  }
  offs[NB] = pos;
}

// ------------------------------------------------------------
// serialisation

namespace {

constexpr char MAGIC[8] = {'M', 'P', 'L', 'S', 'H', 'I', 'X', '1'};

using Sink = std::function<void(const void *, size_t)>;

template <class T>
void put(const Sink &out, const T &v) {
  out(&v, sizeof(T));
}
template <class V>
void put_vec(const Sink &out, const V &v) {
  using T = typename V::value_type;
  put<uint64_t>(out, v.size());
  out(v.data(), v.size() * sizeof(T));
}

struct Reader {
  const uint8_t *p, *end;
  template <class T>
  T get() {
    MP_CHECK((size_t)(end - p) >= sizeof(T), MP_ERR_CORRUPT, "LSH index image is truncated");
    T v;
    std::memcpy(&v, p, sizeof(T));
    p += sizeof(T);
    return v;
  }
  template <class V>
  void get_vec(V &v, uint64_t expect) {
    using T = typename V::value_type;
    uint64_t n = get<uint64_t>();
    MP_CHECK(n == expect, MP_ERR_CORRUPT, "LSH index image has %llu elements where %llu belong",
             (unsigned long long)n, (unsigned long long)expect);
    MP_CHECK((size_t)(end - p) / sizeof(T) >= n, MP_ERR_CORRUPT, "LSH index image is truncated");
    v.resize(n);
    std::memcpy(v.data(), p, n * sizeof(T));
    p += n * sizeof(T);
  }
};

}  // namespace

uint64_t Index::image_bytes() const {
  uint64_t n = 0;
  write([&n](const void *, size_t k) { n += k; });
  return n;
}

void Index::write(const Sink &out) const {
  out(MAGIC, 8);
  put<int32_t>(out, p_.K);
  put<int32_t>(out, p_.L);
  put<uint64_t>(out, p_.seed);
  put<float>(out, p_.eps);
  put<int32_t>(out, p_.center ? 1 : 0);
  put<int64_t>(out, p_.tail_max);
  put<int32_t>(out, hkv_);
  put<int32_t>(out, d_);
  put<int64_t>(out, n_);
  put<int64_t>(out, n_blocked_);
  put<int32_t>(out, has_mean_ ? 1 : 0);
  for (const HeadIndex &hi : heads_) {
    put_vec(out, hi.mean);
    put_vec(out, hi.norms);
    put_vec(out, hi.tail);
  }
  put<uint64_t>(out, blocks_.size());
  for (const Block &b : blocks_) {
    put<int64_t>(out, b.start);
    put<int32_t>(out, b.n);
    put_vec(out, b.offsets);
    put_vec(out, b.entries);
  }
}

std::unique_ptr<Index> Index::read(const uint8_t *data, size_t size) {
  Reader r{data, data + size};
  MP_CHECK(size >= 8 && std::memcmp(data, MAGIC, 8) == 0, MP_ERR_CORRUPT,
           "not an LSH index image");
  r.p += 8;
  Params p;
  p.K = r.get<int32_t>();
  p.L = r.get<int32_t>();
  p.seed = r.get<uint64_t>();
  p.eps = r.get<float>();
  p.center = r.get<int32_t>() != 0;
  p.tail_max = r.get<int64_t>();
  int hkv = r.get<int32_t>(), d = r.get<int32_t>();
  MP_CHECK(p.K >= 1 && p.K <= 16 && p.L >= 2 && p.L <= 1024 && hkv >= 1 && hkv <= 4096 &&
               d >= 1 && d <= 65536,
           MP_ERR_CORRUPT, "LSH index image has an invalid shape");
  auto idx = std::make_unique<Index>(p, hkv, d);
  idx->n_ = r.get<int64_t>();
  idx->n_blocked_ = r.get<int64_t>();
  idx->has_mean_ = r.get<int32_t>() != 0;
  MP_CHECK(idx->n_ >= 0 && idx->n_blocked_ >= 0 && idx->n_blocked_ <= idx->n_, MP_ERR_CORRUPT,
           "LSH index image has invalid token counts");
  const int NB = 1 << p.K;
  for (HeadIndex &hi : idx->heads_) {
    r.get_vec(hi.mean, (uint64_t)d);
    r.get_vec(hi.norms, (uint64_t)idx->n_);
    r.get_vec(hi.tail, (uint64_t)(idx->n_ - idx->n_blocked_) * idx->lp_);
  }
  const uint64_t nb = r.get<uint64_t>();
  MP_CHECK(nb == (uint64_t)((idx->n_blocked_ + BLOCK - 1) / BLOCK), MP_ERR_CORRUPT,
           "LSH index image has a wrong block count");
  idx->blocks_.resize(nb);
  int64_t start = 0;
  for (Block &b : idx->blocks_) {
    b.start = r.get<int64_t>();
    b.n = r.get<int32_t>();
    MP_CHECK(b.start == start && b.n > 0 && b.n <= BLOCK && b.start + b.n <= idx->n_blocked_,
             MP_ERR_CORRUPT, "LSH index image has an invalid block");
    r.get_vec(b.offsets, (uint64_t)hkv * p.L * (NB + 1));
    r.get_vec(b.entries, (uint64_t)hkv * p.L * b.n);
    for (int h = 0; h < hkv; h++)
      for (int t = 0; t < p.L; t++) {
        const uint32_t *o = idx->offsets(b, h, t);
        MP_CHECK(o[0] == 0 && o[NB] == (uint32_t)b.n, MP_ERR_CORRUPT,
                 "LSH index image has invalid bucket offsets");
        for (int c = 0; c < NB; c++)
          MP_CHECK(o[c] <= o[c + 1], MP_ERR_CORRUPT, "LSH index image has invalid bucket offsets");
        const uint16_t *e = idx->entries(b, h, t);
        for (int32_t i = 0; i < b.n; i++)
          MP_CHECK(e[i] < b.n, MP_ERR_CORRUPT, "LSH index image has an invalid entry");
      }
    pin_block(b);
    start += b.n;
  }
  MP_CHECK(start == idx->n_blocked_, MP_ERR_CORRUPT, "LSH index image blocks do not cover it");
  MP_CHECK(r.p == r.end, MP_ERR_CORRUPT, "LSH index image has trailing bytes");
  return idx;
}

}  // namespace mp::lsh
