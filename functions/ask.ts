/**
 * Answers a question about a pinned session, streaming.
 *
 * `POST /v1/functions/ask` with JSON `{"session_id": "...", "question": "...",
 * "max_tokens": 256, "remember": false, "stream": true}`. The question is appended to the
 * session (only its new tokens are prefilled) and the answer streams back as server-sent
 * events: `data: {"text": "..."}` per delta, then
 * `data: {"finish_reason": "...", "usage": {...}}` and `data: [DONE]`. With
 * `"stream": false` the answer comes as one JSON object `{answer, finish_reason, usage}`.
 *
 * By default each question runs on a fork of the session, so the session keeps just its
 * document; `"remember": true` keeps the question and answer in it (a conversation).
 * A session of another API key, or one that expired, answers 404.
 *
 * Configuration (ask.json "env"): QUESTION_PREFIX, ANSWER_PREFIX (the prompt around the
 * question), ANSWER_TOKENS (default length).
 */
import type { BindingErrorInfo, FunctionContext } from "../engine/functions/types.ts";

function error(status: number, message: string, param: string | null, type: string) {
  return Response.json({ error: { message, type, param, code: null } }, { status });
}

export default async function ask(request: Request, ctx: FunctionContext): Promise<Response> {
  if (request.method !== "POST") {
    return error(405, `Method "${request.method}" is not allowed`, null, "invalid_request_error");
  }
  const body = await request.json().catch(() => null) as Record<string, unknown> | null;
  const sessionId = body?.session_id;
  const question = body?.question;
  if (typeof sessionId !== "string" || sessionId === "") {
    return error(400, `Expected a string "session_id"`, "session_id", "invalid_request_error");
  }
  if (typeof question !== "string" || question.trim() === "") {
    return error(
      400,
      `Expected a non-empty string "question"`,
      "question",
      "invalid_request_error",
    );
  }
  const prompt = `${ctx.env.QUESTION_PREFIX ?? "\n\nQuestion: "}${question}` +
    `${ctx.env.ANSWER_PREFIX ?? "\nAnswer:"}`;
  const params = {
    prompt,
    max_tokens: Number(body?.max_tokens ?? ctx.env.ANSWER_TOKENS ?? "256"),
    temperature: typeof body?.temperature === "number" ? body.temperature : 0,
    fork: body?.remember !== true,
  };

  try {
    // Fails with 404 before anything is streamed when the session is not the caller's.
    await ctx.sessions.get(sessionId);
    if (body?.stream === false) {
      const c = await ctx.sessions.query(sessionId, params);
      return Response.json({ answer: c.text, finish_reason: c.finish_reason, usage: c.usage });
    }
  } catch (e) {
    const b = e as BindingErrorInfo;
    if (b.name !== "BindingError") throw e;
    return error(b.status, b.message, b.param, b.type);
  }

  const answer = ctx.sessions.query(sessionId, { ...params, stream: true });
  const deltas = answer[Symbol.asyncIterator]();
  const enc = new TextEncoder();
  const event = (data: unknown) => enc.encode(`data: ${JSON.stringify(data)}\n\n`);
  return new Response(
    new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const { value, done } = await deltas.next();
          if (!done) {
            controller.enqueue(event({ text: value }));
            return;
          }
          const { finish_reason, usage } = await answer.result;
          controller.enqueue(event({ finish_reason, usage }));
        } catch (e) {
          const b = e as BindingErrorInfo;
          controller.enqueue(
            event({ error: { message: b.message, type: b.type ?? "server_error" } }),
          );
        }
        controller.enqueue(enc.encode("data: [DONE]\n\n"));
        controller.close();
      },
      // The client went away: stop generating.
      cancel() {
        answer.cancel();
      },
    }),
    { headers: { "content-type": "text/event-stream", "cache-control": "no-cache" } },
  );
}
