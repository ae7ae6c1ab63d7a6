// session_fork.cpp — mp_session_fork: a new session with a copy of another's first n
// tokens (magicpig.h, sessions). The copy runs over (layer, KV head) rows in parallel; the
// new session starts with no policy state (a MAGICPIG fork is indexed by its own commit).
#include <algorithm>
#include <cstring>
#include <memory>

#include "api/params.h"
#include "common/common.h"
#include "engine/backend.h"
#include "engine/engine.h"
#include "engine/session.h"

extern "C" {

MP_API int32_t mp_session_fork(mp_engine *e, const mp_session *src, const mp_session_params *p,
                               int64_t n, mp_session **out, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(out, MP_ERR_INVALID, "out is NULL");
    *out = nullptr;
    MP_CHECK(e && e->engine, MP_ERR_INVALID, "engine is NULL");
    MP_CHECK(src, MP_ERR_INVALID, "src is NULL");
    mp::Engine &eng = *e->engine;
    MP_CHECK(&src->engine() == &eng, MP_ERR_INVALID, "src belongs to another engine");
    if (n < 0) n = src->n_tokens();
    MP_CHECK(n <= src->n_tokens(), MP_ERR_INVALID,
             "n \"%lld\" is invalid: the source session holds %lld tokens", (long long)n,
             (long long)src->n_tokens());
    mp_session_params params;
    if (p) {
      params = mp::read_params(p, mp_session_default_params, "mp_session_params");
    } else {
      mp_session_default_params(&params);
      params.attention = src->attention();
    }
    params.reserve_tokens = std::max<int64_t>(params.reserve_tokens, n);
    params = mp::validate_session_params(eng, params);
    auto s = std::make_unique<mp_session>(e->engine, params);
    const int32_t L = s->n_layers(), H = s->n_kv_heads();
    const size_t bytes = (size_t)n * s->row_bytes();
    if (bytes > 0) {
#pragma omp parallel for num_threads(mp::threads()) schedule(static) collapse(2)
      for (int32_t l = 0; l < L; l++)
        for (int32_t h = 0; h < H; h++) {
          std::memcpy(s->k_row(l, h, 0), src->k_row(l, h, 0), bytes);
          std::memcpy(s->v_row(l, h, 0), src->v_row(l, h, 0), bytes);
        }
    }
    s->set_n_tokens(n);
    eng.backend().session_created(*s);
    *out = s.release();
    return MP_OK;
  });
}

}  // extern "C"
