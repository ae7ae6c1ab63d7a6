/**
 * The one error type the engine hands upwards. Routes map {@link EngineError.kind} to an
 * HTTP status without knowing anything native: the engine translates native statuses
 * (`MagicpigError`) into these kinds where it calls the native layer.
 *
 * @example
 * ```ts
 * import { EngineError } from "./errors.ts";
 * throw new EngineError("invalid_request", `Token id "9000" is out of the vocabulary: it has 512 ids`, "prompt");
 * ```
 *
 * @module
 */

/**
 * What went wrong, in the terms a caller can act on:
 * - `invalid_request`: the request cannot be served as given (bad value, too long);
 * - `not_found`: a named thing (model, session) does not exist;
 * - `conflict`: the thing is busy (a pinned session already generating);
 * - `overloaded`: out of memory or capacity now; retrying later may work (with
 *   `retryAfterSeconds` set, the capacity is held by other active work and the caller should
 *   retry after that long: HTTP answers 429 with `Retry-After`);
 * - `unavailable`: the engine is loading or shutting down;
 * - `internal`: a native or engine failure that is not the caller's fault.
 */
export type EngineErrorKind =
  | "invalid_request"
  | "not_found"
  | "conflict"
  | "overloaded"
  | "unavailable"
  | "internal";

/** An engine failure with its kind, and the request parameter at fault when there is one. */
export class EngineError extends Error {
  /** What kind of failure this is; routes map it to an HTTP status. */
  readonly kind: EngineErrorKind;
  /** The request parameter at fault (`"prompt"`, `"max_tokens"`), if any. */
  readonly param: string | null;
  /** A machine-readable code (`"context_length_exceeded"`), if any. */
  readonly code: string | null;
  /** For `overloaded`: when to retry (the capacity is busy, not missing); null otherwise. */
  readonly retryAfterSeconds: number | null;

  constructor(
    kind: EngineErrorKind,
    message: string,
    param: string | null = null,
    code: string | null = null,
    options?: ErrorOptions & { retryAfterSeconds?: number },
  ) {
    super(message, options);
    this.name = "EngineError";
    this.kind = kind;
    this.param = param;
    this.code = code;
    this.retryAfterSeconds = options?.retryAfterSeconds ?? null;
  }
}

/**
 * Wraps any thrown value from the native layer as an {@link EngineError}: native
 * out-of-memory becomes `overloaded`, invalid arguments `invalid_request` (or `internal`
 * when the call's arguments did not come from the caller: `callerInput` false, e.g. a decode
 * step, whose tokens and sessions are the engine's own), the rest `internal`. Other
 * EngineErrors pass through unchanged.
 */
export function toEngineError(e: unknown, what: string, callerInput = true): EngineError {
  if (e instanceof EngineError) return e;
  const message = e instanceof Error ? e.message : String(e);
  // MagicpigError (ffi/native.ts) carries a `code` naming its status.
  const code = typeof e === "object" && e !== null && "code" in e ? String(e.code) : "";
  const kind: EngineErrorKind = code === "out_of_memory"
    ? "overloaded"
    : code === "invalid_argument" && callerInput
    ? "invalid_request"
    : "internal";
  return new EngineError(kind, `${what}: ${message}`, null, code || null, { cause: e });
}
