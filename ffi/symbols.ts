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
} as const satisfies Deno.ForeignLibraryInterface;

/** The opened library's symbol functions. */
export type Symbols = Deno.DynamicLibrary<typeof symbols>["symbols"];
