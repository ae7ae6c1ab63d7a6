/*
 * magicpig.h — the whole public C API of libmagicpig.
 *
 * libmagicpig runs Llama-architecture models for long-context serving: a CPU backend
 * (OpenMP, vectorised for the build machine) and, where a GPU exists, a CUDA backend.
 * The KV cache of a session and MagicPIG's LSH index live in host memory; the CPU
 * computes importance-weighted sampled attention over the keys that collide with the
 * query (see docs: magicpig.md).
 *
 * Conventions (architecture.md §5):
 *  - Every fallible function returns an int32_t status (MP_OK = 0, > 0 non-fatal, < 0
 *    error) and takes a caller-owned `char *err, size_t err_cap` that receives a
 *    NUL-terminated message ("file.cpp:123: what went wrong") when the status is not
 *    MP_OK. `err` may be NULL. No thread-local last error, no exit(), no abort(), no
 *    printing to stdout.
 *  - Handles are opaque. Every *_create has a *_free; *_free(NULL) is a no-op.
 *  - Parameter structs start with a `size` field (set by the *_default_params function)
 *    so that fields can be added at the end without breaking callers.
 *  - Threading: calls on one handle are never concurrent. A session belongs to the
 *    engine that created it: calls taking an engine and its sessions count as calls on
 *    the engine. Different engines may be used from different threads.
 *  - Long loops poll `abort_flag` (an int32 in caller memory, may be NULL) between
 *    layers or chunks; a non-zero value makes the call return MP_ABORTED, with the
 *    state documented per function.
 *  - Sizes are size_t / int64_t, counts int32_t.
 *  - Shapes are written outermost first: q[n][H][d] is n·H·d contiguous values.
 */
#ifndef MAGICPIG_H
#define MAGICPIG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MP_BUILDING_LIBRARY)
#define MP_API __attribute__((visibility("default")))
#else
#define MP_API
#endif

/* Bumped whenever a signature or a struct layout below changes. */
#define MP_ABI_VERSION 1

/* ------------------------------------------------------------------------------------
 * status codes
 * ---------------------------------------------------------------------------------- */
enum mp_status {
  MP_OK = 0,
  MP_ABORTED = 1,            /* abort_flag was set; see the function for the state left */
  MP_ERR_INVALID = -1,       /* bad argument; nothing changed */
  MP_ERR_OOM = -2,           /* host or device allocation failed; nothing changed */
  MP_ERR_CUDA = -3,          /* a CUDA call failed; the handle is still usable */
  MP_ERR_CUDA_FATAL = -4,    /* sticky CUDA error: the context is lost, free the engine */
  MP_ERR_NO_DEVICE = -5,     /* a GPU was asked for and none is usable */
  MP_ERR_IO = -6,            /* file read/write failed */
  MP_ERR_UNSUPPORTED = -7,   /* valid request this build or model cannot do */
  MP_ERR_STATE = -8,         /* call not valid in the handle's current state */
  MP_ERR_CORRUPT = -9,       /* a snapshot failed its checksum or format check */
  MP_ERR_INTERNAL = -10,     /* a bug: please report the message */
};

enum mp_dtype {
  MP_DTYPE_F32 = 0,
  MP_DTYPE_F16 = 1,
  MP_DTYPE_BF16 = 2,
};

enum mp_backend {
  MP_BACKEND_AUTO = 0, /* CUDA when a device is usable, else CPU */
  MP_BACKEND_CPU = 1,
  MP_BACKEND_CUDA = 2,
};

/* ------------------------------------------------------------------------------------
 * library
 * ---------------------------------------------------------------------------------- */

/* MP_ABI_VERSION of the built library. */
MP_API int32_t mp_abi_version(void);

/* Number of usable CUDA devices: 0 for a CPU-only build or when no device/driver is
 * present. Never fails. */
MP_API int32_t mp_device_count(void);

/* Static NUL-terminated description of the build ("cpu+avx512bf16 cuda=sm_90 cublas=1"). */
MP_API const char *mp_build_info(void);

/* OpenMP threads used by CPU work from now on (n <= 0: all cores). Returns the count in
 * effect. */
MP_API int32_t mp_set_num_threads(int32_t n);
MP_API int32_t mp_get_num_threads(void);

/* sizeof() of a public struct by its name ("mp_engine_params"), 0 if unknown. Lets
 * bindings check their struct layouts. */
MP_API size_t mp_struct_size(const char *name);

/* ------------------------------------------------------------------------------------
 * model configuration
 * ---------------------------------------------------------------------------------- */

enum mp_rope_style {
  MP_ROPE_INTERLEAVED = 0, /* rotate pairs (x[2i], x[2i+1]): GGUF / llama2.c files */
  MP_ROPE_HALF = 1,        /* rotate (x[i], x[i+d/2]): Hugging Face files */
};

enum mp_rope_scaling {
  MP_ROPE_SCALING_NONE = 0,
  MP_ROPE_SCALING_LLAMA3 = 1, /* rope_type "llama3": factor, low/high_freq_factor, orig ctx */
};

typedef struct mp_rope_params {
  float theta;                        /* base, e.g. 10000 or 500000 */
  int32_t style;                      /* enum mp_rope_style */
  int32_t scaling;                    /* enum mp_rope_scaling */
  float factor;                       /* llama3: 8 */
  float low_freq_factor;              /* llama3: 1 */
  float high_freq_factor;             /* llama3: 4 */
  int32_t original_max_position;      /* llama3: 8192 */
} mp_rope_params;

typedef struct mp_model_config {
  size_t size;              /* sizeof(mp_model_config) */
  int32_t n_layers;
  int32_t dim;              /* hidden size */
  int32_t n_heads;          /* query heads */
  int32_t n_kv_heads;       /* key/value heads (GQA: n_heads % n_kv_heads == 0) */
  int32_t head_dim;         /* usually dim / n_heads */
  int32_t ffn_dim;          /* SwiGLU intermediate size */
  int32_t vocab_size;
  int32_t max_context;      /* positions the model was trained for (0: unlimited) */
  float rms_eps;
  int32_t tied_embeddings;  /* 1: the LM head is the token embedding */
  mp_rope_params rope;
} mp_model_config;

/* Tensor kinds for mp_engine_load_tensor. Matrices are [out][in] row-major (Hugging Face
 * and GGUF both store them so). Per-layer kinds take `layer`, global ones ignore it. */
enum mp_tensor_kind {
  MP_TENSOR_TOKEN_EMBD = 0, /* [vocab][dim] */
  MP_TENSOR_OUTPUT_NORM = 1,/* [dim] */
  MP_TENSOR_OUTPUT = 2,     /* [vocab][dim]; absent when tied */
  MP_TENSOR_ATTN_NORM = 3,  /* [dim] */
  MP_TENSOR_WQ = 4,         /* [n_heads*head_dim][dim] */
  MP_TENSOR_WK = 5,         /* [n_kv_heads*head_dim][dim] */
  MP_TENSOR_WV = 6,         /* [n_kv_heads*head_dim][dim] */
  MP_TENSOR_WO = 7,         /* [dim][n_heads*head_dim] */
  MP_TENSOR_FFN_NORM = 8,   /* [dim] */
  MP_TENSOR_W_GATE = 9,     /* [ffn][dim]   (w1, gate_proj) */
  MP_TENSOR_W_DOWN = 10,    /* [dim][ffn]   (w2, down_proj) */
  MP_TENSOR_W_UP = 11,      /* [ffn][dim]   (w3, up_proj) */
  MP_TENSOR_KIND_COUNT = 12,
};

/* ------------------------------------------------------------------------------------
 * engine: one model's weights on one backend
 * ---------------------------------------------------------------------------------- */

typedef struct mp_engine mp_engine;

typedef struct mp_engine_params {
  size_t size;               /* sizeof(mp_engine_params) */
  mp_model_config model;
  int32_t backend;           /* enum mp_backend; default AUTO */
  int32_t device;            /* CUDA device ordinal; default 0 */
  int32_t weight_dtype;      /* storage: default F32 on CPU, BF16 on CUDA (-1: default) */
  int32_t kv_dtype;          /* host KV storage, F32 or BF16: default F32 on CPU, BF16 on
                                CUDA (-1: default) */
  int64_t gpu_memory_budget; /* bytes the engine may take on the GPU; 0 = no limit */
  int32_t max_batch;         /* most sequences in one mp_decode_step; default 16 */
  int32_t prefill_chunk;     /* tokens per prefill chunk; default 512 CPU, 8192 CUDA
                                (0: default) */
} mp_engine_params;

MP_API void mp_engine_default_params(mp_engine_params *p);

/* Creates an engine with unloaded weights. Load every tensor with mp_engine_load_tensor
 * (or mp_engine_init_random), then call mp_engine_finalize. */
MP_API int32_t mp_engine_create(const mp_engine_params *p, mp_engine **out, char *err,
                                size_t err_cap);
MP_API void mp_engine_free(mp_engine *e);

/* Copies one tensor (given in src_dtype, F32/F16/BF16) into the engine, converting to
 * the engine's weight dtype (norm vectors are kept in F32). `shape` must match the kind's
 * shape for the model config ([dim] or [1][dim] for norms) and nbytes the shape × dtype;
 * errors name the tensor ("blk.3.attn_q", GGUF names). MP_TENSOR_OUTPUT is refused when
 * the model has tied embeddings; loading after mp_engine_finalize is MP_ERR_STATE.
 * On error the engine is unchanged. */
MP_API int32_t mp_engine_load_tensor(mp_engine *e, int32_t kind, int32_t layer,
                                     int32_t src_dtype, const int64_t *shape, int32_t ndim,
                                     const void *data, size_t nbytes, char *err,
                                     size_t err_cap);

/* Same, reading `nbytes` at `offset` of the file at `path` (no copy through the caller). */
MP_API int32_t mp_engine_load_tensor_file(mp_engine *e, int32_t kind, int32_t layer,
                                          int32_t src_dtype, const int64_t *shape,
                                          int32_t ndim, const char *path, uint64_t offset,
                                          uint64_t nbytes, char *err, size_t err_cap);

/* Fills every tensor with seeded random values (normal, std `scale`; norms = 1),
 * generated on the engine's device. For benchmarks of a model shape. */
MP_API int32_t mp_engine_init_random(mp_engine *e, uint64_t seed, float scale, char *err,
                                     size_t err_cap);

/* Checks that every tensor is present and prepares the backend (upload, workspaces).
 * MP_ERR_STATE names the first missing tensor. */
MP_API int32_t mp_engine_finalize(mp_engine *e, char *err, size_t err_cap);

typedef struct mp_engine_info {
  size_t size;               /* sizeof(mp_engine_info), set by the caller */
  int32_t backend;           /* enum mp_backend actually used */
  int32_t device;
  int32_t weight_dtype;
  int32_t kv_dtype;
  int64_t weight_bytes;
  int64_t gpu_bytes_in_use;  /* 0 on CPU */
  int64_t gpu_bytes_peak;
  int64_t gpu_bytes_total;   /* device memory; 0 on CPU */
  char device_name[64];
} mp_engine_info;

MP_API int32_t mp_engine_get_info(const mp_engine *e, mp_engine_info *out);

/* ------------------------------------------------------------------------------------
 * attention policies
 * ---------------------------------------------------------------------------------- */

enum mp_attention_method {
  MP_ATTN_DENSE = 0,    /* exact attention over every key */
  MP_ATTN_MAGICPIG = 1, /* LSH sampling over the indexed keys, exact over sink/local */
  MP_ATTN_TOPK = 2,     /* exact top `budget` fraction of the softmax */
  MP_ATTN_QUEST = 3,    /* pages of `page_size` keys ranked by min/max bounds */
  MP_ATTN_ORACLE = 4,   /* `budget`·n draws from the exact softmax */
};

#define MP_MAX_LAYERS 256

typedef struct mp_attention_params {
  size_t size;               /* sizeof(mp_attention_params) */
  int32_t method;            /* enum mp_attention_method; default MAGICPIG */
  int32_t lsh_k;             /* bits per table, 1..16; default 10 */
  int32_t lsh_l;             /* tables; default 150 */
  int32_t sinks;             /* first tokens always attended exactly; default 4 */
  int32_t window;            /* last prompt tokens attended exactly; default 64 */
  int32_t gen_buffer;        /* local tokens beyond `window` before they are flushed
                                into the index; default 256 */
  float eps;                 /* ℓ = s/√d − ln(u + eps); default 1e-4 */
  float budget;              /* TOPK/QUEST/ORACLE fraction of offloaded keys; default 0.02 */
  int32_t page_size;         /* QUEST page; default 16 */
  uint64_t seed;             /* LSH hyperplanes / oracle draws; default 0x5eed */
  int32_t n_dense_layers;    /* -1: default {0, n_layers/2}; else the count in dense_layers */
  int32_t dense_layers[16];  /* layers kept dense (exact attention), n_dense_layers of them */
} mp_attention_params;

MP_API void mp_attention_default_params(mp_attention_params *p);

/* ------------------------------------------------------------------------------------
 * sessions: one sequence's KV cache (host memory) and LSH index
 * ---------------------------------------------------------------------------------- */

typedef struct mp_session mp_session;

typedef struct mp_session_params {
  size_t size;               /* sizeof(mp_session_params) */
  mp_attention_params attention;
  int64_t reserve_tokens;    /* capacity to allocate up front; grows on demand */
} mp_session_params;

MP_API void mp_session_default_params(mp_session_params *p);

MP_API int32_t mp_session_create(mp_engine *e, const mp_session_params *p,
                                 mp_session **out, char *err, size_t err_cap);
MP_API void mp_session_free(mp_session *s);

/* Appends n >= 1 tokens with dense exact attention (chunked, layer by layer), writing
 * their K and V into the session. If `logits` is non-NULL it receives the logits [vocab]
 * of the last token. On MP_ABORTED or an error the session is rolled back to its length
 * before the call. */
MP_API int32_t mp_session_prefill(mp_engine *e, mp_session *s, const int32_t *tokens,
                                  int32_t n, float *logits, const int32_t *abort_flag,
                                  char *err, size_t err_cap);

/* mp_session_prefill followed by mp_session_commit, for the call that ends a turn. A
 * MAGICPIG session's first index is built beside the prefill: on a CUDA engine each sparse
 * layer's keys are hashed and sorted (GPU, then CPU) while the GPU computes the next
 * layers, so the commit adds about one layer's build instead of all of them (a CPU engine
 * builds it after the prefill, as mp_session_commit does, except in "lsh" mode 3). On
 * MP_ABORTED or a prefill error the session is rolled back and nothing is committed; if
 * only the commit fails, the prefilled tokens stay and the error says so (call
 * mp_session_commit again). The result is the same as the two calls. */
MP_API int32_t mp_session_prefill_commit(mp_engine *e, mp_session *s, const int32_t *tokens,
                                         int32_t n, float *logits, const int32_t *abort_flag,
                                         char *err, size_t err_cap);

/* Ends a turn: for MAGICPIG, indexes every token but the sinks and the last `window`
 * (the first commit fixes the key mean μ the index centers with; the KV cache keeps the
 * keys as computed) and makes generated tokens flushed into the index since the last
 * commit permanent; a no-op for other methods. */
MP_API int32_t mp_session_commit(mp_engine *e, mp_session *s, char *err, size_t err_cap);

/* Drops tokens after the first n (n >= the indexed length, see mp_session_info). Used to
 * undo a forked turn. */
MP_API int32_t mp_session_truncate(mp_engine *e, mp_session *s, int64_t n, char *err,
                                   size_t err_cap);

/* Creates a new session holding a copy of the first n tokens of `src` (n = -1: all of
 * them): their keys and values in every layer. `p` gives the new session's attention
 * policy (NULL: the source's); nothing of the source's policy state is copied, so a
 * MAGICPIG fork is indexed by its own mp_session_commit. Lets one prefill serve several
 * methods and batch members (benchmarks, forked turns). The source is unchanged. */
MP_API int32_t mp_session_fork(mp_engine *e, const mp_session *src, const mp_session_params *p,
                               int64_t n, mp_session **out, char *err, size_t err_cap);

/* Per-step statistics, accumulated per session. */
typedef struct mp_session_info {
  size_t size;               /* sizeof(mp_session_info), set by the caller */
  int64_t n_tokens;          /* tokens in the KV cache */
  int64_t n_indexed;         /* MAGICPIG: tokens indexed at the last commit (sinks
                                included); a truncate may not cut below it. Generated
                                tokens flushed into the index since are not counted */
  int64_t host_kv_bytes;     /* host bytes held for K, V (and key norms) */
  int64_t host_index_bytes;  /* host bytes held for the LSH index */
  int64_t gpu_bytes;         /* device bytes held for this session */
  double keys_attended;      /* Σ over sparse layers, heads, steps of keys attended
                                in the offloaded region */
  double keys_offloaded;     /* Σ of the offloaded region's size over the same */
  int32_t method;
  int32_t lsh_k, lsh_l;
  uint64_t seed;
} mp_session_info;

MP_API int32_t mp_session_get_info(const mp_session *s, mp_session_info *out);

/* Decode one token for each of n sessions (distinct handles of one engine, 1 <= n <=
 * max_batch): appends tokens[i] to sessions[i] and writes the logits of the new position
 * to logits[i][vocab]. Attention follows each session's policy. On error or MP_ABORTED no
 * session changed. */
MP_API int32_t mp_decode_step(mp_engine *e, mp_session *const *sessions, int32_t n,
                              const int32_t *tokens, float *logits,
                              const int32_t *abort_flag, char *err, size_t err_cap);

/* The same step in three calls, for a caller whose thread must not block for a step (an
 * event loop) and should not pay a thread wake-up per step either:
 *  - mp_decode_submit hands the step to the engine's decode thread and returns at once
 *    (MP_ERR_STATE while another step is in flight). `sessions` and `tokens` are copied;
 *    `logits` and `abort_flag` must stay valid until mp_decode_finish.
 *  - mp_decode_wait blocks until the step is done or nearly done (the GPU is on its last
 *    kernels); meant for another thread (a nonblocking FFI call), so that the caller's own
 *    wake-up overlaps the end of the step. Returns MP_OK, or MP_ERR_INVALID for a NULL
 *    engine or one that never submitted.
 *  - mp_decode_finish blocks until the step is done and returns what mp_decode_step would
 *    have (status, message, the same rollback on failure). Every MP_OK submit needs it.
 * Between submit and finish, no other call may use the engine or the step's sessions
 * (mp_decode_wait excepted). The decode thread spins for a few ms after each step, so that
 * steps submitted back to back start at once. */
MP_API int32_t mp_decode_submit(mp_engine *e, mp_session *const *sessions, int32_t n,
                                const int32_t *tokens, float *logits,
                                const int32_t *abort_flag, char *err, size_t err_cap);
MP_API int32_t mp_decode_wait(mp_engine *e);
MP_API int32_t mp_decode_finish(mp_engine *e, char *err, size_t err_cap);

/* Snapshots: a checksummed file written to `path`.tmp, fsynced and renamed. */
MP_API int32_t mp_session_save(const mp_engine *e, const mp_session *s, const char *path,
                               char *err, size_t err_cap);
/* Restores a snapshot; MP_ERR_CORRUPT when the checksum or format fails (nothing loaded),
 * MP_ERR_INVALID when it was made for another model shape. The KV is converted to the
 * engine's kv_dtype when the snapshot was written with another. */
MP_API int32_t mp_session_load(mp_engine *e, const char *path, mp_session **out, char *err,
                               size_t err_cap);

/* ------------------------------------------------------------------------------------
 * sampling
 * ---------------------------------------------------------------------------------- */

typedef struct mp_sampling_params {
  size_t size;         /* sizeof(mp_sampling_params) */
  float temperature;   /* 0: greedy (first maximum wins) */
  int32_t top_k;       /* 0: off */
  float top_p;         /* 1: off */
  int32_t n_logprobs;  /* top alternatives to report, 0..20 */
} mp_sampling_params;

MP_API void mp_sampling_default_params(mp_sampling_params *p);

/* Picks a token from logits[vocab]. `rng_state` (caller-owned, seeded by the caller) is
 * advanced. Writes the token, its log-probability under the unmodified distribution
 * (log-softmax of the logits), and the n_logprobs most likely tokens with theirs
 * (top_ids/top_logprobs may be NULL when n_logprobs is 0).
 * Greedy (temperature 0, or top_k 1) takes the first maximum and needs no rng_state.
 * Otherwise: temperature, then top-k, then top-p (the shortest prefix of the tokens sorted
 * by logit, ties by lower id, whose probability reaches top_p), then one uniform draw
 * (splitmix64 step of *rng_state) over the kept tokens. Alternatives are sorted by logit
 * descending, ties by lower id; slots beyond vocab get id -1 and -inf. A NaN or +inf
 * logit is MP_ERR_INVALID. */
MP_API int32_t mp_sample(const float *logits, int32_t vocab, const mp_sampling_params *p,
                         uint64_t *rng_state, int32_t *token, float *logprob,
                         int32_t *top_ids, float *top_logprobs, char *err, size_t err_cap);

/* ------------------------------------------------------------------------------------
 * single ops, for tests and benchmarks. `backend` is MP_BACKEND_CPU or MP_BACKEND_CUDA;
 * all pointers are host memory (the CUDA variant copies in and out). Float tensors are
 * F32 unless a dtype argument says otherwise.
 * ---------------------------------------------------------------------------------- */

/* out[n][dim] = table[tokens[i]] */
MP_API int32_t mp_op_embedding(int32_t backend, int32_t dtype, const void *table,
                               int32_t vocab, int32_t dim, const int32_t *tokens, int32_t n,
                               float *out, char *err, size_t err_cap);

/* out[n][dim] = x / sqrt(mean(x²) + eps) * w */
MP_API int32_t mp_op_rmsnorm(int32_t backend, const float *x, const float *w, int32_t n,
                             int32_t dim, float eps, float *out, char *err, size_t err_cap);

/* In place on x[n][heads][head_dim], token i at positions[i]. */
MP_API int32_t mp_op_rope(int32_t backend, float *x, int32_t n, int32_t heads,
                          int32_t head_dim, const int32_t *positions,
                          const mp_rope_params *rope, char *err, size_t err_cap);

/* y[n][out] = x[n][in] · W[out][in]^T, W in `wdtype`, accumulation in F32. */
MP_API int32_t mp_op_matmul(int32_t backend, int32_t wdtype, const void *w, const float *x,
                            int32_t n, int32_t in, int32_t out, float *y, char *err,
                            size_t err_cap);

/* Causal GQA attention. q[n][H][d]; k, v [T][Hkv][d] in kv_dtype; query i sits at
 * position q_pos0 + i and attends keys 0..q_pos0+i (all T when q_pos0 + i >= T - 1).
 * out[n][H][d]; lse2[n][H] (base-2 log-sum-exp of the scaled scores, may be NULL).
 * Scale 1/sqrt(d). */
MP_API int32_t mp_op_attention(int32_t backend, int32_t kv_dtype, const float *q,
                               const void *k, const void *v, int32_t n, int32_t T,
                               int32_t H, int32_t Hkv, int32_t d, int32_t q_pos0, float *out,
                               float *lse2, char *err, size_t err_cap);

/* out[n][ffn] = silu(gate) * up */
MP_API int32_t mp_op_swiglu(int32_t backend, const float *gate, const float *up, int64_t n,
                            float *out, char *err, size_t err_cap);

/* Merge two partial attentions by their base-2 log-sum-exps:
 * o = (2^a·o1 + 2^b·o2) / (2^a + 2^b), lse = log2(2^a + 2^b); rows[n][d]. A −∞ side
 * contributes nothing (both −∞: zero output, −∞ lse). */
MP_API int32_t mp_op_merge(int32_t backend, const float *o1, const float *lse1,
                           const float *o2, const float *lse2, int32_t n, int32_t d,
                           float *out, float *lse_out, char *err, size_t err_cap);

/* ------------------------------------------------------------------------------------
 * CUDA backend: kernel selection and GPU-only ops, for tests and benchmarks. Each returns
 * MP_ERR_NO_DEVICE in a build without CUDA or on a machine without a usable GPU.
 * ---------------------------------------------------------------------------------- */

/* Forces one kernel variant of an op family for later CUDA work in this process (the
 * mp_op_* calls with backend CUDA and the CUDA forward pass); 0 restores the automatic
 * choice. op "matmul": 1 cuBLAS (the skinny kernel in a build without cuBLAS), 2 the
 * skinny tensor-core GEMV kernel (any n, W re-read per 16 rows), 3 the simple kernel,
 * 4 the CUDA-core GEMV kernel (any n, W re-read per 4 rows; automatic for n <= 4 on sm_90).
 * op "attention": 1 flash (tensor cores, head_dim 64/128), 2 split-K decode (one query
 * per "sequence"), 3 generic, 4 Hopper wgmma (head_dim 128 on an sm_90 GPU, else as 0);
 * automatic = 4 where it applies, else 1 (or 3 for other head sizes). op "kv" (where
 * decoding keeps the KV of the layers it attends on the GPU): 1 resident on the GPU
 * (uploaded once per session), 2 streamed from host memory every step (the "dense from
 * host" baseline); automatic = resident while the gpu_memory_budget allows, else streamed.
 * op "graphs" (decode steps whose GPU part needs no host work replay a captured CUDA
 * graph): 1 on, 2 off; automatic = on. op "pin"
 * (sessions' host KV caches of a CUDA engine in page-locked memory, for full-speed PCIe
 * copies; applies to caches allocated later): 1 on, 2 off (pageable); automatic = on, with
 * a fallback to pageable memory when pinning fails. op "lsh" (where MAGICPIG index builds
 * at mp_session_commit hash the keys): automatic = on the GPU of a CUDA engine when a layer
 * indexes >= 1024 tokens (codes equal the CPU's bit for bit; any failure falls back to the
 * CPU, reported on stderr), 1 on the GPU whatever the size (a failure fails the commit),
 * 2 on the CPU, 3 on the CPU
 * through the GPU's precomputed-codes path (tests), 4 as automatic but a layer's first build
 * only hashes on the GPU and sorts on the CPU (in 0 and 1 the GPU also computes its mean key
 * and sorted blocks, K <= 12). op "offload" (split decode of MAGICPIG
 * sessions whose host KV is page-locked and mapped, head_dim 128: the GPU gathers the
 * sampled K/V rows of some KV heads straight from host memory while the CPU attends the
 * others): 1 none, 2 all, 3 a quarter, 4 three quarters, 5 half; automatic = tuned per
 * batch size after each step from how late or early the GPU's share ended against the
 * CPU's (half at first). op "qcodes"
 * (split decode's MAGICPIG query codes): 1 hashed on the GPU beside q (the CPU's codes bit
 * for bit), 2 on the CPU; automatic = GPU. op "retrieval" (where the samples of the GPU
 * share's KV heads are retrieved): 1 on the GPU, which counts collisions in the index's
 * blocks in place (page-locked host memory, registered when a CUDA engine exists and "pin"
 * is not off) and starts at once, the CPU doing only those heads' unsorted tail; 2 on the
 * CPU, which hands each KV head's sample to the GPU as it completes; automatic = GPU where
 * every offloaded session's index blocks are page-locked and they index >= 32768 tokens
 * together (else the CPU); 1 also below that. A
 * variant that cannot run a shape falls back to one that can. Process-wide; not meant to change while other calls run. */
MP_API int32_t mp_gpu_set_kernel(const char *op, int32_t variant, char *err, size_t err_cap);

/* Decode stage timers, process-wide, in host milliseconds summed over every decode call of
 * the CUDA backend since the last reset: out[0] calls, [1] total, [2] setup (placement,
 * split-decode windows and tables), [3] split layers waiting for the GPU to deliver q (the
 * GPU segment between two CPU parts), [4] split layers' CPU part (retrieval + sampled
 * attention), [5] waiting for the GPU after the last launch, [6] host rows written back,
 * [7] split layer-calls, [8] query heads whose sample the GPU attended (split decode's GPU
 * share, mp_gpu_set_kernel "offload"); per split layer-call, summed: [9] from the CPU part's
 * start until every query head's sample exists, [10] until the GPU share was launched,
 * [11] GPU ms the GPU share ran past the CPU part's end, [12] GPU ms it ended before it,
 * [13] layer-calls whose GPU share ended after the CPU part, [14] from the CPU part's start
 * until retrieval starts (query codes, constants), [15] the longest query head's retrieval,
 * [16] every query head's retrieval, [17] bucket entries scanned, [18] layer-calls whose
 * query codes the GPU computed, [19] layer-calls whose GPU share the GPU retrieved itself
 * (op "retrieval"). Writes min(n, 20) values and returns that count; reset != 0
 * clears the timers after reading. Always succeeds (all zeros without CUDA). */
MP_API int32_t mp_decode_profile(double *out, int32_t n, int32_t reset);

/* Token choice on the GPU for n rows of logits[n][vocab]: p->temperature <= 0 is greedy
 * (first maximum); otherwise softmax(logits / temperature) restricted to the top_k most
 * likely tokens (0: all), then to the smallest most-likely set whose mass reaches top_p
 * (ties at the threshold kept), drawn by inverse CDF over the kept tokens in index order
 * with the uniform u[i] in [0, 1) (u may be NULL when greedy). p->n_logprobs is ignored. */
MP_API int32_t mp_gpu_sample(const float *logits, int32_t n, int32_t vocab,
                             const mp_sampling_params *p, const float *u, int32_t *tokens,
                             char *err, size_t err_cap);

/* A NUL-terminated description of device 0 ("NVIDIA H200, cc 9.0, 132 SMs, 139.8 GiB,
 * L2 50 MB") into out[cap]. */
MP_API int32_t mp_gpu_describe(char *out, size_t cap, char *err, size_t err_cap);

/* ------------------------------------------------------------------------------------
 * MagicPIG: LSH index, retrieval and sampled attention (magicpig.md §4–8)
 * ---------------------------------------------------------------------------------- */

/* R[d][K·L] ~ N(0, 1) from `seed` (deterministic, same on every backend). */
MP_API int32_t mp_lsh_projection(uint64_t seed, int32_t d, int32_t K, int32_t L, float *R,
                                 char *err, size_t err_cap);

/* codes[n][L] (uint16): bit j of table t = [x·R[:, t·K + j] > 0], integer-exact. */
MP_API int32_t mp_lsh_hash(int32_t backend, const float *R, const float *x, int32_t n,
                           int32_t d, int32_t K, int32_t L, uint16_t *codes, char *err,
                           size_t err_cap);

/* An LSH index of one sequence and one layer: for every KV head, the keys' SimHash
 * codes sorted into 2^K buckets per table (a CSR per block of 65,536 tokens with 16-bit
 * entries: 2·L bytes per token per KV head, plus 4·L·(2^K + 1) bytes of offsets per
 * block), key norms ‖k − μ‖, the key mean μ, and — for this standalone handle — a copy
 * of the keys and values. Appended tokens wait in an unsorted tail (scanned linearly)
 * until `tail_max` of them are merged into the blocks. */
typedef struct mp_lsh_index mp_lsh_index;

typedef struct mp_lsh_params {
  size_t size;       /* sizeof(mp_lsh_params) */
  int32_t k;         /* bits per table, 1..16; default 10 */
  int32_t l;         /* tables, 2..1024; default 150 */
  uint64_t seed;     /* hyperplanes R = mp_lsh_projection(seed, head_dim, k, l); default 0x5eed */
  float eps;         /* logit correction −ln(u + eps), >= 0 (0: exact 1/u); default 1e-4 */
  int32_t center;    /* 1: μ = mean key of the first non-empty batch, per KV head, subtracted
                        before hashing and in cos (queries are not centered); default 1 */
  int64_t tail_max;  /* appended tokens kept unsorted before a merge; default 4096 */
} mp_lsh_params;

MP_API void mp_lsh_default_params(mp_lsh_params *p);

/* Builds an index over n tokens (all sorted into blocks): keys, values
 * [n_kv_heads][n][head_dim] in kv_dtype (F32 or BF16), copied. n may be 0 (then μ comes
 * from the first append). */
MP_API int32_t mp_lsh_index_create(const mp_lsh_params *p, int32_t n_kv_heads,
                                   int32_t head_dim, int32_t kv_dtype, const void *keys,
                                   const void *values, int64_t n, mp_lsh_index **out,
                                   char *err, size_t err_cap);
/* Appends m tokens (keys, values [n_kv_heads][m][head_dim]) as ids n .. n+m−1, centered
 * with the existing μ. merge != 0 merges the tail into the blocks now. On error the
 * index is unchanged unless the error is MP_ERR_OOM (then free it). */
MP_API int32_t mp_lsh_index_append(mp_lsh_index *idx, const void *keys, const void *values,
                                   int64_t m, int32_t merge, char *err, size_t err_cap);
MP_API void mp_lsh_index_free(mp_lsh_index *idx);

typedef struct mp_lsh_index_info {
  size_t size;             /* sizeof(mp_lsh_index_info), set by the caller */
  int64_t n_tokens;        /* tokens indexed */
  int64_t n_blocked;       /* of them, in the block structure */
  int64_t n_tail;          /* of them, in the unsorted tail */
  int32_t n_kv_heads;
  int32_t head_dim;
  int32_t kv_dtype;
  int32_t k;
  int32_t l;
  int32_t center;
  uint64_t seed;
  float eps;
  int64_t entry_bytes;     /* CSR entries (uint16) */
  int64_t offset_bytes;    /* CSR bucket offsets (uint32) */
  int64_t tail_bytes;      /* tail codes */
  int64_t norm_bytes;      /* key norms (fp32) and means */
  int64_t kv_bytes;        /* this handle's copy of K and V */
  double bytes_per_token;  /* (entries + offsets + tail) / (n_tokens · n_kv_heads) */
} mp_lsh_index_info;

MP_API int32_t mp_lsh_index_get_info(const mp_lsh_index *idx, mp_lsh_index_info *out);

/* Codes of tokens [start, start + count) of one KV head: codes[count][l]. */
MP_API int32_t mp_lsh_index_get_codes(const mp_lsh_index *idx, int32_t head, int64_t start,
                                      int64_t count, uint16_t *codes, char *err,
                                      size_t err_cap);
/* The bucket table of (head, table) over all tokens in global ids: offsets[2^k + 1]
 * (bucket c is indices[offsets[c] .. offsets[c+1])), indices[n_tokens], ascending ids
 * within a bucket. */
MP_API int32_t mp_lsh_index_get_table(const mp_lsh_index *idx, int32_t head, int32_t table,
                                      uint32_t *offsets, int32_t *indices, char *err,
                                      size_t err_cap);
/* mean[n_kv_heads][head_dim] = μ; norms[n_kv_heads][n_tokens] = ‖k − μ‖ (may be NULL). */
MP_API int32_t mp_lsh_index_get_mean(const mp_lsh_index *idx, float *mean, float *norms,
                                     char *err, size_t err_cap);

enum mp_lsh_flags {
  MP_LSH_EXACT_U = 1,       /* u and ln(u + eps) in float64 scalar code */
  MP_LSH_FORCE_U1 = 2,      /* u ≡ 1: a plain softmax over the sample */
  MP_LSH_RETRIEVE_ALL = 4,  /* the sample is every indexed token */
  MP_LSH_CENTER_QUERY = 8,  /* also center the query (wrong on purpose, for tests) */
  MP_LSH_OFFLOAD_BLOCKS = 16, /* mp_lsh_attention_offload only: the offloaded KV heads' blocked
                                 tokens are retrieved and attended elsewhere (the GPU); here
                                 only their tail (split decode with GPU retrieval) */
};

/* Work counters of one retrieval/attention call. */
typedef struct mp_lsh_stats {
  size_t size;      /* sizeof(mp_lsh_stats), set by the caller */
  int64_t rows;     /* distinct K and V rows gathered (shared by a GQA group) */
  int64_t sampled;  /* Σ over query heads of the sample size */
  int64_t entries;  /* bucket entries scanned + tail tokens compared */
  int64_t bytes;    /* bytes of K/V rows, norms, entries, offsets and tail codes touched */
  int64_t tasks;    /* parallel tasks */
} mp_lsh_stats;

/* Collision retrieval for a batch of B sequences (idx[B], one layer, same shape): query
 * head h of sequence b, q[B][H][head_dim], retrieves every token whose code equals the
 * query's in >= 2 of the l tables. qcodes[B][H][l] may give the query codes (else they
 * are hashed from q). nnz[B][H]; indices[B][H][cap] ascending, first min(nnz, cap)
 * (may be NULL). flags: MP_LSH_RETRIEVE_ALL, MP_LSH_CENTER_QUERY. */
MP_API int32_t mp_lsh_retrieve(mp_lsh_index *const *idx, int32_t B, const float *q,
                               int32_t H, const uint16_t *qcodes, int32_t flags, int64_t cap,
                               int32_t *indices, int32_t *nnz, char *err, size_t err_cap);

/* Split decode's GPU retrieval on its own (tests): for each (b, h) the indexed tokens of the
 * blocks (not the unsorted tail) that collide with qcodes[b][h][l] in >= 2 tables, counted
 * on the GPU from the index's page-locked blocks (page-locked for the call unless they are
 * already): nnz[b][h], and the first min(nnz, cap) ids ascending in indices[b][h][cap]. */
MP_API int32_t mp_lsh_retrieve_gpu(mp_lsh_index *const *idx, int32_t B, int32_t H,
                                   const uint16_t *qcodes, int64_t cap, int32_t *indices,
                                   int32_t *nnz, char *err, size_t err_cap);

/* Sampled attention over the retrieved keys (magicpig.md §7): s = q·k, cos =
 * q·(k − μ)/(‖q‖‖k − μ‖) clamped, p = (1 − acos(cos)/π)^k, u = P[>= 2 of l collide],
 * ℓ = s/√head_dim − ln(u + eps). out[B][H][head_dim] = Σ softmax(ℓ)·v (fp32),
 * lse2[B][H] = log2 Σ e^ℓ; an empty sample gives zeros and −∞. nnz[B][H] and stats may
 * be NULL. */
MP_API int32_t mp_lsh_attention(mp_lsh_index *const *idx, int32_t B, const float *q,
                                int32_t H, const uint16_t *qcodes, int32_t flags, float *out,
                                float *lse2, int32_t *nnz, mp_lsh_stats *stats, char *err,
                                size_t err_cap);

/* mp_lsh_attention with some KV heads attended elsewhere (split decode's GPU share, here
 * for tests): offload_kv[b][hkv] != 0 marks KV head hkv of sequence b. Every head is
 * retrieved; the offloaded heads' out rows are 0 and their lse2 −∞ (nnz still counts their
 * samples), and their samples are handed out as the GPU would get them: off_n[b][h] ids
 * (ascending, the first off_cap in off_ids[b][h][..]) for heads of offloaded KV heads, 0
 * for the others. *handed is the number of hand-offs (an offloaded KV head is handed over
 * as soon as its query heads' samples exist, with any other one ready by then: 0 when no head
 * is offloaded; each offloaded KV head is in exactly one of them, else MP_ERR_INTERNAL).
 * With MP_LSH_OFFLOAD_BLOCKS in flags nothing is handed out (*handed = 0, off_n all 0): the
 * offloaded heads' out, lse2 and nnz are those of the tail part of their sample only (the
 * tokens appended after the index's last merge; 0, −∞ and 0 when none collides). */
MP_API int32_t mp_lsh_attention_offload(mp_lsh_index *const *idx, int32_t B, const float *q,
                                        int32_t H, const uint16_t *qcodes, int32_t flags,
                                        const uint8_t *offload_kv, int64_t off_cap,
                                        int32_t *off_ids, int32_t *off_n, int32_t *handed,
                                        float *out, float *lse2, int32_t *nnz, char *err,
                                        size_t err_cap);

/* The same weights over given samples instead of retrieved ones: the sample of (b, h) is
 * sets[b][h][0 .. set_n[b][h]) (token ids, set_cap per head; duplicates ignored). */
MP_API int32_t mp_lsh_attention_sets(mp_lsh_index *const *idx, int32_t B, const float *q,
                                     int32_t H, const int32_t *sets, const int32_t *set_n,
                                     int64_t set_cap, int32_t flags, float *out, float *lse2,
                                     char *err, size_t err_cap);

/* u(cos) and lnw = ln(u + eps) (eps = 0: ln u, floored at −100) for n cosines, by the
 * kernel's own vector code (for tests). */
MP_API int32_t mp_lsh_collision_weights(int32_t k, int32_t l, float eps, const float *cos,
                                        int64_t n, float *u, float *lnw, char *err,
                                        size_t err_cap);

/* Baselines over raw keys and values [n_kv_heads][n][head_dim] (F32 or BF16) for one
 * sequence and q[H][head_dim]: out[H][head_dim], lse2[H] (base-2 LSE of q·k/√d over the
 * keys used), nsel[H] keys attended (may be NULL).
 *  topk:   the exact top ⌈budget·n⌉ keys per head;
 *  quest:  pages of page_size keys ranked by Σ_e max(q_e·min_e, q_e·max_e), the top
 *          ⌈budget·pages⌉ pages attended exactly;
 *  oracle: max(1, round(budget·n)) draws with replacement from the exact softmax,
 *          out = mean of the drawn values, lse2 = the exact LSE (head h draws with
 *          seed + h). */
MP_API int32_t mp_attention_topk(int32_t kv_dtype, const void *keys, const void *values,
                                 int64_t n, int32_t n_kv_heads, int32_t head_dim,
                                 const float *q, int32_t H, float budget, float *out,
                                 float *lse2, int32_t *nsel, char *err, size_t err_cap);
MP_API int32_t mp_attention_quest(int32_t kv_dtype, const void *keys, const void *values,
                                  int64_t n, int32_t n_kv_heads, int32_t head_dim,
                                  const float *q, int32_t H, float budget, int32_t page_size,
                                  float *out, float *lse2, int32_t *nsel, char *err,
                                  size_t err_cap);
MP_API int32_t mp_attention_oracle(int32_t kv_dtype, const void *keys, const void *values,
                                   int64_t n, int32_t n_kv_heads, int32_t head_dim,
                                   const float *q, int32_t H, float budget, uint64_t seed,
                                   float *out, float *lse2, int32_t *nsel, char *err,
                                   size_t err_cap);

#ifdef __cplusplus
}
#endif

#endif /* MAGICPIG_H */
