/**
 * `/v1/functions`: user functions over HTTP.
 *
 * - `GET /v1/functions` lists the functions of the folder;
 * - `ANY /v1/functions/NAME` and `ANY /v1/functions/NAME/...` invoke function NAME with
 *   the request (full URL, method, headers without `Authorization`, body), relaying its
 *   Response as it streams.
 *
 * Host failures (unknown function, limits, load errors, crashes, timeouts) answer with
 * OpenAI-shaped JSON errors.
 *
 * @example
 * ```ts
 * import { functionsHandler } from "./functions.ts";
 * declare const host: import("../engine/functions/host.ts").FunctionHost;
 * const handle = functionsHandler(host);
 * Deno.serve((req) => handle(req, { apiKey: null, requestId: crypto.randomUUID() }) ?? new Response(null, { status: 404 }));
 * ```
 *
 * @module
 */
import { FunctionError } from "../engine/functions/errors.ts";
import type { FunctionHost, InvocationCaller } from "../engine/functions/host.ts";

const listPattern = new URLPattern({ pathname: "/v1/functions{/}?" });
const invokePattern = new URLPattern({ pathname: "/v1/functions/:name{/*}?" });

/** The OpenAI-shaped error body of a {@link FunctionError}. */
export function functionErrorResponse(e: FunctionError): Response {
  return Response.json(
    { error: { message: e.message, type: e.type, param: null, code: e.code } },
    { status: e.status, headers: e.headers },
  );
}

/**
 * A handler for the `/v1/functions` routes: returns null for a path it does not serve.
 * `caller` comes from the auth and request-id middleware.
 */
export function functionsHandler(
  host: FunctionHost,
): (request: Request, caller: InvocationCaller) => Promise<Response> | null {
  return function functionsRoute(request, caller) {
    if (listPattern.test(request.url)) {
      if (request.method !== "GET") return null;
      return host.list().then((fns) =>
        Response.json({
          object: "list",
          data: fns.map((f) => ({ object: "function", id: f.name, ...f })),
        })
      );
    }
    const m = invokePattern.exec(request.url);
    if (!m) return null;
    const name = decodeURIComponent(m.pathname.groups.name ?? "");
    return host.invoke(name, request, caller).catch((e) => {
      if (e instanceof FunctionError) return functionErrorResponse(e);
      throw e;
    });
  };
}
