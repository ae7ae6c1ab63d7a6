/**
 * Chat templates: the checkpoint's own Jinja template (`chat_template` in
 * tokenizer_config.json, `tokenizer.chat_template` in GGUF) rendered with
 * `@huggingface/jinja`, with the variables transformers passes: `messages`,
 * `add_generation_prompt`, `bos_token`, `eos_token` (and `unk_token`, `pad_token`).
 *
 * @example
 * ```ts
 * import { JinjaChatTemplate } from "./chat_template.ts";
 * const t = new JinjaChatTemplate("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}", {
 *   bos_token: "<s>",
 * });
 * t.render([{ role: "user", content: "hi" }], { addGenerationPrompt: true }); // "<s>hi"
 * ```
 *
 * @module
 */
import { Template } from "@huggingface/jinja";
import type { ChatMessage, ChatTemplate } from "./types.ts";
import type { JsonObject } from "./hf.ts";
import { specialTokenText } from "./tokenizer_hf.ts";
import { type GgufFile, GgufMeta } from "./gguf.ts";

/** A template that failed to render these messages (e.g. its `raise_exception`). */
export class ChatTemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ChatTemplateError";
  }
}

/** Special token texts a template may refer to. */
export interface TemplateTokens {
  bos_token?: string | null;
  eos_token?: string | null;
  unk_token?: string | null;
  pad_token?: string | null;
}

/** A Jinja chat template. */
export class JinjaChatTemplate implements ChatTemplate {
  readonly source: string;
  readonly includesBos: boolean;
  readonly #template: Template;
  readonly #tokens: Record<string, string>;

  constructor(source: string, tokens: TemplateTokens = {}) {
    this.source = source;
    try {
      this.#template = new Template(source);
    } catch (e) {
      throw new Error(`Cannot parse the chat template: ${e instanceof Error ? e.message : e}`);
    }
    this.#tokens = {};
    for (const [k, v] of Object.entries(tokens)) if (typeof v === "string") this.#tokens[k] = v;
    const bos = this.#tokens.bos_token;
    let starts = false;
    if (bos) {
      try {
        starts = this.render([{ role: "user", content: "x" }], { addGenerationPrompt: true })
          .startsWith(bos);
      } catch {
        starts = source.includes("bos_token");
      }
    }
    this.includesBos = starts;
  }

  /**
   * The template of a tokenizer_config.json (`chat_template` as a string, or the one named
   * "default" in a list of named templates); null when it has none.
   */
  static fromTokenizerConfig(config: JsonObject): JinjaChatTemplate | null {
    let src: unknown = config.chat_template;
    if (Array.isArray(src)) {
      const named = src as { name?: unknown; template?: unknown }[];
      src = (named.find((t) => t.name === "default") ?? named[0])?.template;
    }
    if (typeof src !== "string" || src.length === 0) return null;
    return new JinjaChatTemplate(src, {
      bos_token: specialTokenText(config.bos_token),
      eos_token: specialTokenText(config.eos_token),
      unk_token: specialTokenText(config.unk_token),
      pad_token: specialTokenText(config.pad_token),
    });
  }

  /**
   * The template of a GGUF file (`tokenizer.chat_template`), with BOS/EOS/UNK texts from
   * its vocabulary; null when it has none.
   */
  static fromGguf(file: GgufFile): JinjaChatTemplate | null {
    const m = new GgufMeta(file, (d) => {
      throw new Error(`Cannot read the chat template of "${file.path}": ${d}`);
    });
    const src = m.string("tokenizer.chat_template");
    if (!src) return null;
    const tokens = m.strings("tokenizer.ggml.tokens");
    const text = (key: string) => (tokens && m.has(key) ? tokens[m.number(key)] ?? null : null);
    return new JinjaChatTemplate(src, {
      bos_token: text("tokenizer.ggml.bos_token_id"),
      eos_token: text("tokenizer.ggml.eos_token_id"),
      unk_token: text("tokenizer.ggml.unknown_token_id"),
    });
  }

  render(messages: readonly ChatMessage[], opts: { addGenerationPrompt: boolean }): string {
    try {
      return this.#template.render({
        ...this.#tokens,
        messages: messages.map((m) => ({ ...m })),
        add_generation_prompt: opts.addGenerationPrompt,
      });
    } catch (e) {
      throw new ChatTemplateError(
        `Cannot apply the chat template: ${e instanceof Error ? e.message : e}`,
      );
    }
  }
}
