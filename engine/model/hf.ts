/**
 * Hugging Face model directories: `config.json` of a Llama model mapped to the engine's
 * {@link ModelConfig}, and the weights of `model.safetensors` (or the shards listed in
 * `model.safetensors.index.json`) planned as uploads the native engine reads straight from
 * the files. Hugging Face stores Q and K for rotate-half RoPE, so these models run with
 * {@link RopeStyle.HALF}.
 *
 * @example
 * ```ts
 * import { readHfConfig, hfTensorLoads } from "./hf.ts";
 * const { config } = await readHfConfig("/models/Llama-3.2-1B");
 * const loads = await hfTensorLoads("/models/Llama-3.2-1B", config);
 * ```
 *
 * @module
 */
import { DType, type ModelConfig, RopeScaling, RopeStyle } from "../../ffi/native.ts";
import { type LayerPart, llamaTensorPlan, type TensorLoad } from "./_llama.ts";
import {
  readSafetensorsHeader,
  readSafetensorsIndex,
  type SafetensorsTensor,
} from "./safetensors.ts";

/** safetensors dtypes the engine loads, with their mp_dtype. */
const supportedDtypes: Record<string, number> = {
  F32: DType.F32,
  F16: DType.F16,
  BF16: DType.BF16,
};

const hfLayerNames: Record<LayerPart, string> = {
  attn_norm: "input_layernorm",
  wq: "self_attn.q_proj",
  wk: "self_attn.k_proj",
  wv: "self_attn.v_proj",
  wo: "self_attn.o_proj",
  ffn_norm: "post_attention_layernorm",
  w_gate: "mlp.gate_proj",
  w_down: "mlp.down_proj",
  w_up: "mlp.up_proj",
};

/** The Hugging Face name of a llama block tensor (`model.layers.3.self_attn.q_proj.weight`). */
export function hfLayerTensor(layer: number, part: LayerPart): string {
  return `model.layers.${layer}.${hfLayerNames[part]}.weight`;
}

/** Buffers some checkpoints carry that the forward pass does not use. */
const ignoredTensor = /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;

function failer(name: string): (detail: string) => never {
  return (detail: string): never => {
    throw new Error(`Cannot load model "${name}": ${detail}`);
  };
}

/** A JSON object as read from a config file. */
export type JsonObject = Record<string, unknown>;

/** Reads a JSON object file; null when the file does not exist. */
export async function readJsonObject(path: string): Promise<JsonObject | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new Error(`Cannot read "${path}": ${e instanceof Error ? e.message : e}`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new Error(`Cannot read "${path}": not a JSON object`);
  }
  return v as JsonObject;
}

/**
 * Maps a Llama `config.json` to the engine's model config. Mistral configs are accepted
 * only when they describe a plain Llama model (no sliding window); anything else the
 * engine does not run (other architectures, biases, activations other than SiLU, RoPE
 * scalings other than llama3, quantized checkpoints) fails with a message naming it.
 */
export function hfLlamaConfig(json: JsonObject, name: string): ModelConfig {
  const fail = failer(name);
  const archs = Array.isArray(json.architectures) ? json.architectures.map(String) : [];
  const type = typeof json.model_type === "string" ? json.model_type : undefined;
  const isLlama = archs.includes("LlamaForCausalLM") || (archs.length === 0 && type === "llama");
  const isMistral = archs.includes("MistralForCausalLM") ||
    (archs.length === 0 && type === "mistral");
  if (!isLlama && !isMistral) {
    const what = archs.length > 0 ? `architecture "${archs.join(", ")}"` : `model type "${type}"`;
    fail(`${what} is not supported (supported: LlamaForCausalLM)`);
  }
  if (isMistral) {
    const maxPos = Number(json.max_position_embeddings ?? 0);
    const sw = json.sliding_window;
    if (sw !== null && sw !== undefined && !(Number(sw) >= maxPos)) {
      fail(
        `architecture "MistralForCausalLM" with sliding_window ${sw} is not supported (only Mistral configs identical to Llama, with no sliding window)`,
      );
    }
  }
  if (json.quantization_config !== undefined && json.quantization_config !== null) {
    fail(`quantized checkpoints (quantization_config) are not supported`);
  }
  const act = json.hidden_act ?? json.hidden_activation ?? "silu";
  if (act !== "silu") fail(`hidden_act "${act}" is not supported (supported: silu)`);
  if (json.attention_bias === true) fail(`attention_bias is not supported`);
  if (json.mlp_bias === true) fail(`mlp_bias is not supported`);

  const num = (key: string, fallback?: number): number => {
    const v = json[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      return fail(`config.json has no "${key}"`);
    }
    if (typeof v !== "number" || !Number.isFinite(v)) return fail(`"${key}" is not a number`);
    return v;
  };
  const dim = num("hidden_size");
  const nHeads = num("num_attention_heads");
  const nKv = num("num_key_value_heads", nHeads);
  const headDim = num("head_dim", nHeads > 0 ? dim / nHeads : 0);
  const config: ModelConfig = {
    n_layers: num("num_hidden_layers"),
    dim,
    n_heads: nHeads,
    n_kv_heads: nKv,
    head_dim: headDim,
    ffn_dim: num("intermediate_size"),
    vocab_size: num("vocab_size"),
    max_context: num("max_position_embeddings", 2048),
    rms_eps: num("rms_norm_eps", 1e-6),
    tied_embeddings: json.tie_word_embeddings === true,
    rope: {
      theta: num("rope_theta", 10000),
      style: RopeStyle.HALF,
      scaling: RopeScaling.NONE,
      factor: 1,
      low_freq_factor: 1,
      high_freq_factor: 1,
      original_max_position: 0,
    },
  };
  for (const k of ["n_layers", "dim", "n_heads", "head_dim", "ffn_dim", "vocab_size"] as const) {
    if (!Number.isInteger(config[k]) || config[k] <= 0) fail(`${k} ${config[k]} is invalid`);
  }
  if (!Number.isInteger(nKv) || nKv <= 0 || nHeads % nKv !== 0) {
    fail(`num_attention_heads ${nHeads} is not a multiple of num_key_value_heads ${nKv}`);
  }
  if (json.partial_rotary_factor !== undefined && json.partial_rotary_factor !== 1) {
    fail(`partial_rotary_factor ${json.partial_rotary_factor} is not supported`);
  }
  const rs = json.rope_scaling;
  if (rs !== undefined && rs !== null) {
    if (typeof rs !== "object" || Array.isArray(rs)) fail(`"rope_scaling" is not an object`);
    const r = rs as JsonObject;
    const kind = r.rope_type ?? r.type;
    if (kind === "llama3") {
      const f = (k: string, fb?: number): number => {
        const v = r[k] ?? fb;
        if (typeof v !== "number" || !Number.isFinite(v)) fail(`rope_scaling.${k} is missing`);
        return v as number;
      };
      config.rope.scaling = RopeScaling.LLAMA3;
      config.rope.factor = f("factor");
      config.rope.low_freq_factor = f("low_freq_factor", 1);
      config.rope.high_freq_factor = f("high_freq_factor", 4);
      config.rope.original_max_position = f("original_max_position_embeddings", 8192);
    } else if (kind !== "default") {
      fail(`RoPE scaling "${kind}" is not supported (supported: llama3)`);
    }
  }
  return config;
}

/** Reads `dir/config.json` and maps it; `name` names the model in errors. */
export async function readHfConfig(
  dir: string,
  name: string = dir,
): Promise<{ config: ModelConfig; json: JsonObject }> {
  const json = await readJsonObject(`${dir}/config.json`);
  if (!json) throw new Error(`Cannot load model "${name}": config.json is missing`);
  return { config: hfLlamaConfig(json, name), json };
}

/**
 * Plans the upload of every weight of a Hugging Face Llama directory: reads the
 * safetensors headers (one file or the shards of the index), checks names, dtypes and
 * shapes, and returns absolute file offsets for the native reader.
 */
export async function hfTensorLoads(
  dir: string,
  config: ModelConfig,
  name: string = dir,
): Promise<TensorLoad[]> {
  const fail = failer(name);
  const index = await readSafetensorsIndex(dir);
  let files: string[];
  if (index) {
    files = [...new Set(index.values())];
  } else {
    try {
      await Deno.stat(`${dir}/model.safetensors`);
    } catch {
      fail(`no model.safetensors or model.safetensors.index.json in the directory`);
    }
    files = ["model.safetensors"];
  }
  const headers = await Promise.all(files.map((f) => readSafetensorsHeader(`${dir}/${f}`)));
  const all = new Map<string, SafetensorsTensor & { file: string }>();
  headers.forEach((h) => {
    for (const [n, t] of h.tensors) {
      if (all.has(n)) fail(`tensor "${n}" appears in two files`);
      all.set(n, { ...t, file: h.path });
    }
  });
  if (index) {
    for (const [n, f] of index) {
      const t = all.get(n);
      if (!t) fail(`tensor "${n}" is listed in the index but not found in "${f}"`);
      if (t!.file !== `${dir}/${f}`) fail(`tensor "${n}" is not in the file the index names`);
    }
  }
  const plan = llamaTensorPlan(config, {
    embd: "model.embed_tokens.weight",
    outNorm: "model.norm.weight",
    out: "lm_head.weight",
    layer: hfLayerTensor,
  });
  const planned = new Set(plan.map((p) => p.name));
  for (const n of all.keys()) {
    if (planned.has(n) || ignoredTensor.test(n)) continue;
    if (n === "lm_head.weight" && config.tied_embeddings) continue; // tied: the embedding wins
    fail(`tensor "${n}" is not part of the llama architecture this engine runs`);
  }
  return plan.map((p) => {
    const t = all.get(p.name);
    if (!t) return fail(`tensor "${p.name}" is missing`);
    const dtype = supportedDtypes[t.dtype];
    if (dtype === undefined) {
      fail(
        `tensor "${p.name}" has dtype ${t.dtype}, which is not supported (supported: F32, F16, BF16)`,
      );
    }
    if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i])) {
      fail(`tensor "${p.name}" has shape [${t.shape}], expected [${p.shape}]`);
    }
    return {
      name: p.name,
      kind: p.kind,
      layer: p.layer,
      shape: p.shape,
      dtype,
      path: t.file,
      offset: t.offset,
      nbytes: t.nbytes,
    };
  });
}

/**
 * End-of-generation ids from `generation_config.json` (`eos_token_id`, a number or a list);
 * empty when the file is absent.
 */
export async function readGenerationEosIds(dir: string): Promise<number[]> {
  const g = await readJsonObject(`${dir}/generation_config.json`);
  const v = g?.eos_token_id;
  if (typeof v === "number") return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === "number");
  return [];
}
