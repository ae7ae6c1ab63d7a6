// engine.cpp — mp::Engine: configuration checks, weight loading and conversion, random
// initialisation, finalisation and info. The forward pass itself is the backend's
// (cpu_backend.cpp); sessions are in session.cpp.
#include "engine/engine.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/rope.h"
#include "engine/backend.h"
#include "gpu/gpu.h"

namespace mp {

// ------------------------------------------------------------
// configuration

void validate_model_config(const mp_model_config &c) {
  MP_CHECK(c.size == sizeof(mp_model_config), MP_ERR_INVALID,
           "model.size \"%zu\" is wrong: must be sizeof(mp_model_config) = %zu", c.size,
           sizeof(mp_model_config));
#define MP_POSITIVE(field)                                                              \
  MP_CHECK(c.field > 0, MP_ERR_INVALID, "model." #field " \"%d\" is invalid: must be positive", \
           (int)c.field)
  MP_POSITIVE(n_layers);
  MP_POSITIVE(dim);
  MP_POSITIVE(n_heads);
  MP_POSITIVE(n_kv_heads);
  MP_POSITIVE(head_dim);
  MP_POSITIVE(ffn_dim);
  MP_POSITIVE(vocab_size);
#undef MP_POSITIVE
  MP_CHECK(c.n_layers <= MP_MAX_LAYERS, MP_ERR_INVALID,
           "model.n_layers \"%d\" is invalid: at most %d layers are supported", c.n_layers,
           MP_MAX_LAYERS);
  MP_CHECK(c.n_heads % c.n_kv_heads == 0, MP_ERR_INVALID,
           "model.n_kv_heads \"%d\" is invalid: must divide n_heads (%d)", c.n_kv_heads,
           c.n_heads);
  MP_CHECK(c.head_dim % 2 == 0, MP_ERR_INVALID,
           "model.head_dim \"%d\" is invalid: must be even for RoPE", c.head_dim);
  MP_CHECK((int64_t)c.n_heads * c.head_dim <= (int64_t)1 << 20 && c.dim <= (1 << 20) &&
               c.ffn_dim <= (1 << 22),
           MP_ERR_INVALID, "model shape is too large: dim %d, heads %d x %d, ffn %d", c.dim,
           c.n_heads, c.head_dim, c.ffn_dim);
  MP_CHECK(c.max_context >= 0, MP_ERR_INVALID,
           "model.max_context \"%d\" is invalid: must be >= 0 (0: unlimited)", c.max_context);
  MP_CHECK(std::isfinite(c.rms_eps) && c.rms_eps > 0, MP_ERR_INVALID,
           "model.rms_eps \"%g\" is invalid: must be a positive number", (double)c.rms_eps);
  MP_CHECK(c.tied_embeddings == 0 || c.tied_embeddings == 1, MP_ERR_INVALID,
           "model.tied_embeddings \"%d\" is invalid: must be 0 or 1", c.tied_embeddings);
  validate_rope(c.rope, "model.rope");
}

void validate_rope(const mp_rope_params &r, const char *prefix) {
  MP_CHECK(std::isfinite(r.theta) && r.theta > 1, MP_ERR_INVALID,
           "%s.theta \"%g\" is invalid: must be a number > 1", prefix, (double)r.theta);
  MP_CHECK(r.style == MP_ROPE_INTERLEAVED || r.style == MP_ROPE_HALF, MP_ERR_INVALID,
           "%s.style \"%d\" is invalid: must be 0 (interleaved) or 1 (half)", prefix, r.style);
  MP_CHECK(r.scaling == MP_ROPE_SCALING_NONE || r.scaling == MP_ROPE_SCALING_LLAMA3,
           MP_ERR_INVALID, "%s.scaling \"%d\" is invalid: must be 0 (none) or 1 (llama3)",
           prefix, r.scaling);
  if (r.scaling != MP_ROPE_SCALING_LLAMA3) return;
  MP_CHECK(std::isfinite(r.factor) && r.factor >= 1, MP_ERR_INVALID,
           "%s.factor \"%g\" is invalid: must be >= 1", prefix, (double)r.factor);
  MP_CHECK(std::isfinite(r.low_freq_factor) && r.low_freq_factor > 0, MP_ERR_INVALID,
           "%s.low_freq_factor \"%g\" is invalid: must be positive", prefix,
           (double)r.low_freq_factor);
  MP_CHECK(std::isfinite(r.high_freq_factor) && r.high_freq_factor > r.low_freq_factor,
           MP_ERR_INVALID,
           "%s.high_freq_factor \"%g\" is invalid: must be greater than low_freq_factor (%g)",
           prefix, (double)r.high_freq_factor, (double)r.low_freq_factor);
  MP_CHECK(r.original_max_position > 0, MP_ERR_INVALID,
           "%s.original_max_position \"%d\" is invalid: must be positive", prefix,
           r.original_max_position);
}

std::shared_ptr<Engine> make_engine(const mp_engine_params &in) {
  mp_engine_params p = in;
  validate_model_config(p.model);
  MP_CHECK(p.backend == MP_BACKEND_AUTO || p.backend == MP_BACKEND_CPU ||
               p.backend == MP_BACKEND_CUDA,
           MP_ERR_INVALID, "backend \"%d\" is invalid: must be 0 (auto), 1 (cpu) or 2 (cuda)",
           p.backend);
  if (p.backend == MP_BACKEND_AUTO)
    p.backend = cuda_forward_available() && gpu::device_count() > 0 ? MP_BACKEND_CUDA
                                                                       : MP_BACKEND_CPU;
  const bool cuda = p.backend == MP_BACKEND_CUDA;
  MP_CHECK(p.device >= 0, MP_ERR_INVALID, "device \"%d\" is invalid: must be >= 0", p.device);
  if (p.weight_dtype < 0) p.weight_dtype = cuda ? MP_DTYPE_BF16 : MP_DTYPE_F32;
  if (p.kv_dtype < 0) p.kv_dtype = cuda ? MP_DTYPE_BF16 : MP_DTYPE_F32;
  MP_CHECK(p.weight_dtype == MP_DTYPE_F32 || p.weight_dtype == MP_DTYPE_F16 ||
               p.weight_dtype == MP_DTYPE_BF16,
           MP_ERR_INVALID, "weight_dtype \"%d\" is invalid: must be 0 (F32), 1 (F16) or 2 (BF16)",
           p.weight_dtype);
  MP_CHECK(p.kv_dtype == MP_DTYPE_F32 || p.kv_dtype == MP_DTYPE_BF16, MP_ERR_INVALID,
           "kv_dtype \"%d\" is invalid: must be 0 (F32) or 2 (BF16)", p.kv_dtype);
  MP_CHECK(p.gpu_memory_budget >= 0, MP_ERR_INVALID,
           "gpu_memory_budget \"%lld\" is invalid: must be >= 0 (0: no limit)",
           (long long)p.gpu_memory_budget);
  if (p.max_batch == 0) p.max_batch = 16;
  MP_CHECK(p.max_batch >= 1 && p.max_batch <= 4096, MP_ERR_INVALID,
           "max_batch \"%d\" is invalid: must be in 1..4096", p.max_batch);
  if (p.prefill_chunk == 0) p.prefill_chunk = cuda ? 8192 : 512;
  MP_CHECK(p.prefill_chunk >= 1 && p.prefill_chunk <= (1 << 20), MP_ERR_INVALID,
           "prefill_chunk \"%d\" is invalid: must be in 1..1048576", p.prefill_chunk);
  auto e = std::make_shared<Engine>(p);
  return e;
}

// ------------------------------------------------------------
// names

const char *Engine::kind_name(int32_t kind) {
  static const char *names[] = {"TOKEN_EMBD", "OUTPUT_NORM", "OUTPUT", "ATTN_NORM",
                                "WQ",         "WK",          "WV",     "WO",
                                "FFN_NORM",   "W_GATE",      "W_DOWN", "W_UP"};
  return kind >= 0 && kind < MP_TENSOR_KIND_COUNT ? names[kind] : "unknown";
}

bool Engine::kind_is_global(int32_t kind) {
  return kind == MP_TENSOR_TOKEN_EMBD || kind == MP_TENSOR_OUTPUT_NORM ||
         kind == MP_TENSOR_OUTPUT;
}

std::string Engine::tensor_name(int32_t kind, int32_t layer) {
  static const char *names[] = {"token_embd",  "output_norm", "output",   "attn_norm",
                                "attn_q",      "attn_k",      "attn_v",   "attn_output",
                                "ffn_norm",    "ffn_gate",    "ffn_down", "ffn_up"};
  if (kind < 0 || kind >= MP_TENSOR_KIND_COUNT) return "unknown";
  if (kind_is_global(kind)) return names[kind];
  return "blk." + std::to_string(layer) + "." + names[kind];
}

// ------------------------------------------------------------
// construction

Engine::Engine(const mp_engine_params &p) : params_(p) {
  layers_.resize((size_t)p.model.n_layers);
  inv_freq_ = cpu::rope_inv_freq(p.model.rope, p.model.head_dim);
  backend_ = p.backend == MP_BACKEND_CUDA ? make_cuda_backend(*this) : make_cpu_backend(*this);
}

Engine::~Engine() = default;

Tensor &Engine::tensor(int32_t kind, int32_t layer) {
  return const_cast<Tensor &>(static_cast<const Engine *>(this)->tensor(kind, layer));
}

const Tensor &Engine::tensor(int32_t kind, int32_t layer) const {
  switch (kind) {
    case MP_TENSOR_TOKEN_EMBD: return token_embd_;
    case MP_TENSOR_OUTPUT_NORM: return output_norm_;
    case MP_TENSOR_OUTPUT: return output_;
  }
  MP_CHECK(layer >= 0 && layer < config().n_layers, MP_ERR_INVALID,
           "layer \"%d\" is out of range: the model has %d layers", layer, config().n_layers);
  const LayerWeights &l = layers_[(size_t)layer];
  switch (kind) {
    case MP_TENSOR_ATTN_NORM: return l.attn_norm;
    case MP_TENSOR_WQ: return l.wq;
    case MP_TENSOR_WK: return l.wk;
    case MP_TENSOR_WV: return l.wv;
    case MP_TENSOR_WO: return l.wo;
    case MP_TENSOR_FFN_NORM: return l.ffn_norm;
    case MP_TENSOR_W_GATE: return l.w_gate;
    case MP_TENSOR_W_DOWN: return l.w_down;
    case MP_TENSOR_W_UP: return l.w_up;
  }
  MP_FAIL(MP_ERR_INVALID, "tensor kind \"%d\" is invalid: must be in 0..%d", kind,
          MP_TENSOR_KIND_COUNT - 1);
}

void Engine::expected_shape(int32_t kind, int64_t *rows, int64_t *cols) const {
  const mp_model_config &c = config();
  const int64_t q = (int64_t)c.n_heads * c.head_dim, kv = (int64_t)c.n_kv_heads * c.head_dim;
  switch (kind) {
    case MP_TENSOR_TOKEN_EMBD:
    case MP_TENSOR_OUTPUT: *rows = c.vocab_size, *cols = c.dim; return;
    case MP_TENSOR_OUTPUT_NORM:
    case MP_TENSOR_ATTN_NORM:
    case MP_TENSOR_FFN_NORM: *rows = 1, *cols = c.dim; return;
    case MP_TENSOR_WQ: *rows = q, *cols = c.dim; return;
    case MP_TENSOR_WK:
    case MP_TENSOR_WV: *rows = kv, *cols = c.dim; return;
    case MP_TENSOR_WO: *rows = c.dim, *cols = q; return;
    case MP_TENSOR_W_GATE:
    case MP_TENSOR_W_UP: *rows = c.ffn_dim, *cols = c.dim; return;
    case MP_TENSOR_W_DOWN: *rows = c.dim, *cols = c.ffn_dim; return;
  }
  MP_FAIL(MP_ERR_INVALID, "tensor kind \"%d\" is invalid: must be in 0..%d", kind,
          MP_TENSOR_KIND_COUNT - 1);
}

static bool is_norm(int32_t kind) {
  return kind == MP_TENSOR_OUTPUT_NORM || kind == MP_TENSOR_ATTN_NORM ||
         kind == MP_TENSOR_FFN_NORM;
}

static std::string shape_str(const int64_t *shape, int32_t ndim) {
  std::string s = "[";
  for (int32_t i = 0; i < ndim; i++) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// ------------------------------------------------------------
// loading

Tensor &Engine::check_load(int32_t kind, int32_t layer, int32_t src_dtype, const int64_t *shape,
                           int32_t ndim, uint64_t nbytes) {
  MP_CHECK(!finalized_, MP_ERR_STATE, "the engine is finalized: tensors cannot be loaded any more");
  MP_CHECK(kind >= 0 && kind < MP_TENSOR_KIND_COUNT, MP_ERR_INVALID,
           "tensor kind \"%d\" is invalid: must be in 0..%d", kind, MP_TENSOR_KIND_COUNT - 1);
  if (!kind_is_global(kind))
    MP_CHECK(layer >= 0 && layer < config().n_layers, MP_ERR_INVALID,
             "layer \"%d\" of tensor kind %s is out of range: the model has %d layers", layer,
             kind_name(kind), config().n_layers);
  const std::string name = tensor_name(kind, layer);
  const std::string what = "tensor \"" + name + "\" (kind " + kind_name(kind) +
                           (kind_is_global(kind) ? "" : ", layer " + std::to_string(layer)) + ")";
  MP_CHECK(!(kind == MP_TENSOR_OUTPUT && config().tied_embeddings), MP_ERR_INVALID,
           "%s is not used: the model config has tied_embeddings = 1", what.c_str());
  MP_CHECK(src_dtype == MP_DTYPE_F32 || src_dtype == MP_DTYPE_F16 || src_dtype == MP_DTYPE_BF16,
           MP_ERR_INVALID, "%s has dtype \"%d\": must be 0 (F32), 1 (F16) or 2 (BF16)",
           what.c_str(), src_dtype);
  MP_CHECK(shape || ndim == 0, MP_ERR_INVALID, "%s: shape is NULL", what.c_str());
  int64_t rows, cols;
  expected_shape(kind, &rows, &cols);
  const int64_t want2[2] = {rows, cols};
  bool ok;
  if (is_norm(kind)) {
    ok = (ndim == 1 && shape[0] == cols) || (ndim == 2 && shape[0] == 1 && shape[1] == cols);
  } else {
    ok = ndim == 2 && shape[0] == rows && shape[1] == cols;
  }
  MP_CHECK(ok, MP_ERR_INVALID, "%s has shape %s, expected %s", what.c_str(),
           shape_str(shape, ndim).c_str(),
           is_norm(kind) ? shape_str(&want2[1], 1).c_str() : shape_str(want2, 2).c_str());
  const uint64_t want_bytes = (uint64_t)rows * (uint64_t)cols * dtype_size(src_dtype);
  MP_CHECK(nbytes == want_bytes, MP_ERR_INVALID,
           "%s has %llu bytes, expected %llu (shape %s in %s)", what.c_str(),
           (unsigned long long)nbytes, (unsigned long long)want_bytes,
           shape_str(shape, ndim).c_str(), dtype_name(src_dtype));
  Tensor &t = tensor(kind, layer);
  return t;
}

// Converts src (src_dtype, t.rows x t.cols) into t's storage dtype.
void Engine::store(Tensor &t, int32_t kind, int32_t src_dtype, const void *src) {
  int64_t rows, cols;
  expected_shape(kind, &rows, &cols);
  const int32_t dt = is_norm(kind) ? MP_DTYPE_F32 : params_.weight_dtype;
  const size_t n = (size_t)rows * (size_t)cols;
  HostBuffer buf(n * dtype_size(dt));
  if (src_dtype == dt) {
    std::memcpy(buf.data(), src, buf.bytes());
  } else if (src_dtype == MP_DTYPE_F32) {
    from_f32(dt, (const float *)src, buf.data(), n);
  } else if (dt == MP_DTYPE_F32) {
    to_f32(src_dtype, src, buf.as<float>(), n);
  } else {  // F16 <-> BF16, element by element through float (exact: both fit in float)
    const uint16_t *s = (const uint16_t *)src;
    uint16_t *d = buf.as<uint16_t>();
    const bool from_f16 = src_dtype == MP_DTYPE_F16;
#pragma omp parallel for num_threads(threads()) schedule(static) if (n > (1 << 16))
    for (size_t i = 0; i < n; i++) {
      const float f = from_f16 ? f16_to_f32(s[i]) : bf16_to_f32(s[i]);
      d[i] = from_f16 ? f32_to_bf16(f) : f32_to_f16(f);
    }
  }
  t.data = std::move(buf);
  t.dtype = dt;
  t.rows = rows;
  t.cols = cols;
  t.loaded = true;
}

void Engine::load_tensor(int32_t kind, int32_t layer, int32_t src_dtype, const int64_t *shape,
                         int32_t ndim, const void *data, size_t nbytes) {
  Tensor &t = check_load(kind, layer, src_dtype, shape, ndim, nbytes);
  MP_CHECK(data, MP_ERR_INVALID, "data is NULL");
  store(t, kind, src_dtype, data);
}

void Engine::load_tensor_file(int32_t kind, int32_t layer, int32_t src_dtype,
                              const int64_t *shape, int32_t ndim, const char *path,
                              uint64_t offset, uint64_t nbytes) {
  Tensor &t = check_load(kind, layer, src_dtype, shape, ndim, nbytes);
  MP_CHECK(path && *path, MP_ERR_INVALID, "path is empty");
  const std::string name = tensor_name(kind, layer);
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  MP_CHECK(fd >= 0, MP_ERR_IO, "cannot open \"%s\": %s", path, std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  const off_t size = ::lseek(fd, 0, SEEK_END);
  MP_CHECK(size >= 0 && (uint64_t)size >= offset && (uint64_t)size - offset >= nbytes, MP_ERR_IO,
           "cannot read tensor \"%s\" from \"%s\": bytes %llu..%llu are past the end of the file "
           "(%lld bytes)",
           name.c_str(), path, (unsigned long long)offset,
           (unsigned long long)(offset + nbytes), (long long)size);
  HostBuffer raw(nbytes);
  uint8_t *dst = raw.as<uint8_t>();
  uint64_t done = 0;
  while (done < nbytes) {
    const size_t want = (size_t)std::min<uint64_t>(nbytes - done, (uint64_t)1 << 30);
    const ssize_t got = ::pread(fd, dst + done, want, (off_t)(offset + done));
    if (got < 0 && errno == EINTR) continue;
    MP_CHECK(got > 0, MP_ERR_IO, "cannot read tensor \"%s\" from \"%s\" at offset %llu: %s",
             name.c_str(), path, (unsigned long long)(offset + done),
             got < 0 ? std::strerror(errno) : "unexpected end of file");
    done += (uint64_t)got;
  }
  store(t, kind, src_dtype, raw.data());
}

// ------------------------------------------------------------
// random weights

void Engine::init_random(uint64_t seed, float scale) {
  MP_CHECK(!finalized_, MP_ERR_STATE, "the engine is finalized: tensors cannot be loaded any more");
  MP_CHECK(std::isfinite(scale) && scale >= 0, MP_ERR_INVALID,
           "scale \"%g\" is invalid: must be a finite number >= 0", (double)scale);
  const mp_model_config &c = config();
  // A device backend may fill the weights on the device (GPU benchmarks): mark them loaded
  // without host copies.
  const bool on_device = backend_->init_random(seed, scale);
  for (int32_t kind = 0; kind < MP_TENSOR_KIND_COUNT; kind++) {
    if (kind == MP_TENSOR_OUTPUT && c.tied_embeddings) continue;
    const int32_t nl = kind_is_global(kind) ? 1 : c.n_layers;
    for (int32_t layer = 0; layer < nl; layer++) {
      Tensor &t = tensor(kind, layer);
      int64_t rows, cols;
      expected_shape(kind, &rows, &cols);
      const int32_t dt = is_norm(kind) ? MP_DTYPE_F32 : params_.weight_dtype;
      if (on_device) {
        t.data.reset();
        t.dtype = dt;
        t.rows = rows;
        t.cols = cols;
        t.loaded = true;
        continue;
      }
      const size_t n = (size_t)rows * (size_t)cols;
      HostBuffer buf(n * dtype_size(dt));
      if (is_norm(kind)) {
        for (size_t i = 0; i < n; i++) buf.as<float>()[i] = 1.0f;
      } else {
        // Blocks of 64K values, each with its own stream: independent of the thread count.
        const size_t block = 1 << 16;
        const int64_t nblocks = (int64_t)((n + block - 1) / block);
        const uint64_t tseed = seed ^ ((uint64_t)(kind + 1) * 0x9e3779b97f4a7c15ull) ^
                               ((uint64_t)(layer + 1) * 0xc2b2ae3d27d4eb4full);
#pragma omp parallel for num_threads(threads()) schedule(static)
        for (int64_t b = 0; b < nblocks; b++) {
          Rng rng(tseed + (uint64_t)b * 0x632be59bd9b4e019ull);
          const size_t i0 = (size_t)b * block, m = std::min(block, n - i0);
          for (size_t i = i0; i < i0 + m; i++) {
            const float v = (float)(rng.normal() * (double)scale);
            if (dt == MP_DTYPE_F32)
              buf.as<float>()[i] = v;
            else if (dt == MP_DTYPE_BF16)
              buf.as<uint16_t>()[i] = f32_to_bf16(v);
            else
              buf.as<uint16_t>()[i] = f32_to_f16(v);
          }
        }
      }
      t.data = std::move(buf);
      t.dtype = dt;
      t.rows = rows;
      t.cols = cols;
      t.loaded = true;
    }
  }
}

// ------------------------------------------------------------
// finalize and info

void Engine::finalize() {
  if (finalized_) return;
  const mp_model_config &c = config();
  auto need = [&](int32_t kind, int32_t layer) {
    if (kind == MP_TENSOR_OUTPUT && c.tied_embeddings) return;
    MP_CHECK(tensor(kind, layer).loaded, MP_ERR_STATE,
             "tensor \"%s\" (kind %s%s) was not loaded", tensor_name(kind, layer).c_str(),
             kind_name(kind),
             kind_is_global(kind) ? "" : (", layer " + std::to_string(layer)).c_str());
  };
  need(MP_TENSOR_TOKEN_EMBD, 0);
  need(MP_TENSOR_OUTPUT_NORM, 0);
  need(MP_TENSOR_OUTPUT, 0);
  for (int32_t l = 0; l < c.n_layers; l++)
    for (int32_t kind = MP_TENSOR_ATTN_NORM; kind < MP_TENSOR_KIND_COUNT; kind++) need(kind, l);
  backend_->prepare();
  finalized_ = true;
}

int64_t Engine::weight_bytes() const {
  int64_t n = (int64_t)(token_embd_.bytes() + output_norm_.bytes() + output_.bytes());
  for (const LayerWeights &l : layers_)
    n += (int64_t)(l.attn_norm.bytes() + l.wq.bytes() + l.wk.bytes() + l.wv.bytes() +
                   l.wo.bytes() + l.ffn_norm.bytes() + l.w_gate.bytes() + l.w_down.bytes() +
                   l.w_up.bytes());
  return n;
}

void Engine::get_info(mp_engine_info *out) const {
  out->backend = backend_kind();
  out->device = params_.device;
  out->weight_dtype = weight_dtype();
  out->kv_dtype = kv_dtype();
  out->weight_bytes = weight_bytes();
  out->gpu_bytes_in_use = 0;
  out->gpu_bytes_peak = 0;
  out->gpu_bytes_total = 0;
  std::snprintf(out->device_name, sizeof out->device_name, "cpu");
  backend_->fill_info(out);
}

}  // namespace mp
