// engine.cpp — the exported mp_engine_* functions (magicpig.h, section "engine"): argument
// checks and error mapping around mp::Engine.
#include "engine/engine.h"

#include "api/params.h"
#include "common/common.h"

using mp::Engine;

static Engine &engine_of(mp_engine *e) {
  MP_CHECK(e && e->engine, MP_ERR_INVALID, "engine is NULL");
  return *e->engine;
}

extern "C" {

MP_API void mp_engine_default_params(mp_engine_params *p) {
  if (!p) return;
  std::memset((void *)p, 0, sizeof *p);
  p->size = sizeof *p;
  mp_model_config &m = p->model;
  m.size = sizeof m;
  m.rms_eps = 1e-5f;
  m.rope.theta = 10000.0f;
  m.rope.style = MP_ROPE_INTERLEAVED;
  m.rope.scaling = MP_ROPE_SCALING_NONE;
  m.rope.factor = 8.0f;
  m.rope.low_freq_factor = 1.0f;
  m.rope.high_freq_factor = 4.0f;
  m.rope.original_max_position = 8192;
  p->backend = MP_BACKEND_AUTO;
  p->device = 0;
  p->weight_dtype = -1;  // backend default: F32 on CPU, BF16 on CUDA
  p->kv_dtype = -1;      // backend default: F32 on CPU, BF16 on CUDA
  p->gpu_memory_budget = 0;
  p->max_batch = 16;
  p->prefill_chunk = 0;  // backend default: 512 on CPU, 8192 on CUDA
}

MP_API int32_t mp_engine_create(const mp_engine_params *p, mp_engine **out, char *err,
                                size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(out, MP_ERR_INVALID, "out is NULL");
    *out = nullptr;
    const mp_engine_params params =
        mp::read_params(p, mp_engine_default_params, "mp_engine_params");
    auto handle = std::make_unique<mp_engine>();
    handle->engine = mp::make_engine(params);
    *out = handle.release();
    return MP_OK;
  });
}

MP_API void mp_engine_free(mp_engine *e) { delete e; }

MP_API int32_t mp_engine_load_tensor(mp_engine *e, int32_t kind, int32_t layer,
                                     int32_t src_dtype, const int64_t *shape, int32_t ndim,
                                     const void *data, size_t nbytes, char *err,
                                     size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    engine_of(e).load_tensor(kind, layer, src_dtype, shape, ndim, data, nbytes);
    return MP_OK;
  });
}

MP_API int32_t mp_engine_load_tensor_file(mp_engine *e, int32_t kind, int32_t layer,
                                          int32_t src_dtype, const int64_t *shape,
                                          int32_t ndim, const char *path, uint64_t offset,
                                          uint64_t nbytes, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    engine_of(e).load_tensor_file(kind, layer, src_dtype, shape, ndim, path, offset, nbytes);
    return MP_OK;
  });
}

MP_API int32_t mp_engine_init_random(mp_engine *e, uint64_t seed, float scale, char *err,
                                     size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    engine_of(e).init_random(seed, scale);
    return MP_OK;
  });
}

MP_API int32_t mp_engine_finalize(mp_engine *e, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    engine_of(e).finalize();
    return MP_OK;
  });
}

MP_API int32_t mp_engine_get_info(const mp_engine *e, mp_engine_info *out) {
  if (!e || !e->engine || !out || out->size < sizeof(size_t)) return MP_ERR_INVALID;
  return mp::guard(nullptr, 0, [&] {
    mp_engine_info full;
    std::memset((void *)&full, 0, sizeof full);
    full.size = sizeof full;
    e->engine->get_info(&full);
    mp::write_info(full, out);
    return MP_OK;
  });
}

}  // extern "C"
