/**
 * {@link FunctionHostServices} over the served model: `ctx.generate` and `ctx.chat` run
 * through the {@link LLM} facade (its scheduler, tokenizer and chat template), and
 * `ctx.sessions` through the session manager when there is one.
 *
 * Defaults follow the HTTP API: `temperature` 1, `top_p` 1, `max_tokens` 16 for
 * `generate` and the rest of the context for `chat`.
 *
 * @example
 * ```ts
 * import { llmServices } from "./llm_services.ts";
 * declare const llm: import("../llm.ts").LLM;
 * const services = llmServices(() => llm, null);
 * ```
 *
 * @module
 */
import { EngineError } from "../errors.ts";
import type { LLM } from "../llm.ts";
import type { GenerateRequest as SchedulerRequest, SchedulerEvent } from "../scheduler.ts";
import type {
  Caller,
  ChatRequest,
  FunctionHostServices,
  GenerateRequest,
  SessionServices,
  TextEvent,
} from "./services.ts";
import type { SamplingParams } from "./types.ts";

let serial = 0;

function invalid(param: string, message: string): EngineError {
  return new EngineError("invalid_request", message, param);
}

function checkModel(llm: LLM, model: string | undefined): void {
  if (model !== undefined && model !== llm.info.id) {
    throw new EngineError(
      "not_found",
      `The model "${model}" does not exist: this server serves "${llm.info.id}"`,
      "model",
      "model_not_found",
    );
  }
}

function range(
  v: number | undefined,
  param: string,
  min: number,
  max: number,
  dflt: number,
): number {
  if (v === undefined) return dflt;
  if (!Number.isFinite(v) || v < min || v > max) {
    throw invalid(param, `Invalid "${param}": expected a number in [${min}, ${max}], got ${v}`);
  }
  return v;
}

/** The scheduler request for sampling params and prompt ids. */
export function schedulerRequest(
  llm: LLM,
  promptIds: number[],
  p: SamplingParams,
  defaultMaxTokens: number | null,
  id: string,
  signal: AbortSignal,
): SchedulerRequest {
  const ctxLen = llm.info.maxModelLen;
  if (promptIds.length === 0) throw invalid("prompt", `Invalid "prompt": the prompt is empty`);
  if (promptIds.length >= ctxLen) {
    throw new EngineError(
      "invalid_request",
      `This model's maximum context length is ${ctxLen} tokens, but the prompt has ${promptIds.length} tokens, leaving no room to generate`,
      "prompt",
      "context_length_exceeded",
    );
  }
  const room = ctxLen - promptIds.length;
  let maxTokens: number;
  if (p.max_tokens === undefined) {
    maxTokens = defaultMaxTokens === null ? room : Math.min(defaultMaxTokens, room);
  } else {
    if (!Number.isInteger(p.max_tokens) || p.max_tokens < 1) {
      throw invalid("max_tokens", `Invalid "max_tokens": expected an integer >= 1`);
    }
    if (p.max_tokens > room) {
      throw new EngineError(
        "invalid_request",
        `This model's maximum context length is ${ctxLen} tokens, but ${
          promptIds.length + p.max_tokens
        } were requested (${promptIds.length} in the prompt, ${p.max_tokens} in "max_tokens")`,
        "max_tokens",
        "context_length_exceeded",
      );
    }
    maxTokens = p.max_tokens;
  }
  const topK = p.top_k ?? 0;
  if (!Number.isInteger(topK) || topK < 0) {
    throw invalid("top_k", `Invalid "top_k": expected an integer >= 0`);
  }
  const topP = range(p.top_p, "top_p", 0, 1, 1);
  if (topP === 0) throw invalid("top_p", `Invalid "top_p": expected a number in (0, 1], got 0`);
  const stop = p.stop === undefined ? undefined : typeof p.stop === "string" ? [p.stop] : p.stop;
  return {
    id,
    promptIds,
    maxTokens,
    sampling: {
      temperature: range(p.temperature, "temperature", 0, 2, 1),
      topP,
      topK,
      seed: p.seed,
    },
    stop,
    signal,
  };
}

/** Runs a scheduler request and yields its text, then one `done`. */
export function textEvents(llm: LLM, request: SchedulerRequest): AsyncGenerator<TextEvent> {
  return textOf(llm.generate(request), "The generation failed");
}

/**
 * The text deltas of a request's scheduler events, then one `done` with the finish reason
 * and usage; a failed request throws its error (`failure` when it carries none).
 */
export async function* textOf(
  events: AsyncIterable<SchedulerEvent>,
  failure: string,
): AsyncGenerator<TextEvent> {
  for await (const ev of events) {
    if (ev.type === "token") {
      if (ev.text) yield { type: "text", text: ev.text };
    } else if (ev.type === "finish") {
      if (ev.reason === "error" || (ev.reason === "abort" && ev.error)) {
        throw ev.error ?? new EngineError("internal", failure);
      }
      if (ev.text) yield { type: "text", text: ev.text };
      yield {
        type: "done",
        finishReason: ev.reason,
        usage: {
          prompt_tokens: ev.usage.promptTokens,
          completion_tokens: ev.usage.completionTokens,
          total_tokens: ev.usage.promptTokens + ev.usage.completionTokens,
          cached_tokens: ev.usage.cachedTokens,
        },
      };
    }
  }
}

function requestId(caller: Caller): string {
  return `${caller.requestId}-fn-${++serial}`;
}

/**
 * Services over `getLLM()` (called per ctx call, so it may throw while the model loads)
 * and `sessions` (null: session calls answer 501).
 */
export function llmServices(
  getLLM: () => LLM,
  sessions: SessionServices | null,
): FunctionHostServices {
  return {
    generate(caller: Caller, params: GenerateRequest, signal: AbortSignal) {
      const llm = getLLM();
      checkModel(llm, params.model);
      const p = params.prompt;
      let ids: number[];
      if (typeof p === "string") {
        if (p.length === 0) throw invalid("prompt", `Invalid "prompt": the prompt is empty`);
        ids = llm.tokenize(p);
      } else {
        llm.checkIds(p, "prompt");
        ids = [...p];
      }
      return textEvents(llm, schedulerRequest(llm, ids, params, 16, requestId(caller), signal));
    },
    chat(caller: Caller, params: ChatRequest, signal: AbortSignal) {
      const llm = getLLM();
      checkModel(llm, params.model);
      const { ids } = llm.renderChat(params.messages);
      return textEvents(llm, schedulerRequest(llm, ids, params, null, requestId(caller), signal));
    },
    sessions,
  };
}
