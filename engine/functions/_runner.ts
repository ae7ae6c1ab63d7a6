/**
 * One function worker seen from the host: starts the permission-less Worker, loads the
 * function into it, runs one invocation at a time (request in, Response head and body
 * chunks out, `ctx` calls served meanwhile), enforces the invocation's deadline, and
 * terminates the worker when it hangs, crashes or times out.
 *
 * @module
 */
import { runCall, toWireError } from "./_calls.ts";
import type { HostMessage, WireRequest, WorkerMessage } from "./_protocol.ts";
import { FunctionError } from "./errors.ts";
import type { Caller, FunctionHostServices } from "./services.ts";
import type { LogLevel } from "./types.ts";

/** A structured log line from the function host or a function. */
export interface FunctionLogRecord {
  level: LogLevel;
  /** The function's name. */
  function: string;
  /** The HTTP request's id (null for lines outside an invocation). */
  request_id: string | null;
  msg: string;
  /** "function" for ctx.log/console lines, "host" for the host's own. */
  source: "function" | "host";
  [field: string]: unknown;
}

/** Where log lines go. */
export type LogSink = (record: FunctionLogRecord) => void;

/** The worker could not load the function (syntax error, no default export, top-level throw). */
export class LoadFailure extends Error {
  override readonly name = "LoadFailure";
}

/** One invocation's inputs. */
export interface RunInput {
  request: WireRequest;
  caller: Caller;
  /** Absolute deadline (Date.now() clock) and the limit it came from (for the message). */
  deadline: number;
  timeoutMs: number;
  /** The client's signal: aborts when it disconnects. */
  signal: AbortSignal;
  /** Called exactly once when the invocation is over; `healthy` false: the worker is gone. */
  onDone(healthy: boolean): void;
}

const headerBlocklist = new Set([
  "connection",
  "keep-alive",
  "transfer-encoding",
  "content-length",
  "upgrade",
  "proxy-connection",
]);

let nextInvocation = 1;

/** ctx calls one invocation may have running at once. */
const maxCallsInFlight = 16;

let bootstrap: string | null = null;

/**
 * The worker's main module: a `data:` URL that imports the bootstrap (_worker.ts, read
 * here and handed over as a blob) through a computed specifier. So the bootstrap is
 * transpiled but never type-checked at run time (`deno test` checks a worker's main
 * module, for every worker), and the worker's statically loaded graph is this one line.
 * The bootstrap says "booted" once it listens.
 */
function bootstrapUrl(): string {
  if (bootstrap === null) {
    const src = Deno.readTextFileSync(new URL("./_worker.ts", import.meta.url));
    const blob = URL.createObjectURL(new Blob([src], { type: "application/typescript" }));
    bootstrap = "data:text/javascript," +
      encodeURIComponent(`const bootstrap = ${JSON.stringify(blob)};\nimport(bootstrap);\n`);
  }
  return bootstrap;
}

interface Running {
  id: number;
  input: RunInput;
  phase: "head" | "body" | "cancelling" | "over";
  resolveHead(r: Response): void;
  rejectHead(e: unknown): void;
  controller: ReadableStreamDefaultController<Uint8Array> | null;
  pullWaiter: (() => void) | null;
  /** Aborts every ctx call of the invocation. */
  abort: AbortController;
  calls: Map<number, AbortController>;
  timer: ReturnType<typeof setTimeout>;
  graceTimer: ReturnType<typeof setTimeout> | null;
}

/** A Worker running one function version. */
export class FunctionWorker {
  /** Resolves when the function module loaded; rejects with {@link LoadFailure}. */
  readonly ready: Promise<void>;
  #worker: Worker;
  #name: string;
  #services: FunctionHostServices;
  #log: LogSink;
  #graceMs: number;
  #loaded = false;
  #dead = false;
  #readyResolve!: () => void;
  #readyReject!: (e: unknown) => void;
  #run: Running | null = null;
  /** Sent once the bootstrap says it listens. */
  #init: HostMessage | null;
  #onExit: () => void;

  constructor(
    moduleUrl: string,
    name: string,
    env: Readonly<Record<string, string>>,
    services: FunctionHostServices,
    log: LogSink,
    cancelGraceMs: number,
    onExit: () => void = () => {},
  ) {
    this.#onExit = onExit;
    this.#name = name;
    this.#services = services;
    this.#log = log;
    this.#graceMs = cancelGraceMs;
    this.ready = new Promise((res, rej) => {
      this.#readyResolve = res;
      this.#readyReject = rej;
    });
    this.ready.catch(() => {});
    this.#worker = new Worker(bootstrapUrl(), {
      type: "module",
      name: `function:${name}`,
      deno: { permissions: "none" },
    } as WorkerOptions);
    this.#worker.onmessage = (e: MessageEvent<unknown>) => this.#onMessage(e.data);
    this.#worker.onmessageerror = () => this.#fatal("A message from the worker could not be read");
    this.#worker.onerror = (e: ErrorEvent) => {
      // Unhandled, a worker's error would take the whole host down.
      e.preventDefault();
      this.#fatal(e.message || "The worker failed");
    };
    this.#init = { t: "init", moduleUrl, name, env: { ...env } };
  }

  /** Whether the worker was terminated (it cannot run anything more). */
  get dead(): boolean {
    return this.#dead;
  }

  /** Whether an invocation is in progress. */
  get busy(): boolean {
    return this.#run !== null;
  }

  /** Ends the worker at once; an invocation in progress fails with `error`. */
  terminate(error: FunctionError | null = null): void {
    if (this.#dead) return;
    this.#kill();
    if (!this.#loaded) {
      this.#readyReject(new LoadFailure(error?.message ?? "The worker was stopped"));
    }
    const run = this.#run;
    if (run) {
      this.#over(run, false, error ?? FunctionError.crashed(this.#name, "the worker was stopped"));
    }
  }

  /**
   * Starts an invocation (the worker must be ready and idle). Resolves with the Response
   * once the function has produced its head; its body streams chunk by chunk as the
   * client reads it. Rejects with a {@link FunctionError}.
   */
  run(input: RunInput): Promise<Response> {
    if (this.#dead || this.#run) throw new Error("The worker is not idle");
    return new Promise<Response>((resolveHead, rejectHead) => {
      const run: Running = {
        id: nextInvocation++,
        input,
        phase: "head",
        resolveHead,
        rejectHead,
        controller: null,
        pullWaiter: null,
        abort: new AbortController(),
        calls: new Map(),
        timer: undefined as unknown as ReturnType<typeof setTimeout>,
        graceTimer: null,
      };
      this.#run = run;
      run.timer = setTimeout(
        () => this.terminate(FunctionError.timeout(this.#name, input.timeoutMs)),
        Math.max(0, input.deadline - Date.now()),
      );
      const onClientGone = () => this.#cancel(run, "The client disconnected");
      input.signal.addEventListener("abort", onClientGone, { once: true });
      run.abort.signal.addEventListener(
        "abort",
        () => input.signal.removeEventListener("abort", onClientGone),
        { once: true },
      );
      const transfer = input.request.body ? [input.request.body] : [];
      this.#post(
        { t: "invoke", id: run.id, requestId: input.caller.requestId, request: input.request },
        transfer,
      );
      if (input.signal.aborted) onClientGone();
    });
  }

  // ------------------------------------------------------------
  // lifecycle of an invocation

  /** Ends `run` once: fails a pending head, errors or closes the body, releases the worker. */
  #over(run: Running, healthy: boolean, error: FunctionError | null, log = true): void {
    if (run.phase === "over") return;
    const phase = run.phase;
    run.phase = "over";
    clearTimeout(run.timer);
    if (run.graceTimer !== null) clearTimeout(run.graceTimer);
    run.abort.abort(error ?? new DOMException("The invocation ended", "AbortError"));
    if (this.#run === run) this.#run = null;
    if (phase === "head") {
      run.rejectHead(error ?? FunctionError.crashed(this.#name, "no response"));
    } else if (run.controller && phase === "body") {
      try {
        if (error) run.controller.error(error);
        else run.controller.close();
      } catch {
        // the stream was already cancelled by the client
      }
      const w = run.pullWaiter;
      run.pullWaiter = null;
      w?.();
    }
    if (log && error && error.status >= 500) {
      this.#log({
        level: "error",
        function: this.#name,
        request_id: run.input.caller.requestId,
        msg: error.message,
        source: "host",
        status: error.status,
      });
    }
    if (!healthy) this.#kill();
    run.input.onDone(healthy && !this.#dead);
  }

  /** The client went away: stop the function, wait briefly for it to let go, else end the worker. */
  #cancel(run: Running, reason: string): void {
    if (run.phase === "over" || run.phase === "cancelling") return;
    const wasHead = run.phase === "head";
    run.phase = "cancelling";
    for (const c of run.calls.values()) c.abort(new DOMException(reason, "AbortError"));
    this.#post({ t: "cancel", id: run.id, reason });
    if (wasHead) {
      run.rejectHead(new FunctionError(499, "invalid_request_error", reason, "client_closed"));
    }
    run.graceTimer = setTimeout(() => this.#over(run, false, null), this.#graceMs);
  }

  #kill(): void {
    if (this.#dead) return;
    this.#dead = true;
    this.#worker.terminate();
    this.#onExit();
  }

  #fatal(message: string): void {
    if (!this.#loaded) {
      this.#log({
        level: "error",
        function: this.#name,
        request_id: null,
        msg: `Function "${this.#name}" failed to load: ${message}`,
        source: "host",
      });
      this.terminate(new FunctionError(500, "function_error", message));
      return;
    }
    const run = this.#run;
    if (!run) {
      this.#log({
        level: "error",
        function: this.#name,
        request_id: null,
        msg: `Function "${this.#name}" crashed between invocations: ${message}`,
        source: "host",
      });
      this.terminate();
      return;
    }
    this.#over(run, false, FunctionError.crashed(this.#name, message));
  }

  #post(msg: HostMessage, transfer: Transferable[] = []): void {
    if (this.#dead) return;
    this.#worker.postMessage(msg, transfer);
  }

  // ------------------------------------------------------------
  // messages from the worker (untrusted: checked before use)

  #onMessage(data: unknown): void {
    if (this.#dead || typeof data !== "object" || data === null) return;
    const msg = data as WorkerMessage;
    if (msg.t === "booted" && this.#init) {
      this.#post(this.#init);
      this.#init = null;
      return;
    }
    if (msg.t === "ready" && !this.#loaded) {
      this.#loaded = true;
      this.#readyResolve();
      return;
    }
    if (msg.t === "load_error" && !this.#loaded) {
      this.#kill();
      this.#readyReject(new LoadFailure(String(msg.message)));
      return;
    }
    if (msg.t === "fatal") {
      this.#fatal(String(msg.message));
      return;
    }
    if (msg.t === "log") {
      this.#onLog(msg);
      return;
    }
    const run = this.#run;
    if (!run || !("id" in msg) || msg.id !== run.id) return;
    switch (msg.t) {
      case "head":
        this.#onHead(run, msg);
        return;
      case "chunk": {
        if (run.phase !== "body" || !run.controller) return;
        // One chunk per pull: a worker pushing more would fill the host's memory.
        if (!(msg.data instanceof Uint8Array) || run.pullWaiter === null) {
          this.#over(
            run,
            false,
            FunctionError.crashed(
              this.#name,
              "it sent a body chunk that is not bytes or was not asked for",
            ),
          );
          return;
        }
        run.controller.enqueue(msg.data);
        const w = run.pullWaiter;
        run.pullWaiter = null;
        w?.();
        return;
      }
      case "end":
        if (run.phase === "body" || run.phase === "cancelling") this.#over(run, true, null);
        return;
      case "body_error":
        if (run.phase !== "body") return;
        this.#log({
          level: "error",
          function: this.#name,
          request_id: run.input.caller.requestId,
          msg: `Function "${this.#name}" response body failed: ${String(msg.message)}`,
          source: "host",
        });
        this.#over(run, true, FunctionError.threw(this.#name, String(msg.message)), false);
        return;
      case "error":
        if (run.phase !== "head") return;
        this.#log({
          level: "error",
          function: this.#name,
          request_id: run.input.caller.requestId,
          msg: `Function "${this.#name}" threw: ${String(msg.message)}`,
          source: "function",
          stack: typeof msg.stack === "string" ? msg.stack : null,
        });
        // logged above with its stack: not again by #over
        this.#over(run, true, FunctionError.threw(this.#name, String(msg.message)), false);
        return;
      case "cancelled":
        if (run.phase === "cancelling") this.#over(run, true, null);
        return;
      case "call":
        this.#onCall(run, msg);
        return;
      case "call_cancel":
        run.calls.get(msg.call)?.abort(
          new DOMException("The function stopped reading", "AbortError"),
        );
        return;
    }
  }

  #onHead(run: Running, msg: Extract<WorkerMessage, { t: "head" }>): void {
    if (run.phase !== "head") return;
    const status = msg.status;
    let headers: Headers;
    try {
      if (!Number.isInteger(status) || status < 200 || status > 599) {
        throw new Error(`status ${status} is out of range`);
      }
      headers = new Headers();
      for (const [k, v] of msg.headers) {
        if (!headerBlocklist.has(String(k).toLowerCase())) headers.append(String(k), String(v));
      }
    } catch (e) {
      this.#over(
        run,
        false,
        FunctionError.crashed(this.#name, `invalid response: ${(e as Error).message}`),
      );
      return;
    }
    if (!msg.body) {
      run.resolveHead(new Response(null, { status, statusText: String(msg.statusText), headers }));
      run.phase = "body";
      this.#over(run, true, null);
      return;
    }
    run.phase = "body";
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        run.controller = controller;
      },
      pull: () => {
        if (run.phase !== "body") return;
        return new Promise<void>((resolve) => {
          run.pullWaiter = resolve;
          this.#post({ t: "pull", id: run.id });
        });
      },
      cancel: () => this.#cancel(run, "The client disconnected"),
    }, { highWaterMark: 0 });
    let response: Response;
    try {
      response = new Response(body, { status, statusText: String(msg.statusText), headers });
    } catch (e) {
      this.#over(
        run,
        false,
        FunctionError.crashed(this.#name, `invalid response: ${(e as Error).message}`),
      );
      return;
    }
    run.resolveHead(response);
  }

  #onLog(msg: Extract<WorkerMessage, { t: "log" }>): void {
    const run = this.#run;
    const levels: LogLevel[] = ["debug", "info", "warn", "error"];
    const fields = typeof msg.fields === "object" && msg.fields !== null ? msg.fields : {};
    this.#log({
      ...fields,
      level: levels.includes(msg.level) ? msg.level : "info",
      function: this.#name,
      request_id: run && msg.id === run.id ? run.input.caller.requestId : null,
      msg: String(msg.message),
      source: "function",
    });
  }

  #onCall(run: Running, msg: Extract<WorkerMessage, { t: "call" }>): void {
    if (run.phase === "over" || run.phase === "cancelling") return;
    const call = msg.call;
    if (!Number.isInteger(call) || run.calls.has(call)) return;
    if (run.calls.size >= maxCallsInFlight) {
      this.#post({
        t: "throw",
        id: run.id,
        call,
        error: {
          message: `Too many ctx calls in flight: at most ${maxCallsInFlight} per invocation`,
          status: 429,
          type: "rate_limit_error",
          param: null,
          code: "too_many_calls",
        },
      });
      return;
    }
    const ctrl = new AbortController();
    run.calls.set(call, ctrl);
    const onAbort = () => ctrl.abort(run.abort.signal.reason);
    run.abort.signal.addEventListener("abort", onAbort, { once: true });
    const live = () => this.#run === run && (run.phase === "head" || run.phase === "body");
    runCall(
      this.#services,
      run.input.caller,
      msg.method,
      msg.params,
      typeof msg.session === "string" ? msg.session : null,
      msg.stream === true,
      { text: (text) => live() && this.#post({ t: "text", id: run.id, call, text }) },
      ctrl.signal,
    ).then(
      (value) => live() && this.#post({ t: "return", id: run.id, call, value }),
      (e) => live() && this.#post({ t: "throw", id: run.id, call, error: toWireError(e) }),
    ).finally(() => {
      run.calls.delete(call);
      run.abort.signal.removeEventListener("abort", onAbort);
    });
  }
}
