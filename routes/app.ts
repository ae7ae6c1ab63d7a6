/**
 * The HTTP application: every route and middleware, over an {@link AppState} that says
 * whether the model is loaded. Routes that need the model answer 503 (with `Retry-After`)
 * while it loads and while the server shuts down; `/health` says which.
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
import { chatCompletions } from "./chat_completions.ts";
import { completions } from "./completions.ts";
import { health, type HealthState } from "./health.ts";
import { HttpError } from "./_http_error.ts";
import { bodyLimit, jsonBody, requestId, requestLog } from "./_middleware.ts";
import { getModel, listModels } from "./models.ts";
import { Router } from "./_router.ts";
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
  return new Router({ log: state.log })
    .use(requestId(), requestLog(), bodyLimit({ maxBytes: state.maxBodyBytes }))
    .get("/health", health(state))
    .get("/v1/models", listModels(getLLM))
    .get("/v1/models/:id+", getModel(getLLM))
    .post("/v1/completions", json, completions(getLLM))
    .post("/v1/chat/completions", json, chatCompletions(getLLM))
    .post("/tokenize", json, tokenize(getLLM))
    .post("/detokenize", json, detokenize(getLLM));
}
