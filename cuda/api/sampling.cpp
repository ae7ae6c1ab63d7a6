// sampling.cpp — the exported sampling functions (magicpig.h, section "sampling").
#include "cpu/sampling.h"

#include <cmath>

#include "api/params.h"
#include "common/common.h"

extern "C" {

MP_API void mp_sampling_default_params(mp_sampling_params *p) {
  if (!p) return;
  std::memset((void *)p, 0, sizeof *p);
  p->size = sizeof *p;
  p->temperature = 1.0f;
  p->top_k = 0;
  p->top_p = 1.0f;
  p->n_logprobs = 0;
}

MP_API int32_t mp_sample(const float *logits, int32_t vocab, const mp_sampling_params *p,
                         uint64_t *rng_state, int32_t *token, float *logprob,
                         int32_t *top_ids, float *top_logprobs, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    const mp_sampling_params sp =
        mp::read_params(p, mp_sampling_default_params, "mp_sampling_params");
    MP_CHECK(logits, MP_ERR_INVALID, "logits is NULL");
    MP_CHECK(vocab >= 1, MP_ERR_INVALID, "vocab \"%d\" is invalid: must be >= 1", vocab);
    MP_CHECK(token, MP_ERR_INVALID, "token is NULL");
    MP_CHECK(std::isfinite(sp.temperature) && sp.temperature >= 0, MP_ERR_INVALID,
             "temperature \"%g\" is invalid: must be a finite number >= 0",
             (double)sp.temperature);
    MP_CHECK(sp.top_k >= 0, MP_ERR_INVALID, "top_k \"%d\" is invalid: must be >= 0 (0: off)",
             sp.top_k);
    MP_CHECK(sp.top_p > 0 && sp.top_p <= 1, MP_ERR_INVALID,
             "top_p \"%g\" is invalid: must be in (0, 1]", (double)sp.top_p);
    MP_CHECK(sp.n_logprobs >= 0 && sp.n_logprobs <= 20, MP_ERR_INVALID,
             "n_logprobs \"%d\" is invalid: must be in 0..20", sp.n_logprobs);
    MP_CHECK(sp.n_logprobs == 0 || (top_ids && top_logprobs), MP_ERR_INVALID,
             "top_ids and top_logprobs must not be NULL when n_logprobs is %d", sp.n_logprobs);
    MP_CHECK(rng_state || sp.temperature == 0 || sp.top_k == 1, MP_ERR_INVALID,
             "rng_state is NULL");
    uint64_t dummy = 0;
    mp::cpu::sample(logits, vocab, sp, rng_state ? rng_state : &dummy, token, logprob, top_ids,
                    top_logprobs);
    return MP_OK;
  });
}

}  // extern "C"
