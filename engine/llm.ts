/**
 * The facade routes use: one served model with its tokenizer, chat template and
 * scheduler. It answers model facts, tokenizes and detokenizes, renders chat messages, and
 * runs generation requests through the {@link Scheduler}, whose event streams carry
 * incrementally detokenized text.
 *
 * @example
 * ```ts
 * import { LLM } from "./llm.ts";
 * declare const llm: LLM;
 * const promptIds = llm.tokenize("Once upon a time");
 * for await (const ev of llm.generate({ promptIds, maxTokens: 20 })) {
 *   if (ev.type === "token") console.log(ev.text);
 * }
 * ```
 *
 * @module
 */
import type { Backend } from "./backend.ts";
import { EngineError } from "./errors.ts";
import type { Logger } from "./log.ts";
import type { ChatMessage, LoadedModel } from "./model/types.ts";
import {
  type GenerateRequest,
  type RequestStream,
  Scheduler,
  type SchedulerObserver,
} from "./scheduler.ts";
import type { SessionManager } from "./sessions.ts";

/** The parts of a {@link LoadedModel} the facade needs. */
export type ServedModel =
  & Pick<LoadedModel, "id" | "path" | "format" | "tokenizer" | "chatTemplate" | "eosIds">
  & { readonly config: Pick<LoadedModel["config"], "n_layers" | "vocab_size" | "max_context"> }
  & { close?(): Promise<void> };

/** Facts about the served model. */
export interface ModelInfo {
  /** The id clients name in `model`. */
  id: string;
  path: string;
  format: LoadedModel["format"];
  /** Most tokens (prompt + generated) of one sequence. */
  maxModelLen: number;
  vocabSize: number;
  nLayers: number;
  hasTokenizer: boolean;
  hasChatTemplate: boolean;
  /** Unix seconds when the model was loaded. */
  created: number;
}

/** Options of {@link LLM}. */
export interface LLMOptions {
  /** Most requests prefilling or running at once (default: the engine's max batch). */
  maxRunning?: number;
  log?: Logger;
  /** Metrics hooks of the scheduler. */
  observer?: SchedulerObserver;
}

const encoder = new TextEncoder();

/** One served model: tokenizer, chat template and a scheduler over its engine. */
export class LLM {
  readonly info: ModelInfo;
  readonly scheduler: Scheduler;
  readonly #model: ServedModel;
  #closed: Promise<void> | null = null;
  #closeHooks: (() => Promise<void>)[] = [];
  /** The session manager of this model (set by `openLLM`); null when sessions are off. */
  sessions: SessionManager | null = null;

  constructor(model: ServedModel, backend: Backend, options: LLMOptions = {}) {
    this.#model = model;
    const tok = model.tokenizer;
    this.scheduler = new Scheduler(backend, {
      eosIds: model.eosIds ?? tok?.eosIds ?? [],
      decode: tok ? (ids) => tok.decode(ids, { skipSpecialTokens: true }) : null,
      maxRunning: options.maxRunning,
      observer: options.observer,
    });
    this.info = {
      id: model.id,
      path: model.path,
      format: model.format,
      maxModelLen: this.scheduler.maxContext,
      vocabSize: backend.vocabSize,
      nLayers: model.config.n_layers,
      hasTokenizer: tok !== null,
      hasChatTemplate: model.chatTemplate !== null && tok !== null,
      created: Math.floor(Date.now() / 1000),
    };
  }

  #tokenizer(param: string) {
    const tok = this.#model.tokenizer;
    if (!tok) {
      throw new EngineError(
        "invalid_request",
        `Model "${this.info.id}" has no tokenizer: send the prompt as an array of token ids`,
        param,
        "no_tokenizer",
      );
    }
    return tok;
  }

  /** The beginning-of-sequence id, if the tokenizer has one. */
  get bosId(): number | null {
    return this.#model.tokenizer?.bosId ?? null;
  }

  /**
   * Runs `hook` when the model closes: after the scheduler has stopped (no request runs)
   * and before the engine is freed (the session manager flushes snapshots there).
   */
  onClose(hook: () => Promise<void>): void {
    this.#closeHooks.push(hook);
  }

  /** Token ids of `text`; `addSpecialTokens` (default true) adds BOS where the tokenizer does. */
  tokenize(text: string, options: { addSpecialTokens?: boolean; param?: string } = {}): number[] {
    return this.#tokenizer(options.param ?? "prompt").encode(text, {
      addSpecialTokens: options.addSpecialTokens ?? true,
    });
  }

  /** Checks ids against the vocabulary; `param` names the field in the error. */
  checkIds(ids: readonly number[], param: string): void {
    const V = this.info.vocabSize;
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= V) {
        throw new EngineError(
          "invalid_request",
          `Invalid token id "${id}" in "${param}": ids are integers in [0, ${V})`,
          param,
        );
      }
    }
  }

  /** Text of `ids` (special tokens skipped unless `skipSpecialTokens` is false). */
  detokenize(
    ids: readonly number[],
    param = "tokens",
    options: { skipSpecialTokens?: boolean } = {},
  ): string {
    this.checkIds(ids, param);
    return this.#tokenizer(param).decode(ids, {
      skipSpecialTokens: options.skipSpecialTokens ?? true,
    });
  }

  /** The text of one token as logprobs show it ("token_id:N" without a tokenizer). */
  tokenText(id: number): string {
    const tok = this.#model.tokenizer;
    return tok ? tok.tokenText(id) : `token_id:${id}`;
  }

  /** UTF-8 bytes of {@link LLM.tokenText} (chat logprobs' `bytes`). */
  tokenBytes(id: number): number[] {
    return [...encoder.encode(this.tokenText(id))];
  }

  /**
   * Renders chat messages with the model's template and tokenizes the result (without a
   * second BOS when the template writes one).
   */
  renderChat(
    messages: readonly ChatMessage[],
    options: { addGenerationPrompt?: boolean; param?: string } = {},
  ): { text: string; ids: number[] } {
    const param = options.param ?? "messages";
    const tok = this.#tokenizer(param);
    const text = this.renderChatText(messages, options);
    const ids = tok.encode(text, { addSpecialTokens: !this.#model.chatTemplate!.includesBos });
    return { text, ids };
  }

  /**
   * Tokenizes text rendered by the chat template (or a prefix of it) the way
   * {@link LLM.renderChat} does: BOS added only when the template does not write it.
   */
  encodeChatText(text: string, param = "messages"): number[] {
    const tok = this.#tokenizer(param);
    return tok.encode(text, {
      addSpecialTokens: !(this.#model.chatTemplate?.includesBos ?? false),
    });
  }

  /** Renders chat messages with the model's template, without tokenizing. */
  renderChatText(
    messages: readonly ChatMessage[],
    options: { addGenerationPrompt?: boolean; param?: string } = {},
  ): string {
    const param = options.param ?? "messages";
    this.#tokenizer(param);
    const template = this.#model.chatTemplate;
    if (!template) {
      throw new EngineError(
        "invalid_request",
        `Model "${this.info.id}" has no chat template: use /v1/completions with a prompt`,
        param,
        "no_chat_template",
      );
    }
    try {
      return template.render(messages, {
        addGenerationPrompt: options.addGenerationPrompt ?? true,
      });
    } catch (e) {
      throw new EngineError(
        "invalid_request",
        `Cannot render the chat template: ${e instanceof Error ? e.message : String(e)}`,
        param,
      );
    }
  }

  /** Queues a generation request; see {@link Scheduler.submit}. */
  generate(request: GenerateRequest): RequestStream {
    return this.scheduler.submit(request);
  }

  /**
   * Runs one tiny request through every stage (session, prefill, decode, sample) so the
   * first client does not pay for lazy initialisation.
   */
  async warmUp(): Promise<void> {
    const first = this.#model.tokenizer?.bosId ?? 0;
    for await (const ev of this.generate({ id: "warm-up", promptIds: [first], maxTokens: 2 })) {
      if (ev.type === "finish" && ev.reason === "error") throw ev.error;
    }
  }

  /**
   * Stops the scheduler (`drain`: let running requests finish for up to `timeoutMs`), runs
   * the close hooks (session snapshots), and frees the model. Idempotent.
   */
  close(options: { drain?: boolean; timeoutMs?: number } = {}): Promise<void> {
    this.#closed ??= (async () => {
      await this.scheduler.shutdown(options);
      try {
        for (const hook of this.#closeHooks) await hook();
      } finally {
        await this.#model.close?.();
      }
    })();
    return this.#closed;
  }
}
