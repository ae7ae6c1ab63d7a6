// cuda_backend.cu — the Llama forward pass on the GPU (ForwardBackend, backend.h).
//
// Weights live on the device in bf16, fused per layer: Wqkv [(H + 2·Hkv)·d][dim] (q rows,
// then k, then v), Wo [dim][H·d], Wgu [2·ffn][dim] (gate rows, then up), Wd [dim][ffn];
// norms in f32; the LM head is the embedding table when tied. The residual stream is f32;
// GEMM inputs are bf16; every GEMM accumulates in f32 and the O and down projections add
// into the residual (cuBLAS beta = 1 / the skinny kernel's accumulate).
//
// Prefill (layer-wise, chunked): for a prompt of n tokens at positions p0..p0+n−1 the GPU
// holds the residual of all n tokens, ONE layer's keys and values for all p0 + n positions
// ([Hkv][T][d] bf16, the host cache's layout), and one chunk's activations. For each layer:
//   1. rows 0..p0−1 of the layer's K/V stream in from the session's host cache (follow-up
//      turns: the earlier tokens are attended exactly, never re-prefilled);
//   2. chunk by chunk: RMSNorm, QKV GEMM, RoPE (q and k in place), K/V rows into the layer
//      buffer, causal flash attention over rows 0..pos, O GEMM (+= residual), RMSNorm,
//      gate/up GEMM, SwiGLU, down GEMM (+= residual);
//   3. the layer's new K/V rows go to the session's host cache (one 2-D copy each).
// So a 96K prompt on the 8B shape needs weights + 1.6 GB residual + 0.4 GB of one layer's
// KV + ~1 GB of chunk activations: it fits a 24 GB budget. The abort flag is polled
// between layers.
//
// Decode (one token for each of B sessions, one call): per layer, one GEMM per weight for
// the whole batch; RoPE; the new K/V rows are appended to each session's device cache and
// staged on the device (one copy to the host caches per step); attention:
//   - layers the session attends exactly (layer_is_dense: every layer of a DENSE session,
//     the dense layers of the others) run the split-K decode kernel over the session's
//     keys on the GPU. Where those keys live is the KV placement (mp_gpu_set_kernel "kv"):
//     RESIDENT keeps them on the device (uploaded once, then one row per step), STREAMED
//     copies the layer's rows from host memory every step, on a copy stream, one layer
//     ahead of the compute (the dense-from-host baseline). AUTO = resident within the
//     gpu_memory_budget, else streamed;
//   - the other (sparse) layers of MAGICPIG/TOPK/QUEST/ORACLE sessions are split (policy.h,
//     "split decode"): the GPU attends the exact part — sinks, local window and generated
//     tokens, kept per (session, sparse layer) in a small device "window" buffer [Hkv][wcap][d]
//     (slot t for a sink t < S, slot S + t − E for a local token t >= E; re-filled from the
//     host rows when the policy moves E) — while the CPU runs the policy's offloaded part
//     [S, E) (MAGICPIG retrieval + sampled attention, batched over the sessions; TopK,
//     Quest, oracle) from the host KV. Per sparse layer: q (f32) goes to pinned host memory
//     and an event marks it; the window attention (f32 out + base-2 LSE) is queued right
//     behind it, so it runs while the calling thread waits for q and then computes the
//     CPU part; the CPU's out + LSE come back (pinned) and one merge kernel joins the two
//     into the batch's attention output before the O projection.
// The logits of every session come back in f32.
//
// Device memory is accounted per engine against gpu_memory_budget: an allocation that
// would pass it fails with MP_ERR_OOM and a message naming what needed the memory, before
// any work, instead of an out-of-memory error in the middle of a forward pass.
#include <algorithm>
#include <cmath>
#include <exception>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <map>
#include <mutex>
#include <unordered_set>
#include <vector>

#include "common/task_pool.h"
#include "cpu/huge_alloc.h"
#include "cpu/lsh_hash.h"
#include "cpu/lsh_index.h"
#include "engine/backend.h"
#include "engine/decode_worker.h"
#include "engine/engine.h"
#include "engine/policy.h"
#include "engine/profile.h"
#include "engine/session.h"
#include "gpu/gpu.h"
#include "gpu/kernels.h"

namespace mp {

namespace {

// The LSH index's blocks in page-locked memory (huge_alloc.h HostRegistrar, installed by the
// first CUDA backend): split decode's GPU retrieval reads their offsets and entries in place
// over PCIe. Registered portable and mapped (any device reads them at their host address);
// "pin" off, or a failed registration, leaves them pageable, and decode then retrieves on
// the CPU.
struct IndexPins {
  std::mutex mu;
  std::unordered_set<const void *> pinned;
};
IndexPins &index_pins() {
  static IndexPins *p = new IndexPins;  // never destroyed: blocks may outlive static teardown
  return *p;
}
void index_pin(void *p, size_t bytes) {
  if (gpu::forced_variant(gpu::OP_PIN) == 2) return;
  IndexPins &ip = index_pins();
  std::lock_guard<std::mutex> lock(ip.mu);
  if (ip.pinned.count(p)) return;
  if (cudaHostRegister(p, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped) ==
      cudaSuccess)
    ip.pinned.insert(p);
  else
    (void)cudaGetLastError();  // stays pageable
}
void index_unpin(void *p) {
  IndexPins &ip = index_pins();
  std::lock_guard<std::mutex> lock(ip.mu);
  if (ip.pinned.erase(p) && cudaHostUnregister(p) != cudaSuccess) (void)cudaGetLastError();
}
bool index_pinned(const void *p) {
  IndexPins &ip = index_pins();
  std::lock_guard<std::mutex> lock(ip.mu);
  return ip.pinned.count(p) != 0;
}
const HostRegistrar kIndexRegistrar{&index_pin, &index_unpin};

// $MP_TRACE's prefill profile: events on the compute stream at every layer start and between
// the ops of every chunk of one layer; report() (after the prefill's final synchronisation)
// traces each layer's GPU time and that layer's time per op. Off: every call returns at once.
class PrefillProfile {
 public:
  static constexpr int OPS = 10;  // op(l, i) marks the start of op i; op(l, OPS - 1) its end
  PrefillProfile(bool on, int layer, cudaStream_t s) : on_(on), layer_(layer), s_(s) {}
  ~PrefillProfile() {
    for (cudaEvent_t e : layers_) (void)cudaEventDestroy(e);
    for (cudaEvent_t e : ops_) (void)cudaEventDestroy(e);
  }
  PrefillProfile(const PrefillProfile &) = delete;
  PrefillProfile &operator=(const PrefillProfile &) = delete;
  void layer(int32_t) {
    if (on_) layers_.push_back(record());
  }
  void op(int32_t l, int) {
    if (on_ && l == layer_) ops_.push_back(record());
  }
  void report(int32_t n) const {
    if (!on_ || layers_.size() < 2) return;
    double total = 0;
    std::string per;
    for (size_t l = 0; l + 1 < layers_.size(); l++) {
      const double ms = elapsed(layers_[l], layers_[l + 1]);
      total += ms;
      char b[32];
      std::snprintf(b, sizeof b, "%s%.1f", l ? " " : "", ms);
      per += b;
    }
    gpu::trace("prefill profile: %d tokens, %.1f ms of GPU time over %zu layers (ms each: %s)", n,
          total, layers_.size() - 1, per.c_str());
    // ops_: per chunk the start of op 0 and the ends of ops 0..OPS-2 (= starts of 1..OPS-1),
    // the last mark being the end of op OPS-1.
    static const char *names[OPS - 1] = {"attn_norm", "qkv", "rope+kv", "attention", "o",
                                         "ffn_norm", "gate/up", "swiglu", "down"};
    double sum[OPS - 1] = {};
    for (size_t c = 0; c + OPS <= ops_.size(); c += OPS)
      for (int i = 0; i < OPS - 1; i++) sum[i] += elapsed(ops_[c + i], ops_[c + i + 1]);
    std::string ops;
    for (int i = 0; i < OPS - 1; i++) {
      char b[64];
      std::snprintf(b, sizeof b, "%s%s %.2f", i ? ", " : "", names[i], sum[i]);
      ops += b;
    }
    gpu::trace("prefill profile: layer %d, ms per op over %zu chunks: %s", layer_,
               ops_.size() / OPS, ops.c_str());
    std::string att;
    for (size_t c = 0; c + OPS <= ops_.size(); c += OPS) {
      char b[32];
      std::snprintf(b, sizeof b, "%s%.2f", c ? " " : "", elapsed(ops_[c + 3], ops_[c + 4]));
      att += b;
    }
    gpu::trace("prefill profile: layer %d, attention ms per chunk: %s", layer_, att.c_str());
  }

 private:
  cudaEvent_t record() {
    cudaEvent_t e = nullptr;
    MP_CUDA(cudaEventCreate(&e));
    const cudaError_t rc = cudaEventRecord(e, s_);
    if (rc != cudaSuccess) (void)cudaEventDestroy(e);
    MP_CUDA(rc);
    return e;
  }
  static double elapsed(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0.f;
    return cudaEventElapsedTime(&ms, a, b) == cudaSuccess ? ms : 0.0;
  }
  bool on_;
  int layer_;
  cudaStream_t s_;
  std::vector<cudaEvent_t> layers_, ops_;
};

using gpu::bf16;
using gpu::trace;

constexpr double GiB = 1073741824.0;

// ------------------------------------------------------------
// device memory with a budget

class DeviceMemory {
 public:
  explicit DeviceMemory(int64_t budget) : budget_(budget) {}

  void *alloc(size_t bytes, const char *what) {
    if (bytes == 0) return nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    if (budget_ > 0 && used_ + (int64_t)bytes > budget_)
      MP_FAIL(MP_ERR_OOM,
              "the GPU memory budget is exceeded: %s needs %.2f GiB while %.2f GiB of the "
              "%.2f GiB budget (gpu_memory_budget) are in use",
              what, bytes / GiB, used_ / GiB, budget_ / GiB);
    void *p = nullptr;
    cudaError_t rc = cudaMalloc(&p, bytes);
    if (rc == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      MP_FAIL(MP_ERR_OOM, "out of GPU memory: %s needs %.2f GiB, %.2f GiB free on the device",
              what, bytes / GiB, free_b / GiB);
    }
    MP_CUDA(rc);
    used_ += (int64_t)bytes;
    peak_ = std::max(peak_, used_);
    return p;
  }
  void free(void *p, size_t bytes) {
    if (!p) return;
    (void)cudaFree(p);
    std::lock_guard<std::mutex> lock(mu_);
    used_ -= (int64_t)bytes;
  }
  // Would `bytes` more fit the budget?
  bool fits(size_t bytes) const {
    std::lock_guard<std::mutex> lock(mu_);
    return budget_ <= 0 || used_ + (int64_t)bytes <= budget_;
  }
  int64_t used() const {
    std::lock_guard<std::mutex> lock(mu_);
    return used_;
  }
  int64_t peak() const {
    std::lock_guard<std::mutex> lock(mu_);
    return peak_;
  }

 private:
  // a prefill's index build allocates on its own thread (backend.h)
  mutable std::mutex mu_;
  int64_t budget_;
  int64_t used_ = 0, peak_ = 0;
};

// A device array accounted in a DeviceMemory; grow-only reallocation (contents dropped).
template <class T>
struct Arr {
  DeviceMemory *mem = nullptr;
  T *p = nullptr;
  size_t n = 0;
  Arr() = default;
  Arr(const Arr &) = delete;
  Arr &operator=(const Arr &) = delete;
  Arr(Arr &&o) noexcept : mem(o.mem), p(o.p), n(o.n) { o.p = nullptr, o.n = 0; }
  Arr &operator=(Arr &&o) noexcept {
    if (this != &o) {
      release();
      mem = o.mem, p = o.p, n = o.n;
      o.p = nullptr, o.n = 0;
    }
    return *this;
  }
  ~Arr() { release(); }
  void ensure(DeviceMemory &m, size_t count, const char *what) {
    if (count <= n) return;
    release();
    mem = &m;
    p = (T *)m.alloc(count * sizeof(T), what);
    n = count;
  }
  void release() {
    if (p && mem) mem->free(p, n * sizeof(T));
    p = nullptr, n = 0;
  }
  size_t bytes() const { return n * sizeof(T); }
};

// Pinned host array, grow-only.
template <class T>
struct Pinned {
  gpu::HostPinned<T> b;
  T *ensure(size_t count) {
    if (count > b.n) b.alloc(count);
    return b.p;
  }
  T *get() const { return b.p; }
};

struct LayerDev {
  Arr<bf16> wqkv, wo, wgu, wd;
  Arr<float> attn_norm, ffn_norm;
};

// Per-session device state: the KV of the layers the GPU attends, when resident.
struct CudaSession final : BackendSessionState {
  std::vector<Arr<bf16>> k, v;  // [layer] -> [Hkv][cap][d] (empty for CPU layers)
  int64_t cap = 0;              // rows per head allocated
  int64_t rows = 0;             // rows valid on the device
  bool resident = false;
  // Sparse layers: the exact part's rows (see the file comment), [layer] -> [Hkv][wcap][d].
  std::vector<Arr<bf16>> wk, wv;
  std::vector<int64_t> wbase;  // E the window's local slots start at (-1: nothing valid)
  std::vector<int64_t> wrows;  // valid slots
  int64_t wcap = 0;
  // Whether every layer's host K/V cache is mapped page-locked memory (decode writes its new
  // rows there from the GPU), for the host buffers in `mapped_of` (rechecked when they change).
  std::vector<const void *> mapped_of;
  bool mapped = false;
  int64_t bytes() const {
    int64_t b = 0;
    for (auto &a : k) b += (int64_t)a.bytes();
    for (auto &a : v) b += (int64_t)a.bytes();
    for (auto &a : wk) b += (int64_t)a.bytes();
    for (auto &a : wv) b += (int64_t)a.bytes();
    return b;
  }
};

uint64_t tensor_seed(uint64_t seed, int kind, int layer) {
  uint64_t z = seed ^ ((uint64_t)(kind + 1) * 0x9e3779b97f4a7c15ull) ^
               ((uint64_t)(layer + 1) * 0xc2b2ae3d27d4eb4full);
  z = (z ^ (z >> 31)) * 0xbf58476d1ce4e5b9ull;
  return z ^ (z >> 29);
}

class CudaBackend final : public ForwardBackend {
 public:
  explicit CudaBackend(Engine &e)
      : e_(e), c_(e.config()), mem_(e.params().gpu_memory_budget) {
    MP_CHECK(gpu::device_count() > 0, MP_ERR_NO_DEVICE, "no usable CUDA device");
    int ndev = gpu::device_count();
    MP_CHECK(e.params().device < ndev, MP_ERR_INVALID,
             "device \"%d\" is invalid: %d CUDA device(s) present", e.params().device, ndev);
    MP_CUDA(cudaSetDevice(e.params().device));
    MP_CHECK(e.kv_dtype() == MP_DTYPE_BF16, MP_ERR_UNSUPPORTED,
             "kv_dtype \"%d\" is not supported by the CUDA backend: use 2 (BF16)", e.kv_dtype());
    MP_CHECK(c_.head_dim % 8 == 0 && c_.head_dim <= 256, MP_ERR_UNSUPPORTED,
             "head_dim %d is not supported by the CUDA backend: must be a multiple of 8, <= 256",
             c_.head_dim);
    MP_CUDA(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
    MP_CUDA(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
    // The index build's stream gets the highest priority: beside a prefill
    // (mp_session_prefill_commit) its small, latency-bound kernels take SMs as the
    // prefill's blocks retire instead of waiting behind its queued kernels.
    int prio_least = 0, prio_greatest = 0;
    MP_CUDA(cudaDeviceGetStreamPriorityRange(&prio_least, &prio_greatest));
    MP_CUDA(cudaStreamCreateWithPriority(&hash_, cudaStreamNonBlocking, prio_greatest));
    MP_CUDA(cudaStreamCreateWithFlags(&up_, cudaStreamNonBlocking));
    MP_CUDA(cudaStreamCreateWithFlags(&rows_, cudaStreamNonBlocking));
    MP_CUDA(cudaStreamCreateWithFlags(&mark_, cudaStreamNonBlocking));
    for (auto &ev : ev_rows_) MP_CUDA(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    MP_CUDA(cudaEventCreateWithFlags(&ev_near_, cudaEventDisableTiming));
    for (auto &ev : ev_) MP_CUDA(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    MP_CUDA(cudaEventCreateWithFlags(&ev_q_, cudaEventDisableTiming));
    for (auto &ev : ev_pf_) MP_CUDA(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    for (auto &ev : ev_pf_done_) MP_CUDA(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    for (auto &ev : ev_pf_up_) MP_CUDA(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    gemm_ = std::make_unique<gpu::Gemm>(s_);
    H_ = c_.n_heads, Hkv_ = c_.n_kv_heads, d_ = c_.head_dim, dim_ = c_.dim, F_ = c_.ffn_dim;
    QKV_ = (H_ + 2 * Hkv_) * d_;
    layers_.resize((size_t)c_.n_layers);
    // The engine's inverse frequencies (double, Llama-3 scaling applied) are the reference.
    inv_freq_.ensure(mem_, (size_t)d_ / 2, "RoPE frequencies");
    MP_CUDA(cudaMemcpy(inv_freq_.p, e.rope_inv_freq(), (size_t)d_ / 2 * sizeof(double),
                       cudaMemcpyHostToDevice));
    set_host_registrar(&kIndexRegistrar);  // indexes built from now on are page-locked
  }

  ~CudaBackend() override {
    (void)cudaStreamSynchronize(s_);
    if (graph_exec_) (void)cudaGraphExecDestroy(graph_exec_);
    (void)cudaStreamSynchronize(copy_);
    gemm_.reset();
    for (auto &ev : ev_) (void)cudaEventDestroy(ev);
    (void)cudaEventDestroy(ev_q_);
    (void)cudaStreamSynchronize(up_);
    for (auto &ev : ev_pf_) (void)cudaEventDestroy(ev);
    for (auto &ev : ev_pf_done_) (void)cudaEventDestroy(ev);
    for (auto &ev : ev_pf_up_) (void)cudaEventDestroy(ev);
    (void)cudaStreamDestroy(s_);
    (void)cudaStreamDestroy(copy_);
    (void)cudaStreamDestroy(up_);
    (void)cudaStreamSynchronize(hash_);
    (void)cudaStreamDestroy(hash_);
    (void)cudaStreamSynchronize(rows_);
    for (auto &ev : ev_rows_) (void)cudaEventDestroy(ev);
    (void)cudaEventDestroy(ev_near_);
    (void)cudaStreamDestroy(rows_);
    for (auto &ev : ev_share_end_) (void)cudaEventDestroy(ev);
    for (auto &ev : ev_cpu_end_) (void)cudaEventDestroy(ev);
    (void)cudaStreamDestroy(mark_);
  }

  int32_t kind() const override { return MP_BACKEND_CUDA; }

  // ------------------------------------------------------------
  // weights

  bool init_random(uint64_t seed, float scale) override {
    use_device();
    alloc_weights();
    for (int32_t l = 0; l < c_.n_layers; l++) {
      LayerDev &L = layers_[(size_t)l];
      // Fused layouts: one fill per source tensor keeps each tensor's own seed.
      const int64_t qd = (int64_t)H_ * d_ * dim_, kd = (int64_t)Hkv_ * d_ * dim_;
      gpu::fill_normal<bf16>(L.wqkv.p, qd, tensor_seed(seed, MP_TENSOR_WQ, l), scale, 0.f, s_);
      gpu::fill_normal<bf16>(L.wqkv.p + qd, kd, tensor_seed(seed, MP_TENSOR_WK, l), scale, 0.f,
                             s_);
      gpu::fill_normal<bf16>(L.wqkv.p + qd + kd, kd, tensor_seed(seed, MP_TENSOR_WV, l), scale,
                             0.f, s_);
      gpu::fill_normal<bf16>(L.wo.p, (int64_t)L.wo.n, tensor_seed(seed, MP_TENSOR_WO, l), scale,
                             0.f, s_);
      const int64_t fd = (int64_t)F_ * dim_;
      gpu::fill_normal<bf16>(L.wgu.p, fd, tensor_seed(seed, MP_TENSOR_W_GATE, l), scale, 0.f, s_);
      gpu::fill_normal<bf16>(L.wgu.p + fd, fd, tensor_seed(seed, MP_TENSOR_W_UP, l), scale, 0.f,
                             s_);
      gpu::fill_normal<bf16>(L.wd.p, (int64_t)L.wd.n, tensor_seed(seed, MP_TENSOR_W_DOWN, l),
                             scale, 0.f, s_);
      gpu::fill_normal<float>(L.attn_norm.p, dim_, 0, 0.f, 1.f, s_);
      gpu::fill_normal<float>(L.ffn_norm.p, dim_, 0, 0.f, 1.f, s_);
    }
    gpu::fill_normal<bf16>(embd_.p, (int64_t)embd_.n, tensor_seed(seed, MP_TENSOR_TOKEN_EMBD, 0),
                           scale, 0.f, s_);
    if (!c_.tied_embeddings)
      gpu::fill_normal<bf16>(head_.p, (int64_t)head_.n, tensor_seed(seed, MP_TENSOR_OUTPUT, 0),
                             scale, 0.f, s_);
    gpu::fill_normal<float>(out_norm_.p, dim_, 0, 0.f, 1.f, s_);
    MP_CUDA(cudaStreamSynchronize(s_));
    device_init_ = true;
    return true;
  }

  void prepare() override {
    use_device();
    alloc_weights();
    // Upload every tensor that has a host copy (all of them after load_tensor; none after
    // a device init_random).
    for (int32_t l = 0; l < c_.n_layers; l++) {
      const LayerWeights &W = e_.layer(l);
      LayerDev &L = layers_[(size_t)l];
      const size_t qn = (size_t)H_ * d_ * dim_, kn = (size_t)Hkv_ * d_ * dim_;
      upload_matrix(W.wq, L.wqkv.p);
      upload_matrix(W.wk, L.wqkv.p + qn);
      upload_matrix(W.wv, L.wqkv.p + qn + kn);
      upload_matrix(W.wo, L.wo.p);
      upload_matrix(W.w_gate, L.wgu.p);
      upload_matrix(W.w_up, L.wgu.p + (size_t)F_ * dim_);
      upload_matrix(W.w_down, L.wd.p);
      upload_norm(W.attn_norm, L.attn_norm.p);
      upload_norm(W.ffn_norm, L.ffn_norm.p);
    }
    upload_matrix(e_.token_embd(), embd_.p);
    if (!c_.tied_embeddings) upload_matrix(e_.tensor(MP_TENSOR_OUTPUT, 0), head_.p);
    upload_norm(e_.output_norm(), out_norm_.p);
    MP_CUDA(cudaStreamSynchronize(s_));
    weights_bytes_ = mem_.used();
    warm_up();
  }

  // ------------------------------------------------------------
  // prefill

  // A prefill chunk's activations (C rows each).
  struct ChunkBufs {
    bf16 *xb, *qkv, *att, *gu, *hb;
  };
  // ... and their memory, for chunks of up to C rows (the prefill's and the warm-up's).
  struct ChunkArrs {
    Arr<bf16> xb, qkv, att, gu, hb;
    // Bytes per row.
    static size_t row_bytes(const CudaBackend &b) {
      return (size_t)(b.dim_ + b.QKV_ + b.H_ * b.d_ + 3 * b.F_) * sizeof(bf16);
    }
    void ensure(CudaBackend &b, int32_t C, const char *what) {
      xb.ensure(b.mem_, (size_t)C * b.dim_, what);
      qkv.ensure(b.mem_, (size_t)C * b.QKV_, what);
      att.ensure(b.mem_, (size_t)C * b.H_ * b.d_, what);
      gu.ensure(b.mem_, (size_t)C * 2 * b.F_, what);
      hb.ensure(b.mem_, (size_t)C * b.F_, what);
    }
    ChunkBufs bufs() const { return ChunkBufs{xb.p, qkv.p, att.p, gu.p, hb.p}; }
  };

  // The ops of one prefill chunk of layer L: m rows of the residual stream xc (f32) at
  // positions pos (device) = pos0.., their K/V into K and V (head-major, T rows per head),
  // then attention and the MLP for rows r0..m−1 of the chunk, none when r0 < 0. prof marks
  // the ops' boundaries (layer l).
  //
  // kmax (device [Hkv], may be null): the attention's bound on the key norms (KVView::kmax),
  // brought up to date with rows [norm_from, pos0 + m) of K (reset first when norm_from is 0).
  void prefill_chunk_ops(const LayerDev &L, float *xc, int32_t m, const int32_t *pos,
                         int64_t pos0, bf16 *K, bf16 *V, int64_t T, int32_t r0,
                         const ChunkBufs &b, PrefillProfile &prof, int32_t l, float *kmax,
                         int64_t norm_from) {
    prof.op(l, 0);
    gpu::rmsnorm<bf16>(xc, L.attn_norm.p, m, dim_, c_.rms_eps, b.xb, s_);
    prof.op(l, 1);
    gpu::matmul<bf16>(*gemm_, L.wqkv.p, b.xb, dim_, m, dim_, QKV_, b.qkv, QKV_, false);
    prof.op(l, 2);
    gpu::rope<bf16>(b.qkv, m, H_ + Hkv_, d_, QKV_, pos, inv_freq_.p, c_.rope.style, s_);
    gpu::kv_scatter(b.qkv, QKV_, H_ * d_, (H_ + Hkv_) * d_, m, Hkv_, d_, K, V, T, pos0, s_);
    gpu::KVView kv{K, V, (int64_t)d_, (int64_t)T * d_};
    if (kmax) {  // every chunk, also those of a last layer that attend nothing (its last row will)
      gpu::key_norm_max(K, d_, T * d_, norm_from, pos0 + m, Hkv_, d_, kmax, norm_from == 0, s_);
      kv.kmax = kmax;
    }
    prof.op(l, 3);
    if (r0 < 0) return;
    const int32_t mr = m - r0;
    const bf16 *qr = b.qkv + (size_t)r0 * QKV_;
    float *xr = xc + (size_t)r0 * dim_;
    gpu::attention_prefill<bf16>(qr, QKV_, kv, mr, (int)(pos0 + m), H_, Hkv_, d_,
                                 (int)(pos0 + r0), b.att, (int64_t)H_ * d_, nullptr, s_);
    prof.op(l, 4);
    gpu::matmul<float>(*gemm_, L.wo.p, b.att, (int64_t)H_ * d_, mr, H_ * d_, dim_, xr, dim_,
                       true);
    prof.op(l, 5);
    gpu::rmsnorm<bf16>(xr, L.ffn_norm.p, mr, dim_, c_.rms_eps, b.xb, s_);
    prof.op(l, 6);
    gpu::matmul<bf16>(*gemm_, L.wgu.p, b.xb, dim_, mr, dim_, 2 * F_, b.gu, 2 * F_, false);
    prof.op(l, 7);
    gpu::swiglu<bf16, bf16>(b.gu, b.gu + F_, mr, F_, 2 * F_, b.hb, F_, s_);
    prof.op(l, 8);
    gpu::matmul<float>(*gemm_, L.wd.p, b.hb, F_, mr, F_, dim_, xr, dim_, true);
    prof.op(l, 9);
  }

  // The prefill attention's bound on the key norms (KVView::kmax) for n tokens after p0:
  // head_dim 128 (the Hopper kernel's); a follow-up (p0 > 0) only from 2048 tokens on, where
  // the bound's pass over the p0 earlier rows stays small beside the attention
  // ($MP_KEY_BOUND=0: never, for A/B runs).
  bool use_key_bound(int64_t n, int64_t p0) const {
    return gpu::key_bound_enabled() && d_ == 128 && (p0 == 0 || n >= 2048);
  }

  // One chunk of a prefill on zeros, first layer, results dropped (finalize): the first
  // call of each kernel and cuBLAS shape (module loading, cuBLAS's heuristics) then happens
  // here instead of in a user's first prefill, whose layer 0 it held up by 0.12 s at 96K
  // (bench/gpu/NOTES.md, round 10). The chunk is the engine's prefill chunk (the GEMMs'
  // shape); skipped when its buffers do not fit the GPU memory budget.
  void warm_prefill() {
    const int32_t C = e_.prefill_chunk();
    const int64_t T = C;
    // x (f32), the chunk's activations, K and V, positions; and the bound
    const size_t need = (size_t)C * ((size_t)dim_ * 4 + ChunkArrs::row_bytes(*this) +
                                     (size_t)2 * Hkv_ * d_ * sizeof(bf16) + 4) +
                        (size_t)Hkv_ * 4;
    if (!mem_.fits(need)) return;
    Arr<float> x, kmax;
    ChunkArrs ch;
    Arr<bf16> K, V;
    Arr<int32_t> pos;
    x.ensure(mem_, (size_t)C * dim_, "warm-up activations");
    kmax.ensure(mem_, (size_t)Hkv_, "warm-up activations");
    ch.ensure(*this, C, "warm-up activations");
    K.ensure(mem_, (size_t)Hkv_ * T * d_, "warm-up activations");
    V.ensure(mem_, (size_t)Hkv_ * T * d_, "warm-up activations");
    pos.ensure(mem_, (size_t)C, "warm-up activations");
    MP_CUDA(cudaMemsetAsync(x.p, 0, (size_t)C * dim_ * 4, s_));
    MP_CUDA(cudaMemsetAsync(pos.p, 0, (size_t)C * 4, s_));
    PrefillProfile off(false, -1, s_);
    prefill_chunk_ops(layers_[0], x.p, C, pos.p, 0, K.p, V.p, T, 0, ch.bufs(), off, 0,
                      use_key_bound(C, 0) ? kmax.p : nullptr, 0);
    // The four GEMMs of a full chunk, each timed against cuBLASLt's other algorithms on
    // random activations (zeros draw less power and would rank them at another clock);
    // $MP_GEMM_TUNE=0 keeps cublasGemmEx's choice (A/B runs).
    if (!gpu::env_equals("MP_GEMM_TUNE", "0")) {
      gpu::fill_normal<bf16>(ch.xb.p, (int64_t)C * dim_, 7, 1.f, 0.f, s_);
      gpu::fill_normal<bf16>(ch.att.p, (int64_t)C * H_ * d_, 8, 1.f, 0.f, s_);
      gpu::fill_normal<bf16>(ch.hb.p, (int64_t)C * F_, 9, 1.f, 0.f, s_);
      const LayerDev &L = layers_[0];
      const double su[4] = {
          gpu::matmul_tune<bf16>(*gemm_, L.wqkv.p, ch.xb.p, dim_, C, dim_, QKV_, ch.qkv.p, QKV_, false),
          gpu::matmul_tune<float>(*gemm_, L.wo.p, ch.att.p, (int64_t)H_ * d_, C, H_ * d_, dim_, x.p,
                                  dim_, true),
          gpu::matmul_tune<bf16>(*gemm_, L.wgu.p, ch.xb.p, dim_, C, dim_, 2 * F_, ch.gu.p, 2 * F_,
                                 false),
          gpu::matmul_tune<float>(*gemm_, L.wd.p, ch.hb.p, F_, C, F_, dim_, x.p, dim_, true)};
      trace("prefill GEMMs tuned at %d rows: speed-up qkv %.3f, o %.3f, gate/up %.3f, down %.3f",
            C, su[0], su[1], su[2], su[3]);
    }
    gpu::stream_wait(s_, "the prefill warm-up");
  }

  // warm_prefill where the device has the memory (a budget was checked; the device may
  // still be short of it: then the first prefill pays the first calls, as before).
  void warm_up() {
    try {
      warm_prefill();
    } catch (const Error &e) {
      if (e.status != MP_ERR_OOM) throw;
      trace("prefill warm-up skipped: %s", e.message.c_str());
    }
  }

  int32_t prefill(Session &s, const int32_t *tokens, int32_t n, float *logits,
                  const int32_t *abort, PrefillObserver *written) override {
    use_device();
    const int64_t p0 = s.n_tokens();
    const int64_t T = p0 + n;
    const int32_t C = std::min<int32_t>(e_.prefill_chunk(), n);
    // Everything this call needs, allocated before any work (budget errors come first).
    Arr<float> x;
    // K/V of two layers: layer l computes into buffer l & 1 while layer l − 1's rows go to
    // the host cache on the copy stream (the write-back is off the critical path).
    ChunkArrs ch;
    Arr<bf16> Kb[2], Vb[2];
    Arr<int32_t> pos, tok;
    Arr<float> lg, kmax;
    x.ensure(mem_, (size_t)n * dim_, "prefill residual stream");
    const bool bound = use_key_bound(n, p0);
    if (bound) kmax.ensure(mem_, (size_t)Hkv_, "prefill key-norm bound");
    const int nbuf = c_.n_layers > 1 ? 2 : 1;
    for (int b = 0; b < nbuf; b++) {
      Kb[b].ensure(mem_, (size_t)Hkv_ * T * d_, "prefill layer keys");
      Vb[b].ensure(mem_, (size_t)Hkv_ * T * d_, "prefill layer values");
    }
    ch.ensure(*this, C, "prefill chunk activations");
    pos.ensure(mem_, (size_t)n, "prefill positions");
    tok.ensure(mem_, (size_t)n, "prefill tokens");
    if (logits) lg.ensure(mem_, (size_t)c_.vocab_size, "prefill logits");
    const ChunkBufs bufs = ch.bufs();

    std::vector<int32_t> hpos((size_t)n);
    for (int32_t i = 0; i < n; i++) hpos[(size_t)i] = (int32_t)(p0 + i);
    // An observer hears of each layer from a callback on the copy stream once the layer's
    // rows are in the host cache (queued work always runs: an early return waits for it).
    struct Written {
      PrefillObserver *obs;
      int32_t layer;
    };
    std::vector<Written> written_args;
    if (written)
      for (int32_t l = 0; l < c_.n_layers; l++) written_args.push_back({written, l});
    auto on_written = [](void *p) {
      const Written *w = static_cast<const Written *>(p);
      w->obs->layer_written(w->layer);
    };
    MP_CUDA(cudaMemcpyAsync(pos.p, hpos.data(), (size_t)n * 4, cudaMemcpyHostToDevice, s_));
    MP_CUDA(cudaMemcpyAsync(tok.p, tokens, (size_t)n * 4, cudaMemcpyHostToDevice, s_));
    gpu::embedding(MP_DTYPE_BF16, embd_.p, c_.vocab_size, dim_, tok.p, n, x.p, s_);
    gpu::stream_wait(s_, "the prefill's uploads");  // hpos and tokens: host memory of this frame

    const size_t row_b = (size_t)d_ * sizeof(bf16);
    // A call that appends to a session (p0 > 0: a scheduler's later prefill chunk, a
    // follow-up question) attends to each layer's earlier rows, which live in the host
    // cache: they are uploaded on up_ one layer ahead, while the previous layer computes
    // (for a 64-token question on a 96K session that is 369 MB per layer of the 8B shape,
    // 7 ms of PCIe against ~2 ms of compute). An upload into a buffer waits until the layer
    // that last used the buffer is computed (ev_pf_done_); it writes rows [0, p0), which the
    // write-back of that layer (rows [p0, T), on copy_) does not touch. A layer waits for its
    // upload (ev_pf_up_) and for its buffer's write-back (ev_pf_) before it writes [p0, T).
    // The last layer without logits computes no attention: it needs no earlier rows.
    const bool want_logits = logits != nullptr;
    auto needs_rows = [&](int32_t l) {
      return p0 > 0 && (l + 1 < c_.n_layers || want_logits);
    };
    auto upload = [&](int32_t l) {
      const int b = l % nbuf;
      if (l >= nbuf) MP_CUDA(cudaStreamWaitEvent(up_, ev_pf_done_[b], 0));
      MP_CUDA(cudaMemcpy2DAsync(Kb[b].p, (size_t)T * row_b, s.k_row(l, 0, 0),
                                (size_t)s.capacity() * row_b, (size_t)p0 * row_b, Hkv_,
                                cudaMemcpyHostToDevice, up_));
      MP_CUDA(cudaMemcpy2DAsync(Vb[b].p, (size_t)T * row_b, s.v_row(l, 0, 0),
                                (size_t)s.capacity() * row_b, (size_t)p0 * row_b, Hkv_,
                                cudaMemcpyHostToDevice, up_));
      MP_CUDA(cudaEventRecord(ev_pf_up_[b], up_));
    };
    // Work still queued when this call leaves early (an error) must not outlive the buffers
    // it reads and writes: wait for it (bounded, as every wait here; errors were reported).
    struct Drain {
      cudaStream_t st[3];
      ~Drain() {
        for (cudaStream_t x : st) {
          try {
            gpu::stream_wait(x, "the prefill's queued work");
          } catch (...) {
          }
        }
      }
    } drain{{s_, up_, copy_}};
    if (needs_rows(0)) upload(0);
    // $MP_TRACE: each layer's GPU time, and per-op GPU times of one layer that is not the
    // last (events between its kernels), traced after the prefill: what bounds the figure.
    PrefillProfile prof(gpu::trace_enabled(), c_.n_layers > 2 ? 1 : c_.n_layers == 2 ? 0 : -1, s_);
    for (int32_t l = 0; l < c_.n_layers; l++) {
      prof.layer(l);
      if (abort_requested(abort)) {
        gpu::stream_wait(s_, "the aborted prefill");
        gpu::stream_wait(up_, "the aborted prefill's uploads");
        gpu::stream_wait(copy_, "the aborted prefill's write-back");
        return MP_ABORTED;
      }
      trace("prefill: layer %d of %d queued (%d tokens at %lld)", l, c_.n_layers, n,
            (long long)p0);
      const LayerDev &L = layers_[(size_t)l];
      const int buf = l % nbuf;
      // Beside an index build (an observer) the host queues at most two layers ahead: the
      // build's copies and kernels, queued from its own thread, otherwise start only once the
      // whole call's queued work has drained (measured: a 96K build's first layer waited
      // the entire last 8K call, 0.96 s).
      if (written && l >= nbuf) gpu::event_wait(ev_pf_done_[buf], "a prefill layer");
      bf16 *const K = Kb[buf].p, *const V = Vb[buf].p;
      // the buffer's previous layer must be on the host before it is overwritten
      if (l >= nbuf) MP_CUDA(cudaStreamWaitEvent(s_, ev_pf_[buf], 0));
      if (needs_rows(l)) MP_CUDA(cudaStreamWaitEvent(s_, ev_pf_up_[buf], 0));
      for (int32_t c0 = 0; c0 < n; c0 += C) {
        const int32_t m = std::min(C, n - c0);
        // The last layer's outputs are read only at the last token (its logits): the other
        // rows need their K/V and nothing else, so attention and the MLP run for that one
        // row, in the last chunk, and not at all without logits. Exact: the rows skipped are
        // never read.
        const bool last = l == c_.n_layers - 1;
        const int32_t r0 = !last ? 0 : logits && c0 + m == n ? m - 1 : -1;
        // The bound covers every row the layer attends to (a last layer without logits
        // attends to none, and has no earlier rows uploaded).
        float *const km = bound && (!last || logits) ? kmax.p : nullptr;
        prefill_chunk_ops(L, x.p + (size_t)c0 * dim_, m, pos.p + c0, p0 + c0, K, V, T, r0,
                          bufs, prof, l, km, c0 == 0 ? 0 : p0 + c0);
        if (l == 0 && c0 == 0) trace("prefill: layer 0, chunk 0 queued");
      }
      // The layer's new rows to the session's host cache, on the copy stream once the
      // layer is computed; ev_pf_[buf] marks the buffer free again. The next layer's earlier
      // rows start uploading as soon as their buffer's last layer is computed.
      MP_CUDA(cudaEventRecord(ev_pf_done_[buf], s_));
      if (l + 1 < c_.n_layers && needs_rows(l + 1)) upload(l + 1);
      MP_CUDA(cudaStreamWaitEvent(copy_, ev_pf_done_[buf], 0));
      MP_CUDA(cudaMemcpy2DAsync(s.k_row(l, 0, p0), (size_t)s.capacity() * row_b,
                                K + (size_t)p0 * d_, (size_t)T * row_b, (size_t)n * row_b, Hkv_,
                                cudaMemcpyDeviceToHost, copy_));
      MP_CUDA(cudaMemcpy2DAsync(s.v_row(l, 0, p0), (size_t)s.capacity() * row_b,
                                V + (size_t)p0 * d_, (size_t)T * row_b, (size_t)n * row_b, Hkv_,
                                cudaMemcpyDeviceToHost, copy_));
      MP_CUDA(cudaEventRecord(ev_pf_[buf], copy_));
      if (written) MP_CUDA(cudaLaunchHostFunc(copy_, on_written, &written_args[(size_t)l]));
    }
    if (logits) {
      gpu::rmsnorm<bf16>(x.p + (size_t)(n - 1) * dim_, out_norm_.p, 1, dim_, c_.rms_eps, ch.xb.p,
                         s_);
      gpu::matmul<float>(*gemm_, head_ptr(), ch.xb.p, dim_, 1, dim_, c_.vocab_size, lg.p,
                         c_.vocab_size, false);
      MP_CUDA(cudaMemcpyAsync(logits, lg.p, (size_t)c_.vocab_size * 4, cudaMemcpyDeviceToHost,
                              s_));
    }
    prof.layer(c_.n_layers);
    gpu::stream_wait(s_, "the prefill");
    gpu::stream_wait(up_, "the prefill's uploads");
    gpu::stream_wait(copy_, "the prefill's write-back");
    trace("prefill: done");
    prof.report(n);
    s.set_n_tokens(T);
    return MP_OK;
  }

  // ------------------------------------------------------------
  // decode

  int32_t decode(Session *const *ss, int32_t B, const int32_t *tokens, float *logits,
                 const int32_t *abort) override {
    use_device();
    const int32_t NL = c_.n_layers;
    const int64_t Hd = (int64_t)H_ * d_;
    const size_t row_b = (size_t)d_ * sizeof(bf16);
    ensure_decode_workspace(B);
    trace("decode: step of %d session(s)", B);
    const auto t_step = std::chrono::steady_clock::now();
    for (double &x : prof_) x = 0;
    std::fill(share_timed_.begin(), share_timed_.end(), 0);
    rnnz_layer_.assign((size_t)NL, 0);

    // Placement and activation of every session.
    std::vector<int64_t> pos((size_t)B);
    std::vector<CudaSession *> st((size_t)B);
    std::vector<char> streamed((size_t)B, 0);
    int64_t stream_rows = 0;
    bool any_cpu_layer = false;
    for (int32_t i = 0; i < B; i++) {
      Session &s = *ss[i];
      pos[(size_t)i] = s.n_tokens();
      st[(size_t)i] = state(s);
      activate(s, *st[(size_t)i], pos[(size_t)i]);
      bool has_dense = false;
      for (int32_t l = 0; l < NL; l++) has_dense |= s.layer_is_dense(l);
      if (!st[(size_t)i]->resident && has_dense) {
        streamed[(size_t)i] = 1;
        stream_rows += pos[(size_t)i] + 1;
      }
      for (int32_t l = 0; l < NL; l++) any_cpu_layer |= !s.layer_is_dense(l);
    }
    // Sparse layers (split decode, policy.h): the policy's E per (layer, session), which
    // may flush MAGICPIG's generation buffer into the index (host rows < pos only), and
    // the device windows brought in line with it. E = 0 for layers a session attends
    // exactly (no offloaded part).
    std::vector<int64_t> split_E((size_t)NL * B, 0);
    std::vector<char> split_layer((size_t)NL, 0);
    if (any_cpu_layer) {
      for (int32_t i = 0; i < B; i++) {
        Session &s = *ss[i];
        for (int32_t l = 0; l < NL; l++) {
          if (s.layer_is_dense(l)) continue;
          split_layer[(size_t)l] = 1;
          const int64_t E = policy_split_begin(s, l, pos[(size_t)i]);
          split_E[(size_t)l * B + i] = E;
          sync_window(s, *st[(size_t)i], l, pos[(size_t)i], E);
        }
      }
      trace("decode: split-decode windows ready");
      if (ev_share_end_.size() != (size_t)NL) {
        for (auto *v : {&ev_share_end_, &ev_cpu_end_}) {
          v->resize((size_t)NL, nullptr);
          for (auto &ev : *v)
            if (!ev) MP_CUDA(cudaEventCreate(&ev));
        }
        share_timed_.assign((size_t)NL, 0);
      }
    }
    if (stream_rows > 0) {
      const size_t need = (size_t)stream_rows * Hkv_ * d_;
      for (auto &b : stream_k_) b.ensure(mem_, need, "streamed KV buffers");
      for (auto &b : stream_v_) b.ensure(mem_, need, "streamed KV buffers");
    }
    int64_t max_len = 1;
    for (int64_t p : pos) max_len = std::max(max_len, p + 1);
    splits_ = gpu::decode_splits(B, Hkv_, (int)std::min<int64_t>(max_len, 1 << 30));
    {
      const size_t before = d_ws_.n;
      d_ws_.ensure(mem_, std::max<size_t>(1, gpu::decode_workspace_floats(B, H_, d_, splits_)),
                   "decode workspace");
      if (d_ws_.n != before) ws_gen_++;
    }

    // Per-layer attention tables [NL][B] (resident caches, stream buffers, or windows).
    gpu::SeqKV *tab = h_seqs_.ensure((size_t)NL * B);
    {
      int64_t off = 0;
      std::vector<int64_t> soff((size_t)B, 0);
      for (int32_t i = 0; i < B; i++)
        if (streamed[(size_t)i]) soff[(size_t)i] = off, off += pos[(size_t)i] + 1;
      for (int32_t l = 0; l < NL; l++) {
        for (int32_t i = 0; i < B; i++) {
          Session &s = *ss[i];
          gpu::SeqKV &e = tab[(size_t)l * B + i];
          e = gpu::SeqKV{nullptr, nullptr, d_, 0, 0};
          CudaSession &cs = *st[(size_t)i];
          if (!s.layer_is_dense(l)) {  // the exact part of a split layer: its window
            const int64_t len = window_slot(s, pos[(size_t)i], split_E[(size_t)l * B + i]) + 1;
            e = gpu::SeqKV{cs.wk[(size_t)l].p, cs.wv[(size_t)l].p, d_, cs.wcap * d_, (int)len};
            continue;
          }
          const int len = (int)(pos[(size_t)i] + 1);
          if (streamed[(size_t)i]) {
            const int64_t rows = pos[(size_t)i] + 1;
            bf16 *kb = stream_k_[l & 1].p + (size_t)soff[(size_t)i] * Hkv_ * d_;
            bf16 *vb = stream_v_[l & 1].p + (size_t)soff[(size_t)i] * Hkv_ * d_;
            e = gpu::SeqKV{kb, vb, d_, rows * d_, len};
          } else {
            e = gpu::SeqKV{cs.k[(size_t)l].p, cs.v[(size_t)l].p, d_, cs.cap * d_, len};
          }
        }
      }
    }
    int32_t *hpos = h_pos_.ensure((size_t)B);
    int32_t *htok = h_tok_.ensure((size_t)B);
    for (int32_t i = 0; i < B; i++) hpos[i] = (int32_t)pos[(size_t)i], htok[i] = tokens[i];
    MP_CUDA(cudaMemcpyAsync(d_seqs_.p, tab, (size_t)NL * B * sizeof(gpu::SeqKV),
                            cudaMemcpyHostToDevice, s_));
    MP_CUDA(cudaMemcpyAsync(d_pos_.p, hpos, (size_t)B * 4, cudaMemcpyHostToDevice, s_));
    MP_CUDA(cudaMemcpyAsync(d_tok_.p, htok, (size_t)B * 4, cudaMemcpyHostToDevice, s_));
    // The new K/V rows reach the host caches from the GPU (stage_to_host on a side stream
    // while the LM head runs) when every session's cache is mapped; otherwise through a
    // device-to-host copy of the staging rows and host copies after the step
    // ($MP_DECODE_HOSTROWS=0 forces that path). Saves the copies' time after the GPU is done.
    bool direct = host_rows_direct() && host_ptr_ok();
    for (int32_t i = 0; i < B && direct; i++) direct = host_cache_mapped(*ss[i], *st[(size_t)i]);
    if (direct) {
      gpu::HostRow *hr = h_hrows_.ensure((size_t)NL * B);
      for (int32_t l = 0; l < NL; l++)
        for (int32_t i = 0; i < B; i++) {
          Session &s = *ss[i];
          bf16 *k = static_cast<bf16 *>(s.k_row(l, 0, pos[(size_t)i]));
          bf16 *v = static_cast<bf16 *>(s.v_row(l, 0, pos[(size_t)i]));
          hr[(size_t)l * B + i] = gpu::HostRow{k, v, s.head_stride()};
        }
      MP_CUDA(cudaMemcpyAsync(d_hrows_.p, hr, (size_t)NL * B * sizeof(gpu::HostRow),
                              cudaMemcpyHostToDevice, s_));
    }

    // Streamed KV: layer l's rows come in on the copy stream while layer l−1 computes.
    auto stream_in = [&](int32_t l) {
      if (stream_rows == 0 || l >= NL) return;
      // The buffer of layer l was last read by layer l−2's attention.
      MP_CUDA(cudaStreamWaitEvent(copy_, ev_[2 + (l & 1)], 0));
      for (int32_t i = 0; i < B; i++) {
        const gpu::SeqKV &e = tab[(size_t)l * B + i];
        if (!streamed[(size_t)i] || !ss[i]->layer_is_dense(l) || e.k == nullptr ||
            pos[(size_t)i] == 0)
          continue;
        Session &s = *ss[i];
        const int64_t rows = pos[(size_t)i] + 1;
        MP_CUDA(cudaMemcpy2DAsync(const_cast<bf16 *>(e.k), (size_t)rows * row_b,
                                  s.k_row(l, 0, 0), (size_t)s.capacity() * row_b,
                                  (size_t)pos[(size_t)i] * row_b, Hkv_, cudaMemcpyHostToDevice,
                                  copy_));
        MP_CUDA(cudaMemcpy2DAsync(const_cast<bf16 *>(e.v), (size_t)rows * row_b,
                                  s.v_row(l, 0, 0), (size_t)s.capacity() * row_b,
                                  (size_t)pos[(size_t)i] * row_b, Hkv_, cudaMemcpyHostToDevice,
                                  copy_));
      }
      MP_CUDA(cudaEventRecord(ev_[l & 1], copy_));
    };
    if (stream_rows > 0) {
      // Both buffers start free.
      MP_CUDA(cudaEventRecord(ev_[2], s_));
      MP_CUDA(cudaEventRecord(ev_[3], s_));
      stream_in(0);
    }

    // Decode-step kernels of the dec2 branch (rope_kv_append, attention_decode2 with the
    // folded split merge; $MP_DECODE2=0: the original rope + kv_append + attention_decode +
    // combine). Not with streamed KV: its event wait sits between rope and kv_append.
    const bool dec2 = gpu::decode2_enabled() && stream_rows == 0;
    const bool dec2_pdl = dec2 && gpu::decode2_pdl();
    bf16 *stage = h_stage_.ensure((size_t)NL * B * 2 * Hkv_ * d_);
    const size_t kvrow = (size_t)Hkv_ * d_;
    // The step's GPU work from the token ids to the logits. `capturing`: inside CUDA graph
    // capture (no abort polling, no host synchronisation). Returns false when aborted.
    auto body = [&](bool capturing) -> bool {
      gpu::embedding(MP_DTYPE_BF16, embd_.p, c_.vocab_size, dim_, d_tok_.p, B, d_x_.p, s_);
      for (int32_t l = 0; l < NL; l++) {
        if (!capturing && abort_requested(abort)) {
          gpu::stream_wait(copy_, "the aborted decode step's copies");
          gpu::stream_wait(s_, "the aborted decode step");
          return false;
        }
        const LayerDev &L = layers_[(size_t)l];
        gpu::matmul_norm<bf16>(*gemm_, L.wqkv.p, d_x_.p, L.attn_norm.p, c_.rms_eps, B, dim_,
                               QKV_, d_xb_.p, d_qkv_.p, QKV_, false);
        // New K and V rows: into the device caches (and windows) and into the device staging
        // of the step ([layer][K|V][B][Hkv·d]), copied to the host caches once after the step.
        bf16 *dk = d_stage_.p + (size_t)l * B * 2 * kvrow;
        const gpu::SeqKV *dseq = d_seqs_.p + (size_t)l * B;
        if (dec2) {
          // RoPE + K/V append in one kernel (PDL after the QKV GEMV).
          gpu::rope_kv_append(d_qkv_.p, B, H_, Hkv_, d_, QKV_, d_pos_.p, inv_freq_.p,
                              c_.rope.style, dseq, dk, dk + (size_t)B * kvrow, dec2_pdl, s_);
        } else {
          gpu::rope<bf16>(d_qkv_.p, B, H_ + Hkv_, d_, QKV_, d_pos_.p, inv_freq_.p,
                          c_.rope.style, s_);
          if (stream_rows > 0) {
            MP_CUDA(cudaStreamWaitEvent(s_, ev_[l & 1], 0));  // layer l's rows are in
          }
          gpu::kv_append(d_qkv_.p, QKV_, (int)Hd, (int)(Hd + kvrow), dseq, B, Hkv_, d_, dk,
                         dk + (size_t)B * kvrow, s_);
        }
        if (split_layer[(size_t)l]) {
          split_layer_attention(ss, B, l, pos, split_E, dseq);
        } else if (dec2) {
          // Split merge folded into the kernel (self-resetting counters), PDL, L2 prefetch.
          gpu::attention_decode2<bf16, bf16>(d_qkv_.p, QKV_, dseq, B, H_, Hkv_, d_, splits_,
                                             d_att_.p, nullptr, d_ws_.p, d_cnt_.p, dec2_pdl,
                                             s_);
        } else {
          gpu::attention_decode<bf16, bf16>(d_qkv_.p, QKV_, dseq, B, H_, Hkv_, d_, splits_,
                                            d_att_.p, nullptr, d_ws_.p, s_);
        }
        if (stream_rows > 0) MP_CUDA(cudaEventRecord(ev_[2 + (l & 1)], s_));  // buffer free
        gpu::matmul<float>(*gemm_, L.wo.p, d_att_.p, Hd, B, (int)Hd, dim_, d_x_.p, dim_, true);
        gpu::matmul_norm_swiglu(*gemm_, L.wgu.p, d_x_.p, L.ffn_norm.p, c_.rms_eps, B, dim_, F_,
                                d_xb_.p, d_gu_.p, d_h_.p, F_);
        gpu::matmul<float>(*gemm_, L.wd.p, d_h_.p, F_, B, F_, dim_, d_x_.p, dim_, true);
        // With the whole layer queued, bring in the next layer's streamed rows (a pageable
        // copy holds this thread until it is staged; the GPU works meanwhile).
        if (stream_rows > 0) stream_in(l + 1);
      }
      if (direct) {  // every layer's rows are staged: to the host beside the LM head
        MP_CUDA(cudaEventRecord(ev_rows_[0], s_));
        MP_CUDA(cudaStreamWaitEvent(rows_, ev_rows_[0], 0));
        gpu::stage_to_host(d_stage_.p, d_hrows_.p, NL, B, Hkv_, d_, rows_);
        MP_CUDA(cudaEventRecord(ev_rows_[1], rows_));
      }
      // Only the LM head is left (decode_near). Inside a capture the record must be an
      // external node to fire at replay (the flag is refused outside a capture).
      if (capturing) {
        MP_CUDA(cudaEventRecordWithFlags(ev_near_, s_, cudaEventRecordExternal));
      } else {
        MP_CUDA(cudaEventRecord(ev_near_, s_));
      }
      gpu::matmul_norm<float>(*gemm_, head_ptr(), d_x_.p, out_norm_.p, c_.rms_eps, B, dim_,
                              c_.vocab_size, d_xb_.p, d_logits_.p, c_.vocab_size, false);
      if (direct) MP_CUDA(cudaStreamWaitEvent(s_, ev_rows_[1], 0));
      return true;
    };
    // A step whose GPU part needs no host work (every attended layer resident on the GPU)
    // replays a CUDA graph: ~400 launches become one (mp_gpu_set_kernel "graphs": 1 on,
    // 2 off; automatic = on). A graph is captured on the second consecutive step with the
    // same key (batch size, split count, workspace generation): the first runs eagerly, so
    // every kernel is loaded (lazy module loading) and every workspace exists before the
    // capture. A capture that fails disables graphs.
    prof_[PROF_SETUP] = ms_since(t_step);
    const int gmode = gpu::forced_variant(gpu::OP_GRAPHS);
    const bool graphable = stream_rows == 0 && !any_cpu_layer && gmode != 2 && !graphs_failed_;
    const GraphKey key{B, splits_, ws_gen_, direct};
    bool replay = false;
    if (graphable) {
      if (graph_exec_ && key == graph_key_) {
        replay = true;
      } else if (seen_valid_ && key == seen_key_) {
        trace("decode: capturing a CUDA graph (B=%d, splits %d)", B, splits_);
        capture_graph(key, body);
        replay = graph_exec_ != nullptr;
      }
      seen_key_ = key, seen_valid_ = true;
    }
    MP_CHECK(!(gmode == 1 && graphs_failed_), MP_ERR_CUDA,
             "CUDA graphs were forced on but capturing the decode step failed: %s",
             graph_error_.c_str());
    if (replay) {
      if (abort_requested(abort)) return MP_ABORTED;
      trace("decode: graph launch");
      MP_CUDA(cudaGraphLaunch(graph_exec_, s_));
    } else if (!body(false)) {
      return MP_ABORTED;
    }
    if (!direct)
      MP_CUDA(cudaMemcpyAsync(stage, d_stage_.p, (size_t)NL * B * 2 * kvrow * sizeof(bf16),
                              cudaMemcpyDeviceToHost, s_));
    // The logits come back into page-locked memory (an asynchronous DMA; a copy into the
    // caller's pageable buffer would go through the driver's staging and block this
    // thread), then into the caller's buffer. $MP_DECODE_LOGITS=pageable: straight there.
    const size_t lg_bytes = (size_t)B * c_.vocab_size * 4;
    float *hlg = logits_pinned() ? h_logits_.ensure((size_t)B * c_.vocab_size) : logits;
    MP_CUDA(cudaMemcpyAsync(hlg, d_logits_.p, lg_bytes, cudaMemcpyDeviceToHost, s_));
    trace("decode: step queued, waiting for the GPU");
    const auto t_tail = std::chrono::steady_clock::now();
    if (decode_near_wanted()) {  // a DecodeWorker's caller may come back for the result now
      gpu::event_wait(ev_near_, "the decode step");
      decode_near();
    }
    gpu::stream_wait(s_, "the decode step");
    if (stream_rows > 0) gpu::stream_wait(copy_, "the decode step's KV copies");
    prof_[PROF_TAIL] = ms_since(t_tail);
    step_share_timing(B);
    gpu_retrieval_stats(ss, B);
    trace("decode: step done");
    const auto t_post = std::chrono::steady_clock::now();
    if (hlg != logits) copy_out(logits, hlg, lg_bytes);

    // Host caches: row pos_i of every layer (already written by the GPU when `direct`).
    for (int32_t l = 0; l < NL && !direct; l++) {
      const bf16 *sk = stage + (size_t)l * B * 2 * kvrow;
      const bf16 *sv = sk + (size_t)B * kvrow;
      for (int32_t i = 0; i < B; i++) write_host_row(*ss[i], l, pos[(size_t)i], sk, sv, i);
    }
    for (int32_t i = 0; i < B; i++) {
      CudaSession &cs = *st[(size_t)i];
      if (cs.resident) cs.rows = pos[(size_t)i] + 1;
      for (int32_t l = 0; l < NL; l++)
        if (!ss[i]->layer_is_dense(l)) cs.wrows[(size_t)l]++;  // the appended row
    }
    prof_[PROF_POST] = ms_since(t_post);
    prof_[PROF_TOTAL] = ms_since(t_step);
    prof_[PROF_STEPS] = 1;
    decode_profile_add(prof_);
    return MP_OK;
  }

  // ------------------------------------------------------------
  // hooks

  void session_truncated(Session &s, int64_t n) override {
    if (auto *cs = dynamic_cast<CudaSession *>(s.backend_state.get())) {
      cs->rows = std::min(cs->rows, n);
      for (auto &w : cs->wbase) w = -1;  // windows are filled again from the host rows
      for (auto &r : cs->wrows) r = 0;
    }
  }

  const HostAllocator *host_allocator() const override { return &pinned_; }

  // MAGICPIG index builds (backend.h): per KV head, chunks of the layer's key rows go up
  // (from the session's host cache, page-locked unless "pin" is off), are centered (f32,
  // the CPU's subtraction) and hashed by the SimHash kernel straight into table-major codes,
  // which come back into a page-locked slot [Hkv][L][m]. Runs on its own stream (`hash_`),
  // possibly on a helper thread of the caller while the CPU sorts the previous layer.
  const uint16_t *hash_keys(const Session &s, int32_t layer, int64_t start, int64_t m,
                            const float *mean, const lsh::Projection &P, int slot) override {
    if (m <= 0) return nullptr;
    MP_CHECK(P.d == d_ && P.K >= 1 && P.K <= 16 && P.L >= 1 && slot >= 0 && slot < 2 &&
                 start >= 0 && start + m <= s.capacity() && s.kv_dtype() == MP_DTYPE_BF16,
             MP_ERR_INTERNAL, "hash_keys: invalid request (layer %d, rows %lld + %lld)", layer,
             (long long)start, (long long)m);
    use_device();
    const int K = P.K, L = P.L;
    const int64_t CH = std::min<int64_t>(m, (int64_t)1 << 16);  // rows per chunk
    upload_hyperplanes(P);
    hash_mu_.ensure(mem_, (size_t)Hkv_ * d_, "LSH key hashing");
    hash_k_.ensure(mem_, (size_t)CH * d_, "LSH key hashing");
    hash_x_.ensure(mem_, (size_t)CH * d_, "LSH key hashing");
    hash_c_.ensure(mem_, (size_t)CH * L, "LSH key hashing");
    uint16_t *out = h_codes_[slot].ensure((size_t)Hkv_ * L * m);
    MP_CUDA(cudaMemcpyAsync(hash_mu_.p, mean, (size_t)Hkv_ * d_ * 4, cudaMemcpyHostToDevice,
                            hash_));
    const size_t row_b = (size_t)d_ * sizeof(bf16);
    for (int32_t h = 0; h < Hkv_; h++) {
      for (int64_t r0 = 0; r0 < m; r0 += CH) {
        const int rows = (int)std::min<int64_t>(CH, m - r0);
        MP_CUDA(cudaMemcpyAsync(hash_k_.p, s.k_row(layer, h, start + r0), (size_t)rows * row_b,
                                cudaMemcpyHostToDevice, hash_));
        gpu::lsh_center(hash_k_.p, hash_mu_.p + (size_t)h * d_, rows, d_, hash_x_.p, hash_);
        gpu::lsh_hash<float>(hash_R_.p, hash_x_.p, d_, rows, d_, K, L, hash_c_.p, hash_,
                             /*code_row=*/1, /*code_table=*/rows);
        // [L][rows] -> rows of the slot's [h][t][m]
        MP_CUDA(cudaMemcpy2DAsync(out + (size_t)h * L * m + r0, (size_t)m * 2, hash_c_.p,
                                  (size_t)rows * 2, (size_t)rows * 2, L, cudaMemcpyDeviceToHost,
                                  hash_));
      }
    }
    gpu::stream_wait(hash_, "LSH key hashing");
    trace("hash_keys: layer %d, %lld rows x %d heads hashed (K%d L%d)", layer, (long long)m,
          Hkv_, K, L);
    return out;
  }

  // R [d][K·L] on the device (the projection keeps its columns padded to cols_pad),
  // uploaded once per (seed, d, K, L).
  void upload_hyperplanes(const lsh::Projection &P) {
    const int K = P.K, L = P.L;
    if (hash_r_seeded_ && P.seeded && hash_r_seed_ == P.seed && hash_r_k_ == K &&
        hash_r_l_ == L)
      return;
    std::vector<float> R((size_t)d_ * K * L);
    for (int i = 0; i < d_; i++)
      std::memcpy(&R[(size_t)i * K * L], &P.R[(size_t)i * P.cols_pad],
                  sizeof(float) * (size_t)K * L);
    hash_r_seeded_ = false;
    hash_R_.ensure(mem_, R.size(), "LSH hyperplanes");
    MP_CUDA(cudaMemcpyAsync(hash_R_.p, R.data(), R.size() * 4, cudaMemcpyHostToDevice, hash_));
    gpu::stream_wait(hash_, "the LSH hyperplanes' upload");
    hash_r_seeded_ = P.seeded, hash_r_seed_ = P.seed, hash_r_k_ = K, hash_r_l_ = L;
  }

  bool can_build_first(const Session &s, int K, int L) const override {
    return s.kv_dtype() == MP_DTYPE_BF16 && gpu::lsh_sort_supported(K) && L >= 1;
  }

  // A layer's first index build (backend.h), every KV head at once, on the `hash_` stream:
  // the keys come up in one copy, μ (lsh_mean, the CPU's sequential double sum; one launch
  // for all heads: the chains run side by side), centering + SimHash in chunks per head (as
  // hash_keys), the per-block counting sort (lsh_sort, one launch for all heads), and the
  // CSR goes down into the page-locked slot laid out as the host blocks hold it, so the CPU
  // copies whole arrays. Device memory: the layer's keys, codes and entries of every head
  // (3 × 25 MB per head at 96K, K10 L150), their offsets, one chunk of centered rows. The
  // slot reuses hash_keys' (h_codes_).
  void build_first(const Session &s, int32_t layer, int64_t start, int64_t m,
                   const lsh::Projection &P, int slot, lsh::SortedPiece *out) override {
    MP_CHECK(out && m > 0 && m <= lsh::ADD_PIECE && P.d == d_ && can_build_first(s, P.K, P.L) &&
                 slot >= 0 && slot < 2 && start >= 0 && start + m <= s.capacity(),
             MP_ERR_INTERNAL, "build_first: invalid request (layer %d, rows %lld + %lld, K%d)",
             layer, (long long)start, (long long)m, P.K);
    const auto t0 = std::chrono::steady_clock::now();
    use_device();
    const int K = P.K, L = P.L;
    const size_t NB1 = ((size_t)1 << K) + 1;
    const int n_blocks = (int)((m + lsh::BLOCK - 1) / lsh::BLOCK);
    const int64_t CH = std::min<int64_t>(m, (int64_t)1 << 16);  // rows per hashing chunk
    const size_t H = (size_t)Hkv_;
    upload_hyperplanes(P);
    hash_mu_.ensure(mem_, H * d_, "LSH index build");
    first_k_.ensure(mem_, H * m * d_, "LSH index build");
    hash_x_.ensure(mem_, (size_t)CH * d_, "LSH index build");
    hash_c_.ensure(mem_, H * L * m, "LSH index build");
    first_o_.ensure(mem_, H * n_blocks * L * NB1, "LSH index build");
    first_e_.ensure(mem_, H * L * m, "LSH index build");
    // The slot: μ [Hkv][d] f32, then per block offsets [Hkv][L][NB1] u32 and entries
    // [Hkv][L][n_b] u16, each part 16-byte aligned.
    auto al = [](size_t b) { return (b + 15) / 16 * 16; };
    auto block_n = [&](int b) {
      return std::min<int64_t>(lsh::BLOCK, m - (int64_t)b * lsh::BLOCK);
    };
    size_t bytes = al(H * d_ * sizeof(float));
    for (int b = 0; b < n_blocks; b++)
      bytes += al(H * L * NB1 * sizeof(uint32_t)) + al(H * L * block_n(b) * sizeof(uint16_t));
    uint8_t *base = reinterpret_cast<uint8_t *>(h_codes_[slot].ensure((bytes + 1) / 2));
    *out = lsh::SortedPiece{};
    out->n_blocks = n_blocks;
    float *mean = reinterpret_cast<float *>(base);
    out->mean = mean;
    size_t at = al(H * d_ * sizeof(float));
    const size_t row_b = (size_t)d_ * sizeof(bf16);
    bf16 *kd = first_k_.p;
    // keys [Hkv][m][d] up, μ, codes [Hkv][L][m], the sort
    MP_CUDA(cudaMemcpy2DAsync(kd, (size_t)m * row_b, s.k_row(layer, 0, start),
                              (size_t)s.capacity() * row_b, (size_t)m * row_b, H,
                              cudaMemcpyHostToDevice, hash_));
    gpu::lsh_mean(kd, m, d_, hash_mu_.p, hash_, Hkv_, m * d_);
    for (size_t h = 0; h < H; h++) {
      for (int64_t r0 = 0; r0 < m; r0 += CH) {
        const int rows = (int)std::min<int64_t>(CH, m - r0);
        gpu::lsh_center(kd + (h * m + r0) * d_, hash_mu_.p + h * d_, rows, d_, hash_x_.p, hash_);
        gpu::lsh_hash<float>(hash_R_.p, hash_x_.p, d_, rows, d_, K, L,
                             hash_c_.p + h * L * m + r0, hash_, /*code_row=*/1,
                             /*code_table=*/m);
      }
    }
    gpu::lsh_sort(hash_c_.p, m, m, L, K, first_o_.p, first_e_.p, hash_, Hkv_);
    // the CSR down: per block, every head's offsets and entries (2D copies over heads)
    for (int b = 0; b < n_blocks; b++) {
      const int64_t nb = block_n(b);
      uint32_t *h_off = reinterpret_cast<uint32_t *>(base + at);
      at += al(H * L * NB1 * sizeof(uint32_t));
      uint16_t *h_ent = reinterpret_cast<uint16_t *>(base + at);
      at += al(H * L * nb * sizeof(uint16_t));
      out->offsets[b] = h_off;
      out->entries[b] = h_ent;
      MP_CUDA(cudaMemcpy2DAsync(h_off, L * NB1 * sizeof(uint32_t),
                                first_o_.p + (size_t)b * L * NB1,
                                (size_t)n_blocks * L * NB1 * sizeof(uint32_t),
                                L * NB1 * sizeof(uint32_t), H, cudaMemcpyDeviceToHost, hash_));
      MP_CUDA(cudaMemcpy2DAsync(h_ent, (size_t)L * nb * sizeof(uint16_t),
                                first_e_.p + (size_t)b * lsh::BLOCK * L,
                                (size_t)L * m * sizeof(uint16_t), (size_t)L * nb * sizeof(uint16_t),
                                H, cudaMemcpyDeviceToHost, hash_));
    }
    MP_CUDA(cudaMemcpyAsync(mean, hash_mu_.p, H * d_ * sizeof(float), cudaMemcpyDeviceToHost,
                            hash_));
    gpu::stream_wait(hash_, "an LSH index build");
    trace("build_first: layer %d, %lld rows x %d heads: mean, codes and %d sorted block(s) in "
          "%.1f ms on the GPU (K%d L%d)",
          layer, (long long)m, Hkv_, n_blocks, ms_since(t0), K, L);
  }

  void index_builds_done() override {
    first_k_.release();
    first_o_.release();
    first_e_.release();
    hash_c_.release();
  }

  int64_t session_device_bytes(const Session &s) const override {
    if (auto *cs = dynamic_cast<const CudaSession *>(s.backend_state.get())) return cs->bytes();
    return 0;
  }

  void fill_info(mp_engine_info *out) const override {
    out->device = e_.params().device;
    out->weight_bytes = weights_bytes_;
    out->gpu_bytes_in_use = mem_.used();
    out->gpu_bytes_peak = mem_.peak();
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
    out->gpu_bytes_total = (int64_t)total_b;
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, e_.params().device) == cudaSuccess)
      std::snprintf(out->device_name, sizeof out->device_name, "%.63s", p.name);
    else
      (void)cudaGetLastError();
  }

 private:
  const bf16 *head_ptr() const { return c_.tied_embeddings ? embd_.p : head_.p; }

  // What a captured decode graph depends on besides the data in its buffers: the batch
  // size (grids, row counts), the split count, and the workspace generation (bumped
  // whenever a decode workspace is reallocated, so no stale address survives).
  struct GraphKey {
    int32_t B = 0;
    int splits = 0;
    int64_t gen = 0;
    bool direct = false;  // the graph writes the new K/V rows into the host caches
    bool operator==(const GraphKey &o) const {
      return B == o.B && splits == o.splits && gen == o.gen && direct == o.direct;
    }
  };

  template <class Body>
  void capture_graph(const GraphKey &key, Body &body) {
    if (graph_exec_) {
      (void)cudaGraphExecDestroy(graph_exec_);
      graph_exec_ = nullptr;
    }
    gpu::stream_wait(s_, "the work before a graph capture");
    cudaGraph_t g = nullptr;
    // Thread-local mode: an unsafe call from this thread during the capture fails the
    // capture (and graphs are then off) instead of racing it.
    MP_CUDA(cudaStreamBeginCapture(s_, cudaStreamCaptureModeThreadLocal));
    bool ok = true;
    try {
      body(true);
    } catch (const Error &e) {
      ok = false;
      graph_error_ = e.message;
    }
    cudaError_t rc = cudaStreamEndCapture(s_, &g);
    if (rc != cudaSuccess || !ok || !g) {
      if (ok) graph_error_ = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(rc);
      if (g) (void)cudaGraphDestroy(g);
      (void)cudaGetLastError();
      graphs_failed_ = true;  // run without graphs from now on
      return;
    }
    rc = cudaGraphInstantiate(&graph_exec_, g, 0);
    (void)cudaGraphDestroy(g);
    if (rc != cudaSuccess) {
      graph_error_ = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(rc);
      (void)cudaGetLastError();
      graph_exec_ = nullptr;
      graphs_failed_ = true;
      return;
    }
    graph_key_ = key;
  }

  // Calls arrive on different host threads (nonblocking FFI): select the engine's device.
  void use_device() const { MP_CUDA(cudaSetDevice(e_.params().device)); }

  void alloc_weights() {
    if (!embd_.p) {
      for (LayerDev &L : layers_) {
        L.wqkv.ensure(mem_, (size_t)QKV_ * dim_, "weights");
        L.wo.ensure(mem_, (size_t)dim_ * H_ * d_, "weights");
        L.wgu.ensure(mem_, (size_t)2 * F_ * dim_, "weights");
        L.wd.ensure(mem_, (size_t)dim_ * F_, "weights");
        L.attn_norm.ensure(mem_, (size_t)dim_, "weights");
        L.ffn_norm.ensure(mem_, (size_t)dim_, "weights");
      }
      embd_.ensure(mem_, (size_t)c_.vocab_size * dim_, "weights");
      if (!c_.tied_embeddings) head_.ensure(mem_, (size_t)c_.vocab_size * dim_, "weights");
      out_norm_.ensure(mem_, (size_t)dim_, "weights");
      weights_bytes_ = mem_.used();
    }
  }

  // Host tensor (any dtype) -> bf16 device rows, through a pinned staging buffer.
  void upload_matrix(const Tensor &t, bf16 *dst) {
    if (t.data.empty()) {
      MP_CHECK(device_init_, MP_ERR_STATE, "a tensor has no host copy to upload");
      return;
    }
    const size_t n = (size_t)t.numel();
    const size_t chunk = (size_t)8 << 20;
    uint16_t *stage = (uint16_t *)h_upload_.ensure(chunk * 2);
    for (size_t i0 = 0; i0 < n; i0 += chunk) {
      const size_t m = std::min(chunk, n - i0);
      MP_CUDA(cudaStreamSynchronize(s_));  // the staging buffer is free again
      if (t.dtype == MP_DTYPE_BF16) {
        std::memcpy(stage, (const uint16_t *)t.ptr() + i0, m * 2);
      } else if (t.dtype == MP_DTYPE_F32) {
        const float *src = (const float *)t.ptr() + i0;
        for (size_t j = 0; j < m; j++) stage[j] = f32_to_bf16(src[j]);
      } else {
        const uint16_t *src = (const uint16_t *)t.ptr() + i0;
        for (size_t j = 0; j < m; j++) stage[j] = f32_to_bf16(f16_to_f32(src[j]));
      }
      MP_CUDA(cudaMemcpyAsync(dst + i0, stage, m * 2, cudaMemcpyHostToDevice, s_));
    }
  }

  void upload_norm(const Tensor &t, float *dst) {
    if (t.data.empty()) {
      MP_CHECK(device_init_, MP_ERR_STATE, "a norm tensor has no host copy to upload");
      return;
    }
    MP_CHECK(t.dtype == MP_DTYPE_F32, MP_ERR_INTERNAL, "norm weights must be F32 on the host");
    MP_CUDA(cudaMemcpy(dst, t.ptr(), (size_t)t.numel() * 4, cudaMemcpyHostToDevice));
  }

  CudaSession *state(Session &s) {
    if (!s.backend_state) {
      auto cs = std::make_unique<CudaSession>();
      cs->k.resize((size_t)c_.n_layers);
      cs->v.resize((size_t)c_.n_layers);
      cs->wk.resize((size_t)c_.n_layers);
      cs->wv.resize((size_t)c_.n_layers);
      cs->wbase.assign((size_t)c_.n_layers, -1);
      cs->wrows.assign((size_t)c_.n_layers, 0);
      s.backend_state = std::move(cs);
    }
    return static_cast<CudaSession *>(s.backend_state.get());
  }

  // Chooses where a session's GPU-attended KV lives for this step (mp_gpu_set_kernel "kv":
  // forced resident or streamed, or automatic: resident while the budget allows) and
  // keeps a resident cache in sync with the host rows 0..pos−1.
  void activate(Session &s, CudaSession &cs, int64_t pos) {
    const int32_t NL = c_.n_layers;
    int gpu_layers = 0;
    for (int32_t l = 0; l < NL; l++) gpu_layers += s.layer_is_dense(l);
    const size_t row_b = (size_t)d_ * sizeof(bf16);
    const int mode = gpu::forced_variant(gpu::OP_KV);
    const int64_t cap0 = (pos + 1 + 1023) / 1024 * 1024 + 1024;
    bool want = mode == 1;
    if (mode == 0)
      want = cs.resident ||
             mem_.fits((size_t)gpu_layers * 2 * Hkv_ * cap0 * row_b + ((size_t)256 << 20));
    if (!want || gpu_layers == 0) {
      if (cs.resident) release(cs);
      return;
    }
    if (!cs.resident) {
      cs.rows = 0;
      cs.cap = 0;
      grow(s, cs, cap0);
      cs.resident = true;
    }
    if (pos + 1 > cs.cap) grow(s, cs, (pos + 1) * 2);
    if (cs.rows < pos) {  // rows written on the host since (prefill, other backends)
      const int64_t r0 = cs.rows, nr = pos - r0;
      for (int32_t l = 0; l < NL; l++) {
        if (!s.layer_is_dense(l)) continue;
        MP_CUDA(cudaMemcpy2DAsync(cs.k[(size_t)l].p + (size_t)r0 * d_, (size_t)cs.cap * row_b,
                                  s.k_row(l, 0, r0), (size_t)s.capacity() * row_b,
                                  (size_t)nr * row_b, Hkv_, cudaMemcpyHostToDevice, s_));
        MP_CUDA(cudaMemcpy2DAsync(cs.v[(size_t)l].p + (size_t)r0 * d_, (size_t)cs.cap * row_b,
                                  s.v_row(l, 0, r0), (size_t)s.capacity() * row_b,
                                  (size_t)nr * row_b, Hkv_, cudaMemcpyHostToDevice, s_));
      }
      cs.rows = pos;
    }
  }

  void release(CudaSession &cs) {
    MP_CUDA(cudaStreamSynchronize(s_));
    for (auto &a : cs.k) a.release();
    for (auto &a : cs.v) a.release();
    cs.cap = 0, cs.rows = 0, cs.resident = false;
  }

  // Reallocates a resident cache with `cap` rows per head, keeping the valid rows.
  void grow(Session &s, CudaSession &cs, int64_t cap) {
    const size_t row_b = (size_t)d_ * sizeof(bf16);
    for (int32_t l = 0; l < c_.n_layers; l++) {
      if (!s.layer_is_dense(l)) continue;
      for (auto *vec : {&cs.k, &cs.v}) {
        Arr<bf16> fresh;
        fresh.ensure(mem_, (size_t)Hkv_ * cap * d_, "a session's KV on the GPU");
        Arr<bf16> &old = (*vec)[(size_t)l];
        if (old.p && cs.rows > 0)
          MP_CUDA(cudaMemcpy2DAsync(fresh.p, (size_t)cap * row_b, old.p, (size_t)cs.cap * row_b,
                                    (size_t)cs.rows * row_b, Hkv_, cudaMemcpyDeviceToDevice, s_));
        MP_CUDA(cudaStreamSynchronize(s_));
        old = std::move(fresh);
      }
    }
    cs.cap = cap;
  }

  void ensure_decode_workspace(int32_t B) {
    const int32_t NL = c_.n_layers;
    if (B > ws_batch_) {
      d_x_.ensure(mem_, (size_t)B * dim_, "decode workspace");
      d_xb_.ensure(mem_, (size_t)B * dim_, "decode workspace");
      d_qkv_.ensure(mem_, (size_t)B * QKV_, "decode workspace");
      d_att_.ensure(mem_, (size_t)B * H_ * d_, "decode workspace");
      d_gu_.ensure(mem_, (size_t)B * 2 * F_, "decode workspace");
      d_h_.ensure(mem_, (size_t)B * F_, "decode workspace");
      d_logits_.ensure(mem_, (size_t)B * c_.vocab_size, "decode workspace");
      d_pos_.ensure(mem_, (size_t)B, "decode workspace");
      d_tok_.ensure(mem_, (size_t)B, "decode workspace");
      d_qf_.ensure(mem_, (size_t)B * QKV_, "decode workspace");
      d_of_.ensure(mem_, (size_t)B * H_ * d_, "decode workspace");
      d_seqs_.ensure(mem_, (size_t)NL * B, "decode workspace");
      d_hrows_.ensure(mem_, (size_t)NL * B, "decode workspace");
      d_stage_.ensure(mem_, (size_t)NL * B * 2 * Hkv_ * d_, "decode workspace");
      d_lse_.ensure(mem_, (size_t)B * H_, "decode workspace");
      d_ocpu_.ensure(mem_, (size_t)B * H_ * d_, "decode workspace");
      d_lcpu_.ensure(mem_, (size_t)B * H_, "decode workspace");
      d_ogpu_.ensure(mem_, (size_t)B * H_ * d_, "decode workspace");
      d_lgpu_.ensure(mem_, (size_t)B * H_, "decode workspace");
      d_of2_.ensure(mem_, (size_t)B * H_ * d_, "decode workspace");
      d_lse2_.ensure(mem_, (size_t)B * H_, "decode workspace");
      // attention_decode2's split counters: zero here, left zero by every launch.
      d_cnt_.ensure(mem_, (size_t)B * Hkv_, "decode workspace");
      MP_CUDA(cudaMemsetAsync(d_cnt_.p, 0, d_cnt_.bytes(), s_));
      ws_batch_ = B;
      ws_gen_++;
    }
  }

  // ------------------------------------------------------------
  // split decode of sparse layers (policy.h): windows and the per-layer hand-off

  // Window slot of token t (see the file comment); the window holds slots [0, slot(pos)].
  static int64_t window_slot(const Session &s, int64_t t, int64_t E) {
    const int64_t S = s.attention().sinks;
    return t < S ? t : S + t - std::max(E, S);
  }

  // Makes layer l's window hold the exact part's rows before `pos` for this step's E
  // (row `pos` itself is appended on the device by kv_append): re-fills the local slots
  // from the host rows when E moved, uploads the rows written since, grows when needed.
  void sync_window(Session &s, CudaSession &cs, int32_t l, int64_t pos, int64_t E) {
    const int64_t S = s.attention().sinks;
    const int64_t need = window_slot(s, pos, E) + 1;  // slots after this step's append
    if (cs.wcap < need || !cs.wk[(size_t)l].p) {
      const mp_attention_params &a = s.attention();
      int64_t cap = std::max<int64_t>(cs.wcap, (int64_t)a.sinks + a.window + a.gen_buffer + 16);
      while (cap < need) cap *= 2;
      grow_windows(s, cs, cap);
    }
    if (cs.wbase[(size_t)l] != std::max(E, S))  // E moved: the local slots are stale
      cs.wrows[(size_t)l] = std::min<int64_t>(cs.wrows[(size_t)l], S);
    cs.wbase[(size_t)l] = std::max(E, S);
    const int64_t have = cs.wrows[(size_t)l], want = need - 1;  // slots [have, want) missing
    if (have >= want) {
      cs.wrows[(size_t)l] = want;
      return;
    }
    const size_t row_b = (size_t)d_ * sizeof(bf16), pitch = (size_t)cs.wcap * row_b;
    auto upload = [&](int64_t slot0, int64_t t0, int64_t rows) {
      if (rows <= 0) return;
      MP_CUDA(cudaMemcpy2DAsync(cs.wk[(size_t)l].p + (size_t)slot0 * d_, pitch, s.k_row(l, 0, t0),
                                (size_t)s.capacity() * row_b, (size_t)rows * row_b, Hkv_,
                                cudaMemcpyHostToDevice, s_));
      MP_CUDA(cudaMemcpy2DAsync(cs.wv[(size_t)l].p + (size_t)slot0 * d_, pitch, s.v_row(l, 0, t0),
                                (size_t)s.capacity() * row_b, (size_t)rows * row_b, Hkv_,
                                cudaMemcpyHostToDevice, s_));
    };
    const int64_t sink_end = std::min(S, pos);  // sinks present before this step
    if (have < sink_end) upload(have, have, sink_end - have);
    // local tokens [wbase, pos): slots S + (t − wbase)
    const int64_t wb = cs.wbase[(size_t)l];
    const int64_t slot0 = std::max(have, S);
    const int64_t t0 = wb + (slot0 - S);
    if (pos > S) upload(slot0, t0, pos - t0);
    cs.wrows[(size_t)l] = want;
  }

  // Reallocates every sparse layer's window of a session with `cap` slots, keeping the
  // valid ones.
  void grow_windows(Session &s, CudaSession &cs, int64_t cap) {
    const size_t row_b = (size_t)d_ * sizeof(bf16);
    for (int32_t l = 0; l < c_.n_layers; l++) {
      if (s.layer_is_dense(l)) continue;
      for (auto *vec : {&cs.wk, &cs.wv}) {
        Arr<bf16> fresh;
        fresh.ensure(mem_, (size_t)Hkv_ * cap * d_, "a session's local window on the GPU");
        Arr<bf16> &old = (*vec)[(size_t)l];
        if (old.p && cs.wrows[(size_t)l] > 0)
          MP_CUDA(cudaMemcpy2DAsync(fresh.p, (size_t)cap * row_b, old.p, (size_t)cs.wcap * row_b,
                                    (size_t)cs.wrows[(size_t)l] * row_b, Hkv_,
                                    cudaMemcpyDeviceToDevice, s_));
        gpu::stream_wait(s_, "a window reallocation");
        old = std::move(fresh);
      }
    }
    cs.wcap = cap;
  }

  // Attention of layer l when some session of the batch attends it through its policy:
  // every row's exact part on the GPU (window or cache; f32 out + LSE), the offloaded parts
  // on the CPU meanwhile, one merge into d_att_.
  void split_layer_attention(Session *const *ss, int32_t B, int32_t l,
                             const std::vector<int64_t> &pos, const std::vector<int64_t> &E,
                             const gpu::SeqKV *dseq) {
    const int64_t Hd = (int64_t)H_ * d_;
    float *hq = h_q_.ensure((size_t)B * Hd);
    float *ho = h_o_.ensure((size_t)B * Hd);
    float *hl = h_lse_.ensure((size_t)B * H_);
    // q (f32) to the host, marked by an event; the exact part queued right behind it.
    gpu::convert<bf16, float>(d_qkv_.p, d_qf_.p, (int64_t)B * QKV_, s_);
    const uint16_t *hqc = query_codes(ss, B, l);
    MP_CUDA(cudaMemcpy2DAsync(hq, (size_t)Hd * 4, d_qf_.p, (size_t)QKV_ * 4, (size_t)Hd * 4, B,
                              cudaMemcpyDeviceToHost, s_));
    MP_CUDA(cudaEventRecord(ev_q_, s_));
    // The offloaded parts (E = 0 for sessions that attend this layer exactly: none), with
    // the GPU's share of the MAGICPIG KV heads where the session's cache is mapped: retrieved
    // on the GPU and launched now when their indexes' blocks are page-locked (the CPU then
    // does their tail only), else handed over by the CPU as their samples complete.
    std::vector<uint8_t> kvh;
    GpuShareCall call;
    call.self = this, call.ss = ss, call.B = B, call.layer = l;
    SplitGpuShare share;
    if (gpu_share_heads(ss, B, l, kvh)) {
      share.kv_heads = kvh.data();
      // every row 0/−∞ first: each launch writes only its heads' rows
      gpu::sampled_clear(d_ogpu_.p, d_lgpu_.p, B * H_, d_, s_);
      if (hqc && gpu_retrieval_launch(call, kvh)) {
        share.blocks = true;
      } else {
        share.ready = &CudaBackend::gpu_share_ready;
        share.ctx = &call;
      }
    }
    gpu::attention_decode<bf16, float>(d_qkv_.p, QKV_, dseq, B, H_, Hkv_, d_, splits_, d_of_.p,
                                       d_lse_.p, d_ws_.p, s_);
    const auto t_wait = std::chrono::steady_clock::now();
    gpu::event_wait(ev_q_, "the decode step's queries");
    const auto t_cpu = std::chrono::steady_clock::now();
    prof_[PROF_WAIT_Q] += std::chrono::duration<double, std::milli>(t_cpu - t_wait).count();
    trace("decode: layer %d: CPU part starts", l);
    lsh::Timing tm;
    policy_split_offloaded(ss, B, l, pos.data(), E.data() + (size_t)l * B, hq, ho, hl,
                           share.kv_heads ? &share : nullptr, &tm, hqc);
    if (call.error) std::rethrow_exception(call.error);
    prof_[PROF_CPU] += ms_since(t_cpu);
    prof_[PROF_CPU_PHASE_A] += tm.phase_a;
    prof_[PROF_CPU_HANDOFF] += tm.handoff;
    prof_[PROF_CPU_PREPARE] += tm.prepare;
    prof_[PROF_QCODES_GPU] += hqc ? 1 : 0;
    prof_[PROF_GPU_RETRIEVAL] += share.blocks ? 1 : 0;
    prof_[PROF_A_HEAD_MAX] += tm.head_max;
    prof_[PROF_A_HEAD_SUM] += tm.head_sum;
    prof_[PROF_A_ENTRIES] += (double)tm.entries;
    // When the CPU part ended, on the GPU's clock (an idle stream): step_share_timing()
    // compares it with the end of the GPU share.
    if (call.launched) {
      MP_CUDA(cudaEventRecord(ev_cpu_end_[(size_t)l], mark_));
      share_timed_[(size_t)l] = 1;
    }
    prof_[PROF_SPLIT_LAYERS] += 1;
    prof_[PROF_GPU_JOBS] += (double)call.jobs;
    trace("decode: layer %d: CPU part done", l);
    MP_CUDA(cudaMemcpyAsync(d_ocpu_.p, ho, (size_t)B * Hd * 4, cudaMemcpyHostToDevice, s_));
    MP_CUDA(cudaMemcpyAsync(d_lcpu_.p, hl, (size_t)B * H_ * 4, cudaMemcpyHostToDevice, s_));
    if (call.launched) {  // exact ⊕ GPU share ⊕ CPU share
      gpu::merge<float, float, float>(d_of_.p, d_lse_.p, d_ogpu_.p, d_lgpu_.p, B * H_, d_,
                                      d_of2_.p, d_lse2_.p, s_);
      gpu::merge<float, float, bf16>(d_of2_.p, d_lse2_.p, d_ocpu_.p, d_lcpu_.p, B * H_, d_,
                                     d_att_.p, nullptr, s_);
    } else {
      gpu::merge<float, float, bf16>(d_of_.p, d_lse_.p, d_ocpu_.p, d_lcpu_.p, B * H_, d_,
                                     d_att_.p, nullptr, s_);
    }
  }

  // ------------------------------------------------------------
  // split decode's GPU share (policy.h SplitGpuShare, gpu/sampled_attention.cu)

  struct GpuShareCall {
    CudaBackend *self;
    Session *const *ss;
    int32_t B, layer;
    bool launched = false;
    int64_t jobs = 0;
    int launches = 0;  // hand-offs so far (each its own staging buffer)
    std::exception_ptr error;
    std::mutex mu;  // hand-offs come from pool threads, possibly at once
  };

  // GPU retrieval (op "retrieval"): the GPU share's samples counted on the GPU from the
  // query codes in d_qc_ (query_codes) and the indexes' page-locked blocks
  // (gpu::lsh_retrieve), then attended from the sample bitmaps (sampled_attention_bitmap),
  // all queued on s_ now. False, and nothing queued, when retrieval is forced to the CPU or
  // a row's index has a block that is not page-locked. The CPU part then attends only
  // these KV heads' tails (SplitGpuShare::blocks); the blocked samples' sizes come back
  // after the step (gpu_retrieval_stats).
  //
  // Automatic (op "retrieval" 0) takes this path only when the offloaded sessions index at
  // least kGpuRetrievalMin tokens together: its PCIe round trips are a fixed latency that a
  // short context's CPU part does not cover. Measured on the H200 (tuned share), GPU
  // retrieval against hand-offs: 8K batch 1 12.49 / 9.95 ms, batch 4 17.3 / 17.6, batch 8
  // 21.5 / 29.4, 32K batch 1 13.8 / 14.0 (full benches of the eighth and seventh sessions);
  // 96K batch 1 19.6 / 23.8 (one run, one machine).
  static constexpr int64_t kGpuRetrievalMin = 32768;
  bool gpu_retrieval_launch(GpuShareCall &c, const std::vector<uint8_t> &kvh) {
    const int v = gpu::forced_variant(gpu::OP_RETRIEVAL);
    if (v == 2) return false;
    const int32_t B = c.B, l = c.layer, G = H_ / Hkv_;
    const lsh::Index *idx0 = nullptr;  // the first offloaded row's (L and the weights' K, eps)
    int64_t indexed = 0;
    for (int32_t i = 0; i < B; i++) {
      bool any = false;
      for (int h = 0; h < Hkv_; h++) any |= kvh[(size_t)i * Hkv_ + h] != 0;
      if (!any) continue;
      const lsh::Index *idx = policy_index(*c.ss[i], l);
      if (!idx || (idx0 && idx->params().L != idx0->params().L)) return false;
      if (!idx0) idx0 = idx;
      if (idx->params().L > 1024 || idx->params().K > 16) return false;
      for (const lsh::Block &blk : idx->blocks())
        if (!index_pinned(blk.offsets.data()) || !index_pinned(blk.entries.data())) return false;
      indexed += idx->n_blocked();
    }
    if (!idx0 || (v == 0 && indexed < kGpuRetrievalMin)) return false;
    const int L = idx0->params().L;
    const int NL = c_.n_layers;
    d_rnnz_.ensure(mem_, (size_t)NL * B * H_, "split decode's GPU retrieval");
    int32_t *nnz = d_rnnz_.p + (size_t)l * B * H_;
    // the jobs, their bitmap words, tiles and retrieval items (host vectors kept from call to
    // call: 30 layers a step)
    RetrievalLaunch &r = ret_;
    std::vector<gpu::SampledJob> &jobs = r.jobs;
    std::vector<gpu::SampledTile> &tiles = r.tiles;
    std::vector<gpu::RetrieveItem> &items = r.items;
    std::vector<const float *> &mus = r.mus;
    std::vector<size_t> &item_bits = r.item_bits;  // each item's first word (bits: later)
    jobs.clear(), tiles.clear(), items.clear(), mus.clear(), item_bits.clear();
    size_t words = 0;
    const int gs = gpu::sampled_bitmap_group(G);
    int32_t tile_g0 = 0;  // the current group's first tile
    for (int32_t i = 0; i < B; i++) {
      Session &s = *c.ss[i];
      const lsh::Index *idx = policy_index(s, l);
      if (!idx) continue;
      const int64_t S = s.attention().sinks;
      const int nw = (int)((idx->n_blocked() + 63) / 64);
      const int stride = (1 << idx->params().K) + 1;
      for (int hkv = 0; hkv < Hkv_; hkv++) {
        if (!kvh[(size_t)i * Hkv_ + hkv]) continue;
        for (int g = 0; g < G; g++) {
          const int h = hkv * G + g;
          // a group of gs consecutive jobs shares its tiles (one K/V read per group)
          if (g % gs == 0) {
            tile_g0 = (int32_t)tiles.size();
            for (int w = 0; w < nw; w += 32)
              tiles.push_back({(int32_t)jobs.size(), w, std::min(32, nw - w)});
          }
          gpu::SampledJob jb{};
          jb.k = (const bf16 *)s.k_row(l, hkv, S);
          jb.v = (const bf16 *)s.v_row(l, hkv, S);
          jb.q = d_qf_.p + (size_t)i * QKV_ + (size_t)h * d_;
          jb.ids_off = (int32_t)words;  // the bitmap's first word
          jb.n = nw;
          jb.tile0 = tile_g0 * gs + g % gs;
          jb.tstride = gs;
          jb.ntiles = (int32_t)tiles.size() - tile_g0;
          jb.row = i * H_ + h;
          for (const lsh::Block &blk : idx->blocks()) {
            gpu::RetrieveItem it{};
            it.qc = d_qc_.p + ((size_t)i * H_ + h) * L;
            it.off = idx->offsets(blk, hkv, 0);
            it.ent = idx->entries(blk, hkv, 0);
            it.nnz = nnz + jb.row;
            it.n = blk.n;
            it.stride = stride;
            items.push_back(it);
            item_bits.push_back(words + (size_t)(blk.start / 64));
          }
          jobs.push_back(jb);
          mus.push_back(idx->head(hkv).mean.data());
          words += (size_t)nw;
        }
      }
    }
    if (jobs.empty()) return false;
    d_rbits_.ensure(mem_, std::max<size_t>(1, words), "split decode's GPU retrieval");
    for (size_t t = 0; t < items.size(); t++) items[t].bits = d_rbits_.p + item_bits[t];
    // one upload from this layer's staging: [jobs][tiles][items][μ per job]
    auto al = [](size_t x) { return (x + 15) / 16 * 16; };
    const size_t o_tiles = al(jobs.size() * sizeof(gpu::SampledJob));
    const size_t o_items = o_tiles + al(tiles.size() * sizeof(gpu::SampledTile));
    const size_t o_mu = o_items + al(items.size() * sizeof(gpu::RetrieveItem));
    const size_t total = o_mu + jobs.size() * (size_t)d_ * 4;
    if (h_ret_up_.size() < (size_t)NL) h_ret_up_.resize((size_t)NL);
    uint8_t *up = h_ret_up_[(size_t)l].ensure(total);  // a layer's is reused a step later
    d_ret_up_.ensure(mem_, total, "split decode's GPU retrieval");
    for (size_t t = 0; t < jobs.size(); t++) {
      jobs[t].mu = (const float *)(d_ret_up_.p + o_mu) + t * (size_t)d_;
      std::memcpy(up + o_mu + t * (size_t)d_ * 4, mus[t], (size_t)d_ * 4);
    }
    std::memcpy(up, jobs.data(), jobs.size() * sizeof(gpu::SampledJob));
    std::memcpy(up + o_tiles, tiles.data(), tiles.size() * sizeof(gpu::SampledTile));
    std::memcpy(up + o_items, items.data(), items.size() * sizeof(gpu::RetrieveItem));
    MP_CUDA(cudaMemcpyAsync(d_ret_up_.p, up, total, cudaMemcpyHostToDevice, s_));
    MP_CUDA(cudaMemsetAsync(nnz, 0, (size_t)B * H_ * sizeof(int32_t), s_));
    gpu::lsh_retrieve((const gpu::RetrieveItem *)(d_ret_up_.p + o_items), (int)items.size(), L,
                      s_);
    d_sa_ws_.ensure(mem_, gpu::sampled_workspace_floats((int)tiles.size() * gs),
                    "split decode's GPU share");
    const gpu::SampledParams prm = gpu::sampled_params(
        idx0->params().K, idx0->params().L, idx0->params().eps, 1.0f / std::sqrt((float)d_),
        false);
    gpu::sampled_attention_bitmap((const gpu::SampledJob *)d_ret_up_.p,
                                  (const gpu::SampledTile *)(d_ret_up_.p + o_tiles),
                                  (int)tiles.size(), d_rbits_.p, (int)jobs.size(), d_, gs,
                                  prm, d_sa_ws_.p, d_ogpu_.p, d_lgpu_.p, s_);
    MP_CUDA(cudaEventRecord(ev_share_end_[(size_t)l], s_));
    rnnz_layer_[(size_t)l] = 1;
    c.launched = true;
    c.jobs += (int64_t)jobs.size();
    c.launches++;
    return true;
  }

  // After a step whose GPU share the GPU retrieved: the blocked samples' sizes into the
  // sessions' key stats (the CPU counted the tails; keys offloaded were counted there).
  void gpu_retrieval_stats(Session *const *ss, int32_t B) {
    bool any = false;
    for (uint8_t f : rnnz_layer_) any |= f != 0;
    if (!any) return;
    const int NL = c_.n_layers;
    const size_t per = (size_t)B * H_;
    std::vector<int32_t> h((size_t)NL * per);
    MP_CUDA(cudaMemcpy(h.data(), d_rnnz_.p, h.size() * 4, cudaMemcpyDeviceToHost));
    std::vector<double> attended((size_t)B, 0.0);
    for (int l = 0; l < NL; l++) {
      if (!rnnz_layer_[(size_t)l]) continue;
      rnnz_layer_[(size_t)l] = 0;
      for (int32_t i = 0; i < B; i++)
        for (int hh = 0; hh < H_; hh++) attended[(size_t)i] += h[(size_t)l * per + i * H_ + hh];
    }
    for (int32_t i = 0; i < B; i++) ss[i]->add_key_stats(attended[(size_t)i], 0.0);
  }

  // Which KV heads of each row the GPU attends (OP_OFFLOAD; automatic: half of them) for
  // MAGICPIG sessions whose layer-l cache is registered (mapped) host memory. False when
  // none. The GPU share weighs every job with one set of sampling parameters (K, L, ε: the
  // launches take them from the first offloaded row's index), so a row whose index has
  // other parameters stays wholly on the CPU.
  bool gpu_share_heads(Session *const *ss, int32_t B, int32_t l, std::vector<uint8_t> &kvh) {
    const int v = gpu::forced_variant(gpu::OP_OFFLOAD);
    if (v == 1 || d_ != 128) return false;
    const int k = v == 2   ? Hkv_
                  : v == 3 ? Hkv_ / 4
                  : v == 4 ? 3 * Hkv_ / 4
                  : v == 5 ? Hkv_ / 2
                           : share_tuner(B).k;
    if (k <= 0 || !host_ptr_ok()) return false;
    kvh.assign((size_t)B * Hkv_, 0);
    const lsh::Params *p0 = nullptr;
    for (int32_t i = 0; i < B; i++) {
      Session &s = *ss[i];
      if (s.attention().method != MP_ATTN_MAGICPIG || s.kv_dtype() != MP_DTYPE_BF16) continue;
      const lsh::Index *idx = policy_index(s, l);
      if (!idx) continue;
      const lsh::Params &p = idx->params();
      if (p0 && (p.K != p0->K || p.L != p0->L || p.eps != p0->eps)) continue;
      if (!host_cache_mapped(s, *state(s))) continue;
      for (int h = 0; h < k; h++) kvh[(size_t)i * Hkv_ + h] = 1;
      if (!p0) p0 = &p;
    }
    return p0 != nullptr;
  }

  // The device reads and writes registered host memory at its host address.
  bool host_ptr_ok() {
    if (host_ptr_ok_ < 0) {
      int ok = 0;
      if (cudaDeviceGetAttribute(&ok, cudaDevAttrCanUseHostPointerForRegisteredMem,
                                 e_.params().device) != cudaSuccess)
        (void)cudaGetLastError(), ok = 0;
      host_ptr_ok_ = ok ? 1 : 0;
    }
    return host_ptr_ok_ == 1;
  }

  // Every layer's host K and V cache of `s` is registered (mapped) page-locked memory, so
  // the GPU can read and write it at its host address. Checked again only when the buffers
  // change (a reserve that grows the cache).
  static bool host_cache_mapped(Session &s, CudaSession &cs) {
    const int32_t NL = s.n_layers();
    bool same = cs.mapped_of.size() == (size_t)NL * 2;
    for (int32_t l = 0; l < NL && same; l++)
      same = cs.mapped_of[(size_t)l * 2] == s.k_row(l, 0, 0) &&
             cs.mapped_of[(size_t)l * 2 + 1] == s.v_row(l, 0, 0);
    if (same) return cs.mapped;
    cs.mapped_of.resize((size_t)NL * 2);
    cs.mapped = true;
    for (int32_t l = 0; l < NL; l++) {
      cs.mapped_of[(size_t)l * 2] = s.k_row(l, 0, 0);
      cs.mapped_of[(size_t)l * 2 + 1] = s.v_row(l, 0, 0);
      for (const void *p : {cs.mapped_of[(size_t)l * 2], cs.mapped_of[(size_t)l * 2 + 1]}) {
        cudaPointerAttributes a{};
        if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
          (void)cudaGetLastError();
          cs.mapped = false;
        } else if (a.type != cudaMemoryTypeHost || a.devicePointer != p) {
          cs.mapped = false;
        }
      }
    }
    return cs.mapped;
  }

  // dst = src for the step's logits: one core copies ~8 GB/s (0.5 ms for a batch of 4 on the
  // 8B shape's vocabulary), so a large copy is spread over the task pool.
  static void copy_out(void *dst, const void *src, size_t bytes) {
    constexpr size_t CHUNK = (size_t)256 << 10;
    const int n = (int)((bytes + CHUNK - 1) / CHUNK);
    if (n <= 4) {
      std::memcpy(dst, src, bytes);
      return;
    }
    pool_run(n, [&](int i) {
      const size_t o = (size_t)i * CHUNK;
      std::memcpy((uint8_t *)dst + o, (const uint8_t *)src + o, std::min(CHUNK, bytes - o));
    });
  }

  static bool logits_pinned() {
    static const bool on = !gpu::env_equals("MP_DECODE_LOGITS", "pageable");
    return on;
  }

  // $MP_DECODE_HOSTROWS=0: decode copies its new rows to the host caches after the step.
  static bool host_rows_direct() {
    static const bool on = !gpu::env_equals("MP_DECODE_HOSTROWS", "0");
    return on;
  }

  // A split layer's MAGICPIG query codes on the GPU (architecture.md §4: the GPU computes
  // the projections, RoPE and the query codes): each row's H query heads (f32 q, as the CPU
  // sees them) hashed with its index's hyperplanes by lsh_hash, which is lsh::hash_rows bit
  // for bit; [B][H][L] into page-locked memory on s_, ahead of ev_q_. Null, and the CPU
  // hashes, with op "qcodes" = CPU, when no row has an index for the layer, when the rows'
  // indexes disagree on L, or for a projection made from a caller's matrix. Rows without
  // an index get no codes (policy_split_offloaded reads only rows that have one).
  const uint16_t *query_codes(Session *const *ss, int32_t B, int32_t l) {
    if (gpu::forced_variant(gpu::OP_QCODES) == 2) return nullptr;
    int L = 0;
    std::vector<const lsh::Projection *> proj((size_t)B, nullptr);
    for (int32_t i = 0; i < B; i++) {
      const lsh::Index *idx = policy_index(*ss[i], l);
      if (!idx) continue;
      const lsh::Projection &P = idx->projection();
      if (!P.seeded || P.d != d_ || P.K > 16 || (L && P.L != L)) return nullptr;
      L = P.L;
      proj[(size_t)i] = &P;
    }
    if (!L) return nullptr;
    const size_t HL = (size_t)H_ * L;
    d_qc_.ensure(mem_, (size_t)B * HL, "split decode's query codes");
    for (int32_t i = 0; i < B; i++) {
      const lsh::Projection *P = proj[(size_t)i];
      if (!P) continue;
      gpu::lsh_hash<float>(decode_hyperplanes(*P), d_qf_.p + (size_t)i * QKV_, d_, H_, d_,
                           P->K, P->L, d_qc_.p + (size_t)i * HL, s_);
    }
    uint16_t *h = h_qc_.ensure((size_t)B * HL);
    MP_CUDA(cudaMemcpyAsync(h, d_qc_.p, (size_t)B * HL * 2, cudaMemcpyDeviceToHost, s_));
    return h;
  }

  // A seeded projection's R [d][K·L] on the device for decode (the index build's copy,
  // hash_R_, belongs to the hash_ stream), uploaded once per (seed, K, L) on s_; the last
  // kDecodeR of them are kept (freeing one waits for the device, so a queued kernel that
  // reads it finishes first).
  static constexpr size_t kDecodeR = 8;
  const float *decode_hyperplanes(const lsh::Projection &P) {
    for (DecodeR &r : dec_R_)
      if (r.seed == P.seed && r.K == P.K && r.L == P.L) return r.R.p;
    if (dec_R_.size() >= kDecodeR) dec_R_.pop_front();
    const int cols = P.K * P.L;
    std::vector<float> R((size_t)d_ * cols);
    for (int e = 0; e < d_; e++)
      std::memcpy(&R[(size_t)e * cols], &P.R[(size_t)e * P.cols_pad], sizeof(float) * cols);
    dec_R_.emplace_back();
    DecodeR &r = dec_R_.back();
    r.seed = P.seed, r.K = P.K, r.L = P.L;
    r.R.ensure(mem_, R.size(), "LSH hyperplanes (decode)");
    // pageable source: the copy is staged before the call returns
    MP_CUDA(cudaMemcpyAsync(r.R.p, R.data(), R.size() * 4, cudaMemcpyHostToDevice, s_));
    return r.R.p;
  }

  // After a step: per layer whose GPU share ran, how far its end was from the CPU part's
  // (both events are complete once s_ is). Late: the merge waited for the GPU; slack: the
  // GPU could have taken more.
  void step_share_timing(int32_t B) {
    double sum = 0;
    int n = 0;
    for (size_t l = 0; l < share_timed_.size(); l++) {
      if (!share_timed_[l]) continue;
      share_timed_[l] = 0;
      MP_CUDA(cudaEventSynchronize(ev_cpu_end_[l]));
      float ms = 0;
      MP_CUDA(cudaEventElapsedTime(&ms, ev_cpu_end_[l], ev_share_end_[l]));
      if (ms > 0) {
        prof_[PROF_SHARE_LATE] += ms;
        prof_[PROF_SHARE_LATE_LAYERS] += 1;
      } else {
        prof_[PROF_SHARE_SLACK] -= ms;
      }
      sum += ms, n++;
    }
    if (n > 0 && gpu::forced_variant(gpu::OP_OFFLOAD) == 0) share_tuner(B).update(sum / n, Hkv_);
  }

  // How many KV heads split decode's GPU share takes (op "offload" automatic), per batch
  // size: the GPU reads its heads' rows over PCIe while the CPU gathers the others', and the
  // layer waits for the later of the two. After each step, from the mean lag of the GPU
  // share's end behind the CPU part's (step_share_timing): late by more than kLate → one KV
  // head less; early by more than kEarly → one more, unless that count was late when last
  // tried (within kRetry steps). Starts at half; a batch size's first kWarm steps (first
  // allocations, lazy loading) only record.
  struct ShareTuner {
    static constexpr double kLate = 0.01, kEarly = 0.03;  // ms
    static constexpr int kRetry = 16, kWarm = 2;          // steps
    bool init = false;
    int k = 0, step = 0;
    double lag[65] = {};  // mean lag last seen at each count (ms; > 0: GPU late)
    int tried[65] = {};   // step of that measurement (0: never)
    void update(double mean_lag, int hkv) {
      step++;
      if (step <= kWarm) return;
      lag[k] = mean_lag, tried[k] = step;
      if (mean_lag > kLate && k > 1) {
        k--;
      } else if (mean_lag < -kEarly && k + 1 < std::min(hkv, 65)) {
        const bool late_before =
            tried[k + 1] > 0 && lag[k + 1] > kLate && step - tried[k + 1] < kRetry;
        if (!late_before) k++;
      }
    }
  };
  ShareTuner &share_tuner(int32_t B) {
    ShareTuner &t = share_tuners_[B];
    if (!t.init) t.init = true, t.k = std::min(Hkv_ / 2, 64);
    return t;
  }

  static void gpu_share_ready(void *ctx, const lsh::OffloadSamples &smp, const int32_t *rows) {
    GpuShareCall &c = *static_cast<GpuShareCall *>(ctx);
    try {
      c.self->gpu_share_launch(c, smp, rows);
    } catch (...) {
      c.error = std::current_exception();
    }
  }

  // On a pool thread, while the CPU attends its share: jobs (one per offloaded query head),
  // their tiles, μ rows and sample ids go up in one copy, then the kernels run on s_ behind
  // the exact part (split_layer_attention merges after the CPU's results arrive).
  void gpu_share_launch(GpuShareCall &c, const lsh::OffloadSamples &smp, const int32_t *rows) {
    std::lock_guard<std::mutex> lock(c.mu);
    use_device();
    const int32_t l = c.layer, H = smp.H, G = smp.G;
    const int TK = gpu::sampled_tile_keys();
    std::vector<gpu::SampledJob> jobs;
    std::vector<gpu::SampledTile> tiles;
    std::vector<const std::vector<int32_t> *> idl;
    std::vector<const float *> mus;  // host μ of each job's (row, KV head)
    int64_t nids = 0;
    const lsh::Index *idx0 = nullptr;
    for (int32_t j = 0; j < smp.B; j++) {
      const int32_t i = rows[j];
      Session &s = *c.ss[i];
      const lsh::Index *idx = policy_index(s, l);
      if (!idx) continue;
      idx0 = idx;
      const int64_t S = s.attention().sinks;
      for (int hkv = 0; hkv < smp.Hkv; hkv++) {
        // this hand-off's heads only: the CPU left their out rows empty (SplitGpuShare)
        if (!smp.kv[(size_t)j * smp.Hkv + hkv]) continue;
        for (int g = 0; g < G; g++) {
          const int h = hkv * G + g;
          const std::vector<int32_t> &ids = smp.ids[(size_t)j * H + h];
          gpu::SampledJob jb{};
          jb.k = (const bf16 *)s.k_row(l, hkv, S);
          jb.v = (const bf16 *)s.v_row(l, hkv, S);
          jb.q = d_qf_.p + (size_t)i * QKV_ + (size_t)h * d_;
          jb.mu = nullptr;  // set after the upload layout is known
          jb.qn = smp.qn[(size_t)j * H + h];
          jb.qmu = smp.qmu[(size_t)j * H + h];
          jb.ids_off = (int32_t)nids;
          jb.n = (int32_t)ids.size();
          jb.tile0 = (int32_t)tiles.size();
          for (int32_t t0 = 0; t0 < jb.n; t0 += TK)
            tiles.push_back({(int32_t)jobs.size(), t0, std::min(TK, jb.n - t0)});
          jb.ntiles = (int32_t)tiles.size() - jb.tile0;
          jb.row = i * H_ + h;
          jobs.push_back(jb);
          idl.push_back(&ids);
          mus.push_back(idx->head(hkv).mean.data());
          nids += jb.n;
        }
      }
    }
    if (jobs.empty() || !idx0) return;
    // one upload: [jobs][tiles][μ per job][ids], 16-byte aligned parts, from this
    // hand-off's own staging buffer (an earlier hand-off's copy may not have run yet)
    auto al = [](size_t x) { return (x + 15) / 16 * 16; };
    const size_t o_jobs = 0, o_tiles = al(jobs.size() * sizeof(gpu::SampledJob));
    const size_t o_mu = o_tiles + al(tiles.size() * sizeof(gpu::SampledTile));
    const size_t o_ids = o_mu + al(jobs.size() * (size_t)d_ * 4);
    const size_t total = o_ids + al((size_t)nids * 4);
    if (h_sa_up_.size() <= (size_t)c.launches) h_sa_up_.resize((size_t)c.launches + 1);
    uint8_t *up = h_sa_up_[(size_t)c.launches].ensure(total);
    d_sa_up_.ensure(mem_, total, "split decode's GPU share");
    for (size_t t = 0; t < jobs.size(); t++) {
      jobs[t].mu = (const float *)(d_sa_up_.p + o_mu) + t * (size_t)d_;
      std::memcpy(up + o_mu + t * (size_t)d_ * 4, mus[t], (size_t)d_ * 4);
      if (!idl[t]->empty())
        std::memcpy(up + o_ids + (size_t)jobs[t].ids_off * 4, idl[t]->data(), idl[t]->size() * 4);
    }
    std::memcpy(up + o_jobs, jobs.data(), jobs.size() * sizeof(gpu::SampledJob));
    if (!tiles.empty())
      std::memcpy(up + o_tiles, tiles.data(), tiles.size() * sizeof(gpu::SampledTile));
    MP_CUDA(cudaMemcpyAsync(d_sa_up_.p, up, total, cudaMemcpyHostToDevice, s_));
    d_sa_ws_.ensure(mem_, gpu::sampled_workspace_floats((int)tiles.size()),
                    "split decode's GPU share");
    const gpu::SampledParams prm = gpu::sampled_params(
        idx0->params().K, idx0->params().L, idx0->params().eps, 1.0f / std::sqrt((float)d_),
        false);
    gpu::sampled_attention((const gpu::SampledJob *)(d_sa_up_.p + o_jobs),
                           (const gpu::SampledTile *)(d_sa_up_.p + o_tiles), (int)tiles.size(),
                           (const int32_t *)(d_sa_up_.p + o_ids), (int)jobs.size(), d_,
                           prm, d_sa_ws_.p, d_ogpu_.p, d_lgpu_.p, s_);
    MP_CUDA(cudaEventRecord(ev_share_end_[(size_t)l], s_));
    c.launched = true;
    c.jobs += (int64_t)jobs.size();
    c.launches++;
  }

  void write_host_row(Session &s, int32_t l, int64_t p, const bf16 *sk, const bf16 *sv, int i) {
    const size_t kvrow = (size_t)Hkv_ * d_;
    for (int32_t h = 0; h < Hkv_; h++) {
      std::memcpy(s.k_row(l, h, p), sk + (size_t)i * kvrow + (size_t)h * d_, (size_t)d_ * 2);
      std::memcpy(s.v_row(l, h, p), sv + (size_t)i * kvrow + (size_t)h * d_, (size_t)d_ * 2);
    }
  }

  // Sessions' host KV caches: on transparent huge pages (cpu/huge_alloc.h: the CPU part of
  // split decode gathers rows at random from them; 4 KiB pages made nearly every row a TLB
  // miss), page-locked by cudaHostRegister (portable) unless "pin" is off or pinning fails
  // (then pageable, still huge). cudaHostRegister pins the huge pages as they are.
  //
  // The pages are faulted in by every core first ($MP_PREFAULT=0: not): cudaHostRegister
  // faults them itself on the calling thread, the kernel zeroing each page, which for a 96K
  // session of the 8B shape is 12.9 GB on one core, seconds of a pin or a fresh request.
  static void prefault(void *p, size_t bytes) {
    static const bool on = [] {
      const char *v = std::getenv("MP_PREFAULT");
      return !(v && std::strcmp(v, "0") == 0);
    }();
    if (on && bytes >= ((size_t)64 << 20)) fault_in(p, bytes);
  }
  // The machine's anonymous memory on transparent huge pages, KiB (for $MP_TRACE; -1 if
  // unknown): whether a host cache got its huge pages shows in the delta around prefault.
  // (/proc/meminfo is cheap; the process's smaps_rollup walks every mapping, tens of ms
  // per call in a process with a CUDA context and a 96K session.)
  static long anon_huge_kib() {
    FILE *f = std::fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[256];
    long kib = -1;
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "AnonHugePages: %ld kB", &kib) == 1) break;
    std::fclose(f);
    return kib;
  }
  static void *pinned_alloc(size_t bytes, void *) {
    void *p = huge_alloc(bytes);
    if (gpu::forced_variant(gpu::OP_PIN) != 2) {
      const bool tr = gpu::trace_enabled();
      const long huge0 = tr ? anon_huge_kib() : 0;
      const auto t0 = std::chrono::steady_clock::now();
      prefault(p, bytes);
      const double fault_ms = ms_since(t0);
      const long huge1 = tr ? anon_huge_kib() : 0;
      const auto t1 = std::chrono::steady_clock::now();
      const cudaError_t rc =
          cudaHostRegister(p, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped);
      if (tr)
        trace("host cache: %.1f MiB, pages faulted in %.1f ms (%.1f MiB more on huge pages), "
              "pinned in %.1f ms",
              bytes / 1048576.0, fault_ms, (huge1 - huge0) / 1024.0, ms_since(t1));
      if (rc == cudaSuccess) return p;
      (void)cudaGetLastError();
      trace("pinning %.2f GiB of host memory failed: pageable memory instead", bytes / GiB);
    }
    return p;
  }
  static void pinned_free(void *p, size_t, void *) {
    if (cudaHostUnregister(p) != cudaSuccess) (void)cudaGetLastError();  // pageable
    huge_free(p);
  }
  const HostAllocator pinned_{&pinned_alloc, &pinned_free, nullptr};

  Engine &e_;
  const mp_model_config &c_;
  DeviceMemory mem_;
  cudaStream_t s_ = nullptr, copy_ = nullptr;
  cudaEvent_t ev_[4] = {};  // [0,1]: stream buffer loaded; [2,3]: stream buffer free
  std::unique_ptr<gpu::Gemm> gemm_;
  int H_, Hkv_, d_, dim_, F_, QKV_;
  bool device_init_ = false;
  int64_t weights_bytes_ = 0;

  std::vector<LayerDev> layers_;
  Arr<bf16> embd_, head_;
  Arr<float> out_norm_;
  Arr<double> inv_freq_;

  // decode workspaces
  cudaGraphExec_t graph_exec_ = nullptr;
  GraphKey graph_key_{};
  bool graphs_failed_ = false;
  std::string graph_error_;
  GraphKey seen_key_{};  // the previous graphable step's key (capture on a repeat)
  bool seen_valid_ = false;
  int64_t ws_gen_ = 0;
  int32_t ws_batch_ = 0;
  int splits_ = 1;
  Arr<float> d_x_, d_logits_, d_qf_, d_of_, d_ws_;
  Arr<bf16> d_xb_, d_qkv_, d_att_, d_gu_, d_h_, d_stage_;
  Arr<float> d_lse_, d_ocpu_, d_lcpu_;  // split decode: exact-part LSE, CPU part out + LSE
  // split decode's GPU share (gpu_share_ready): its out + LSE, the exact part merged with
  // it, job of each output row, and one upload buffer for jobs, tiles, μ rows and ids
  Arr<float> d_ogpu_, d_lgpu_, d_of2_, d_lse2_, d_sa_ws_;
  Arr<uint8_t> d_sa_up_;
  std::deque<Pinned<uint8_t>> h_sa_up_;  // one per hand-off of a layer
  // GPU retrieval (gpu_retrieval_launch): per layer's upload staging, the uploads, the
  // sample bitmaps, the sample sizes [NL][B][H], and which layers wrote theirs this step
  std::deque<Pinned<uint8_t>> h_ret_up_;
  Arr<uint8_t> d_ret_up_;
  Arr<uint64_t> d_rbits_;
  Arr<int32_t> d_rnnz_;
  std::vector<uint8_t> rnnz_layer_;
  struct RetrievalLaunch {
    std::vector<gpu::SampledJob> jobs;
    std::vector<gpu::SampledTile> tiles;
    std::vector<gpu::RetrieveItem> items;
    std::vector<const float *> mus;
    std::vector<size_t> item_bits;
  } ret_;
  int host_ptr_ok_ = -1;  // the device reads registered host memory at its host address
  // decode: the new K/V rows written into mapped host caches (stage_to_host) on `rows_`,
  // forked from s_ and joined back to it (ev_rows_: all staged, all written)
  cudaStream_t rows_ = nullptr;
  cudaEvent_t ev_rows_[2] = {};
  Arr<gpu::HostRow> d_hrows_;
  Pinned<gpu::HostRow> h_hrows_;
  Pinned<float> h_logits_;  // decode: the step's logits before they go to the caller
  cudaEvent_t ev_near_ = nullptr;  // decode: every layer done, the LM head left
  cudaEvent_t ev_q_ = nullptr;          // split decode: q is on the host
  cudaEvent_t ev_pf_[2] = {};           // prefill: a K/V buffer's layer written back
  cudaEvent_t ev_pf_done_[2] = {};      // prefill: a K/V buffer's layer computed
  cudaEvent_t ev_pf_up_[2] = {};        // prefill: a K/V buffer's earlier rows uploaded
  cudaStream_t up_ = nullptr;           // prefill: uploads of earlier rows (host -> GPU)
  double prof_[PROF_COUNT] = {};        // this step's stage timers (profile.h)
  // Split decode's GPU share against the CPU part, per layer (timing events, made when a
  // step first needs them): the share's end on s_, the CPU part's end on mark_ (idle).
  cudaStream_t mark_ = nullptr;
  std::vector<cudaEvent_t> ev_share_end_, ev_cpu_end_;
  std::vector<uint8_t> share_timed_;
  std::map<int32_t, ShareTuner> share_tuners_;  // by batch size
  Arr<int32_t> d_pos_, d_tok_;
  Arr<unsigned> d_cnt_;
  Arr<gpu::SeqKV> d_seqs_;
  Arr<bf16> stream_k_[2], stream_v_[2];
  Pinned<gpu::SeqKV> h_seqs_;
  Pinned<int32_t> h_pos_, h_tok_;
  Pinned<bf16> h_stage_;
  Pinned<float> h_q_, h_o_, h_lse_;
  // split decode's query codes (query_codes) and the hyperplanes they use
  Arr<uint16_t> d_qc_;
  Pinned<uint16_t> h_qc_;
  struct DecodeR {
    uint64_t seed = 0;
    int K = 0, L = 0;
    Arr<float> R;
  };
  std::deque<DecodeR> dec_R_;
  Pinned<uint8_t> h_upload_;
  // index-build key hashing (hash_keys)
  cudaStream_t hash_ = nullptr;
  Arr<float> hash_R_, hash_mu_, hash_x_;
  Arr<bf16> hash_k_;
  Arr<uint16_t> hash_c_;
  Pinned<uint16_t> h_codes_[2];  // hash_keys' codes, or build_first's SortedPiece
  // build_first: keys [Hkv][m][d], offsets [Hkv][n_blocks][L][2^K + 1], entries [Hkv][L][m]
  // (blocks in order)
  Arr<bf16> first_k_;
  Arr<uint32_t> first_o_;
  Arr<uint16_t> first_e_;
  bool hash_r_seeded_ = false;
  uint64_t hash_r_seed_ = 0;
  int hash_r_k_ = 0, hash_r_l_ = 0;
};

}  // namespace

bool cuda_forward_available() { return true; }

std::unique_ptr<ForwardBackend> make_cuda_backend(Engine &e) {
  return std::make_unique<CudaBackend>(e);
}

}  // namespace mp
