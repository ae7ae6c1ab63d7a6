/**
 * Starts the HTTP server: listens at once (so `/health` answers 503 while the model
 * loads), opens the model in the background, then serves. `shutdown()` stops accepting
 * requests, lets running ones finish for the drain timeout, aborts the rest, frees the
 * engine and closes the listener. `main.ts` wires flags and signals to this; tests call
 * it in-process on port 0.
 *
 * @example
 * ```ts
 * import { startServer } from "./server.ts";
 * const server = await startServer({ port: 0, model: "model.gguf" });
 * await server.ready;
 * console.log(server.url);
 * await server.shutdown();
 * ```
 *
 * @module
 */
import type { LLM } from "./engine/llm.ts";
import { Logger } from "./engine/log.ts";
import { openLLM, type OpenOptions } from "./engine/load.ts";
import { Metrics } from "./engine/metrics.ts";
import { type AppState, createApp } from "./routes/app.ts";
import { FunctionHost, logSinkFor } from "./engine/functions/host.ts";
import { llmServices } from "./engine/functions/llm_services.ts";
import { sessionServices } from "./engine/session_services.ts";
import { EngineError } from "./engine/errors.ts";

/** Options of {@link startServer}. */
export interface ServerOptions extends OpenOptions {
  /** TCP port; 0 picks a free one (default 8080). */
  port?: number;
  /** Listen address (default "0.0.0.0"). */
  host?: string;
  /** Largest accepted request body (default 16 MiB). */
  maxBodyBytes?: number;
  /** How long shutdown lets running requests finish (default 30 s). */
  drainTimeoutMs?: number;
  /** Logger (default: JSON lines on stdout at info level). */
  log?: Logger;
  /**
   * Opens the model instead of {@link openLLM} (tests: a model variant); pass `metrics` on to
   * `openLLM` so that `/metrics` shows the model's request and session metrics.
   */
  open?: (log: Logger, metrics: Metrics) => Promise<LLM>;
  /** API keys accepted as `Authorization: Bearer`; none: an open server (logged as a warning). */
  apiKeys?: readonly string[];
  /** Folder of user functions served at /v1/functions/NAME; null or absent: functions are off. */
  functions?: string | null;
}

/** A running server. */
export interface Server {
  /** "http://host:port" (127.0.0.1 when listening on every address). */
  readonly url: string;
  readonly port: number;
  /** The routes' state: phase, model, limits. */
  readonly state: AppState;
  /** Resolves with the model once it serves; rejects when loading fails. */
  readonly ready: Promise<LLM>;
  /** Graceful stop (idempotent); resolves once everything is freed. */
  shutdown(): Promise<void>;
}

/** Starts listening and loads the model in the background. */
export async function startServer(options: ServerOptions = {}): Promise<Server> {
  const log = options.log ?? new Logger();
  const metrics = options.metrics ?? new Metrics();
  const apiKeys = options.apiKeys ?? [];
  const state: AppState = {
    phase: "loading",
    llm: null,
    log,
    maxBodyBytes: options.maxBodyBytes ?? 16 * 1024 * 1024,
    apiKeys,
    metrics,
  };
  if (apiKeys.length === 0) {
    log.warn("no API keys configured: the server is open and every caller shares one owner", {
      hint: "use --api-key, --api-key-file or MAGICPIG_API_KEYS",
    });
  }
  const readyLLM = (): LLM => {
    if (state.phase === "ready" && state.llm) return state.llm;
    throw new EngineError("unavailable", "The model is not ready: retry shortly");
  };
  state.functions = null;
  if (options.functions) {
    state.functions = new FunctionHost({
      dir: options.functions,
      services: llmServices(readyLLM, sessionServices(readyLLM)),
      log: logSinkFor(log),
    });
    log.info("functions enabled", { dir: options.functions });
  }
  const app = createApp(state);
  const { promise: listening, resolve: onListen } = Promise.withResolvers<Deno.NetAddr>();
  const http = Deno.serve({
    port: options.port ?? 8080,
    hostname: options.host ?? "0.0.0.0",
    onListen: (addr) => onListen(addr as Deno.NetAddr),
    onError: (e) => {
      log.error("unhandled error", { error: e instanceof Error ? e.message : String(e) });
      return Response.json(
        { error: { message: "Internal error", type: "server_error", param: null, code: null } },
        { status: 500 },
      );
    },
  }, app.fetch);
  const addr = await listening;
  const host = addr.hostname === "0.0.0.0" || addr.hostname === "::" ? "127.0.0.1" : addr.hostname;
  const url = `http://${host.includes(":") ? `[${host}]` : host}:${addr.port}`;
  log.info("listening", { url, host: addr.hostname, port: addr.port });

  const open = options.open ?? ((l: Logger, m: Metrics) => openLLM({ ...options, metrics: m }, l));
  const ready = (async () => {
    try {
      const llm = await open(log, metrics);
      if (state.phase === "stopping") {
        await llm.close();
        throw new Error("The server was stopped while the model loaded");
      }
      state.llm = llm;
      state.phase = "ready";
      log.info("ready", { model: llm.info.id, max_model_len: llm.info.maxModelLen });
      return llm;
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      if (state.phase !== "stopping") {
        state.phase = "failed";
        state.loadError = message;
        log.error("model load failed", { error: message });
      }
      throw e;
    }
  })();
  ready.catch(() => {}); // observed through `ready` and /health

  let stopped: Promise<void> | null = null;
  const shutdown = () =>
    stopped ??= (async () => {
      const t0 = performance.now();
      log.info("shutting down", { drain_timeout_ms: options.drainTimeoutMs ?? 30_000 });
      state.phase = "stopping";
      const httpDone = http.shutdown();
      await ready.catch(() => {});
      if (state.llm) {
        await state.llm.close({ drain: true, timeoutMs: options.drainTimeoutMs ?? 30_000 });
      }
      await httpDone;
      await state.functions?.close();
      log.info("stopped", { ms: Math.round(performance.now() - t0) });
    })();

  return { url, port: addr.port, state, ready, shutdown };
}
