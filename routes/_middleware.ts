/**
 * Middleware factories: each returns a named function, so stack traces and logs say
 * which one ran. Order in the app: `requestId` → `requestLog` → `bodyLimit` (global), then
 * `jsonBody` on the routes that take JSON.
 *
 * @example
 * ```ts
 * import { Router } from "./_router.ts";
 * import { bodyLimit, jsonBody, requestId } from "./_middleware.ts";
 * const router = new Router().use(requestId(), bodyLimit({ maxBytes: 1 << 20 }));
 * router.post("/echo", jsonBody(), (_req, ctx) => Response.json(ctx.body));
 * ```
 *
 * @module
 */
import { HttpError } from "./_http_error.ts";
import type { Middleware } from "./_router.ts";

const validId = /^[\w.:-]{1,128}$/;

/**
 * Takes the request id from the `X-Request-Id` header (when it is a short token) or makes
 * one up, binds it to `ctx.log`, and echoes it in the `X-Request-Id` response header.
 */
export function requestId(): Middleware {
  return async function requestId(req, ctx, next) {
    const given = req.headers.get("x-request-id");
    ctx.requestId = given && validId.test(given) ? given : `req-${crypto.randomUUID()}`;
    ctx.log = ctx.log.child({ request_id: ctx.requestId });
    const res = await next();
    try {
      res.headers.set("x-request-id", ctx.requestId);
    } catch {
      // Immutable headers (Response.redirect): nothing to add.
    }
    return res;
  };
}

/**
 * Logs one line per request through `ctx.log` (the router's logger, with the request id
 * once `requestId` ran): method, path, status, milliseconds to the response head.
 */
export function requestLog(): Middleware {
  return async function requestLog(req, ctx, next) {
    const res = await next();
    ctx.log.info("request", {
      method: req.method,
      path: ctx.url.pathname,
      status: res.status,
      ms: Math.round((performance.now() - ctx.start) * 10) / 10,
    });
    return res;
  };
}

/** Options of {@link bodyLimit}. */
export interface BodyLimitOptions {
  /** Most body bytes accepted. */
  maxBytes: number;
}

function tooLarge(maxBytes: number): HttpError {
  return new HttpError(413, `The request body is larger than the limit of ${maxBytes} bytes`, {
    code: "request_too_large",
  });
}

/**
 * Answers 413 when `Content-Length` exceeds `maxBytes`, and otherwise hands on a request
 * whose body stream fails with the same 413 once more than `maxBytes` arrive (chunked
 * uploads have no length to check up front).
 */
export function bodyLimit(options: BodyLimitOptions): Middleware {
  const { maxBytes } = options;
  return function bodyLimit(req, _ctx, next) {
    if (req.body === null) return next();
    const length = req.headers.get("content-length");
    if (length !== null && Number(length) > maxBytes) throw tooLarge(maxBytes);
    let seen = 0;
    const limited = req.body.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          seen += chunk.byteLength;
          if (seen > maxBytes) controller.error(tooLarge(maxBytes));
          else controller.enqueue(chunk);
        },
      }),
    );
    return next(
      new Request(req.url, {
        method: req.method,
        headers: req.headers,
        body: limited,
        signal: req.signal,
      }),
    );
  };
}

/**
 * Parses the body as a JSON object into `ctx.body`: an empty body, malformed JSON, or a
 * value that is not an object is a 400 naming the problem.
 */
export function jsonBody(): Middleware {
  return async function jsonBody(req, ctx, next) {
    let text: string;
    try {
      text = await req.text();
    } catch (e) {
      if (e instanceof HttpError) throw e;
      throw new HttpError(400, `Cannot read the request body: ${(e as Error).message}`);
    }
    if (text.trim() === "") {
      throw new HttpError(400, "The request body is empty: expected a JSON object");
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new HttpError(400, `The request body is not valid JSON: ${(e as Error).message}`, {
        code: "invalid_json",
      });
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new HttpError(
        400,
        `The request body must be a JSON object, got ${
          Array.isArray(value) ? "an array" : JSON.stringify(value)
        }`,
      );
    }
    ctx.body = value;
    return next();
  };
}
