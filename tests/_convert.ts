/**
 * Converts a llama GGUF file with F32 tensors into a Hugging Face directory
 * (config.json + model.safetensors, no tokenizer), the way Hugging Face stores the same
 * model: Q and K rows un-permuted from llama.cpp's interleaved-pair order back to
 * rotate-half order. Loading both and comparing logits checks both loaders and both RoPE
 * conventions at once.
 *
 * llama.cpp's converter permutes each head's rows r = s·(d/2) + j (s = half, j = pair)
 * to r' = 2j + s; the inverse takes HF row s·(d/2) + j from GGUF row 2j + s.
 *
 * @module
 */
import { ggufLlamaConfig, ggufTensorLoads, readGguf } from "../engine/model/gguf.ts";
import { hfLayerTensor } from "../engine/model/hf.ts";
import { type SafetensorsInput, writeSafetensors } from "../engine/model/safetensors.ts";
import type { LayerPart } from "../engine/model/_llama.ts";
import { TensorKind } from "../ffi/native.ts";

/** HF row order from GGUF row order for a [heads·d][cols] matrix (F32 values). */
export function unpermuteRows(
  w: Float32Array<ArrayBuffer>,
  heads: number,
  headDim: number,
  cols: number,
): Float32Array<ArrayBuffer> {
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let s = 0; s < 2; s++) {
      for (let j = 0; j < half; j++) {
        const src = (h * headDim + 2 * j + s) * cols;
        const dst = (h * headDim + s * half + j) * cols;
        out.set(w.subarray(src, src + cols), dst);
      }
    }
  }
  return out;
}

const partOfKind: Record<number, LayerPart> = {
  [TensorKind.ATTN_NORM]: "attn_norm",
  [TensorKind.WQ]: "wq",
  [TensorKind.WK]: "wk",
  [TensorKind.WV]: "wv",
  [TensorKind.WO]: "wo",
  [TensorKind.FFN_NORM]: "ffn_norm",
  [TensorKind.W_GATE]: "w_gate",
  [TensorKind.W_DOWN]: "w_down",
  [TensorKind.W_UP]: "w_up",
};

/** Writes `outDir`/config.json and model.safetensors (F32) from a llama GGUF with F32 tensors. */
export async function ggufToHfDir(ggufPath: string, outDir: string): Promise<void> {
  const file = await readGguf(ggufPath);
  const c = ggufLlamaConfig(file);
  const loads = ggufTensorLoads(file, c);
  const bytes = await Deno.readFile(ggufPath);
  const tensors: Record<string, SafetensorsInput> = {};
  for (const l of loads) {
    if (l.nbytes !== l.shape.reduce((a, b) => a * b, 1) * 4) {
      throw new Error(`${l.name} is not F32`);
    }
    let w = new Float32Array(bytes.slice(l.offset, l.offset + l.nbytes).buffer);
    if (l.kind === TensorKind.WQ) w = unpermuteRows(w, c.n_heads, c.head_dim, c.dim);
    if (l.kind === TensorKind.WK) w = unpermuteRows(w, c.n_kv_heads, c.head_dim, c.dim);
    const name = l.kind === TensorKind.TOKEN_EMBD
      ? "model.embed_tokens.weight"
      : l.kind === TensorKind.OUTPUT_NORM
      ? "model.norm.weight"
      : l.kind === TensorKind.OUTPUT
      ? "lm_head.weight"
      : hfLayerTensor(l.layer, partOfKind[l.kind]);
    tensors[name] = { dtype: "F32", shape: l.shape, data: new Uint8Array(w.buffer) };
  }
  await writeSafetensors(`${outDir}/model.safetensors`, tensors, { format: "pt" });
  const config = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: c.dim,
    intermediate_size: c.ffn_dim,
    num_attention_heads: c.n_heads,
    num_key_value_heads: c.n_kv_heads,
    num_hidden_layers: c.n_layers,
    head_dim: c.head_dim,
    vocab_size: c.vocab_size,
    max_position_embeddings: c.max_context,
    rms_norm_eps: c.rms_eps,
    rope_theta: c.rope.theta,
    tie_word_embeddings: c.tied_embeddings,
    hidden_act: "silu",
    torch_dtype: "float32",
  };
  await Deno.writeTextFile(`${outDir}/config.json`, JSON.stringify(config, null, 2));
}
