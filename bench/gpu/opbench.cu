// opbench.cu — kernel-level check and timing of the CUDA backend on the GPU server.
//
// A standalone program (not part of libmagicpig): scripts/gpu_check.sh links it against the
// library's own CUDA objects (build/obj) and runs it once. For every kernel family it
//   1. checks a sample of outputs against a float64 host reference computed from the very
//      same bf16 inputs (relative L2 error over the sample, or differing bits for LSH),
//   2. times the kernel with CUDA events (warm-up, then the median of several runs; inputs
//      larger than L2, rotated where a weight would otherwise sit in L2),
//   3. prints bytes/time or flops/time beside the measured ceilings (device-to-device copy
//      bandwidth; cuBLAS bf16 GEMM rate).
// Each section is independent: an exception in one is reported and the next one runs.
// Output: a table on stdout and one JSON object per line in $OUT/opbench.jsonl (or argv[1]).
#include <cuda_runtime.h>
#if __has_include(<cublasLt.h>)
#include <cublasLt.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "common/common.h"
#include "gpu/cuda_util.h"
#include "gpu/gpu.h"
#include "gpu/kernels.h"

using namespace mp;
using namespace mp::gpu;

namespace {

FILE *g_json = nullptr;
std::vector<std::string> g_table;
int g_failures = 0;

double bf(const bf16 &v) { return (double)__bfloat162float(v); }

template <class T>
std::vector<T> to_host_vec(const T *d, size_t n) {
  std::vector<T> h(n);
  MP_CUDA(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

// Median time of fn() in ms over `reps` runs after `warm` warm-ups, events on stream s.
double time_ms(cudaStream_t s, const std::function<void(int)> &fn, int warm = 3, int reps = 10) {
  for (int i = 0; i < warm; i++) fn(i);
  MP_CUDA(cudaStreamSynchronize(s));
  cudaEvent_t a, b;
  MP_CUDA(cudaEventCreate(&a));
  MP_CUDA(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < reps; i++) {
    MP_CUDA(cudaEventRecord(a, s));
    fn(warm + i);
    MP_CUDA(cudaEventRecord(b, s));
    MP_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    MP_CUDA(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  (void)cudaEventDestroy(a);
  (void)cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Rec {
  std::string name, variant, shape;
  double ms = 0;
  double rate = 0;            // GB/s or TFLOP/s
  std::string unit;           // "GB/s" | "TFLOP/s"
  double ceiling = 0;         // same unit
  double err = -1;            // relative error of the sample (or fraction of bits)
  double tol = 0;
  std::string note;
};

void emit(const Rec &r) {
  const bool ok = r.err < 0 || r.err <= r.tol;
  if (!ok) g_failures++;
  char line[512];
  std::snprintf(line, sizeof line, "%-10s %-8s %-34s %9.4f ms %9.1f %-7s %5.0f%% %10s %s%s",
                r.name.c_str(), r.variant.c_str(), r.shape.c_str(), r.ms, r.rate, r.unit.c_str(),
                r.ceiling > 0 ? 100.0 * r.rate / r.ceiling : 0.0,
                r.err < 0 ? "-" : (std::to_string(r.err).substr(0, 9)).c_str(),
                ok ? "" : "FAIL ", r.note.c_str());
  g_table.push_back(line);
  std::printf("%s\n", line);
  std::fflush(stdout);
  if (g_json) {
    std::fprintf(g_json,
                 "{\"name\":\"%s\",\"variant\":\"%s\",\"shape\":\"%s\",\"ms\":%.6f,\"rate\":%.3f,"
                 "\"unit\":\"%s\",\"ceiling\":%.3f,\"err\":%.3e,\"tol\":%.3e,\"ok\":%s,"
                 "\"note\":\"%s\"}\n",
                 r.name.c_str(), r.variant.c_str(), r.shape.c_str(), r.ms, r.rate, r.unit.c_str(),
                 r.ceiling, r.err, r.tol, ok ? "true" : "false", r.note.c_str());
    std::fflush(g_json);
  }
}

// The run's time budget (--budget SECONDS, default 150): a section that would start after
// it is reported as skipped, so the whole run stays bounded.
std::chrono::steady_clock::time_point g_start;
double g_budget = 150;
std::string g_only;  // --only a,b,c: run just these sections (comma list; empty: all)
double elapsed_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
}

void section(const char *name, const std::function<void()> &fn) {
  if (!g_only.empty() && ("," + g_only + ",").find("," + std::string(name) + ",") == std::string::npos)
    return;
  if (elapsed_s() > g_budget) {
    char line[160];
    std::snprintf(line, sizeof line, "%-10s SKIPPED: the %.0f s budget is spent", name, g_budget);
    g_table.push_back(line);
    std::printf("%s\n", line);
    std::fflush(stdout);
    return;
  }
  try {
    fn();
  } catch (const std::exception &e) {
    g_failures++;
    char line[600];
    std::snprintf(line, sizeof line, "%-10s ERROR %s", name, e.what());
    g_table.push_back(line);
    std::printf("%s\n", line);
    if (g_json) std::fprintf(g_json, "{\"name\":\"%s\",\"error\":\"%s\"}\n", name, e.what());
    (void)cudaGetLastError();
  }
}

double g_bw = 0;      // measured device copy bandwidth, GB/s
double g_tflops = 0;  // measured cuBLAS bf16 rate, TFLOP/s

uint64_t lcg(uint64_t &s) {
  s = s * 6364136223846793005ull + 1442695040888963407ull;
  return s >> 33;
}

// ------------------------------------------------------------
// sections

// Page-locked host memory: what cudaHostAlloc costs per GiB (sessions' host KV is pinned)
// and the pinned host<->device copy rates.
void bench_pinned(cudaStream_t s) {
  const size_t bytes = (size_t)4 << 30;
  const auto t0 = std::chrono::steady_clock::now();
  HostPinned<uint8_t> h(bytes);
  const double alloc_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::memset(h.p, 1, bytes);
  DevBuf<uint8_t> d(bytes);
  const double h2d = time_ms(s, [&](int) {
    MP_CUDA(cudaMemcpyAsync(d.p, h.p, bytes, cudaMemcpyHostToDevice, s));
  }, 1, 3);
  const double d2h = time_ms(s, [&](int) {
    MP_CUDA(cudaMemcpyAsync(h.p, d.p, bytes, cudaMemcpyDeviceToHost, s));
  }, 1, 3);
  char note[128];
  std::snprintf(note, sizeof note, "cudaHostAlloc %.2f s for 4 GiB (%.1f GiB/s)", alloc_s,
                4.0 / alloc_s);
  emit({"pcie", "h2d", "4 GiB pinned", h2d, bytes / (h2d * 1e6), "GB/s", 0, -1, 0, note});
  emit({"pcie", "d2h", "4 GiB pinned", d2h, bytes / (d2h * 1e6), "GB/s", 0, -1, 0, ""});
}

void bench_copy(cudaStream_t s) {
  const size_t bytes = (size_t)2 << 30;
  DevBuf<uint8_t> a(bytes), b(bytes);
  MP_CUDA(cudaMemsetAsync(a.p, 1, bytes, s));
  const double ms = time_ms(s, [&](int) {
    MP_CUDA(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice, s));
  });
  g_bw = 2.0 * bytes / (ms * 1e6);
  emit({"copy", "d2d", "2 GiB", ms, g_bw, "GB/s", 0, -1, 0, "read+write: the HBM ceiling"});
}

// One matmul case: y = x·Wᵀ for W [out][in] with a forced variant, 64 sampled outputs
// checked against float64 (and none left NaN), then timed over rotating copies of W (enough
// that the timed runs never hit L2).
struct MatmulRun {
  int ran = 0;
  double err = 0, ms = 0, bytes = 0;
  size_t nan = 0;
};
MatmulRun run_matmul(cudaStream_t s, Gemm &g, int out, int in, int n, int variant, uint64_t seed,
                     int warm = -1, int reps = -1) {
  const size_t wn = (size_t)out * in;
  const int copies = (int)std::max<size_t>(1, std::min<size_t>(8, (200u << 20) / (wn * 2) + 1));
  DevBuf<bf16> W(wn * copies), X((size_t)n * in);
  DevBuf<float> Y((size_t)n * out);
  fill_normal<bf16>(W.p, (int64_t)W.n, seed, 0.02f, 0.f, s);
  fill_normal<bf16>(X.p, (int64_t)X.n, seed + 1, 1.f, 0.f, s);
  MP_CUDA(cudaMemsetAsync(Y.p, 0xff, Y.bytes(), s));  // NaN poison
  MatmulRun r;
  r.ran = matmul<float>(g, W.p, X.p, in, n, in, out, Y.p, out, false, variant);
  MP_CUDA(cudaStreamSynchronize(s));
  std::vector<float> y = to_host_vec(Y.p, Y.n);
  std::vector<bf16> x = to_host_vec(X.p, X.n);
  for (float v : y) r.nan += !std::isfinite(v);
  uint64_t st = seed;
  double num = 0, den = 0;
  std::vector<bf16> wrow((size_t)in);
  for (int k = 0; k < 64; k++) {
    const int i = (int)(lcg(st) % n), o = (int)(lcg(st) % out);
    MP_CUDA(cudaMemcpy(wrow.data(), W.p + (size_t)o * in, (size_t)in * 2, cudaMemcpyDeviceToHost));
    double ref = 0;
    for (int c = 0; c < in; c++) ref += bf(wrow[c]) * bf(x[(size_t)i * in + c]);
    const double d = y[(size_t)i * out + o] - ref;
    num += d * d, den += ref * ref;
  }
  r.err = r.nan ? 1e9 : std::sqrt(num / std::max(den, 1e-30));
  auto launch = [&](int k) {
    matmul<float>(g, W.p + (size_t)(k % copies) * wn, X.p, in, n, in, out, Y.p, out, false,
                  variant);
  };
  r.ms = warm >= 0 ? time_ms(s, launch, warm, reps) : time_ms(s, launch);
  r.bytes = (double)wn * 2 + (double)n * in * 2 + (double)n * out * 4;
  return r;
}

// y = x·Wᵀ for W [out][in]; sampled check against float64.
void bench_matmul(cudaStream_t s, Gemm &g, int out, int in, int n, int variant, const char *vname,
                  uint64_t seed) {
  const MatmulRun r = run_matmul(s, g, out, in, n, variant, seed);
  const int ran = r.ran;
  const double err = r.err, ms = r.ms, bytes = r.bytes;
  const size_t nan = r.nan;
  const double flops = 2.0 * n * in * out;
  char shape[96];
  std::snprintf(shape, sizeof shape, "n=%d %dx%d", n, out, in);
  const char *vn = ran == GEMM_CUBLAS   ? "cublas"
                   : ran == GEMM_SKINNY ? "skinny"
                   : ran == GEMM_GEMV   ? "gemv"
                                        : "simple";
  (void)vname;
  if (n <= 16)
    emit({"gemv", vn, shape, ms, bytes / (ms * 1e6), "GB/s", g_bw, err, 1e-2,
          nan ? "NaN/unwritten outputs" : ""});
  else
    emit({"gemm", vn, shape, ms, flops / (ms * 1e9), "TFLOP/s", g_tflops, err, 1e-2,
          nan ? "NaN/unwritten outputs" : ""});
  if (n > 16 && ran == GEMM_CUBLAS) g_tflops = std::max(g_tflops, flops / (ms * 1e9));
}

#if __has_include(<cublasLt.h>)
// The prefill's GEMM shapes (n = 8192 rows) through cuBLASLt: every algorithm its heuristic
// offers (up to 24) timed back to back under sustained load (the power cap's clock), beside
// cublasGemmEx's default choice (what the engine runs) measured before and after. acc: C in
// f32 with beta = 1 (the residual adds), else bf16 output.
void bench_gemm_algos(cudaStream_t s, Gemm &g, int out, int in, int n, bool acc) {
  const size_t ws_bytes = 32u << 20;
  DevBuf<bf16> W((size_t)out * in), x((size_t)n * in);
  DevBuf<float> yf(acc ? (size_t)n * out : 1);
  DevBuf<bf16> yb(acc ? 1 : (size_t)n * out);
  DevBuf<uint8_t> ws(ws_bytes);
  fill_normal<bf16>(W.p, (int64_t)W.n, 31, 0.02f, 0.f, s);
  fill_normal<bf16>(x.p, (int64_t)x.n, 32, 1.f, 0.f, s);
  MP_CUDA(cudaMemsetAsync(acc ? (void *)yf.p : (void *)yb.p, 0,
                          acc ? yf.bytes() : yb.bytes(), s));
  const double flops = 2.0 * n * in * out;
  const int reps = std::max(5, (int)(60e-3 / (flops / 650e12)));  // ~60 ms per timing
  auto engine_gemm = [&](int) {
    if (acc)
      matmul<float>(g, W.p, x.p, in, n, in, out, yf.p, out, true, GEMM_CUBLAS);
    else
      matmul<bf16>(g, W.p, x.p, in, n, in, out, yb.p, out, false, GEMM_CUBLAS);
  };
  char shape[96];
  std::snprintf(shape, sizeof shape, "n=%d %dx%d%s", n, out, in, acc ? " +=f32" : "");
  const double t0 = time_ms(s, engine_gemm, reps, reps);
  emit({"gemmalgo", "gemmex", shape, t0, flops / (t0 * 1e9), "TFLOP/s", g_tflops, -1.0, 0.0,
        "cublasGemmEx default (the engine's)"});

  cublasLtHandle_t lt = nullptr;
  if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) return;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  const cudaDataType_t ct = acc ? CUDA_R_32F : CUDA_R_16BF;
  cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
  cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, in, out, in);
  cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, in, n, in);
  cublasLtMatrixLayoutCreate(&lc, ct, out, n, out);
  cublasLtMatmulPreferenceCreate(&pref);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                       sizeof ws_bytes);
  cublasLtMatmulHeuristicResult_t res[24];
  int nres = 0;
  cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 24, res, &nres);
  const float alpha = 1.f, beta = acc ? 1.f : 0.f;
  void *y = acc ? (void *)yf.p : (void *)yb.p;
  for (int i = 0; i < nres; i++) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
    bool ok = true;
    auto run = [&](int) {
      if (cublasLtMatmul(lt, op, &alpha, W.p, la, x.p, lb, &beta, y, lc, y, lc, &res[i].algo,
                         ws.p, ws_bytes, s) != CUBLAS_STATUS_SUCCESS)
        ok = false;
    };
    const double ms = time_ms(s, run, 2, reps);
    int id = -1, tile = -1, stages = -1, cluster = -1;
    cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id,
                                         nullptr);
    cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile,
                                         sizeof tile, nullptr);
    cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages,
                                         sizeof stages, nullptr);
    cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID,
                                         &cluster, sizeof cluster, nullptr);
    char vn[32], note[96];
    std::snprintf(vn, sizeof vn, "lt#%d", i);
    std::snprintf(note, sizeof note, "algo %d tile %d stages %d cluster %d ws %zu%s", id, tile,
                  stages, cluster, res[i].workspaceSize, ok ? "" : " FAILED");
    emit({"gemmalgo", vn, shape, ms, flops / (ms * 1e9), "TFLOP/s", g_tflops, -1.0, 0.0, note});
  }
  const double t1 = time_ms(s, engine_gemm, 2, reps);
  emit({"gemmalgo", "gemmex", shape, t1, flops / (t1 * 1e9), "TFLOP/s", g_tflops, -1.0, 0.0,
        "cublasGemmEx default, again"});
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(op);
  cublasLtDestroy(lt);
}
#endif

// Name of the attention_prefill variant that ran (kernels.h AttnVariant).
const char *attn_variant_name(int ran) {
  switch (ran) {
    case ATTN_FLASH: return "flash";
    case ATTN_FLASH2: return "flash2";
    case ATTN_FLASH2_W8: return "flash2w8";
    case ATTN_FLASH2_BC32: return "fl2bc32";
    case ATTN_GENERIC: return "generic";
    default: return "other";
  }
}
// opbench-only variant numbers: the wgmma kernel in configuration c (WgmmaConfig) is
// variant WGMMA_CFG + c.
constexpr int WGMMA_CFG = 100;

const char *flash_variant_name(int ran) {
  return ran == WGMMA_CFG + WGMMA_NO_PINGPONG      ? "wgmma-np"
         : ran == WGMMA_CFG + WGMMA_PINGPONG       ? "wgmma-pp"
         : ran == WGMMA_CFG + WGMMA_PINGPONG_S3    ? "wgmma-pp3"
         : ran == WGMMA_CFG + WGMMA_OVERLAP_SMEM_Q ? "wgmma-sq"
         : ran == WGMMA_CFG + WGMMA_CP_ASYNC       ? "wgmma-cpa"
         : ran >= WGMMA_CFG                        ? "wgmma-?"
         : ran == ATTN_WGMMA                       ? "wgmma"
                                                   : attn_variant_name(ran);
}

// head_major: K and V as [Hkv][T][d] (the engine's prefill layout) instead of [T][Hkv][d].
// bound: the keys' norm bound (KVView::kmax, from key_norm_max) is passed, so that the
// default Hopper kernel keeps the first tile's maxima where the bound allows; kscale scales
// K (larger scores: 4 keeps the bound within the kernel's 2^64 of the first maxima with P up to
// 2^6, 8 puts it beyond, the running maxima then).
void bench_flash(cudaStream_t s, int n, int q_pos0, int H, int Hkv, int d, int variant,
                 bool head_major = false, bool bound = false, float kscale = 1.f) {
  const int T = q_pos0 + n;
  DevBuf<bf16> Q((size_t)n * H * d), K((size_t)T * Hkv * d), V((size_t)T * Hkv * d);
  DevBuf<bf16> O((size_t)n * H * d);
  DevBuf<float> lse((size_t)n * H), kmax((size_t)Hkv);
  fill_normal<bf16>(Q.p, (int64_t)Q.n, 11, 1.f, 0.f, s);
  fill_normal<bf16>(K.p, (int64_t)K.n, 12, kscale, 0.f, s);
  fill_normal<bf16>(V.p, (int64_t)V.n, 13, 1.f, 0.f, s);
  MP_CUDA(cudaMemsetAsync(O.p, 0xff, O.bytes(), s));
  KVView kv = head_major ? KVView{K.p, V.p, (int64_t)d, (int64_t)T * d}
                         : KVView{K.p, V.p, (int64_t)Hkv * d, (int64_t)d};
  if (bound) {
    key_norm_max(K.p, kv.stride_t, kv.stride_h, 0, T, Hkv, d, kmax.p, true, s);
    kv.kmax = kmax.p;
  }
  auto krow = [&](int t, int hk) {
    return head_major ? ((size_t)hk * T + t) * d : ((size_t)t * Hkv + hk) * d;
  };
  auto launch = [&](float *l) {
    if (variant >= WGMMA_CFG &&
        attention_prefill_sm90a<bf16>(Q.p, (int64_t)H * d, kv, n, T, H, Hkv, d, q_pos0, O.p,
                                      (int64_t)H * d, l, s, variant - WGMMA_CFG))
      return variant;
    return attention_prefill<bf16>(Q.p, (int64_t)H * d, kv, n, T, H, Hkv, d, q_pos0, O.p,
                                   (int64_t)H * d, l, s,
                                   variant >= WGMMA_CFG ? (int)ATTN_FLASH : variant);
  };
  const int ran = launch(lse.p);
  MP_CUDA(cudaStreamSynchronize(s));
  std::vector<bf16> o = to_host_vec(O.p, O.n), q = to_host_vec(Q.p, Q.n);
  std::vector<bf16> kh = to_host_vec(K.p, K.n), vh = to_host_vec(V.p, V.n);
  std::vector<float> l = to_host_vec(lse.p, lse.n);
  size_t bad = 0;
  for (auto &v : o) bad += !std::isfinite(bf(v));
  // key_norm_max against the keys' norms on the host (a bound too low would let the kernel
  // keep maxima that later scores exceed)
  double kmax_err = 0;
  if (bound) {
    const std::vector<float> km = to_host_vec(kmax.p, kmax.n);
    for (int hk = 0; hk < Hkv; hk++) {
      double best = 0;
      for (int t = 0; t < T; t++) {
        const bf16 *kr = kh.data() + krow(t, hk);
        double a = 0;
        for (int c = 0; c < d; c++) a += (double)bf(kr[c]) * bf(kr[c]);
        best = std::max(best, std::sqrt(a));
      }
      kmax_err = std::max(kmax_err, std::fabs(km[(size_t)hk] - best) / std::max(best, 1e-30));
    }
  }
  // Reference for 12 sampled (query, head) rows, always including the first and last query.
  uint64_t st = 99;
  double num = 0, den = 0, lse_err = 0;
  for (int k = 0; k < 12; k++) {
    const int i = k < 2 ? (k == 0 ? 0 : n - 1) : (int)(lcg(st) % n);
    const int h = (int)(lcg(st) % H), hk = h / (H / Hkv);
    const int last = std::min(T - 1, q_pos0 + i);
    std::vector<double> sc((size_t)last + 1);
    double mx = -1e300;
    for (int t = 0; t <= last; t++) {
      const bf16 *kr = kh.data() + krow(t, hk);
      double a = 0;
      for (int c = 0; c < d; c++) a += bf(q[((size_t)i * H + h) * d + c]) * bf(kr[c]);
      sc[t] = a / std::sqrt((double)d);
      mx = std::max(mx, sc[t]);
    }
    std::vector<double> acc((size_t)d, 0.0);
    double z = 0;
    for (int t = 0; t <= last; t++) {
      const double p = std::exp(sc[t] - mx);
      z += p;
      const bf16 *vr = vh.data() + krow(t, hk);
      for (int c = 0; c < d; c++) acc[c] += p * bf(vr[c]);
    }
    for (int c = 0; c < d; c++) {
      const double ref = acc[c] / z;
      const double dd = bf(o[((size_t)i * H + h) * d + c]) - ref;
      num += dd * dd, den += ref * ref;
    }
    const double lref = (mx + std::log(z)) / std::log(2.0);
    lse_err = std::max(lse_err, std::fabs(l[(size_t)i * H + h] - lref));
  }
  const double err = bad || kmax_err > 1e-5 ? 1e9 : std::sqrt(num / std::max(den, 1e-30));
  const double ms = time_ms(s, [&](int) { launch(nullptr); }, 2, 5);
  // Causal flops: 4·d per (query, key, head) pair.
  double pairs = 0;
  for (int i = 0; i < n; i++) pairs += std::min(T, q_pos0 + i + 1);
  const double flops = 4.0 * d * H * pairs;
  char shape[96], note[96];
  std::snprintf(shape, sizeof shape, "n=%d pos0=%d H%d/%d d%d%s%s", n, q_pos0, H, Hkv, d,
                head_major ? " hm" : "", bound ? (kscale != 1.f ? " bnd k*" : " bnd") : "");
  char kn[40] = "";
  if (bound) std::snprintf(kn, sizeof kn, ", kmax rel err %.1e", kmax_err);
  std::snprintf(note, sizeof note, "lse max abs err %.2e%s%s", lse_err, kn,
                bad ? " NaN/unwritten" : "");
  emit({"prefill", flash_variant_name(ran), shape, ms, flops / (ms * 1e9),
        "TFLOP/s", g_tflops, err, 1.5e-2, note});
}

// A 96K prompt's prefill attention on the 8B shape, as the engine runs it (head-major K/V of
// 96K rows per head): 12 chunks of 8192
// queries after 0, 8192, … 90112 keys, repeated for `layers` layers back to back, so that the
// clock settles under the power cap as it does in the model (a single chunk's timing runs at
// the boost clock). Rate over the whole run.
void bench_prefill_layers(cudaStream_t s, int variant, int layers, bool bound = false) {
  const int n = 8192, N = 98304, H = 32, Hkv = 8, d = 128;
  DevBuf<bf16> Q((size_t)n * H * d), K((size_t)N * Hkv * d), V((size_t)N * Hkv * d);
  DevBuf<bf16> O((size_t)n * H * d);
  DevBuf<float> kmax((size_t)Hkv);
  fill_normal<bf16>(Q.p, (int64_t)Q.n, 21, 1.f, 0.f, s);
  fill_normal<bf16>(K.p, (int64_t)K.n, 22, 1.f, 0.f, s);
  fill_normal<bf16>(V.p, (int64_t)V.n, 23, 1.f, 0.f, s);
  KVView kv{K.p, V.p, (int64_t)d, (int64_t)N * d};  // head-major, as the engine's prefill
  if (bound) {  // over all rows (the engine's is over the rows before each chunk's end)
    key_norm_max(K.p, kv.stride_t, kv.stride_h, 0, N, Hkv, d, kmax.p, true, s);
    kv.kmax = kmax.p;
  }
  int ran = variant;
  auto layer = [&](int) {
    for (int c = 0; c < N / n; c++) {
      const int pos0 = c * n;
      if (variant >= WGMMA_CFG &&
          attention_prefill_sm90a<bf16>(Q.p, (int64_t)H * d, kv, n, pos0 + n, H, Hkv, d, pos0,
                                        O.p, (int64_t)H * d, nullptr, s, variant - WGMMA_CFG))
        continue;
      ran = attention_prefill<bf16>(Q.p, (int64_t)H * d, kv, n, pos0 + n, H, Hkv, d, pos0, O.p,
                                    (int64_t)H * d, nullptr, s,
                                    variant >= WGMMA_CFG ? (int)ATTN_FLASH : variant);
    }
  };
  const double ms = time_ms(s, [&](int i) { for (int l = 0; l < layers; l++) layer(i); }, 1, 1) /
                    layers;
  double pairs = 0;
  for (int i = 0; i < N; i++) pairs += i + 1;
  const double flops = 4.0 * d * H * pairs;
  char shape[96], note[96];
  std::snprintf(shape, sizeof shape, "96K prompt, 12 chunks x %d layers%s", layers,
                bound ? " bnd" : "");
  std::snprintf(note, sizeof note, "ms per layer; clock as under the model's load");
  emit({"prefill96k", flash_variant_name(ran), shape, ms, flops / (ms * 1e9), "TFLOP/s",
        g_tflops, -1.0, 0.0, note});
}

// form 0: attention_decode (decode kernel + combine kernel); form 1: attention_decode2 (dec2
// branch: folded split merge, L2 prefetch, PDL when available).
void bench_decode(cudaStream_t s, int B, int T, int H, int Hkv, int d, int force_splits = 0,
                  int form = 0) {
  std::vector<DevBuf<bf16>> Ks, Vs;
  std::vector<SeqKV> seqs;
  for (int b = 0; b < B; b++) {
    const int len = T - b * 37;  // lengths differ a little within the batch
    Ks.emplace_back((size_t)len * Hkv * d);
    Vs.emplace_back((size_t)len * Hkv * d);
    fill_normal<bf16>(Ks.back().p, (int64_t)Ks.back().n, 100 + b, 1.f, 0.f, s);
    fill_normal<bf16>(Vs.back().p, (int64_t)Vs.back().n, 200 + b, 1.f, 0.f, s);
    seqs.push_back(SeqKV{Ks.back().p, Vs.back().p, (int64_t)Hkv * d, (int64_t)d, len});
  }
  DevBuf<SeqKV> dseqs(seqs.size());
  MP_CUDA(cudaMemcpy(dseqs.p, seqs.data(), seqs.size() * sizeof(SeqKV), cudaMemcpyHostToDevice));
  DevBuf<bf16> Q((size_t)B * H * d);
  fill_normal<bf16>(Q.p, (int64_t)Q.n, 7, 1.f, 0.f, s);
  DevBuf<float> O((size_t)B * H * d), lse((size_t)B * H);
  const int splits = force_splits > 0 ? force_splits : decode_splits(B, Hkv, T);
  DevBuf<float> ws(std::max<size_t>(1, decode_workspace_floats(B, H, d, splits)));
  DevBuf<unsigned> cnt((size_t)B * Hkv);
  MP_CUDA(cudaMemsetAsync(cnt.p, 0, cnt.bytes(), s));
  MP_CUDA(cudaMemsetAsync(O.p, 0xff, O.bytes(), s));
  auto launch = [&] {
    if (form == 1)
      attention_decode2<bf16, float>(Q.p, (int64_t)H * d, dseqs.p, B, H, Hkv, d, splits, O.p,
                                     lse.p, ws.p, cnt.p, decode2_pdl(), s);
    else
      attention_decode<bf16, float>(Q.p, (int64_t)H * d, dseqs.p, B, H, Hkv, d, splits, O.p,
                                    lse.p, ws.p, s);
  };
  launch();
  MP_CUDA(cudaStreamSynchronize(s));
  std::vector<float> o = to_host_vec(O.p, O.n), l = to_host_vec(lse.p, lse.n);
  std::vector<bf16> q = to_host_vec(Q.p, Q.n);
  size_t bad = 0;
  for (float v : o) bad += !std::isfinite(v);
  double num = 0, den = 0, lse_err = 0;
  for (int k = 0; k < 2; k++) {
    const int b = k == 0 ? 0 : B - 1, h = k == 0 ? 0 : H - 1, hk = h / (H / Hkv);
    const int len = seqs[b].len;
    std::vector<bf16> kk = to_host_vec(Ks[b].p, Ks[b].n), vv = to_host_vec(Vs[b].p, Vs[b].n);
    std::vector<double> sc((size_t)len);
    double mx = -1e300;
    for (int t = 0; t < len; t++) {
      double a = 0;
      for (int c = 0; c < d; c++)
        a += bf(q[((size_t)b * H + h) * d + c]) * bf(kk[((size_t)t * Hkv + hk) * d + c]);
      sc[t] = a / std::sqrt((double)d);
      mx = std::max(mx, sc[t]);
    }
    std::vector<double> acc((size_t)d, 0.0);
    double z = 0;
    for (int t = 0; t < len; t++) {
      const double p = std::exp(sc[t] - mx);
      z += p;
      for (int c = 0; c < d; c++) acc[c] += p * bf(vv[((size_t)t * Hkv + hk) * d + c]);
    }
    for (int c = 0; c < d; c++) {
      const double ref = acc[c] / z, dd = o[((size_t)b * H + h) * d + c] - ref;
      num += dd * dd, den += ref * ref;
    }
    lse_err = std::max(lse_err, std::fabs(l[(size_t)b * H + h] - (mx + std::log(z)) / std::log(2.0)));
  }
  const double err = bad ? 1e9 : std::sqrt(num / std::max(den, 1e-30));
  const double ms = time_ms(s, [&](int) { launch(); });
  // The counters must be back to zero after every launch (form 1).
  std::vector<unsigned> c = to_host_vec(cnt.p, cnt.n);
  size_t stale = 0;
  for (unsigned v : c) stale += v != 0;
  double bytes = 0;
  for (auto &sq : seqs) bytes += (double)sq.len * Hkv * d * 2 * 2;
  char shape[96], note[96];
  std::snprintf(shape, sizeof shape, "B=%d T=%d H%d/%d d%d", B, T, H, Hkv, d);
  std::snprintf(note, sizeof note, "splits %d, lse max abs err %.2e%s", splits, lse_err,
                stale ? " COUNTERS NOT RESET" : "");
  emit({"decode", form == 1 ? "dec2" : "splitk", shape, ms, bytes / (ms * 1e6), "GB/s", g_bw,
        (stale || lse_err > 1e-3) ? 1e9 : err, 5e-3, note});
}

void bench_lsh(cudaStream_t s, int n, int d, int K, int L) {
  const int KL = K * L;
  DevBuf<float> R((size_t)d * KL);
  DevBuf<bf16> X((size_t)n * d);
  DevBuf<uint16_t> C((size_t)n * L);
  fill_normal<float>(R.p, (int64_t)R.n, 5, 1.f, 0.f, s);
  fill_normal<bf16>(X.p, (int64_t)X.n, 6, 1.f, 0.f, s);
  MP_CUDA(cudaMemsetAsync(C.p, 0xff, C.bytes(), s));
  lsh_hash<bf16>(R.p, X.p, d, n, d, K, L, C.p, s);
  MP_CUDA(cudaStreamSynchronize(s));
  std::vector<float> r = to_host_vec(R.p, R.n);
  std::vector<bf16> x = to_host_vec(X.p, X.n);
  std::vector<uint16_t> c = to_host_vec(C.p, C.n);
  uint64_t st = 3;
  size_t diff = 0, total = 0, near = 0;
  for (int k = 0; k < 256; k++) {
    const int i = (int)(lcg(st) % n);
    for (int t = 0; t < L; t++) {
      for (int j = 0; j < K; j++) {
        double p = 0, nx = 0, nr = 0;
        for (int e = 0; e < d; e++) {
          const double xv = bf(x[(size_t)i * d + e]), rv = r[(size_t)e * KL + t * K + j];
          p += xv * rv, nx += xv * xv, nr += rv * rv;
        }
        const int bit = p > 0;
        const int got = (c[(size_t)i * L + t] >> j) & 1;
        total++;
        if (bit != got) {
          diff++;
          if (std::fabs(p) < 1e-5 * std::sqrt(nx * nr)) near++;
        }
      }
    }
  }
  const double ms = time_ms(s, [&](int) { lsh_hash<bf16>(R.p, X.p, d, n, d, K, L, C.p, s); }, 2, 5);
  const double flops = 2.0 * n * d * KL;
  char shape[96], note[128];
  std::snprintf(shape, sizeof shape, "n=%d d=%d K%dL%d", n, d, K, L);
  std::snprintf(note, sizeof note, "%zu/%zu bits differ (%zu of them |x.r| < 1e-5 |x||r|)", diff,
                total, near);
  // Bits may only differ at rounding level: all differing bits must be near zero.
  emit({"lsh", n <= 64 ? "few" : "tiled", shape, ms, flops / (ms * 1e9), "TFLOP/s", 0,
        (double)(diff - near) / (double)total, 0.0, note});
}

// A layer's first LSH index (lsh_sort.cu): the mean key of one head's n rows (exact: a
// sequential double sum on the host, bit for bit) and the per-block counting sort of [L][n]
// codes (exact: a host counting sort of every table, offsets and entries compared whole).
void bench_lsh_first(cudaStream_t s, int n, int d, int K, int L) {
  const int NB = 1 << K;
  const int blocks = (n + 65535) / 65536;
  DevBuf<bf16> X((size_t)n * d);
  DevBuf<float> Mu((size_t)d);
  fill_normal<bf16>(X.p, (int64_t)X.n, 8, 1.f, 0.25f, s);
  std::vector<uint16_t> codes((size_t)L * n);
  uint64_t st = 11;
  for (auto &c : codes) {  // skewed: half the tokens in 1/8 of the buckets
    const uint64_t r = lcg(st);
    c = (uint16_t)((r & 1) ? (r >> 1) % (uint64_t)std::max(1, NB / 8) : (r >> 1) % (uint64_t)NB);
  }
  DevBuf<uint16_t> C = upload(codes.data(), codes.size(), s);
  DevBuf<uint32_t> O((size_t)blocks * L * (NB + 1));
  DevBuf<uint16_t> E((size_t)L * n);
  MP_CUDA(cudaMemsetAsync(O.p, 0xff, O.bytes(), s));
  MP_CUDA(cudaMemsetAsync(E.p, 0xff, E.n * sizeof(uint16_t), s));
  lsh_mean(X.p, n, d, Mu.p, s);
  lsh_sort(C.p, n, n, L, K, O.p, E.p, s);
  MP_CUDA(cudaStreamSynchronize(s));
  std::vector<bf16> x = to_host_vec(X.p, X.n);
  std::vector<float> mu = to_host_vec(Mu.p, Mu.n);
  std::vector<uint32_t> o = to_host_vec(O.p, O.n);
  std::vector<uint16_t> e = to_host_vec(E.p, E.n);
  size_t mean_bad = 0;
  for (int c = 0; c < d; c++) {
    double acc = 0;
    for (int j = 0; j < n; j++) acc += (double)__bfloat162float(x[(size_t)j * d + c]);
    const float want = (float)(acc / (double)n);
    if (std::memcmp(&want, &mu[c], 4) != 0) mean_bad++;
  }
  size_t sort_bad = 0;
  std::vector<uint32_t> off(NB + 1), cur(NB);
  std::vector<uint16_t> ent(65536);
  for (int b = 0; b < blocks; b++) {
    const int j0 = b * 65536, nb = std::min(65536, n - j0);
    for (int t = 0; t < L; t++) {
      const uint16_t *c = codes.data() + (size_t)t * n + j0;
      std::fill(off.begin(), off.end(), 0u);
      for (int j = 0; j < nb; j++) off[c[j] + 1]++;
      for (int i = 0; i < NB; i++) off[i + 1] += off[i];
      std::copy(off.begin(), off.end() - 1, cur.begin());
      for (int j = 0; j < nb; j++) ent[cur[c[j]]++] = (uint16_t)j;
      const uint32_t *go = o.data() + ((size_t)b * L + t) * (NB + 1);
      const uint16_t *ge = e.data() + (size_t)j0 * L + (size_t)t * nb;
      if (std::memcmp(go, off.data(), (NB + 1) * 4) || std::memcmp(ge, ent.data(), nb * 2))
        sort_bad++;
    }
  }
  char shape[96], note[128];
  std::snprintf(shape, sizeof shape, "n=%d d=%d", n, d);
  std::snprintf(note, sizeof note, "%zu/%d dims differ from the sequential double mean",
                mean_bad, d);
  const double ms_mean = time_ms(s, [&](int) { lsh_mean(X.p, n, d, Mu.p, s); }, 2, 5);
  emit({"lshfirst", "mean", shape, ms_mean, (double)X.n * 2 / (ms_mean * 1e6), "GB/s", g_bw,
        (double)mean_bad, 0.0, note});
  std::snprintf(shape, sizeof shape, "n=%d K%dL%d (%d blocks)", n, K, L, blocks);
  std::snprintf(note, sizeof note, "%zu/%d (block, table) CSRs differ from a host counting sort",
                sort_bad, blocks * L);
  const double ms_sort =
      time_ms(s, [&](int) { lsh_sort(C.p, n, n, L, K, O.p, E.p, s); }, 2, 5);
  // bytes: codes read twice, entries written, offsets written
  const double bytes = (double)L * n * 2 * 3 + (double)O.n * 4;
  emit({"lshfirst", "sort", shape, ms_sort, bytes / (ms_sort * 1e6), "GB/s", g_bw,
        (double)sort_bad, 0.0, note});
}

void bench_sample(cudaStream_t s, int n, int vocab) {
  DevBuf<float> Lg((size_t)n * vocab), U((size_t)n);
  DevBuf<int32_t> T((size_t)n);
  fill_normal<float>(Lg.p, (int64_t)Lg.n, 9, 3.f, 0.f, s);
  MP_CUDA(cudaMemsetAsync(U.p, 0, U.bytes(), s));
  argmax(Lg.p, n, vocab, T.p, s);
  MP_CUDA(cudaStreamSynchronize(s));
  std::vector<float> lg = to_host_vec(Lg.p, Lg.n);
  std::vector<int32_t> t = to_host_vec(T.p, T.n);
  int wrong = 0;
  for (int i = 0; i < n; i++) {
    int best = 0;
    for (int j = 1; j < vocab; j++)
      if (lg[(size_t)i * vocab + j] > lg[(size_t)i * vocab + best]) best = j;
    wrong += best != t[i];
  }
  char shape[64];
  std::snprintf(shape, sizeof shape, "n=%d vocab=%d", n, vocab);
  double ms = time_ms(s, [&](int) { argmax(Lg.p, n, vocab, T.p, s); });
  emit({"argmax", "block", shape, ms, (double)n * vocab * 4 / (ms * 1e6), "GB/s", g_bw,
        (double)wrong / n, 0.0, ""});
  ms = time_ms(s, [&](int) { sample(Lg.p, n, vocab, 0.8f, 50, 0.9f, U.p, T.p, s); });
  emit({"sample", "T.8k50p.9", shape, ms, (double)n * vocab * 4 / (ms * 1e6), "GB/s", g_bw, -1, 0,
        "top-k and top-p searches: ~66 passes over the row"});
}

// ------------------------------------------------------------
// gemv branch: decode kernels — the GEMV kernel (matmul variant 4) against the skinny one
// (variant 2) at n = 1 and 4 on the five 8B matrices, its fused RMSNorm / SwiGLU forms
// against the separate kernels, and the decode-attention split counts (old rule vs new).
// Rates are also given as % of 4.3 TB/s (the measured copy ceiling of the H200).

constexpr double kHbmGBs = 4300.0;

// y = x·Wᵀ with a forced variant; parity of 64 sampled outputs against float64.
void bench_gemv_plain(cudaStream_t s, Gemm &g, int out, int in, int n, int variant,
                      uint64_t seed) {
  const MatmulRun r = run_matmul(s, g, out, in, n, variant, seed, 3, 20);
  const int ran = r.ran;
  const double err = r.err, ms = r.ms, bytes = r.bytes;
  const size_t nan = r.nan;
  const double gbs = bytes / (ms * 1e6);
  char shape[96], note[96];
  std::snprintf(shape, sizeof shape, "n=%d %dx%d", n, out, in);
  std::snprintf(note, sizeof note, "%.0f%% of 4.3 TB/s%s", 100.0 * gbs / kHbmGBs,
                nan ? " NaN/unwritten outputs" : "");
  emit({"gemv2", ran == GEMM_GEMV ? "gemv" : ran == GEMM_SKINNY ? "skinny" : "other", shape, ms,
        gbs, "GB/s", g_bw, err, 1e-2, note});
}

// The decode step's fused forms: swiglu = false: y = rmsnorm(x)·Wᵀ (QKV, LM head: f32 out
// here); swiglu = true: h = silu(g)·u of rmsnorm(x)·[Wg; Wu]ᵀ (out = 2F rows). fused = false
// times the separate kernels (rmsnorm, GEMV, swiglu) instead. Parity of 64 sampled outputs
// against float64 from the same bf16-rounded normalized x.
void bench_gemv_fused(cudaStream_t s, Gemm &g, int out, int in, int n, bool swiglu_epi, bool fused,
                      uint64_t seed) {
  const size_t wn = (size_t)out * in;
  const int F = out / 2;
  const int copies = (int)std::max<size_t>(1, std::min<size_t>(8, (200u << 20) / (wn * 2) + 1));
  DevBuf<bf16> W(wn * copies), XB((size_t)n * in), GU((size_t)n * out), H((size_t)n * F);
  DevBuf<float> X((size_t)n * in), NW((size_t)in), Y((size_t)n * out);
  fill_normal<bf16>(W.p, (int64_t)W.n, seed, 0.02f, 0.f, s);
  fill_normal<float>(X.p, (int64_t)X.n, seed + 1, 2.f, 0.3f, s);
  fill_normal<float>(NW.p, (int64_t)NW.n, seed + 2, 0.2f, 1.f, s);
  MP_CUDA(cudaMemsetAsync(Y.p, 0xff, Y.bytes(), s));
  MP_CUDA(cudaMemsetAsync(H.p, 0xff, H.bytes(), s));
  const float eps = 1e-5f;
  auto run = [&](const bf16 *w) {
    if (fused) {
      if (swiglu_epi)
        return matmul_norm_swiglu(g, w, X.p, NW.p, eps, n, in, F, XB.p, GU.p, H.p, F, GEMM_GEMV);
      return matmul_norm<float>(g, w, X.p, NW.p, eps, n, in, out, XB.p, Y.p, out, false,
                                GEMM_GEMV);
    }
    rmsnorm<bf16>(X.p, NW.p, n, in, eps, XB.p, s);
    if (!swiglu_epi) return matmul<float>(g, w, XB.p, in, n, in, out, Y.p, out, false, GEMM_GEMV);
    const int r = matmul<bf16>(g, w, XB.p, in, n, in, out, GU.p, out, false, GEMM_GEMV);
    swiglu<bf16, bf16>(GU.p, GU.p + F, n, F, out, H.p, F, s);
    return r;
  };
  run(W.p);
  MP_CUDA(cudaStreamSynchronize(s));
  // Reference: xb = bf16(x·r·w) with r from a double sum, then float64 dot products.
  std::vector<float> xh = to_host_vec(X.p, X.n), nw = to_host_vec(NW.p, NW.n);
  std::vector<double> xb((size_t)n * in);
  for (int i = 0; i < n; i++) {
    double ss = 0;
    for (int c = 0; c < in; c++) ss += (double)xh[(size_t)i * in + c] * xh[(size_t)i * in + c];
    const float r = (float)(1.0 / std::sqrt(ss / in + eps));
    for (int c = 0; c < in; c++)
      xb[(size_t)i * in + c] = bf(__float2bfloat16_rn(xh[(size_t)i * in + c] * r * nw[c]));
  }
  std::vector<float> y;
  std::vector<bf16> h;
  if (swiglu_epi) h = to_host_vec(H.p, H.n);
  else y = to_host_vec(Y.p, Y.n);
  size_t nan = 0;
  for (float v : y) nan += !std::isfinite(v);
  for (bf16 v : h) nan += !std::isfinite(bf(v));
  uint64_t st = seed;
  double num = 0, den = 0;
  std::vector<bf16> wrow((size_t)in);
  auto dot = [&](int i, int o) {
    MP_CUDA(cudaMemcpy(wrow.data(), W.p + (size_t)o * in, (size_t)in * 2, cudaMemcpyDeviceToHost));
    double a = 0;
    for (int c = 0; c < in; c++) a += bf(wrow[c]) * xb[(size_t)i * in + c];
    return a;
  };
  for (int k = 0; k < 64; k++) {
    const int i = (int)(lcg(st) % n);
    double ref, got;
    if (swiglu_epi) {
      const int o = (int)(lcg(st) % F);
      const double gv = dot(i, o), uv = dot(i, F + o);
      ref = gv / (1 + std::exp(-gv)) * uv;
      got = bf(h[(size_t)i * F + o]);
    } else {
      const int o = (int)(lcg(st) % out);
      ref = dot(i, o);
      got = y[(size_t)i * out + o];
    }
    num += (got - ref) * (got - ref), den += ref * ref;
  }
  const double err = nan ? 1e9 : std::sqrt(num / std::max(den, 1e-30));
  const double ms = time_ms(s, [&](int r) { run(W.p + (size_t)(r % copies) * wn); }, 3, 20);
  const double bytes = (double)wn * 2 + (double)n * in * 4 +
                       (swiglu_epi ? (double)n * F * 2 : (double)n * out * 4);
  const double gbs = bytes / (ms * 1e6);
  char shape[96], note[96];
  std::snprintf(shape, sizeof shape, "n=%d %dx%d%s", n, out, in, swiglu_epi ? " +swiglu" : "");
  std::snprintf(note, sizeof note, "%.0f%% of 4.3 TB/s%s", 100.0 * gbs / kHbmGBs,
                nan ? " NaN/unwritten outputs" : "");
  emit({swiglu_epi ? "gemv2.nsw" : "gemv2.norm", fused ? "fused" : "separate", shape, ms, gbs,
        "GB/s", g_bw, err, swiglu_epi ? 1.5e-2 : 1e-2, note});
}

// The split count of GPU run 2 (4 blocks per SM, >= 256 keys per split), for comparison.
int old_decode_splits(int B, int Hkv, int max_len) {
  int sms = 0;
  MP_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int pairs = std::max(1, B * Hkv);
  int splits = (4 * sms + pairs - 1) / pairs;
  splits = std::min(splits, std::max(1, (max_len + 255) / 256));
  return std::max(1, std::min(splits, 1024));
}

// dec2 branch: the attention half of a decode layer at B = 1 on the 8B shape, timed as one
// chain of kernels — norm+QKV GEMV -> rope + kv_append -> decode attention -> O GEMV (+=
// residual) — in the original form (form 0: rope, kv_append, attention_decode + combine) and
// the dec2 form (form 1: rope_kv_append and attention_decode2, with PDL between all of
// them). That is where PDL and the removed launches show. Parity: the residual after one
// chain from the same start, form 1 against form 0 (relative L2; f32 rounding of the merge
// only, then bf16 attention outputs, so ~1e-4 at most).
void bench_dec2_chain(cudaStream_t s, Gemm &g, int T, int form, std::vector<float> *ref) {
  const int dim = 4096, H = 32, Hkv = 8, d = 128, QKV = (H + 2 * Hkv) * d;
  const size_t wq = (size_t)QKV * dim, wo = (size_t)dim * H * d;
  const int copies = 2;
  DevBuf<bf16> Wq(wq * copies), Wo(wo * copies), XB(dim), QK(QKV), ATT((size_t)H * d);
  DevBuf<bf16> Kc((size_t)T * Hkv * d), Vc((size_t)T * Hkv * d), Stage((size_t)2 * Hkv * d);
  DevBuf<float> X(dim), X0(dim), NW(dim);
  fill_normal<bf16>(Wq.p, (int64_t)Wq.n, 301, 0.02f, 0.f, s);
  fill_normal<bf16>(Wo.p, (int64_t)Wo.n, 302, 0.02f, 0.f, s);
  fill_normal<bf16>(Kc.p, (int64_t)Kc.n, 303, 1.f, 0.f, s);
  fill_normal<bf16>(Vc.p, (int64_t)Vc.n, 304, 1.f, 0.f, s);
  fill_normal<float>(X0.p, dim, 305, 1.f, 0.f, s);
  fill_normal<float>(NW.p, dim, 306, 0.1f, 1.f, s);
  mp_rope_params rp{500000.f, MP_ROPE_HALF, MP_ROPE_SCALING_LLAMA3, 8.f, 1.f, 4.f, 8192};
  std::vector<double> f = rope_inv_freq(rp, d);
  DevBuf<double> invf = upload(f.data(), f.size(), s);
  const int32_t hpos = T - 1;
  DevBuf<int32_t> pos = upload(&hpos, 1, s);
  SeqKV sq{Kc.p, Vc.p, (int64_t)Hkv * d, (int64_t)d, T};
  DevBuf<SeqKV> seq = upload(&sq, 1, s);
  const int splits = decode_splits(1, Hkv, T);
  DevBuf<float> ws(std::max<size_t>(1, decode_workspace_floats(1, H, d, splits)));
  DevBuf<unsigned> cnt(Hkv);
  MP_CUDA(cudaMemsetAsync(cnt.p, 0, cnt.bytes(), s));
  const bool pdl = decode2_pdl();
  auto chain = [&](int r) {
    const bf16 *wqr = Wq.p + (size_t)(r % copies) * wq, *wor = Wo.p + (size_t)(r % copies) * wo;
    matmul_norm<bf16>(g, wqr, X.p, NW.p, 1e-5f, 1, dim, QKV, XB.p, QK.p, QKV, false, GEMM_GEMV);
    if (form == 1) {
      rope_kv_append(QK.p, 1, H, Hkv, d, QKV, pos.p, invf.p, MP_ROPE_HALF, seq.p, Stage.p,
                     Stage.p + Hkv * d, pdl, s);
      attention_decode2<bf16, bf16>(QK.p, QKV, seq.p, 1, H, Hkv, d, splits, ATT.p, nullptr, ws.p,
                                    cnt.p, pdl, s);
    } else {
      rope<bf16>(QK.p, 1, H + Hkv, d, QKV, pos.p, invf.p, MP_ROPE_HALF, s);
      kv_append(QK.p, QKV, H * d, (H + Hkv) * d, seq.p, 1, Hkv, d, Stage.p, Stage.p + Hkv * d, s);
      attention_decode<bf16, bf16>(QK.p, QKV, seq.p, 1, H, Hkv, d, splits, ATT.p, nullptr, ws.p, s);
    }
    matmul<float>(g, wor, ATT.p, H * d, 1, H * d, dim, X.p, dim, true, GEMM_GEMV);
  };
  MP_CUDA(cudaMemcpyAsync(X.p, X0.p, X.bytes(), cudaMemcpyDeviceToDevice, s));
  chain(0);
  MP_CUDA(cudaStreamSynchronize(s));
  std::vector<float> x = to_host_vec(X.p, X.n);
  double err = -1;
  size_t nan = 0;
  for (float v : x) nan += !std::isfinite(v);
  if (ref && ref->empty()) *ref = x;
  else if (ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < x.size(); i++) {
      const double dd = (double)x[i] - (*ref)[i];
      num += dd * dd, den += (double)(*ref)[i] * (*ref)[i];
    }
    err = std::sqrt(num / std::max(den, 1e-30));
  }
  if (nan) err = 1e9;
  const double ms = time_ms(s, chain, 3, 20);
  std::vector<unsigned> c = to_host_vec(cnt.p, cnt.n);
  size_t stale = 0;
  for (unsigned v : c) stale += v != 0;
  const double bytes = (double)wq * 2 + (double)wo * 2 + (double)T * Hkv * d * 4;
  char shape[96], note[128];
  std::snprintf(shape, sizeof shape, "B=1 T=%d qkv+rope+app+attn+o", T);
  std::snprintf(note, sizeof note, "splits %d, pdl %d, %.0f%% of 4.3 TB/s%s", splits,
                form == 1 && pdl ? 1 : 0, 100.0 * bytes / (ms * 1e6) / kHbmGBs,
                stale ? " COUNTERS NOT RESET" : "");
  emit({"dec2.chain", form == 1 ? "dec2" : "old", shape, ms, bytes / (ms * 1e6), "GB/s", g_bw,
        stale ? 1e9 : err, 1e-3, note});
}

// Rope + kv_append (two kernels) against rope_kv_append (one), B = 1 and 4, 8B shape, both
// pair conventions; parity: the rotated qkv rows and the appended cache rows must be
// bit-identical.
void bench_rope_append(cudaStream_t s, int B, int style = MP_ROPE_HALF) {
  const int H = 32, Hkv = 8, d = 128, QKV = (H + 2 * Hkv) * d, T = 64;
  DevBuf<bf16> Q0((size_t)B * QKV), Q1((size_t)B * QKV), Q2((size_t)B * QKV);
  DevBuf<bf16> K1((size_t)B * T * Hkv * d), V1(K1.n), K2(K1.n), V2(K1.n);
  DevBuf<bf16> S1((size_t)B * 2 * Hkv * d), S2(S1.n);
  fill_normal<bf16>(Q0.p, (int64_t)Q0.n, 401, 1.f, 0.f, s);
  MP_CUDA(cudaMemsetAsync(K1.p, 0, K1.bytes(), s));
  MP_CUDA(cudaMemsetAsync(V1.p, 0, V1.bytes(), s));
  MP_CUDA(cudaMemsetAsync(K2.p, 0, K2.bytes(), s));
  MP_CUDA(cudaMemsetAsync(V2.p, 0, V2.bytes(), s));
  mp_rope_params rp{500000.f, style, MP_ROPE_SCALING_LLAMA3, 8.f, 1.f, 4.f, 8192};
  std::vector<double> f = rope_inv_freq(rp, d);
  DevBuf<double> invf = upload(f.data(), f.size(), s);
  std::vector<int32_t> hpos((size_t)B);
  std::vector<SeqKV> q1((size_t)B), q2((size_t)B);
  for (int b = 0; b < B; b++) {
    const int len = T - 5 * b;
    hpos[(size_t)b] = 8000 + 977 * b;
    const size_t o = (size_t)b * T * Hkv * d;
    q1[(size_t)b] = SeqKV{K1.p + o, V1.p + o, (int64_t)Hkv * d, (int64_t)d, len};
    q2[(size_t)b] = SeqKV{K2.p + o, V2.p + o, (int64_t)Hkv * d, (int64_t)d, len};
  }
  DevBuf<int32_t> pos = upload(hpos.data(), hpos.size(), s);
  DevBuf<SeqKV> sq1 = upload(q1.data(), q1.size(), s), sq2 = upload(q2.data(), q2.size(), s);
  const bool pdl = decode2_pdl();
  auto old_f = [&] {
    rope<bf16>(Q1.p, B, H + Hkv, d, QKV, pos.p, invf.p, style, s);
    kv_append(Q1.p, QKV, H * d, (H + Hkv) * d, sq1.p, B, Hkv, d, S1.p, S1.p + (size_t)B * Hkv * d, s);
  };
  auto new_f = [&] {
    rope_kv_append(Q2.p, B, H, Hkv, d, QKV, pos.p, invf.p, style, sq2.p, S2.p,
                   S2.p + (size_t)B * Hkv * d, pdl, s);
  };
  MP_CUDA(cudaMemcpyAsync(Q1.p, Q0.p, Q0.bytes(), cudaMemcpyDeviceToDevice, s));
  MP_CUDA(cudaMemcpyAsync(Q2.p, Q0.p, Q0.bytes(), cudaMemcpyDeviceToDevice, s));
  old_f();
  new_f();
  MP_CUDA(cudaStreamSynchronize(s));
  size_t diff = 0, total = 0;
  auto cmp = [&](const DevBuf<bf16> &a, const DevBuf<bf16> &b) {
    std::vector<bf16> x = to_host_vec(a.p, a.n), y = to_host_vec(b.p, b.n);
    total += x.size();
    diff += std::memcmp(x.data(), y.data(), x.size() * sizeof(bf16)) != 0;
  };
  cmp(Q1, Q2), cmp(K1, K2), cmp(V1, V2), cmp(S1, S2);
  char shape[64];
  std::snprintf(shape, sizeof shape, "B=%d H32/8 d128 %s", B,
                style == MP_ROPE_HALF ? "half" : "interleaved");
  // Timed from the same start every time (rope rotates in place: values drift, time does not).
  const double ms_old = time_ms(s, [&](int) { old_f(); });
  const double ms_new = time_ms(s, [&](int) { new_f(); });
  emit({"rope_app", "old", shape, ms_old, 0, "GB/s", 0, -1, 0, "rope + kv_append"});
  emit({"rope_app", "dec2", shape, ms_new, 0, "GB/s", 0, diff ? 1.0 : 0.0, 0.0,
        diff ? "qkv/cache/staging differ from rope + kv_append" : "bit-identical to rope + kv_append"});
}

// small = true: the parity shapes (also in --quick); false: the timed 8B shapes.
void gemv_branch_sections(cudaStream_t s, Gemm &g, bool small) {
  if (small) return section("gemv2.small", [&] {
    // Odd shapes and tails: partial row quads, k not a multiple of 256, n > 4 (x-row groups).
    bench_gemv_plain(s, g, 1001, 520, 1, GEMM_GEMV, 61);
    bench_gemv_plain(s, g, 1000, 512, 3, GEMM_GEMV, 62);
    bench_gemv_plain(s, g, 37, 136, 4, GEMM_GEMV, 63);
    bench_gemv_plain(s, g, 300, 4096, 7, GEMM_GEMV, 64);
    bench_gemv_fused(s, g, 1002, 520, 2, false, true, 65);
    bench_gemv_fused(s, g, 2 * 501, 264, 3, true, true, 66);
    bench_decode(s, 1, 700, 32, 8, 128);
    bench_decode(s, 2, 4097, 8, 2, 128);
    // dec2 form (folded merge): odd lengths, batch, G 1..8, d 8..256
    bench_decode(s, 1, 700, 32, 8, 128, 0, 1);
    bench_decode(s, 2, 4097, 8, 2, 128, 0, 1);
    bench_decode(s, 3, 131, 4, 2, 64, 0, 1);
    bench_decode(s, 2, 100, 8, 4, 8, 0, 1);
    bench_decode(s, 2, 3000, 8, 1, 256, 0, 1);
    bench_decode(s, 3, 140, 8, 8, 128, 0, 1);
  });
  section("gemv2", [&] {
    const int shapes[5][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336},
                              {128256, 4096}};
    for (int n : {1, 4})
      for (auto &sh : shapes)
        for (int v : {GEMM_SKINNY, GEMM_GEMV}) bench_gemv_plain(s, g, sh[0], sh[1], n, v, 70 + n);
  });
  section("gemv2.fused", [&] {
    for (int n : {1, 4})
      for (bool fused : {false, true}) {
        bench_gemv_fused(s, g, 6144, 4096, n, false, fused, 80 + n);    // norm + QKV
        bench_gemv_fused(s, g, 28672, 4096, n, true, fused, 90 + n);    // norm + gate/up + swiglu
        bench_gemv_fused(s, g, 128256, 4096, n, false, fused, 95 + n);  // final norm + LM head
      }
  });
  section("decode2", [&] {
    for (int T : {8192, 32768}) {
      bench_decode(s, 1, T, 32, 8, 128, old_decode_splits(1, 8, T));  // run 2's split count
      bench_decode(s, 1, T, 32, 8, 128);                             // this branch's
    }
    bench_decode(s, 4, 8192, 32, 8, 128);
  });
  // dec2 branch: old vs new decode-step kernels (form 0 / form 1; $MP_DECODE_PF_MB and
  // $MP_DECODE2_PDL apply to form 1).
  // One decode-step attention shape (8B, 8K keys, batch 1, the engine's form), for
  // profiling it alone: ncu -k regex:decode_attn build/opbench --only dec8k.
  section("dec8k", [&] { bench_decode(s, 1, 8192, 32, 8, 128, 0, 1); });
  section("dec2", [&] {
    for (int T : {700, 8192, 32768})
      for (int form : {0, 1}) bench_decode(s, 1, T, 32, 8, 128, 0, form);
    for (int form : {0, 1}) bench_decode(s, 4, 8192, 32, 8, 128, 0, form);
    bench_rope_append(s, 1);
    bench_rope_append(s, 4);
    bench_rope_append(s, 4, MP_ROPE_INTERLEAVED);
    for (int T : {8192, 32768}) {
      std::vector<float> ref;
      for (int form : {0, 1}) bench_dec2_chain(s, g, T, form, &ref);
    }
  });
}

}  // namespace

int main(int argc, char **argv) {
  // opbench [--quick] [--budget SECONDS] [--only SECTIONS] [out.jsonl]: --quick runs small
  // shapes only (for compute-sanitizer); --budget bounds the full run (sections past it are
  // skipped); --only a,b runs just the named sections.
  bool quick = false;
  std::string path;
  for (int i = 1; i < argc; i++) {
    if (std::string(argv[i]) == "--quick") quick = true;
    else if (std::string(argv[i]) == "--budget" && i + 1 < argc) g_budget = std::atof(argv[++i]);
    else if (std::string(argv[i]) == "--only" && i + 1 < argc) g_only = argv[++i];
    else path = argv[i];
  }
  g_start = std::chrono::steady_clock::now();
  const char *out_env = std::getenv("OUT");
  if (path.empty() && out_env && !quick) path = std::string(out_env) + "/opbench.jsonl";
  if (!path.empty()) g_json = std::fopen(path.c_str(), "w");
  if (device_count() <= 0) {
    std::printf("opbench: no CUDA device\n");
    return 2;
  }
  MP_CUDA(cudaSetDevice(0));
  cudaDeviceProp prop;
  MP_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, %.1f GiB, L2 %.0f MB, cc %d.%d\n", prop.name,
              prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, prop.l2CacheSize / 1e6,
              prop.major, prop.minor);
  Stream s;
  Gemm g(s);
  const auto t0 = g_start;

  // Small, odd shapes first (parity where partial tiles, odd lengths and tails matter;
  // also the --quick run under compute-sanitizer), then the 8B shapes for timing.
  section("small", [&] {
    bench_matmul(s, g, 1000, 512, 3, GEMM_SKINNY, "", 1);
    bench_matmul(s, g, 1000, 512, 13, GEMM_SKINNY, "", 2);
    bench_matmul(s, g, 100, 172, 5, GEMM_SIMPLE, "", 3);
    bench_matmul(s, g, 1000, 512, 40, GEMM_AUTO, "", 4);
    bench_flash(s, 200, 0, 4, 2, 128, ATTN_FLASH);
    bench_flash(s, 130, 70, 4, 2, 64, ATTN_FLASH);
    bench_flash(s, 50, 20, 4, 2, 8, ATTN_GENERIC);
    bench_decode(s, 3, 700, 8, 2, 128);   // split lengths not a multiple of 32 keys
    bench_decode(s, 3, 131, 4, 2, 64);    // the engine test's shape (hung in run 1)
    bench_decode(s, 2, 100, 8, 4, 8);
    bench_lsh(s, 300, 128, 10, 150);
    bench_sample(s, 3, 5000);
  });
  gemv_branch_sections(s, g, true);
  // Tuned flash kernels (variants 5-7) on odd shapes: partial tiles, G = 1, 2, 4, 8 (heads
  // per block 1, 2, 4, 4), d = 64 and 128, chunks that start mid-tile.
  section("small-fa2", [&] {
    for (int v : {ATTN_FLASH2, ATTN_FLASH2_W8, ATTN_FLASH2_BC32}) {
      bench_flash(s, 200, 0, 4, 2, 128, v);
      bench_flash(s, 130, 70, 4, 2, 64, v);
      bench_flash(s, 77, 0, 4, 4, 128, v);
      bench_flash(s, 300, 41, 16, 2, 128, v);
      bench_flash(s, 1, 999, 8, 2, 128, v);
      bench_flash(s, 100, 3, 6, 2, 64, v);
    }
  });
  if (quick) {
    std::printf("opbench --quick: %d failures\n", g_failures);
    return g_failures ? 1 : 0;
  }
  section("copy", [&] { bench_copy(s); });
  gemv_branch_sections(s, g, false);
  section("pcie", [&] { bench_pinned(s); });
  // Decode GEMVs of the 8B shape (fused QKV, O, fused gate/up, down, LM head): the skinny
  // kernel (warps per block chosen per shape) against cuBLAS, batch 1 and 8.
  section("gemv", [&] {
    const int shapes[5][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336},
                              {128256, 4096}};
    for (int n : {1, 8})
      for (auto &sh : shapes)
        for (int v : {GEMM_SKINNY, GEMM_CUBLAS})
          bench_matmul(s, g, sh[0], sh[1], n, v, "", 10 + n + v);
    bench_matmul(s, g, 172, 64, 5, GEMM_SIMPLE, "simple", 40);  // stories260K-like, odd shape
    bench_matmul(s, g, 64, 172, 5, GEMM_AUTO, "auto", 41);
  });
  // Prefill-sized GEMMs first: they set the tensor-core ceiling.
  section("gemm", [&] {
    bench_matmul(s, g, 4096, 4096, 8192, GEMM_CUBLAS, "cublas", 1);
    bench_matmul(s, g, 6144, 4096, 8192, GEMM_CUBLAS, "cublas", 2);
    bench_matmul(s, g, 28672, 4096, 8192, GEMM_CUBLAS, "cublas", 3);
    bench_matmul(s, g, 4096, 14336, 8192, GEMM_CUBLAS, "cublas", 4);
  });
#if __has_include(<cublasLt.h>)
  // cuBLASLt's algorithms for the prefill GEMMs against cublasGemmEx's choice.
  section("gemmalgo", [&] {
    bench_gemm_algos(s, g, 28672, 4096, 8192, false);  // gate/up
    bench_gemm_algos(s, g, 4096, 14336, 8192, true);   // down (+ residual)
    bench_gemm_algos(s, g, 6144, 4096, 8192, false);   // qkv
    bench_gemm_algos(s, g, 4096, 4096, 8192, true);    // o (+ residual)
  });
#endif
  section("prefill", [&] {
    bench_flash(s, 1000, 0, 32, 8, 128, ATTN_FLASH);   // partial tiles
    bench_flash(s, 777, 0, 8, 4, 64, ATTN_FLASH);      // d = 64, G = 2
    bench_flash(s, 300, 45, 8, 4, 8, ATTN_GENERIC);    // d = 8 (stories260K)
    bench_flash(s, 8192, 0, 32, 8, 128, ATTN_FLASH);
    bench_flash(s, 8192, 24576, 32, 8, 128, ATTN_FLASH);
    bench_flash(s, 8192, 90112, 32, 8, 128, ATTN_FLASH);
  });
  // Old flash kernel (variant 1) against the tuned ones (5: 4 warps × 32 rows, 64-key tiles;
  // 6: 8 warps; 7: 32-key tiles) on the 8B shape's 8192-query chunks.
  section("prefill-fa2", [&] {
    bench_flash(s, 1000, 0, 32, 8, 128, ATTN_FLASH2);  // partial tiles
    bench_flash(s, 777, 0, 8, 4, 64, ATTN_FLASH2);     // d = 64, G = 2
    for (int pos0 : {0, 24576, 90112})
      for (int v : {ATTN_FLASH, ATTN_FLASH2, ATTN_FLASH2_W8, ATTN_FLASH2_BC32})
        bench_flash(s, 8192, pos0, 32, 8, 128, v);
  });
  // Hopper wgmma attention (attention_prefill_sm90a.cu, variant 4): odd shapes for parity
  // (partial tiles, unaligned chunk starts, G = 2, 4 and 8, a few queries after many keys, a
  // single key tile) for every configuration, then the 8B shape's 8192-query chunks at 0, 24K
  // and 88K keys before them: the default ("wgmma": softmax under its own P·V, Q in
  // registers), the kernel before it ("wgmma-pp": consumers in turn; "-np" not ordered, "-pp3"
  // 3 K/V stages) and the overlap with Q from shared memory ("wgmma-sq"). A variant that cannot
  // run falls back (the row's variant column says which ran).
  section("wgmma", [&] {
    for (int v : {(int)ATTN_WGMMA, WGMMA_CFG + WGMMA_PINGPONG, WGMMA_CFG + WGMMA_NO_PINGPONG,
                  WGMMA_CFG + WGMMA_PINGPONG_S3, WGMMA_CFG + WGMMA_OVERLAP_SMEM_Q,
                  WGMMA_CFG + WGMMA_CP_ASYNC}) {
      bench_flash(s, 200, 0, 4, 2, 128, v);
      bench_flash(s, 1000, 0, 32, 8, 128, v);
      bench_flash(s, 777, 13, 8, 4, 128, v);
      bench_flash(s, 5, 995, 16, 2, 128, v);
      bench_flash(s, 300, 4000, 8, 2, 128, v);
      bench_flash(s, 64, 0, 8, 1, 128, v);  // one key tile: no overlapped slot
      // the engine's head-major K/V (the default's tensor maps put tokens in dimension 1)
      bench_flash(s, 777, 13, 8, 4, 128, v, true);
      bench_flash(s, 300, 4000, 8, 2, 128, v, true);
    }
    // the key-norm bound: first-tile maxima kept (P up to 2^6 with K*4), and K*8 beyond it
    for (bool hm : {false, true}) {
      bench_flash(s, 1000, 0, 32, 8, 128, ATTN_WGMMA, hm, true);
      bench_flash(s, 777, 13, 8, 4, 128, ATTN_WGMMA, hm, true);
      bench_flash(s, 300, 4000, 8, 2, 128, ATTN_WGMMA, hm, true, 4.f);
      bench_flash(s, 300, 4000, 8, 2, 128, ATTN_WGMMA, hm, true, 8.f);
      bench_flash(s, 64, 0, 8, 1, 128, ATTN_WGMMA, hm, true);
      bench_flash(s, 77, 0, 8, 1, 128, ATTN_WGMMA, hm, true);  // an odd number of key rows
    }
    for (int pos0 : {0, 24576, 90112}) bench_flash(s, 8192, pos0, 32, 8, 128, ATTN_WGMMA, true, true);
    for (int pos0 : {0, 24576, 90112})
      for (int v : {(int)ATTN_FLASH, (int)ATTN_WGMMA, WGMMA_CFG + WGMMA_PINGPONG,
                    WGMMA_CFG + WGMMA_CP_ASYNC})
        bench_flash(s, 8192, pos0, 32, 8, 128, v);
  });
  // The default and the kernel before it over a whole 96K prompt's chunks, several layers back
  // to back (the power cap's clock), alternating twice to see drift.
  section("wgmma-hm", [&] {
    for (int v : {(int)ATTN_WGMMA, WGMMA_CFG + WGMMA_CP_ASYNC})
      bench_flash(s, 8192, 90112, 32, 8, 128, v, true);
  });
  section("wgmma96k", [&] {
    for (int rep = 0; rep < 2; rep++)
      for (bool bound : {false, true}) bench_prefill_layers(s, ATTN_WGMMA, 8, bound);
  });
  section("decode", [&] {
    for (int B : {1, 8})
      for (int T : {8192, 32768, 98304}) bench_decode(s, B, T, 32, 8, 128);
    bench_decode(s, 4, 1000, 32, 8, 128);  // a window-sized split-decode batch
    bench_decode(s, 3, 300, 8, 4, 8);
  });
  section("lsh", [&] {
    bench_lsh(s, 8192, 128, 10, 150);
    bench_lsh(s, 98304, 128, 10, 150);
    bench_lsh(s, 1000, 64, 16, 7);
    bench_lsh(s, 32, 128, 10, 150);  // a decode step's queries (lsh_hash_few_kernel)
    bench_lsh(s, 64, 64, 16, 7);
  });
  section("sample", [&] { bench_sample(s, 16, 128256); });
  // a layer's first LSH index on the GPU (build_first): one KV head of a 96K build (two
  // blocks) at K10L150, the largest K the sort takes, few buckets, a tiny head
  section("lshfirst", [&] {
    bench_lsh_first(s, 98304, 128, 10, 150);
    bench_lsh_first(s, 70000, 128, 12, 16);
    bench_lsh_first(s, 5000, 128, 3, 8);
    bench_lsh_first(s, 300, 16, 10, 4);
  });

  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\n==== opbench summary (%.0f s, %d failures; ceilings: copy %.0f GB/s, cuBLAS %.0f "
              "TFLOP/s) ====\n",
              secs, g_failures, g_bw, g_tflops);
  for (auto &l : g_table) std::printf("%s\n", l.c_str());
  if (g_json) std::fclose(g_json);
  return g_failures ? 1 : 0;
}
