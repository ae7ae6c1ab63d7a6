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
