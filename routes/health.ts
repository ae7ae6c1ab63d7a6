/**
 * `GET /health`: 503 while the model loads (and while the server shuts down), 200 once
 * it serves.
 *
 * @module
 */
import type { Handler } from "./_router.ts";

/** What the health check reads. */
export interface HealthState {
  /** "loading" until the model is ready, "ready", then "stopping". */
  readonly phase: "loading" | "ready" | "stopping" | "failed";
}

/** The `GET /health` handler. */
export function health(state: HealthState): Handler {
  return function health() {
    const ok = state.phase === "ready";
    return Response.json({ status: state.phase }, {
      status: ok ? 200 : 503,
      headers: ok ? {} : { "retry-after": "1" },
    });
  };
}
