/**
 * What the OpenAI-shaped generation routes share: the served-model check, sampling and
 * stop parameters, the `Cancel-After` deadline header, the `attention` extension, usage
 * objects, and the loop that turns a request's scheduler events into either one response
 * body or a stream of chunks.
 *
 * @module
 */
import { parseAttention } from "../engine/attention.ts";
import type { LLM } from "../engine/llm.ts";
import type {
  FinishEvent,
  GenerateRequest,
  RequestStream,
  TokenEvent,
  Usage,
} from "../engine/scheduler.ts";
import { HttpError, toHttpError } from "./_http_error.ts";
import type { RequestContext } from "./_router.ts";
import { DONE, sseResponse } from "./_sse.ts";
import type { Fields } from "./_validate.ts";

/** The model a request names must be the one served (absent: the served one). */
export function checkModel(f: Fields, llm: LLM): string {
  const model = f.string("model");
  if (model !== undefined && model !== llm.info.id) {
    throw new HttpError(
      404,
      `The model "${model}" does not exist: this server serves "${llm.info.id}"`,
      { param: "model", code: "model_not_found" },
    );
  }
  return llm.info.id;
}

/** Refuses OpenAI parameters asking for features this server does not have. */
export function refuseUnsupported(f: Fields): void {
  f.unsupported("n", (v) => v === 1, "only n = 1 is supported");
  f.unsupported("best_of", (v) => v === 1, "only best_of = 1 is supported");
  f.unsupported("use_beam_search", (v) => v === false, "beam search is not supported");
  f.unsupported("presence_penalty", (v) => v === 0, "penalties are not supported");
  f.unsupported("frequency_penalty", (v) => v === 0, "penalties are not supported");
  f.unsupported("repetition_penalty", (v) => v === 1, "penalties are not supported");
  f.unsupported(
    "logit_bias",
    (v) => typeof v === "object" && v !== null && Object.keys(v).length === 0,
    "logit_bias is not supported",
  );
}

/** Parses a `Cancel-After` header ("30", "30s", "500ms", "2m", "1h") into a deadline. */
export function deadlineFrom(req: Request): number | undefined {
  const v = req.headers.get("cancel-after");
  if (v === null) return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(v);
  if (!m) {
    throw new HttpError(
      400,
      `Invalid "Cancel-After" header ${
        JSON.stringify(v)
      }: expected a duration like "30s", "500ms" or "2m"`,
      { param: "Cancel-After" },
    );
  }
  const scale = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? "s"]!;
  return Date.now() + Number(m[1]) * scale;
}

/** The sampling, stop and attention parts of a request, read from the body. */
export function samplingRequest(
  f: Fields,
  llm: LLM,
  logprobs: number,
): Omit<GenerateRequest, "promptIds" | "maxTokens"> {
  const temperature = f.number("temperature", { min: 0, max: 2 }) ?? 1;
  const topP = f.number("top_p", { min: 0, minExclusive: true, max: 1 }) ?? 1;
  const topKRaw = f.number("top_k", { min: -1, integer: true }) ?? 0;
  const seed = f.number("seed", { integer: true, min: -(2 ** 63), max: 2 ** 64 - 1 });
  const stop = f.stopStrings("stop");
  const stopTokenIds = f.tokenIds("stop_token_ids");
  if (stopTokenIds) llm.checkIds(stopTokenIds, "stop_token_ids");
  return {
    sampling: { temperature, topP, topK: topKRaw < 0 ? 0 : topKRaw, seed, logprobs },
    stop,
    stopTokenIds,
    ignoreEos: f.boolean("ignore_eos") ?? false,
    attention: parseAttention(f.body.attention, "attention", llm.info.nLayers),
  };
}

/**
 * Resolves `max_tokens` against the context: absent → `fallback` (capped to what fits);
 * a prompt that fills the context, or a sum beyond it, is a 400 naming the parameter.
 */
export function resolveMaxTokens(
  llm: LLM,
  promptLength: number,
  requested: number | undefined,
  names: { prompt: string; maxTokens: string },
  fallback: number | null,
): number {
  const ctx = llm.info.maxModelLen;
  if (promptLength >= ctx) {
    throw new HttpError(
      400,
      `This model's maximum context length is ${ctx} tokens, but the ${names.prompt} has ${promptLength} tokens, leaving no room to generate`,
      { param: names.prompt, code: "context_length_exceeded" },
    );
  }
  if (requested === undefined) {
    return fallback === null ? ctx - promptLength : Math.min(fallback, ctx - promptLength);
  }
  if (promptLength + requested > ctx) {
    throw new HttpError(
      400,
      `This model's maximum context length is ${ctx} tokens, but ${
        promptLength + requested
      } were requested (${promptLength} in the ${names.prompt}, ${requested} in "${names.maxTokens}"): reduce "${names.maxTokens}" or the ${names.prompt}`,
      { param: names.maxTokens, code: "context_length_exceeded" },
    );
  }
  return requested;
}

/** The `usage` object, with the attention extension. */
export function usageJson(u: Usage): Record<string, unknown> {
  return {
    prompt_tokens: u.promptTokens,
    completion_tokens: u.completionTokens,
    total_tokens: u.promptTokens + u.completionTokens,
    prompt_tokens_details: { cached_tokens: u.cachedTokens },
    attention: { method: u.attention, keys_fraction: u.keysFraction },
  };
}

/** OpenAI's finish_reason for a normally finished request. */
export function finishReason(ev: FinishEvent): string {
  return ev.reason === "stop" ? "stop" : ev.reason === "length" ? "length" : ev.reason;
}

/** The error a request that did not finish normally answers with. */
export function finishError(ev: FinishEvent): HttpError | null {
  if (ev.reason === "error" || (ev.reason === "abort" && ev.error)) {
    return toHttpError(ev.error);
  }
  if (ev.reason === "deadline") {
    return new HttpError(
      504,
      `The request's deadline (Cancel-After) passed after ${ev.outputIds.length} generated tokens`,
      { code: "deadline_exceeded" },
    );
  }
  if (ev.reason === "abort") {
    return new HttpError(499, "The client closed the request", { code: "client_closed_request" });
  }
  return null;
}

/** Hooks that shape one endpoint's output. */
export interface OutputShape {
  /** A chunk for one token (null: nothing to send for it). */
  tokenChunk(ev: TokenEvent, offset: number): Record<string, unknown> | null;
  /** The chunks that close the stream (finish_reason; usage when asked). */
  finishChunks(ev: FinishEvent): Record<string, unknown>[];
  /** The chunk sent first (chat: the assistant role), if any. */
  firstChunk?(): Record<string, unknown>;
  /** The whole non-streamed body. */
  body(tokens: TokenEvent[], text: string, ev: FinishEvent): Record<string, unknown>;
}

/**
 * Runs a submitted request to the end and answers with one JSON body or, for `stream`, an
 * SSE stream of chunks ending with `data: [DONE]`. An error after the stream has begun is
 * sent as one `data: {"error": ...}` event before `[DONE]`.
 */
export async function respond(
  stream: RequestStream,
  shape: OutputShape,
  options: { stream: boolean; ctx: RequestContext; tokenTextLength: (id: number) => number },
): Promise<Response> {
  const headers = { "x-request-id": options.ctx.requestId };
  if (!options.stream) {
    const tokens: TokenEvent[] = [];
    let text = "";
    for await (const ev of stream) {
      if (ev.type === "token") {
        tokens.push(ev);
        text += ev.text;
      } else if (ev.type === "finish") {
        logFinish(options.ctx, ev);
        const err = finishError(ev);
        if (err) throw err;
        text += ev.text;
        return Response.json(shape.body(tokens, text, ev), { headers });
      }
    }
    throw new HttpError(500, "The request ended without a result");
  }
  // Wait for the request to start (its first prefill chunk) before sending headers, so a
  // request that cannot start (no memory for its session) gets a real HTTP status.
  const events = stream[Symbol.asyncIterator]();
  const head = await events.next();
  if (!head.done && head.value.type === "finish") {
    logFinish(options.ctx, head.value);
    const err = finishError(head.value);
    if (err) throw err;
  }
  async function* chunks(): AsyncGenerator<unknown> {
    let offset = 0;
    const first = shape.firstChunk?.();
    if (first) yield first;
    try {
      for (let r = head; !r.done; r = await events.next()) {
        const ev = r.value;
        if (ev.type === "token") {
          const chunk = shape.tokenChunk(ev, offset);
          offset += options.tokenTextLength(ev.id);
          if (chunk) yield chunk;
        } else if (ev.type === "finish") {
          if (r !== head) logFinish(options.ctx, ev);
          const err = finishError(ev);
          if (err) {
            // Nobody reads the stream of a client that went away.
            if (ev.reason !== "abort" || ev.error) yield err.toJSON();
          } else {
            for (const c of shape.finishChunks(ev)) yield c;
          }
        }
      }
    } finally {
      // Leaving early (the client went away) aborts the request.
      await events.return?.();
    }
    yield DONE;
  }
  return sseResponse(chunks(), { headers });
}

function logFinish(ctx: RequestContext, ev: FinishEvent): void {
  ctx.log.info("generation finished", {
    reason: ev.reason,
    prompt_tokens: ev.usage.promptTokens,
    completion_tokens: ev.usage.completionTokens,
    ...(ev.error ? { error: ev.error.message } : {}),
  });
}
