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
