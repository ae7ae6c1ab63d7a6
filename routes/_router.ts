/**
 * A small router over `Deno.serve`: routes are `URLPattern` pathnames per method, with
 * middleware in front (global with {@link Router.use}, per route as extra arguments).
 * A path that matches no route is a 404; a path that matches with another method is a 405
 * with an `Allow` header. Every thrown error becomes an OpenAI-shaped JSON response in one
 * place ({@link toHttpError}), inside the middleware chain, so logging middleware sees the
 * final status.
 *
 * @example
 * ```ts
 * import { Router } from "./_router.ts";
 * const router = new Router();
 * router.get("/v1/models/:id", (_req, ctx) => Response.json({ id: ctx.params.id }));
 * Deno.serve({ port: 0 }, router.fetch);
 * ```
 *
 * @module
 */
import { HttpError, toHttpError } from "./_http_error.ts";
import { Logger } from "../engine/log.ts";

/** Per-request state shared by middleware and handlers. */
export interface RequestContext {
  /** The request id (from `X-Request-Id` or made up), echoed in the response. */
  requestId: string;
  /** The parsed URL. */
  readonly url: URL;
  /** Named pathname groups of the matched route. */
  params: Record<string, string>;
  /** The parsed JSON body (set by the `jsonBody` middleware). */
  body: unknown;
  /** A logger carrying the request id. */
  log: Logger;
  /** Connection facts from Deno.serve (null when called directly). */
  readonly info: Deno.ServeHandlerInfo | null;
  /** `performance.now()` at arrival. */
  readonly start: number;
  /** The API key the request authenticated with (set by `apiKeyAuth`); null: no keys. */
  apiKey: string | null;
  /** Who owns what this request creates: the key's SHA-256, or "anonymous" (`apiKeyAuth`). */
  owner: string;
}

/** Produces the response. */
export type Handler = (req: Request, ctx: RequestContext) => Response | Promise<Response>;

/**
 * Runs before a handler; calls `next()` to continue (optionally with a replacement
 * request) and may change the response. `next()` never throws: errors further down
 * arrive as error responses.
 */
export type Middleware = (
  req: Request,
  ctx: RequestContext,
  next: (req?: Request) => Promise<Response>,
) => Response | Promise<Response>;

interface Route {
  method: string;
  pattern: URLPattern;
  chain: Middleware[];
  handler: Handler;
}

async function run(
  chain: readonly Middleware[],
  handler: Handler,
  req: Request,
  ctx: RequestContext,
): Promise<Response> {
  const dispatch = async (i: number, r: Request): Promise<Response> => {
    try {
      if (i === chain.length) return await handler(r, ctx);
      return await chain[i](r, ctx, (next?: Request) => dispatch(i + 1, next ?? r));
    } catch (e) {
      const err = toHttpError(e);
      if (err.status >= 500) {
        // Overload and deadlines are expected under load; anything else is a failure.
        const level = err.status === 503 || err.status === 504 ? "warn" : "error";
        ctx.log.log(level, "request failed", { status: err.status, error: err.message });
      }
      return err.toResponse();
    }
  };
  return await dispatch(0, req);
}

/** Method + URLPattern routing with middleware. */
export class Router {
  #global: Middleware[] = [];
  #routes: Route[] = [];
  #log: Logger;

  constructor(options: { log?: Logger } = {}) {
    this.#log = options.log ?? new Logger({ level: "silent" });
  }

  /** Adds middleware that runs for every request, matched or not. */
  use(...middleware: Middleware[]): this {
    this.#global.push(...middleware);
    return this;
  }

  /** Adds a route: `on("POST", "/v1/completions", jsonBody(), handler)`. */
  on(method: string, pathname: string, ...rest: [...Middleware[], Handler]): this {
    const handler = rest[rest.length - 1] as Handler;
    const chain = rest.slice(0, -1) as Middleware[];
    this.#routes.push({
      method: method.toUpperCase(),
      pattern: new URLPattern({ pathname }),
      chain,
      handler,
    });
    return this;
  }

  /** A GET route (HEAD is answered by it too). */
  get(pathname: string, ...rest: [...Middleware[], Handler]): this {
    return this.on("GET", pathname, ...rest);
  }

  /** A POST route. */
  post(pathname: string, ...rest: [...Middleware[], Handler]): this {
    return this.on("POST", pathname, ...rest);
  }

  /** A DELETE route. */
  delete(pathname: string, ...rest: [...Middleware[], Handler]): this {
    return this.on("DELETE", pathname, ...rest);
  }

  /** The `Deno.serve` handler. */
  fetch = (req: Request, info?: Deno.ServeHandlerInfo): Promise<Response> => {
    const url = new URL(req.url);
    const ctx: RequestContext = {
      requestId: "",
      url,
      params: {},
      body: undefined,
      log: this.#log,
      info: info ?? null,
      start: performance.now(),
      apiKey: null,
      owner: "anonymous",
    };
    return run(this.#global, (r, c) => this.#dispatch(r, c), req, ctx);
  };

  #dispatch(req: Request, ctx: RequestContext): Promise<Response> {
    const allowed = new Set<string>();
    const method = req.method === "HEAD" ? "GET" : req.method;
    for (const route of this.#routes) {
      const m = route.pattern.exec({ pathname: ctx.url.pathname });
      if (!m) continue;
      if (route.method !== method) {
        allowed.add(route.method);
        continue;
      }
      const params: Record<string, string> = {};
      for (const [k, v] of Object.entries(m.pathname.groups)) {
        if (v !== undefined) params[k] = decodeURIComponent(v);
      }
      ctx.params = params;
      return run(route.chain, route.handler, req, ctx);
    }
    if (allowed.size > 0) {
      if (allowed.has("GET")) allowed.add("HEAD");
      const list = [...allowed].join(", ");
      throw new HttpError(
        405,
        `Method "${req.method}" is not allowed on "${ctx.url.pathname}": use ${list}`,
        { code: "method_not_allowed", headers: { allow: list } },
      );
    }
    throw new HttpError(404, `Route "${req.method} ${ctx.url.pathname}" does not exist`, {
      code: "not_found",
    });
  }
}
