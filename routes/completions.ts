/**
 * `POST /v1/completions` in OpenAI's shape: `prompt` as a string or an array of token
 * ids, `max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `stop`, `logprobs: N`,
 * `stream` with `stream_options.include_usage`, vLLM's `return_tokens_as_token_ids`,
 * `ignore_eos`, `stop_token_ids` and `return_token_ids`, and the `attention` extension.
 *
 * A model without a tokenizer serves token-id prompts; its choices carry `token_ids`
 * (and empty text).
 *
 * Sessions: with `session_id` (or on `/v1/sessions/{id}/completions`) the prompt is
 * appended to the pinned session (text without BOS unless `add_special_tokens: true`), the
 * answer joins the session, and `usage.prompt_tokens_details.cached_tokens` counts the
 * session's tokens; `fork: true` leaves the session unchanged. `max_tokens` defaults to 16
 * capped to what the session has room for.
 *
 * @example
 * ```sh
 * curl -N localhost:8080/v1/completions -H 'content-type: application/json' \
 *   -d '{"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0, "stream": true}'
 * ```
 *
 * @module
 */
import type { LLM } from "../engine/llm.ts";
import type { FinishEvent, RequestStream, TokenEvent } from "../engine/scheduler.ts";
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
import { promptInput, sessionTarget, startTurn } from "./sessions.ts";

/** Reads `prompt` into token ids (a string is tokenized with BOS by default). */
function promptIds(f: Fields, llm: LLM): number[] {
  let p = f.body.prompt;
  if (p === undefined || p === null) {
    throw f.invalid("prompt", `Missing "prompt": expected a string or an array of token ids`);
  }
  // A batch of one prompt is the prompt itself.
  if (Array.isArray(p) && p.length === 1 && (typeof p[0] === "string" || Array.isArray(p[0]))) {
    p = p[0];
  }
  if (typeof p === "string") {
    if (p.length === 0) throw f.invalid("prompt", `Invalid "prompt": the prompt is empty`);
    const ids = llm.tokenize(p, { addSpecialTokens: f.boolean("add_special_tokens") ?? true });
    if (ids.length === 0) throw f.invalid("prompt", `Invalid "prompt": it encodes to no tokens`);
    return ids;
  }
  if (Array.isArray(p)) {
    if (p.length === 0) throw f.invalid("prompt", `Invalid "prompt": the prompt is empty`);
    if (p.every((x) => typeof x === "number" && Number.isInteger(x))) {
      llm.checkIds(p as number[], "prompt");
      return p as number[];
    }
    if (p.length > 1 && p.every((x) => typeof x === "string" || Array.isArray(x))) {
      throw f.invalid(
        "prompt",
        `Invalid "prompt": batches of ${p.length} prompts are not supported; send one prompt per request`,
      );
    }
  }
  throw f.invalid(
    "prompt",
    `Invalid "prompt": expected a string or an array of integer token ids, got ${
      JSON.stringify(p).slice(0, 60)
    }`,
  );
}

/** The completions logprobs object for some tokens. */
function logprobsJson(
  llm: LLM,
  tokens: readonly TokenEvent[],
  asIds: boolean,
  startOffset: number,
): Record<string, unknown> {
  const name = (id: number) => asIds ? `token_id:${id}` : llm.tokenText(id);
  let offset = startOffset;
  const textOffset: number[] = [];
  for (const t of tokens) {
    textOffset.push(offset);
    offset += llm.tokenText(t.id).length;
  }
  return {
    tokens: tokens.map((t) => name(t.id)),
    token_logprobs: tokens.map((t) => t.logprob),
    top_logprobs: tokens.map((t) => {
      const top: Record<string, number> = {};
      for (const alt of t.top) top[name(alt.id)] = alt.logprob;
      // vLLM's completions include the chosen token among the alternatives.
      top[name(t.id)] ??= t.logprob;
      return top;
    }),
    text_offset: textOffset,
  };
}

/** The `POST /v1/completions` handler for a served model. */
export function completions(getLLM: () => LLM): Handler {
  return async function completions(req, ctx) {
    const llm = getLLM();
    const f = new Fields(ctx.body);
    const model = checkModel(f, llm);
    refuseUnsupported(f);
    f.unsupported("echo", (v) => v === false, "echoing the prompt is not supported");
    f.unsupported("suffix", (v) => v === "", "suffix (insertion) is not supported");
    const target = sessionTarget(f, ctx);
    const requestedMax = f.number("max_tokens", { min: 1, integer: true });
    const ids = target ? null : promptIds(f, llm);
    const input = target ? promptInput(f) : null;
    const logprobs = f.number("logprobs", { min: 0, max: 20, integer: true });
    const stream = f.boolean("stream") ?? false;
    const streamOptions = f.object("stream_options");
    if (streamOptions && !stream) {
      throw f.invalid("stream_options", `"stream_options" is only allowed when "stream" is true`);
    }
    const includeUsage = streamOptions?.include_usage === true;
    const asIds = f.boolean("return_tokens_as_token_ids") ?? false;
    const withIds = (f.boolean("return_token_ids") ?? false) || !llm.info.hasTokenizer;
    const sampling = samplingRequest(f, llm, logprobs ?? 0);
    const deadline = deadlineFrom(req);
    let handle: RequestStream;
    let promptTokenIds: readonly number[];
    if (target) {
      const { attention: _, ...rest } = sampling;
      const turn = await startTurn(llm, ctx, target.id, {
        ...rest,
        id: ctx.requestId,
        ...(typeof input === "string" ? { text: input } : { promptIds: input! }),
        addSpecialTokens: f.boolean("add_special_tokens") ?? false,
        maxTokens: requestedMax,
        defaultMaxTokens: 16,
        maxTokensParam: "max_tokens",
        fork: target.fork,
        signal: req.signal,
        deadline,
      });
      handle = turn;
      promptTokenIds = turn.promptIds;
    } else {
      const maxTokens = resolveMaxTokens(
        llm,
        ids!.length,
        requestedMax,
        { prompt: "prompt", maxTokens: "max_tokens" },
        16,
      );
      handle = llm.generate({
        ...sampling,
        id: ctx.requestId,
        promptIds: ids!,
        maxTokens,
        signal: req.signal,
        deadline,
      });
      promptTokenIds = ids!;
    }

    const id = `cmpl-${ctx.requestId}`;
    const created = Math.floor(Date.now() / 1000);
    const head = { id, object: "text_completion", created, model };
    const shape: OutputShape = {
      tokenChunk(ev, offset) {
        if (ev.text === "" && logprobs === undefined && !withIds) return null;
        return {
          ...head,
          choices: [{
            index: 0,
            text: ev.text,
            logprobs: logprobs === undefined ? null : logprobsJson(llm, [ev], asIds, offset),
            finish_reason: null,
            ...(withIds ? { token_ids: [ev.id] } : {}),
          }],
          ...(includeUsage ? { usage: null } : {}),
        };
      },
      finishChunks(ev: FinishEvent) {
        const out: Record<string, unknown>[] = [{
          ...head,
          choices: [{
            index: 0,
            text: ev.text,
            logprobs: null,
            finish_reason: finishReason(ev),
            ...(withIds ? { token_ids: [] } : {}),
          }],
          ...(includeUsage ? { usage: null } : {}),
        }];
        if (includeUsage) out.push({ ...head, choices: [], usage: usageJson(ev.usage) });
        return out;
      },
      body(tokens, text, ev) {
        return {
          ...head,
          choices: [{
            index: 0,
            text,
            logprobs: logprobs === undefined ? null : logprobsJson(llm, tokens, asIds, 0),
            finish_reason: finishReason(ev),
            ...(withIds ? { token_ids: ev.outputIds, prompt_token_ids: promptTokenIds } : {}),
          }],
          usage: usageJson(ev.usage),
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
