// cpu_backend.cpp — the exact Llama forward pass on the CPU (ForwardBackend, backend.h).
//
// One layer, for m rows (the tokens of a prefill chunk, or one token per session at
// decode), x[m][dim] the residual stream:
//
//   xb = rmsnorm(x, attn_norm)
//   q[m][H][d] = xb·Wq^T   k[m][Hkv][d] = xb·Wk^T   v[m][Hkv][d] = xb·Wv^T
//   rope(q), rope(k)                       (tables for the rows' positions, built once per
//                                           chunk/step and shared by every layer)
//   K/V rows -> the session cache (kv dtype), then attention reads them back from there,
//   so a key is the same (F32 or BF16-rounded) whether it was written by this call or an
//   earlier one: chunked prefill and token-by-token decode agree bit for bit.
//   att = attention(q, cache)              dense causal; decode on sparse layers of a
//                                           non-DENSE session goes to policy.h
//   x += att·Wo^T
//   xb = rmsnorm(x, ffn_norm);  x += (silu(xb·Wg^T) ⊙ xb·Wu^T)·Wd^T
//
// and at the end logits = rmsnorm(x, output_norm)·Wout^T (the embedding when tied), for
// the last prompt token (prefill) or for every row (decode).
//
// Prefill runs chunk by chunk (engine prefill_chunk tokens), layer by layer inside a chunk,
// and publishes the session length after each chunk; the abort flag is polled before each
// chunk and each layer. A layer's keys are complete once the last chunk has stored them
// (the observer of mp_session_prefill_commit hears of it then). Decode batches the projections of all sessions: one matmul per
// weight per step.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/attention.h"
#include "cpu/embedding.h"
#include "cpu/matmul.h"
#include "cpu/merge.h"
#include "cpu/rmsnorm.h"
#include "cpu/rope.h"
#include "cpu/simd.h"
#include "cpu/swiglu.h"
#include "engine/backend.h"
#include "engine/engine.h"
#include "engine/policy.h"
#include "engine/session.h"

namespace mp {

namespace {

class CpuBackend final : public ForwardBackend {
 public:
  explicit CpuBackend(Engine &e) : e_(e) {}

  int32_t kind() const override { return MP_BACKEND_CPU; }
  void prepare() override {}

  int32_t prefill(Session &s, const int32_t *tokens, int32_t n, float *logits,
                  const int32_t *abort, PrefillObserver *written) override {
    const mp_model_config &c = e_.config();
    const int64_t p0 = s.n_tokens();
    const int32_t chunk = e_.prefill_chunk();
    for (int32_t c0 = 0; c0 < n; c0 += chunk) {
      if (abort_requested(abort)) return MP_ABORTED;
      const int32_t m = std::min(chunk, n - c0);
      const int64_t pos0 = p0 + c0;
      begin(tokens + c0, m);
      for (int64_t i = 0; i < m; i++) pos_[(size_t)i] = (int32_t)(pos0 + i);
      tables(m);
      for (int32_t l = 0; l < c.n_layers; l++) {
        if (abort_requested(abort)) return MP_ABORTED;
        attn_in(l, m);
        for (int64_t i = 0; i < m; i++) store_kv(s, l, pos0 + i, i);
        // the last chunk completes the layer's keys
        if (written && c0 + m == n) written->layer_written(l);
        cpu::attention(q_.data(), m, c.n_heads, c.n_kv_heads, c.head_dim, pos0, pos0 + m,
                       view(s, l), att_.data(), nullptr);
        attn_out_ffn(l, m);
      }
      s.set_n_tokens(pos0 + m);
      if (c0 + m == n && logits) head(x_.data() + (size_t)(m - 1) * c.dim, 1, logits);
    }
    return MP_OK;
  }

  int32_t decode(Session *const *ss, int32_t n, const int32_t *tokens, float *logits,
                 const int32_t *abort) override {
    const mp_model_config &c = e_.config();
    const int64_t hd = (int64_t)c.n_heads * c.head_dim;
    begin(tokens, n);
    for (int32_t i = 0; i < n; i++) pos_[(size_t)i] = (int32_t)ss[i]->n_tokens();
    tables(n);
    std::vector<int64_t> posv((size_t)n), E((size_t)n);
    for (int32_t i = 0; i < n; i++) posv[(size_t)i] = pos_[(size_t)i];
    for (int32_t l = 0; l < c.n_layers; l++) {
      if (abort_requested(abort)) return MP_ABORTED;
      attn_in(l, n);
      // Sparse layers go through the policy's split API (policy.h), batched over the
      // sessions: E per session (0: exact), the offloaded parts in one call, then the
      // exact parts merged in — the same arithmetic as policy_decode_attention().
      bool split = false;
      for (int32_t i = 0; i < n; i++) {
        Session &s = *ss[i];
        const int64_t pos = pos_[(size_t)i];
        store_kv(s, l, pos, i);
        const float *q = q_.data() + (size_t)i * hd;
        float *out = att_.data() + (size_t)i * hd;
        E[(size_t)i] = 0;
        if (!s.layer_is_dense(l)) {
          E[(size_t)i] = policy_split_begin(s, l, pos);
          if (E[(size_t)i] > s.attention().sinks) {
            split = true;
            continue;
          }
          E[(size_t)i] = 0;  // nothing offloaded yet: exact over every row
        }
        cpu::attention(q, 1, c.n_heads, c.n_kv_heads, c.head_dim, pos, pos + 1, view(s, l), out,
                       nullptr);
      }
      if (split) split_attention(ss, n, l, posv.data(), E.data());
      attn_out_ffn(l, n);
    }
    head(x_.data(), n, logits);
    return MP_OK;
  }

 private:
  // Sizes the workspaces for m rows and embeds the tokens into x.
  void begin(const int32_t *tokens, int64_t m) {
    const mp_model_config &c = e_.config();
    const size_t M = (size_t)m;
    auto fit = [](std::vector<float> &v, size_t n) {
      if (v.size() < n) v.resize(n);
    };
    fit(x_, M * c.dim);
    fit(xb_, M * c.dim);
    fit(tmp_, M * c.dim);
    fit(q_, M * c.n_heads * c.head_dim);
    fit(att_, M * c.n_heads * c.head_dim);
    fit(k_, M * c.n_kv_heads * c.head_dim);
    fit(v_, M * c.n_kv_heads * c.head_dim);
    fit(g_, M * c.ffn_dim);
    fit(u_, M * c.ffn_dim);
    fit(cos_, M * (c.head_dim / 2));
    fit(sin_, M * (c.head_dim / 2));
    if (pos_.size() < M) pos_.resize(M);
    const Tensor &emb = e_.token_embd();
    cpu::embedding(emb.dtype, emb.ptr(), c.dim, tokens, m, x_.data());
  }

  void tables(int64_t m) {
    const mp_model_config &c = e_.config();
    cpu::rope_tables(e_.rope_inv_freq(), c.head_dim / 2, pos_.data(), m, cos_.data(),
                     sin_.data());
  }

  static void mm(const Tensor &w, const float *x, int64_t m, float *y) {
    cpu::matmul(w.dtype, w.ptr(), x, m, w.cols, w.rows, y);
  }

  void attn_in(int32_t l, int64_t m) {
    const mp_model_config &c = e_.config();
    const LayerWeights &L = e_.layer(l);
    cpu::rmsnorm(x_.data(), L.attn_norm.data.as<float>(), m, c.dim, c.rms_eps, xb_.data());
    mm(L.wq, xb_.data(), m, q_.data());
    mm(L.wk, xb_.data(), m, k_.data());
    mm(L.wv, xb_.data(), m, v_.data());
    cpu::rope_apply(q_.data(), m, c.n_heads, c.head_dim, c.rope.style, cos_.data(), sin_.data());
    cpu::rope_apply(k_.data(), m, c.n_kv_heads, c.head_dim, c.rope.style, cos_.data(),
                    sin_.data());
  }

  void attn_out_ffn(int32_t l, int64_t m) {
    const mp_model_config &c = e_.config();
    const LayerWeights &L = e_.layer(l);
    const int64_t nd = m * c.dim;
    mm(L.wo, att_.data(), m, tmp_.data());
    add(x_.data(), tmp_.data(), nd);
    cpu::rmsnorm(x_.data(), L.ffn_norm.data.as<float>(), m, c.dim, c.rms_eps, xb_.data());
    mm(L.w_gate, xb_.data(), m, g_.data());
    mm(L.w_up, xb_.data(), m, u_.data());
    cpu::swiglu(g_.data(), u_.data(), m * c.ffn_dim, g_.data());
    mm(L.w_down, g_.data(), m, tmp_.data());
    add(x_.data(), tmp_.data(), nd);
  }

  static void add(float *x, const float *y, int64_t n) {
#pragma omp parallel for num_threads(threads()) schedule(static) if (n > 262144)
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
  }

  // Rows i with E[i] > 0: out = merge(merge(sinks [0, S), local [E, pos]), offloaded).
  void split_attention(Session *const *ss, int32_t n, int32_t l, const int64_t *pos,
                       const int64_t *E) {
    const mp_model_config &c = e_.config();
    const size_t hd = (size_t)c.n_heads * c.head_dim, H = (size_t)c.n_heads;
    auto fit = [](std::vector<float> &v, size_t m) {
      if (v.size() < m) v.resize(m);
    };
    fit(so_, (size_t)n * hd), fit(sl_, (size_t)n * H);
    fit(o1_, hd), fit(o2_, hd), fit(l1_, H), fit(l2_, H);
    policy_split_offloaded(ss, n, l, pos, E, q_.data(), so_.data(), sl_.data());
    for (int32_t i = 0; i < n; i++) {
      if (E[i] <= 0) continue;
      Session &s = *ss[i];
      const float *q = q_.data() + (size_t)i * hd;
      exact(s, l, 0, s.attention().sinks, q, o1_.data(), l1_.data());
      exact(s, l, E[i], pos[i] + 1, q, o2_.data(), l2_.data());
      cpu::merge(o1_.data(), l1_.data(), o2_.data(), l2_.data(), (int64_t)H, c.head_dim,
                 o1_.data(), l1_.data());
      cpu::merge(o1_.data(), l1_.data(), so_.data() + (size_t)i * hd, sl_.data() + (size_t)i * H,
                 (int64_t)H, c.head_dim, att_.data() + (size_t)i * hd, l2_.data());
    }
  }

  // Exact attention of q[H][d] over rows [t0, t1) of layer l: o[H][d], lse[H] (zeros and −∞
  // for an empty range).
  void exact(Session &s, int32_t l, int64_t t0, int64_t t1, const float *q, float *o,
             float *lse) {
    const mp_model_config &c = e_.config();
    if (t1 <= t0) {
      std::fill(o, o + (size_t)c.n_heads * c.head_dim, 0.0f);
      std::fill(lse, lse + c.n_heads, -INFINITY);
      return;
    }
    const cpu::KvView kv{s.k_row(l, 0, t0), s.v_row(l, 0, t0), s.kv_dtype(), s.head_dim(),
                         s.head_stride()};
    cpu::attention(q, 1, c.n_heads, c.n_kv_heads, c.head_dim, t1 - t0 - 1, t1 - t0, kv, o, lse);
  }

  // Row `row` of k_/v_ -> the session's cache at position pos.
  void store_kv(Session &s, int32_t l, int64_t pos, int64_t row) {
    const mp_model_config &c = e_.config();
    const int64_t d = c.head_dim;
    for (int32_t h = 0; h < c.n_kv_heads; h++) {
      const float *k = k_.data() + ((size_t)row * c.n_kv_heads + h) * d;
      const float *v = v_.data() + ((size_t)row * c.n_kv_heads + h) * d;
      if (s.kv_dtype() == MP_DTYPE_F32) {
        std::memcpy(s.k_row(l, h, pos), k, (size_t)d * 4);
        std::memcpy(s.v_row(l, h, pos), v, (size_t)d * 4);
      } else {
        cpu::to_bf16(k, (uint16_t *)s.k_row(l, h, pos), d);
        cpu::to_bf16(v, (uint16_t *)s.v_row(l, h, pos), d);
      }
    }
  }

  static cpu::KvView view(Session &s, int32_t l) {
    return cpu::KvView{s.k_row(l, 0, 0), s.v_row(l, 0, 0), s.kv_dtype(), s.head_dim(),
                       s.head_stride()};
  }

  // logits[m][vocab] of the rows x[m][dim].
  void head(const float *x, int64_t m, float *logits) {
    const mp_model_config &c = e_.config();
    cpu::rmsnorm(x, e_.output_norm().data.as<float>(), m, c.dim, c.rms_eps, xb_.data());
    mm(e_.lm_head(), xb_.data(), m, logits);
  }

  Engine &e_;
  std::vector<float> x_, xb_, tmp_, q_, att_, k_, v_, g_, u_, cos_, sin_;
  std::vector<float> so_, sl_, o1_, o2_, l1_, l2_;  // split decode scratch
  std::vector<int32_t> pos_;
};

}  // namespace

std::unique_ptr<ForwardBackend> make_cpu_backend(Engine &e) {
  return std::make_unique<CpuBackend>(e);
}

}  // namespace mp
