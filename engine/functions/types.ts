/**
 * What a user function sees: the handler signature and the `ctx` binding it reaches the
 * host through. A function module imports these with `import type` (type-only imports are
 * erased before the module runs, so the path may point outside the functions folder):
 *
 * @example
 * ```ts
 * import type { FunctionContext } from "../engine/functions/types.ts";
 *
 * export default async function (request: Request, ctx: FunctionContext): Promise<Response> {
 *   const { text } = await ctx.generate({ prompt: await request.text(), max_tokens: 32 });
 *   return Response.json({ text });
 * }
 * ```
 *
 * Everything in `ctx` crosses the worker boundary by structured clone, so parameters and
 * results are plain data.
 *
 * @module
 */

/** A function module's default export. */
export type FunctionHandler = (
  request: Request,
  ctx: FunctionContext,
) => Response | Promise<Response>;

/** Sampling and stopping options shared by every generating call. */
export interface SamplingParams {
  /** Most tokens to generate (the host applies its own default and cap). */
  max_tokens?: number;
  /** 0: greedy. */
  temperature?: number;
  /** Nucleus mass in (0, 1]. */
  top_p?: number;
  /** Keep the k most likely tokens; 0 is off. */
  top_k?: number;
  /** Same seed, same tokens. */
  seed?: number;
  /** Strings that end generation (not part of the output). */
  stop?: string | string[];
}

/** One chat message, OpenAI style. */
export interface ChatMessage {
  role: string;
  content: string;
  name?: string;
}

/** `ctx.generate`: a plain completion of `prompt` (text or token ids). */
export interface GenerateParams extends SamplingParams {
  /** The model id; the host's model when absent. */
  model?: string;
  prompt: string | number[];
}

/** `ctx.chat`: a chat completion, rendered with the model's chat template. */
export interface ChatParams extends SamplingParams {
  model?: string;
  messages: ChatMessage[];
}

/** Asks for the result as a stream of text deltas. */
export interface Streaming {
  stream: true;
}

/** Asks for the whole result at once (the default). */
export interface NotStreaming {
  stream?: false;
}

/** Token counts of one generating call. */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** Prompt tokens served from a pinned session instead of being prefilled again. */
  cached_tokens?: number;
}

/** Why generation ended. */
export type FinishReason = "stop" | "length" | "abort" | "deadline" | "error";

/** The whole result of a generating call. */
export interface Completion {
  text: string;
  finish_reason: FinishReason;
  usage: Usage;
}

/**
 * A streaming result: iterate it for text deltas; `result` settles with the whole
 * completion when the stream ends. Leaving the loop early (`break`) stops generation.
 */
export interface TextStream extends AsyncIterable<string> {
  /** The completion (its `text` is every delta joined), once the stream has ended. */
  readonly result: Promise<Completion>;
  /** Stops generation; the iteration ends and `result` settles with what was generated. */
  cancel(): void;
}

/** `ctx.sessions.create`: pins a context (text, token ids or chat messages). */
export interface SessionCreateParams {
  model?: string;
  /** The context, as text or token ids; or `messages`. */
  prompt?: string | number[];
  /** The context, as chat messages; or `prompt`. */
  messages?: ChatMessage[];
  /** Lifetime after the last use; the host's default when absent. */
  ttl_seconds?: number;
  /** Attention options of the session (`{ method: "magicpig", K, L, ... }`). */
  attention?: Record<string, unknown>;
}

/** A pinned session, as `ctx.sessions.create/get` describe it. */
export interface SessionInfo {
  id: string;
  /** Tokens held. */
  tokens: number;
  /** Host bytes held (KV cache and index). */
  host_bytes: number;
  /** Seconds the prefill took (create only; 0 otherwise). */
  prefill_seconds: number;
  /** Unix seconds when it expires unless used again. */
  expires_at: number;
}

/** `ctx.sessions.query`: a follow-up on a pinned session. */
export interface SessionQueryParams extends SamplingParams {
  /** The new tokens, as text or ids; or `messages`. */
  prompt?: string | number[];
  /** The new turn(s), as chat messages; or `prompt`. */
  messages?: ChatMessage[];
  /** Leave the session unchanged (the query and its answer are not kept). */
  fork?: boolean;
}

/**
 * Sessions of the caller: every call acts for the API key of the request being served,
 * which the host supplies; another key's sessions answer "not found".
 */
export interface SessionsBinding {
  create(params: SessionCreateParams): Promise<SessionInfo>;
  /** Rejects with a {@link BindingErrorInfo} of status 404 when the caller has no such session. */
  get(id: string): Promise<SessionInfo>;
  query(id: string, params: SessionQueryParams & Streaming): TextStream;
  query(id: string, params: SessionQueryParams & NotStreaming): Promise<Completion>;
  query(id: string, params: SessionQueryParams): Promise<Completion> | TextStream;
  /** Rejects with status 404 when the caller has no such session. */
  delete(id: string): Promise<void>;
}

/** A structured log line's extra fields. */
export type LogFields = Record<string, string | number | boolean | null>;

/** Log levels of `ctx.log`. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** The binding a function reaches the host through: its only way out of the sandbox. */
export interface FunctionContext {
  /** The function's name (its file name without `.ts`). */
  readonly name: string;
  /** The id of the HTTP request being served (also in every log line). */
  readonly requestId: string;
  /** Configuration from the function's manifest (`NAME.json` "env"), never the host's environment. */
  readonly env: Readonly<Record<string, string>>;
  /** Aborted when the client goes away or the invocation times out (same as `request.signal`). */
  readonly signal: AbortSignal;
  generate(params: GenerateParams & Streaming): TextStream;
  generate(params: GenerateParams & NotStreaming): Promise<Completion>;
  generate(params: GenerateParams & { stream?: boolean }): Promise<Completion> | TextStream;
  chat(params: ChatParams & Streaming): TextStream;
  chat(params: ChatParams & NotStreaming): Promise<Completion>;
  chat(params: ChatParams & { stream?: boolean }): Promise<Completion> | TextStream;
  /** The caller's sessions. */
  readonly sessions: SessionsBinding;
  /**
   * Writes a structured log line tagged with the function and request id
   * (`console.log` and friends inside a function do the same at their level).
   */
  log(message: string, fields?: LogFields & { level?: LogLevel }): void;
}

/**
 * What a failed `ctx` call rejects with: an `Error` whose name is `"BindingError"`, with
 * the HTTP status and OpenAI error type the same request would have answered with
 * (404 `not_found_error` for another key's or an unknown session, 400
 * `invalid_request_error` for a bad parameter, 429 when the host is at capacity...).
 */
export interface BindingErrorInfo extends Error {
  readonly name: "BindingError";
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
}
