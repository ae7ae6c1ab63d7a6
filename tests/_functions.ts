/**
 * Helpers for the function host tests: a real server on port 0 serving a functions
 * folder, a log sink the test can read, and temporary function folders.
 *
 * @module
 */
import {
  FunctionHost,
  type FunctionHostOptions,
  type FunctionLogRecord,
} from "../engine/functions/host.ts";
import type { FunctionHostServices } from "../engine/functions/services.ts";
import { EngineError } from "../engine/errors.ts";
import { mountFunctions } from "../routes/functions.ts";
import { type AppState, createApp } from "../routes/app.ts";
import { Logger } from "../engine/log.ts";

/** The fixture functions (never served in production: they live under tests/). */
export const fixtures = new URL("./fixtures/functions", import.meta.url).pathname;

/** Services of a host without a model: every generating call is refused. */
export const noEngine: FunctionHostServices = {
  generate() {
    throw new EngineError("unavailable", "No model is loaded");
  },
  chat() {
    throw new EngineError("unavailable", "No model is loaded");
  },
  sessions: null,
};

/** A running test server. */
export interface FunctionServer {
  base: string;
  host: FunctionHost;
  logs: FunctionLogRecord[];
  /** Resolves once no invocation is running or waiting (waits up to 10 s). */
  settled(): Promise<void>;
  /** Resolves with the first log line matching `pred` (waits up to `ms`). */
  waitForLog(pred: (r: FunctionLogRecord) => boolean, ms?: number): Promise<FunctionLogRecord>;
  close(): Promise<void>;
}

/**
 * Serves `dir` on 127.0.0.1, port 0, through the real router and middleware
 * (routes/app.ts) with the function routes mounted. `Authorization: Bearer K` becomes the
 * caller's key, standing in for the auth middleware that is not written yet.
 */
export function serveFunctions(
  dir: string,
  services: FunctionHostServices = noEngine,
  options: Partial<FunctionHostOptions> & { maxBodyBytes?: number } = {},
): FunctionServer {
  const logs: FunctionLogRecord[] = [];
  const host = new FunctionHost({ dir, services, log: (r) => logs.push(r), ...options });
  const state: AppState = {
    phase: "loading",
    llm: null,
    log: new Logger({ level: "silent" }),
    maxBodyBytes: options.maxBodyBytes ?? 16 * 1024 * 1024,
  };
  const app = mountFunctions(createApp(state), () => host, {
    apiKeyOf: (req) => {
      const auth = req.headers.get("authorization");
      return auth?.startsWith("Bearer ") ? auth.slice(7) : null;
    },
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, app.fetch);
  return {
    base: `http://127.0.0.1:${server.addr.port}`,
    host,
    logs,
    async settled() {
      const until = Date.now() + 10_000;
      while (Date.now() < until) {
        const st = host.stats();
        if (st.running === 0 && st.waiting === 0) return;
        await new Promise((r) => setTimeout(r, 10));
      }
      throw new Error(`Invocations still running: ${JSON.stringify(host.stats())}`);
    },
    async waitForLog(pred, ms = 10_000) {
      const until = Date.now() + ms;
      while (Date.now() < until) {
        const hit = logs.find(pred);
        if (hit) return hit;
        await new Promise((r) => setTimeout(r, 10));
      }
      throw new Error(`No matching log line in ${ms} ms: ${JSON.stringify(logs)}`);
    },
    async close() {
      await host.close();
      await server.shutdown();
    },
  };
}

/** A temporary functions folder with `files` (name → text); removed by `[Symbol.asyncDispose]`. */
export async function tempFunctions(
  files: Record<string, string>,
): Promise<{ dir: string; write(name: string, text: string): Promise<void> } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "magicpig-functions-" });
  const write = async (name: string, text: string) => {
    const path = `${dir}/${name}`;
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    await Deno.writeTextFile(path, text);
  };
  for (const [name, text] of Object.entries(files)) await write(name, text);
  return {
    dir,
    write,
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Reads a response's body stream chunk by chunk as text. */
export function chunks(res: Response): AsyncIterableIterator<string> & { cancel(): Promise<void> } {
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  const it = {
    async next(): Promise<IteratorResult<string>> {
      const { value, done } = await reader.read();
      return done ? { value: undefined, done: true } : { value: dec.decode(value), done: false };
    },
    [Symbol.asyncIterator]() {
      return it;
    },
    cancel: () => reader.cancel(),
  };
  return it as AsyncIterableIterator<string> & { cancel(): Promise<void> };
}
