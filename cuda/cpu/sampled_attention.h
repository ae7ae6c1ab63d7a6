// sampled_attention.h — LSH collision retrieval and importance-weighted sampled attention
// over an Index (magicpig.md §6–8). See sampled_attention.cpp for the algorithm.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/lsh_index.h"

namespace mp::lsh {

// Flags (mirrors of enum mp_lsh_flags in magicpig.h).
enum : int32_t {
  FLAG_EXACT_U = 1,       // u and ln(u + eps) in float64 scalar code (reference path)
  FLAG_FORCE_U1 = 2,      // u ≡ 1: plain softmax over the sample
  FLAG_RETRIEVE_ALL = 4,  // the sample is every indexed token
  FLAG_CENTER_QUERY = 8,  // also subtract μ from the query (wrong on purpose: for tests)
};

// The keys and values of indexed tokens: token i of KV head h has its key row at
// k + (h·head_rows + base + i)·d (elements of dtype, F32 or BF16); values alike.
// Keys are the stored keys, not centered: the kernel subtracts q·μ where it needs
// q·(k − μ), which leaves the logits (and so the output and LSE) those of the stored keys.
struct KVView {
  const void *k = nullptr;
  const void *v = nullptr;
  int32_t dtype = 0;
  int64_t head_rows = 0;  // rows between KV heads (a cache's capacity)
  int64_t base = 0;       // row of indexed token 0 (e.g. the sink count)
};

struct Stats {
  int64_t rows = 0;     // distinct (sequence, KV head, token) K and V rows gathered
  int64_t sampled = 0;  // Σ over query heads of the sample size (nnz)
  int64_t entries = 0;  // bucket entries scanned + tail tokens compared
  int64_t bytes = 0;    // K/V rows + norms + entries + bucket offsets + tail codes touched
  int64_t tasks = 0;    // parallel tasks the call ran
};

// The samples of the offloaded KV heads, handed to Offload::ready.
struct OffloadSamples {
  int B = 0, H = 0, Hkv = 0, G = 0;
  const std::vector<int32_t> *ids = nullptr;  // [B·H] sample of (b, h): indexed token ids
  const float *qn = nullptr;                  // [B·H] ‖q‖
  const float *qmu = nullptr;                 // [B·H] q·μ of the head's KV head
  const uint8_t *kv = nullptr;                // [B·Hkv]: 1 = handed over in this call
};

// A share of a batch's sampled attention done elsewhere (split decode: the GPU gathers the
// K/V rows of these KV heads from mapped host memory while the CPU does the others). The
// CPU still retrieves every head's sample (phase A), offloaded heads first, and calls
// `ready` as soon as an offloaded KV head's G samples exist — on the pool thread that
// completed the last of them, while the other threads go on; KV heads completed by then
// and not yet handed over go in the same call (OffloadSamples::kv), each KV head exactly
// once, so `ready` may run several times per call, from different threads, even at once.
// The CPU skips their phases B–D: their out rows are zero and their lse2 −∞ (nnz still
// counts their samples). `ready` must not throw. Ignored with explicit sets or
// FLAG_RETRIEVE_ALL.
//
// With `blocks` set the caller retrieves and attends the offloaded KV heads' blocked tokens
// itself (the CUDA backend's GPU counts collisions in the index's page-locked blocks): the
// CPU retrieves and attends only their tail tokens, so their out rows and lse2 are the tail
// part of the sample (0 and −∞ when nothing in the tail collides), and nnz counts the tail
// part; `ready` is not called (may be null).
struct Offload {
  const uint8_t *kv_heads = nullptr;  // [B][Hkv]: 1 = offloaded
  void (*ready)(void *ctx, const OffloadSamples &s) = nullptr;
  void *ctx = nullptr;
  bool blocks = false;
};

// Where the time of one attention() call went, ms from its start (cheap clock reads; the
// CUDA backend's decode profile sums them per step).
struct Timing {
  double prepare = 0;  // query codes, constants and tasks laid out
  double phase_a = 0;  // every query head's sample retrieved
  double handoff = 0;  // the last Offload::ready returned (0: no offload)
  double head_max = 0;  // the longest phase A task (one query head's retrieval), ms
  double head_sum = 0;  // phase A tasks summed, ms
  int64_t entries = 0;  // bucket entries scanned + tail tokens compared, all heads
};

// One layer of a batch: B sequences, each with its index and KV.
struct Batch {
  const Index *const *idx = nullptr;  // [B], same KV-head count and head dim
  const KVView *kv = nullptr;         // [B] (attention only)
  int B = 0;
  int H = 0;                          // query heads, a multiple of the KV heads
  const float *q = nullptr;           // [B][H][d]
  const uint16_t *qcodes = nullptr;   // [B][H][L] precomputed query codes, or null
  const Offload *offload = nullptr;   // attention only: KV heads attended elsewhere
  Timing *timing = nullptr;           // attention only: filled in when non-null
};

// Per query head, the ids of indexed tokens that collide with the query in >= 2 tables:
// nnz[B][H], and indices[B][H][cap] ascending (the first min(nnz, cap); may be null).
void retrieve(const Batch &batch, int32_t flags, int64_t cap, int32_t *indices, int32_t *nnz,
              Stats *stats);

// Sampled attention: out[B][H][d] and lse2[B][H] (base-2 log-sum-exp of the logits
// ℓ_i = s_i/√d − ln(u_i + eps)); nnz[B][H] (may be null). With `sets` non-null the sample
// of (b, h) is the given ids sets[(b·H + h)·set_cap + j], j < set_n[b·H + h], instead of
// the retrieved set. An empty sample gives a zero output and lse2 = −∞.
void attention(const Batch &batch, int32_t flags, const int32_t *sets, const int32_t *set_n,
               int64_t set_cap, float *out, float *lse2, int32_t *nnz, Stats *stats);

// u(cos) = P[≥ 2 of L tables collide] with p = (1 − acos(cos)/π)^K, and the logit
// correction lnw = ln(u + eps) (ln u when eps = 0, floored at −100), by the same vector
// code the attention kernel uses.
void collision_weights(int K, int L, float eps, const float *cos, int64_t n, float *u,
                       float *lnw);

}  // namespace mp::lsh
