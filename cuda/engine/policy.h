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

// mp_session_commit: end of a turn (index the new tokens). No-op for non-MAGICPIG.
void policy_commit(Session &s);

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
