import { assert, assertEquals, assertRejects, assertThrows } from "./_std.ts";
import { tempDir } from "./_tmp.ts";
import { hfLlamaConfig, hfTensorLoads, readHfConfig } from "../engine/model/hf.ts";
import {
  readSafetensorsHeader,
  type SafetensorsInput,
  writeSafetensors,
} from "../engine/model/safetensors.ts";
import { DType, RopeScaling, RopeStyle, TensorKind } from "../ffi/native.ts";
import { loadModel } from "../engine/model/loader.ts";

/** A Llama-3.1-8B config.json. */
const llama31 = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 4096,
  intermediate_size: 14336,
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 500000.0,
  rope_scaling: {
    factor: 8.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_max_position_embeddings: 8192,
    rope_type: "llama3",
  },
  max_position_embeddings: 131072,
  vocab_size: 128256,
  tie_word_embeddings: false,
  hidden_act: "silu",
  attention_bias: false,
  mlp_bias: false,
  torch_dtype: "bfloat16",
};

/** A tiny model: dim 8, 1 layer, 2 heads of 4, 1 KV head, ffn 16, vocab 4. */
const tinyConfig = {
  architectures: ["LlamaForCausalLM"],
  hidden_size: 8,
  intermediate_size: 16,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  num_hidden_layers: 1,
  vocab_size: 4,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: true,
};

function tinyTensors(dtype = "F32"): Record<string, SafetensorsInput> {
  const size = dtype === "F32" ? 4 : dtype === "F8_E4M3" ? 1 : 2;
  const shapes: Record<string, number[]> = {
    "model.embed_tokens.weight": [4, 8],
    "model.layers.0.input_layernorm.weight": [8],
    "model.layers.0.self_attn.q_proj.weight": [8, 8],
    "model.layers.0.self_attn.k_proj.weight": [4, 8],
    "model.layers.0.self_attn.v_proj.weight": [4, 8],
    "model.layers.0.self_attn.o_proj.weight": [8, 8],
    "model.layers.0.post_attention_layernorm.weight": [8],
    "model.layers.0.mlp.gate_proj.weight": [16, 8],
    "model.layers.0.mlp.up_proj.weight": [16, 8],
    "model.layers.0.mlp.down_proj.weight": [8, 16],
    "model.norm.weight": [8],
  };
  const out: Record<string, SafetensorsInput> = {};
  for (const [name, shape] of Object.entries(shapes)) {
    const n = shape.reduce((a, b) => a * b, 1);
    out[name] = { dtype, shape, data: new Uint8Array(n * size).fill(1) };
  }
  return out;
}

async function tinyDir(
  opts: {
    config?: Record<string, unknown>;
    tensors?: Record<string, SafetensorsInput>;
    shards?: number;
  } = {},
): Promise<string> {
  const dir = await tempDir();
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...tinyConfig, ...opts.config }));
  const tensors = opts.tensors ?? tinyTensors();
  const shards = opts.shards ?? 1;
  if (shards === 1) {
    await writeSafetensors(`${dir}/model.safetensors`, tensors);
    return dir;
  }
  const names = Object.keys(tensors);
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `model-0000${s + 1}-of-0000${shards}.safetensors`;
    const part: Record<string, SafetensorsInput> = {};
    names.filter((_, i) => i % shards === s).forEach((n) => {
      part[n] = tensors[n];
      weightMap[n] = file;
    });
    await writeSafetensors(`${dir}/${file}`, part);
  }
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }),
  );
  return dir;
}

Deno.test("hfLlamaConfig() maps a Llama-3.1 config.json, llama3 RoPE scaling included", () => {
  const c = hfLlamaConfig(llama31, "llama31");
  assertEquals(c, {
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
  });
  const explicit = hfLlamaConfig({ ...llama31, head_dim: 64, rope_scaling: null }, "x");
  assertEquals(explicit.head_dim, 64);
  assertEquals(explicit.rope.scaling, RopeScaling.NONE);
  // a Mistral config with no sliding window is a Llama model
  const mistral = { ...llama31, architectures: ["MistralForCausalLM"], sliding_window: null };
  assertEquals(hfLlamaConfig(mistral, "m").n_layers, 32);
});

Deno.test("hfLlamaConfig() refuses what the engine does not run, by name", () => {
  const cases: [Record<string, unknown>, string][] = [
    [
      { architectures: ["Qwen2ForCausalLM"], model_type: "qwen2" },
      `Cannot load model "m": architecture "Qwen2ForCausalLM" is not supported (supported: LlamaForCausalLM)`,
    ],
    [
      { architectures: ["MistralForCausalLM"], sliding_window: 4096 },
      `architecture "MistralForCausalLM" with sliding_window 4096 is not supported`,
    ],
    [{ rope_scaling: { rope_type: "yarn", factor: 4 } }, `RoPE scaling "yarn" is not supported`],
    [{ rope_scaling: { type: "linear", factor: 2 } }, `RoPE scaling "linear" is not supported`],
    [{ attention_bias: true }, "attention_bias is not supported"],
    [{ hidden_act: "gelu" }, `hidden_act "gelu" is not supported (supported: silu)`],
    [{ quantization_config: { quant_method: "gptq" } }, "quantized checkpoints"],
    [{ num_key_value_heads: 5 }, "not a multiple of num_key_value_heads 5"],
    [{ hidden_size: undefined }, `config.json has no "hidden_size"`],
  ];
  for (const [patch, msg] of cases) {
    assertThrows(() => hfLlamaConfig({ ...llama31, ...patch }, "m"), Error, msg);
  }
});

Deno.test("writeSafetensors() and readSafetensorsHeader() agree on names, shapes and offsets", async () => {
  const dir = await tempDir();
  const a = new Uint8Array(new Float32Array([1, 2, 3, 4, 5, 6]).buffer);
  const b = new Uint8Array([1, 0, 2, 0]);
  await writeSafetensors(`${dir}/t.safetensors`, {
    a: { dtype: "F32", shape: [2, 3], data: a },
    b: { dtype: "BF16", shape: [2], data: b },
  }, { format: "pt" });
  const h = await readSafetensorsHeader(`${dir}/t.safetensors`);
  assertEquals(h.metadata, { format: "pt" });
  assertEquals(h.dataOffset % 8, 0);
  const ta = h.tensors.get("a")!;
  const tb = h.tensors.get("b")!;
  assertEquals([ta.dtype, ta.shape, ta.nbytes], ["F32", [2, 3], 24]);
  assertEquals([tb.dtype, tb.shape, tb.nbytes, tb.offset], ["BF16", [2], 4, ta.offset + 24]);
  const file = await Deno.readFile(`${dir}/t.safetensors`);
  assertEquals(file.subarray(ta.offset, ta.offset + 24), a);
  assertEquals(file.subarray(tb.offset, tb.offset + 4), b);
});

Deno.test("readSafetensorsHeader() refuses a truncated file and a bad header", async () => {
  const dir = await tempDir();
  await writeSafetensors(`${dir}/t.safetensors`, {
    a: { dtype: "F32", shape: [4], data: new Uint8Array(16) },
  });
  const full = await Deno.readFile(`${dir}/t.safetensors`);
  await Deno.writeFile(`${dir}/cut.safetensors`, full.subarray(0, full.length - 4));
  await assertRejects(
    () => readSafetensorsHeader(`${dir}/cut.safetensors`),
    Error,
    `tensor "a" extends past the end of the file`,
  );
  const bad = new Uint8Array(16);
  new DataView(bad.buffer).setBigUint64(0, 8n, true);
  bad.set(new TextEncoder().encode("[1,2,3] "), 8);
  await Deno.writeFile(`${dir}/bad.safetensors`, bad);
  await assertRejects(
    () => readSafetensorsHeader(`${dir}/bad.safetensors`),
    Error,
    "the header is not a JSON object",
  );
});

Deno.test("hfTensorLoads() plans a sharded checkpoint through its index", async () => {
  const dir = await tinyDir({ shards: 3 });
  const { config } = await readHfConfig(dir);
  assertEquals(config.tied_embeddings, true);
  assertEquals(config.head_dim, 4);
  const loads = await hfTensorLoads(dir, config);
  assertEquals(loads.length, 11);
  const files = new Set(loads.map((l) => l.path));
  assertEquals(files.size, 3);
  for (const l of loads) {
    const h = await readSafetensorsHeader(l.path);
    const t = h.tensors.get(l.name)!;
    assertEquals([l.offset, l.nbytes, l.dtype], [t.offset, t.nbytes, DType.F32]);
  }
  const down = loads.find((l) => l.kind === TensorKind.W_DOWN)!;
  assertEquals(down.shape, [8, 16]);
});

Deno.test("hfTensorLoads() names missing tensors, unknown ones and unsupported dtypes", async () => {
  const noUp = tinyTensors();
  delete noUp["model.layers.0.mlp.up_proj.weight"];
  const extra = tinyTensors();
  extra["model.layers.0.self_attn.q_proj.bias"] = {
    dtype: "F32",
    shape: [8],
    data: new Uint8Array(32),
  };
  const cases: [string, string][] = [
    [await tinyDir({ tensors: noUp }), `tensor "model.layers.0.mlp.up_proj.weight" is missing`],
    [
      await tinyDir({ tensors: extra }),
      `tensor "model.layers.0.self_attn.q_proj.bias" is not part of the llama architecture`,
    ],
    [
      await tinyDir({ tensors: tinyTensors("F8_E4M3") }),
      `tensor "model.embed_tokens.weight" has dtype F8_E4M3, which is not supported (supported: F32, F16, BF16)`,
    ],
    [
      await tinyDir({ config: { tie_word_embeddings: false } }),
      `tensor "lm_head.weight" is missing`,
    ],
  ];
  for (const [dir, msg] of cases) {
    // loadModel fails while planning, before any native engine exists
    await assertRejects(
      () => loadModel({ path: dir }),
      Error,
      `Cannot load model "${dir}": ${msg}`,
    );
  }
});

Deno.test("hfTensorLoads() ignores lm_head.weight of a tied checkpoint and rotary buffers", async () => {
  const t = tinyTensors();
  t["lm_head.weight"] = { dtype: "F32", shape: [4, 8], data: new Uint8Array(128) };
  t["model.layers.0.self_attn.rotary_emb.inv_freq"] = {
    dtype: "F32",
    shape: [2],
    data: new Uint8Array(8),
  };
  const dir = await tinyDir({ tensors: t });
  const { config } = await readHfConfig(dir);
  const loads = await hfTensorLoads(dir, config);
  assertEquals(loads.length, 11);
  assert(!loads.some((l) => l.kind === TensorKind.OUTPUT));
});

Deno.test("loadModel() explains paths that are not models", async () => {
  const dir = await tempDir();
  await assertRejects(
    () => loadModel({ path: `${dir}/nope` }),
    Error,
    `Cannot load model "${dir}/nope": no such file or directory`,
  );
  await assertRejects(
    () => loadModel({ path: dir }),
    Error,
    `Cannot load model "${dir}": the directory has no config.json`,
  );
  await Deno.writeTextFile(`${dir}/weights.bin`, "x");
  await assertRejects(
    () => loadModel({ path: `${dir}/weights.bin` }),
    Error,
    "not a Hugging Face directory or a .gguf file",
  );
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(tinyConfig));
  await assertRejects(
    () => loadModel({ path: dir }),
    Error,
    "no model.safetensors or model.safetensors.index.json",
  );
});
