/**
 * The shapes the model layer hands to the rest of the engine: a loaded model, its
 * tokenizer and its chat template. Loaders (`loader.ts`) produce a {@link LoadedModel};
 * the scheduler and routes consume it.
 *
 * @module
 */
import type { Engine, ModelConfig } from "../../ffi/native.ts";

/** Text ↔ token ids. */
export interface Tokenizer {
  /** Number of token ids. */
  readonly vocabSize: number;
  /** The beginning-of-sequence id, if the vocabulary has one. */
  readonly bosId: number | null;
  /** Ids that end generation (eos, eot, eom...). */
  readonly eosIds: readonly number[];
  /** Encodes text; `addSpecialTokens` (default true) adds what the tokenizer adds (BOS). */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  /** Decodes ids to text; `skipSpecialTokens` (default true) drops control tokens. */
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string;
  /** The text of one token as it appears in output (for logprobs), special tokens too. */
  tokenText(id: number): string;
  /** Whether `id` is a control/special token. */
  isSpecial(id: number): boolean;
}

/** One chat message, OpenAI style (text content only). */
export interface ChatMessage {
  role: string;
  content: string;
  name?: string;
}

/** Renders messages with the checkpoint's own template. */
export interface ChatTemplate {
  /** The prompt text for `messages`; `addGenerationPrompt` opens the assistant turn. */
  render(messages: readonly ChatMessage[], opts: { addGenerationPrompt: boolean }): string;
  /** Whether the rendered text already starts with BOS (then encode without special tokens). */
  readonly includesBos: boolean;
}

/** A model ready to serve. */
export interface LoadedModel {
  /** The id served at /v1/models (directory or file name; "magicpig-demo" for the demo). */
  readonly id: string;
  /** Where it came from (a path; the cache path for the demo). */
  readonly path: string;
  /** "hf" (Hugging Face directory), "gguf", or "demo". */
  readonly format: "hf" | "gguf" | "demo";
  readonly config: ModelConfig;
  /** The native engine holding the weights (finalized). */
  readonly engine: Engine;
  /** null when the model has no tokenizer: then only token-id prompts are served. */
  readonly tokenizer: Tokenizer | null;
  /** null when the model has no chat template. */
  readonly chatTemplate: ChatTemplate | null;
  /**
   * Ids that end generation: the tokenizer's plus config.json / generation_config.json /
   * GGUF metadata ones (so token-id-only models stop too). Absent: use the tokenizer's.
   */
  readonly eosIds?: readonly number[];
  /** Seconds each loading phase took (for the startup log). */
  readonly timings: Record<string, number>;
  /** Frees the engine. */
  close(): Promise<void>;
}
