/**
 * The HTTP application: every route and middleware, over an {@link AppState} that says
 * whether the model is loaded. Routes that need the model answer 503 (with `Retry-After`)
 * while it loads and while the server shuts down; `/health` says which. Every route but
 * `/health` needs an API key when keys are configured.
 *
 * @example
 * ```ts
 * import { createApp } from "./app.ts";
 * import { Logger } from "../engine/log.ts";
 * const state = { phase: "loading" as const, llm: null, log: new Logger(), maxBodyBytes: 1 << 20 };
 * Deno.serve({ port: 0 }, createApp(state).fetch);
 * ```
 *
 * @module
 */
import type { LLM } from "../engine/llm.ts";
import type { Logger } from "../engine/log.ts";
import { Metrics } from "../engine/metrics.ts";
import { apiKeyAuth } from "./_auth.ts";
import { chatCompletions } from "./chat_completions.ts";
import { completions } from "./completions.ts";
import { health, type HealthState } from "./health.ts";
import { HttpError } from "./_http_error.ts";
import { bodyLimit, jsonBody, requestId, requestLog } from "./_middleware.ts";
import { countRequests, metricsRoute } from "./metrics.ts";
import { mountFunctions } from "./functions.ts";
import type { FunctionHost } from "../engine/functions/host.ts";
import { getModel, listModels } from "./models.ts";
import { Router } from "./_router.ts";
import { createSession, deleteSession, getSession, listSessions, saveSession } from "./sessions.ts";
import { detokenize, tokenize } from "./tokenize.ts";

/** What the routes read: the phase, the model once loaded, limits. */
export interface AppState extends HealthState {
  phase: HealthState["phase"];
  /** The served model; null until it has loaded. */
  llm: LLM | null;
  /** Why loading failed, when `phase` is "failed". */
  loadError?: string;
  log: Logger;
  maxBodyBytes: number;
  /** Accepted API keys; absent or empty: an open server. */
  apiKeys?: readonly string[];
  /** The registry `/metrics` renders (default: a fresh one). */
  metrics?: Metrics;
  /**
   * User functions served at /v1/functions (null: the routes answer 503 "not enabled");
   * undefined: the routes are not mounted (a caller mounts its own).
   */
  functions?: FunctionHost | null;
}

/** Builds the router for `state`. */
export function createApp(state: AppState): Router {
  const getLLM = (): LLM => {
    if (state.phase === "ready" && state.llm) return state.llm;
    if (state.phase === "stopping") {
      throw new HttpError(503, "The server is shutting down", {
        code: "shutting_down",
        headers: { "retry-after": "5" },
      });
    }
    if (state.phase === "failed") {
      throw new HttpError(503, `The model failed to load: ${state.loadError ?? "unknown error"}`, {
        code: "model_load_failed",
      });
    }
    throw new HttpError(503, "The model is still loading: retry shortly", {
      code: "model_loading",
      headers: { "retry-after": "1" },
    });
  };
  const json = jsonBody();
  const metrics = state.metrics ?? new Metrics();
  const router = new Router({ log: state.log })
    .use(
      requestId(),
      requestLog(),
      countRequests(metrics),
      apiKeyAuth({ keys: state.apiKeys ?? [] }),
      bodyLimit({ maxBytes: state.maxBodyBytes }),
    )
    .get("/health", health(state))
    .get("/metrics", metricsRoute(metrics))
    .get("/v1/models", listModels(getLLM))
    .get("/v1/models/:id+", getModel(getLLM))
    .post("/v1/completions", json, completions(getLLM))
    .post("/v1/chat/completions", json, chatCompletions(getLLM))
    .post("/v1/sessions", json, createSession(getLLM))
    .get("/v1/sessions", listSessions(getLLM))
    .get("/v1/sessions/:id", getSession(getLLM))
    .delete("/v1/sessions/:id", deleteSession(getLLM))
    .post("/v1/sessions/:id/save", saveSession(getLLM))
    .post("/v1/sessions/:id/completions", json, completions(getLLM))
    .post("/v1/sessions/:id/chat/completions", json, chatCompletions(getLLM))
    .post("/tokenize", json, tokenize(getLLM))
    .post("/detokenize", json, detokenize(getLLM));
  if (state.functions === undefined) return router;
  return mountFunctions(router, () => state.functions ?? null, {
    apiKeyOf: (_req, ctx) => ctx.apiKey,
  });
}
