// rope.h — rotary position embeddings on the CPU (both pair conventions, Llama-3 scaling).
#pragma once

#include <cstdint>
#include <vector>

#include "common/common.h"

namespace mp::cpu {

// inv_freq[i] = theta^(−2i/head_dim) for i < head_dim/2, in double, then Llama-3 scaling
// when rope.scaling == MP_ROPE_SCALING_LLAMA3 (Hugging Face `_compute_llama3_parameters`).
std::vector<double> rope_inv_freq(const mp_rope_params &rope, int32_t head_dim);

// cos/sin tables [n][head_dim/2] for positions[n]: angle = pos · inv_freq[i] in double.
void rope_tables(const double *inv_freq, int32_t half, const int32_t *positions, int64_t n,
                 float *cos_out, float *sin_out);

// Rotates x[n][heads][head_dim] in place with the tables of rope_tables().
//   MP_ROPE_INTERLEAVED: pairs (x[2i], x[2i+1])      (GGUF, llama2.c)
//   MP_ROPE_HALF:        pairs (x[i], x[i + d/2])     (Hugging Face)
// (a, b) -> (a·cos − b·sin, a·sin + b·cos), in float.
void rope_apply(float *x, int64_t n, int32_t heads, int32_t head_dim, int32_t style,
                const float *cos_t, const float *sin_t);

// Both steps, for mp_op_rope.
void rope(float *x, int64_t n, int32_t heads, int32_t head_dim, const int32_t *positions,
          const mp_rope_params &rope);

}  // namespace mp::cpu
