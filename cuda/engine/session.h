// session.h — mp::Session: one sequence's KV cache in host memory, its attention policy
// and its statistics.
//
// KV layout (per layer, in the engine's kv_dtype, F32 or BF16):
//
//   K[l][h][t][d] = k_row(l, h, t)    h < n_kv_heads, t < capacity, d < head_dim
//   V[l][h][t][d] = v_row(l, h, t)
//
// i.e. for each layer one block K[Hkv][cap][d] and one V[Hkv][cap][d]; the rows of one KV
// head are contiguous (stride head_dim elements), heads are `capacity()` rows apart
// (head_stride()). Keys are stored *after* RoPE, values as projected. Rows t < n_tokens()
// are valid; rows beyond may hold scratch (a forward pass writes the new tokens' rows
// before it publishes the new length with set_n_tokens()).
//
// Capacity grows by doubling (reserve()); growing reallocates every layer, so pointers
// from k_row()/v_row() are valid until the next reserve().
//
// Extension points for other parts of the library (each owned by its part):
//  - `policy`        PolicyState of the attention policy (MagicPIG index etc.), see policy.h
//  - `backend_state` per-session state of the forward backend (device KV, etc.), see backend.h
//
// Threading: like the C handle, a Session is used by one call at a time; kernels inside a
// call may read and write disjoint rows from many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "common/common.h"
#include "engine/buffer.h"

namespace mp {

class Engine;

// Base of a policy's per-session state (owned by the session, freed with it).
struct PolicyState {
  virtual ~PolicyState() = default;
};

// Base of a forward backend's per-session state (owned by the session, freed with it).
struct BackendSessionState {
  virtual ~BackendSessionState() = default;
};

class Session {
 public:
  // `p` must be validated (validate_session_params). Requires a finalized engine.
  Session(std::shared_ptr<Engine> engine, const mp_session_params &p);
  ~Session();
  Session(const Session &) = delete;
  Session &operator=(const Session &) = delete;

  Engine &engine() const { return *engine_; }
  const std::shared_ptr<Engine> &engine_ptr() const { return engine_; }

  // ------------------------------------------------------------
  // shape and length

  int32_t n_layers() const { return n_layers_; }
  int32_t n_kv_heads() const { return n_kv_heads_; }
  int32_t head_dim() const { return head_dim_; }
  int32_t kv_dtype() const { return kv_dtype_; }
  size_t kv_elem_bytes() const { return dtype_size(kv_dtype_); }
  size_t row_bytes() const { return (size_t)head_dim_ * kv_elem_bytes(); }

  int64_t n_tokens() const { return n_tokens_; }  // valid rows per (layer, head)
  int64_t capacity() const { return capacity_; }  // allocated rows per (layer, head)
  int64_t head_stride() const { return capacity_ * head_dim_; }  // elements between heads

  // Makes room for at least n tokens (capacity doubles; rows < n_tokens() are kept).
  // Throws MP_ERR_OOM with the session unchanged when memory runs out.
  void reserve(int64_t n);
  // Publishes the length. 0 <= n <= capacity(); rows below n must hold valid K/V.
  void set_n_tokens(int64_t n);

  // ------------------------------------------------------------
  // KV access: pointers to head_dim elements of kv_dtype

  void *k_row(int32_t layer, int32_t kv_head, int64_t t) {
    return kv_ptr(k_[(size_t)layer], kv_head, t);
  }
  const void *k_row(int32_t layer, int32_t kv_head, int64_t t) const {
    return kv_ptr(k_[(size_t)layer], kv_head, t);
  }
  void *v_row(int32_t layer, int32_t kv_head, int64_t t) {
    return kv_ptr(v_[(size_t)layer], kv_head, t);
  }
  const void *v_row(int32_t layer, int32_t kv_head, int64_t t) const {
    return kv_ptr(v_[(size_t)layer], kv_head, t);
  }

  // ------------------------------------------------------------
  // attention policy

  const mp_attention_params &attention() const { return attn_; }
  int32_t method() const { return attn_.method; }
  // True when this layer always uses exact attention: method DENSE, or a dense layer
  // (attention.dense_layers, default {0, n_layers/2}).
  bool layer_is_dense(int32_t layer) const { return dense_layer_[(size_t)layer] != 0; }

  // Σ keys attended / Σ keys in the offloaded region, over sparse layers, heads and steps
  // (mp_session_info). Policies add to them through add_key_stats().
  void add_key_stats(double attended, double offloaded) {
    keys_attended_ += attended;
    keys_offloaded_ += offloaded;
  }
  double keys_attended() const { return keys_attended_; }
  double keys_offloaded() const { return keys_offloaded_; }
  void set_key_stats(double attended, double offloaded) {
    keys_attended_ = attended;
    keys_offloaded_ = offloaded;
  }

  // Bytes held for K and V in host memory (allocated capacity).
  int64_t host_kv_bytes() const;

  std::unique_ptr<PolicyState> policy;
  std::unique_ptr<BackendSessionState> backend_state;

 private:
  void *kv_ptr(const HostBuffer &b, int32_t h, int64_t t) const {
    return (uint8_t *)b.data() + ((size_t)h * (size_t)capacity_ + (size_t)t) * row_bytes();
  }

  std::shared_ptr<Engine> engine_;
  mp_attention_params attn_;
  std::vector<uint8_t> dense_layer_;
  int32_t n_layers_, n_kv_heads_, head_dim_, kv_dtype_;
  int64_t n_tokens_ = 0, capacity_ = 0;
  std::vector<HostBuffer> k_, v_;  // [layer] -> [Hkv][capacity][head_dim]
  double keys_attended_ = 0, keys_offloaded_ = 0;
};

// ------------------------------------------------------------
// the public operations on sessions (argument checks, rollback, then the engine's backend)

// mp_session_prefill: MP_OK or MP_ABORTED; on abort or throw the session is rolled back.
int32_t session_prefill(Session &s, const int32_t *tokens, int32_t n, float *logits,
                        const int32_t *abort);
// mp_session_prefill_commit: the same, then session_commit (a MAGICPIG first index build
// runs beside the prefill). A commit that fails leaves the prefilled tokens in place.
int32_t session_prefill_commit(Session &s, const int32_t *tokens, int32_t n, float *logits,
                               const int32_t *abort);
// mp_decode_step: MP_OK (every length + 1) or MP_ABORTED / throw (no length changed).
int32_t decode_step(Engine &e, Session *const *sessions, int32_t n, const int32_t *tokens,
                    float *logits, const int32_t *abort);
void session_truncate(Session &s, int64_t n);
void session_commit(Session &s);
void session_info(const Session &s, mp_session_info *out);  // every field but size

// Throws MP_ERR_INVALID naming the field ("attention.lsh_k") unless p is valid for engine e.
// Resolves n_dense_layers = -1 into the default set.
mp_session_params validate_session_params(const Engine &e, const mp_session_params &p);

}  // namespace mp

// The C handle is the Session itself.
struct mp_session : mp::Session {
  using mp::Session::Session;
};
