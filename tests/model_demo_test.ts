import { tempDir } from "./_tmp.ts";
import { assert, assertEquals, assertStringIncludes } from "./_std.ts";
import {
  checkDemoModel,
  DEMO_MODEL_ID,
  DEMO_VERSION,
  DEMO_WEIGHTS_SHA256,
  ensureDemoModel,
  writeDemoModel,
} from "../engine/model/demo.ts";
import { readHfConfig } from "../engine/model/hf.ts";
import { loadModel } from "../engine/model/loader.ts";
import {
  AttentionMethod,
  decodeStep,
  RopeScaling,
  RopeStyle,
  sample,
  Session,
} from "../ffi/native.ts";

async function sha256(path: string): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(path)));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function hashes(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for await (const e of Deno.readDir(dir)) out[e.name] = await sha256(`${dir}/${e.name}`);
  return out;
}

Deno.test("writeDemoModel() writes the same bytes every time, pinned by DEMO_WEIGHTS_SHA256", async () => {
  const a = await tempDir("demo-a");
  const b = await tempDir("demo-b");
  await writeDemoModel(a);
  await writeDemoModel(b);
  const ha = await hashes(a);
  assertEquals(ha, await hashes(b));
  assertEquals(ha["model.safetensors"], DEMO_WEIGHTS_SHA256);
  assertEquals(Object.keys(ha).sort(), [
    "README.md",
    "config.json",
    "generation_config.json",
    "magicpig-manifest.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
  ]);
  assertStringIncludes(await Deno.readTextFile(`${a}/README.md`), "RANDOM");
  const { config } = await readHfConfig(a);
  assertEquals([config.n_layers, config.dim, config.n_heads, config.n_kv_heads], [4, 256, 8, 2]);
  assertEquals([config.ffn_dim, config.vocab_size, config.max_context], [768, 128256, 8192]);
  assertEquals(config.rope.theta, 500000);
  assertEquals(config.rope.style, RopeStyle.HALF);
  assertEquals(config.rope.scaling, RopeScaling.LLAMA3);
  assertEquals(config.rope.factor, 8);
  assertEquals(config.tied_embeddings, true);
});

Deno.test("ensureDemoModel() generates once, reuses the cache, and regenerates a broken one", async () => {
  const root = await tempDir("cache");
  const logs: string[] = [];
  const log = (m: string) => logs.push(m);
  const dir = await ensureDemoModel({ root, log });
  assertEquals(dir, `${root}/${DEMO_VERSION}`);
  assertEquals(logs.length, 1);
  assertStringIncludes(logs[0], "random weights");
  assertEquals(await checkDemoModel(dir), null);
  const before = (await Deno.stat(`${dir}/model.safetensors`)).mtime;

  assertEquals(await ensureDemoModel({ root, log }), dir);
  assertEquals(logs.length, 1); // reused, nothing generated
  assertEquals((await Deno.stat(`${dir}/model.safetensors`)).mtime, before);

  // flip one byte of the weights: the manifest check catches it
  const f = await Deno.open(`${dir}/model.safetensors`, { read: true, write: true });
  await f.seek(1_000_000, Deno.SeekMode.Start);
  const b = new Uint8Array(1);
  await f.read(b);
  await f.seek(1_000_000, Deno.SeekMode.Start);
  await f.write(Uint8Array.of(b[0] ^ 0xff));
  f.close();
  assertEquals(await checkDemoModel(dir), `"model.safetensors" fails its checksum`);
  assertEquals(await ensureDemoModel({ root, log }), dir);
  assertEquals(logs.length, 2);
  assertStringIncludes(logs[1], "unusable");
  assertEquals(await checkDemoModel(dir), null);

  // a half-written folder (no manifest) is regenerated too, and no temp folder is left
  await Deno.remove(`${dir}/magicpig-manifest.json`);
  await ensureDemoModel({ root, log });
  assertEquals(await checkDemoModel(dir), null);
  const left: string[] = [];
  for await (const e of Deno.readDir(root)) left.push(e.name);
  assertEquals(left, [DEMO_VERSION]);
});

Deno.test("loadModel() without a path serves the demo model with its tokenizer and template", async () => {
  const root = await tempDir("cache");
  const logs: string[] = [];
  const model = await loadModel({ cacheRoot: root, log: (m) => logs.push(m) });
  try {
    assertEquals(model.id, DEMO_MODEL_ID);
    assertEquals(model.format, "demo");
    assertEquals(model.path, `${root}/${DEMO_VERSION}`);
    assert(logs.some((l) => l.includes("RANDOM WEIGHTS")), logs.join("\n"));
    assertEquals(model.eosIds, [128001, 128009]);
    assertEquals(model.tokenizer?.bosId, 128000);
    assertEquals(model.tokenizer?.vocabSize, model.config.vocab_size);
    const text = model.chatTemplate!.render([{ role: "user", content: "Hi" }], {
      addGenerationPrompt: true,
    });
    assert(model.chatTemplate!.includesBos);
    const ids = model.tokenizer!.encode(text, { addSpecialTokens: false });
    assertEquals(ids[0], 128000);
    for (const phase of ["demo", "parse", "weights", "tokenizer", "finalize"]) {
      assert(model.timings[phase] >= 0, phase);
    }
    assertEquals(model.engine.info().weightBytes > 0n, true);

    // the BF16 weights run: finite logits, and the same greedy tokens on two sessions
    const greedy = async () => {
      const s = await Session.create(model.engine, {
        attention: { method: AttentionMethod.DENSE },
      });
      const logits = new Float32Array(model.config.vocab_size);
      const rng = new BigUint64Array([7n]);
      await s.prefill(new Int32Array(ids), { logits });
      assert(logits.every(Number.isFinite));
      const out: number[] = [];
      for (let i = 0; i < 4; i++) {
        out.push(sample(logits, { temperature: 0, topK: 0, topP: 1, nLogprobs: 0 }, rng).token);
        await decodeStep(model.engine, [s], Int32Array.of(out[i]), logits);
      }
      await s.close();
      return out;
    };
    const first = await greedy();
    assertEquals(await greedy(), first);
    assert(first.every((t) => t >= 0 && t < model.config.vocab_size));
  } finally {
    await model.close();
  }
});
