// rope.cpp — rotary position embeddings.
//
// Frequencies: inv_freq[i] = theta^(−2i/d), computed in double. Llama-3 scaling
// (rope_type "llama3", as Hugging Face's `_compute_llama3_parameters`): with
// wavelen = 2π/f, low_wavelen = orig/low_freq_factor, high_wavelen = orig/high_freq_factor:
//   wavelen < high_wavelen  -> f              (high frequencies kept)
//   wavelen > low_wavelen   -> f/factor       (low frequencies stretched)
//   otherwise               -> (1−s)·f/factor + s·f,  s = (orig/wavelen − low)/(high − low)
// Angles pos·f are formed in double and cos/sin rounded once to float, so large positions
// lose no precision (a float angle would be off by ~pos·6e-8 rad).
//
// Layout: x[t][h][j] = x + (t*heads + h)*d + j; tables cos[t][i], sin[t][i], i < d/2.
// Pair i is (2i, 2i+1) for INTERLEAVED and (i, i+d/2) for HALF; both use inv_freq[i].
#include "cpu/rope.h"

#include <cmath>

namespace mp::cpu {

std::vector<double> rope_inv_freq(const mp_rope_params &rope, int32_t head_dim) {
  const int32_t half = head_dim / 2;
  std::vector<double> f((size_t)half);
  for (int32_t i = 0; i < half; i++)
    f[(size_t)i] = 1.0 / std::pow((double)rope.theta, (double)(2 * i) / (double)head_dim);
  if (rope.scaling == MP_ROPE_SCALING_LLAMA3) {
    const double factor = rope.factor, lo = rope.low_freq_factor, hi = rope.high_freq_factor;
    const double orig = rope.original_max_position;
    const double low_wavelen = orig / lo, high_wavelen = orig / hi;
    const double pi = 3.14159265358979323846;
    for (double &x : f) {
      const double wavelen = 2.0 * pi / x;
      if (wavelen < high_wavelen) continue;
      if (wavelen > low_wavelen) {
        x = x / factor;
      } else {
        const double s = (orig / wavelen - lo) / (hi - lo);
        x = (1.0 - s) * x / factor + s * x;
      }
    }
  }
  return f;
}

void rope_tables(const double *inv_freq, int32_t half, const int32_t *positions, int64_t n,
                 float *cos_out, float *sin_out) {
#pragma omp parallel for num_threads(threads()) schedule(static) if (n * half > 16384)
  for (int64_t t = 0; t < n; t++) {
    const double p = (double)positions[t];
    for (int32_t i = 0; i < half; i++) {
      const double a = p * inv_freq[i];
      cos_out[t * half + i] = (float)std::cos(a);
      sin_out[t * half + i] = (float)std::sin(a);
    }
  }
}

void rope_apply(float *x, int64_t n, int32_t heads, int32_t head_dim, int32_t style,
                const float *cos_t, const float *sin_t) {
  const int32_t half = head_dim / 2;
#pragma omp parallel for num_threads(threads()) schedule(static) if (n * heads * head_dim > 65536)
  for (int64_t t = 0; t < n; t++) {
    const float *c = cos_t + t * half;
    const float *s = sin_t + t * half;
    for (int32_t h = 0; h < heads; h++) {
      float *v = x + (t * heads + h) * head_dim;
      if (style == MP_ROPE_INTERLEAVED) {
        for (int32_t i = 0; i < half; i++) {
          const float a = v[2 * i], b = v[2 * i + 1];
          v[2 * i] = a * c[i] - b * s[i];
          v[2 * i + 1] = a * s[i] + b * c[i];
        }
      } else {
        for (int32_t i = 0; i < half; i++) {
          const float a = v[i], b = v[i + half];
          v[i] = a * c[i] - b * s[i];
          v[i + half] = a * s[i] + b * c[i];
        }
      }
    }
  }
}

void rope(float *x, int64_t n, int32_t heads, int32_t head_dim, const int32_t *positions,
          const mp_rope_params &r) {
  const int32_t half = head_dim / 2;
  const std::vector<double> f = rope_inv_freq(r, head_dim);
  std::vector<float> c((size_t)(n * half)), s((size_t)(n * half));
  rope_tables(f.data(), half, positions, n, c.data(), s.data());
  rope_apply(x, n, heads, head_dim, r.style, c.data(), s.data());
}

}  // namespace mp::cpu
