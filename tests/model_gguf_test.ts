import { tempDir } from "./_tmp.ts";
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertRejects,
  assertStringIncludes,
} from "./_std.ts";
import { sharedModels, skipReason } from "./_util.ts";
import { ggufBytes, tinyLlamaKv, tinyLlamaTensors } from "./_gguf.ts";
import {
  applyGgufRopeFreqs,
  fitLlama3Rope,
  ggufLlamaConfig,
  ggufTensorLoads,
  llama3RopeDivisors,
  readGguf,
} from "../engine/model/gguf.ts";
import { RopeScaling, RopeStyle, TensorKind } from "../ffi/native.ts";
import { loadModel } from "../engine/model/loader.ts";

const skip = skipReason("GGUF model tests");
const stories = sharedModels ? `${sharedModels}/stories260K/stories260K.gguf` : "";

async function tempFile(bytes: Uint8Array, name = "model.gguf"): Promise<string> {
  const dir = await tempDir();
  const path = `${dir}/${name}`;
  await Deno.writeFile(path, bytes);
  return path;
}

Deno.test({
  name: "readGguf() parses stories260K's header and ggufLlamaConfig() gives the README's shape",
  ignore: skip !== null,
  fn: async () => {
    const f = await readGguf(stories);
    assertEquals(f.version, 3);
    assertEquals(f.alignment, 32);
    assertEquals(f.tensors.length, 48); // 3 globals + 5 layers × 9
    assertEquals(f.metadata.get("tokenizer.ggml.model"), "llama");
    const c = ggufLlamaConfig(f);
    assertEquals(c.dim, 64);
    assertEquals(c.ffn_dim, 172);
    assertEquals(c.n_layers, 5);
    assertEquals(c.n_heads, 8);
    assertEquals(c.n_kv_heads, 4);
    assertEquals(c.head_dim, 8);
    assertEquals(c.vocab_size, 512);
    assertAlmostEquals(c.rms_eps, 1e-5, 1e-12);
    assertEquals(c.rope.theta, 10000);
    assertEquals(c.rope.style, RopeStyle.INTERLEAVED);
    assertEquals(c.rope.scaling, RopeScaling.NONE);
    assertEquals(c.max_context, 2048); // the file's llama.context_length (trained on 512)
    // the GGUF carries its own copy of the classifier
    assertEquals(c.tied_embeddings, false);
  },
});

Deno.test({
  name: "ggufTensorLoads() maps every stories260K tensor to [out, in] inside the file",
  ignore: skip !== null,
  fn: async () => {
    const f = await readGguf(stories);
    const c = ggufLlamaConfig(f);
    const loads = ggufTensorLoads(f, c);
    assertEquals(loads.length, 48);
    const q = loads.find((l) => l.name === "blk.0.attn_q.weight")!;
    assertEquals(q.kind, TensorKind.WQ);
    assertEquals(q.shape, [64, 64]);
    const k = loads.find((l) => l.name === "blk.3.attn_k.weight")!;
    assertEquals([k.kind, k.layer, k.shape], [TensorKind.WK, 3, [32, 64]]);
    const down = loads.find((l) => l.name === "blk.4.ffn_down.weight")!;
    assertEquals(down.shape, [64, 172]); // GGUF lists it as [172, 64]
    for (const l of loads) {
      assertEquals(l.nbytes, l.shape.reduce((a, b) => a * b, 1) * 4);
      assert(l.offset >= f.dataOffset && l.offset + l.nbytes <= f.fileSize, l.name);
      assertEquals(l.offset % 32, 0);
    }
  },
});

Deno.test("readGguf() reads every metadata value type of a synthetic file", async () => {
  const path = await tempFile(ggufBytes(
    [
      ["a.u32", { type: "u32", value: 7 }],
      ["a.i32", { type: "i32", value: -3 }],
      ["a.f32", { type: "f32", value: 0.5 }],
      ["a.u64", { type: "u64", value: 1n << 40n }],
      ["a.bool", { type: "bool", value: true }],
      ["a.str", { type: "string", value: "héllo ▁" }],
      ["a.strs", { type: "array", of: "string", value: ["x", "", "yz"] }],
      ["a.f32s", { type: "array", of: "f32", value: [1, -2.5] }],
      ["a.i32s", { type: "array", of: "i32", value: [-1, 2, 3] }],
      ["general.alignment", { type: "u32", value: 64 }],
    ],
    [{ name: "t", dims: [3, 2], type: 0, data: new Uint8Array(24) }],
    64,
  ));
  const f = await readGguf(path);
  const m = f.metadata;
  assertEquals(m.get("a.u32"), 7);
  assertEquals(m.get("a.i32"), -3);
  assertEquals(m.get("a.f32"), 0.5);
  assertEquals(m.get("a.u64"), 1n << 40n);
  assertEquals(m.get("a.bool"), true);
  assertEquals(m.get("a.str"), "héllo ▁");
  assertEquals(m.get("a.strs"), ["x", "", "yz"]);
  assertEquals(Array.from(m.get("a.f32s") as Float32Array), [1, -2.5]);
  assertEquals(Array.from(m.get("a.i32s") as Int32Array), [-1, 2, 3]);
  assertEquals(f.alignment, 64);
  assertEquals(f.dataOffset % 64, 0);
  assertEquals(f.tensors[0].offset, f.dataOffset);
  assertEquals(f.tensors[0].dims, [3, 2]);
});

Deno.test("loadModel() refuses a GGUF tensor type it cannot load, naming tensor and type", async () => {
  const path = await tempFile(
    ggufBytes(tinyLlamaKv(), tinyLlamaTensors({ name: "blk.0.attn_q.weight", type: 12 })),
    "x.gguf",
  );
  const err = await assertRejects(() => loadModel({ path }), Error);
  assertEquals(
    err.message,
    `Cannot load model "${path}": tensor "blk.0.attn_q.weight" has type Q4_K, which is not supported (supported: F32, F16, BF16)`,
  );
});

Deno.test("loadModel() refuses a GGUF architecture other than llama by name", async () => {
  const kv = tinyLlamaKv({ "general.architecture": { type: "string", value: "qwen2" } });
  const path = await tempFile(ggufBytes(kv, tinyLlamaTensors()), "q.gguf");
  await assertRejects(
    () => loadModel({ path }),
    Error,
    `Cannot load model "${path}": architecture "qwen2" is not supported (supported: llama)`,
  );
});

Deno.test("ggufTensorLoads() names a missing, an extra and a misshapen tensor", async () => {
  const tensors = tinyLlamaTensors();
  const cases: [typeof tensors, string][] = [
    [
      tensors.filter((t) => t.name !== "blk.0.ffn_up.weight"),
      `tensor "blk.0.ffn_up.weight" is missing`,
    ],
    [
      [...tensors, { name: "blk.0.attn_q.bias", dims: [8], type: 0, data: new Uint8Array(32) }],
      `tensor "blk.0.attn_q.bias" is not part of the llama architecture`,
    ],
    [
      tensors.map((t) => t.name === "blk.0.attn_k.weight" ? { ...t, dims: [4, 8] } : t),
      `tensor "blk.0.attn_k.weight" has shape [8,4], expected [4,8]`,
    ],
  ];
  for (const [ts, msg] of cases) {
    const f = await readGguf(await tempFile(ggufBytes(tinyLlamaKv(), ts)));
    let err: Error | null = null;
    try {
      ggufTensorLoads(f, ggufLlamaConfig(f));
    } catch (e) {
      err = e as Error;
    }
    assert(err !== null, msg);
    assertStringIncludes(err.message, msg);
  }
});

Deno.test("ggufLlamaConfig() ties the embeddings when output.weight is absent", async () => {
  const f = await readGguf(await tempFile(ggufBytes(tinyLlamaKv(), tinyLlamaTensors())));
  const c = ggufLlamaConfig(f);
  assertEquals(c.tied_embeddings, true);
  assertEquals(c.vocab_size, 4); // from token_embd's shape: no vocabulary in the file
  assertEquals(c.head_dim, 4);
  assertEquals(ggufTensorLoads(f, c).some((l) => l.kind === TensorKind.OUTPUT), false);
});

Deno.test("readGguf() explains a file damaged by a text conversion", async () => {
  const clean = ggufBytes(tinyLlamaKv(), tinyLlamaTensors());
  // what a lossy UTF-8 round trip does to a binary file
  const damaged = new TextEncoder().encode(new TextDecoder().decode(clean));
  const path = await tempFile(damaged);
  await assertRejects(() => readGguf(path), Error, "damaged by a text conversion");
});

Deno.test("readGguf() refuses a file that is not GGUF", async () => {
  const path = await tempFile(new TextEncoder().encode("not a gguf file at all"));
  await assertRejects(() => readGguf(path), Error, "bad magic");
});

Deno.test("fitLlama3Rope() recovers Llama-3 scaling from llama.cpp's rope_freqs divisors", () => {
  const d = Float32Array.from(llama3RopeDivisors(128, 500000, 8, 1, 4, 8192));
  assert(d.some((x) => x === 1) && d.some((x) => x === 8) && d.some((x) => x > 1 && x < 8));
  assertEquals(fitLlama3Rope(d, 128, 500000), { factor: 8, low: 1, high: 4, original: 8192 });
  const other = d.map((x, i) => (i === 40 ? x * 1.5 : x));
  assertEquals(fitLlama3Rope(other, 128, 500000), null);
});

Deno.test("applyGgufRopeFreqs() turns a rope_freqs.weight tensor into llama3 scaling", async () => {
  const headDim = 4;
  const kv = tinyLlamaKv({ "llama.rope.freq_base": { type: "f32", value: 500000 } });
  // head size 4 has two frequencies, 1 and 500000^-0.5 (wavelengths 6.3 and 4443); an
  // original context of 32 keeps the first (wavelength < 32/4) and divides the second
  kv.push(["llama.rope.scaling.original_context_length", { type: "u32", value: 32 }]);
  const div = Float32Array.from(llama3RopeDivisors(headDim, 500000, 8, 1, 4, 32));
  assertEquals(Array.from(div), [1, 8]);
  const tensors = [
    ...tinyLlamaTensors(),
    { name: "rope_freqs.weight", dims: [2], type: 0, data: new Uint8Array(div.buffer) },
  ];
  const f = await readGguf(await tempFile(ggufBytes(kv, tensors)));
  const c = ggufLlamaConfig(f);
  await applyGgufRopeFreqs(f, c);
  assertEquals(c.rope.scaling, RopeScaling.LLAMA3);
  assertEquals(c.rope.factor, 8);
  assertEquals(c.rope.original_max_position, 32);
  assertEquals(ggufTensorLoads(f, c).length, tensors.length - 1); // rope_freqs is not uploaded
});
