/**
 * `GET /metrics`: the Prometheus text exposition of the server's {@link Metrics} (request
 * queue, latency histograms, token counters, sessions and their memory, evictions,
 * snapshots), and {@link countRequests}, the middleware behind
 * `magicpig:http_requests_total`.
 *
 * @example
 * ```sh
 * curl -H 'authorization: Bearer sk-1' localhost:8080/metrics | grep '^magicpig:'
 * ```
 *
 * @module
 */
import { type Metrics, metricsContentType } from "../engine/metrics.ts";
import type { Handler, Middleware } from "./_router.ts";

/** The `GET /metrics` handler. */
export function metricsRoute(metrics: Metrics): Handler {
  return function metricsRoute() {
    return new Response(metrics.render(), { headers: { "content-type": metricsContentType } });
  };
}

/** Counts responses by method and status code. */
export function countRequests(metrics: Metrics): Middleware {
  const requests = metrics.counter(
    "magicpig:http_requests_total",
    "HTTP requests answered, by method and status code",
    ["method", "status"],
  );
  return async function countRequests(req, _ctx, next) {
    const res = await next();
    requests.inc({ method: req.method, status: String(res.status) });
    return res;
  };
}
