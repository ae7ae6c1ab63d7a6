/**
 * Per-session attention options (the TypeScript side of `mp_attention_params`), and their
 * validation from untyped input (an HTTP body's `attention` object). Every request runs on
 * a native session created with these options; a pinned session keeps the options it was
 * created with.
 *
 * @example
 * ```ts
 * import { parseAttention } from "./attention.ts";
 * const a = parseAttention({ method: "magicpig", K: 10, L: 150 }, "attention", 32);
 * ```
 *
 * @module
 */
import { EngineError } from "./errors.ts";

/** The attention methods a session can use (enum mp_attention_method). */
export const attentionMethods = ["dense", "magicpig", "topk", "quest", "oracle"] as const;
/** One of {@link attentionMethods}. */
export type AttentionMethod = (typeof attentionMethods)[number];

/**
 * Attention options of a session. Unset fields take the library's defaults
 * (`mp_attention_default_params`: K 10, L 150, 4 sinks, window 64, budget 0.02, ...).
 */
export interface AttentionOptions {
  /** The method; `dense` is exact attention over every key. */
  method: AttentionMethod;
  /** MagicPIG: bits per LSH table (1..16). */
  lshK?: number;
  /** MagicPIG: number of LSH tables. */
  lshL?: number;
  /** First tokens always attended exactly. */
  sinks?: number;
  /** Last prompt tokens attended exactly. */
  window?: number;
  /** Local generated tokens kept beyond the window before they join the index. */
  genBuffer?: number;
  /** TopK / Quest / oracle: the fraction of offloaded keys attended, in (0, 1]. */
  budget?: number;
  /** Quest: keys per page. */
  pageSize?: number;
  /** LSH hyperplanes / oracle draws. */
  seed?: bigint;
  /** Layers kept dense (at most 16); unset: the library's default. */
  denseLayers?: number[];
}

/** The options a request gets when it names none. */
export const defaultAttention: AttentionOptions = { method: "dense" };

function intField(
  o: Record<string, unknown>,
  names: readonly string[],
  param: string,
  min: number,
  max: number,
): number | undefined {
  for (const name of names) {
    const v = o[name];
    if (v === undefined || v === null) continue;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      throw new EngineError(
        "invalid_request",
        `Invalid "${param}.${name}": expected an integer in [${min}, ${max}], got ${
          JSON.stringify(v)
        }`,
        `${param}.${name}`,
      );
    }
    return v;
  }
  return undefined;
}

const knownKeys = new Set([
  "method",
  "K",
  "L",
  "k",
  "l",
  "lsh_k",
  "lsh_l",
  "sinks",
  "window",
  "gen_buffer",
  "budget",
  "page_size",
  "seed",
  "dense_layers",
]);

/**
 * Validates an untyped `attention` object (snake_case keys as on the wire; `K`/`L` or
 * `lsh_k`/`lsh_l`). Throws an `invalid_request` {@link EngineError} naming the field.
 * `nLayers` bounds `dense_layers`.
 */
export function parseAttention(value: unknown, param: string, nLayers: number): AttentionOptions {
  if (value === undefined || value === null) return { ...defaultAttention };
  if (typeof value === "string") value = { method: value };
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new EngineError(
      "invalid_request",
      `Invalid "${param}": expected an object like {"method": "magicpig", "K": 10, "L": 150}`,
      param,
    );
  }
  const o = value as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (!knownKeys.has(key)) {
      throw new EngineError(
        "invalid_request",
        `Invalid "${param}": unknown field "${key}"; known fields: ${[...knownKeys].join(", ")}`,
        `${param}.${key}`,
      );
    }
  }
  const method = o.method ?? "dense";
  if (typeof method !== "string" || !(attentionMethods as readonly string[]).includes(method)) {
    throw new EngineError(
      "invalid_request",
      `Invalid "${param}.method": expected one of ${attentionMethods.join(", ")}, got ${
        JSON.stringify(method)
      }`,
      `${param}.method`,
    );
  }
  const out: AttentionOptions = { method: method as AttentionMethod };
  const lshK = intField(o, ["K", "k", "lsh_k"], param, 1, 16);
  const lshL = intField(o, ["L", "l", "lsh_l"], param, 1, 4096);
  const sinks = intField(o, ["sinks"], param, 0, 1 << 20);
  const window = intField(o, ["window"], param, 0, 1 << 24);
  const genBuffer = intField(o, ["gen_buffer"], param, 0, 1 << 24);
  const pageSize = intField(o, ["page_size"], param, 1, 1 << 16);
  if (lshK !== undefined) out.lshK = lshK;
  if (lshL !== undefined) out.lshL = lshL;
  if (sinks !== undefined) out.sinks = sinks;
  if (window !== undefined) out.window = window;
  if (genBuffer !== undefined) out.genBuffer = genBuffer;
  if (pageSize !== undefined) out.pageSize = pageSize;
  if (o.budget !== undefined && o.budget !== null) {
    const b = o.budget;
    if (typeof b !== "number" || !(b > 0 && b <= 1)) {
      throw new EngineError(
        "invalid_request",
        `Invalid "${param}.budget": expected a number in (0, 1], got ${JSON.stringify(b)}`,
        `${param}.budget`,
      );
    }
    out.budget = b;
  }
  if (o.seed !== undefined && o.seed !== null) {
    const s = o.seed;
    if (typeof s !== "number" || !Number.isSafeInteger(s) || s < 0) {
      throw new EngineError(
        "invalid_request",
        `Invalid "${param}.seed": expected a non-negative integer, got ${JSON.stringify(s)}`,
        `${param}.seed`,
      );
    }
    out.seed = BigInt(s);
  }
  if (o.dense_layers !== undefined && o.dense_layers !== null) {
    const d = o.dense_layers;
    if (
      !Array.isArray(d) || d.length > 16 ||
      !d.every((x) => typeof x === "number" && Number.isInteger(x) && x >= 0 && x < nLayers)
    ) {
      throw new EngineError(
        "invalid_request",
        `Invalid "${param}.dense_layers": expected at most 16 layer indexes in [0, ${nLayers})`,
        `${param}.dense_layers`,
      );
    }
    out.denseLayers = [...d] as number[];
  }
  return out;
}
