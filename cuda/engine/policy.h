// policy.h — the attention-policy hooks the forward pass calls for a session.
//
// The engine and its backends compute exact dense attention themselves for prefill and
// for dense layers. Everything that depends on the session's policy (MAGICPIG, TOPK,
// QUEST, ORACLE) goes through the functions below, so that the policy code lives in one
// place (its own files) and the forward backends never need to know the methods.
//
// Current implementation (cuda/engine/policy.cpp): a FALLBACK that computes exact dense
// attention for every method, indexes nothing and counts every key as attended. The
// MagicPIG work replaces policy.cpp with the real methods (magicpig.md), keeping these
// signatures; it keeps its per-session state in a PolicyState subclass in
// `Session::policy`.
#pragma once

#include <cstdint>
#include <memory>

#include "cpu/sampled_attention.h"
#include "engine/backend.h"
#include "engine/session.h"

namespace mp {

class SnapshotWriter;
class SnapshotReader;

// Decode attention for one (session, sparse layer): the method is not DENSE and
// !s.layer_is_dense(layer). The query sits at position `pos` (= s.n_tokens() at the start
// of the step); keys/values of rows 0..pos of `layer` are in the session (row `pos` holds
// this step's own key and value). q[H][d] after RoPE; writes out[H][d]. Called once per
// session and layer per step, possibly from inside an OpenMP parallel region of the
// caller over sessions; it may open its own parallel regions.
// Should add the keys it attended and the size of the offloaded region with
// s.add_key_stats().
void policy_decode_attention(Session &s, int32_t layer, int64_t pos, const float *q,
                             float *out);

// ------------------------------------------------------------
// Split decode (a forward backend that attends the exact part itself, e.g. the CUDA
// backend: sinks, local window and generated tokens on the GPU; the offloaded part on the
// CPU; the two merged by their base-2 LSEs). For a sparse layer at a decode step whose
// query sits at `pos`, the session's rows 0..pos split into
//   exact     [0, min(S, pos + 1)) ∪ [E, pos]    (S = attention.sinks)
//   offloaded [S, E)                             (empty when E == S: all rows are exact)
// and merge(exact, offloaded) equals policy_decode_attention() up to rounding (with
// attention.window = 0 the split path keeps the query's own row exact: E <= pos; the host
// copy of row `pos` need not exist during the step).
//
// policy_split_begin: does what policy_decode_attention() does before attending (MAGICPIG
// flushes the generation buffer into the index; needs host rows < pos only) and returns
// E >= S. Call once per (session, sparse layer, step), before policy_split_offloaded.
int64_t policy_split_begin(Session &s, int32_t layer, int64_t pos);

// The offloaded part for n sessions of one step at one layer (sparse in each of them):
// q[n][H][d] after RoPE, E[i] from policy_split_begin. Writes out[n][H][d] and base-2
// lse2[n][H] (zeros and −∞ for a session with E == S) and adds each session's key stats
// as policy_decode_attention() would. MAGICPIG sessions are retrieved and sampled in one
// batched call (OpenMP over sessions × heads); runs on the calling thread.
//
// `gpu` (may be null): MAGICPIG KV heads whose offloaded part the caller attends itself
// (the CUDA backend gathers their rows from mapped host memory on the GPU while the CPU
// does the rest): gpu->kv_heads[i·Hkv + hkv] = 1. Their samples are retrieved here and
// handed to gpu->ready (on a worker thread, before the CPU's share is done; rows[j] is
// the batch row of sample row j, E of each row gives the sample's key range [S, E));
// their out rows are zero and lse2 −∞ here, and their key stats are counted here. With
// gpu->blocks the caller has retrieved and attends their indexes' blocked tokens itself:
// here they get their tail tokens only (out and lse2 are the tail's part, key stats count
// the tail's samples; the caller adds the blocked ones).
//
// `timing` (may be null): where the MAGICPIG call's time went (lsh::Timing). `qcodes` (may
// be null): the MAGICPIG sessions' query codes [n][H][L], as lsh::hash_rows computes them
// with each session's index projection (the CUDA backend hashes q on the GPU); null: the
// CPU hashes them. Rows of other sessions are not read.
struct SplitGpuShare {
  const uint8_t *kv_heads = nullptr;  // [n][Hkv]
  void (*ready)(void *ctx, const lsh::OffloadSamples &s, const int32_t *rows) = nullptr;
  void *ctx = nullptr;
  // the caller also retrieved these KV heads' samples over the indexes' blocks (lsh::Offload
  // blocks): the CPU does their tail tokens only, and `ready` is not called
  bool blocks = false;
};
void policy_split_offloaded(Session *const *ss, int32_t n, int32_t layer, const int64_t *pos,
                            const int64_t *E, const float *q, float *out, float *lse2,
                            const SplitGpuShare *gpu = nullptr, lsh::Timing *timing = nullptr,
                            const uint16_t *qcodes = nullptr);

// The index of a MAGICPIG session's layer (null before its first build or for another
// method), for a backend that attends part of the sample itself.
const lsh::Index *policy_index(Session &s, int32_t layer);

// mp_session_prefill_commit: a MAGICPIG session's first index build, layer by layer
// beside the prefill that ends the turn (architecture.md §4: the CPU builds a layer's index
// while the GPU computes the next). Made before the prefill for the length n_after the
// session will have (null: nothing to build beside it — another method, every sparse layer
// already indexed, a short prompt, a CPU engine without "lsh" mode 3); the prefill reports
// its layers to it (PrefillObserver); then either policy_commit(s, build) adopts what it
// built for that same range, or cancel() stops it (the prefill failed). Destroying it
// cancels and joins.
class PrefillIndexBuild : public PrefillObserver {
 public:
  virtual ~PrefillIndexBuild() = default;
  virtual void cancel() = 0;
};
std::unique_ptr<PrefillIndexBuild> policy_prefill_index(Session &s, int64_t n_after);

// mp_session_commit: end of a turn (index the new tokens). No-op for non-MAGICPIG.
// `built`: the build that ran beside the prefill (policy_prefill_index), joined here; the
// layers it finished are taken as they are, the commit builds the rest.
void policy_commit(Session &s, PrefillIndexBuild *built = nullptr);

// The session's length became n (mp_session_truncate or a rollback after an aborted
// prefill). The engine has already checked n >= policy_n_indexed(s).
void policy_truncate(Session &s, int64_t n);

// Tokens covered by the policy's index (mp_session_info.n_indexed; truncate refuses to
// cut below it).
int64_t policy_n_indexed(const Session &s);
// Host bytes of the policy's state (mp_session_info.host_index_bytes).
int64_t policy_host_bytes(const Session &s);

// Snapshots: write the policy's sections (any tags but the engine's, see snapshot.h) ...
void policy_save(const Session &s, SnapshotWriter &w);
// ... and read back one section that the engine does not know. Return false when the tag
// is not the policy's either (the engine then skips the section).
bool policy_load_section(Session &s, uint32_t tag, SnapshotReader &r);

}  // namespace mp
