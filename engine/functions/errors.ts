/**
 * The error the function host answers with instead of a function's Response: an HTTP
 * status, an OpenAI error type and code, and headers (`Retry-After`). Routes turn it
 * into the OpenAI-shaped JSON error body.
 *
 * @example
 * ```ts
 * import { FunctionError } from "./errors.ts";
 * throw FunctionError.notFound("hello");
 * ```
 *
 * @module
 */

/** A failed invocation, as an HTTP answer. */
export class FunctionError extends Error {
  override readonly name = "FunctionError";
  /** HTTP status (404, 413, 429, 500, 503, 504). */
  readonly status: number;
  /** OpenAI error type (`not_found_error`, `function_error`, `timeout_error`...). */
  readonly type: string;
  /** A machine-readable code (`function_timeout`), if any. */
  readonly code: string | null;
  /** Extra response headers (`Retry-After` with a 429). */
  readonly headers: Readonly<Record<string, string>>;

  constructor(
    status: number,
    type: string,
    message: string,
    code: string | null = null,
    headers: Record<string, string> = {},
  ) {
    super(message);
    this.status = status;
    this.type = type;
    this.code = code;
    this.headers = headers;
  }

  /** 404 for an unknown function. */
  static notFound(name: string): FunctionError {
    return new FunctionError(
      404,
      "not_found_error",
      `Function "${name}" does not exist`,
      "function_not_found",
    );
  }

  /** 500 for a function that cannot be loaded. */
  static loadFailed(name: string, detail: string): FunctionError {
    return new FunctionError(
      500,
      "function_error",
      `Function "${name}" failed to load: ${detail}`,
      "function_load_failed",
    );
  }

  /** 500 for a function that threw (or returned something other than a Response). */
  static threw(name: string, detail: string): FunctionError {
    return new FunctionError(
      500,
      "function_error",
      `Function "${name}" threw: ${detail}`,
      "function_threw",
    );
  }

  /** 500 for a worker that died (uncaught error, unhandled rejection). */
  static crashed(name: string, detail: string): FunctionError {
    return new FunctionError(
      500,
      "function_error",
      `Function "${name}" crashed: ${detail}`,
      "function_crashed",
    );
  }

  /** 504 for an invocation past its time limit. */
  static timeout(name: string, ms: number): FunctionError {
    return new FunctionError(
      504,
      "timeout_error",
      `Function "${name}" did not finish within ${ms} ms`,
      "function_timeout",
    );
  }

  /** 413 for a request body over the function's limit. */
  static tooLarge(name: string, limit: number): FunctionError {
    return new FunctionError(
      413,
      "invalid_request_error",
      `Request body is too large for function "${name}": the limit is ${limit} bytes`,
      "payload_too_large",
    );
  }

  /** 429 when every slot and queue place of the function is taken. */
  static busy(name: string, detail: string, retryAfterSeconds: number): FunctionError {
    return new FunctionError(
      429,
      "rate_limit_error",
      `Function "${name}" is busy: ${detail}`,
      "function_busy",
      { "Retry-After": String(retryAfterSeconds) },
    );
  }

  /** 503 once the host is shutting down. */
  static closed(): FunctionError {
    return new FunctionError(
      503,
      "server_error",
      "The function host is shutting down",
      "shutting_down",
    );
  }
}
