import { tempDir } from "./_tmp.ts";
import { assert, assertEquals } from "./_std.ts";
import { maxAbsDiff, sharedModels, skipReason } from "./_util.ts";
import { ggufToHfDir, unpermuteRows } from "./_convert.ts";
import { loadModel } from "../engine/model/loader.ts";
import type { LoadedModel } from "../engine/model/types.ts";
import { AttentionMethod, decodeStep, RopeStyle, sample, Session } from "../ffi/native.ts";

const skip = skipReason("stories260K end-to-end tests");
const stories = sharedModels ? `${sharedModels}/stories260K/stories260K.gguf` : "";

interface Reference {
  prompt_run: {
    prompt: string;
    prompt_ids: number[];
    generated_ids: number[];
    per_step: { pos: number; token_in: number; argmax: number; top5: [number, number][] }[];
    logits_at_pos4_float32: number[];
  };
  bos_only_256: { prompt_ids: number[]; generated_ids: number[] };
}

async function reference(): Promise<Reference> {
  return JSON.parse(
    await Deno.readTextFile(`${sharedModels}/reference/stories260K_reference.json`),
  );
}

const greedy = { temperature: 0, topK: 0, topP: 1, nLogprobs: 0 };

/**
 * Prefills `prompt` on a dense session, then decodes greedily: returns the logits after
 * the prompt and after each generated token, and the `steps` generated tokens.
 */
async function runGreedy(
  model: LoadedModel,
  prompt: number[],
  steps: number,
): Promise<{ logits: Float32Array[]; tokens: number[] }> {
  const vocab = model.config.vocab_size;
  const session = await Session.create(model.engine, {
    attention: { method: AttentionMethod.DENSE },
  });
  try {
    const buf = new Float32Array(vocab);
    const rng = new BigUint64Array([1n]);
    await session.prefill(new Int32Array(prompt), { logits: buf });
    const logits = [buf.slice()];
    const tokens: number[] = [];
    for (;;) {
      const t = sample(buf, greedy, rng).token;
      tokens.push(t);
      if (tokens.length === steps) break;
      await decodeStep(model.engine, [session], Int32Array.of(t), buf);
      logits.push(buf.slice());
    }
    assertEquals(session.info().nTokens, prompt.length + steps - 1);
    return { logits, tokens };
  } finally {
    await session.close();
  }
}

Deno.test({
  name: "stories260K.gguf reproduces the reference prompt run: tokens, logits, top-5 per step",
  ignore: skip !== null,
  fn: async () => {
    const ref = await reference();
    const model = await loadModel({ path: stories });
    try {
      assertEquals(model.format, "gguf");
      assertEquals(model.config.rope.style, RopeStyle.INTERLEAVED);
      const prompt = model.tokenizer!.encode(ref.prompt_run.prompt);
      assertEquals(prompt, [1, 403, 407, 261, 378]);
      assertEquals(prompt, ref.prompt_run.prompt_ids);
      const run = await runGreedy(model, prompt, 20);
      assertEquals(run.tokens, ref.prompt_run.generated_ids);
      const want = ref.prompt_run.logits_at_pos4_float32;
      assertEquals(want.length, 512);
      const diff = maxAbsDiff(run.logits[0], want);
      assert(diff <= 1e-4, `logits at the last prompt position differ by ${diff}`);
      ref.prompt_run.per_step.forEach((step, i) => {
        assertEquals(run.tokens[i], step.argmax);
        for (const [id, logit] of step.top5) {
          const d = Math.abs(run.logits[i][id] - logit);
          assert(d <= 1e-4, `step ${i}: logit of ${id} differs by ${d}`);
        }
      });
      assertEquals(
        model.tokenizer!.decode([...prompt, ...run.tokens]),
        "Once upon a time, there was a little girl named Lily. She loved to play outsid",
      );
    } finally {
      await model.close();
    }
  },
});

Deno.test({
  name: "stories260K.gguf reproduces the reference's 256 greedy tokens from BOS alone",
  ignore: skip !== null,
  fn: async () => {
    const ref = await reference();
    const model = await loadModel({ path: stories });
    try {
      const run = await runGreedy(model, ref.bos_only_256.prompt_ids, 256);
      assertEquals(run.tokens, ref.bos_only_256.generated_ids);
    } finally {
      await model.close();
    }
  },
});

Deno.test("unpermuteRows() inverts llama.cpp's Q/K permutation", () => {
  // llama.cpp: reshape(heads, 2, d/2, cols).swapaxes(1, 2): GGUF row h·d + 2j + s holds
  // HF row h·d + s·d/2 + j
  const heads = 3, d = 4, cols = 2;
  const hf = Float32Array.from({ length: heads * d * cols }, (_, i) => i);
  const gguf = new Float32Array(hf.length);
  for (let h = 0; h < heads; h++) {
    for (let s = 0; s < 2; s++) {
      for (let j = 0; j < d / 2; j++) {
        for (let c = 0; c < cols; c++) {
          gguf[(h * d + 2 * j + s) * cols + c] = hf[(h * d + s * (d / 2) + j) * cols + c];
        }
      }
    }
  }
  assertEquals(unpermuteRows(gguf, heads, d, cols), hf);
});

Deno.test({
  name:
    "stories260K converted to a Hugging Face directory gives the GGUF logits (rotate-half RoPE)",
  ignore: skip !== null,
  fn: async () => {
    const ref = await reference();
    const dir = await tempDir("hf-stories");
    await ggufToHfDir(stories, dir);
    const logs: string[] = [];
    const hf = await loadModel({ path: dir, log: (m) => logs.push(m) });
    const gguf = await loadModel({ path: stories });
    try {
      assertEquals(hf.format, "hf");
      assertEquals(hf.config.rope.style, RopeStyle.HALF);
      assertEquals(hf.tokenizer, null); // no tokenizer files: token-id prompts only
      assertEquals(hf.chatTemplate, null);
      assert(logs.some((l) => l.includes("only token-id prompts")), logs.join("\n"));
      const prompt = ref.prompt_run.prompt_ids;
      const a = await runGreedy(hf, prompt, 20);
      const b = await runGreedy(gguf, prompt, 20);
      assertEquals(a.tokens, ref.prompt_run.generated_ids);
      assertEquals(a.tokens, b.tokens);
      a.logits.forEach((l, i) => {
        const diff = maxAbsDiff(l, b.logits[i]);
        assert(diff <= 1e-4, `step ${i}: HF and GGUF logits differ by ${diff}`);
      });
      const diff = maxAbsDiff(a.logits[0], ref.prompt_run.logits_at_pos4_float32);
      assert(diff <= 1e-4, `HF logits differ from the reference by ${diff}`);
    } finally {
      await hf.close();
      await gguf.close();
    }
  },
});
