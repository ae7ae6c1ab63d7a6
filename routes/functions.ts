/**
 * `/v1/functions`: user functions over HTTP.
 *
 * - `GET /v1/functions` lists the functions of the folder;
 * - `/v1/functions/NAME` and `/v1/functions/NAME/...`, any method, invoke function NAME
 *   with the request (full URL, method, headers without `Authorization`, body) and relay
 *   its Response as it streams.
 *
 * Host failures (unknown function, limits, load errors, crashes, timeouts) become
 * OpenAI-shaped JSON errors through the router's one error mapping.
 *
 * @example
 * ```ts
 * import { Router } from "./_router.ts";
 * import { mountFunctions } from "./functions.ts";
 * declare const host: import("../engine/functions/host.ts").FunctionHost;
 * const router = mountFunctions(new Router(), () => host);
 * Deno.serve({ port: 0 }, router.fetch);
 * ```
 *
 * @module
 */
import { FunctionError } from "../engine/functions/errors.ts";
import type { FunctionHost } from "../engine/functions/host.ts";
import { HttpError } from "./_http_error.ts";
import type { Handler, RequestContext, Router } from "./_router.ts";

/** The methods a function answers (HEAD goes to the GET route). */
export const functionMethods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] as const;

/** Options of {@link mountFunctions}. */
export interface FunctionRoutesOptions {
  /**
   * The caller's API key, as the auth middleware established it (null: no keys). The
   * function's `ctx.sessions` acts for this key.
   */
  apiKeyOf?: (req: Request, ctx: RequestContext) => string | null;
}

/** A {@link FunctionError} as the router's error. */
export function toFunctionHttpError(e: FunctionError): HttpError {
  return new HttpError(e.status, e.message, {
    type: e.type,
    code: e.code,
    headers: e.headers,
    cause: e,
  });
}

function hostOr503(getHost: () => FunctionHost | null): FunctionHost {
  const host = getHost();
  if (!host) {
    throw new HttpError(503, "Functions are not enabled on this server", {
      code: "functions_disabled",
    });
  }
  return host;
}

/** `GET /v1/functions`. */
export function listFunctions(getHost: () => FunctionHost | null): Handler {
  return async function listFunctions() {
    const fns = await hostOr503(getHost).list();
    return Response.json({
      object: "list",
      data: fns.map((f) => ({ id: f.name, object: "function", ...f })),
    });
  };
}

/** Any method on `/v1/functions/:name` and below. */
export function invokeFunction(
  getHost: () => FunctionHost | null,
  options: FunctionRoutesOptions = {},
): Handler {
  const apiKeyOf = options.apiKeyOf ?? (() => null);
  return async function invokeFunction(req, ctx) {
    const host = hostOr503(getHost);
    try {
      return await host.invoke(ctx.params.name ?? "", req, {
        apiKey: apiKeyOf(req, ctx),
        requestId: ctx.requestId,
      });
    } catch (e) {
      throw e instanceof FunctionError ? toFunctionHttpError(e) : e;
    }
  };
}

/** Adds the function routes to `router` (returns it). */
export function mountFunctions(
  router: Router,
  getHost: () => FunctionHost | null,
  options: FunctionRoutesOptions = {},
): Router {
  router.get("/v1/functions", listFunctions(getHost));
  const invoke = invokeFunction(getHost, options);
  for (const method of functionMethods) {
    router.on(method, "/v1/functions/:name", invoke);
    router.on(method, "/v1/functions/:name/:rest*", invoke);
  }
  return router;
}
