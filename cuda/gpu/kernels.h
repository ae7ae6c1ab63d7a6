// kernels.h — the device-pointer launchers of the CUDA backend (included from .cu files).
//
// Every launcher takes device pointers and a cudaStream_t, enqueues its kernels, checks the
// launch, and returns without synchronising. Shapes are written outermost first; strides
// are in elements. Activations are bf16 (matrix inputs) or f32 (residual stream, logits,
// partial attention outputs); weights are bf16; accumulation is f32 everywhere.
//
// One file per concept implements each group below (embedding.cu, rmsnorm.cu, rope.cu,
// matmul.cu, attention_prefill.cu, attention_decode.cu, merge.cu, swiglu.cu, sampling.cu,
// lsh.cu, random.cu); each ends with the host-pointer op of gpu.h that the parity tests
// call, where it has one.
#pragma once

#include <vector>

#include "gpu/cuda_util.h"

namespace mp::gpu {

// ------------------------------------------------------------
// embedding.cu

// out[i][dim] = f32(table[tokens[i]]); table [vocab][dim] in `dtype` (F32/F16/BF16).
// A token outside [0, vocab) gives a zero row.
void embedding(int32_t dtype, const void *table, int vocab, int dim, const int32_t *tokens,
               int n, float *out, cudaStream_t s);

// ------------------------------------------------------------
// rmsnorm.cu

// out[i][:] = x[i][:] / sqrt(mean(x[i]²) + eps) * w; OutT = float or bf16.
template <class OutT>
void rmsnorm(const float *x, const float *w, int n, int dim, float eps, OutT *out,
             cudaStream_t s);

// ------------------------------------------------------------
// rope.cu

// Inverse frequencies [head_dim/2] (double, on the host) for a RoPE configuration, Llama-3
// scaling included.
std::vector<double> rope_inv_freq(const mp_rope_params &p, int head_dim);

// Rotates x in place: token i (row i, `token_stride` elements apart) has `heads` heads of
// head_dim values at position positions[i]; style MP_ROPE_INTERLEAVED or MP_ROPE_HALF.
// T = float or bf16 (angles in double, rotation in f32); head_dim <= 256.
template <class T>
void rope(T *x, int n, int heads, int head_dim, int64_t token_stride, const int32_t *positions,
          const double *inv_freq, int style, cudaStream_t s);

// Decode step: rope<bf16> of the q and k heads of each row of the fused QKV output qkv
// [n][row_stride] (H query heads, then Hkv key heads, then Hkv value heads) followed by
// kv_append of its new K/V rows (koff = H·d, voff = (H + Hkv)·d), in one kernel with the
// results of the two (same arithmetic). pdl: launched with programmatic dependent launch;
// positions and seqs are then read before the wait for the previous kernel, so they must
// not be written by it (the engine uploads them before the step). head_dim % 8 == 0, <= 256.
struct SeqKV;
void rope_kv_append(bf16 *qkv, int n, int H, int Hkv, int head_dim, int64_t row_stride,
                    const int32_t *positions, const double *inv_freq, int style,
                    const SeqKV *seqs, bf16 *stage_k, bf16 *stage_v, bool pdl, cudaStream_t s);

// ------------------------------------------------------------
// matmul.cu

// A GEMM context bound to one stream: a cuBLAS handle and workspace where the build has
// cuBLAS, nothing otherwise. Not thread-safe; one per stream.
struct GemmTuned;  // matmul.cu: cuBLASLt algorithms chosen by matmul_tune, per shape

struct Gemm {
  explicit Gemm(cudaStream_t s);
  ~Gemm();
  Gemm(const Gemm &) = delete;
  Gemm &operator=(const Gemm &) = delete;
  cudaStream_t stream;
  void *handle = nullptr;    // cublasHandle_t
  void *workspace = nullptr; // device workspace for cuBLAS
  size_t workspace_bytes = 0;
  void *lt = nullptr;           // cublasLtHandle_t (made by the first matmul_tune)
  GemmTuned *tuned = nullptr;   // written only by matmul_tune
};

enum GemmVariant : int {
  GEMM_AUTO = 0,
  GEMM_CUBLAS = 1,  // cuBLAS, bf16 inputs, f32 compute (falls back when absent)
  GEMM_SKINNY = 2,  // mma.sync kernel streaming W once per 16 rows of x (decode GEMV)
  GEMM_SIMPLE = 3,  // one warp per output, any shape and alignment
  GEMM_GEMV = 4,    // CUDA-core GEMV built for bytes in flight (decode, n <= 4)
};

// y[n][out] (+)= x[n][in] · W[out][in]^T. x rows are ldx apart, y rows ldy apart.
// accumulate: y += (only for OutT = float). Returns the variant that ran.
template <class OutT>
int matmul(Gemm &g, const bf16 *W, const bf16 *x, int64_t ldx, int n, int in, int out, OutT *y,
           int64_t ldy, bool accumulate, int variant = GEMM_AUTO);

// Times cublasGemmEx's choice for this cuBLAS GEMM against every algorithm cuBLASLt's
// heuristic offers for the shape (on these buffers: y is overwritten, or added to with
// accumulate) and remembers the fastest when it is at least 2 % faster: matmul's cuBLAS
// calls with the same shape, strides, output type and accumulate then run it. Call before
// any concurrent use of g (the engine does at finalize); returns the speed-up (1 when
// cublasGemmEx stays, or without cuBLAS).
template <class OutT>
double matmul_tune(Gemm &g, const bf16 *W, const bf16 *x, int64_t ldx, int n, int in, int out,
                   OutT *y, int64_t ldy, bool accumulate);

// y[n][out] (+)= rmsnorm(x)[n][in] · W[out][in]^T with x f32 [n][in] (contiguous rows) and
// rmsnorm as rmsnorm<bf16>(x, norm_w, n, in, eps). With the GEMV variant (decode) the norm
// is computed inside the GEMV kernel; otherwise rmsnorm writes xb [n][in] (bf16 scratch)
// and matmul reads it. Returns the variant that ran.
template <class OutT>
int matmul_norm(Gemm &g, const bf16 *W, const float *x, const float *norm_w, float eps, int n,
                int in, int out, bf16 *xb, OutT *y, int64_t ldy, bool accumulate,
                int variant = GEMM_AUTO);

// h[n][F] (rows ldh apart) = swiglu(gate, up) of rmsnorm(x) · Wgu^T, Wgu = [gate; up]
// ([2F][in]), gate and up rounded to bf16 as the unfused path stores them. With the GEMV
// variant it is one kernel; otherwise rmsnorm -> xb, matmul -> gu [n][2F] (bf16 scratch),
// swiglu -> h. Returns the GEMM variant that ran.
int matmul_norm_swiglu(Gemm &g, const bf16 *Wgu, const float *x, const float *norm_w, float eps,
                       int n, int in, int F, bf16 *xb, bf16 *gu, bf16 *h, int64_t ldh,
                       int variant = GEMM_AUTO);

// ------------------------------------------------------------
// attention_prefill.cu

// Keys and values of one sequence: K[t][h][:] = k + t*stride_t + h*stride_h (same for v).
struct KVView {
  const bf16 *k;
  const bf16 *v;
  int64_t stride_t;
  int64_t stride_h;
  // Optional (prefill): kmax[h] >= the norm of every key row of KV head h the call attends.
  // The Hopper kernel then bounds each query row's scores by |q|·kmax (Cauchy-Schwarz) and,
  // for a warp whose 16 rows all have that bound within 2^48 of their first key tile's
  // maximum, keeps those maxima for the rest of the row instead of the running ones: exact
  // (softmax is shift-invariant), and 18% faster under the power cap
  // (attention_prefill_sm90a.cu; bench/gpu/NOTES.md, round 11). Other kernels ignore it.
  const float *kmax = nullptr;
};

enum AttnVariant : int {
  ATTN_AUTO = 0,
  ATTN_FLASH = 1,    // tensor cores, head_dim 64 or 128
  ATTN_DECODE = 2,   // split-K decode kernel (one query per sequence)
  ATTN_GENERIC = 3,  // any head_dim <= 256, f32 CUDA cores
  ATTN_WGMMA = 4,        // Hopper wgmma kernel (sm_90a build on an sm_90 device, head_dim 128)
  ATTN_FLASH2 = 5,       // tuned mma.sync flash: 32 rows per warp, 4 warps, GQA heads per block
  ATTN_FLASH2_W8 = 6,    // the same with 8 warps (256 rows per block, one block per SM)
  ATTN_FLASH2_BC32 = 7,  // the same with 32-key tiles (fewer registers)
};

// Causal GQA attention for n queries of one sequence: q[i][h][:] = q + i*q_stride + h*d,
// query i at position q_pos0 + i attends keys 0..min(q_pos0 + i, T - 1). Scale 1/sqrt(d).
// out[i][h][:] = out + i*out_stride + h*d; lse2[i*H + h] = log2 Σ exp(s/√d) (may be null).
// Returns the variant that ran.
template <class OutT>
int attention_prefill(const bf16 *q, int64_t q_stride, KVView kv, int n, int T, int H, int Hkv,
                      int d, int q_pos0, OutT *out, int64_t out_stride, float *lse2,
                      cudaStream_t s, int variant = ATTN_AUTO);

// ------------------------------------------------------------
// attention_prefill_sm90a.cu

// The same attention with the Hopper wgmma kernel (variant ATTN_WGMMA). Returns false, having
// launched nothing, where it is not available: not an sm_90 device, a build without sm_90a
// code, head_dim != 128, or strides/pointers not 16-byte aligned (8-byte for out).
// config (benchmarks): WGMMA_DEFAULT, or one of the variations below.
enum WgmmaConfig : int {
  WGMMA_DEFAULT = 0,       // TMA producer; each consumer's softmax under its own P·V, Q in registers
  WGMMA_NO_PINGPONG = 1,   // the kernel before the overlap, consumers not ordered
  WGMMA_PINGPONG = 2,      // the kernel before the overlap (the default until 2026-11-29)
  WGMMA_PINGPONG_S3 = 3,   // the same with 3 K/V stages (224 KB of shared memory)
  WGMMA_OVERLAP_SMEM_Q = 4,  // the default's overlap, Q·Kᵀ with Q from shared memory
  WGMMA_CP_ASYNC = 5,      // the default's consumers, tiles copied by 128 threads' cp.async
};
constexpr int WGMMA_DEFAULT_STAGES = 2;
template <class OutT>
bool attention_prefill_sm90a(const bf16 *q, int64_t q_stride, KVView kv, int n, int T, int H,
                             int Hkv, int d, int q_pos0, OutT *out, int64_t out_stride,
                             float *lse2, cudaStream_t s, int config = WGMMA_DEFAULT);

// ------------------------------------------------------------
// attention_decode.cu

// One decoding sequence's keys/values (device memory) and its current length.
struct SeqKV {
  const bf16 *k;
  const bf16 *v;
  int64_t stride_t;
  int64_t stride_h;
  int len;
};

// Split count for a batch: enough blocks to fill the GPU at `max_len` keys.
int decode_splits(int B, int Hkv, int max_len);
// f32 workspace the decode kernel needs for `splits`.
size_t decode_workspace_floats(int B, int H, int d, int splits);

// One query per sequence: q[b][h][:] = q + b·q_stride + h·d (QT = bf16), keys of sequence b in
// seqs[b] (device array). out[b][h][:] (OutT), lse2[b*H + h] (may be null). A sequence of
// length 0 gives a zero output and lse −∞. `splits` blocks per (sequence, KV head) each
// take a contiguous range of keys; a second kernel combines them by their LSEs.
template <class QT, class OutT>
void attention_decode(const QT *q, int64_t q_stride, const SeqKV *seqs, int B, int H, int Hkv, int d, int splits,
                      OutT *out, float *lse2, float *workspace, cudaStream_t s);

// Decode-step form (dec2 branch): the same attention, with
//   - counters (device, B·Hkv uint32, zero before the first call; every call leaves them
//     zero): with splits > 1 the last block of each (sequence, KV head) merges the splits
//     itself (no combine kernel). Null: the combine kernel runs as in attention_decode;
//   - an L2 prefetch of each block's first K/V rows (up to $MP_DECODE_PF_MB MiB for the
//     grid, default 32) issued before the wait for the previous kernel;
//   - pdl: launched with programmatic dependent launch (sm_90). seqs (and the K/V rows other
//     than len − 1) must not be written by the kernel just before it: they are read before
//     the wait.
// Results equal attention_decode's up to f32 rounding of the merge (same split order).
template <class QT, class OutT>
void attention_decode2(const QT *q, int64_t q_stride, const SeqKV *seqs, int B, int H, int Hkv, int d, int splits,
                       OutT *out, float *lse2, float *workspace, unsigned *counters, bool pdl,
                       cudaStream_t s);
// $MP_DECODE2 != "0": the engine's decode step uses attention_decode2 and rope_kv_append.
bool decode2_enabled();
// Programmatic dependent launch for those kernels (sm_90, CUDA >= 12.3; $MP_DECODE2_PDL=0: off).
bool decode2_pdl();

// ------------------------------------------------------------
// merge.cu

// o = (2^a·o1 + 2^b·o2) / (2^a + 2^b), lse = log2(2^a + 2^b) per row of d values
// (a = lse1[i], b = lse2[i]); a −∞ side contributes nothing, both −∞ give 0 and −∞.
// lse_out may be null.
template <class T1, class T2, class OutT>
void merge(const T1 *o1, const float *lse1, const T2 *o2, const float *lse2, int n, int d,
           OutT *out, float *lse_out, cudaStream_t s);

// ------------------------------------------------------------
// sampled_attention.cu

// One offloaded head of split decode: its sample's K/V rows are read by the GPU from
// mapped, page-locked host memory (pointers valid on the device).
struct SampledJob {
  const bf16 *k, *v;   // rows of indexed token 0 of the head's KV head: row i at k + i·d
  const float *q;      // device: the query [d] (f32, not centered)
  const float *mu;     // device: μ [d] of the KV head
  float qn, qmu;       // ‖q‖, q·μ
  int32_t ids_off;     // its sample: ids[ids_off .. ids_off + n)
  int32_t n;
  int32_t tile0, ntiles;  // its tiles' partial states: tile0 + i·tstride, i < ntiles
  int32_t row;            // its output row
  int32_t tstride = 1;
};
struct SampledTile {
  int32_t job, start, n;  // keys [start, start + n) of the job's sample
};
struct SampledParams {
  int K, force_u1;
  float eps, scale, lnC2, Lm1, Lm2, c1, c2, c3;
};
SampledParams sampled_params(int K, int L, float eps, float scale, bool force_u1);
size_t sampled_workspace_floats(int ntiles);
int sampled_tile_keys();  // keys per tile (split a job's sample into tiles of this size)
// out[jobs[j].row][d] (f32) and lse2[jobs[j].row] for each of the njobs jobs: its attention
// over its sample (an empty sample: 0 and −∞); other rows are left alone. d = 128.
void sampled_attention(const SampledJob *jobs, const SampledTile *tiles, int ntiles,
                       const int32_t *ids, int njobs, int d, const SampledParams &prm, float *ws,
                       float *out, float *lse2, cudaStream_t s);
// GPU retrieval (split decode with the index's blocks page-locked): one item per (job,
// index block) of a job's KV head. Bucket c of table t is the entries
// [off[t·stride + c], off[t·stride + c + 1]) of ent + t·n (in-block token ids); off and ent
// are host addresses of registered memory, read in place.
struct RetrieveItem {
  const uint16_t *qc;   // device: the job's query codes [L]
  const uint32_t *off;  // the block's offsets of the job's KV head, table 0
  const uint16_t *ent;  // the block's entries of the job's KV head, table 0
  uint64_t *bits;       // device: the job's sample bitmap, from the block's first token
  int32_t *nnz;         // device: the job's sample size (added to)
  int32_t n, stride;    // tokens in the block (<= 65536), 2^K + 1
};
// For each item: the block's tokens colliding with the query in >= 2 of the L tables
// (L <= 1024) as bits of the job's bitmap (every word of the block written), their count
// added to *nnz.
void lsh_retrieve(const RetrieveItem *items, int nitems, int L, cudaStream_t s);
// sampled_attention over bitmaps, gs query heads of one KV head at a time (a GQA group or
// part of one, sampled_bitmap_group): a job's sample is the set bits of its bitmap at
// bits + ids_off (bit i = indexed token i). A tile is a run of at most 32 words of a group's
// bitmaps (SampledTile: job = the group's first job, the gs jobs consecutive; start and n in
// words); tile t writes the partial state of the group's head g to ws slot t·gs + g, so job
// g of a group whose tiles are [T0, T0 + nt) has tile0 = T0·gs + g, tstride = gs, ntiles =
// nt. Each K/V row is read once per group. ‖q‖ and q·μ are computed on the device (qn, qmu
// unused). out and lse2 as sampled_attention; ws holds ntiles·gs states.
int sampled_bitmap_group(int G);  // the group size for G query heads per KV head (1..8)
void sampled_attention_bitmap(const SampledJob *jobs, const SampledTile *tiles, int ntiles,
                              const uint64_t *bits, int njobs, int d, int gs,
                              const SampledParams &prm, float *ws, float *out, float *lse2,
                              cudaStream_t s);
// Rows [0, nrows) of out (d wide) to 0 and of lse2 to −∞: no sampled attention (yet).
void sampled_clear(float *out, float *lse2, int nrows, int d, cudaStream_t s);

// ------------------------------------------------------------
// swiglu.cu

// out[r][c] = silu(gate[r][c]) * up[r][c] for r < rows, c < cols; gate and up rows are
// in_stride apart (so a fused [rows][gate | up] buffer works), out rows out_stride apart.
template <class T, class OutT>
void swiglu(const T *gate, const T *up, int64_t rows, int64_t cols, int64_t in_stride,
            OutT *out, int64_t out_stride, cudaStream_t s);

// ------------------------------------------------------------
// sampling.cu

// tokens[i] = first index of the maximum of logits[i][vocab] (NaN never wins).
void argmax(const float *logits, int n, int vocab, int32_t *tokens, cudaStream_t s);

// Samples tokens[i] from softmax(logits[i] / temperature) restricted to the top_k most
// likely tokens (0: all) and to the smallest prefix, in decreasing probability, whose mass
// reaches top_p (1: all). u[i] in [0, 1) is the row's uniform draw (inverse CDF over the
// kept tokens in index order). temperature <= 0 is greedy.
void sample(const float *logits, int n, int vocab, float temperature, int top_k, float top_p,
            const float *u, int32_t *tokens, cudaStream_t s);

// ------------------------------------------------------------
// lsh.cu

// code(i, t) = Σ_j [x_i · R[:, t·K + j] > 0] << j for t < L, with R [d][K·L] f32 and
// x rows x_stride apart (XT = float or bf16). Dot products in f32, each one sequential
// fmaf chain over d (as lsh::hash_rows). code(i, t) goes to codes[i·code_row + t·code_table]:
// the default (code_row 0 = L, code_table 1) is [n][L]; code_row 1, code_table n is [L][n].
// Up to 64 vectors (decode queries) take a kernel with one thread per (vector, table).
template <class XT>
void lsh_hash(const float *R, const XT *x, int64_t x_stride, int n, int d, int K, int L,
              uint16_t *codes, cudaStream_t s, int64_t code_row = 0, int64_t code_table = 1);
// x[r][e] = f32(k[r][e]) − mu[e] for n contiguous rows of d (keys centered as the CPU does).
void lsh_center(const bf16 *k, const float *mu, int n, int d, float *x, cudaStream_t s);

// ------------------------------------------------------------
// lsh_sort.cu (a layer's first LSH index: ForwardBackend::build_first)

// mu[e] = (float)(Σ_{j<m} (double)k[j][e] / m) for m contiguous rows of d, the sum in token
// order (lsh::Index::init_mean's arithmetic, bit for bit); for `heads` heads at once, head h's
// rows at k + h·head_stride and its μ at mu + h·d.
void lsh_mean(const bf16 *k, int64_t m, int d, float *mu, cudaStream_t s, int heads = 1,
              int64_t head_stride = 0);
// Whether lsh_sort handles K bits per table (its counters live in shared memory).
bool lsh_sort_supported(int K);
// The blocks' CSR of one KV head from its codes [L][ld] of m tokens (blocks of 65,536
// tokens, lsh::Block's layout for that head): offsets [n_blocks][L][2^K + 1], entries of
// block b at b·65,536·L as [L][n_b], in-block ids ascending within each bucket. `heads` heads
// in one launch, each array's heads one after the other: codes L·ld, offsets
// n_blocks·L·(2^K + 1), entries L·m elements apart.
void lsh_sort(const uint16_t *codes, int64_t ld, int64_t m, int L, int K, uint32_t *offsets,
              uint16_t *entries, cudaStream_t s, int heads = 1);

// ------------------------------------------------------------
// kvcache.cu

// K/V rows of a prefill chunk: qkv rows i < m (key heads at koff, value heads at voff) ->
// K, V [Hkv][cap][d] rows pos0 + i. head_dim % 8 == 0.
void kv_scatter(const bf16 *qkv, int64_t row_stride, int koff, int voff, int m, int Hkv, int d,
                bf16 *K, bf16 *V, int64_t cap, int64_t pos0, cudaStream_t s);
// kmax[h] (device, [Hkv]) = the largest L2 norm of head h's key rows r0 <= r < r1 (rows
// stride_t apart, heads stride_h), or the larger of that and kmax[h] unless reset (reset
// zeroes kmax first). The prefill's bound for KVView::kmax.
void key_norm_max(const bf16 *K, int64_t stride_t, int64_t stride_h, int64_t r0, int64_t r1,
                  int Hkv, int d, float *kmax, bool reset, cudaStream_t s);
// Whether prefill attention gets the key-norm bound (KVView::kmax): yes unless
// $MP_KEY_BOUND=0 (A/B runs of the running maxima).
bool key_bound_enabled();
// Decode: qkv row i -> row seqs[i].len − 1 of sequence i's cache (seqs on the device; a
// null k skips the cache) and -> stage_k/stage_v[i][Hkv][d] (may be null).
void kv_append(const bf16 *qkv, int64_t row_stride, int koff, int voff, const SeqKV *seqs, int n,
               int Hkv, int d, bf16 *stage_k, bf16 *stage_v, cudaStream_t s);
// Where a decode step's new K/V row of one (layer, sequence) goes in the sequence's host
// cache: head h's row at k + h·stride_h (and v + h·stride_h), elements; mapped, page-locked
// host memory whose host address the device can use.
struct HostRow {
  bf16 *k;
  bf16 *v;
  int64_t stride_h;
};
// The decode step's staged K/V rows, stage[layer][K|V][n][Hkv][d] (device), into the host
// caches: rows[layer·n + i] (device array). One 16-byte PCIe write per 8 values.
void stage_to_host(const bf16 *stage, const HostRow *rows, int layers, int n, int Hkv, int d,
                   cudaStream_t s);
// b[i] = a[i] converted (bf16 <-> f32).
template <class From, class To>
void convert(const From *a, To *b, int64_t n, cudaStream_t s);
// x[i] += y[i]
void add_inplace(float *x, const float *y, int64_t n, cudaStream_t s);

// ------------------------------------------------------------
// random.cu

// p[i] = mean + scale·N(0, 1), element i a pure function of (seed, i).
template <class T>
void fill_normal(T *p, int64_t n, uint64_t seed, float scale, float mean, cudaStream_t s);

}  // namespace mp::gpu
