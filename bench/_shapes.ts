/**
 * Model shapes the benchmarks build with seeded random weights.
 *
 * @module
 */
import { type ModelConfig, RopeScaling, RopeStyle } from "../ffi/native.ts";

/** The exact Llama-3.1-8B shape (32 layers, 4096 hidden, 14336 FFN, 32/8 heads, 128,256 vocab). */
export const llama31_8b: ModelConfig = {
  n_layers: 32,
  dim: 4096,
  n_heads: 32,
  n_kv_heads: 8,
  head_dim: 128,
  ffn_dim: 14336,
  vocab_size: 128256,
  max_context: 131072,
  rms_eps: 1e-5,
  tied_embeddings: false,
  rope: {
    theta: 500000,
    style: RopeStyle.HALF,
    scaling: RopeScaling.LLAMA3,
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position: 8192,
  },
};
