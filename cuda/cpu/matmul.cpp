// matmul.cpp — y[n][out] = x[n][in] · W[out][in]^T, W in F32, F16 or BF16, fp32 accumulation.
//
// Layout: W[o][i] = w + o*in + i (rows are output features, as Hugging Face and GGUF store
// them); x[t][i] = x + t*in + i; y[t][o] = y + t*out + o.
//
// Blocking: the output rows are cut into blocks of RB rows and the tokens into tiles of TT
// tokens (TT·in floats ≈ 256 KiB so a tile stays in L2). Work items are (row block, token
// tile) pairs, row-block major, spread statically over the threads so a thread keeps its
// weight rows hot across tiles. Inside an item a register micro-kernel computes R rows ×
// N tokens at once: each weight vector loaded is used N times and each x vector R times.
// Decode (n = 1) is bandwidth-bound on W, so it uses R = 8 rows per pass (8 independent
// FMA chains hide the FMA latency).
//
// Every y element is a single dot product with one vector accumulator (simd.h rule), so
// the micro-kernel shape never changes a result: a token gives bit-identical outputs alone
// or inside a batch, with any thread count.
#include "cpu/matmul.h"

#include <algorithm>

#include "common/common.h"
#include "cpu/simd.h"

namespace mp::cpu {

namespace {

// ------------------------------------------------------------
// micro-kernel: rows w[0..R) × tokens x[0..N)

template <class W, int R, int N>
inline void micro(const W *w, int32_t dt, int64_t in, const float *x, float *y, int64_t ldy) {
  const int64_t nv = in - in % VW;
  vf acc[R][N];
  for (int r = 0; r < R; r++)
    for (int t = 0; t < N; t++) acc[r][t] = vzero();
  for (int64_t i = 0; i < nv; i += VW) {
    vf xv[N];
    for (int t = 0; t < N; t++) xv[t] = vload(x + t * in + i);
    for (int r = 0; r < R; r++) {
      vf wv = vload(w + r * in + i, dt);
      for (int t = 0; t < N; t++) acc[r][t] = vfma(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; r++) {
    for (int t = 0; t < N; t++) {
      float s = vhsum(acc[r][t]);
      for (int64_t i = nv; i < in; i++) s = __builtin_fmaf(load1(w + r * in + i, dt), x[t * in + i], s);
      y[t * ldy + r] = s;
    }
  }
}

// Rows [r0, r1) × tokens [t0, t1).
template <class W>
void block(const W *w, int32_t dt, const float *x, int64_t in, int64_t out, float *y,
           int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
  if (t1 - t0 == 1) {
    const float *xt = x + t0 * in;
    float *yt = y + t0 * out;
    int64_t r = r0;
    for (; r + 8 <= r1; r += 8) micro<W, 8, 1>(w + r * in, dt, in, xt, yt + r, out);
    for (; r < r1; r++) micro<W, 1, 1>(w + r * in, dt, in, xt, yt + r, out);
    return;
  }
  // AVX-512 has 32 vector registers: 4 rows x 4 tokens = 16 accumulators; AVX2 has 16: 2 x 4.
  constexpr int RM = VW >= 16 ? 4 : 2;
  int64_t r = r0;
  for (; r + RM <= r1; r += RM) {
    const W *wr = w + r * in;
    int64_t t = t0;
    for (; t + 4 <= t1; t += 4) micro<W, RM, 4>(wr, dt, in, x + t * in, y + t * out + r, out);
    for (; t < t1; t++) micro<W, RM, 1>(wr, dt, in, x + t * in, y + t * out + r, out);
  }
  for (; r < r1; r++) {
    const W *wr = w + r * in;
    int64_t t = t0;
    for (; t + 4 <= t1; t += 4) micro<W, 1, 4>(wr, dt, in, x + t * in, y + t * out + r, out);
    for (; t < t1; t++) micro<W, 1, 1>(wr, dt, in, x + t * in, y + t * out + r, out);
  }
}

template <class W>
void run(const W *w, int32_t dt, const float *x, int64_t n, int64_t in, int64_t out, float *y) {
  const int64_t RB = n == 1 ? 32 : 16;
  int64_t TT = (int64_t)(256 * 1024 / 4) / std::max<int64_t>(in, 1);
  TT = std::clamp<int64_t>(TT / 4 * 4, 4, 256);
  const int64_t nblocks = (out + RB - 1) / RB;
  const int64_t ntiles = (n + TT - 1) / TT;
  const int64_t items = nblocks * ntiles;
  const bool par = (double)n * (double)in * (double)out > 65536.0 && items > 1;
#pragma omp parallel for num_threads(threads()) schedule(static) if (par)
  for (int64_t it = 0; it < items; it++) {
    const int64_t b = it / ntiles, tile = it % ntiles;
    const int64_t r0 = b * RB, r1 = std::min(out, r0 + RB);
    const int64_t t0 = tile * TT, t1 = std::min(n, t0 + TT);
    block<W>(w, dt, x, in, out, y, r0, r1, t0, t1);
  }
}

}  // namespace

// ------------------------------------------------------------
// entry point

void matmul(int32_t wdtype, const void *w, const float *x, int64_t n, int64_t in, int64_t out,
            float *y) {
  if (n <= 0 || out <= 0) return;
  switch (wdtype) {
    case MP_DTYPE_F32:
      run<float>((const float *)w, wdtype, x, n, in, out, y);
      return;
    case MP_DTYPE_F16:
    case MP_DTYPE_BF16:
      run<uint16_t>((const uint16_t *)w, wdtype, x, n, in, out, y);
      return;
  }
  MP_FAIL(MP_ERR_INVALID, "unknown weight dtype %d", wdtype);
}

}  // namespace mp::cpu
