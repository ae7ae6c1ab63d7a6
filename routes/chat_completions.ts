/**
 * `POST /v1/chat/completions` in OpenAI's shape: `messages` rendered with the model's own
 * chat template, `max_completion_tokens` (or `max_tokens`), `temperature`, `top_p`,
 * `top_k`, `seed`, `stop`, `logprobs: true` with `top_logprobs: N`, `stream` with
 * `stream_options.include_usage`, vLLM's `return_tokens_as_token_ids` and
 * `return_token_ids` (non-streamed: `choices[0].token_ids` and `prompt_token_ids`), and the
 * `attention` extension.
 *
 * Sessions: with `session_id` (or on `/v1/sessions/{id}/chat/completions`) `messages` are
 * the conversation's new turns (or the whole conversation, whose known prefix is then
 * skipped; an empty array asks for the assistant's reply to the conversation so far). They
 * are rendered so that the session's text plus the new text equals rendering the whole
 * conversation (see `engine/sessions.ts`); the answer joins the session unless
 * `fork: true`.
 *
 * @example
 * ```sh
 * curl localhost:8080/v1/chat/completions -H 'content-type: application/json' \
 *   -d '{"messages": [{"role": "user", "content": "Hello"}], "max_completion_tokens": 16}'
 * ```
 *
 * @module
 */
import type { LLM } from "../engine/llm.ts";
import type { ChatMessage } from "../engine/model/types.ts";
import type { RequestStream, TokenEvent } from "../engine/scheduler.ts";
import {
  checkModel,
  deadlineFrom,
  finishReason,
  type OutputShape,
  refuseUnsupported,
  resolveMaxTokens,
  respond,
  samplingRequest,
  usageJson,
} from "./_openai.ts";
import type { Handler } from "./_router.ts";
import { Fields } from "./_validate.ts";
import { sessionMessages, sessionTarget, startTurn } from "./sessions.ts";

const roles = new Set(["system", "developer", "user", "assistant", "tool"]);

/**
 * Validates `messages` (OpenAI's shape, text content only: a string or an array of
 * `{type: "text", text}` parts) into {@link ChatMessage}s.
 */
export function parseMessages(f: Fields, param = "messages"): ChatMessage[] {
  const v = f.body[param];
  if (!Array.isArray(v) || v.length === 0) {
    throw f.invalid(param, `Invalid "${param}": expected a non-empty array of messages`);
  }
  return v.map((m, i): ChatMessage => {
    const where = `${param}[${i}]`;
    if (typeof m !== "object" || m === null || Array.isArray(m)) {
      throw f.invalid(where, `Invalid "${where}": expected an object with "role" and "content"`);
    }
    const { role, content, name } = m as Record<string, unknown>;
    if (typeof role !== "string" || !roles.has(role)) {
      throw f.invalid(
        `${where}.role`,
        `Invalid "${where}.role": expected one of ${[...roles].join(", ")}, got ${
          JSON.stringify(role)
        }`,
      );
    }
    let text: string;
    if (typeof content === "string") {
      text = content;
    } else if (content === null || content === undefined) {
      if (role !== "assistant") {
        throw f.invalid(`${where}.content`, `Missing "${where}.content"`);
      }
      text = "";
    } else if (Array.isArray(content)) {
      text = content.map((part, j) => {
        const p = part as Record<string, unknown>;
        if (
          typeof p !== "object" || p === null || p.type !== "text" || typeof p.text !== "string"
        ) {
          throw f.invalid(
            `${where}.content[${j}]`,
            `Unsupported "${where}.content[${j}]": only {"type": "text", "text": ...} parts are supported`,
          );
        }
        return p.text;
      }).join("");
    } else {
      throw f.invalid(
        `${where}.content`,
        `Invalid "${where}.content": expected a string or an array of text parts`,
      );
    }
    const out: ChatMessage = { role: role === "developer" ? "system" : role, content: text };
    if (typeof name === "string") out.name = name;
    return out;
  });
}

/** One entry of `choices[].logprobs.content`. */
function contentLogprob(llm: LLM, t: TokenEvent, asIds: boolean): Record<string, unknown> {
  const entry = (id: number, logprob: number) => ({
    token: asIds ? `token_id:${id}` : llm.tokenText(id),
    logprob,
    bytes: llm.tokenBytes(id),
  });
  return {
    ...entry(t.id, t.logprob),
    top_logprobs: t.top.map((alt) => entry(alt.id, alt.logprob)),
  };
}

/** The `POST /v1/chat/completions` handler for a served model. */
export function chatCompletions(getLLM: () => LLM): Handler {
  return async function chatCompletions(req, ctx) {
    const llm = getLLM();
    const f = new Fields(ctx.body);
    const model = checkModel(f, llm);
    refuseUnsupported(f);
    f.unsupported(
      "tools",
      (v) => Array.isArray(v) && v.length === 0,
      "tool calling is not supported",
    );
    f.unsupported(
      "response_format",
      (v) => typeof v === "object" && v !== null && (v as { type?: unknown }).type === "text",
      "only the text response format is supported",
    );
    const target = sessionTarget(f, ctx);
    const messages = target ? sessionMessages(f) : parseMessages(f);
    const maxParam = f.has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    const requestedMax = f.number(maxParam, { min: 1, integer: true });
    const wantLogprobs = f.boolean("logprobs") ?? false;
    const topLogprobs = f.number("top_logprobs", { min: 0, max: 20, integer: true });
    if (topLogprobs !== undefined && !wantLogprobs) {
      throw f.invalid("top_logprobs", `"top_logprobs" needs "logprobs": true`);
    }
    const stream = f.boolean("stream") ?? false;
    const streamOptions = f.object("stream_options");
    if (streamOptions && !stream) {
      throw f.invalid("stream_options", `"stream_options" is only allowed when "stream" is true`);
    }
    const includeUsage = streamOptions?.include_usage === true;
    const asIds = f.boolean("return_tokens_as_token_ids") ?? false;
    const withIds = f.boolean("return_token_ids") ?? false;
    const sampling = samplingRequest(f, llm, wantLogprobs ? topLogprobs ?? 0 : 0);
    const deadline = deadlineFrom(req);
    let handle: RequestStream;
    let promptTokenIds: readonly number[];
    if (target) {
      const { attention: _, ...rest } = sampling;
      const turn = await startTurn(llm, ctx, target.id, {
        ...rest,
        id: ctx.requestId,
        messages,
        maxTokens: requestedMax,
        defaultMaxTokens: null,
        maxTokensParam: maxParam,
        fork: target.fork,
        signal: req.signal,
        deadline,
      });
      handle = turn;
      promptTokenIds = turn.promptIds;
    } else {
      const { ids } = llm.renderChat(messages, {
        addGenerationPrompt: f.boolean("add_generation_prompt") ?? true,
      });
      const maxTokens = resolveMaxTokens(
        llm,
        ids.length,
        requestedMax,
        { prompt: "messages", maxTokens: maxParam },
        null,
      );
      handle = llm.generate({
        ...sampling,
        id: ctx.requestId,
        promptIds: ids,
        maxTokens,
        signal: req.signal,
        deadline,
      });
      promptTokenIds = ids;
    }

    const id = `chatcmpl-${ctx.requestId}`;
    const created = Math.floor(Date.now() / 1000);
    const head = { id, object: "chat.completion.chunk", created, model };
    const usageNull = includeUsage ? { usage: null } : {};
    const shape: OutputShape = {
      firstChunk() {
        return {
          ...head,
          choices: [{
            index: 0,
            delta: { role: "assistant", content: "" },
            logprobs: null,
            finish_reason: null,
          }],
          ...usageNull,
        };
      },
      tokenChunk(ev) {
        if (ev.text === "" && !wantLogprobs) return null;
        return {
          ...head,
          choices: [{
            index: 0,
            delta: { content: ev.text },
            logprobs: wantLogprobs ? { content: [contentLogprob(llm, ev, asIds)] } : null,
            finish_reason: null,
          }],
          ...usageNull,
        };
      },
      finishChunks(ev) {
        const out: Record<string, unknown>[] = [{
          ...head,
          choices: [{
            index: 0,
            delta: ev.text ? { content: ev.text } : {},
            logprobs: null,
            finish_reason: finishReason(ev),
          }],
          ...usageNull,
        }];
        if (includeUsage) out.push({ ...head, choices: [], usage: usageJson(ev.usage) });
        return out;
      },
      body(tokens, text, ev) {
        return {
          id,
          object: "chat.completion",
          created,
          model,
          choices: [{
            index: 0,
            message: { role: "assistant", content: text },
            logprobs: wantLogprobs
              ? { content: tokens.map((t) => contentLogprob(llm, t, asIds)) }
              : null,
            finish_reason: finishReason(ev),
            ...(withIds ? { token_ids: ev.outputIds } : {}),
          }],
          usage: usageJson(ev.usage),
          ...(withIds ? { prompt_token_ids: promptTokenIds } : {}),
        };
      },
    };
    return await respond(handle, shape, {
      stream,
      ctx,
      tokenTextLength: (t) => llm.tokenText(t).length,
    });
  };
}
