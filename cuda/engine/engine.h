// engine.h — mp::Engine: one model's configuration and weights, and the forward backend
// that runs it.
//
// Lifetime: the C handle `mp_engine` holds a std::shared_ptr<Engine>; every Session holds
// another, so mp_engine_free before mp_session_free is safe (the last owner frees).
//
// Weights: host copies in `weight_dtype` (matrices and the token embedding; norm vectors are
// always F32), [rows][cols] row-major with rows = out features (MP_TENSOR_* shapes in
// magicpig.h). A backend may upload them in ForwardBackend::prepare() and keep device
// copies; the host copies stay (the CPU backend computes from them).
//
// RoPE: the engine precomputes inv_freq[head_dim/2] in double, with Llama-3 scaling applied
// (rope_inv_freq()); every backend uses the same table so positions rotate identically.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/common.h"
#include "engine/buffer.h"
#include "engine/decode_worker.h"

namespace mp {

struct ForwardBackend;

// One weight tensor: rows x cols elements of dtype (a norm vector has rows = 1).
struct Tensor {
  HostBuffer data;
  int32_t dtype = MP_DTYPE_F32;
  int64_t rows = 0, cols = 0;
  bool loaded = false;

  const void *ptr() const { return data.data(); }
  void *ptr() { return data.data(); }
  int64_t numel() const { return rows * cols; }
  size_t bytes() const { return data.bytes(); }
};

struct LayerWeights {
  Tensor attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_down, w_up;
};

class Engine {
 public:
  // `p` must be fully resolved (no defaults left) and validated: see make_engine().
  explicit Engine(const mp_engine_params &p);
  ~Engine();
  Engine(const Engine &) = delete;
  Engine &operator=(const Engine &) = delete;

  const mp_model_config &config() const { return params_.model; }
  const mp_engine_params &params() const { return params_; }
  int32_t backend_kind() const { return params_.backend; }  // CPU or CUDA, never AUTO
  int32_t weight_dtype() const { return params_.weight_dtype; }
  int32_t kv_dtype() const { return params_.kv_dtype; }
  int32_t prefill_chunk() const { return params_.prefill_chunk; }
  int32_t max_batch() const { return params_.max_batch; }
  bool finalized() const { return finalized_; }

  // Weights. `layer` is ignored for global kinds.
  Tensor &tensor(int32_t kind, int32_t layer);
  const Tensor &tensor(int32_t kind, int32_t layer) const;
  const Tensor &token_embd() const { return token_embd_; }
  const Tensor &output_norm() const { return output_norm_; }
  const Tensor &lm_head() const {  // the output matrix, or the embedding when tied
    return config().tied_embeddings ? token_embd_ : output_;
  }
  const LayerWeights &layer(int32_t l) const { return layers_[(size_t)l]; }

  // inv_freq[i] for i < head_dim/2, Llama-3 scaling applied.
  const double *rope_inv_freq() const { return inv_freq_.data(); }

  ForwardBackend &backend() { return *backend_; }
  const ForwardBackend &backend() const { return *backend_; }

  // The public API's operations (see magicpig.h). They throw mp::Error.
  void load_tensor(int32_t kind, int32_t layer, int32_t src_dtype, const int64_t *shape,
                   int32_t ndim, const void *data, size_t nbytes);
  void load_tensor_file(int32_t kind, int32_t layer, int32_t src_dtype, const int64_t *shape,
                        int32_t ndim, const char *path, uint64_t offset, uint64_t nbytes);
  void init_random(uint64_t seed, float scale);
  void finalize();
  void get_info(mp_engine_info *out) const;
  int64_t weight_bytes() const;

  // "blk.3.attn_q", "token_embd": GGUF names, used in messages.
  static std::string tensor_name(int32_t kind, int32_t layer);
  // "WQ", "TOKEN_EMBD": the enum's name without the MP_TENSOR_ prefix.
  static const char *kind_name(int32_t kind);
  static bool kind_is_global(int32_t kind);

 private:
  // Validates kind/layer/shape/dtype/nbytes; returns the destination tensor.
  Tensor &check_load(int32_t kind, int32_t layer, int32_t src_dtype, const int64_t *shape,
                     int32_t ndim, uint64_t nbytes);
  void expected_shape(int32_t kind, int64_t *rows, int64_t *cols) const;
  void store(Tensor &t, int32_t kind, int32_t src_dtype, const void *src);

  mp_engine_params params_;
  Tensor token_embd_, output_norm_, output_;
  std::vector<LayerWeights> layers_;
  std::vector<double> inv_freq_;
  std::unique_ptr<ForwardBackend> backend_;
  bool finalized_ = false;
};

// Fills defaults (backend AUTO resolved, dtypes, chunk), validates everything, creates the
// backend. Throws MP_ERR_INVALID with a message naming the offending field.
std::shared_ptr<Engine> make_engine(const mp_engine_params &p);

// Validates a model configuration (message names the field).
void validate_model_config(const mp_model_config &c);
// Validates RoPE parameters; messages name the field as "<prefix>.theta".
void validate_rope(const mp_rope_params &r, const char *prefix);

}  // namespace mp

// The C handle: a shared owner of the engine, and its decode thread (mp_decode_submit;
// made on first use, stopped before the engine is released).
struct mp_engine {
  std::shared_ptr<mp::Engine> engine;
  std::unique_ptr<mp::DecodeWorker> decoder;
};
