/**
 * The messages between the function host and a function's worker (postMessage, structured
 * clone). One worker serves one invocation at a time; every message about an invocation
 * carries its id, and the host drops messages about any other id.
 *
 * ```
 * host                                   worker
 *                                    <-  booted                          (bootstrap listens)
 *  init {moduleUrl, name, env}       ->
 *                                    <-  ready | load_error
 *  invoke {id, request, requestId}   ->
 *                                    <-  call {call, method, params}     (ctx.* RPC)
 *  text {call, text} / return / throw ->                                 (RPC answers)
 *                                    <-  call_cancel {call}              (stream left early)
 *                                    <-  head {status, headers, body}  | error {message}
 *  pull                              ->
 *                                    <-  chunk {data} ... end | body_error
 *  cancel (client gone)              ->
 *                                    <-  cancelled
 *                                    <-  log {level, message, fields}
 *                                    <-  fatal {message}                 (uncaught error)
 * ```
 *
 * @module
 */
import type { LogLevel } from "./types.ts";

/** A request as the worker rebuilds it. */
export interface WireRequest {
  url: string;
  method: string;
  headers: [string, string][];
  body: ArrayBuffer | null;
}

/** An error crossing the boundary. */
export interface WireError {
  message: string;
  status: number;
  type: string;
  param: string | null;
  code: string | null;
}

/** The `ctx` methods a worker may call. */
export type CallMethod =
  | "generate"
  | "chat"
  | "sessions.create"
  | "sessions.get"
  | "sessions.query"
  | "sessions.delete";

/** Host → worker. */
export type HostMessage =
  | { t: "init"; moduleUrl: string; name: string; env: Record<string, string> }
  | { t: "invoke"; id: number; requestId: string; request: WireRequest }
  | { t: "pull"; id: number }
  | { t: "cancel"; id: number; reason: string }
  | { t: "text"; id: number; call: number; text: string }
  | { t: "return"; id: number; call: number; value: unknown }
  | { t: "throw"; id: number; call: number; error: WireError };

/** Worker → host. */
export type WorkerMessage =
  | { t: "booted" }
  | { t: "ready" }
  | { t: "load_error"; message: string }
  | {
    t: "call";
    id: number;
    call: number;
    method: CallMethod;
    params: unknown;
    stream: boolean;
    session: string | null;
  }
  | { t: "call_cancel"; id: number; call: number }
  | {
    t: "head";
    id: number;
    status: number;
    statusText: string;
    headers: [string, string][];
    /** false: no body follows (the invocation is over). */
    body: boolean;
  }
  | { t: "error"; id: number; message: string; stack: string | null }
  | { t: "chunk"; id: number; data: Uint8Array }
  | { t: "end"; id: number }
  | { t: "body_error"; id: number; message: string }
  | { t: "cancelled"; id: number }
  | { t: "log"; id: number; level: LogLevel; message: string; fields: Record<string, unknown> }
  | { t: "fatal"; message: string };
