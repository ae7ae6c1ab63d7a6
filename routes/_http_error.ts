/**
 * The one HTTP error type (in the manner of Hono's `HTTPException`) and the one place
 * where any thrown value becomes an OpenAI-shaped JSON error response:
 * `{"error": {"message", "type", "param", "code"}}`.
 *
 * @example
 * ```ts
 * import { HttpError } from "./_http_error.ts";
 * throw new HttpError(400, `Invalid "temperature": expected a number in [0, 2], got 3`, { param: "temperature" });
 * ```
 *
 * @module
 */
import { EngineError, type EngineErrorKind } from "../engine/errors.ts";

/** Options of {@link HttpError}. */
export interface HttpErrorOptions {
  /** OpenAI's error `type`; derived from the status when absent. */
  type?: string;
  /** The request parameter at fault. */
  param?: string | null;
  /** A machine-readable code (`"model_not_found"`, `"context_length_exceeded"`). */
  code?: string | null;
  /** Extra response headers (`Allow`, `Retry-After`). */
  headers?: HeadersInit;
  cause?: unknown;
}

function defaultType(status: number): string {
  if (status === 401) return "authentication_error";
  if (status === 403) return "permission_error";
  if (status === 429) return "rate_limit_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

/** An HTTP error with an OpenAI-shaped body. Throw it from handlers and middleware. */
export class HttpError extends Error {
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
  readonly headers: HeadersInit | undefined;

  constructor(status: number, message: string, options: HttpErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.name = "HttpError";
    this.status = status;
    this.type = options.type ?? defaultType(status);
    this.param = options.param ?? null;
    this.code = options.code ?? null;
    this.headers = options.headers;
  }

  /** The JSON body: `{"error": {"message", "type", "param", "code"}}`. */
  toJSON(): {
    error: { message: string; type: string; param: string | null; code: string | null };
  } {
    return {
      error: { message: this.message, type: this.type, param: this.param, code: this.code },
    };
  }

  /** The error as a response. */
  toResponse(): Response {
    const res = Response.json(this.toJSON(), { status: this.status, headers: this.headers });
    return res;
  }
}

const engineStatus: Record<EngineErrorKind, number> = {
  invalid_request: 400,
  not_found: 404,
  conflict: 409,
  overloaded: 503,
  unavailable: 503,
  internal: 500,
};

/**
 * Any thrown value as an {@link HttpError}: HttpErrors pass through, EngineErrors map by
 * kind (native out-of-memory → 503; `overloaded` with a retry time → 429 with
 * `Retry-After`), anything else is a 500 carrying its message.
 */
export function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof EngineError) {
    if (e.kind === "overloaded" && e.retryAfterSeconds !== null) {
      return new HttpError(429, e.message, {
        param: e.param,
        code: e.code ?? "overloaded",
        headers: { "retry-after": String(Math.max(1, Math.ceil(e.retryAfterSeconds))) },
        cause: e,
      });
    }
    const status = engineStatus[e.kind];
    return new HttpError(status, e.message, {
      param: e.param,
      code: e.code ?? (status === 503 ? e.kind : null),
      cause: e,
    });
  }
  const message = e instanceof Error ? e.message : String(e);
  return new HttpError(500, `Internal error: ${message}`, { code: "internal_error", cause: e });
}
