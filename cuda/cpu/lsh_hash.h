// lsh_hash.h — SimHash hyperplanes and integer-exact code packing (magicpig.md §4).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace mp::lsh {

// R[d][K·L] ~ N(0, 1), row-major, drawn from mp::Rng(seed) in that order.
void projection(uint64_t seed, int d, int K, int L, float *R);

// A hyperplane matrix laid out for the hashing kernel: columns zero-padded to a multiple
// of 64 so that every 64-column tile is full. Immutable once made; shared between the
// indexes of a session (one R per (seed, d, K, L)).
struct Projection {
  uint64_t seed = 0;
  bool seeded = false;  // false: made from a caller's matrix (mp_lsh_hash)
  int d = 0, K = 0, L = 0;
  int cols = 0;      // K·L
  int cols_pad = 0;  // cols rounded up to 64
  std::vector<float> R;  // [d][cols_pad]

  // The cached projection for (seed, d, K, L); made on first use.
  static std::shared_ptr<const Projection> get(uint64_t seed, int d, int K, int L);
  // A projection from an explicit R[d][K·L].
  static std::shared_ptr<const Projection> from_matrix(const float *R, int d, int K, int L);
};

// Codes of n rows x[i][0..d) (row stride ldx floats): bit j of table t is
// [x·R[:, t·K + j] > 0], code = Σ_j bit_j·2^j. The code of row i, table t is written to
// codes[i·row_stride + t·table_stride], so both token-major [n][L] (row_stride = L,
// table_stride = 1) and table-major [L][n] layouts come out directly. Parallel (OpenMP)
// over row and column tiles.
void hash_rows(const Projection &P, const float *x, int64_t n, int64_t ldx, uint16_t *codes,
               int64_t row_stride, int64_t table_stride);

}  // namespace mp::lsh
