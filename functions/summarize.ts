/**
 * Pins a document as a session and summarises it.
 *
 * `POST /v1/functions/summarize` with the document as the body (plain text), or JSON
 * `{"document": "...", "max_tokens": 128, "ttl_seconds": 3600}`. The document is
 * prefilled once into a session of the caller's API key; the summary is generated on a
 * fork of it, so the session keeps the document alone for later questions
 * (`/v1/functions/ask`). Answers `{session_id, tokens, summary, usage}`.
 *
 * Configuration (summarize.json "env"): SUMMARY_PROMPT (the text appended after the
 * document), SUMMARY_TOKENS (default length), TTL_SECONDS (session lifetime).
 */
import type { BindingErrorInfo, FunctionContext } from "../engine/functions/types.ts";

function error(status: number, message: string, param: string | null = null): Response {
  return Response.json(
    { error: { message, type: "invalid_request_error", param, code: null } },
    { status },
  );
}

export default async function summarize(
  request: Request,
  ctx: FunctionContext,
): Promise<Response> {
  if (request.method !== "POST") {
    return error(405, `Method "${request.method}" is not allowed: POST a document`);
  }
  let document: string;
  let maxTokens = Number(ctx.env.SUMMARY_TOKENS ?? "128");
  let ttlSeconds = ctx.env.TTL_SECONDS ? Number(ctx.env.TTL_SECONDS) : undefined;
  if ((request.headers.get("content-type") ?? "").includes("application/json")) {
    const body = await request.json().catch(() => null) as Record<string, unknown> | null;
    if (typeof body?.document !== "string") {
      return error(400, `Expected a JSON body with a string "document"`, "document");
    }
    document = body.document;
    if (body.max_tokens !== undefined) maxTokens = Number(body.max_tokens);
    if (body.ttl_seconds !== undefined) ttlSeconds = Number(body.ttl_seconds);
  } else {
    document = await request.text();
  }
  if (document.trim() === "") return error(400, "The document is empty", "document");

  try {
    const session = await ctx.sessions.create({ prompt: document, ttl_seconds: ttlSeconds });
    ctx.log("document pinned", { session_id: session.id, tokens: session.tokens });
    const summary = await ctx.sessions.query(session.id, {
      prompt: ctx.env.SUMMARY_PROMPT ?? "\n\nSummary:",
      max_tokens: maxTokens,
      temperature: 0,
      fork: true,
    });
    return Response.json({
      session_id: session.id,
      tokens: session.tokens,
      summary: summary.text.trim(),
      usage: summary.usage,
    });
  } catch (e) {
    // The host's answer for this request (400 bad value, 429 memory budget...), as JSON.
    const b = e as BindingErrorInfo;
    if (b.name !== "BindingError") throw e;
    return Response.json(
      { error: { message: b.message, type: b.type, param: b.param, code: b.code } },
      { status: b.status },
    );
  }
}
