// swiglu.h — the SwiGLU gate of the Llama MLP on the CPU.
#pragma once

#include <cstdint>

namespace mp::cpu {

// out[i] = silu(gate[i]) · up[i], silu(g) = g / (1 + e^−g). out may alias gate or up.
void swiglu(const float *gate, const float *up, int64_t n, float *out);

}  // namespace mp::cpu
