/**
 * `/v1/sessions`: long contexts pinned in host memory, owned by the API key that created
 * them (another key gets 404, never 403, so that ids reveal nothing).
 *
 * - `POST /v1/sessions` `{model?, prompt | messages, ttl_seconds?, attention?, stream?}`
 *   prefills the context once and answers the session object
 *   `{id, object: "session", tokens, host_bytes, prefill_seconds, expires_at, ...}`; with
 *   `stream: true` it sends `session.progress` events during the prefill, then the session
 *   object, then `[DONE]`. `prompt` is text (tokenized with BOS) or token ids; `messages`
 *   are rendered with the chat template (no generation prompt). The default attention is
 *   MagicPIG with the library's parameters.
 * - `GET /v1/sessions` (the caller's), `GET /v1/sessions/{id}`, `DELETE /v1/sessions/{id}`
 *   (deferred while a turn runs: the turn is aborted and the session freed after it),
 *   `POST /v1/sessions/{id}/save` (a snapshot now; needs `--session-dir`).
 * - Turns: `POST /v1/sessions/{id}/completions` and `/v1/sessions/{id}/chat/completions`
 *   (see `completions.ts` and `chat_completions.ts`; also `session_id` in the body of the
 *   plain endpoints).
 *
 * Status codes: 404 unknown or another key's session; 409 a turn is already running on it
 * (`session_busy`); 429 + `Retry-After` when the memory budget is held by sessions in use;
 * 400 for bad input, including a session that could never fit the budget.
 *
 * @example
 * ```sh
 * curl localhost:8080/v1/sessions -H 'authorization: Bearer sk-1' \
 *   -d '{"prompt": "A long document...", "ttl_seconds": 600}'
 * curl localhost:8080/v1/sessions/sess_.../completions -H 'authorization: Bearer sk-1' \
 *   -d '{"prompt": " Question: ...", "max_tokens": 64}'
 * ```
 *
 * @module
 */
import { EngineError } from "../engine/errors.ts";
import type { LLM } from "../engine/llm.ts";
import type { ChatMessage } from "../engine/model/types.ts";
import {
  attentionJson,
  parseSessionAttention,
  type SessionInfo,
  type SessionManager,
  type SessionQuery,
} from "../engine/sessions.ts";
import { parseMessages } from "./chat_completions.ts";
import { HttpError, toHttpError } from "./_http_error.ts";
import { checkModel, deadlineFrom } from "./_openai.ts";
import type { Handler, RequestContext } from "./_router.ts";
import { DONE, sseResponse } from "./_sse.ts";
import { Fields } from "./_validate.ts";

/** The model's session manager, or a 503 when sessions are off. */
export function sessionsOf(llm: LLM): SessionManager {
  if (!llm.sessions) {
    throw new HttpError(503, "Sessions are not enabled on this server", {
      code: "sessions_disabled",
    });
  }
  return llm.sessions;
}

const seconds = (ms: number) => Math.floor(ms / 1000);

/** The session object on the wire. */
export function sessionJson(s: SessionInfo, model: string): Record<string, unknown> {
  return {
    id: s.id,
    object: "session",
    model,
    kind: s.kind,
    state: s.state,
    busy: s.busy,
    tokens: s.tokens,
    host_bytes: s.hostBytes,
    gpu_bytes: s.gpuBytes,
    prefill_seconds: Math.round(s.prefillSeconds * 1e6) / 1e6,
    created_at: seconds(s.createdAt),
    last_used_at: seconds(s.lastUsedAt),
    expires_at: seconds(s.expiresAt),
    ttl_seconds: s.ttlSeconds,
    turns: s.turns,
    attention: attentionJson(s.attention),
    saved_at: s.savedAt === null ? null : seconds(s.savedAt),
  };
}

/** `prompt` of a session request: text or token ids (a batch of one is the prompt). */
export function promptInput(f: Fields): string | number[] {
  let p = f.body.prompt;
  if (Array.isArray(p) && p.length === 1 && (typeof p[0] === "string" || Array.isArray(p[0]))) {
    p = p[0];
  }
  if (typeof p === "string") {
    if (p.length === 0) throw f.invalid("prompt", `Invalid "prompt": the prompt is empty`);
    return p;
  }
  if (
    Array.isArray(p) && p.length > 0 && p.every((x) => typeof x === "number" && Number.isInteger(x))
  ) {
    return p as number[];
  }
  if (Array.isArray(p) && p.length === 0) {
    throw f.invalid("prompt", `Invalid "prompt": the prompt is empty`);
  }
  throw f.invalid(
    "prompt",
    `Invalid "prompt": expected a string or an array of integer token ids, got ${
      JSON.stringify(p)?.slice(0, 60)
    }`,
  );
}

/** `messages` of a session turn: like a chat request's, but an empty array is allowed. */
export function sessionMessages(f: Fields): ChatMessage[] {
  const v = f.body.messages;
  if (Array.isArray(v) && v.length === 0) return [];
  return parseMessages(f);
}

/** `POST /v1/sessions`. */
export function createSession(getLLM: () => LLM): Handler {
  return async function createSession(req, ctx) {
    const llm = getLLM();
    const manager = sessionsOf(llm);
    const f = new Fields(ctx.body);
    const model = checkModel(f, llm);
    const hasPrompt = f.has("prompt");
    const hasMessages = f.has("messages");
    if (hasPrompt === hasMessages) {
      throw f.invalid(
        hasPrompt ? "messages" : "prompt",
        hasPrompt
          ? `Send either "prompt" or "messages", not both`
          : `Missing "prompt" or "messages": the context to pin, as text, token ids or chat messages`,
      );
    }
    const { max } = manager.ttlLimits;
    const ttlSeconds = f.number("ttl_seconds", { min: 1, max, integer: true });
    const attention = parseSessionAttention(f.body.attention, llm.info.nLayers);
    const stream = f.boolean("stream") ?? false;
    const input = hasPrompt ? promptInput(f) : null;
    const request = {
      id: ctx.requestId,
      ...(input === null
        ? { messages: parseMessages(f) }
        : typeof input === "string"
        ? { text: input }
        : { promptIds: input }),
      ttlSeconds,
      attention,
      deadline: deadlineFrom(req),
    };
    if (!stream) {
      const info = await manager.create(ctx.owner, { ...request, signal: req.signal });
      return Response.json(sessionJson(info, model), {
        headers: { "x-request-id": ctx.requestId },
      });
    }
    return await streamCreate(manager, request, req, ctx, model);
  };
}

async function streamCreate(
  manager: SessionManager,
  request: Parameters<SessionManager["create"]>[1],
  req: Request,
  ctx: RequestContext,
  model: string,
): Promise<Response> {
  const abort = new AbortController();
  const onClientGone = () => abort.abort();
  req.signal.addEventListener("abort", onClientGone, { once: true });
  let push!: (v: unknown) => void;
  let end!: () => void;
  const queue = new ReadableStream<unknown>({
    start(c) {
      // After the client went away the stream is cancelled and refuses more items.
      push = (v) => {
        try {
          c.enqueue(v);
        } catch { /* cancelled */ }
      };
      end = () => {
        try {
          c.close();
        } catch { /* cancelled */ }
      };
    },
    cancel() {
      abort.abort();
    },
  });
  const done = manager.create(ctx.owner, {
    ...request,
    signal: abort.signal,
    onProgress: (done, total) =>
      push({ object: "session.progress", tokens_done: done, tokens_total: total }),
  }).then(
    (info) => {
      push(sessionJson(info, model));
      end();
    },
    (e) => {
      push(toHttpError(e));
      end();
    },
  ).finally(() => req.signal.removeEventListener("abort", onClientGone));
  const reader = queue.getReader();
  // Wait for the first event, so a request that cannot start gets a real HTTP status.
  const first = await reader.read();
  if (!first.done && first.value instanceof HttpError) {
    await done;
    throw first.value;
  }
  async function* events(): AsyncGenerator<unknown> {
    try {
      for (let r = first; !r.done; r = await reader.read()) {
        yield r.value instanceof HttpError ? r.value.toJSON() : r.value;
      }
    } finally {
      await reader.cancel().catch(() => {});
    }
    yield DONE;
  }
  return sseResponse(events(), { headers: { "x-request-id": ctx.requestId } });
}

/** `GET /v1/sessions`. */
export function listSessions(getLLM: () => LLM): Handler {
  return function listSessions(_req, ctx) {
    const llm = getLLM();
    const data = sessionsOf(llm).list(ctx.owner).map((s) => sessionJson(s, llm.info.id));
    return Response.json({ object: "list", data });
  };
}

/** `GET /v1/sessions/{id}`. */
export function getSession(getLLM: () => LLM): Handler {
  return function getSession(_req, ctx) {
    const llm = getLLM();
    return Response.json(sessionJson(sessionsOf(llm).get(ctx.owner, ctx.params.id), llm.info.id));
  };
}

/** `DELETE /v1/sessions/{id}`. */
export function deleteSession(getLLM: () => LLM): Handler {
  return async function deleteSession(_req, ctx) {
    const manager = sessionsOf(getLLM());
    await manager.delete(ctx.owner, ctx.params.id);
    return Response.json({ id: ctx.params.id, object: "session.deleted", deleted: true });
  };
}

/** `POST /v1/sessions/{id}/save`. */
export function saveSession(getLLM: () => LLM): Handler {
  return async function saveSession(req, ctx) {
    await req.body?.cancel();
    const llm = getLLM();
    const info = await sessionsOf(llm).save(ctx.owner, ctx.params.id);
    return Response.json(sessionJson(info, llm.info.id));
  };
}

/**
 * The session a generation request names: the `{id}` of a `/v1/sessions/{id}/...` path or
 * `session_id` in the body; null for a plain request. `fork` without a session is a 400.
 */
export function sessionTarget(
  f: Fields,
  ctx: RequestContext,
): { id: string; fork: boolean } | null {
  const id = ctx.params.id ?? f.string("session_id");
  const fork = f.boolean("fork");
  if (id === undefined) {
    if (fork) {
      throw f.invalid("fork", `"fork" needs a session: use "session_id" or /v1/sessions/{id}/...`);
    }
    return null;
  }
  if (f.has("attention")) {
    throw f.invalid(
      "attention",
      `A session's attention is set when it is created: "attention" cannot change per request`,
    );
  }
  return { id, fork: fork ?? false };
}

/** Starts a turn, mapping "not found" on a plain endpoint's `session_id` to that parameter. */
export async function startTurn(
  llm: LLM,
  ctx: RequestContext,
  id: string,
  query: SessionQuery,
) {
  try {
    return await sessionsOf(llm).query(ctx.owner, id, query);
  } catch (e) {
    if (e instanceof EngineError && e.kind === "not_found" && ctx.params.id !== undefined) {
      throw new HttpError(404, e.message, { param: null, code: e.code, cause: e });
    }
    throw e;
  }
}
