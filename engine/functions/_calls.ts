/**
 * The host side of one `ctx` call: checks what the (untrusted) worker sent, calls the
 * {@link FunctionHostServices} with the invocation's caller, and turns the outcome into a
 * value or a {@link WireError} for the worker.
 *
 * @module
 */
import { EngineError, type EngineErrorKind } from "../errors.ts";
import type { CallMethod, WireError } from "./_protocol.ts";
import type { Caller, FunctionHostServices, SessionServices, TextEvent } from "./services.ts";
import type {
  ChatMessage,
  ChatParams,
  Completion,
  GenerateParams,
  SessionCreateParams,
  SessionQueryParams,
} from "./types.ts";

/** A bad `ctx` call (400 to the function). */
class CallError extends Error {
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
  constructor(
    status: number,
    type: string,
    message: string,
    param: string | null = null,
    code: string | null = null,
  ) {
    super(message);
    this.status = status;
    this.type = type;
    this.param = param;
    this.code = code;
  }
}

function invalid(message: string, param: string | null = null): CallError {
  return new CallError(400, "invalid_request_error", message, param);
}

const kindStatus: Record<EngineErrorKind, [number, string]> = {
  invalid_request: [400, "invalid_request_error"],
  not_found: [404, "not_found_error"],
  conflict: [409, "conflict_error"],
  overloaded: [429, "rate_limit_error"],
  unavailable: [503, "server_error"],
  internal: [500, "server_error"],
};

/** Any thrown value as the error a function sees. */
export function toWireError(e: unknown): WireError {
  if (e instanceof EngineError) {
    const [status, type] = kindStatus[e.kind];
    return { message: e.message, status, type, param: e.param, code: e.code };
  }
  if (e instanceof Error) {
    const o = e as Error & Record<string, unknown>;
    if (typeof o.status === "number" && typeof o.type === "string") {
      return {
        message: e.message,
        status: o.status,
        type: o.type,
        param: typeof o.param === "string" ? o.param : null,
        code: typeof o.code === "string" ? o.code : null,
      };
    }
    return { message: e.message, status: 500, type: "server_error", param: null, code: null };
  }
  return { message: String(e), status: 500, type: "server_error", param: null, code: null };
}

// ------------------------------------------------------------
// validation of what a function sends

type Obj = Record<string, unknown>;

function object(v: unknown, what: string): Obj {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw invalid(`${what} must be an object`);
  }
  return v as Obj;
}

function onlyKeys(o: Obj, keys: readonly string[]): void {
  for (const k of Object.keys(o)) {
    if (!keys.includes(k)) {
      throw invalid(`Unknown parameter "${k}": expected one of ${keys.join(", ")}`, k);
    }
  }
}

function optNumber(o: Obj, k: string, integer = false): void {
  const v = o[k];
  if (v === undefined) return;
  if (typeof v !== "number" || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
    throw invalid(`Parameter "${k}" must be ${integer ? "an integer" : "a finite number"}`, k);
  }
}

function optString(o: Obj, k: string): void {
  if (o[k] !== undefined && typeof o[k] !== "string") {
    throw invalid(`Parameter "${k}" must be a string`, k);
  }
}

function prompt(o: Obj, k: string): void {
  const v = o[k];
  if (v === undefined || typeof v === "string") return;
  if (Array.isArray(v) && v.every((x) => Number.isInteger(x) && x >= 0)) return;
  throw invalid(`Parameter "${k}" must be a string or an array of token ids`, k);
}

function messages(o: Obj, k: string): void {
  const v = o[k];
  if (v === undefined) return;
  if (!Array.isArray(v) || v.length === 0) {
    throw invalid(`Parameter "${k}" must be a non-empty array of messages`, k);
  }
  v.forEach((m: unknown, i) => {
    const msg = object(m, `"${k}[${i}]"`) as Partial<ChatMessage>;
    if (typeof msg.role !== "string" || typeof msg.content !== "string") {
      throw invalid(`Message "${k}[${i}]" must have a string "role" and "content"`, k);
    }
    if (msg.name !== undefined && typeof msg.name !== "string") {
      throw invalid(`Message "${k}[${i}]" field "name" must be a string`, k);
    }
    onlyKeys(msg as Obj, ["role", "content", "name"]);
  });
}

const samplingKeys = ["max_tokens", "temperature", "top_p", "top_k", "seed", "stop"] as const;

function sampling(o: Obj): void {
  optNumber(o, "max_tokens", true);
  optNumber(o, "temperature");
  optNumber(o, "top_p");
  optNumber(o, "top_k", true);
  optNumber(o, "seed", true);
  const stop = o.stop;
  if (
    stop !== undefined && typeof stop !== "string" &&
    !(Array.isArray(stop) && stop.every((s) => typeof s === "string"))
  ) {
    throw invalid(`Parameter "stop" must be a string or an array of strings`, "stop");
  }
}

function oneOfPromptMessages(o: Obj, required: boolean): void {
  if (o.prompt !== undefined && o.messages !== undefined) {
    throw invalid(`Give "prompt" or "messages", not both`, "messages");
  }
  if (required && o.prompt === undefined && o.messages === undefined) {
    throw invalid(`Parameter "prompt" or "messages" is required`, "prompt");
  }
  prompt(o, "prompt");
  messages(o, "messages");
}

function sessionId(id: string | null): string {
  if (typeof id !== "string" || id.length === 0 || id.length > 256) {
    throw invalid(`Session id must be a non-empty string`, "session_id");
  }
  return id;
}

function needSessions(services: FunctionHostServices): SessionServices {
  if (!services.sessions) {
    throw new CallError(
      501,
      "server_error",
      "Sessions are not available on this host",
      null,
      "sessions_unavailable",
    );
  }
  return services.sessions;
}

// ------------------------------------------------------------
// dispatch

/** How a call's result goes back: text deltas (streaming calls only), then the value. */
export interface CallSink {
  text(text: string): void;
}

/**
 * Runs one `ctx` call for `caller`. Resolves with the value to return to the function;
 * rejects with anything (see {@link toWireError}). `signal` aborts the engine work; a
 * generating call aborted by `cancelled()` resolves with what was generated so far and
 * `finish_reason: "abort"`.
 */
export async function runCall(
  services: FunctionHostServices,
  caller: Caller,
  method: CallMethod,
  rawParams: unknown,
  session: string | null,
  stream: boolean,
  sink: CallSink,
  signal: AbortSignal,
): Promise<unknown> {
  switch (method) {
    case "generate": {
      const o = object(rawParams, "ctx.generate() options");
      onlyKeys(o, ["model", "prompt", ...samplingKeys]);
      if (o.prompt === undefined) throw invalid(`Parameter "prompt" is required`, "prompt");
      prompt(o, "prompt");
      optString(o, "model");
      sampling(o);
      return await collect(
        services.generate(caller, o as unknown as GenerateParams, signal),
        stream,
        sink,
        signal,
      );
    }
    case "chat": {
      const o = object(rawParams, "ctx.chat() options");
      onlyKeys(o, ["model", "messages", ...samplingKeys]);
      if (o.messages === undefined) throw invalid(`Parameter "messages" is required`, "messages");
      messages(o, "messages");
      optString(o, "model");
      sampling(o);
      return await collect(
        services.chat(caller, o as unknown as ChatParams, signal),
        stream,
        sink,
        signal,
      );
    }
    case "sessions.create": {
      const s = needSessions(services);
      const o = object(rawParams, "ctx.sessions.create() options");
      onlyKeys(o, ["model", "prompt", "messages", "ttl_seconds", "attention"]);
      oneOfPromptMessages(o, true);
      optString(o, "model");
      optNumber(o, "ttl_seconds");
      if (o.attention !== undefined) object(o.attention, `Parameter "attention"`);
      return await s.create(caller, o as SessionCreateParams, signal);
    }
    case "sessions.get":
      return await needSessions(services).get(caller, sessionId(session));
    case "sessions.delete":
      await needSessions(services).delete(caller, sessionId(session));
      return undefined;
    case "sessions.query": {
      const s = needSessions(services);
      const id = sessionId(session);
      const o = object(rawParams, "ctx.sessions.query() options");
      onlyKeys(o, ["prompt", "messages", "fork", ...samplingKeys]);
      oneOfPromptMessages(o, true);
      if (o.fork !== undefined && typeof o.fork !== "boolean") {
        throw invalid(`Parameter "fork" must be a boolean`, "fork");
      }
      sampling(o);
      return await collect(
        s.query(caller, id, o as SessionQueryParams, signal),
        stream,
        sink,
        signal,
      );
    }
    default:
      throw invalid(`Unknown ctx method "${String(method)}"`);
  }
}

async function collect(
  events: AsyncIterable<TextEvent>,
  stream: boolean,
  sink: CallSink,
  signal: AbortSignal,
): Promise<Completion> {
  let text = "";
  let done: Extract<TextEvent, { type: "done" }> | null = null;
  try {
    for await (const ev of events) {
      if (ev.type === "text") {
        text += ev.text;
        if (stream && ev.text) sink.text(ev.text);
      } else if (ev.type === "done") {
        done = ev;
      }
    }
  } catch (e) {
    if (!signal.aborted) throw e;
  }
  if (done) return { text, finish_reason: done.finishReason, usage: done.usage };
  if (signal.aborted) {
    return {
      text,
      finish_reason: "abort",
      usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 },
    };
  }
  throw new Error("The generation ended without a result");
}
