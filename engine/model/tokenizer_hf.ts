/**
 * Hugging Face tokenizers (`tokenizer.json` + `tokenizer_config.json`) through the npm
 * package `@huggingface/tokenizers`, behind the engine's {@link Tokenizer} interface.
 *
 * BOS/EOS: `tokenizer_config.json`'s `add_bos_token` / `add_eos_token`, when set, decide
 * whether `encode` adds them (as transformers' Llama tokenizers do); when unset, the
 * tokenizer.json post-processor decides. End-of-generation ids are the config's
 * `eos_token` plus whatever the caller adds (generation_config.json).
 *
 * Decoding never applies `clean_up_tokenization_spaces`: it rewrites text (" ," → ",")
 * and would make streamed pieces differ from the whole.
 *
 * @example
 * ```ts
 * import { HfTokenizer } from "./tokenizer_hf.ts";
 * const tok = await HfTokenizer.fromDir("/models/Llama-3.2-1B");
 * tok?.encode("Hello");
 * ```
 *
 * @module
 */
import { Tokenizer as HfLibTokenizer } from "@huggingface/tokenizers";
import type { Tokenizer } from "./types.ts";
import { type JsonObject, readJsonObject } from "./hf.ts";
import { type GgufFile, GgufMeta } from "./gguf.ts";

/** Pre-tokenizer regexes of the GGUF BPE vocabularies we can rebuild, by tokenizer.ggml.pre. */
const ggufBpePre: Record<string, string> = {
  // Llama 3 (tokenizer.json's own pattern; llama.cpp also maps dbrx and smaug to it)
  "llama-bpe": String
    .raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
};
ggufBpePre["llama3"] = ggufBpePre["llama-bpe"];
ggufBpePre["dbrx"] = ggufBpePre["llama-bpe"];
ggufBpePre["smaug-bpe"] = ggufBpePre["llama-bpe"];

/**
 * Rebuilds a tokenizer.json and tokenizer_config.json from a GGUF BPE vocabulary
 * (`tokenizer.ggml.model = "gpt2"`, as in Llama-3 GGUF files): byte-level BPE over the
 * file's tokens and merges, its control and user-defined tokens as added tokens, the
 * pre-tokenizer regex named by `tokenizer.ggml.pre`. Throws for pre-tokenizers it does
 * not know.
 */
export function ggufBpeTokenizerFiles(
  file: GgufFile,
): { json: JsonObject; config: JsonObject; extraEosIds: number[] } {
  const fail = (d: string): never => {
    throw new Error(`Cannot load the tokenizer of "${file.path}": ${d}`);
  };
  const m = new GgufMeta(file, fail);
  const pre = m.string("tokenizer.ggml.pre") ?? "default";
  const regex = ggufBpePre[pre];
  if (!regex) {
    fail(
      `BPE pre-tokenizer "${pre}" is not supported (supported: ${
        Object.keys(ggufBpePre).join(", ")
      })`,
    );
  }
  const tokens = m.strings("tokenizer.ggml.tokens") ?? fail("tokenizer.ggml.tokens is missing");
  const merges = m.strings("tokenizer.ggml.merges") ?? fail("tokenizer.ggml.merges is missing");
  const types = m.numbers("tokenizer.ggml.token_type");
  const vocab: Record<string, number> = {};
  const added: JsonObject[] = [];
  tokens.forEach((t, id) => {
    const type = types ? types[id] : 1;
    if (type === 3 || type === 4) {
      added.push({
        id,
        content: t,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: type === 3,
      });
    } else if (!(t in vocab)) {
      vocab[t] = id;
    }
  });
  const json: JsonObject = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [
        { type: "Split", pattern: { Regex: regex }, behavior: "Isolated", invert: false },
        { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: pre !== "default",
      vocab,
      merges,
    },
  };
  const id = (key: string): number | null => {
    if (!m.has(key)) return null;
    const v = m.number(key);
    return v >= 0 && v < tokens.length ? v : null;
  };
  const bos = id("tokenizer.ggml.bos_token_id");
  const eos = id("tokenizer.ggml.eos_token_id");
  const config: JsonObject = {
    bos_token: bos === null ? null : tokens[bos],
    eos_token: eos === null ? null : tokens[eos],
    add_bos_token: m.bool("tokenizer.ggml.add_bos_token") ?? true,
    add_eos_token: m.bool("tokenizer.ggml.add_eos_token") ?? false,
    clean_up_tokenization_spaces: false,
  };
  // end-of-turn ids: the metadata's, and the control tokens llama.cpp recognises by name
  const extra = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
    .map(id)
    .filter((x): x is number => x !== null);
  for (const text of ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"]) {
    const i = tokens.indexOf(text);
    if (i >= 0 && types?.[i] === 3) extra.push(i);
  }
  return { json, config, extraEosIds: [...new Set(extra)] };
}

/** The content of a special-token entry (`"<s>"` or `{content: "<s>", ...}`). */
export function specialTokenText(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (typeof v === "object" && v !== null && typeof (v as JsonObject).content === "string") {
    return (v as JsonObject).content as string;
  }
  return null;
}

/** A tokenizer.json tokenizer. */
export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosIds: readonly number[];
  /** The texts of BOS and EOS (for chat templates). */
  readonly bosText: string | null;
  readonly eosText: string | null;
  /** tokenizer_config.json (for the chat template). */
  readonly config: JsonObject;
  readonly #tok: HfLibTokenizer;
  readonly #special = new Set<number>();
  readonly #addBos: boolean | undefined;
  readonly #addEos: boolean | undefined;
  readonly #eosId: number | null;

  /**
   * @param tokenizerJson the parsed tokenizer.json
   * @param config the parsed tokenizer_config.json ({} when absent)
   * @param extraEosIds more end-of-generation ids (generation_config.json)
   */
  constructor(tokenizerJson: JsonObject, config: JsonObject = {}, extraEosIds: number[] = []) {
    this.#tok = new HfLibTokenizer(tokenizerJson, config);
    this.config = config;
    let maxId = -1;
    for (const id of this.#tok.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    for (const [id, t] of this.#tok.get_added_tokens_decoder()) {
      if (t.special) this.#special.add(id);
    }
    const idOf = (text: string | null) =>
      text === null ? null : (this.#tok.token_to_id(text) ?? null);
    this.bosText = specialTokenText(config.bos_token);
    this.eosText = specialTokenText(config.eos_token);
    this.bosId = idOf(this.bosText);
    this.#eosId = idOf(this.eosText);
    const eos = new Set<number>();
    if (this.#eosId !== null) eos.add(this.#eosId);
    for (const id of extraEosIds) if (id >= 0 && id < this.vocabSize) eos.add(id);
    this.eosIds = [...eos];
    this.#addBos = typeof config.add_bos_token === "boolean" ? config.add_bos_token : undefined;
    this.#addEos = typeof config.add_eos_token === "boolean" ? config.add_eos_token : undefined;
  }

  /**
   * Loads `dir/tokenizer.json` (+ `tokenizer_config.json`, `generation_config.json`);
   * null when the directory has no tokenizer.json.
   */
  static async fromDir(dir: string): Promise<HfTokenizer | null> {
    const json = await readJsonObject(`${dir}/tokenizer.json`);
    if (!json) return null;
    const config = (await readJsonObject(`${dir}/tokenizer_config.json`)) ?? {};
    const gen = await readJsonObject(`${dir}/generation_config.json`);
    const g = gen?.eos_token_id;
    const extra = typeof g === "number"
      ? [g]
      : Array.isArray(g)
      ? g.filter((x): x is number => typeof x === "number")
      : [];
    try {
      return new HfTokenizer(json, config, extra);
    } catch (e) {
      throw new Error(
        `Cannot load the tokenizer of "${dir}": ${e instanceof Error ? e.message : e}`,
      );
    }
  }

  /**
   * The tokenizer of a GGUF file with a BPE vocabulary (`tokenizer.ggml.model = "gpt2"`);
   * see {@link ggufBpeTokenizerFiles}.
   */
  static fromGguf(file: GgufFile): HfTokenizer {
    const { json, config, extraEosIds } = ggufBpeTokenizerFiles(file);
    return new HfTokenizer(json, config, extraEosIds);
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    const add = opts.addSpecialTokens ?? true;
    if (!add) return this.#tok.encode(text, { add_special_tokens: false }).ids;
    if (this.#addBos === undefined && this.#addEos === undefined) {
      return this.#tok.encode(text, { add_special_tokens: true }).ids;
    }
    // the config decides what it sets; the post-processor decides the rest
    const plain = this.#tok.encode(text, { add_special_tokens: false }).ids;
    let ppBos = false;
    let ppEos = false;
    if (this.#addBos === undefined || this.#addEos === undefined) {
      const full = this.#tok.encode(text, { add_special_tokens: true }).ids;
      ppBos = full.length > plain.length && full[0] === this.bosId;
      ppEos = full.length > plain.length && full[full.length - 1] === this.#eosId;
    }
    const ids = [...plain];
    if ((this.#addBos ?? ppBos) && this.bosId !== null) ids.unshift(this.bosId);
    if ((this.#addEos ?? ppEos) && this.#eosId !== null) ids.push(this.#eosId);
    return ids;
  }

  decode(ids: readonly number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    const valid = ids.filter((id) => Number.isInteger(id) && id >= 0 && id < this.vocabSize);
    if (valid.length === 0) return "";
    return this.#tok.decode(valid, {
      skip_special_tokens: opts.skipSpecialTokens ?? true,
      clean_up_tokenization_spaces: false,
    });
  }

  tokenText(id: number): string {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) return "";
    return this.#tok.decode([id], {
      skip_special_tokens: false,
      clean_up_tokenization_spaces: false,
    });
  }

  isSpecial(id: number): boolean {
    return this.#special.has(id);
  }
}
