/**
 * The HTTP server end to end: a real `Deno.serve` on port 0, the real native library and
 * the real stories260K GGUF. Checks the reference tokens through `/v1/completions`,
 * streaming and non-streaming through the official `openai` client, disconnects, bad
 * inputs, tokenize/detokenize, health, a model without a tokenizer, and chat on the demo
 * model.
 */
import OpenAI from "openai";
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertGreater,
  assertLess,
  assertLessOrEqual,
  assertStringIncludes,
} from "./_std.ts";
import { sharedModels, skipReason } from "./_util.ts";
import { Logger } from "../engine/log.ts";
import { openLLM } from "../engine/load.ts";
import { LLM } from "../engine/llm.ts";
import { nativeBackend } from "../engine/native_backend.ts";
import { loadModel } from "../engine/model/loader.ts";
import { type Server, startServer } from "../server.ts";

const skip = skipReason("the HTTP server tests");
const gguf = `${sharedModels}/stories260K/stories260K.gguf`;
const silent = new Logger({ level: "silent" });

interface Reference {
  prompt_run: {
    prompt: string;
    prompt_ids: number[];
    generated_ids: number[];
    generated_text: string;
    per_step: { top5: [number, number][] }[];
    logits_at_pos4_float32: number[];
  };
  bos_only_256: { prompt_ids: number[]; generated_ids: number[]; text: string };
}
const reference: Reference | null = sharedModels
  ? JSON.parse(await Deno.readTextFile(`${sharedModels}/reference/stories260K_reference.json`))
  : null;

async function post(server: Server, path: string, body: unknown, headers: HeadersInit = {}) {
  const res = await fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, json: await res.json() };
}

function logSoftmax(logits: number[]): number[] {
  const max = Math.max(...logits);
  const lse = max + Math.log(logits.reduce((s, l) => s + Math.exp(l - max), 0));
  return logits.map((l) => l - lse);
}

/** Reads an SSE body into its `data:` payloads. */
async function sseData(res: Response): Promise<string[]> {
  const text = await res.text();
  return text.split("\n\n").filter((b) => b.length > 0).map((block) => {
    assert(block.startsWith("data: "), `an SSE block starts with "data: ": ${block}`);
    return block.slice(6);
  });
}

Deno.test({
  name: "startServer() serves stories260K over the OpenAI API",
  ignore: skip !== null,
  async fn(t) {
    const ref = reference!;
    // The real loader, held back until the health check has seen the loading phase.
    const { promise: gate, resolve: release } = Promise.withResolvers<void>();
    const server = await startServer({
      port: 0,
      host: "127.0.0.1",
      log: silent,
      maxBodyBytes: 64 * 1024,
      open: async (log) => {
        await gate;
        return await openLLM({ model: gguf, threads: 2 }, log);
      },
    });
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    try {
      await t.step("/health answers 503 while the model loads, then 200", async () => {
        let res = await fetch(`${server.url}/health`);
        assertEquals(res.status, 503);
        assertEquals((await res.json()).status, "loading");
        const early = await post(server, "/v1/completions", { prompt: "x" });
        assertEquals(early.status, 503);
        assertEquals(early.json.error.code, "model_loading");
        release();
        await server.ready;
        res = await fetch(`${server.url}/health`);
        assertEquals(res.status, 200);
        assertEquals((await res.json()).status, "ready");
      });

      await t.step("GET /v1/models lists the served model", async () => {
        const models = await client.models.list();
        assertEquals(models.data.map((m) => m.id), ["stories260K.gguf"]);
        const res = await fetch(`${server.url}/v1/models`);
        const maxLen = (await res.json()).data[0].max_model_len;
        assertEquals(maxLen, server.state.llm!.info.maxModelLen);
        assertGreater(maxLen, 256);
        assertEquals((await fetch(`${server.url}/v1/models/nope`)).status, 404);
      });

      await t.step("the openai client gets the reference greedy text (non-streaming)", async () => {
        const res = await client.completions.create({
          model: "stories260K.gguf",
          prompt: ref.prompt_run.prompt,
          max_tokens: 20,
          temperature: 0,
        });
        assertEquals(res.object, "text_completion");
        assertEquals(res.choices[0].text, ref.prompt_run.generated_text);
        assertEquals(res.choices[0].finish_reason, "length");
        assertEquals(res.usage?.prompt_tokens, 5);
        assertEquals(res.usage?.completion_tokens, 20);
        assertEquals(res.usage?.total_tokens, 25);
      });

      await t.step("token-id prompt with logprobs reproduces prompt_run exactly", async () => {
        const { status, json } = await post(server, "/v1/completions", {
          prompt: ref.prompt_run.prompt_ids,
          max_tokens: 20,
          temperature: 0,
          logprobs: 5,
          return_tokens_as_token_ids: true,
        });
        assertEquals(status, 200);
        const lp = json.choices[0].logprobs;
        assertEquals(lp.tokens, ref.prompt_run.generated_ids.map((id) => `token_id:${id}`));
        // The first token's log-probability from the reference logits.
        const expected = logSoftmax(ref.prompt_run.logits_at_pos4_float32);
        assertAlmostEquals(lp.token_logprobs[0], expected[ref.prompt_run.generated_ids[0]], 1e-4);
        // The top alternatives of every step are the reference's top 5.
        ref.prompt_run.per_step.forEach((step, i) => {
          const keys = Object.keys(lp.top_logprobs[i]).sort();
          const want = step.top5.map(([id]) => `token_id:${id}`).sort();
          assertEquals(keys, want, `top-5 at step ${i}`);
        });
        assertEquals(lp.text_offset.length, 20);
      });

      await t.step("BOS alone reproduces bos_only_256", async () => {
        const { status, json } = await post(server, "/v1/completions", {
          prompt: [1],
          max_tokens: 256,
          temperature: 0,
          logprobs: 0,
          return_tokens_as_token_ids: true,
        });
        assertEquals(status, 200);
        assertEquals(
          json.choices[0].logprobs.tokens,
          ref.bos_only_256.generated_ids.map((id) => `token_id:${id}`),
        );
        assertStringIncludes(json.choices[0].text, ref.bos_only_256.text.slice(0, 100));
      });

      await t.step(
        "streaming through the openai client gives the same text and usage",
        async () => {
          const stream = await client.completions.create({
            prompt: ref.prompt_run.prompt,
            model: "stories260K.gguf",
            max_tokens: 20,
            temperature: 0,
            stream: true,
            stream_options: { include_usage: true },
          });
          let text = "";
          let chunks = 0;
          let finish: string | null = null;
          let usage: OpenAI.CompletionUsage | null | undefined = null;
          for await (const chunk of stream) {
            chunks++;
            if (chunk.choices.length > 0) {
              text += chunk.choices[0].text;
              finish = chunk.choices[0].finish_reason ?? finish;
            }
            if (chunk.usage) usage = chunk.usage;
          }
          assertEquals(text, ref.prompt_run.generated_text);
          assertGreater(chunks, 10, "text arrives token by token");
          assertEquals(finish, "length");
          assertEquals(usage?.completion_tokens, 20);
          assertEquals(usage?.prompt_tokens, 5);
        },
      );

      await t.step("a raw SSE stream is data: lines ending with data: [DONE]", async () => {
        const res = await fetch(`${server.url}/v1/completions`, {
          method: "POST",
          body: JSON.stringify({ prompt: [1, 403], max_tokens: 5, temperature: 0, stream: true }),
        });
        assertEquals(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
        const data = await sseData(res);
        assertEquals(data[data.length - 1], "[DONE]");
        const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
        assertEquals(chunks[chunks.length - 1].choices[0].finish_reason, "length");
        assert(chunks.every((c) => c.object === "text_completion"));
      });

      await t.step("concurrent requests are batched and each matches its solo run", async () => {
        const solo = async (prompt: number[]) =>
          (await post(server, "/v1/completions", {
            prompt,
            max_tokens: 30,
            temperature: 0,
            return_token_ids: true,
          })).json.choices[0].token_ids as number[];
        const prompts = [[1], [1, 403, 407], [1, 403, 407, 261, 378], [1, 600 % 512]];
        const alone: number[][] = [];
        for (const p of prompts) alone.push(await solo(p));
        const steps0 = server.state.llm!.scheduler.stats.decodeSteps;
        const together = await Promise.all(prompts.map(solo));
        assertEquals(together, alone);
        const steps = server.state.llm!.scheduler.stats.decodeSteps - steps0;
        assertLess(steps, 4 * 29, "some decode steps carried several requests");
      });

      await t.step("seeded sampling is reproducible; stop strings end the text", async () => {
        const body = { prompt: "Once upon a time", max_tokens: 30, temperature: 1, seed: 42 };
        const a = await post(server, "/v1/completions", body);
        const b = await post(server, "/v1/completions", body);
        assertEquals(a.json.choices[0].text, b.json.choices[0].text);
        const stopped = await post(server, "/v1/completions", {
          prompt: "Once upon a time",
          max_tokens: 20,
          temperature: 0,
          stop: [" Lily", "zzz"],
        });
        assertEquals(stopped.json.choices[0].text, ", there was a little girl named");
        assertEquals(stopped.json.choices[0].finish_reason, "stop");
      });

      await t.step(
        "a client that disconnects mid-stream stops generation within a step",
        async () => {
          const scheduler = server.state.llm!.scheduler;
          const maxTokens = server.state.llm!.info.maxModelLen - 1;
          const ctl = new AbortController();
          const res = await fetch(`${server.url}/v1/completions`, {
            method: "POST",
            body: JSON.stringify({
              prompt: [1],
              max_tokens: maxTokens,
              temperature: 0,
              stream: true,
            }),
            signal: ctl.signal,
          });
          const id = res.headers.get("x-request-id")!;
          const reader = res.body!.getReader();
          await reader.read();
          await reader.read();
          ctl.abort();
          await reader.cancel().catch(() => {});
          let summary = scheduler.finished(id);
          for (let i = 0; i < 500 && !summary; i++) {
            await new Promise((r) => setTimeout(r, 10));
            summary = scheduler.finished(id);
          }
          assert(summary, "the request finished");
          assertEquals(summary.reason, "abort");
          assertLessOrEqual(summary.finishedAtStep - summary.abortRequestedAtStep!, 1);
          assertLess(summary.completionTokens, maxTokens);
          assertEquals(scheduler.stats.running + scheduler.stats.waiting, 0);
        },
      );

      await t.step("/tokenize and /detokenize round-trip in vLLM's shapes", async () => {
        const tok = await post(server, "/tokenize", { prompt: "Once upon a time" });
        assertEquals(tok.status, 200);
        assertEquals(tok.json, {
          tokens: [1, 403, 407, 261, 378],
          count: 5,
          max_model_len: server.state.llm!.info.maxModelLen,
        });
        const plain = await post(server, "/tokenize", {
          prompt: "Once upon a time",
          add_special_tokens: false,
        });
        assertEquals(plain.json.tokens, [403, 407, 261, 378]);
        const detok = await post(server, "/detokenize", { tokens: tok.json.tokens });
        assertEquals(detok.json, { prompt: "Once upon a time" });
        const bad = await post(server, "/detokenize", { tokens: [1, 512] });
        assertEquals(bad.status, 400);
        assertEquals(bad.json.error.param, "tokens");
      });

      await t.step(
        "every bad input gets its 4xx naming the parameter, and serving goes on",
        async () => {
          const maxLen = server.state.llm!.info.maxModelLen;
          const cases: [string, unknown, number, string | null, string?][] = [
            ["/v1/completions", "{not json", 400, null],
            ["/v1/completions", "", 400, null],
            ["/v1/completions", "[1]", 400, null],
            ["/v1/completions", {}, 400, "prompt"],
            ["/v1/completions", { prompt: 5 }, 400, "prompt"],
            ["/v1/completions", { prompt: "" }, 400, "prompt"],
            ["/v1/completions", { prompt: [] }, 400, "prompt"],
            ["/v1/completions", { prompt: [1, 2.5] }, 400, "prompt"],
            ["/v1/completions", { prompt: [1, 512] }, 400, "prompt"],
            ["/v1/completions", { prompt: [-1] }, 400, "prompt"],
            ["/v1/completions", { prompt: ["a", "b"] }, 400, "prompt"],
            ["/v1/completions", { prompt: "x", temperature: -0.1 }, 400, "temperature"],
            ["/v1/completions", { prompt: "x", temperature: 2.5 }, 400, "temperature"],
            ["/v1/completions", { prompt: "x", temperature: "hot" }, 400, "temperature"],
            ["/v1/completions", { prompt: "x", top_p: 0 }, 400, "top_p"],
            ["/v1/completions", { prompt: "x", top_p: 1.5 }, 400, "top_p"],
            ["/v1/completions", { prompt: "x", top_k: 1.5 }, 400, "top_k"],
            ["/v1/completions", { prompt: "x", max_tokens: 0 }, 400, "max_tokens"],
            ["/v1/completions", { prompt: "x", max_tokens: 2.5 }, 400, "max_tokens"],
            ["/v1/completions", { prompt: "x", max_tokens: "10" }, 400, "max_tokens"],
            ["/v1/completions", { prompt: "x", seed: 1.5 }, 400, "seed"],
            ["/v1/completions", { prompt: "x", stop: 5 }, 400, "stop"],
            ["/v1/completions", { prompt: "x", logprobs: 21 }, 400, "logprobs"],
            ["/v1/completions", { prompt: "x", n: 2 }, 400, "n"],
            ["/v1/completions", { prompt: "x", echo: true }, 400, "echo"],
            ["/v1/completions", { prompt: "x", stream: "yes" }, 400, "stream"],
            ["/v1/completions", { prompt: "x", stream_options: {} }, 400, "stream_options"],
            [
              "/v1/completions",
              { prompt: "x", attention: { method: "bogus" } },
              400,
              "attention.method",
            ],
            [
              "/v1/completions",
              { prompt: "x", attention: { method: "magicpig", K: 99 } },
              400,
              "attention.K",
            ],
            ["/v1/completions", { prompt: "x", model: "gpt-4" }, 404, "model", "model_not_found"],
            [
              "/v1/completions",
              { prompt: new Array(maxLen + 1).fill(1) },
              400,
              "prompt",
              "context_length_exceeded",
            ],
            [
              "/v1/completions",
              { prompt: [1, 403, 407, 261, 378], max_tokens: maxLen - 4 },
              400,
              "max_tokens",
              "context_length_exceeded",
            ],
            ["/v1/chat/completions", {}, 400, "messages"],
            ["/v1/chat/completions", { messages: [] }, 400, "messages"],
            [
              "/v1/chat/completions",
              { messages: [{ role: "robot", content: "hi" }] },
              400,
              "messages[0].role",
            ],
            [
              "/v1/chat/completions",
              { messages: [{ role: "user", content: 5 }] },
              400,
              "messages[0].content",
            ],
            // stories260K has no chat template.
            [
              "/v1/chat/completions",
              { messages: [{ role: "user", content: "hi" }] },
              400,
              "messages",
              "no_chat_template",
            ],
            ["/tokenize", {}, 400, "prompt"],
            ["/detokenize", { tokens: "abc" }, 400, "tokens"],
            ["/v1/completions", { prompt: "x".repeat(70 * 1024) }, 413, null, "request_too_large"],
          ];
          for (const [path, body, status, param, code] of cases) {
            const res = await post(server, path, body);
            const what = `${path} ${JSON.stringify(body).slice(0, 80)}`;
            assertEquals(res.status, status, `${what}: ${JSON.stringify(res.json)}`);
            const e = res.json.error;
            assert(typeof e?.message === "string" && e.message.length > 0, what);
            assert("type" in e && "param" in e && "code" in e, what);
            assertEquals(e.param, param, `${what}: ${e.message}`);
            if (code) assertEquals(e.code, code, what);
          }
          let res = await fetch(`${server.url}/v1/nothing`);
          assertEquals(res.status, 404);
          await res.body?.cancel();
          res = await fetch(`${server.url}/v1/completions`);
          assertEquals(res.status, 405);
          await res.body?.cancel();
          // Still serving.
          const ok = await post(server, "/v1/completions", { prompt: [1], max_tokens: 3 });
          assertEquals(ok.status, 200);
        },
      );

      await t.step("a Cancel-After deadline ends a request with 504", async () => {
        const res = await post(
          server,
          "/v1/completions",
          { prompt: [1], max_tokens: 1000, temperature: 0 },
          { "cancel-after": "5ms" },
        );
        assertEquals(res.status, 504);
        assertEquals(res.json.error.code, "deadline_exceeded");
        const bad = await post(server, "/v1/completions", { prompt: [1] }, {
          "cancel-after": "soon",
        });
        assertEquals(bad.status, 400);
        assertEquals(bad.json.error.param, "Cancel-After");
      });

      await t.step("usage reports the attention method and keys fraction", async () => {
        const { json } = await post(server, "/v1/completions", {
          prompt: [1, 403],
          max_tokens: 4,
          attention: { method: "dense" },
        });
        assertEquals(json.usage.attention, { method: "dense", keys_fraction: 1 });
        assertEquals(json.usage.prompt_tokens_details, { cached_tokens: 0 });
      });
    } finally {
      release();
      await server.shutdown();
    }
    assertEquals((await fetch(`${server.url}/health`).catch(() => null))?.status ?? 0, 0);
  },
});

Deno.test({
  name: "startServer() serves token ids for a model without a tokenizer",
  ignore: skip !== null,
  async fn() {
    const ref = reference!;
    const server = await startServer({
      port: 0,
      host: "127.0.0.1",
      log: silent,
      open: async () => {
        const model = await loadModel({ path: gguf, threads: 2 });
        const bare = Object.assign(Object.create(Object.getPrototypeOf(model)), model, {
          tokenizer: null,
          chatTemplate: null,
        });
        return new LLM(bare, nativeBackend(model.engine));
      },
    });
    try {
      await server.ready;
      const text = await post(server, "/v1/completions", { prompt: "Once upon a time" });
      assertEquals(text.status, 400);
      assertEquals(text.json.error.param, "prompt");
      assertEquals(text.json.error.code, "no_tokenizer");
      const ids = await post(server, "/v1/completions", {
        prompt: ref.prompt_run.prompt_ids,
        max_tokens: 20,
        temperature: 0,
      });
      assertEquals(ids.status, 200);
      assertEquals(ids.json.choices[0].token_ids, ref.prompt_run.generated_ids);
      assertEquals(ids.json.choices[0].text, "");
      const tok = await post(server, "/tokenize", { prompt: "Once" });
      assertEquals(tok.status, 400);
      const stop = await post(server, "/v1/completions", { prompt: [1], stop: ["x"] });
      assertEquals(stop.status, 400);
      assertEquals(stop.json.error.param, "stop");
    } finally {
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "startServer() serves chat completions with the demo model's template",
  async fn() {
    const server = await startServer({
      port: 0,
      host: "127.0.0.1",
      log: silent,
      open: (log) => openLLM({ threads: 2 }, log),
    });
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    try {
      const llm = await server.ready;
      assertEquals(llm.info.id, "magicpig-demo");
      const messages = [
        { role: "system" as const, content: "You are terse." },
        { role: "user" as const, content: "Say hello." },
      ];
      const res = await client.chat.completions.create({
        model: "magicpig-demo",
        messages,
        max_completion_tokens: 8,
        temperature: 0,
        logprobs: true,
        top_logprobs: 2,
      });
      assertEquals(res.object, "chat.completion");
      assertEquals(res.choices[0].message.role, "assistant");
      assertEquals(typeof res.choices[0].message.content, "string");
      const content = res.choices[0].logprobs!.content!;
      assertLessOrEqual(content.length, 8);
      assert(content.every((c) => c.top_logprobs.length === 2 && Array.isArray(c.bytes)));
      // The prompt is the template's rendering: /tokenize with the same messages agrees.
      const tok = await post(server, "/tokenize", { messages });
      assertEquals(res.usage?.prompt_tokens, tok.json.count);
      assertEquals(tok.json.tokens[0], 128000, "the rendering starts with <|begin_of_text|>");

      // Streaming: role first, then content deltas, finish, usage, [DONE].
      const stream = await client.chat.completions.create({
        model: "magicpig-demo",
        messages,
        max_tokens: 8,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      });
      let text = "";
      let role: string | undefined;
      let usage: OpenAI.CompletionUsage | null | undefined;
      for await (const chunk of stream) {
        assertEquals(chunk.object, "chat.completion.chunk");
        if (chunk.choices[0]?.delta.role) role = chunk.choices[0].delta.role;
        text += chunk.choices[0]?.delta.content ?? "";
        if (chunk.usage) usage = chunk.usage;
      }
      assertEquals(role, "assistant");
      assertEquals(text, res.choices[0].message.content);
      assertEquals(usage?.completion_tokens, res.usage?.completion_tokens);
    } finally {
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "main.ts serves, logs its startup phases, and exits 0 on SIGTERM",
  ignore: skip !== null,
  async fn() {
    const deno = Deno.execPath();
    const child = new Deno.Command(deno, {
      args: [
        "run",
        "--allow-all",
        "--unstable-worker-options",
        "--unstable-no-legacy-abort",
        new URL("../main.ts", import.meta.url).pathname,
        "--model",
        gguf,
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--threads",
        "2",
      ],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const lines: Record<string, unknown>[] = [];
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    const next = async (msg: string): Promise<Record<string, unknown>> => {
      for (;;) {
        const found = lines.find((l) => l.msg === msg);
        if (found) return found;
        const { value, done } = await reader.read();
        if (done) throw new Error(`main.ts ended before logging "${msg}"`);
        buffer += value;
        const parts = buffer.split("\n");
        buffer = parts.pop()!;
        for (const p of parts) if (p.trim()) lines.push(JSON.parse(p));
      }
    };
    try {
      const listening = await next("listening");
      const url = listening.url as string;
      await next("ready");
      const loaded = lines.find((l) => l.msg === "model loaded")!;
      assert(loaded, "a startup line with phase timings");
      const phases = loaded.phases as Record<string, number>;
      for (const p of ["weights", "tokenizer", "warm_up"]) {
        assert(typeof phases[p] === "number", `phase "${p}" is timed: ${JSON.stringify(phases)}`);
      }
      const res = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "x-request-id": "sub-1" },
        body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 5, temperature: 0 }),
      });
      assertEquals((await res.json()).choices[0].text, ", there was a little");
      const logged = await next("request");
      assertEquals(logged.request_id, "sub-1");
      child.kill("SIGTERM");
      await next("stopped");
    } finally {
      const status = await child.status;
      await reader.cancel().catch(() => {});
      const err = new TextDecoder().decode(await new Response(child.stderr).arrayBuffer());
      assertEquals(status.code, 0, `exit status; stderr: ${err}`);
    }
  },
});

Deno.test({
  name: "Server.shutdown() ends running streams, frees their sessions and stops listening",
  ignore: skip !== null,
  async fn() {
    const server = await startServer({
      port: 0,
      host: "127.0.0.1",
      log: silent,
      drainTimeoutMs: 20,
      open: (log) => openLLM({ model: gguf, threads: 2 }, log),
    });
    const llm = await server.ready;
    const res = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      body: JSON.stringify({ prompt: [1], max_tokens: 1500, temperature: 0, stream: true }),
    });
    const body = res.text();
    await new Promise((r) => setTimeout(r, 20));
    await server.shutdown();
    const blocks = (await body).split("\n\n").filter((b) => b);
    assertEquals(blocks[blocks.length - 1], "data: [DONE]");
    const last = JSON.parse(blocks[blocks.length - 2].slice(6));
    assertEquals(last.error?.code, "unavailable", JSON.stringify(last));
    assertStringIncludes(last.error.message, "shutting down");
    assertEquals(llm.scheduler.stats.running + llm.scheduler.stats.waiting, 0);
    assertEquals(llm.scheduler.stats.finished.abort, 1);
    assertEquals(await fetch(`${server.url}/health`).then(() => "open", () => "closed"), "closed");
  },
});
