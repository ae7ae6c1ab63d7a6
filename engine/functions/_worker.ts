/**
 * The bootstrap that runs inside a function's worker (started with every permission
 * denied). It imports the function module, rebuilds each request, hands the handler a
 * `ctx` whose methods are postMessage RPCs to the host, and relays the handler's Response
 * body to the host one chunk per `pull`.
 *
 * The function module is imported through a specifier computed at run time. That matters:
 * Deno loads the statically analysable part of a worker's module graph (this file and
 * whatever it imports with a literal specifier) with the *parent's* permissions, and only
 * dynamically computed imports with the worker's own. Imported this way, every `import`
 * inside the function (static or dynamic, `file:`, `https:`, JSON) is checked against the
 * worker's empty permission set. This file therefore imports nothing at run time.
 *
 * @module
 */
import type { CallMethod, HostMessage, WireError, WorkerMessage } from "./_protocol.ts";
import type {
  Completion,
  FunctionContext,
  FunctionHandler,
  LogFields,
  LogLevel,
  TextStream,
} from "./types.ts";

/** The parts of the worker global scope used here (the file is checked with the window lib). */
interface WorkerScope {
  postMessage(message: unknown, transfer?: Transferable[]): void;
  addEventListener(type: string, listener: (e: Event) => void): void;
  close(): void;
}

const scope = globalThis as unknown as WorkerScope;
// Captured before any user code runs, so a function that replaces them breaks only itself.
const postRaw = scope.postMessage.bind(scope);
const inspect = Deno.inspect;

function post(message: WorkerMessage, transfer: Transferable[] = []): void {
  postRaw(message, transfer);
}

function errorText(e: unknown): string {
  if (e instanceof Error) return e.message ? `${e.name}: ${e.message}` : e.name;
  return typeof e === "string" ? e : inspect(e);
}

/** What a failed ctx call rejects with (see `BindingErrorInfo` in types.ts). */
class BindingError extends Error {
  override readonly name = "BindingError";
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
  constructor(e: WireError) {
    super(e.message);
    this.status = e.status;
    this.type = e.type;
    this.param = e.param;
    this.code = e.code;
  }
}

function ended(): BindingError {
  return new BindingError({
    message: "The invocation has ended: ctx can only be used while its request is served",
    status: 409,
    type: "invalid_request_error",
    param: null,
    code: "invocation_ended",
  });
}

// ------------------------------------------------------------
// state

let handler: FunctionHandler | null = null;
let functionName = "";
let functionEnv: Readonly<Record<string, string>> = Object.freeze({});

interface PendingCall {
  onText(text: string): void;
  onReturn(value: unknown): void;
  onThrow(error: BindingError): void;
}

interface Invocation {
  id: number;
  abort: AbortController;
  reader: ReadableStreamDefaultReader<Uint8Array> | null;
  calls: Map<number, PendingCall>;
  nextCall: number;
  /** No more messages go to the host about it (it ended, failed or was cancelled). */
  done: boolean;
  /** The host asked to stop: only "cancelled" goes back now. */
  cancelling: boolean;
}

let current: Invocation | null = null;

function finish(inv: Invocation, message: WorkerMessage): void {
  if (inv.done) return;
  inv.done = true;
  post(message);
  for (const c of inv.calls.values()) c.onThrow(ended());
  inv.calls.clear();
  if (current === inv) current = null;
}

// ------------------------------------------------------------
// ctx

function startCall(
  inv: Invocation,
  method: CallMethod,
  params: unknown,
  stream: boolean,
  session: string | null,
  pending: PendingCall,
): number {
  if (inv.done || current !== inv) throw ended();
  const call = ++inv.nextCall;
  // Structured clone rejects functions, symbols... synchronously: the caller sees a DataCloneError.
  post({ t: "call", id: inv.id, call, method, params, stream, session });
  inv.calls.set(call, pending);
  return call;
}

function wholeCall<T>(
  inv: Invocation,
  method: CallMethod,
  params: unknown,
  session: string | null,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    startCall(inv, method, params, false, session, {
      onText() {},
      onReturn: (v) => resolve(v as T),
      onThrow: reject,
    });
  });
}

function streamCall(
  inv: Invocation,
  method: CallMethod,
  params: unknown,
  session: string | null,
): TextStream {
  const queue: string[] = [];
  let finished = false;
  let failure: BindingError | null = null;
  let wake: (() => void) | null = null;
  let resolveResult!: (c: Completion) => void;
  let rejectResult!: (e: unknown) => void;
  const result = new Promise<Completion>((res, rej) => {
    resolveResult = res;
    rejectResult = rej;
  });
  // Iterating alone is a complete use: a failure must not also count as an unhandled `result`.
  result.catch(() => {});
  const notify = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  const call = startCall(inv, method, params, true, session, {
    onText(text) {
      queue.push(text);
      notify();
    },
    onReturn(v) {
      finished = true;
      resolveResult(v as Completion);
      notify();
    },
    onThrow(e) {
      finished = true;
      failure = e;
      rejectResult(e);
      notify();
    },
  });
  let cancelled = false;
  const cancel = () => {
    if (cancelled || finished) return;
    cancelled = true;
    if (!inv.done) post({ t: "call_cancel", id: inv.id, call });
  };
  return {
    result,
    cancel,
    [Symbol.asyncIterator](): AsyncIterator<string> {
      return {
        async next(): Promise<IteratorResult<string>> {
          while (true) {
            if (queue.length > 0) return { value: queue.shift()!, done: false };
            if (failure) throw failure;
            if (finished) return { value: undefined, done: true };
            await new Promise<void>((r) => (wake = r));
          }
        },
        return(): Promise<IteratorResult<string>> {
          cancel();
          return Promise.resolve({ value: undefined, done: true });
        },
      };
    },
  };
}

function splitStream<P extends { stream?: boolean }>(params: P): [Omit<P, "stream">, boolean] {
  if (typeof params !== "object" || params === null) return [params, false];
  const { stream, ...rest } = params;
  return [rest, stream === true];
}

function makeContext(inv: Invocation, requestId: string): FunctionContext {
  // One implementation behind the overloads: `stream: true` gives a TextStream.
  type Generating = FunctionContext["generate"] & FunctionContext["chat"];
  const generating = (method: CallMethod, session: string | null) =>
    ((params: { stream?: boolean }): Promise<Completion> | TextStream => {
      const [rest, stream] = splitStream(params);
      return stream
        ? streamCall(inv, method, rest, session)
        : wholeCall<Completion>(inv, method, rest, session);
    }) as Generating;
  const ctx: FunctionContext = {
    name: functionName,
    requestId,
    env: functionEnv,
    signal: inv.abort.signal,
    generate: generating("generate", null),
    chat: generating("chat", null),
    sessions: {
      create: (params) => wholeCall(inv, "sessions.create", params, null),
      get: (id) => wholeCall(inv, "sessions.get", null, String(id)),
      query:
        ((id: string, params: { stream?: boolean }) =>
          generating("sessions.query", String(id))(
            params as Parameters<Generating>[0],
          )) as FunctionContext["sessions"]["query"],
      delete: (id) => wholeCall(inv, "sessions.delete", null, String(id)),
    },
    log(message: string, fields?: LogFields & { level?: LogLevel }) {
      const { level, ...rest } = fields ?? {};
      sendLog(inv.id, level ?? "info", String(message), rest);
    },
  };
  return Object.freeze(ctx);
}

// ------------------------------------------------------------
// logging

function sendLog(id: number, level: LogLevel, message: string, fields: Record<string, unknown>) {
  let clean: Record<string, unknown>;
  try {
    clean = structuredClone(fields);
  } catch {
    clean = { fields: inspect(fields) };
  }
  post({ t: "log", id, level: levels.includes(level) ? level : "info", message, fields: clean });
}

const levels: LogLevel[] = ["debug", "info", "warn", "error"];

function consoleLine(level: LogLevel) {
  return (...args: unknown[]) => {
    const message = args.map((a) => typeof a === "string" ? a : inspect(a)).join(" ");
    sendLog(current?.id ?? 0, level, message, {});
  };
}

console.log = consoleLine("info");
console.info = consoleLine("info");
console.debug = consoleLine("debug");
console.warn = consoleLine("warn");
console.error = consoleLine("error");

// A function that ends its own worker would leave its request hanging until the timeout;
// say so instead.
for (const [target, key] of [[Deno, "exit"], [scope, "close"]] as const) {
  try {
    Object.defineProperty(target, key, {
      value: () => {
        throw new Error(
          `${key === "exit" ? "Deno.exit" : "close"}() is not available to functions`,
        );
      },
    });
  } catch {
    // not configurable here: the host's timeout still ends a worker that closes itself
  }
}

// ------------------------------------------------------------
// uncaught errors end the worker (the host fails the invocation in flight and replaces it)

scope.addEventListener("unhandledrejection", (e) => {
  e.preventDefault();
  post({
    t: "fatal",
    message: `Unhandled rejection: ${errorText((e as PromiseRejectionEvent).reason)}`,
  });
});
scope.addEventListener("error", (e) => {
  e.preventDefault();
  const ev = e as ErrorEvent;
  post({
    t: "fatal",
    message: `Uncaught ${ev.error !== undefined ? errorText(ev.error) : ev.message}`,
  });
});

// ------------------------------------------------------------
// messages from the host

async function load(moduleUrl: string): Promise<void> {
  try {
    // A computed specifier: see the module comment.
    const specifier = [moduleUrl][0];
    const mod = await import(specifier);
    if (typeof mod.default !== "function") {
      const got = mod.default === undefined ? "no default export" : `a ${typeof mod.default}`;
      throw new TypeError(`The module must export a default handler function: it has ${got}`);
    }
    handler = mod.default as FunctionHandler;
    post({ t: "ready" });
  } catch (e) {
    post({ t: "load_error", message: errorText(e) });
  }
}

async function invoke(msg: Extract<HostMessage, { t: "invoke" }>): Promise<void> {
  const inv: Invocation = {
    id: msg.id,
    abort: new AbortController(),
    reader: null,
    calls: new Map(),
    nextCall: 0,
    done: false,
    cancelling: false,
  };
  current = inv;
  let response: unknown;
  try {
    const r = msg.request;
    const request = new Request(r.url, {
      method: r.method,
      headers: r.headers,
      body: r.body,
      signal: inv.abort.signal,
    });
    response = await handler!(request, makeContext(inv, msg.requestId));
    if (!(response instanceof Response)) {
      const got = response === null ? "null" : typeof response;
      throw new TypeError(`The handler must return a Response: it returned ${got}`);
    }
  } catch (e) {
    finish(inv, {
      t: "error",
      id: inv.id,
      message: errorText(e),
      stack: e instanceof Error ? e.stack ?? null : null,
    });
    return;
  }
  if (inv.done) {
    await response.body?.cancel().catch(() => {});
    return;
  }
  const head: WorkerMessage = {
    t: "head",
    id: inv.id,
    status: response.status,
    statusText: response.statusText,
    headers: [...response.headers],
    body: response.body !== null,
  };
  if (response.body === null) {
    finish(inv, head);
    return;
  }
  post(head);
  inv.reader = response.body.getReader();
}

async function pull(inv: Invocation): Promise<void> {
  if (!inv.reader || inv.done) return;
  try {
    const { value, done } = await inv.reader.read();
    if (inv.done || inv.cancelling) return;
    if (done) {
      finish(inv, { t: "end", id: inv.id });
      return;
    }
    // Own the bytes so the buffer can be transferred.
    const chunk = value instanceof Uint8Array
      ? value.slice()
      : new TextEncoder().encode(String(value));
    post({ t: "chunk", id: inv.id, data: chunk }, [chunk.buffer]);
  } catch (e) {
    if (!inv.cancelling) finish(inv, { t: "body_error", id: inv.id, message: errorText(e) });
  }
}

async function cancel(inv: Invocation, reason: string): Promise<void> {
  if (inv.done || inv.cancelling) return;
  inv.cancelling = true;
  const err = new DOMException(reason, "AbortError");
  inv.abort.abort(err);
  if (inv.reader) await inv.reader.cancel(err).catch(() => {});
  finish(inv, { t: "cancelled", id: inv.id });
}

scope.addEventListener("message", (e) => {
  const msg = (e as MessageEvent<HostMessage>).data;
  switch (msg.t) {
    case "init":
      functionName = msg.name;
      functionEnv = Object.freeze({ ...msg.env });
      void load(msg.moduleUrl);
      return;
    case "invoke":
      void invoke(msg);
      return;
  }
  const inv = current;
  if (!inv || inv.id !== msg.id) return;
  switch (msg.t) {
    case "pull":
      void pull(inv);
      return;
    case "cancel":
      void cancel(inv, msg.reason);
      return;
    case "text":
      inv.calls.get(msg.call)?.onText(msg.text);
      return;
    case "return":
      inv.calls.get(msg.call)?.onReturn(msg.value);
      inv.calls.delete(msg.call);
      return;
    case "throw":
      inv.calls.get(msg.call)?.onThrow(new BindingError(msg.error));
      inv.calls.delete(msg.call);
      return;
  }
});

post({ t: "booted" });
