/**
 * The symbol table of libmagicpig for `Deno.dlopen`, and nothing else. Each entry carries
 * its C prototype from `cuda/include/magicpig.h`. Calls that can run long have a
 * `nonblocking` twin named `*_async` (same C symbol through `name`).
 *
 * Keep the sections in the order of the header.
 *
 * @module
 */

/** The ABI version this binding was written for (MP_ABI_VERSION in magicpig.h). */
export const ABI_VERSION = 1;

const errArgs = ["buffer", "usize"] as const;
// mp_decode_step and mp_decode_submit: (engine, sessions, n, tokens, logits, abort, err, cap)
const decodeArgs = ["pointer", "buffer", "i32", "buffer", "buffer", "buffer", ...errArgs] as const;
/** mp_session_prefill and mp_session_prefill_commit (the same parameters). */
const prefillArgs = [
  "pointer",
  "pointer",
  "buffer",
  "i32",
  "buffer",
  "buffer",
  ...errArgs,
] as const;

export const symbols = {
  // ------------------------------------------------------------
  // library

  /** int32_t mp_abi_version(void) */
  mp_abi_version: { parameters: [], result: "i32" },
  /** int32_t mp_device_count(void) */
  mp_device_count: { parameters: [], result: "i32" },
  /** const char *mp_build_info(void) */
  mp_build_info: { parameters: [], result: "pointer" },
  /** int32_t mp_set_num_threads(int32_t n) */
  mp_set_num_threads: { parameters: ["i32"], result: "i32" },
  /** int32_t mp_get_num_threads(void) */
  mp_get_num_threads: { parameters: [], result: "i32" },
  /** size_t mp_struct_size(const char *name) */
  mp_struct_size: { parameters: ["buffer"], result: "usize" },

  // ------------------------------------------------------------
  // engine

  /** void mp_engine_default_params(mp_engine_params *p) */
  mp_engine_default_params: { parameters: ["buffer"], result: "void" },
  /** int32_t mp_engine_create(const mp_engine_params *p, mp_engine **out, char *err, size_t cap) */
  mp_engine_create: { parameters: ["buffer", "buffer", ...errArgs], result: "i32" },
  /** void mp_engine_free(mp_engine *e) */
  mp_engine_free: { parameters: ["pointer"], result: "void" },
  /** int32_t mp_engine_load_tensor(mp_engine *e, int32_t kind, int32_t layer, int32_t src_dtype,
   *    const int64_t *shape, int32_t ndim, const void *data, size_t nbytes, char *err, size_t cap) */
  mp_engine_load_tensor: {
    parameters: ["pointer", "i32", "i32", "i32", "buffer", "i32", "buffer", "usize", ...errArgs],
    result: "i32",
  },
  /** int32_t mp_engine_load_tensor_file(mp_engine *e, int32_t kind, int32_t layer,
   *    int32_t src_dtype, const int64_t *shape, int32_t ndim, const char *path, uint64_t offset,
   *    uint64_t nbytes, char *err, size_t cap) */
  mp_engine_load_tensor_file_async: {
    name: "mp_engine_load_tensor_file",
    parameters: [
      "pointer",
      "i32",
      "i32",
      "i32",
      "buffer",
      "i32",
      "buffer",
      "u64",
      "u64",
      ...errArgs,
    ],
    result: "i32",
    nonblocking: true,
  },
  /** int32_t mp_engine_init_random(mp_engine *e, uint64_t seed, float scale, char *err, size_t cap) */
  mp_engine_init_random_async: {
    name: "mp_engine_init_random",
    parameters: ["pointer", "u64", "f32", ...errArgs],
    result: "i32",
    nonblocking: true,
  },
  /** int32_t mp_engine_finalize(mp_engine *e, char *err, size_t cap) */
  mp_engine_finalize_async: {
    name: "mp_engine_finalize",
    parameters: ["pointer", ...errArgs],
    result: "i32",
    nonblocking: true,
  },
  /** int32_t mp_engine_get_info(const mp_engine *e, mp_engine_info *out) */
  mp_engine_get_info: { parameters: ["pointer", "buffer"], result: "i32" },
  // ------------------------------------------------------------
  // attention policies

  /** void mp_attention_default_params(mp_attention_params *p) */
  mp_attention_default_params: { parameters: ["buffer"], result: "void" },

  // ------------------------------------------------------------
  // sessions

  /** void mp_session_default_params(mp_session_params *p) */
  mp_session_default_params: { parameters: ["buffer"], result: "void" },
  /** int32_t mp_session_create(mp_engine *e, const mp_session_params *p, mp_session **out,
   *    char *err, size_t cap) */
  mp_session_create: { parameters: ["pointer", "buffer", "buffer", ...errArgs], result: "i32" },
  /** void mp_session_free(mp_session *s) */
  mp_session_free: { parameters: ["pointer"], result: "void" },
  /** int32_t mp_session_prefill(mp_engine *e, mp_session *s, const int32_t *tokens, int32_t n,
   *    float *logits, const int32_t *abort_flag, char *err, size_t cap) */
  mp_session_prefill_async: {
    name: "mp_session_prefill",
    parameters: prefillArgs,
    result: "i32",
    nonblocking: true,
  },
  /** int32_t mp_session_prefill_commit(mp_engine *e, mp_session *s, const int32_t *tokens,
   *    int32_t n, float *logits, const int32_t *abort_flag, char *err, size_t cap) */
  mp_session_prefill_commit_async: {
    name: "mp_session_prefill_commit",
    parameters: prefillArgs,
    result: "i32",
    nonblocking: true,
  },
  /** int32_t mp_session_commit(mp_engine *e, mp_session *s, char *err, size_t cap) */
  mp_session_commit_async: {
    name: "mp_session_commit",
    parameters: ["pointer", "pointer", ...errArgs],
    result: "i32",
    nonblocking: true,
  },
  /** int32_t mp_session_truncate(mp_engine *e, mp_session *s, int64_t n, char *err, size_t cap) */
  mp_session_truncate_async: {
    name: "mp_session_truncate",
    parameters: ["pointer", "pointer", "i64", ...errArgs],
    result: "i32",
    nonblocking: true,
  },
  /** int32_t mp_session_fork(mp_engine *e, const mp_session *src, const mp_session_params *p,
   *    int64_t n, mp_session **out, char *err, size_t cap) */
  mp_session_fork_async: {
    name: "mp_session_fork",
    parameters: ["pointer", "pointer", "buffer", "i64", "buffer", ...errArgs],
    result: "i32",
    nonblocking: true,
  },
  /** int32_t mp_session_get_info(const mp_session *s, mp_session_info *out) */
  mp_session_get_info: { parameters: ["pointer", "buffer"], result: "i32" },
  /** int32_t mp_decode_step(mp_engine *e, mp_session *const *sessions, int32_t n,
   *    const int32_t *tokens, float *logits, const int32_t *abort_flag, char *err, size_t cap) */
  mp_decode_step_async: {
    name: "mp_decode_step",
    parameters: decodeArgs,
    result: "i32",
    nonblocking: true,
  },
  /** int32_t mp_decode_submit(mp_engine *e, mp_session *const *sessions, int32_t n,
   *    const int32_t *tokens, float *logits, const int32_t *abort_flag, char *err, size_t cap) */
  mp_decode_submit: {
    parameters: decodeArgs,
    result: "i32",
  },
  /** int32_t mp_decode_wait(mp_engine *e) */
  mp_decode_wait_async: {
    name: "mp_decode_wait",
    parameters: ["pointer"],
    result: "i32",
    nonblocking: true,
  },
  /** int32_t mp_decode_finish(mp_engine *e, char *err, size_t cap) */
  mp_decode_finish: { parameters: ["pointer", ...errArgs], result: "i32" },
  /** int32_t mp_session_save(const mp_engine *e, const mp_session *s, const char *path,
   *    char *err, size_t cap) */
  mp_session_save_async: {
    name: "mp_session_save",
    parameters: ["pointer", "pointer", "buffer", ...errArgs],
    result: "i32",
    nonblocking: true,
  },
  /** int32_t mp_session_load(mp_engine *e, const char *path, mp_session **out, char *err,
   *    size_t cap) */
  mp_session_load_async: {
    name: "mp_session_load",
    parameters: ["pointer", "buffer", "buffer", ...errArgs],
    result: "i32",
    nonblocking: true,
  },

  // ------------------------------------------------------------
  // sampling

  /** void mp_sampling_default_params(mp_sampling_params *p) */
  mp_sampling_default_params: { parameters: ["buffer"], result: "void" },
  /** int32_t mp_sample(const float *logits, int32_t vocab, const mp_sampling_params *p,
   *    uint64_t *rng_state, int32_t *token, float *logprob, int32_t *top_ids,
   *    float *top_logprobs, char *err, size_t cap) */
  mp_sample: {
    parameters: [
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      ...errArgs,
    ],
    result: "i32",
  },

  // ------------------------------------------------------------
  // single ops

  /** int32_t mp_op_embedding(int32_t backend, int32_t dtype, const void *table, int32_t vocab,
   *    int32_t dim, const int32_t *tokens, int32_t n, float *out, char *err, size_t cap) */
  mp_op_embedding: {
    parameters: ["i32", "i32", "buffer", "i32", "i32", "buffer", "i32", "buffer", ...errArgs],
    result: "i32",
  },
  /** int32_t mp_op_rmsnorm(int32_t backend, const float *x, const float *w, int32_t n,
   *    int32_t dim, float eps, float *out, char *err, size_t cap) */
  mp_op_rmsnorm: {
    parameters: ["i32", "buffer", "buffer", "i32", "i32", "f32", "buffer", ...errArgs],
    result: "i32",
  },
  /** int32_t mp_op_rope(int32_t backend, float *x, int32_t n, int32_t heads, int32_t head_dim,
   *    const int32_t *positions, const mp_rope_params *rope, char *err, size_t cap) */
  mp_op_rope: {
    parameters: ["i32", "buffer", "i32", "i32", "i32", "buffer", "buffer", ...errArgs],
    result: "i32",
  },
  /** int32_t mp_op_matmul(int32_t backend, int32_t wdtype, const void *w, const float *x,
   *    int32_t n, int32_t in, int32_t out, float *y, char *err, size_t cap) */
  mp_op_matmul: {
    parameters: ["i32", "i32", "buffer", "buffer", "i32", "i32", "i32", "buffer", ...errArgs],
    result: "i32",
  },
  /** int32_t mp_op_attention(int32_t backend, int32_t kv_dtype, const float *q, const void *k,
   *    const void *v, int32_t n, int32_t T, int32_t H, int32_t Hkv, int32_t d, int32_t q_pos0,
   *    float *out, float *lse2, char *err, size_t cap) */
  mp_op_attention: {
    parameters: [
      "i32",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "buffer",
      "buffer",
      ...errArgs,
    ],
    result: "i32",
  },
  /** int32_t mp_op_swiglu(int32_t backend, const float *gate, const float *up, int64_t n,
   *    float *out, char *err, size_t cap) */
  mp_op_swiglu: {
    parameters: ["i32", "buffer", "buffer", "i64", "buffer", ...errArgs],
    result: "i32",
  },
  /** int32_t mp_op_merge(int32_t backend, const float *o1, const float *lse1, const float *o2,
   *    const float *lse2, int32_t n, int32_t d, float *out, float *lse_out, char *err,
   *    size_t cap) */
  mp_op_merge: {
    parameters: [
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "buffer",
      "buffer",
      ...errArgs,
    ],
    result: "i32",
  },

  // ------------------------------------------------------------
  // CUDA backend (tests and benchmarks)

  /** int32_t mp_gpu_set_kernel(const char *op, int32_t variant, char *err, size_t cap) */
  mp_gpu_set_kernel: { parameters: ["buffer", "i32", ...errArgs], result: "i32" },
  /** int32_t mp_decode_profile(double *out, int32_t n, int32_t reset) */
  mp_decode_profile: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  /** int32_t mp_gpu_sample(const float *logits, int32_t n, int32_t vocab,
   *    const mp_sampling_params *p, const float *u, int32_t *tokens, char *err, size_t cap) */
  mp_gpu_sample: {
    parameters: ["buffer", "i32", "i32", "buffer", "buffer", "buffer", ...errArgs],
    result: "i32",
  },
  /** int32_t mp_gpu_describe(char *out, size_t cap, char *err, size_t err_cap) */
  mp_gpu_describe: { parameters: ["buffer", "usize", ...errArgs], result: "i32" },

  // ------------------------------------------------------------
  // MagicPIG: LSH index, retrieval, sampled attention, baselines

  /** int32_t mp_lsh_projection(uint64_t seed, int32_t d, int32_t K, int32_t L, float *R,
   *    char *err, size_t cap) */
  mp_lsh_projection: {
    parameters: ["u64", "i32", "i32", "i32", "buffer", ...errArgs],
    result: "i32",
  },
  /** int32_t mp_lsh_hash(int32_t backend, const float *R, const float *x, int32_t n, int32_t d,
   *    int32_t K, int32_t L, uint16_t *codes, char *err, size_t cap) */
  mp_lsh_hash: {
    parameters: ["i32", "buffer", "buffer", "i32", "i32", "i32", "i32", "buffer", ...errArgs],
    result: "i32",
  },
  /** void mp_lsh_default_params(mp_lsh_params *p) */
  mp_lsh_default_params: { parameters: ["buffer"], result: "void" },
  /** int32_t mp_lsh_index_create(const mp_lsh_params *p, int32_t n_kv_heads, int32_t head_dim,
   *    int32_t kv_dtype, const void *keys, const void *values, int64_t n, mp_lsh_index **out,
   *    char *err, size_t cap) */
  mp_lsh_index_create_async: {
    name: "mp_lsh_index_create",
    parameters: ["buffer", "i32", "i32", "i32", "buffer", "buffer", "i64", "buffer", ...errArgs],
    result: "i32",
    nonblocking: true,
  },
  /** int32_t mp_lsh_index_append(mp_lsh_index *idx, const void *keys, const void *values,
   *    int64_t m, int32_t merge, char *err, size_t cap) */
  mp_lsh_index_append_async: {
    name: "mp_lsh_index_append",
    parameters: ["pointer", "buffer", "buffer", "i64", "i32", ...errArgs],
    result: "i32",
    nonblocking: true,
  },
  /** void mp_lsh_index_free(mp_lsh_index *idx) */
  mp_lsh_index_free: { parameters: ["pointer"], result: "void" },
  /** int32_t mp_lsh_index_get_info(const mp_lsh_index *idx, mp_lsh_index_info *out) */
  mp_lsh_index_get_info: { parameters: ["pointer", "buffer"], result: "i32" },
  /** int32_t mp_lsh_index_get_codes(const mp_lsh_index *idx, int32_t head, int64_t start,
   *    int64_t count, uint16_t *codes, char *err, size_t cap) */
  mp_lsh_index_get_codes: {
    parameters: ["pointer", "i32", "i64", "i64", "buffer", ...errArgs],
    result: "i32",
  },
  /** int32_t mp_lsh_index_get_table(const mp_lsh_index *idx, int32_t head, int32_t table,
   *    uint32_t *offsets, int32_t *indices, char *err, size_t cap) */
  mp_lsh_index_get_table: {
    parameters: ["pointer", "i32", "i32", "buffer", "buffer", ...errArgs],
    result: "i32",
  },
  /** int32_t mp_lsh_index_get_mean(const mp_lsh_index *idx, float *mean, float *norms,
   *    char *err, size_t cap) */
  mp_lsh_index_get_mean: { parameters: ["pointer", "buffer", "buffer", ...errArgs], result: "i32" },
  /** int32_t mp_lsh_retrieve(mp_lsh_index *const *idx, int32_t B, const float *q, int32_t H,
   *    const uint16_t *qcodes, int32_t flags, int64_t cap, int32_t *indices, int32_t *nnz,
   *    char *err, size_t cap) */
  mp_lsh_retrieve: {
    parameters: [
      "buffer",
      "i32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "i64",
      "buffer",
      "buffer",
      ...errArgs,
    ],
    result: "i32",
  },
  /** int32_t mp_lsh_retrieve_gpu(mp_lsh_index *const *idx, int32_t B, int32_t H,
   *    const uint16_t *qcodes, int64_t cap, int32_t *indices, int32_t *nnz, char *err,
   *    size_t cap) */
  mp_lsh_retrieve_gpu: {
    parameters: ["buffer", "i32", "i32", "buffer", "i64", "buffer", "buffer", ...errArgs],
    result: "i32",
  },
  /** int32_t mp_lsh_attention_offload(mp_lsh_index *const *idx, int32_t B, const float *q,
   *    int32_t H, const uint16_t *qcodes, int32_t flags, const uint8_t *offload_kv,
   *    int64_t off_cap, int32_t *off_ids, int32_t *off_n, int32_t *handed, float *out,
   *    float *lse2, int32_t *nnz, char *err, size_t cap) */
  mp_lsh_attention_offload: {
    parameters: [
      "buffer",
      "i32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "buffer",
      "i64",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      ...errArgs,
    ],
    result: "i32",
  },
  /** int32_t mp_lsh_attention(mp_lsh_index *const *idx, int32_t B, const float *q, int32_t H,
   *    const uint16_t *qcodes, int32_t flags, float *out, float *lse2, int32_t *nnz,
   *    mp_lsh_stats *stats, char *err, size_t cap) */
  mp_lsh_attention: {
    parameters: [
      "buffer",
      "i32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      ...errArgs,
    ],
    result: "i32",
  },
  /** int32_t mp_lsh_attention_sets(mp_lsh_index *const *idx, int32_t B, const float *q,
   *    int32_t H, const int32_t *sets, const int32_t *set_n, int64_t set_cap, int32_t flags,
   *    float *out, float *lse2, char *err, size_t cap) */
  mp_lsh_attention_sets: {
    parameters: [
      "buffer",
      "i32",
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "i64",
      "i32",
      "buffer",
      "buffer",
      ...errArgs,
    ],
    result: "i32",
  },
  /** int32_t mp_lsh_collision_weights(int32_t k, int32_t l, float eps, const float *cos,
   *    int64_t n, float *u, float *lnw, char *err, size_t cap) */
  mp_lsh_collision_weights: {
    parameters: ["i32", "i32", "f32", "buffer", "i64", "buffer", "buffer", ...errArgs],
    result: "i32",
  },
  /** int32_t mp_attention_topk(int32_t kv_dtype, const void *keys, const void *values,
   *    int64_t n, int32_t n_kv_heads, int32_t head_dim, const float *q, int32_t H, float budget,
   *    float *out, float *lse2, int32_t *nsel, char *err, size_t cap) */
  mp_attention_topk: {
    parameters: [
      "i32",
      "buffer",
      "buffer",
      "i64",
      "i32",
      "i32",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "buffer",
      "buffer",
      ...errArgs,
    ],
    result: "i32",
  },
  /** int32_t mp_attention_quest(int32_t kv_dtype, const void *keys, const void *values,
   *    int64_t n, int32_t n_kv_heads, int32_t head_dim, const float *q, int32_t H, float budget,
   *    int32_t page_size, float *out, float *lse2, int32_t *nsel, char *err, size_t cap) */
  mp_attention_quest: {
    parameters: [
      "i32",
      "buffer",
      "buffer",
      "i64",
      "i32",
      "i32",
      "buffer",
      "i32",
      "f32",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      ...errArgs,
    ],
    result: "i32",
  },
  /** int32_t mp_attention_oracle(int32_t kv_dtype, const void *keys, const void *values,
   *    int64_t n, int32_t n_kv_heads, int32_t head_dim, const float *q, int32_t H, float budget,
   *    uint64_t seed, float *out, float *lse2, int32_t *nsel, char *err, size_t cap) */
  mp_attention_oracle: {
    parameters: [
      "i32",
      "buffer",
      "buffer",
      "i64",
      "i32",
      "i32",
      "buffer",
      "i32",
      "f32",
      "u64",
      "buffer",
      "buffer",
      "buffer",
      ...errArgs,
    ],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The opened library's symbol functions. */
export type Symbols = Deno.DynamicLibrary<typeof symbols>["symbols"];
