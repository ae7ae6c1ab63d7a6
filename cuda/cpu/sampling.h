// sampling.h — picking the next token from logits on the CPU.
#pragma once

#include <cstdint>

#include "common/common.h"

namespace mp::cpu {

// See mp_sample in magicpig.h. Arguments are already validated, except the logits
// themselves (a NaN or +∞ logit throws MP_ERR_INVALID naming its index).
void sample(const float *logits, int32_t vocab, const mp_sampling_params &p,
            uint64_t *rng_state, int32_t *token, float *logprob, int32_t *top_ids,
            float *top_logprobs);

// The uniform double in [0, 1) that the sampler draws: splitmix64 step of *state.
double sample_uniform(uint64_t *state);

}  // namespace mp::cpu
