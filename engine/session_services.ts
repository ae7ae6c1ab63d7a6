/**
 * The function host's `ctx.sessions` over the {@link SessionManager}: every call acts for
 * the API key of the HTTP request the function is serving (`caller.apiKey`, hashed into
 * the same owner id the HTTP routes use), so a function reaches exactly the sessions its
 * caller could reach over HTTP, and another key's sessions are "not found".
 *
 * Defaults follow the HTTP API: `temperature` 1; `max_tokens` 16 for a `prompt` turn and
 * the rest of the context for a `messages` turn.
 *
 * @example
 * ```ts
 * import { llmServices } from "./functions/llm_services.ts";
 * import { sessionServices } from "./session_services.ts";
 * declare const getLLM: () => import("./llm.ts").LLM;
 * const services = llmServices(getLLM, sessionServices(getLLM));
 * ```
 *
 * @module
 */
import { EngineError } from "./errors.ts";
import type {
  Caller,
  SessionQueryRequest,
  SessionServices,
  TextEvent,
} from "./functions/services.ts";
import type { SessionCreateParams, SessionInfo as WireSessionInfo } from "./functions/types.ts";
import type { LLM } from "./llm.ts";
import {
  ownerOf,
  parseSessionAttention,
  type SessionInfo,
  type SessionManager,
} from "./sessions.ts";
import { textOf } from "./functions/llm_services.ts";

let serial = 0;

function managerOf(llm: LLM): SessionManager {
  if (!llm.sessions) {
    throw new EngineError("unavailable", "Sessions are not enabled on this server");
  }
  return llm.sessions;
}

function checkModel(llm: LLM, model: string | undefined): void {
  if (model !== undefined && model !== llm.info.id) {
    throw new EngineError(
      "not_found",
      `The model "${model}" does not exist: this server serves "${llm.info.id}"`,
      "model",
      "model_not_found",
    );
  }
}

function wire(s: SessionInfo): WireSessionInfo {
  return {
    id: s.id,
    tokens: s.tokens,
    host_bytes: s.hostBytes,
    prefill_seconds: s.prefillSeconds,
    expires_at: Math.floor(s.expiresAt / 1000),
  };
}

/** `ctx.sessions` for the function host, over `getLLM().sessions`. */
export function sessionServices(getLLM: () => LLM): SessionServices {
  return {
    async create(caller: Caller, params: SessionCreateParams, signal: AbortSignal) {
      const llm = getLLM();
      const manager = managerOf(llm);
      checkModel(llm, params.model);
      const p = params.prompt;
      const info = await manager.create(await ownerOf(caller.apiKey), {
        id: `${caller.requestId}-fn-${++serial}`,
        ...(params.messages !== undefined
          ? { messages: params.messages }
          : typeof p === "string"
          ? { text: p }
          : { promptIds: p ?? [] }),
        ttlSeconds: params.ttl_seconds,
        attention: parseSessionAttention(params.attention, llm.info.nLayers),
        signal,
      });
      return wire(info);
    },
    async get(caller: Caller, id: string) {
      return wire(managerOf(getLLM()).get(await ownerOf(caller.apiKey), id));
    },
    async *query(
      caller: Caller,
      id: string,
      params: SessionQueryRequest,
      signal: AbortSignal,
    ): AsyncGenerator<TextEvent> {
      const manager = managerOf(getLLM());
      const p = params.prompt;
      const stop = params.stop === undefined
        ? undefined
        : typeof params.stop === "string"
        ? [params.stop]
        : params.stop;
      const turn = await manager.query(await ownerOf(caller.apiKey), id, {
        id: `${caller.requestId}-fn-${++serial}`,
        ...(params.messages !== undefined
          ? { messages: params.messages }
          : typeof p === "string"
          ? { text: p }
          : { promptIds: p ?? [] }),
        maxTokens: params.max_tokens,
        defaultMaxTokens: params.messages !== undefined ? null : 16,
        fork: params.fork ?? false,
        sampling: {
          temperature: params.temperature ?? 1,
          topP: params.top_p ?? 1,
          topK: params.top_k ?? 0,
          seed: params.seed,
        },
        stop,
        signal,
      });
      yield* textOf(turn, "The session turn failed");
    },
    async delete(caller: Caller, id: string) {
      await managerOf(getLLM()).delete(await ownerOf(caller.apiKey), id);
    },
  };
}
