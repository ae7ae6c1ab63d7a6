// session.cpp — mp::Session: parameter checks, the host KV cache and its growth.
// (Forward passes live in the backends, policies in policy.cpp, snapshots in snapshot.cpp.)
#include "engine/session.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/backend.h"
#include "engine/engine.h"
#include "engine/policy.h"

namespace mp {

mp_session_params validate_session_params(const Engine &e, const mp_session_params &in) {
  mp_session_params p = in;
  mp_attention_params &a = p.attention;
  const int32_t nl = e.config().n_layers;
  MP_CHECK(a.size == sizeof(mp_attention_params), MP_ERR_INVALID,
           "attention.size \"%zu\" is wrong: must be sizeof(mp_attention_params) = %zu", a.size,
           sizeof(mp_attention_params));
  MP_CHECK(a.method >= MP_ATTN_DENSE && a.method <= MP_ATTN_ORACLE, MP_ERR_INVALID,
           "attention.method \"%d\" is invalid: must be 0 (dense), 1 (magicpig), 2 (topk), "
           "3 (quest) or 4 (oracle)",
           a.method);
  MP_CHECK(a.lsh_k >= 1 && a.lsh_k <= 16, MP_ERR_INVALID,
           "attention.lsh_k \"%d\" is invalid: must be in 1..16", a.lsh_k);
  MP_CHECK(a.lsh_l >= 1 && a.lsh_l <= 1024, MP_ERR_INVALID,
           "attention.lsh_l \"%d\" is invalid: must be in 1..1024", a.lsh_l);
  MP_CHECK(a.sinks >= 0, MP_ERR_INVALID, "attention.sinks \"%d\" is invalid: must be >= 0",
           a.sinks);
  MP_CHECK(a.window >= 0, MP_ERR_INVALID, "attention.window \"%d\" is invalid: must be >= 0",
           a.window);
  MP_CHECK(a.gen_buffer >= 0, MP_ERR_INVALID,
           "attention.gen_buffer \"%d\" is invalid: must be >= 0", a.gen_buffer);
  MP_CHECK(std::isfinite(a.eps) && a.eps > 0, MP_ERR_INVALID,
           "attention.eps \"%g\" is invalid: must be a positive number", (double)a.eps);
  MP_CHECK(std::isfinite(a.budget) && a.budget > 0 && a.budget <= 1, MP_ERR_INVALID,
           "attention.budget \"%g\" is invalid: must be in (0, 1]", (double)a.budget);
  MP_CHECK(a.page_size >= 1, MP_ERR_INVALID,
           "attention.page_size \"%d\" is invalid: must be >= 1", a.page_size);
  if (a.n_dense_layers == -1) {
    a.n_dense_layers = nl / 2 == 0 ? 1 : 2;
    a.dense_layers[0] = 0;
    a.dense_layers[1] = nl / 2;
    for (int i = a.n_dense_layers; i < 16; i++) a.dense_layers[i] = 0;
  }
  MP_CHECK(a.n_dense_layers >= 0 && a.n_dense_layers <= 16, MP_ERR_INVALID,
           "attention.n_dense_layers \"%d\" is invalid: must be -1 (default) or 0..16",
           a.n_dense_layers);
  for (int i = 0; i < a.n_dense_layers; i++)
    MP_CHECK(a.dense_layers[i] >= 0 && a.dense_layers[i] < nl, MP_ERR_INVALID,
             "attention.dense_layers[%d] \"%d\" is invalid: the model has %d layers", i,
             a.dense_layers[i], nl);
  MP_CHECK(p.reserve_tokens >= 0 && p.reserve_tokens <= ((int64_t)1 << 31), MP_ERR_INVALID,
           "reserve_tokens \"%lld\" is invalid: must be in 0..2^31",
           (long long)p.reserve_tokens);
  return p;
}

Session::Session(std::shared_ptr<Engine> engine, const mp_session_params &p)
    : engine_(std::move(engine)), attn_(p.attention) {
  const mp_model_config &c = engine_->config();
  n_layers_ = c.n_layers;
  n_kv_heads_ = c.n_kv_heads;
  head_dim_ = c.head_dim;
  kv_dtype_ = engine_->kv_dtype();
  dense_layer_.assign((size_t)n_layers_, attn_.method == MP_ATTN_DENSE ? 1 : 0);
  for (int i = 0; i < attn_.n_dense_layers; i++) dense_layer_[(size_t)attn_.dense_layers[i]] = 1;
  k_.resize((size_t)n_layers_);
  v_.resize((size_t)n_layers_);
  if (p.reserve_tokens > 0) reserve(p.reserve_tokens);
}

Session::~Session() = default;

int64_t Session::host_kv_bytes() const {
  return 2 * (int64_t)n_layers_ * n_kv_heads_ * capacity_ * (int64_t)row_bytes();
}

void Session::reserve(int64_t n) {
  if (n <= capacity_) return;
  // Grow by a quarter (at least 256 rows), rounded up to 256 rows: amortised O(1) appends
  // while keeping a long session's slack small (doubling left a 96K session holding 128K
  // rows, and every crossing re-allocates, and on a GPU backend re-pins, the whole cache).
  // The first reservation is exact: a prefill asks for what it needs.
  int64_t cap = capacity_ == 0 ? n : std::max<int64_t>(n, capacity_ + std::max<int64_t>(capacity_ / 4, 256));
  cap = (cap + 255) / 256 * 256;
  const size_t rb = row_bytes();
  const size_t bytes = (size_t)n_kv_heads_ * (size_t)cap * rb;
  // Allocate everything first: on OOM the session stays as it was.
  // The backend may supply the memory (page-locked for a GPU backend's copies).
  const HostAllocator *alloc = engine_->backend().host_allocator();
  std::vector<HostBuffer> nk((size_t)n_layers_), nv((size_t)n_layers_);
  for (int32_t l = 0; l < n_layers_; l++) {
    nk[(size_t)l].allocate(bytes, alloc);
    nv[(size_t)l].allocate(bytes, alloc);
  }
  const int64_t keep = n_tokens_;
  const int64_t items = (int64_t)n_layers_ * n_kv_heads_;
#pragma omp parallel for num_threads(threads()) schedule(static) if (keep * items > 4096)
  for (int64_t it = 0; it < items; it++) {
    const int32_t l = (int32_t)(it / n_kv_heads_), h = (int32_t)(it % n_kv_heads_);
    const size_t src = (size_t)h * (size_t)capacity_ * rb, dst = (size_t)h * (size_t)cap * rb;
    if (keep > 0) {
      std::memcpy(nk[(size_t)l].as<uint8_t>() + dst, k_[(size_t)l].as<uint8_t>() + src,
                  (size_t)keep * rb);
      std::memcpy(nv[(size_t)l].as<uint8_t>() + dst, v_[(size_t)l].as<uint8_t>() + src,
                  (size_t)keep * rb);
    }
  }
  k_ = std::move(nk);
  v_ = std::move(nv);
  capacity_ = cap;
}

void Session::set_n_tokens(int64_t n) {
  MP_CHECK(n >= 0 && n <= capacity_, MP_ERR_INTERNAL,
           "session length %lld is out of range: capacity %lld", (long long)n,
           (long long)capacity_);
  n_tokens_ = n;
}

}  // namespace mp

// ------------------------------------------------------------
// operations

namespace mp {

static void check_tokens(const Engine &e, const int32_t *tokens, int32_t n) {
  const int32_t vocab = e.config().vocab_size;
  for (int32_t i = 0; i < n; i++)
    MP_CHECK(tokens[i] >= 0 && tokens[i] < vocab, MP_ERR_INVALID,
             "tokens[%d] \"%d\" is out of range: the vocabulary has %d tokens", i, tokens[i],
             vocab);
}

namespace {

// mp_session_prefill, and with `commit` mp_session_prefill_commit: the prefill with a
// MAGICPIG first index build beside it (policy_prefill_index), then the commit.
int32_t prefill(Session &s, const int32_t *tokens, int32_t n, float *logits,
                const int32_t *abort, bool commit) {
  Engine &e = s.engine();
  MP_CHECK(n >= 1, MP_ERR_INVALID, "n \"%d\" is invalid: must be >= 1", n);
  MP_CHECK(tokens, MP_ERR_INVALID, "tokens is NULL");
  check_tokens(e, tokens, n);
  const int64_t p0 = s.n_tokens();
  MP_CHECK(p0 + n < ((int64_t)1 << 31), MP_ERR_INVALID,
           "the session would hold %lld tokens: at most 2^31 - 1 are supported",
           (long long)(p0 + n));
  if (abort_requested(abort)) return MP_ABORTED;
  s.reserve(p0 + n);
  // after reserve: the build reads the host cache where the prefill writes it
  std::unique_ptr<PrefillIndexBuild> build = commit ? policy_prefill_index(s, p0 + n) : nullptr;
  auto rollback = [&] {
    if (build) build->cancel();  // joined before the session changes
    s.set_n_tokens(p0);
    e.backend().session_truncated(s, p0);
    policy_truncate(s, p0);
  };
  int32_t rc;
  try {
    rc = e.backend().prefill(s, tokens, n, logits, abort, build.get());
  } catch (...) {
    rollback();
    throw;
  }
  if (rc != MP_OK) {
    rollback();
    return rc;
  }
  if (s.n_tokens() != p0 + n) {
    rollback();
    MP_FAIL(MP_ERR_INTERNAL, "the backend left the session at %lld tokens, expected %lld",
            (long long)s.n_tokens(), (long long)(p0 + n));
  }
  if (commit) {
    try {
      policy_commit(s, build.get());
    } catch (const Error &err) {
      throw Error(err.status, "the tokens are prefilled, but the commit failed: " + err.message);
    }
  }
  return MP_OK;
}

}  // namespace

int32_t session_prefill(Session &s, const int32_t *tokens, int32_t n, float *logits,
                        const int32_t *abort) {
  return prefill(s, tokens, n, logits, abort, /*commit=*/false);
}

int32_t session_prefill_commit(Session &s, const int32_t *tokens, int32_t n, float *logits,
                               const int32_t *abort) {
  return prefill(s, tokens, n, logits, abort, /*commit=*/true);
}

int32_t decode_step(Engine &e, Session *const *sessions, int32_t n, const int32_t *tokens,
                    float *logits, const int32_t *abort) {
  MP_CHECK(n >= 1 && n <= e.max_batch(), MP_ERR_INVALID,
           "n \"%d\" is invalid: must be in 1..max_batch (%d)", n, e.max_batch());
  MP_CHECK(sessions, MP_ERR_INVALID, "sessions is NULL");
  MP_CHECK(tokens, MP_ERR_INVALID, "tokens is NULL");
  MP_CHECK(logits, MP_ERR_INVALID, "logits is NULL");
  for (int32_t i = 0; i < n; i++) {
    MP_CHECK(sessions[i], MP_ERR_INVALID, "sessions[%d] is NULL", i);
    MP_CHECK(&sessions[i]->engine() == &e, MP_ERR_INVALID,
             "sessions[%d] belongs to another engine", i);
    for (int32_t j = 0; j < i; j++)
      MP_CHECK(sessions[j] != sessions[i], MP_ERR_INVALID,
               "sessions[%d] and sessions[%d] are the same session", j, i);
    MP_CHECK(sessions[i]->n_tokens() + 1 < ((int64_t)1 << 31), MP_ERR_INVALID,
             "sessions[%d] is full: at most 2^31 - 1 tokens are supported", i);
  }
  check_tokens(e, tokens, n);
  if (abort_requested(abort)) return MP_ABORTED;
  std::vector<double> stats((size_t)n * 2);
  for (int32_t i = 0; i < n; i++) {
    sessions[i]->reserve(sessions[i]->n_tokens() + 1);
    stats[(size_t)i * 2] = sessions[i]->keys_attended();
    stats[(size_t)i * 2 + 1] = sessions[i]->keys_offloaded();
  }
  auto restore = [&] {
    for (int32_t i = 0; i < n; i++)
      sessions[i]->set_key_stats(stats[(size_t)i * 2], stats[(size_t)i * 2 + 1]);
  };
  int32_t rc;
  try {
    rc = e.backend().decode(sessions, n, tokens, logits, abort);
  } catch (...) {
    restore();
    throw;
  }
  if (rc != MP_OK) {
    restore();
    return rc;
  }
  for (int32_t i = 0; i < n; i++) sessions[i]->set_n_tokens(sessions[i]->n_tokens() + 1);
  return MP_OK;
}

void session_truncate(Session &s, int64_t n) {
  const int64_t indexed = policy_n_indexed(s);
  MP_CHECK(n >= 0 && n <= s.n_tokens(), MP_ERR_INVALID,
           "n \"%lld\" is invalid: the session holds %lld tokens", (long long)n,
           (long long)s.n_tokens());
  MP_CHECK(n >= indexed, MP_ERR_INVALID,
           "n \"%lld\" is invalid: the first %lld tokens are indexed and cannot be dropped",
           (long long)n, (long long)indexed);
  if (n == s.n_tokens()) return;
  s.set_n_tokens(n);
  s.engine().backend().session_truncated(s, n);
  policy_truncate(s, n);
}

void session_commit(Session &s) { policy_commit(s); }

void session_info(const Session &s, mp_session_info *out) {
  out->n_tokens = s.n_tokens();
  out->n_indexed = policy_n_indexed(s);
  out->host_kv_bytes = s.host_kv_bytes();
  out->host_index_bytes = policy_host_bytes(s);
  out->gpu_bytes = s.engine().backend().session_device_bytes(s);
  out->keys_attended = s.keys_attended();
  out->keys_offloaded = s.keys_offloaded();
  out->method = s.attention().method;
  out->lsh_k = s.attention().lsh_k;
  out->lsh_l = s.attention().lsh_l;
  out->seed = s.attention().seed;
}

}  // namespace mp
