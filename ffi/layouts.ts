/**
 * TypeScript layouts of the parameter structs in `magicpig.h`, field for field. A test
 * compares each size with the library's `mp_struct_size()`.
 *
 * @module
 */
import { StructLayout } from "./_struct.ts";

/** mp_rope_params */
export const ropeParams = new StructLayout([
  ["theta", "f32"],
  ["style", "i32"],
  ["scaling", "i32"],
  ["factor", "f32"],
  ["low_freq_factor", "f32"],
  ["high_freq_factor", "f32"],
  ["original_max_position", "i32"],
]);

/** mp_model_config */
export const modelConfig = new StructLayout([
  ["size", "usize"],
  ["n_layers", "i32"],
  ["dim", "i32"],
  ["n_heads", "i32"],
  ["n_kv_heads", "i32"],
  ["head_dim", "i32"],
  ["ffn_dim", "i32"],
  ["vocab_size", "i32"],
  ["max_context", "i32"],
  ["rms_eps", "f32"],
  ["tied_embeddings", "i32"],
  ["rope", { struct: ropeParams }],
]);

/** mp_engine_params */
export const engineParams = new StructLayout([
  ["size", "usize"],
  ["model", { struct: modelConfig }],
  ["backend", "i32"],
  ["device", "i32"],
  ["weight_dtype", "i32"],
  ["kv_dtype", "i32"],
  ["gpu_memory_budget", "i64"],
  ["max_batch", "i32"],
  ["prefill_chunk", "i32"],
]);

/** mp_engine_info */
export const engineInfo = new StructLayout([
  ["size", "usize"],
  ["backend", "i32"],
  ["device", "i32"],
  ["weight_dtype", "i32"],
  ["kv_dtype", "i32"],
  ["weight_bytes", "i64"],
  ["gpu_bytes_in_use", "i64"],
  ["gpu_bytes_peak", "i64"],
  ["gpu_bytes_total", "i64"],
  ["device_name", { chars: 64 }],
]);

/** mp_attention_params */
export const attentionParams = new StructLayout([
  ["size", "usize"],
  ["method", "i32"],
  ["lsh_k", "i32"],
  ["lsh_l", "i32"],
  ["sinks", "i32"],
  ["window", "i32"],
  ["gen_buffer", "i32"],
  ["eps", "f32"],
  ["budget", "f32"],
  ["page_size", "i32"],
  ["seed", "u64"],
  ["n_dense_layers", "i32"],
  ["dense_layers", { array: "i32", length: 16 }],
]);

/** mp_session_params */
export const sessionParams = new StructLayout([
  ["size", "usize"],
  ["attention", { struct: attentionParams }],
  ["reserve_tokens", "i64"],
]);

/** mp_session_info */
export const sessionInfo = new StructLayout([
  ["size", "usize"],
  ["n_tokens", "i64"],
  ["n_indexed", "i64"],
  ["host_kv_bytes", "i64"],
  ["host_index_bytes", "i64"],
  ["gpu_bytes", "i64"],
  ["keys_attended", "f64"],
  ["keys_offloaded", "f64"],
  ["method", "i32"],
  ["lsh_k", "i32"],
  ["lsh_l", "i32"],
  ["seed", "u64"],
]);

/** mp_sampling_params */
export const samplingParams = new StructLayout([
  ["size", "usize"],
  ["temperature", "f32"],
  ["top_k", "i32"],
  ["top_p", "f32"],
  ["n_logprobs", "i32"],
]);

/** mp_lsh_params */
export const lshParams = new StructLayout([
  ["size", "usize"],
  ["k", "i32"],
  ["l", "i32"],
  ["seed", "u64"],
  ["eps", "f32"],
  ["center", "i32"],
  ["tail_max", "i64"],
]);

/** mp_lsh_index_info */
export const lshIndexInfo = new StructLayout([
  ["size", "usize"],
  ["n_tokens", "i64"],
  ["n_blocked", "i64"],
  ["n_tail", "i64"],
  ["n_kv_heads", "i32"],
  ["head_dim", "i32"],
  ["kv_dtype", "i32"],
  ["k", "i32"],
  ["l", "i32"],
  ["center", "i32"],
  ["seed", "u64"],
  ["eps", "f32"],
  ["entry_bytes", "i64"],
  ["offset_bytes", "i64"],
  ["tail_bytes", "i64"],
  ["norm_bytes", "i64"],
  ["kv_bytes", "i64"],
  ["bytes_per_token", "f64"],
]);

/** mp_lsh_stats */
export const lshStats = new StructLayout([
  ["size", "usize"],
  ["rows", "i64"],
  ["sampled", "i64"],
  ["entries", "i64"],
  ["bytes", "i64"],
  ["tasks", "i64"],
]);

/** Every layout by its C name, for the size check. */
export const allLayouts: Record<string, StructLayout> = {
  mp_rope_params: ropeParams,
  mp_model_config: modelConfig,
  mp_engine_params: engineParams,
  mp_engine_info: engineInfo,
  mp_attention_params: attentionParams,
  mp_session_params: sessionParams,
  mp_session_info: sessionInfo,
  mp_sampling_params: samplingParams,
  mp_lsh_params: lshParams,
  mp_lsh_index_info: lshIndexInfo,
  mp_lsh_stats: lshStats,
};
