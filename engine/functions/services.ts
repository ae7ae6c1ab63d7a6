/**
 * The host side of a function's `ctx`: what the function host needs from the rest of the
 * engine, as a narrow interface the engine facade and the session manager implement. The
 * function host validates what a function sends, then calls these methods with the
 * {@link Caller} of the invocation — the API key comes from the HTTP request the host is
 * serving, never from the function.
 *
 * Errors: throw an `EngineError` (engine/errors.ts) or anything with a numeric `status`
 * and a string `type` (an HTTP error); the function receives a `BindingError` with the
 * same status, type, message and param. Any other error reaches the function as a 500
 * `server_error` with its message.
 *
 * @example
 * ```ts
 * import type { FunctionHostServices } from "./services.ts";
 * const services: FunctionHostServices = {
 *   async *generate(_caller, params) {
 *     yield { type: "text", text: String(params.prompt) };
 *     yield { type: "done", finishReason: "stop", usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } };
 *   },
 *   chat() { throw new Error("Chat is not served here"); },
 *   sessions: null,
 * };
 * ```
 *
 * @module
 */
import type {
  ChatParams,
  FinishReason,
  GenerateParams,
  SessionCreateParams,
  SessionInfo,
  SessionQueryParams,
  Usage,
} from "./types.ts";

/** Who a `ctx` call acts for: the caller of the HTTP request the function is serving. */
export interface Caller {
  /** The API key the request authenticated with; null when the host runs without keys. */
  readonly apiKey: string | null;
  /** The HTTP request's id (for logs). */
  readonly requestId: string;
  /** The function making the call. */
  readonly functionName: string;
}

/** One event of a generating call: text as it is decoded, then exactly one `done`. */
export type TextEvent =
  | { type: "text"; text: string }
  | { type: "done"; finishReason: FinishReason; usage: Usage };

/** Generation without `stream` (the function host streams or collects as the function asked). */
export type GenerateRequest = Omit<GenerateParams, "stream">;
/** Chat without `stream`. */
export type ChatRequest = Omit<ChatParams, "stream">;
/** A session query without `stream`. */
export type SessionQueryRequest = Omit<SessionQueryParams, "stream">;

/** Sessions of one caller; the session manager implements it. */
export interface SessionServices {
  /** Pins a context for `caller.apiKey`. */
  create(caller: Caller, params: SessionCreateParams, signal: AbortSignal): Promise<SessionInfo>;
  /** The caller's session `id`; throws a not-found error for an unknown id or another key's. */
  get(caller: Caller, id: string): Promise<SessionInfo>;
  /** A follow-up on the caller's session `id` (not found as in `get`). */
  query(
    caller: Caller,
    id: string,
    params: SessionQueryRequest,
    signal: AbortSignal,
  ): AsyncIterable<TextEvent>;
  /** Deletes the caller's session `id` (not found as in `get`). */
  delete(caller: Caller, id: string): Promise<void>;
}

/** Everything `ctx` can reach. */
export interface FunctionHostServices {
  /** A completion; `signal` aborts it (client gone, timeout, or the function stopped reading). */
  generate(caller: Caller, params: GenerateRequest, signal: AbortSignal): AsyncIterable<TextEvent>;
  /** A chat completion; as `generate`. */
  chat(caller: Caller, params: ChatRequest, signal: AbortSignal): AsyncIterable<TextEvent>;
  /** Pinned sessions; null until a session manager exists (calls then answer 501). */
  readonly sessions: SessionServices | null;
}
