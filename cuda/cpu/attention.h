// attention.h — exact causal GQA attention on the CPU (prefill chunks and decode).
#pragma once

#include <cstdint>

namespace mp::cpu {

// Where keys and values live: K[t][h] = k + t*t_stride + h*h_stride (elements of dtype,
// head_dim contiguous), same for V. dtype F32 or BF16 (F16 also accepted).
//   mp_op_attention layout [T][Hkv][d]:     t_stride = Hkv*d, h_stride = d
//   Session layout        [Hkv][cap][d]:    t_stride = d,     h_stride = cap*d
struct KvView {
  const void *k;
  const void *v;
  int32_t dtype;
  int64_t t_stride;
  int64_t h_stride;
};

// q[n][H][d]; query i sits at position q_pos0 + i and attends keys 0..min(q_pos0+i, T-1)
// (query head h reads KV head h / (H/Hkv)). out[n][H][d]; lse2[n][H] (may be NULL) is
// the base-2 log-sum-exp of the scaled scores s = q·k/sqrt(d). Requires T >= 1,
// q_pos0 >= 0, H % Hkv == 0.
//
// Results for a query depend only on that query and its keys: not on n, on the other
// queries, or on the thread count (see attention.cpp), so chunked prefill and decode give
// bit-identical outputs.
void attention(const float *q, int64_t n, int32_t H, int32_t Hkv, int32_t d, int64_t q_pos0,
               int64_t T, const KvView &kv, float *out, float *lse2);

}  // namespace mp::cpu
