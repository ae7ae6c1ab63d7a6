/**
 * Per-function configuration: an optional `NAME.json` next to `NAME.ts` in the functions
 * folder. Every field is optional; absent ones take the host's defaults
 * ({@link defaultLimits}, overridable per host).
 *
 * ```json
 * {
 *   "description": "Pins a document as a session and summarises it",
 *   "env": { "SUMMARY_TOKENS": "96" },
 *   "timeout_ms": 120000,
 *   "max_body_bytes": 4194304,
 *   "concurrency": 2,
 *   "queue": 8
 * }
 * ```
 *
 * @example
 * ```ts
 * import { parseManifest, defaultLimits } from "./manifest.ts";
 * const m = parseManifest('{"env": {"A": "1"}, "timeout_ms": 5000}', "hello.json", defaultLimits);
 * console.log(m.env.A, m.limits.timeoutMs);
 * ```
 *
 * @module
 */

/** How long, how large and how many invocations of one function may be. */
export interface FunctionLimits {
  /** Wall-clock limit of one invocation, from start to the end of its response body (504 past it). */
  timeoutMs: number;
  /** Largest request body accepted (413 past it). */
  maxBodyBytes: number;
  /** Invocations running at once (each in its own worker). */
  concurrency: number;
  /** Invocations waiting for a running one to finish; past it, 429 with Retry-After. */
  queue: number;
}

/** The host's defaults. */
export const defaultLimits: FunctionLimits = {
  timeoutMs: 60_000,
  maxBodyBytes: 8 * 1024 * 1024,
  concurrency: 4,
  queue: 16,
};

/** A parsed manifest. */
export interface FunctionManifest {
  description: string | null;
  /** `ctx.env`. */
  env: Readonly<Record<string, string>>;
  limits: FunctionLimits;
}

/** Parses a manifest's text; throws an `Error` naming the file and the field at fault. */
export function parseManifest(
  text: string,
  file: string,
  defaults: FunctionLimits,
): FunctionManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(`Manifest "${file}" is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new Error(`Manifest "${file}" must be a JSON object`);
  }
  const o = raw as Record<string, unknown>;
  const known = ["description", "env", "timeout_ms", "max_body_bytes", "concurrency", "queue"];
  for (const key of Object.keys(o)) {
    if (!known.includes(key)) {
      throw new Error(
        `Manifest "${file}" has an unknown field "${key}": expected one of ${known.join(", ")}`,
      );
    }
  }
  const description = o.description ?? null;
  if (description !== null && typeof description !== "string") {
    throw new Error(`Manifest "${file}" field "description" must be a string`);
  }
  const env: Record<string, string> = {};
  if (o.env !== undefined) {
    if (typeof o.env !== "object" || o.env === null || Array.isArray(o.env)) {
      throw new Error(`Manifest "${file}" field "env" must be an object of strings`);
    }
    for (const [k, v] of Object.entries(o.env)) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) {
        throw new Error(`Manifest "${file}" env name "${k}" is not a valid variable name`);
      }
      if (typeof v !== "string") {
        throw new Error(`Manifest "${file}" env value of "${k}" must be a string`);
      }
      env[k] = v;
    }
  }
  const int = (key: string, min: number, max: number, dflt: number): number => {
    const v = o[key];
    if (v === undefined) return dflt;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      throw new Error(
        `Manifest "${file}" field "${key}" must be an integer in [${min}, ${max}]: got ${
          JSON.stringify(v)
        }`,
      );
    }
    return v;
  };
  return {
    description,
    env: Object.freeze(env),
    limits: {
      timeoutMs: int("timeout_ms", 1, 3_600_000, defaults.timeoutMs),
      maxBodyBytes: int("max_body_bytes", 0, 1024 * 1024 * 1024, defaults.maxBodyBytes),
      concurrency: int("concurrency", 1, 256, defaults.concurrency),
      queue: int("queue", 0, 100_000, defaults.queue),
    },
  };
}
