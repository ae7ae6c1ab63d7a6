/**
 * Server configuration from command-line flags and their environment equivalents (flags
 * win over the environment, the environment over defaults). The options are one table:
 * to add a setting, add a field to {@link Config}, its default to {@link defaults}, and a
 * row to {@link optionTable}; `--help` is generated from the table.
 *
 * @example
 * ```ts
 * import { parseConfig } from "./config.ts";
 * const result = parseConfig(["--port", "9000"], { MAGICPIG_MODEL: "m.gguf" });
 * if (result.kind === "config") console.log(result.config.port, result.config.model);
 * ```
 *
 * @module
 */
import type { LogLevel } from "./log.ts";

/** Everything `main.ts` needs to start a server. */
export interface Config {
  /** A Hugging Face directory or a .gguf file; null: the generated demo model. */
  model: string | null;
  port: number;
  host: string;
  /** CPU threads for the native library; null: all cores. */
  threads: number | null;
  logLevel: LogLevel;
  /** Largest accepted request body. */
  maxBodyBytes: number;
  /** Most requests prefilling or decoding at once; null: the engine's max batch. */
  maxRunning: number | null;
  /** How long shutdown lets running requests finish before aborting them. */
  drainTimeoutSeconds: number;
  /** API keys accepted in `Authorization: Bearer`; none (and no key file): an open server. */
  apiKeys: string[];
  /** A file with one API key per line (`#` comments); null: none. */
  apiKeyFile: string | null;
  /** Folder of session snapshots; null: sessions are not persisted. */
  sessionDir: string | null;
  /** Host bytes pinned sessions may hold; null: half of the machine's memory. */
  hostMemoryBudget: number | null;
  /** GPU bytes the engine and its sessions may hold; null: no limit. */
  gpuMemoryBudget: number | null;
  /** TTL of sessions that name none. */
  sessionTtlSeconds: number;
  /** Largest `ttl_seconds` accepted. */
  sessionMaxTtlSeconds: number;
  /** Folder of user functions served at /v1/functions/NAME; null: functions are off. */
  functions: string | null;
}

/** Values used when neither a flag nor the environment sets an option. */
export const defaults: Config = {
  model: null,
  port: 8080,
  host: "0.0.0.0",
  threads: null,
  logLevel: "info",
  maxBodyBytes: 16 * 1024 * 1024,
  maxRunning: null,
  drainTimeoutSeconds: 30,
  apiKeys: [],
  apiKeyFile: null,
  sessionDir: null,
  hostMemoryBudget: null,
  gpuMemoryBudget: null,
  sessionTtlSeconds: 3600,
  sessionMaxTtlSeconds: 7 * 24 * 3600,
  functions: "functions",
};

/** One row of {@link optionTable}. */
export interface OptionSpec {
  /** The flag without dashes: "port" is `--port`. */
  flag: string;
  /** The environment variable, if any. */
  env?: string;
  /** The field of {@link Config} it sets. */
  key: keyof Config;
  /** Placeholder in `--help` ("PATH", "N"); absent for boolean switches. */
  value?: string;
  help: string;
  /**
   * Turns the text value into the field's value; throws a message on bad input. A switch
   * (no `value`) given bare receives "true"; see {@link boolean}.
   */
  parse: (text: string) => unknown;
  /**
   * The flag may be given several times; each value (parsed to an array) is appended. The
   * environment value is parsed once; flags, when given, replace it.
   */
  repeatable?: boolean;
}

function int(min: number, max: number): (text: string) => number {
  return (text) => {
    const n = Number(text);
    if (text.trim() === "" || !Number.isInteger(n) || n < min || n > max) {
      throw `expected an integer in [${min}, ${max}]`;
    }
    return n;
  };
}

/** Parses a switch's value: true/1/yes or false/0/no. */
export function boolean(text: string): boolean {
  if (/^(true|1|yes)$/i.test(text)) return true;
  if (/^(false|0|no)$/i.test(text)) return false;
  throw "expected true or false";
}

function positive(text: string): number {
  const n = Number(text);
  if (text.trim() === "" || !Number.isFinite(n) || n < 0) throw "expected a number >= 0";
  return n;
}

const byteUnits: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1024,
  kib: 1024,
  kb: 1000,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  mb: 1000 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  gb: 1000 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
  tb: 1000 ** 4,
};

/**
 * Parses a byte count: a number with an optional unit, `K`/`M`/`G`/`T` and `KiB`...`TiB`
 * binary, `KB`...`TB` decimal ("64G", "100GB", "1.5GiB", "123456").
 */
export function bytes(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? byteUnits[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw "expected a byte count like 64G, 100GB or 1073741824";
  }
  const n = Math.floor(Number(m[1]) * unit);
  if (!Number.isSafeInteger(n)) throw "the byte count is too large";
  return n;
}

function nonEmpty(text: string): string {
  if (text === "") throw "expected a non-empty value";
  return text;
}

const levels: readonly LogLevel[] = ["debug", "info", "warn", "error", "silent"];

/** Every option. Teammates: add rows here (and fields to Config and defaults). */
export const optionTable: OptionSpec[] = [
  {
    flag: "model",
    env: "MAGICPIG_MODEL",
    key: "model",
    value: "PATH",
    help: "Hugging Face model directory or .gguf file (default: the generated demo model)",
    parse: nonEmpty,
  },
  {
    flag: "port",
    env: "PORT",
    key: "port",
    value: "N",
    help: "TCP port to listen on; 0 picks a free one (default 8080)",
    parse: int(0, 65535),
  },
  {
    flag: "host",
    env: "HOST",
    key: "host",
    value: "ADDR",
    help: "address to listen on (default 0.0.0.0)",
    parse: nonEmpty,
  },
  {
    flag: "threads",
    env: "MAGICPIG_THREADS",
    key: "threads",
    value: "N",
    help: "CPU threads for the native library (default: all cores)",
    parse: int(1, 4096),
  },
  {
    flag: "log-level",
    env: "MAGICPIG_LOG_LEVEL",
    key: "logLevel",
    value: "LEVEL",
    help: `least severe log level written: ${levels.join(", ")} (default info)`,
    parse: (text) => {
      if (!(levels as readonly string[]).includes(text)) {
        throw `expected one of ${levels.join(", ")}`;
      }
      return text;
    },
  },
  {
    flag: "max-body-bytes",
    env: "MAGICPIG_MAX_BODY_BYTES",
    key: "maxBodyBytes",
    value: "N",
    help: "largest request body accepted; larger ones get 413 (default 16 MiB)",
    parse: int(1, 2 ** 40),
  },
  {
    flag: "max-running",
    env: "MAGICPIG_MAX_RUNNING",
    key: "maxRunning",
    value: "N",
    help: "most requests prefilling or decoding at once (default: the engine's max batch)",
    parse: int(1, 4096),
  },
  {
    flag: "drain-timeout",
    env: "MAGICPIG_DRAIN_TIMEOUT",
    key: "drainTimeoutSeconds",
    value: "SECONDS",
    help:
      "on SIGINT/SIGTERM, how long running requests may finish before they are aborted (default 30)",
    parse: positive,
  },
  {
    flag: "api-key",
    env: "MAGICPIG_API_KEYS",
    key: "apiKeys",
    value: "KEY",
    help:
      'an API key clients send as "Authorization: Bearer KEY"; repeatable (the variable takes a comma-separated list); with no keys the server is open',
    parse: (text) => {
      const keys = text.split(",").map((k) => k.trim()).filter((k) => k.length > 0);
      if (keys.length === 0) throw "expected a non-empty key";
      return keys;
    },
    repeatable: true,
  },
  {
    flag: "api-key-file",
    env: "MAGICPIG_API_KEY_FILE",
    key: "apiKeyFile",
    value: "PATH",
    help: "a file of API keys, one per line (# starts a comment)",
    parse: nonEmpty,
  },
  {
    flag: "functions",
    env: "MAGICPIG_FUNCTIONS",
    key: "functions",
    value: "DIR",
    help:
      'folder of user functions (NAME.ts, served at /v1/functions/NAME in sandboxed workers); "off" disables them (default: functions)',
    parse: (text) => {
      const t = text.trim();
      if (t.length === 0) throw 'expected a folder or "off"';
      return t === "off" ? null : t;
    },
  },
  {
    flag: "session-dir",
    env: "MAGICPIG_SESSION_DIR",
    key: "sessionDir",
    value: "DIR",
    help:
      "folder for session snapshots: written on eviction, on shutdown and on request, restored on start (default: sessions are not persisted)",
    parse: nonEmpty,
  },
  {
    flag: "host-memory-budget",
    env: "MAGICPIG_HOST_MEMORY_BUDGET",
    key: "hostMemoryBudget",
    value: "BYTES",
    help:
      "host memory pinned sessions may hold (KV cache and LSH index), e.g. 64G; least recently used sessions are evicted beyond it (default: half of the machine's memory)",
    parse: bytes,
  },
  {
    flag: "gpu-memory-budget",
    env: "MAGICPIG_GPU_MEMORY_BUDGET",
    key: "gpuMemoryBudget",
    value: "BYTES",
    help:
      "GPU memory the engine may take and that sessions' device parts may hold, e.g. 24G (default: no limit)",
    parse: bytes,
  },
  {
    flag: "session-ttl",
    env: "MAGICPIG_SESSION_TTL",
    key: "sessionTtlSeconds",
    value: "SECONDS",
    help: "lifetime of an unused session that names no ttl_seconds (default 3600)",
    parse: int(1, 10 * 365 * 24 * 3600),
  },
  {
    flag: "session-max-ttl",
    env: "MAGICPIG_SESSION_MAX_TTL",
    key: "sessionMaxTtlSeconds",
    value: "SECONDS",
    help: "largest ttl_seconds a client may ask for (default 604800, 7 days)",
    parse: int(1, 10 * 365 * 24 * 3600),
  },
];

/** What {@link parseConfig} found: a config, or a request for the help text. */
export type ParseResult = { kind: "config"; config: Config } | { kind: "help"; text: string };

/** A bad flag or environment value; the message names it. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** The `--help` text. */
export function usage(): string {
  const lines = [
    "Usage: deno task start [OPTIONS]",
    "",
    "Serves an OpenAI-compatible API for one model (completions, chat, pinned sessions,",
    "user functions, tokenize, metrics, health).",
    "",
    "Options (environment variable in brackets):",
  ];
  const lefts = optionTable.map((o) => `  --${o.flag}${o.value ? ` ${o.value}` : ""}`);
  const width = Math.max(...lefts.map((l) => l.length)) + 2;
  optionTable.forEach((o, i) => {
    lines.push(`${lefts[i].padEnd(width)}${o.help}${o.env ? ` [${o.env}]` : ""}`);
  });
  lines.push(`${"  -h, --help".padEnd(width)}show this help`);
  return lines.join("\n");
}

/**
 * Parses `args` (flags as `--name value` or `--name=value`) over `env`. Throws a
 * {@link ConfigError} naming the flag or variable for unknown flags and bad values.
 */
export function parseConfig(
  args: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): ParseResult {
  const config: Record<string, unknown> = { ...defaults };
  const fromFlags = new Set<string>();
  const apply = (o: OptionSpec, text: string, source: string) => {
    let value: unknown;
    try {
      value = o.parse(text);
    } catch (why) {
      throw new ConfigError(`Invalid ${source} ${JSON.stringify(text)}: ${String(why)}`);
    }
    if (o.repeatable && source.startsWith("--")) {
      const before = fromFlags.has(o.key) ? config[o.key] as unknown[] : [];
      fromFlags.add(o.key);
      config[o.key] = [...before, ...(value as unknown[])];
    } else {
      config[o.key] = value;
    }
  };
  for (const o of optionTable) {
    const v = o.env ? env[o.env] : undefined;
    if (v !== undefined && v !== "") apply(o, v, o.env!);
  }
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "-h" || arg === "--help") return { kind: "help", text: usage() };
    if (!arg.startsWith("--")) {
      throw new ConfigError(`Unexpected argument ${JSON.stringify(arg)}: options start with "--"`);
    }
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const o = optionTable.find((x) => x.flag === name);
    if (!o) throw new ConfigError(`Unknown option "--${name}": see --help`);
    let text: string;
    if (eq >= 0) {
      text = arg.slice(eq + 1);
    } else if (o.value === undefined) {
      text = "true"; // a boolean switch
    } else {
      if (i + 1 >= args.length) throw new ConfigError(`Missing value for "--${name}"`);
      text = args[++i];
    }
    apply(o, text, `--${name}`);
  }
  return { kind: "config", config: config as unknown as Config };
}
