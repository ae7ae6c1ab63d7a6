/**
 * `POST /tokenize` and `POST /detokenize` in vLLM's shapes:
 * `{prompt, add_special_tokens}` or `{messages, add_generation_prompt}` →
 * `{tokens, count, max_model_len}` (with `token_strs` when `return_token_strs`), and
 * `{tokens}` → `{prompt}`.
 *
 * @example
 * ```sh
 * curl localhost:8080/tokenize -H 'content-type: application/json' -d '{"prompt": "Once upon a time"}'
 * # {"tokens":[1,403,407,261,378],"count":5,"max_model_len":512}
 * ```
 *
 * @module
 */
import type { LLM } from "../engine/llm.ts";
import { parseMessages } from "./chat_completions.ts";
import { checkModel } from "./_openai.ts";
import type { Handler } from "./_router.ts";
import { Fields } from "./_validate.ts";

/** The `POST /tokenize` handler. */
export function tokenize(getLLM: () => LLM): Handler {
  return function tokenize(_req, ctx) {
    const llm = getLLM();
    const f = new Fields(ctx.body);
    checkModel(f, llm);
    let tokens: number[];
    if (f.has("messages")) {
      const messages = parseMessages(f);
      const rendered = llm.renderChat(messages, {
        addGenerationPrompt: f.boolean("add_generation_prompt") ?? true,
      });
      tokens = rendered.ids;
    } else {
      const prompt = f.string("prompt");
      if (prompt === undefined) {
        throw f.invalid("prompt", `Missing "prompt" (a string) or "messages" (a chat)`);
      }
      tokens = llm.tokenize(prompt, {
        addSpecialTokens: f.boolean("add_special_tokens") ?? true,
      });
    }
    const body: Record<string, unknown> = {
      tokens,
      count: tokens.length,
      max_model_len: llm.info.maxModelLen,
    };
    if (f.boolean("return_token_strs")) body.token_strs = tokens.map((t) => llm.tokenText(t));
    return Response.json(body);
  };
}

/** The `POST /detokenize` handler. */
export function detokenize(getLLM: () => LLM): Handler {
  return function detokenize(_req, ctx) {
    const llm = getLLM();
    const f = new Fields(ctx.body);
    checkModel(f, llm);
    const tokens = f.tokenIds("tokens");
    if (tokens === undefined) {
      throw f.invalid("tokens", `Missing "tokens": expected an array of integer token ids`);
    }
    const skip = f.boolean("skip_special_tokens") ?? true;
    return Response.json({ prompt: llm.detokenize(tokens, "tokens", { skipSpecialTokens: skip }) });
  };
}
