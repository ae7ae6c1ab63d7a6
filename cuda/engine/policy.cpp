/*
 * policy.cpp — the attention policies of sparse layers: MAGICPIG, TOPK, QUEST, ORACLE
 * (magicpig.md; the hooks are declared in policy.h).
 *
 * Regions of a session's tokens, for a sparse layer (dense layers are always exact):
 *
 *   [0, S)   sinks      exact
 *   [S, E)   offloaded  MAGICPIG samples it through the layer's LSH index;
 *                       TOPK / QUEST / ORACLE select keys within it
 *   [E, n)   local      exact (the window, plus MAGICPIG's generation buffer)
 *
 * The exact parts and the sampled/selected part are partial attentions with base-2 LSEs,
 * merged by cpu::merge: for MAGICPIG that is the self-normalised estimator of §7, for the
 * baselines their selection renormalised together with the exact part.
 *
 * MAGICPIG. E is the end of the indexed region, E = S + index.n(). mp_session_commit moves
 * it to n − W; the first commit creates the layer's index (μ = the mean of the keys it
 * indexes, then fixed). During decode the local region grows by one token per step; once
 * it is longer than W + gen_buffer its oldest tokens (all but the last W) are flushed into
 * the index, so the generation buffer never overflows. Flushed tokens stay in the index's
 * unsorted tail until the next commit (which merges a full tail into the blocks): a turn
 * that is truncated away (a forked turn's rollback) takes them out again and leaves the
 * index exactly as the commit left it; n_indexed reports the tokens of the last commit,
 * the bound mp_session_truncate keeps. A session whose prompt has n ≤ S + W tokens has no
 * offloaded region and stays dense until generation makes one.
 * The session's cache keeps the keys as computed, uncentered: the index holds μ and applies
 * it where angles matter (hash codes, u), while logits use the stored keys — the same
 * softmax, since q·μ is one constant per query — so the exact parts, later prefills,
 * dense layers and snapshots read the cache unchanged.
 *
 * Index builds at a commit on a GPU engine: the keys are hashed on the GPU
 * (ForwardBackend::hash_keys, bit-identical codes), layer by layer, the next layer's
 * hashing overlapping this layer's counting sort on the CPU (build_with_codes). A layer's
 * first build (one piece, merged) goes further on the GPU: μ, the codes and every block's
 * sorted CSR (ForwardBackend::build_first, bit-identical), the CPU only computing the norms
 * and copying the blocks in (Index::add_sorted) while the GPU builds the next layer. Small
 * builds, the CPU engine and any GPU failure build on the CPU (advance). mp_gpu_set_kernel
 * "lsh" forces either side (4: GPU codes only, the CPU sorts). When the turn ends with
 * mp_session_prefill_commit, the same first builds run beside the prefill instead
 * (PrefillBuild: each layer as soon as the prefill has written its keys to the host cache,
 * while the GPU computes the next layers), and the commit adopts them.
 *
 * TOPK / QUEST / ORACLE have no index: at every step E = max(S, pos + 1 − W). QUEST keeps
 * per-layer page metadata (min/max per dimension) of the complete pages of [S, E).
 *
 * Keys fraction: each sparse (layer, step) adds Σ_h |sample_h| attended and H·(E − S)
 * offloaded keys (the exact tokens are not counted, as in the reference's "computation
 * cost").
 */
#include "engine/policy.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "cpu/attention.h"
#include "cpu/attention_baselines.h"
#include "cpu/lsh_index.h"
#include "cpu/merge.h"
#include "cpu/sampled_attention.h"
#include "engine/backend.h"
#include "engine/engine.h"
#include "engine/snapshot.h"
#include "gpu/gpu.h"

namespace mp {

namespace {

// Snapshot section of one layer's LSH index: i32 layer, i64 tokens committed, u64 image
// bytes, the image.
constexpr uint32_t SNAP_TAG_LSH = snap_tag('L', 'S', 'H', 'X');

struct LayerState {
  std::unique_ptr<lsh::Index> index;  // MAGICPIG
  int64_t committed = 0;              // index tokens as of the last commit
  baseline::QuestPages quest;         // QUEST
};

struct State : PolicyState {
  std::vector<LayerState> layers;
  std::vector<float> o1, l1, o2, l2, o3, l3;  // decode scratch
  std::vector<int32_t> nnz;
};

State &state(Session &s) {
  if (!s.policy) {
    auto st = std::make_unique<State>();
    st->layers.resize((size_t)s.n_layers());
    s.policy = std::move(st);
  }
  return static_cast<State &>(*s.policy);
}

const State *state_if(const Session &s) { return static_cast<const State *>(s.policy.get()); }

int64_t index_end(const Session &s, const LayerState &ls) {
  return ls.index ? (int64_t)s.attention().sinks + ls.index->n() : 0;
}

// The session's rows of one layer as the sampled-attention kernel reads them: token i of
// the offloaded region is row `base + i`.
lsh::KVView kv_view(Session &s, int32_t layer, int64_t base) {
  lsh::KVView v;
  v.k = s.k_row(layer, 0, 0);
  v.v = s.v_row(layer, 0, 0);
  v.dtype = s.kv_dtype();
  v.head_rows = s.capacity();
  v.base = base;
  return v;
}

// Indexes tokens [E, target) of a layer, creating the index on the first call (its tokens
// sorted into blocks). `commit`: a turn ends, the tail may be merged into the blocks and
// what is indexed becomes permanent. Otherwise (a decode flush) the tokens stay in the
// tail, so that truncating the turn away drops them again and leaves the index as it was.
void advance(Session &s, int32_t layer, int64_t target, bool commit) {
  LayerState &ls = state(s).layers[(size_t)layer];
  const mp_attention_params &a = s.attention();
  const int64_t S = a.sinks;
  const int64_t E = ls.index ? index_end(s, ls) : S;
  if (target > E) {
    lsh::KeyRows keys;
    keys.k = s.k_row(layer, 0, E);
    keys.dtype = s.kv_dtype();
    keys.head_rows = s.capacity();
    if (!ls.index) {
      lsh::Params p;
      p.K = a.lsh_k;
      p.L = a.lsh_l;
      p.seed = a.seed;
      p.eps = a.eps;
      p.center = true;
      auto idx = std::make_unique<lsh::Index>(p, s.n_kv_heads(), s.head_dim());
      idx->add(keys, target - E, /*merge=*/true);
      ls.index = std::move(idx);
    } else {
      ls.index->add(keys, target - E, /*merge=*/false, /*auto_merge=*/commit);
    }
  }
  if (commit && ls.index) {
    if (ls.index->n_tail() >= ls.index->params().tail_max) ls.index->merge_tail();
    ls.committed = ls.index->n();
  }
}

// Exact attention of q[H][d] over rows [t0, t1) of a layer: o[H][d], lse[H] (zeros and −∞
// for an empty range).
void exact(Session &s, int32_t layer, int64_t t0, int64_t t1, const float *q, float *o,
           float *lse) {
  const mp_model_config &c = s.engine().config();
  if (t1 <= t0) {
    std::fill(o, o + (size_t)c.n_heads * c.head_dim, 0.0f);
    std::fill(lse, lse + c.n_heads, -INFINITY);
    return;
  }
  const cpu::KvView kv{s.k_row(layer, 0, t0), s.v_row(layer, 0, t0), s.kv_dtype(), s.head_dim(),
                       s.head_stride()};
  cpu::attention(q, 1, c.n_heads, c.n_kv_heads, c.head_dim, t1 - t0 - 1, t1 - t0, kv, o, lse);
}

void dense(Session &s, int32_t layer, int64_t pos, const float *q, float *out) {
  const mp_model_config &c = s.engine().config();
  const cpu::KvView kv{s.k_row(layer, 0, 0), s.v_row(layer, 0, 0), s.kv_dtype(), s.head_dim(),
                       s.head_stride()};
  cpu::attention(q, 1, c.n_heads, c.n_kv_heads, c.head_dim, pos, pos + 1, kv, out, nullptr);
}

// out = merge(sinks [0, S), local [E, pos], the part in o3/l3).
void combine(Session &s, int32_t layer, int64_t E, int64_t pos, const float *q, State &st,
             float *out) {
  const mp_model_config &c = s.engine().config();
  const int64_t S = s.attention().sinks;
  const size_t H = (size_t)c.n_heads, d = (size_t)c.head_dim;
  exact(s, layer, 0, S, q, st.o1.data(), st.l1.data());
  exact(s, layer, E, pos + 1, q, st.o2.data(), st.l2.data());
  cpu::merge(st.o1.data(), st.l1.data(), st.o2.data(), st.l2.data(), (int64_t)H, (int64_t)d,
             st.o1.data(), st.l1.data());
  cpu::merge(st.o1.data(), st.l1.data(), st.o3.data(), st.l3.data(), (int64_t)H, (int64_t)d,
             out, st.l2.data());
}

}  // namespace

const lsh::Index *policy_index(Session &s, int32_t layer) {
  if (s.attention().method != MP_ATTN_MAGICPIG) return nullptr;
  State &st = state(s);
  if ((size_t)layer >= st.layers.size()) return nullptr;
  return st.layers[(size_t)layer].index.get();
}


void policy_decode_attention(Session &s, int32_t layer, int64_t pos, const float *q,
                             float *out) {
  const mp_model_config &c = s.engine().config();
  const mp_attention_params &a = s.attention();
  const int H = c.n_heads, d = c.head_dim;
  const int64_t S = a.sinks, W = a.window;
  State &st = state(s);
  for (auto *v : {&st.o1, &st.o2, &st.o3})
    if (v->size() < (size_t)H * d) v->resize((size_t)H * d);
  for (auto *v : {&st.l1, &st.l2, &st.l3})
    if (v->size() < (size_t)H) v->resize((size_t)H);
  if (st.nnz.size() < (size_t)H) st.nnz.resize((size_t)H);
  LayerState &ls = st.layers[(size_t)layer];

  int64_t E;
  if (a.method == MP_ATTN_MAGICPIG) {
    E = ls.index ? index_end(s, ls) : S;
    // the generation buffer is full: flush its oldest tokens into the index
    if (pos + 1 - E > W + a.gen_buffer && pos + 1 - W > S) {
      advance(s, layer, pos + 1 - W, /*commit=*/false);
      E = index_end(s, ls);
    }
    if (!ls.index || E <= S) {
      dense(s, layer, pos, q, out);
      return;
    }
    const lsh::Index *idx = ls.index.get();
    const lsh::KVView kv = kv_view(s, layer, S);
    lsh::Batch batch;
    batch.idx = &idx;
    batch.kv = &kv;
    batch.B = 1;
    batch.H = H;
    batch.q = q;
    lsh::attention(batch, 0, nullptr, nullptr, 0, st.o3.data(), st.l3.data(), st.nnz.data(),
                   nullptr);
  } else {
    E = std::max(S, pos + 1 - W);
    if (E <= S || a.method == MP_ATTN_DENSE) {
      dense(s, layer, pos, q, out);
      return;
    }
    baseline::KV kv;
    kv.view = kv_view(s, layer, S);
    kv.n = E - S;
    kv.Hkv = c.n_kv_heads;
    kv.d = d;
    switch (a.method) {
      case MP_ATTN_TOPK:
        baseline::topk(kv, q, H, a.budget, st.o3.data(), st.l3.data(), st.nnz.data());
        break;
      case MP_ATTN_QUEST:
        baseline::quest_pages(kv, a.page_size, ls.quest);
        baseline::quest(kv, q, H, a.budget, a.page_size, st.o3.data(), st.l3.data(),
                        st.nnz.data(), &ls.quest);
        break;
      case MP_ATTN_ORACLE: {
        const uint64_t seed = a.seed + 0x9e3779b97f4a7c15ull * (uint64_t)(layer + 1) +
                              0xbf58476d1ce4e5b9ull * (uint64_t)pos;
        baseline::oracle(kv, q, H, a.budget, seed, st.o3.data(), st.l3.data(), st.nnz.data());
        break;
      }
      default:
        MP_FAIL(MP_ERR_INTERNAL, "attention method %d has no decode policy", a.method);
    }
  }
  combine(s, layer, E, pos, q, st, out);
  double attended = 0;
  for (int h = 0; h < H; h++) attended += st.nnz[(size_t)h];
  s.add_key_stats(attended, (double)H * (double)(E - S));
}

namespace {

// Below this many new tokens in a layer an automatic build hashes on the CPU (a decode
// flush or a short turn: the GPU round trip is not worth it).
constexpr int64_t GPU_HASH_MIN_TOKENS = 1024;

// One add of an index build with precomputed codes: `m` tokens from session row `row`
// (a piece of at most lsh::ADD_PIECE tokens, split as Index::add splits).
struct BuildItem {
  int32_t layer;
  int64_t row, m;
  bool merge;
};

lsh::KeyRows keys_at(const Session &s, int32_t layer, int64_t row) {
  lsh::KeyRows k;
  k.k = s.k_row(layer, 0, row);
  k.dtype = s.kv_dtype();
  k.head_rows = s.capacity();
  return k;
}

lsh::Params index_params(const mp_attention_params &a) {
  lsh::Params p;
  p.K = a.lsh_k;
  p.L = a.lsh_l;
  p.seed = a.seed;
  p.eps = a.eps;
  p.center = true;
  return p;
}

// The layers a prefill has written to the host cache so far (PrefillObserver), for a build
// that runs beside it.
class LayerGate {
 public:
  void written(int32_t layer) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      written_ = std::max(written_, layer + 1);
    }
    cv_.notify_all();
  }
  void cancel() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
    }
    cv_.notify_all();
  }
  // Blocks until `layer` is written (true) or the prefill has stopped (false).
  bool wait(int32_t layer) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return cancelled_ || written_ > layer; });
    return !cancelled_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int32_t written_ = 0;
  bool cancelled_ = false;
};

// Indexes tokens [E, target) of the sparse layers with codes computed apart from the sort:
// on the GPU (ForwardBackend::hash_keys) or, in mode 3, on the CPU through the same path;
// a layer's first build in modes 0 and 1 entirely on the GPU but for the norms
// (ForwardBackend::build_first, then Index::add_sorted).
// Two slots: while the CPU sorts piece i, piece i + 1 is hashed on a helper thread. The
// result is the index advance() would build (same pieces, same μ, same codes). Layers it
// leaves out (small ones in automatic mode, everything after a failure) are left to
// advance(). A failure of the GPU does not fail the commit (unless mode 1 forces the GPU):
// the build goes on on the CPU and the reason goes to stderr.
//
// Beside a prefill (PrefillBuild, `gate` and `keep` set): only layers without an index (first
// builds), each piece once the gate says its layer's keys are in the host cache; finished
// indexes go to keep[layer] (policy_commit adopts them); on any failure or a cancelled
// gate it stops, leaving the rest to the commit's own build.
void build_with_codes(Session &s, int64_t target, int mode, LayerGate *gate = nullptr,
                      std::vector<std::unique_ptr<lsh::Index>> *keep = nullptr) {
  const mp_attention_params &a = s.attention();
  State &st = state(s);
  ForwardBackend &be = s.engine().backend();
  const int64_t S = a.sinks;
  const int Hkv = s.n_kv_heads(), d = s.head_dim();
  std::vector<BuildItem> items;
  for (int32_t l = 0; l < s.n_layers(); l++) {
    if (s.layer_is_dense(l)) continue;
    const LayerState &ls = st.layers[(size_t)l];
    if (keep && ls.index) continue;  // beside a prefill: first builds only
    const int64_t E = ls.index ? index_end(s, ls) : S;
    const int64_t total = target - E;
    if (total <= 0 || ((mode == 0 || mode == 4) && total < GPU_HASH_MIN_TOKENS)) continue;
    for (int64_t o = 0; o < total; o += lsh::ADD_PIECE) {
      const int64_t c = std::min(lsh::ADD_PIECE, total - o);
      items.push_back({l, E + o, c, !ls.index && o + c == total});
    }
  }
  if (items.empty()) return;
  // Indexes made here join their layer when their last piece is in.
  std::vector<std::unique_ptr<lsh::Index>> fresh((size_t)s.n_layers());
  auto index_of = [&](int32_t l) -> lsh::Index & {
    if (st.layers[(size_t)l].index) return *st.layers[(size_t)l].index;
    if (!fresh[(size_t)l])
      fresh[(size_t)l] = std::make_unique<lsh::Index>(index_params(a), Hkv, d);
    return *fresh[(size_t)l];
  };
  struct Result {
    const uint16_t *codes = nullptr;
    bool sorted = false;     // `piece` holds the whole first build (build_first)
    bool cancelled = false;  // the prefill beside it stopped
    lsh::SortedPiece piece;
    double seconds = 0;  // on the helper thread
    std::string error;
  };
  // A layer's first build in one piece goes to build_first (μ, codes and the sorted blocks
  // on the GPU) in modes 0 and 1 when the backend can; otherwise its codes come from
  // hash_keys and the CPU sorts.
  const lsh::Params params = index_params(a);
  const bool first_ok = (mode == 0 || mode == 1) && be.can_build_first(s, params.K, params.L);
  auto whole_first = [&](const BuildItem &it) {
    return first_ok && it.merge && it.row == S && !st.layers[(size_t)it.layer].index;
  };
  std::vector<uint16_t> host_slot[2];  // mode 3's codes
  std::future<Result> next;  // declared last: on unwinding it is joined first
  // false: the prefill beside the build stopped before the piece's keys were written
  auto launch = [&](size_t i) -> bool {
    const BuildItem &it = items[i];
    lsh::Index &idx = index_of(it.layer);
    const bool first = whole_first(it);
    std::vector<float> mean;
    if (!first) {  // build_first computes μ itself
      if (gate && !gate->wait(it.layer)) return false;
      idx.init_mean(keys_at(s, it.layer, it.row), it.m);
      mean.resize((size_t)Hkv * d);
      for (int h = 0; h < Hkv; h++)
        std::copy(idx.head(h).mean.begin(), idx.head(h).mean.end(),
                  mean.begin() + (size_t)h * d);
    }
    const lsh::Projection *P = &idx.projection();
    const int slot = (int)(i & 1);
    auto job = [&s, &be, &host_slot, it, slot, P, mode, Hkv, first, mean, gate]() -> Result {
      Result r;
      if (first && gate && !gate->wait(it.layer)) {
        r.cancelled = true;
        return r;
      }
      const auto t0 = std::chrono::steady_clock::now();
      try {
        if (first) {
          be.build_first(s, it.layer, it.row, it.m, *P, slot, &r.piece);
          r.sorted = true;
        } else if (mode == 3) {
          std::vector<uint16_t> &buf = host_slot[slot];
          buf.resize((size_t)Hkv * P->L * it.m);
          lsh::hash_keys_cpu(*P, keys_at(s, it.layer, it.row), it.m, Hkv, mean.data(),
                             buf.data(), it.m);
          r.codes = buf.data();
        } else {
          r.codes = be.hash_keys(s, it.layer, it.row, it.m, mean.data(), *P, slot);
        }
      } catch (const std::exception &e) {
        r.codes = nullptr;
        r.sorted = false;
        r.error = e.what();
      } catch (...) {
        r.codes = nullptr;
        r.sorted = false;
        r.error = "unknown error";
      }
      r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!r.codes && !r.sorted && r.error.empty() && mode == 1)
        r.error = "the engine's backend cannot hash keys";
      return r;
    };
    try {
      next = std::async(std::launch::async, job);
    } catch (const std::system_error &) {  // no thread: hash on this one
      std::promise<Result> done;
      done.set_value(job());
      next = done.get_future();
    }
    return true;
  };
  bool use_codes = true;
  if (!launch(0)) return;
  for (size_t i = 0; i < items.size(); i++) {
    const BuildItem &it = items[i];
    Result r;
    if (use_codes) r = next.get();
    if (keep && !r.codes && !r.sorted) {
      // beside a prefill: a failure leaves the rest to the commit (which reports it)
      if (!r.cancelled && !r.error.empty())
        gpu::trace("index build beside the prefill stopped at layer %d: %s", it.layer,
                   r.error.c_str());
      return;
    }
    if (!r.codes && !r.sorted) {
      // forced onto the GPU (tests): a failure is an error, not a silent fallback
      MP_CHECK(!(use_codes && mode == 1), MP_ERR_CUDA,
               "hashing keys on the GPU failed (mp_gpu_set_kernel \"lsh\" 1): %s",
               r.error.c_str());
      if (use_codes && !r.error.empty())
        std::fprintf(stderr,
                     "magicpig: hashing keys for the LSH index on the GPU failed, building on "
                     "the CPU instead: %s\n",
                     r.error.c_str());
      use_codes = false;  // this piece and the rest on the CPU
    }
    const bool more = use_codes && i + 1 < items.size() && launch(i + 1);
    lsh::Index &idx = index_of(it.layer);
    if (r.sorted) {
      const lsh::Index::Times t0 = idx.times();
      idx.add_sorted(keys_at(s, it.layer, it.row), it.m, r.piece);
      const lsh::Index::Times &t1 = idx.times();
      gpu::trace("index build: layer %d, %lld tokens: GPU %.1f ms (mean, codes, sort, copies); "
                 "CPU %.1f ms (norms %.1f, alloc %.1f, copy %.1f)",
                 it.layer, (long long)it.m, r.seconds * 1e3, (t1.total - t0.total) * 1e3,
                 (t1.norms - t0.norms) * 1e3, (t1.alloc - t0.alloc) * 1e3,
                 (t1.sort - t0.sort) * 1e3);
    } else {
      const lsh::Codes codes{r.codes, it.m};
      idx.add(keys_at(s, it.layer, it.row), it.m, it.merge, /*auto_merge=*/true,
              r.codes ? &codes : nullptr);
    }
    const bool last = i + 1 == items.size() || items[i + 1].layer != it.layer;
    if (last && fresh[(size_t)it.layer]) {
      if (keep)
        (*keep)[(size_t)it.layer] = std::move(fresh[(size_t)it.layer]);
      else
        st.layers[(size_t)it.layer].index = std::move(fresh[(size_t)it.layer]);
    }
    if (keep && i + 1 < items.size() && !more) return;  // the prefill stopped
  }
}

// Where keys are hashed (mp_gpu_set_kernel "lsh"): 0 auto, 1 GPU, 2 CPU, 3 CPU via codes,
// 4 auto with GPU codes only (no build_first); whether a commit builds through
// build_with_codes.
bool builds_with_codes(const Session &s, int mode) {
  const bool device = s.engine().backend().kind() != MP_BACKEND_CPU;
  return mode == 3 || (mode != 2 && device);
}

// mp_session_prefill_commit's build beside the prefill: build_with_codes on its own
// thread, each layer once the prefill has written its keys (PrefillObserver), its first
// builds kept for policy_commit.
class PrefillBuild final : public PrefillIndexBuild {
 public:
  PrefillBuild(Session &s, int64_t target, int mode)
      : s_(s), target_(target), mode_(mode), keep_((size_t)s.n_layers()) {
    state(s);  // created here, read on the build's thread
    thread_ = std::thread([this] { run(); });
  }
  ~PrefillBuild() override { cancel(); }

  void layer_written(int32_t layer) override { gate_.written(layer); }
  void cancel() override {
    gate_.cancel();
    join();
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  int64_t target() const { return target_; }
  std::vector<std::unique_ptr<lsh::Index>> &built() { return keep_; }
  double seconds() const { return seconds_; }

 private:
  void run() {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      build_with_codes(s_, target_, mode_, &gate_, &keep_);
    } catch (const std::exception &e) {  // the commit builds what is missing (and reports)
      gpu::trace("index build beside the prefill failed: %s", e.what());
    } catch (...) {
      gpu::trace("index build beside the prefill failed");
    }
    seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  Session &s_;
  const int64_t target_;
  const int mode_;
  LayerGate gate_;
  std::vector<std::unique_ptr<lsh::Index>> keep_;
  double seconds_ = 0;
  std::thread thread_;  // last: started once the members exist
};

}  // namespace

std::unique_ptr<PrefillIndexBuild> policy_prefill_index(Session &s, int64_t n_after) {
  const mp_attention_params &a = s.attention();
  if (a.method != MP_ATTN_MAGICPIG) return nullptr;
  const int mode = gpu::lsh_key_hashing();
  if (!builds_with_codes(s, mode)) return nullptr;
  // A/B: $MP_PREFILL_INDEX=0 builds at the commit after the prefill instead
  static const bool off = env_equals("MP_PREFILL_INDEX", "0");
  if (off) return nullptr;
  const int64_t target = std::max<int64_t>(n_after - a.window, a.sinks);
  const int64_t min_tokens = (mode == 0 || mode == 4) ? GPU_HASH_MIN_TOKENS : 1;
  const State *st = state_if(s);
  bool any = false;
  for (int32_t l = 0; l < s.n_layers() && !any; l++)
    any = !s.layer_is_dense(l) && !(st && st->layers[(size_t)l].index) &&
          target - a.sinks >= min_tokens;
  if (!any) return nullptr;
  try {
    return std::make_unique<PrefillBuild>(s, target, mode);
  } catch (const std::system_error &) {  // no thread: the commit builds it all
    return nullptr;
  }
}

void policy_commit(Session &s, PrefillIndexBuild *built) {
  const mp_attention_params &a = s.attention();
  if (a.method != MP_ATTN_MAGICPIG) return;
  const int64_t target = std::max<int64_t>(s.n_tokens() - a.window, a.sinks);
  if (built) {
    // what the build beside the prefill finished, when it indexed this very range
    auto &b = static_cast<PrefillBuild &>(*built);
    b.join();
    State &st = state(s);
    int adopted = 0;
    for (size_t l = 0; l < st.layers.size(); l++) {
      std::unique_ptr<lsh::Index> &idx = b.built()[l];
      if (!idx || b.target() != target || st.layers[l].index) continue;
      st.layers[l].index = std::move(idx);
      adopted++;
    }
    gpu::trace("commit: %d layer index(es) built beside the prefill (its build took %.1f ms)",
               adopted, b.seconds() * 1e3);
  }
  const int mode = gpu::lsh_key_hashing();
  if (builds_with_codes(s, mode)) {
    build_with_codes(s, target, mode);
    s.engine().backend().index_builds_done();
  }
  // (a short prompt has no offloaded region yet; tokens flushed since the last commit
  // become permanent all the same)
  for (int32_t l = 0; l < s.n_layers(); l++)
    if (!s.layer_is_dense(l)) advance(s, l, target, /*commit=*/true);
}

void policy_truncate(Session &s, int64_t n) {
  if (!s.policy) return;
  State &st = state(s);
  const int64_t S = s.attention().sinks, page = std::max(1, s.attention().page_size);
  for (LayerState &ls : st.layers) {
    // pages past the new end are recomputed when needed
    ls.quest.pages = std::min(ls.quest.pages, std::max<int64_t>(0, (n - S) / page));
    if (!ls.index || index_end(s, ls) <= n) continue;
    // Every token flushed since the last commit goes back to the local region (even those
    // below n): the index returns to what the commit left, so rolling a turn back restores
    // the session exactly. (The engine refuses n below policy_n_indexed, the commit's end.)
    if (ls.committed == 0) {
      ls.index.reset();  // made by a flush since the last commit: μ came from those tokens
    } else {
      ls.index->truncate(ls.committed);
    }
  }
}

// Tokens indexed at the last commit (a truncate may not cut into them); generated tokens
// flushed into the index since then are not counted: truncating the turn drops them.
int64_t policy_n_indexed(const Session &s) {
  const State *st = state_if(s);
  if (!st) return 0;
  int64_t e = -1;
  for (const LayerState &ls : st->layers) {
    if (!ls.index) continue;
    const int64_t end = ls.committed > 0 ? s.attention().sinks + ls.committed : 0;
    e = e < 0 ? end : std::min(e, end);
  }
  return std::max<int64_t>(e, 0);
}

int64_t policy_host_bytes(const Session &s) {
  const State *st = state_if(s);
  if (!st) return 0;
  int64_t b = 0;
  for (const LayerState &ls : st->layers) {
    if (ls.index) b += ls.index->bytes().total();
    b += (int64_t)((ls.quest.mins.capacity() + ls.quest.maxs.capacity()) * sizeof(float));
  }
  return b;
}

void policy_save(const Session &s, SnapshotWriter &w) {
  const State *st = state_if(s);
  if (!st) return;
  for (int32_t l = 0; l < s.n_layers(); l++) {
    const lsh::Index *idx = st->layers[(size_t)l].index.get();
    if (!idx) continue;
    const uint64_t bytes = idx->image_bytes();
    w.begin_section(SNAP_TAG_LSH, 4 + 8 + 8 + bytes);
    w.put((int32_t)l);
    w.put((int64_t)st->layers[(size_t)l].committed);
    w.put(bytes);
    idx->write([&w](const void *p, size_t n) { w.write(p, n); });
    w.end_section();
  }
}

bool policy_load_section(Session &s, uint32_t tag, SnapshotReader &r) {
  if (tag != SNAP_TAG_LSH) return false;
  const mp_attention_params &a = s.attention();
  const int32_t l = r.get<int32_t>();
  const int64_t committed = r.get<int64_t>();
  const uint64_t bytes = r.get<uint64_t>();
  MP_CHECK(l >= 0 && l < s.n_layers() && !s.layer_is_dense(l) && a.method == MP_ATTN_MAGICPIG &&
               bytes == r.remaining(),
           MP_ERR_CORRUPT, "snapshot \"%s\" has an invalid LSH index section (layer %d)",
           r.path().c_str(), l);
  std::vector<uint8_t> image(bytes);
  r.read(image.data(), image.size());
  std::unique_ptr<lsh::Index> idx = lsh::Index::read(image.data(), image.size());
  const lsh::Params &p = idx->params();
  MP_CHECK(p.K == a.lsh_k && p.L == a.lsh_l && p.seed == a.seed &&
               idx->n_kv_heads() == s.n_kv_heads() && idx->head_dim() == s.head_dim() &&
               a.sinks + idx->n() <= s.capacity() && committed >= 0 &&
               committed <= idx->n() && committed >= idx->n_blocked(),
           MP_ERR_CORRUPT, "snapshot \"%s\": the LSH index of layer %d does not fit the session",
           r.path().c_str(), l);
  LayerState &ls = state(s).layers[(size_t)l];
  MP_CHECK(!ls.index, MP_ERR_CORRUPT, "snapshot \"%s\" has two LSH indexes for layer %d",
           r.path().c_str(), l);
  ls.index = std::move(idx);
  ls.committed = committed;
  return true;
}

}  // namespace mp

// ------------------------------------------------------------
// split decode (policy.h): the exact part is the caller's, the offloaded part is here.
// The same decisions as policy_decode_attention(), in two calls.

namespace mp {

int64_t policy_split_begin(Session &s, int32_t layer, int64_t pos) {
  const mp_attention_params &a = s.attention();
  // The query's own row is always exact here (window >= 1): the caller computes that row
  // and its host copy may not exist yet.
  const int64_t S = a.sinks, W = std::max<int64_t>(a.window, 1);
  if (a.method == MP_ATTN_MAGICPIG) {
    State &st = state(s);
    LayerState &ls = st.layers[(size_t)layer];
    int64_t E = ls.index ? index_end(s, ls) : S;
    if (pos + 1 - E > W + a.gen_buffer && pos + 1 - W > S) {
      advance(s, layer, pos + 1 - W, /*commit=*/false);
      E = index_end(s, ls);
    }
    return (!ls.index || E <= S) ? S : E;
  }
  if (a.method == MP_ATTN_DENSE) return S;
  return std::max(S, pos + 1 - W);
}

static void split_magicpig_rows(Session *const *ss, const std::vector<int32_t> &mp_rows,
                                int32_t layer, const int64_t *E, const float *q, float *out,
                                float *lse2, const SplitGpuShare *gpu, lsh::Timing *timing,
                                const uint16_t *qcodes);

void policy_split_offloaded(Session *const *ss, int32_t n, int32_t layer, const int64_t *pos,
                            const int64_t *E, const float *q, float *out, float *lse2,
                            const SplitGpuShare *gpu, lsh::Timing *timing,
                            const uint16_t *qcodes) {
  if (n <= 0) return;
  const mp_model_config &c = ss[0]->engine().config();
  const int H = c.n_heads, d = c.head_dim;
  const size_t Hd = (size_t)H * d;
  // MAGICPIG sessions with an offloaded part: one batched retrieval + sampled attention.
  std::vector<int32_t> mp_rows;
  for (int32_t i = 0; i < n; i++) {
    Session &s = *ss[i];
    const int64_t S = s.attention().sinks;
    if (E[i] <= S) {
      std::fill(out + (size_t)i * Hd, out + (size_t)(i + 1) * Hd, 0.0f);
      std::fill(lse2 + (size_t)i * H, lse2 + (size_t)(i + 1) * H, -INFINITY);
      continue;
    }
    if (s.attention().method == MP_ATTN_MAGICPIG) {
      mp_rows.push_back(i);
      continue;
    }
    // Baselines: one session at a time (each parallel inside).
    const mp_attention_params &a = s.attention();
    State &st = state(s);
    LayerState &ls = st.layers[(size_t)layer];
    if (st.nnz.size() < (size_t)H) st.nnz.resize((size_t)H);
    baseline::KV kv;
    kv.view = kv_view(s, layer, S);
    kv.n = E[i] - S;
    kv.Hkv = c.n_kv_heads;
    kv.d = d;
    const float *qi = q + (size_t)i * Hd;
    float *oi = out + (size_t)i * Hd, *li = lse2 + (size_t)i * H;
    switch (a.method) {
      case MP_ATTN_TOPK:
        baseline::topk(kv, qi, H, a.budget, oi, li, st.nnz.data());
        break;
      case MP_ATTN_QUEST:
        baseline::quest_pages(kv, a.page_size, ls.quest);
        baseline::quest(kv, qi, H, a.budget, a.page_size, oi, li, st.nnz.data(), &ls.quest);
        break;
      case MP_ATTN_ORACLE: {
        const uint64_t seed = a.seed + 0x9e3779b97f4a7c15ull * (uint64_t)(layer + 1) +
                              0xbf58476d1ce4e5b9ull * (uint64_t)pos[i];
        baseline::oracle(kv, qi, H, a.budget, seed, oi, li, st.nnz.data());
        break;
      }
      default:
        MP_FAIL(MP_ERR_INTERNAL, "attention method %d has no decode policy", a.method);
    }
    double attended = 0;
    for (int h = 0; h < H; h++) attended += st.nnz[(size_t)h];
    s.add_key_stats(attended, (double)H * (double)(E[i] - S));
  }
  if (mp_rows.empty()) return;
  // One batched call per padded table count: lsh::attention requires its indexes to agree on
  // it, and sessions may choose their own L (their K and ε may differ within a call).
  std::vector<int32_t> rest;
  while (!mp_rows.empty()) {
    const int Lp = state(*ss[mp_rows[0]]).layers[(size_t)layer].index->Lp();
    std::vector<int32_t> rows;
    rest.clear();
    for (int32_t i : mp_rows)
      (state(*ss[i]).layers[(size_t)layer].index->Lp() == Lp ? rows : rest).push_back(i);
    split_magicpig_rows(ss, rows, layer, E, q, out, lse2, gpu, timing, qcodes);
    mp_rows.swap(rest);
  }
}

// policy_split_offloaded's MAGICPIG rows of one padded table count: one batched retrieval +
// sampled attention, with the caller's GPU share of their KV heads.
static void split_magicpig_rows(Session *const *ss, const std::vector<int32_t> &mp_rows,
                                int32_t layer, const int64_t *E, const float *q, float *out,
                                float *lse2, const SplitGpuShare *gpu, lsh::Timing *timing,
                                const uint16_t *qcodes) {
  const mp_model_config &c = ss[0]->engine().config();
  const int H = c.n_heads, d = c.head_dim;
  const size_t Hd = (size_t)H * d;
  const size_t B = mp_rows.size();
  std::vector<const lsh::Index *> idx(B);
  std::vector<lsh::KVView> kv(B);
  std::vector<float> qb(B * Hd), ob(B * Hd), lb(B * (size_t)H);
  std::vector<int32_t> nnz(B * (size_t)H);
  for (size_t j = 0; j < B; j++) {
    Session &s = *ss[mp_rows[j]];
    idx[j] = state(s).layers[(size_t)layer].index.get();
    kv[j] = kv_view(s, layer, s.attention().sinks);
    std::copy(q + (size_t)mp_rows[j] * Hd, q + (size_t)(mp_rows[j] + 1) * Hd, qb.data() + j * Hd);
  }
  // The caller's query codes, rows re-indexed like q (one L for the batch: lsh::attention
  // requires the indexes to agree on it).
  std::vector<uint16_t> qcb;
  if (qcodes) {
    const size_t HL = (size_t)H * idx[0]->params().L;
    qcb.resize(B * HL);
    for (size_t j = 0; j < B; j++)
      std::copy(qcodes + (size_t)mp_rows[j] * HL, qcodes + (size_t)(mp_rows[j] + 1) * HL,
                qcb.data() + j * HL);
  }
  lsh::Batch batch;
  batch.idx = idx.data();
  batch.kv = kv.data();
  batch.B = (int)B;
  batch.H = H;
  batch.q = qb.data();
  batch.qcodes = qcodes ? qcb.data() : nullptr;
  // The caller's GPU share: its KV heads, re-indexed to the MAGICPIG rows.
  const int Hkv = c.n_kv_heads;
  std::vector<uint8_t> gkv;
  struct Tramp {
    const SplitGpuShare *gpu;
    const int32_t *rows;
  } tramp{gpu, mp_rows.data()};
  lsh::Offload off;
  if (gpu && gpu->kv_heads && (gpu->ready || gpu->blocks)) {
    gkv.assign(B * (size_t)Hkv, 0);
    bool any = false;
    for (size_t j = 0; j < B; j++)
      for (int h = 0; h < Hkv; h++)
        any |= (gkv[j * Hkv + h] = gpu->kv_heads[(size_t)mp_rows[j] * Hkv + h] ? 1 : 0) != 0;
    if (any) {
      off.kv_heads = gkv.data();
      off.blocks = gpu->blocks;
      if (!gpu->blocks) {
        off.ctx = &tramp;
        off.ready = [](void *ctx, const lsh::OffloadSamples &smp) {
          const Tramp &t = *static_cast<const Tramp *>(ctx);
          t.gpu->ready(t.gpu->ctx, smp, t.rows);
        };
      }
      batch.offload = &off;
    }
  }
  batch.timing = timing;
  lsh::attention(batch, 0, nullptr, nullptr, 0, ob.data(), lb.data(), nnz.data(), nullptr);
  for (size_t j = 0; j < B; j++) {
    const int32_t i = mp_rows[j];
    std::copy(ob.data() + j * Hd, ob.data() + (j + 1) * Hd, out + (size_t)i * Hd);
    std::copy(lb.data() + j * H, lb.data() + (j + 1) * H, lse2 + (size_t)i * H);
    double attended = 0;
    for (int h = 0; h < H; h++) attended += nnz[j * H + h];
    Session &s = *ss[i];
    s.add_key_stats(attended, (double)H * (double)(E[i] - s.attention().sinks));
  }
}

}  // namespace mp
