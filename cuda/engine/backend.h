// backend.h — the forward-pass backend interface of the engine.
//
// An Engine owns exactly one ForwardBackend, chosen at mp_engine_create (AUTO resolves to
// CUDA when make_cuda_backend is built and a device is usable, else CPU). The engine keeps
// the public API semantics (argument checks, session ownership, rollback on error and
// abort, length bookkeeping); a backend only computes.
//
// Contract
// --------
// * Calls are serialised by the caller (magicpig.h threading rule): a backend never sees
//   two calls at once for one engine, so it may keep workspaces as members. The one
//   exception: during a prefill with an observer, hash_keys / build_first run on another
//   thread for the layers already written (their workspaces are their own; device memory
//   accounting must be thread-safe).
// * prepare() runs once in mp_engine_finalize, after every weight is loaded (host copies
//   in Engine::tensor(), in the engine's weight dtype). Upload/convert here.
// * prefill(s, tokens, n, logits, abort, written):
//     - the first token sits at position p0 = s.n_tokens(); the engine has already called
//       s.reserve(p0 + n), so rows p0..p0+n-1 of every (layer, kv head) may be written.
//     - attention is dense and exact (causal) over rows 0..p of the session's cache, for
//       every layer, whatever the session's policy.
//     - the backend publishes progress with s.set_n_tokens() (e.g. after each chunk) or at
//       the end; at return with MP_OK, s.n_tokens() must be p0 + n and rows 0..p0+n-1 of
//       the host KV (Session::k_row/v_row) must hold the keys (after RoPE) and values.
//       A device backend that keeps KV on the device must have written it back by then.
//     - logits (may be NULL): [vocab] of the last token.
//     - poll `abort` (may be NULL; read it with abort_requested()) between chunks and
//       layers; when set, return MP_ABORTED. On MP_ABORTED or a throw the engine restores
//       s.n_tokens() to p0 and calls session_truncated(s, p0); rows beyond are garbage.
//     - `written` (may be NULL; mp_session_prefill_commit): call written->layer_written(l)
//       once the keys of rows 0..p0+n-1 of layer l are all in the host cache, for every
//       layer in increasing order, from any thread (the CUDA backend calls it from a stream
//       callback after the layer's write-back). Another thread then reads those keys while
//       the call goes on (the CPU builds the layer's LSH index): once signalled, a layer's
//       host keys must not change, and nothing but s.set_n_tokens() may change the session.
// * decode(ss, n, tokens, logits, abort): one token for each of n distinct sessions.
//     - session i's token sits at position p_i = ss[i]->n_tokens(); the engine has called
//       reserve(p_i + 1). Write that row's K/V for every layer, attend to rows 0..p_i.
//     - attention per (session, layer): when ss[i]->layer_is_dense(l) or the method is
//       DENSE, exact attention; otherwise call policy_decode_attention() (policy.h) — the
//       MagicPIG/TopK/Quest/oracle entry point — with the session's rows 0..p_i.
//     - logits[i][vocab] for each session. Do NOT change n_tokens: on MP_OK the engine
//       sets n_tokens = p_i + 1 for every session; on MP_ABORTED or a throw it leaves every
//       length unchanged ("no session changed").
//     - batch the projections: one matmul per weight per step over all n rows.
// * session_truncated(s, n): the session's length became n (rollback or mp_session_truncate);
//   drop any device copies of rows >= n. session_bytes(s): device bytes held for s.
// * Backends throw mp::Error for failures (MP_ERR_CUDA, MP_ERR_OOM...); never print/abort.
#pragma once

#include <cstdint>
#include <memory>

#include "common/common.h"
#include "engine/buffer.h"

namespace mp {

class Engine;
class Session;
namespace lsh {
struct Projection;
struct SortedPiece;
}

// Reads a caller's abort flag (may be NULL) written by another thread.
inline bool abort_requested(const int32_t *flag) {
  return flag && __atomic_load_n(flag, __ATOMIC_RELAXED) != 0;
}

// A prefill's progress, layer by layer (mp_session_prefill_commit's index build).
struct PrefillObserver {
  virtual void layer_written(int32_t layer) = 0;

 protected:
  ~PrefillObserver() = default;
};

struct ForwardBackend {
  virtual ~ForwardBackend() = default;

  // MP_BACKEND_CPU or MP_BACKEND_CUDA.
  virtual int32_t kind() const = 0;

  // After all weights are loaded (mp_engine_finalize).
  virtual void prepare() = 0;

  // See the contract above. Return MP_OK or MP_ABORTED; throw on errors.
  virtual int32_t prefill(Session &s, const int32_t *tokens, int32_t n, float *logits,
                          const int32_t *abort, PrefillObserver *written) = 0;
  virtual int32_t decode(Session *const *sessions, int32_t n, const int32_t *tokens,
                         float *logits, const int32_t *abort) = 0;

  // Hooks with no-op defaults.

  // mp_engine_init_random: a device backend may generate the weights on the device (no
  // host copies: an 8B model's 16 GB never touch host memory). Return true when it did;
  // the engine then marks every tensor loaded without host data, and prepare() must not
  // expect host copies of them.
  virtual bool init_random(uint64_t /*seed*/, float /*scale*/) { return false; }
  virtual void session_created(Session &) {}
  virtual void session_truncated(Session &, int64_t /*n*/) {}
  virtual int64_t session_device_bytes(const Session &) const { return 0; }

  // mp_engine_get_info: fill backend-specific fields (device, gpu_bytes_*, device_name).
  virtual void fill_info(mp_engine_info *) const {}

  // Where sessions' host KV caches are allocated (Session::reserve): nullptr = plain
  // aligned_alloc. The CUDA backend returns page-locked memory, so that prefill write-back,
  // follow-up streaming and dense-from-host decode copy at full PCIe speed.
  virtual const HostAllocator *host_allocator() const { return nullptr; }

  // MAGICPIG index builds (policy_commit): SimHash codes of the keys of rows
  // [start, start + m) of `layer` (all KV heads), centered by mean[Hkv][d], with projection
  // P: bit j of table t = [(k − μ)·R[:, t·K + j] > 0], each dot product one sequential f32
  // FMA chain over d as lsh::hash_rows computes it, so the codes equal the CPU's bit for
  // bit. Returns them table-major [Hkv][P.L][m] (lsh::Codes with ld = m) in memory the
  // backend owns: valid until the next call with the same `slot` (0 or 1; the caller hashes
  // the next layer into the other slot while it sorts this one). May run on another host
  // thread than the caller's, while no other call of this backend runs. nullptr: the
  // backend cannot (the caller hashes on the CPU). Throws mp::Error on failure. During a
  // prefill with an observer (mp_session_prefill_commit) it runs beside that prefill, on the
  // rows the observer has reported written (rows may lie past s.n_tokens() then).
  virtual const uint16_t *hash_keys(const Session & /*s*/, int32_t /*layer*/, int64_t /*start*/,
                                    int64_t /*m*/, const float * /*mean*/,
                                    const lsh::Projection & /*P*/, int /*slot*/) {
    return nullptr;
  }

  // A layer's FIRST index build (policy_commit: no index yet, one piece of m <=
  // lsh::ADD_PIECE rows merged into blocks) done here up to the norms: μ of rows
  // [start, start + m) of `layer` (per KV head, lsh::Index::init_mean's arithmetic), the
  // codes (as hash_keys) and every block's sorted CSR, bit for bit what lsh::Index::add
  // computes (lsh::SortedPiece; the caller finishes with Index::add_sorted). The arrays are
  // in memory the backend owns, valid until the next call with the same `slot` (0 or 1). The
  // same threading as hash_keys. Throws mp::Error on failure.
  // can_build_first: whether build_first handles this session and these parameters (the
  // caller uses hash_keys otherwise); build_first must not be called when it is false.
  virtual bool can_build_first(const Session & /*s*/, int /*K*/, int /*L*/) const {
    return false;
  }
  virtual void build_first(const Session & /*s*/, int32_t /*layer*/, int64_t /*start*/,
                           int64_t /*m*/, const lsh::Projection & /*P*/, int /*slot*/,
                           lsh::SortedPiece * /*out*/) {
    MP_FAIL(MP_ERR_UNSUPPORTED, "this backend cannot build LSH indexes");
  }
  // After a commit's builds: device memory sized for the largest build (a first build's keys,
  // codes and entries of every KV head: 0.7 GB at 96K) goes back to the budget.
  virtual void index_builds_done() {}
};

// The CPU backend (cuda/engine/cpu_backend.cpp).
std::unique_ptr<ForwardBackend> make_cpu_backend(Engine &e);

// The CUDA backend. Until the GPU forward pass lands, cuda/engine/cuda_backend_pending.cpp
// defines these: cuda_forward_available() = false and make_cuda_backend() throws
// MP_ERR_UNSUPPORTED. The GPU work deletes that file when it adds the real ones.
bool cuda_forward_available();
std::unique_ptr<ForwardBackend> make_cuda_backend(Engine &e);

}  // namespace mp
