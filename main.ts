/**
 * The host's entry point: parses flags and environment (`--help` lists them), starts the
 * server, loads the model (the generated demo model when no `--model` is given), and
 * shuts down gracefully on SIGINT/SIGTERM: stop accepting, let running requests finish for
 * `--drain-timeout` seconds, abort the rest, free the engine, exit 0. A second signal
 * exits at once.
 *
 * @example
 * ```sh
 * deno task start --model ../shared/models/stories260K/stories260K.gguf --port 8080
 * ```
 *
 * @module
 */
import { ConfigError, parseConfig } from "./engine/config.ts";
import { Logger } from "./engine/log.ts";
import { loadApiKeys } from "./routes/_auth.ts";
import { startServer } from "./server.ts";

/** Runs the server until a signal; returns the exit code. */
export async function main(args: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseConfig(args, Deno.env.toObject());
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    console.error(`${e.message}\nRun with --help to see the options.`);
    return 2;
  }
  if (parsed.kind === "help") {
    console.log(parsed.text);
    return 0;
  }
  const config = parsed.config;
  const log = new Logger({ level: config.logLevel });
  // A stray rejection must not take the server (and every running request) down.
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    const r = e.reason;
    log.error("unhandled rejection", {
      error: r instanceof Error ? r.stack ?? r.message : String(r),
    });
  });
  let apiKeys: string[];
  try {
    apiKeys = await loadApiKeys(config.apiKeys, config.apiKeyFile);
  } catch (e) {
    console.error(e instanceof Error ? e.message : String(e));
    return 2;
  }
  const server = await startServer({
    port: config.port,
    host: config.host,
    model: config.model,
    threads: config.threads,
    maxRunning: config.maxRunning,
    maxBodyBytes: config.maxBodyBytes,
    drainTimeoutMs: config.drainTimeoutSeconds * 1000,
    gpuMemoryBudget: config.gpuMemoryBudget,
    apiKeys,
    functions: config.functions,
    sessions: {
      dir: config.sessionDir,
      hostMemoryBudget: config.hostMemoryBudget,
      defaultTtlSeconds: config.sessionTtlSeconds,
      maxTtlSeconds: config.sessionMaxTtlSeconds,
    },
    log,
  });

  const { promise: exitCode, resolve: exit } = Promise.withResolvers<number>();
  let signalled = false;
  const onSignal = (signal: Deno.Signal) => () => {
    if (signalled) {
      log.warn("second signal: exiting now", { signal });
      exit(130);
      return;
    }
    signalled = true;
    log.info("signal received", { signal });
    server.shutdown().then(() => exit(0), (e) => {
      log.error("shutdown failed", { error: e instanceof Error ? e.message : String(e) });
      exit(1);
    });
  };
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  const handlers = signals.map((s) => [s, onSignal(s)] as const);
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);

  server.ready.catch(async () => {
    // The failure is logged by the server; a host without its model is of no use.
    await server.shutdown();
    exit(1);
  });

  const code = await exitCode;
  for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
  return code;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
