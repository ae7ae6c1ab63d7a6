/**
 * `ctx.sessions` over the session manager: the example functions (`functions/summarize.ts`
 * pins a document and summarises it on a fork; `functions/ask.ts` answers questions about
 * it) on the real stories260K model, acting for the caller's API key.
 */
import { assert, assertEquals, assertGreater, assertStringIncludes } from "./_std.ts";
import { sharedModels, skipReason } from "./_util.ts";
import { serveFunctions } from "./_functions.ts";
import { llmServices } from "../engine/functions/llm_services.ts";
import { openLLM } from "../engine/load.ts";
import { Logger } from "../engine/log.ts";
import { ownerOf } from "../engine/sessions.ts";
import { sessionServices } from "../engine/session_services.ts";

const skip = skipReason("the ctx.sessions tests");
const examples = new URL("../functions", import.meta.url).pathname;

Deno.test({
  name: "sessionServices() gives functions the caller's sessions: summarize pins, ask answers",
  ignore: skip !== null,
  async fn() {
    const llm = await openLLM(
      { model: `${sharedModels}/stories260K/stories260K.gguf`, threads: 2 },
      new Logger({ level: "silent" }),
    );
    const getLLM = () => llm;
    const s = serveFunctions(examples, llmServices(getLLM, sessionServices(getLLM)));
    const post = async (name: string, key: string, body: unknown) => {
      const res = await fetch(`${s.base}/v1/functions/${name}`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
        body: JSON.stringify(body),
      });
      return {
        status: res.status,
        res,
        json: res.headers.get("content-type")?.includes("json") ? await res.json() : null,
      };
    };
    try {
      const pinned = await post("summarize", "k1", {
        document: "Once upon a time, there was a little girl named Lily. She loved to play.",
        max_tokens: 12,
      });
      assertEquals(pinned.status, 200, JSON.stringify(pinned.json));
      const id = pinned.json.session_id as string;
      assertGreater(pinned.json.tokens, 10);
      assertEquals(pinned.json.usage.cached_tokens, pinned.json.tokens);
      assert(pinned.json.summary.length > 0);
      const manager = llm.sessions!;
      const owner = await ownerOf("k1");
      assertEquals(manager.get(owner, id).tokens, pinned.json.tokens, "summarised on a fork");

      const q = { session_id: id, question: "Who is Lily?", max_tokens: 8, stream: false };
      const a1 = await post("ask", "k1", q);
      assertEquals(a1.status, 200, JSON.stringify(a1.json));
      assertEquals(a1.json.usage.cached_tokens, pinned.json.tokens);
      const a2 = await post("ask", "k1", q);
      assertEquals(a2.json.answer, a1.json.answer, "a fork leaves the session as it was");

      const kept = await post("ask", "k1", { ...q, remember: true });
      assertEquals(kept.json.answer, a1.json.answer);
      assertEquals(
        manager.get(owner, id).tokens,
        pinned.json.tokens + kept.json.usage.prompt_tokens + kept.json.usage.completion_tokens,
      );

      const other = await post("ask", "k2", q);
      assertEquals(other.status, 404, JSON.stringify(other.json));
      assertStringIncludes(other.json.error.message, id);

      const streamed = await post("ask", "k1", { ...q, stream: true });
      assertEquals(streamed.status, 200);
      const text = await streamed.res.text();
      assertStringIncludes(text, '"finish_reason"');
      assertStringIncludes(text, "data: [DONE]");
    } finally {
      await s.close();
      await llm.close();
    }
  },
});
