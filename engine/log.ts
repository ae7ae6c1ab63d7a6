/**
 * Structured JSON logs: one object per line with `time`, `level`, `msg` and the caller's
 * fields (`request_id`, `status`, `ms`, ...). `child()` adds fields to every line (a
 * request id), so one request's lines can be grepped together.
 *
 * @example
 * ```ts
 * import { Logger } from "./log.ts";
 * const log = new Logger({ level: "info" });
 * log.child({ request_id: "req-1" }).info("request", { status: 200, ms: 12 });
 * // {"time":"2025-01-01T00:00:00.000Z","level":"info","msg":"request","request_id":"req-1","status":200,"ms":12}
 * ```
 *
 * @module
 */

/** Log levels, least severe first. */
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

const rank: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

/** Where lines go (default: stdout). */
export type LogSink = (line: string) => void;

/** Options of {@link Logger}. */
export interface LoggerOptions {
  /** Least severe level written; default "info". */
  level?: LogLevel;
  /** Receives each JSON line; default writes it to stdout. */
  sink?: LogSink;
}

const encoder = new TextEncoder();
const stdoutSink: LogSink = (line) => {
  try {
    Deno.stdout.writeSync(encoder.encode(line + "\n"));
  } catch {
    // stdout closed: logs are best-effort.
  }
};

function replacer(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Error) return { name: value.name, message: value.message };
  return value;
}

/** A JSON-lines logger. */
export class Logger {
  readonly level: LogLevel;
  readonly #sink: LogSink;
  readonly #fields: Record<string, unknown>;

  constructor(options: LoggerOptions = {}, fields: Record<string, unknown> = {}) {
    this.level = options.level ?? "info";
    this.#sink = options.sink ?? stdoutSink;
    this.#fields = fields;
  }

  /** A logger that adds `fields` to every line. */
  child(fields: Record<string, unknown>): Logger {
    return new Logger({ level: this.level, sink: this.#sink }, { ...this.#fields, ...fields });
  }

  /** Writes one line at `level` when it is enabled. */
  log(level: Exclude<LogLevel, "silent">, msg: string, fields: Record<string, unknown> = {}): void {
    if (rank[level] < rank[this.level]) return;
    const line = JSON.stringify(
      { time: new Date().toISOString(), level, msg, ...this.#fields, ...fields },
      replacer,
    );
    this.#sink(line);
  }

  debug(msg: string, fields?: Record<string, unknown>): void {
    this.log("debug", msg, fields);
  }
  info(msg: string, fields?: Record<string, unknown>): void {
    this.log("info", msg, fields);
  }
  warn(msg: string, fields?: Record<string, unknown>): void {
    this.log("warn", msg, fields);
  }
  error(msg: string, fields?: Record<string, unknown>): void {
    this.log("error", msg, fields);
  }
}
