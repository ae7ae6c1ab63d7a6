// session.cpp — the exported session functions (magicpig.h, sections "attention policies"
// and "sessions"): argument checks and error mapping around mp::Session.
#include "engine/session.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "api/params.h"
#include "common/common.h"
#include "engine/backend.h"
#include "engine/decode_worker.h"
#include "engine/engine.h"
#include "engine/snapshot.h"

namespace {

mp::Engine &engine_of(const mp_engine *e) {
  MP_CHECK(e && e->engine, MP_ERR_INVALID, "engine is NULL");
  return *e->engine;
}

mp::Session &session_of(const mp_engine *e, mp_session *s) {
  mp::Engine &eng = engine_of(e);
  MP_CHECK(s, MP_ERR_INVALID, "session is NULL");
  MP_CHECK(&s->engine() == &eng, MP_ERR_INVALID, "the session belongs to another engine");
  return *s;
}

}  // namespace

extern "C" {

MP_API void mp_attention_default_params(mp_attention_params *p) {
  if (!p) return;
  std::memset((void *)p, 0, sizeof *p);
  p->size = sizeof *p;
  p->method = MP_ATTN_MAGICPIG;
  p->lsh_k = 10;
  p->lsh_l = 150;
  p->sinks = 4;
  p->window = 64;
  p->gen_buffer = 256;
  p->eps = 1e-4f;
  p->budget = 0.02f;
  p->page_size = 16;
  p->seed = 0x5eed;
  p->n_dense_layers = -1;
}

MP_API void mp_session_default_params(mp_session_params *p) {
  if (!p) return;
  std::memset((void *)p, 0, sizeof *p);
  p->size = sizeof *p;
  mp_attention_default_params(&p->attention);
  p->reserve_tokens = 0;
}

MP_API int32_t mp_session_create(mp_engine *e, const mp_session_params *p, mp_session **out,
                                 char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(out, MP_ERR_INVALID, "out is NULL");
    *out = nullptr;
    mp::Engine &eng = engine_of(e);
    MP_CHECK(eng.finalized(), MP_ERR_STATE,
             "the engine is not finalized: call mp_engine_finalize first");
    mp_session_params params = mp::read_params(p, mp_session_default_params, "mp_session_params");
    params = mp::validate_session_params(eng, params);
    auto s = std::make_unique<mp_session>(e->engine, params);
    eng.backend().session_created(*s);
    *out = s.release();
    return MP_OK;
  });
}

MP_API void mp_session_free(mp_session *s) { delete s; }

MP_API int32_t mp_session_prefill(mp_engine *e, mp_session *s, const int32_t *tokens,
                                  int32_t n, float *logits, const int32_t *abort_flag,
                                  char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    return mp::session_prefill(session_of(e, s), tokens, n, logits, abort_flag);
  });
}

MP_API int32_t mp_session_prefill_commit(mp_engine *e, mp_session *s, const int32_t *tokens,
                                         int32_t n, float *logits, const int32_t *abort_flag,
                                         char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    return mp::session_prefill_commit(session_of(e, s), tokens, n, logits, abort_flag);
  });
}

MP_API int32_t mp_session_commit(mp_engine *e, mp_session *s, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    mp::session_commit(session_of(e, s));
    return MP_OK;
  });
}

MP_API int32_t mp_session_truncate(mp_engine *e, mp_session *s, int64_t n, char *err,
                                   size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    mp::session_truncate(session_of(e, s), n);
    return MP_OK;
  });
}

MP_API int32_t mp_session_get_info(const mp_session *s, mp_session_info *out) {
  if (!s || !out || out->size < sizeof(size_t)) return MP_ERR_INVALID;
  return mp::guard(nullptr, 0, [&] {
    mp_session_info full;
    std::memset((void *)&full, 0, sizeof full);
    full.size = sizeof full;
    mp::session_info(*s, &full);
    mp::write_info(full, out);
    return MP_OK;
  });
}

MP_API int32_t mp_decode_step(mp_engine *e, mp_session *const *sessions, int32_t n,
                              const int32_t *tokens, float *logits,
                              const int32_t *abort_flag, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    mp::Engine &eng = engine_of(e);
    MP_CHECK(sessions || n <= 0, MP_ERR_INVALID, "sessions is NULL");
    std::vector<mp::Session *> ss((size_t)std::max(n, 0));
    for (int32_t i = 0; i < n; i++) ss[(size_t)i] = sessions[i];
    return mp::decode_step(eng, ss.data(), n, tokens, logits, abort_flag);
  });
}

MP_API int32_t mp_decode_submit(mp_engine *e, mp_session *const *sessions, int32_t n,
                                const int32_t *tokens, float *logits, const int32_t *abort_flag,
                                char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    engine_of(e);
    MP_CHECK(sessions || n <= 0, MP_ERR_INVALID, "sessions is NULL");
    MP_CHECK(tokens || n <= 0, MP_ERR_INVALID, "tokens is NULL");
    std::vector<mp::Session *> ss((size_t)std::max(n, 0));
    for (int32_t i = 0; i < n; i++) ss[(size_t)i] = sessions[i];
    if (!e->decoder) e->decoder = std::make_unique<mp::DecodeWorker>();
    e->decoder->submit(e->engine, ss.data(), n, tokens, logits, abort_flag);
    return MP_OK;
  });
}

MP_API int32_t mp_decode_wait(mp_engine *e) {
  if (!e || !e->decoder) return MP_ERR_INVALID;
  e->decoder->wait();
  return MP_OK;
}

MP_API int32_t mp_decode_finish(mp_engine *e, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    engine_of(e);
    MP_CHECK(e->decoder, MP_ERR_STATE, "no decode step is in flight: call mp_decode_submit first");
    return e->decoder->finish(err, err_cap);
  });
}

MP_API int32_t mp_session_save(const mp_engine *e, const mp_session *s, const char *path,
                               char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    const mp::Session &ss = session_of(e, const_cast<mp_session *>(s));
    MP_CHECK(path && *path, MP_ERR_INVALID, "path is empty");
    mp::save_session(*e->engine, ss, path);
    return MP_OK;
  });
}

MP_API int32_t mp_session_load(mp_engine *e, const char *path, mp_session **out, char *err,
                               size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(out, MP_ERR_INVALID, "out is NULL");
    *out = nullptr;
    mp::Engine &eng = engine_of(e);
    MP_CHECK(eng.finalized(), MP_ERR_STATE,
             "the engine is not finalized: call mp_engine_finalize first");
    MP_CHECK(path && *path, MP_ERR_INVALID, "path is empty");
    *out = mp::load_session(e->engine, path);
    return MP_OK;
  });
}

}  // extern "C"
