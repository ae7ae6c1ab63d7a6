/**
 * Functions reaching the real model: stories260K served by the real native library, ctx
 * calls going through the LLM facade and its scheduler, over a real server on port 0.
 */
import { assert, assertEquals, assertGreater, assertStringIncludes } from "./_std.ts";
import { sharedModels, skipReason } from "./_util.ts";
import { chunks, fixtures, serveFunctions } from "./_functions.ts";
import { llmServices } from "../engine/functions/llm_services.ts";
import { openLLM } from "../engine/load.ts";
import { Logger } from "../engine/log.ts";
import type { LLM } from "../engine/llm.ts";

const skip = skipReason("the function host's model tests");
const gguf = `${sharedModels}/stories260K/stories260K.gguf`;

interface Reference {
  prompt_run: { prompt: string; generated_text: string };
}

Deno.test({
  name:
    "ctx.generate runs on stories260K: greedy text as the reference, streamed deltas, disconnect aborts",
  ignore: skip !== null,
  async fn(t) {
    const ref = JSON.parse(
      await Deno.readTextFile(`${sharedModels}/reference/stories260K_reference.json`),
    ) as Reference;
    const llm: LLM = await openLLM({ model: gguf }, new Logger({ level: "silent" }));
    const s = serveFunctions(fixtures, llmServices(() => llm, null));
    const call = (body: unknown) =>
      fetch(`${s.base}/v1/functions/complete`, { method: "POST", body: JSON.stringify(body) });
    try {
      await t.step("whole: the reference greedy continuation", async () => {
        const res = await call({ prompt: ref.prompt_run.prompt, max_tokens: 20 });
        assertEquals(res.status, 200);
        const got = await res.json() as {
          text: string;
          finish_reason: string;
          usage: { completion_tokens: number };
        };
        assertEquals(got.text, ref.prompt_run.generated_text);
        assertEquals(got.finish_reason, "length");
        assertEquals(got.usage.completion_tokens, 20);
      });

      await t.step("streamed: the same text, in several chunks", async () => {
        const res = await call({ prompt: ref.prompt_run.prompt, max_tokens: 20, stream: true });
        let text = "";
        let n = 0;
        for await (const c of chunks(res)) {
          text += c;
          n++;
        }
        assertEquals(text, ref.prompt_run.generated_text);
        assertGreater(n, 1);
        const done = await s.waitForLog((r) => r.msg === "generation finished");
        assertEquals(done.finish_reason, "length");
      });

      await t.step("a client that disconnects aborts the generation in flight", async () => {
        const aborted = llm.scheduler.stats.finished.abort;
        const abort = new AbortController();
        const res = await fetch(`${s.base}/v1/functions/complete`, {
          method: "POST",
          body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 400, stream: true }),
          signal: abort.signal,
        });
        const it = chunks(res);
        assert((await it.next()).value);
        abort.abort();
        await it.cancel().catch(() => {});
        const until = Date.now() + 10_000;
        while (llm.scheduler.stats.finished.abort === aborted && Date.now() < until) {
          await new Promise((r) => setTimeout(r, 10));
        }
        assertEquals(llm.scheduler.stats.finished.abort, aborted + 1);
        await s.settled();
      });

      await t.step("a bad parameter reaches the function as a 400 BindingError", async () => {
        const res = await call({ prompt: "Once", max_tokens: 100_000 });
        assertEquals(res.status, 500);
        const err = (await res.json() as { error: { message: string } }).error;
        assertStringIncludes(err.message, "BindingError: This model's maximum context length is");
      });
    } finally {
      await s.close();
      await llm.close();
    }
  },
});
