/**
 * The function host: serves `NAME.ts` modules of a folder, each in permission-less
 * workers (one invocation per worker at a time, up to the function's concurrency), with
 * per-function limits from `NAME.json` (see manifest.ts), and `ctx` calls served by a
 * {@link FunctionHostServices}.
 *
 * A function's files are checked on every invocation (a `stat` each; their text again
 * only in the two seconds after a change, which mtimes cannot resolve). A changed file
 * makes a new version: new invocations start fresh workers on it, invocations in flight
 * finish on the old workers, which then end.
 *
 * @example
 * ```ts
 * import { FunctionHost } from "./host.ts";
 * declare const services: import("./services.ts").FunctionHostServices;
 * const host = new FunctionHost({ dir: "functions", services });
 * Deno.serve((req) =>
 *   host.invoke("hello", req, { apiKey: null, requestId: crypto.randomUUID() })
 * );
 * ```
 *
 * @module
 */
import { Limiter, LimiterFullError } from "./_limiter.ts";
import { FunctionWorker, LoadFailure, type LogSink } from "./_runner.ts";
import {
  type FileStamp,
  type LoadedSource,
  loadSource,
  sameStamp,
  SourceError,
  stamp,
} from "./_source.ts";
import { FunctionError } from "./errors.ts";
import {
  defaultLimits,
  type FunctionLimits,
  type FunctionManifest,
  parseManifest,
} from "./manifest.ts";
import type { FunctionHostServices } from "./services.ts";
import type { Logger } from "../log.ts";

export type { FunctionLogRecord, LogSink } from "./_runner.ts";

/** A {@link LogSink} writing through the server's JSON-lines logger. */
export function logSinkFor(logger: Logger): LogSink {
  return ({ level, msg, ...fields }) => logger.log(level, msg, fields);
}

/** How to run the host. */
export interface FunctionHostOptions {
  /** The functions folder. */
  dir: string;
  /** What `ctx` reaches. */
  services: FunctionHostServices;
  /** Defaults for functions whose manifest leaves a limit out. */
  limits?: Partial<FunctionLimits>;
  /** Where log lines go; default: one JSON line each on stdout. */
  log?: LogSink;
  /** An idle worker ends after this long (default 5 minutes). */
  idleWorkerMs?: number;
  /** After a client disconnects, how long the function has to let go before its worker ends (default 2 s). */
  cancelGraceMs?: number;
}

/** Who is calling (from the HTTP layer). */
export interface InvocationCaller {
  /** The API key the request authenticated with; null without keys. */
  apiKey: string | null;
  /** The request's id. */
  requestId: string;
}

/** A function as `GET /v1/functions` lists it. */
export interface FunctionInfo {
  name: string;
  description: string | null;
  /** Why it cannot be loaded (a bad manifest), if it cannot. */
  error: string | null;
}

/** Counters for metrics. */
export interface FunctionHostStats {
  /** Workers alive (idle or busy), over every function. */
  workers: number;
  /** Invocations running now. */
  running: number;
  /** Invocations waiting for a slot. */
  waiting: number;
}

const namePattern = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
// Files whose mtime is this close to when they were read may still change unseen.
const racyMs = 2000;

function defaultLog(record: Record<string, unknown>): void {
  console.log(JSON.stringify({ time: new Date().toISOString(), ...record }));
}

/** One loaded state of a function's files; its workers run exactly this code. */
class Version {
  readonly idle: { worker: FunctionWorker; timer: ReturnType<typeof setTimeout> }[] = [];
  readonly busy = new Set<FunctionWorker>();
  retired = false;
  /** Set when a worker failed to load this code (it will fail the same way again). */
  loadError: string | null;

  constructor(
    readonly name: string,
    readonly source: LoadedSource | null,
    readonly manifest: FunctionManifest,
    public stamps: FileStamp[],
    public loadedAt: number,
    readonly hash: string,
    loadError: string | null,
    /** A failed load that read only part of the files: try again on every invocation. */
    readonly retryAlways: boolean,
  ) {
    this.loadError = loadError;
  }

  /** Ends idle workers now and busy ones when they finish; frees the blob URLs after. */
  retire(): void {
    this.retired = true;
    for (const { worker, timer } of this.idle.splice(0)) {
      clearTimeout(timer);
      worker.terminate();
    }
    if (this.busy.size === 0) this.source?.revoke();
  }
}

interface Entry {
  name: string;
  limiter: Limiter;
  version: Version | null;
  refreshing: Promise<Version> | null;
}

/** Serves the functions of one folder. */
export class FunctionHost {
  readonly dir: string;
  #services: FunctionHostServices;
  #defaults: FunctionLimits;
  #log: LogSink;
  #idleMs: number;
  #graceMs: number;
  #entries = new Map<string, Entry>();
  #workers = new Set<FunctionWorker>();
  #closed = false;

  constructor(options: FunctionHostOptions) {
    this.dir = options.dir.replace(/\/+$/, "") || "/";
    this.#services = options.services;
    this.#defaults = { ...defaultLimits, ...options.limits };
    this.#log = options.log ?? defaultLog;
    this.#idleMs = options.idleWorkerMs ?? 5 * 60_000;
    this.#graceMs = options.cancelGraceMs ?? 2000;
  }

  /**
   * Runs function `name` on `request` for `caller`. Resolves with the function's
   * Response (its body streams as the function writes it); rejects with a
   * {@link FunctionError} (404 unknown, 413 body too large, 429 busy, 500 load failure,
   * throw or crash, 504 timeout).
   */
  async invoke(name: string, request: Request, caller: InvocationCaller): Promise<Response> {
    if (this.#closed) throw FunctionError.closed();
    if (!namePattern.test(name)) throw FunctionError.notFound(name);
    const entry = this.#entry(name);
    let version: Version;
    try {
      version = await this.#current(entry);
    } catch (e) {
      // Unknown names leave nothing behind.
      if (entry.version === null && entry.limiter.running + entry.limiter.waiting === 0) {
        this.#entries.delete(name);
      }
      throw e;
    }
    if (version.loadError !== null) throw FunctionError.loadFailed(name, version.loadError);
    const limits = version.manifest.limits;
    const body = await readBody(request, limits.maxBodyBytes, name);

    let release: () => void;
    try {
      release = await entry.limiter.acquire(limits.concurrency, limits.queue, request.signal);
    } catch (e) {
      if (e instanceof LimiterFullError) throw FunctionError.busy(name, e.message, 1);
      throw new FunctionError(
        499,
        "invalid_request_error",
        "The client disconnected",
        "client_closed",
      );
    }
    const deadline = Date.now() + limits.timeoutMs;
    let worker: FunctionWorker;
    try {
      worker = await this.#acquireWorker(version, deadline, limits.timeoutMs);
    } catch (e) {
      release();
      throw e;
    }
    const headers: [string, string][] = [];
    for (const [k, v] of request.headers) {
      if (k !== "authorization" && k !== "proxy-authorization") headers.push([k, v]);
    }
    try {
      return await worker.run({
        request: { url: request.url, method: request.method, headers, body },
        caller: { apiKey: caller.apiKey, requestId: caller.requestId, functionName: name },
        deadline,
        timeoutMs: limits.timeoutMs,
        signal: request.signal,
        onDone: (healthy) => {
          this.#releaseWorker(version, worker, healthy);
          release();
        },
      });
    } catch (e) {
      if (e instanceof FunctionError) throw e;
      throw FunctionError.crashed(name, e instanceof Error ? e.message : String(e));
    }
  }

  /** The functions in the folder (`*.ts` files whose name does not start with `_`); none when it is missing. */
  async list(): Promise<FunctionInfo[]> {
    const out: FunctionInfo[] = [];
    try {
      await Deno.stat(this.dir);
    } catch (e) {
      // No folder: no functions.
      if (e instanceof Deno.errors.NotFound) return out;
      throw e;
    }
    for await (const e of Deno.readDir(this.dir)) {
      if (!e.isFile || !e.name.endsWith(".ts")) continue;
      const name = e.name.slice(0, -3);
      if (!namePattern.test(name)) continue;
      let description: string | null = null;
      let error: string | null = null;
      try {
        description = (await this.#readManifest(name)).manifest.description;
      } catch (err) {
        error = (err as Error).message;
      }
      out.push({ name, description, error });
    }
    return out.sort((a, b) => a.name < b.name ? -1 : 1);
  }

  /** Workers and invocations now. */
  stats(): FunctionHostStats {
    let running = 0;
    let waiting = 0;
    for (const e of this.#entries.values()) {
      running += e.limiter.running;
      waiting += e.limiter.waiting;
    }
    return { workers: this.#workers.size, running, waiting };
  }

  /** Ends every worker (invocations in flight fail) and refuses new invocations. Idempotent. */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    for (const e of this.#entries.values()) {
      e.limiter.rejectAll(FunctionError.closed());
      const v = e.version;
      if (!v) continue;
      v.retire();
    }
    for (const w of [...this.#workers]) w.terminate(FunctionError.closed());
    return Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ------------------------------------------------------------
  // versions

  #entry(name: string): Entry {
    let e = this.#entries.get(name);
    if (!e) {
      e = { name, limiter: new Limiter(), version: null, refreshing: null };
      this.#entries.set(name, e);
    }
    return e;
  }

  /** The entry's version, reloaded when its files changed; 404 when the module is gone. */
  #current(entry: Entry): Promise<Version> {
    entry.refreshing ??= this.#refresh(entry).finally(() => (entry.refreshing = null));
    return entry.refreshing;
  }

  async #refresh(entry: Entry): Promise<Version> {
    const old = entry.version;
    if (old && !old.retryAlways) {
      const now = await Promise.all(old.stamps.map((s) => stamp(s.path)));
      const same = now.every((s, i) => sameStamp(s, old.stamps[i]));
      const racy = old.stamps.some((s) => s.mtimeMs !== null && s.mtimeMs >= old.loadedAt - racyMs);
      if (same && !racy) return old;
    }
    let next: Version;
    try {
      next = await this.#load(entry.name);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        old?.retire();
        entry.version = null;
        throw FunctionError.notFound(entry.name);
      }
      throw e;
    }
    if (old && old.hash === next.hash && !next.retryAlways) {
      next.source?.revoke();
      old.stamps = next.stamps;
      old.loadedAt = next.loadedAt;
      return old;
    }
    old?.retire();
    entry.version = next;
    if (old) {
      this.#log({
        level: "info",
        function: entry.name,
        request_id: null,
        msg: `Function "${entry.name}" changed: new invocations run the new code`,
        source: "host",
      });
    }
    return next;
  }

  async #readManifest(
    name: string,
  ): Promise<{ manifest: FunctionManifest; stamp: FileStamp; text: string }> {
    const path = `${this.dir}/${name}.json`;
    const st = await stamp(path);
    if (st.mtimeMs === null) {
      return {
        manifest: { description: null, env: {}, limits: { ...this.#defaults } },
        stamp: st,
        text: "",
      };
    }
    const text = await Deno.readTextFile(path);
    return { manifest: parseManifest(text, `${name}.json`, this.#defaults), stamp: st, text };
  }

  async #load(name: string): Promise<Version> {
    const loadedAt = Date.now();
    const entryPath = `${this.dir}/${name}.ts`;
    const entryStamp = await stamp(entryPath);
    if (entryStamp.mtimeMs === null) throw new Deno.errors.NotFound(entryPath);
    const fallback: FunctionManifest = {
      description: null,
      env: {},
      limits: { ...this.#defaults },
    };
    let m: { manifest: FunctionManifest; stamp: FileStamp; text: string };
    try {
      m = await this.#readManifest(name);
    } catch (e) {
      const st = await stamp(`${this.dir}/${name}.json`);
      return new Version(
        name,
        null,
        fallback,
        [entryStamp, st],
        loadedAt,
        "",
        (e as Error).message,
        true,
      );
    }
    let source: LoadedSource;
    try {
      source = await loadSource(this.dir, entryPath);
    } catch (e) {
      if (e instanceof SourceError) {
        return new Version(
          name,
          null,
          m.manifest,
          [entryStamp, m.stamp],
          loadedAt,
          "",
          e.message,
          true,
        );
      }
      throw e;
    }
    const manifestHash = await sha256(m.text);
    return new Version(
      name,
      source,
      m.manifest,
      [...source.stamps, m.stamp],
      loadedAt,
      source.hash + manifestHash,
      null,
      false,
    );
  }

  // ------------------------------------------------------------
  // workers

  async #acquireWorker(v: Version, deadline: number, timeoutMs: number): Promise<FunctionWorker> {
    while (v.idle.length > 0) {
      const { worker, timer } = v.idle.pop()!;
      clearTimeout(timer);
      if (!worker.dead) {
        v.busy.add(worker);
        return worker;
      }
    }
    const worker = new FunctionWorker(
      v.source!.moduleUrl,
      v.name,
      v.manifest.env,
      this.#services,
      this.#log,
      this.#graceMs,
      () => this.#workers.delete(worker),
    );
    this.#workers.add(worker);
    v.busy.add(worker);
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        worker.ready,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(FunctionError.timeout(v.name, timeoutMs)),
            Math.max(0, deadline - Date.now()),
          );
        }),
      ]);
      return worker;
    } catch (e) {
      v.busy.delete(worker);
      worker.terminate();
      if (v.retired && v.busy.size === 0) v.source?.revoke();
      if (e instanceof LoadFailure) {
        v.loadError = e.message;
        throw FunctionError.loadFailed(v.name, e.message);
      }
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  #releaseWorker(v: Version, worker: FunctionWorker, healthy: boolean): void {
    v.busy.delete(worker);
    if (!healthy || worker.dead || v.retired || this.#closed) {
      worker.terminate();
      if (v.retired && v.busy.size === 0) v.source?.revoke();
      return;
    }
    const timer = setTimeout(() => {
      const i = v.idle.findIndex((x) => x.worker === worker);
      if (i >= 0) v.idle.splice(i, 1);
      worker.terminate();
    }, this.#idleMs);
    Deno.unrefTimer(timer);
    v.idle.push({ worker, timer });
  }
}

async function sha256(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The request body, at most `limit` bytes (413 past it); null for GET/HEAD or no body. */
async function readBody(
  request: Request,
  limit: number,
  name: string,
): Promise<ArrayBuffer | null> {
  if (request.body === null || request.method === "GET" || request.method === "HEAD") return null;
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > limit) {
    await request.body.cancel().catch(() => {});
    throw FunctionError.tooLarge(name, limit);
  }
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  while (true) {
    let step: ReadableStreamReadResult<Uint8Array>;
    try {
      step = await reader.read();
    } catch (e) {
      // The server's own body limit (an HTTP error) passes through as it is.
      if (typeof (e as { status?: unknown })?.status === "number") throw e;
      throw new FunctionError(
        400,
        "invalid_request_error",
        `Cannot read the request body: ${(e as Error).message}`,
        "body_unreadable",
      );
    }
    const { value, done } = step;
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => {});
      throw FunctionError.tooLarge(name, limit);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(size);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.byteLength;
  }
  return out.buffer;
}
