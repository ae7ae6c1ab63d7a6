// rope.cuh — the RoPE pair rotation shared by the rope kernels (rope.cu) and the GEMV's fused
// RoPE + K/V append epilogue (matmul.cu), so that both round the same expression:
//   a' = bf16(a·cos − b·sin), b' = bf16(a·sin + b·cos), in f32 from bf16 inputs.
#pragma once

#include "gpu/cuda_util.h"

namespace mp::gpu {

// cos/sin of position p's angle for inverse frequency f: the angle in double, the results
// rounded once to f32 (rope.cu's file comment).
__device__ __forceinline__ void rope_cos_sin(double p, double f, float &c, float &s) {
  double sd, cd;
  sincos(p * f, &sd, &cd);
  c = (float)cd, s = (float)sd;
}

__device__ __forceinline__ float rope_a(float a, float b, float c, float s) {
  return a * c - b * s;
}
__device__ __forceinline__ float rope_b(float a, float b, float c, float s) {
  return a * s + b * c;
}

}  // namespace mp::gpu
