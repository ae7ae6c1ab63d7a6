// lsh_index.h — the compact LSH bucket index of one (sequence, layer): per KV head and
// table, a CSR of token ids by bucket, in blocks of 65,536 tokens with 16-bit entries,
// plus an unsorted tail of recently appended tokens. See lsh_index.cpp for the layout.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "cpu/huge_alloc.h"
#include "cpu/lsh_hash.h"

namespace mp::lsh {

constexpr int BLOCK_BITS = 16;
constexpr int64_t BLOCK = (int64_t)1 << BLOCK_BITS;  // tokens per block (16-bit entries)

struct Params {
  int K = 10;                // bits per table, 1..16
  int L = 150;               // tables, 2..1024
  uint64_t seed = 0x5eed;    // hyperplanes: Projection::get(seed, d, K, L)
  float eps = 1e-4f;         // ℓ = s/√d − ln(u + eps)
  bool center = true;        // subtract the mean key (per KV head) before hashing
  int64_t tail_max = 4096;   // appended tokens kept unsorted before a merge into blocks
};

// One block: tokens [start, start + n) of every KV head, n ≤ BLOCK. Both arrays are
// shared by the KV heads (one huge-page allocation each, so bucket lookups stay in the TLB).
// resize() does not zero them (HugeUninitAllocator): the merge writes every element.
struct Block {
  int64_t start = 0;
  int32_t n = 0;
  // [Hkv][L][2^K + 1]: bucket c of (head h, table t) is entries [o[c], o[c+1]) of (h, t)
  std::vector<uint32_t, HugeUninitAllocator<uint32_t>> offsets;
  // [Hkv][L][n]: in-block token ids, sorted by (bucket, id)
  std::vector<uint16_t, HugeUninitAllocator<uint16_t>> entries;
};

struct HeadIndex {
  std::vector<uint16_t> tail; // [n_tail][Lp] codes of tokens [n_blocked, n), padded with 0
  std::vector<float> norms;   // [n] ‖k − μ‖ in fp32
  std::vector<float> mean;    // [d] μ (zeros when centering is off)
};

// Where the keys of tokens come from when tokens are added: the key of token j of KV
// head h is the row k + (h·head_rows + j)·d (elements of `dtype`, F32/F16/BF16).
struct KeyRows {
  const void *k = nullptr;
  int32_t dtype = 0;
  int64_t head_rows = 0;
};

// Codes of added tokens computed elsewhere (e.g. on the GPU, ForwardBackend::hash_keys),
// table-major: the code of token j (of this add) of KV head h in table t is
// p[(h·L + t)·ld + j], ld >= the tokens added. They must be what Index::add would compute:
// hash_rows() of k − μ with this index's projection and mean (hash_keys_cpu below).
struct Codes {
  const uint16_t *p = nullptr;
  int64_t ld = 0;
};

// Index::add splits longer inputs into pieces of this many tokens (bounded scratch); a
// caller that precomputes codes piece by piece uses the same split, so that the result is
// the same index.
constexpr int64_t ADD_PIECE = 4 * BLOCK;

// A first build's μ and sorted blocks computed elsewhere (ForwardBackend::build_first, on
// the GPU): what Index::add(keys, m, merge = true) computes for an empty index and
// m <= ADD_PIECE, except the norms. Block b holds tokens [b·BLOCK, min(m, (b+1)·BLOCK)),
// n_b of them, in Block's layout: offsets[b] [Hkv][L][2^K + 1], entries[b] [Hkv][L][n_b].
struct SortedPiece {
  const float *mean = nullptr;  // [Hkv][d]
  int n_blocks = 0;
  const uint32_t *offsets[ADD_PIECE / BLOCK] = {};
  const uint16_t *entries[ADD_PIECE / BLOCK] = {};
};

class Index {
 public:
  Index(const Params &p, int n_kv_heads, int head_dim);

  // Adds m tokens (the next ids n .. n+m−1). On the first non-empty call with centering
  // on, μ is the mean of these keys (per KV head) and stays fixed afterwards. Tokens go to
  // the tail; it is merged into the blocks when `merge` is set, or when it reaches
  // tail_max and `auto_merge` is set.
  // `codes` (may be null): the tokens' codes computed elsewhere (see Codes); the index is
  // then the same as without them, the keys are only read for μ and the norms.
  void add(const KeyRows &keys, int64_t m, bool merge = false, bool auto_merge = true,
           const Codes *codes = nullptr);
  // The first add (an empty index, centering on, 0 < m <= ADD_PIECE, merged) from a
  // precomputed μ and CSR (SortedPiece): computes the norms from `keys` and copies the
  // blocks in. The index is then byte for byte what add(keys, m, true) builds when the piece
  // holds what that add computes. MP_ERR_INTERNAL when the index is not empty.
  void add_sorted(const KeyRows &keys, int64_t m, const SortedPiece &piece);
  // Sets μ from the first m keys when the index has none yet (what the first add does), so
  // that codes can be computed before that add. No-op once μ exists or with centering off.
  void init_mean(const KeyRows &keys, int64_t m);
  // Merges the tail into the blocks now.
  void merge_tail();
  // Keeps tokens [0, m): only tail tokens can be dropped (m >= n_blocked(), else
  // MP_ERR_STATE). The index is then exactly what it was before they were added.
  void truncate(int64_t m);

  const Params &params() const { return p_; }
  int n_kv_heads() const { return hkv_; }
  int head_dim() const { return d_; }
  int64_t n() const { return n_; }
  int64_t n_blocked() const { return n_blocked_; }
  int64_t n_tail() const { return n_ - n_blocked_; }
  int Lp() const { return lp_; }
  bool has_mean() const { return has_mean_; }
  const Projection &projection() const { return *proj_; }
  const HeadIndex &head(int h) const { return heads_[h]; }
  const std::vector<Block> &blocks() const { return blocks_; }
  // Bucket offsets [2^K + 1] and entries [n] of (block b, head h, table t).
  const uint32_t *offsets(const Block &b, int h, int t) const {
    return &b.offsets[((size_t)h * p_.L + t) * ((1u << p_.K) + 1)];
  }
  const uint16_t *entries(const Block &b, int h, int t) const {
    return &b.entries[((size_t)h * p_.L + t) * b.n];
  }

  // Bytes held: CSR entries, CSR offsets, tail codes, norms + means.
  struct Bytes {
    int64_t entries = 0, offsets = 0, tail = 0, norms = 0;
    int64_t total() const { return entries + offsets + tail + norms; }
  };
  Bytes bytes() const;

  // Wall seconds spent by add() on this index so far, by phase (summed over
  // calls; bench/cpu/index_build.cpp reads them). add_sorted counts its copy of the blocks
  // as `sort`.
  struct Times {
    double alloc = 0, norms = 0, codes = 0, sort = 0, total = 0;
  };
  const Times &times() const { return times_; }

  // Codes of tokens [start, start + count) of head h, token-major out[count][L]. Blocked
  // tokens' codes are read back from the CSR (codes are not stored for them).
  void codes(int h, int64_t start, int64_t count, uint16_t *out) const;
  // The CSR of (head h, table t) over all n tokens in global ids: offsets[2^K + 1],
  // indices[n], ascending ids within each bucket.
  void table(int h, int t, uint32_t *offsets, int32_t *indices) const;

  // Serialisation: a flat byte image of everything but the projection (rebuilt from the
  // seed), streamed to `sink` in pieces; image_bytes() is its exact size. `read` throws
  // MP_ERR_CORRUPT on a malformed image.
  void write(const std::function<void(const void *, size_t)> &sink) const;
  uint64_t image_bytes() const;
  static std::unique_ptr<Index> read(const uint8_t *data, size_t size);

 private:
  // Tokens [n_blocked, n_blocked + T) join the blocks; codes_of(h) gives head h's codes
  // as {pointer, ld}: token j of table t at pointer[t·ld + j], j < T. Heads are sorted
  // `group` at a time, one parallel loop over (block, head, table) per group; codes_of is
  // called once per head, in order, for all heads of a group before it is sorted, so the
  // pointers of a group must be valid together (one scratch buffer: group = 1).
  template <class CodesOf>
  void merge(int64_t T, int group, CodesOf &&codes_of);
  // Appends the norms ‖k_j − μ‖ of the m added tokens of heads [h0, h1) (one parallel
  // loop); with xs (h1 = h0 + 1), also k_j − μ in fp32 to xs[j·d + e].
  void center(const KeyRows &keys, int64_t m, int h0, int h1, float *xs);

  Params p_;
  int hkv_, d_, lp_;
  int64_t n_ = 0, n_blocked_ = 0;
  bool has_mean_ = false;
  std::shared_ptr<const Projection> proj_;
  std::vector<HeadIndex> heads_;
  std::vector<Block> blocks_;  // in token order, all full but the last
  Times times_;
};

// Codes of tokens 0..m−1 of `keys` (Hkv heads) centered by mean[Hkv][d], table-major
// into codes[(h·L + t)·ld + j]: exactly the codes Index::add computes (the host producer of
// Codes; the CUDA backend's hash_keys is the device one).
void hash_keys_cpu(const Projection &P, const KeyRows &keys, int64_t m, int hkv,
                   const float *mean, uint16_t *codes, int64_t ld);

}  // namespace mp::lsh
