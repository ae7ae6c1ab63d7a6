/**
 * Pinned sessions end to end: real servers on port 0, the real native library (CPU
 * backend), the real stories260K GGUF (exactness, lifecycle, budgets) and the generated
 * demo model (chat template; turns slow enough to overlap with other requests).
 *
 * Exactness uses greedy decoding with dense attention, where a follow-up on a session must
 * produce exactly the tokens of one fresh request over the same conversation.
 */
import OpenAI from "openai";
import {
  assert,
  assertEquals,
  assertGreater,
  assertGreaterOrEqual,
  assertLess,
  assertMatch,
  assertStringIncludes,
} from "./_std.ts";
import { sharedModels, skipReason } from "./_util.ts";
import { tempDir } from "./_tmp.ts";
import { Logger } from "../engine/log.ts";
import { openLLM, type SessionOptions } from "../engine/load.ts";
import { type Server, startServer } from "../server.ts";

const skip = skipReason("the session tests");
const gguf = `${sharedModels}/stories260K/stories260K.gguf`;
const silent = new Logger({ level: "silent" });
const KEY_A = "sk-test-alice";
const KEY_B = "sk-test-bob";
const STORY = "Once upon a time, there was a little girl named Lily. She loved to play";

interface Reply {
  status: number;
  headers: Headers;
  // deno-lint-ignore no-explicit-any
  json: any;
}

/** HTTP helpers bound to one server and one API key. */
function client(server: Server, key: string | null) {
  const headers = (extra: HeadersInit = {}): HeadersInit => ({
    "content-type": "application/json",
    ...(key ? { authorization: `Bearer ${key}` } : {}),
    ...extra,
  });
  const call = async (method: string, path: string, body?: unknown): Promise<Reply> => {
    const res = await fetch(`${server.url}${path}`, {
      method,
      headers: headers(),
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, headers: res.headers, json: text ? JSON.parse(text) : null };
  };
  return {
    headers,
    post: (path: string, body: unknown) => call("POST", path, body),
    get: (path: string) => call("GET", path),
    del: (path: string) => call("DELETE", path),
    /** Creates a session and checks the 200. */
    async create(body: Record<string, unknown>) {
      const r = await call("POST", "/v1/sessions", body);
      assertEquals(r.status, 200, JSON.stringify(r.json));
      return r.json;
    },
    /** One greedy completions turn on a session; returns the choice and usage. */
    async turn(id: string, prompt: string | number[], extra: Record<string, unknown> = {}) {
      const r = await call("POST", `/v1/sessions/${id}/completions`, {
        prompt,
        max_tokens: 12,
        temperature: 0,
        return_token_ids: true,
        ...extra,
      });
      assertEquals(r.status, 200, JSON.stringify(r.json));
      return r.json;
    },
  };
}

async function metricValue(server: Server, key: string, line: string): Promise<number> {
  const res = await fetch(`${server.url}/metrics`, {
    headers: { authorization: `Bearer ${key}` },
  });
  const text = await res.text();
  const found = text.split("\n").find((l) => l.startsWith(line + " "));
  return found ? Number(found.slice(line.length + 1)) : NaN;
}

async function stories(
  options: { keys?: string[]; sessions?: SessionOptions; prefillChunk?: number } = {},
): Promise<Server> {
  const server = await startServer({
    port: 0,
    host: "127.0.0.1",
    log: silent,
    apiKeys: options.keys ?? [KEY_A, KEY_B],
    open: (log, metrics) =>
      openLLM({
        model: gguf,
        threads: 2,
        metrics,
        prefillChunk: options.prefillChunk,
        sessions: options.sessions,
      }, log),
  });
  await server.ready;
  return server;
}

async function demo(options: { sessions?: SessionOptions } = {}): Promise<Server> {
  const server = await startServer({
    port: 0,
    host: "127.0.0.1",
    log: silent,
    apiKeys: [KEY_A, KEY_B],
    open: (log, metrics) => openLLM({ threads: 2, metrics, sessions: options.sessions }, log),
  });
  await server.ready;
  return server;
}

/**
 * Starts a long streaming turn (2000 tokens on the demo model: seconds) and reads its first
 * chunk; `stop()` disconnects.
 */
async function longTurn(server: Server, id: string) {
  const ctl = new AbortController();
  const res = await fetch(`${server.url}/v1/sessions/${id}/completions`, {
    method: "POST",
    headers: client(server, KEY_A).headers(),
    body: JSON.stringify({ prompt: " go", max_tokens: 2000, ignore_eos: true, stream: true }),
    signal: ctl.signal,
  });
  assertEquals(res.status, 200);
  const reader = res.body!.getReader();
  await reader.read();
  return {
    id: res.headers.get("x-request-id")!,
    reader,
    async stop() {
      ctl.abort();
      await reader.cancel().catch(() => {});
    },
  };
}

/** Reads an SSE body into parsed `data:` payloads ("[DONE]" kept as a string). */
async function sseEvents(res: Response): Promise<unknown[]> {
  const text = await res.text();
  return text.split("\n\n").filter((b) => b.length > 0).map((block) => {
    assert(block.startsWith("data: "), `an SSE block starts with "data: ": ${block}`);
    const data = block.slice(6);
    return data === "[DONE]" ? data : JSON.parse(data);
  });
}

Deno.test({
  name:
    "session turns equal one fresh request over the same conversation, and report cached tokens",
  ignore: skip !== null,
  async fn() {
    const server = await stories();
    const a = client(server, KEY_A);
    try {
      const s = await a.create({ prompt: STORY, attention: { method: "dense" } });
      assertEquals(s.object, "session");
      assertMatch(s.id, /^sess_[0-9a-f]{32}$/);
      const prompt = (await a.post("/tokenize", { prompt: STORY })).json.tokens as number[];
      assertEquals(s.tokens, prompt.length);
      assertGreater(s.host_bytes, 0);
      assertEquals(s.attention, { method: "dense" });

      const t1 = await a.turn(s.id, " One day");
      const p1 = t1.choices[0].prompt_token_ids as number[];
      const a1 = t1.choices[0].token_ids as number[];
      assertEquals(a1.length, 12);
      assertEquals(t1.usage.prompt_tokens_details.cached_tokens, prompt.length);
      assertEquals(t1.usage.prompt_tokens, p1.length);
      assertEquals(p1[0] === 1, false, "a follow-up's text is appended without BOS");

      const t2 = await a.turn(s.id, " Her mom said");
      const p2 = t2.choices[0].prompt_token_ids as number[];
      const a2 = t2.choices[0].token_ids as number[];
      const history = [...prompt, ...p1, ...a1];
      assertEquals(t2.usage.prompt_tokens_details.cached_tokens, history.length);
      assertEquals(
        (await a.get(`/v1/sessions/${s.id}`)).json.tokens,
        history.length + p2.length + 12,
      );

      const fresh = await a.post("/v1/completions", {
        prompt: [...history, ...p2],
        max_tokens: 12,
        temperature: 0,
        return_token_ids: true,
        attention: { method: "dense" },
      });
      assertEquals(fresh.status, 200);
      assertEquals(fresh.json.choices[0].token_ids, a2, "the session's answer is the fresh one");
      assertEquals(fresh.json.usage.prompt_tokens_details.cached_tokens, 0);
      assertEquals(t2.choices[0].text, fresh.json.choices[0].text);
      assertGreater(
        await metricValue(server, KEY_A, 'magicpig:cached_tokens_total{cache_source="session"}'),
        history.length,
      );
    } finally {
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "a fork turn leaves the session unchanged: the same greedy answer twice, then kept once",
  ignore: skip !== null,
  async fn() {
    const server = await stories();
    const a = client(server, KEY_A);
    try {
      const s = await a.create({ prompt: STORY, attention: "dense" });
      const f1 = await a.turn(s.id, " Then", { fork: true });
      const f2 = await a.post("/v1/completions", {
        session_id: s.id,
        prompt: " Then",
        max_tokens: 12,
        temperature: 0,
        return_token_ids: true,
        fork: true,
      });
      assertEquals(f2.status, 200);
      assertEquals(f2.json.choices[0].token_ids, f1.choices[0].token_ids);
      assertEquals(f2.json.usage.prompt_tokens_details.cached_tokens, s.tokens);
      let info = (await a.get(`/v1/sessions/${s.id}`)).json;
      assertEquals(info.tokens, s.tokens, "forks add nothing");
      assertEquals(info.turns, 0);
      const kept = await a.turn(s.id, " Then");
      assertEquals(kept.choices[0].token_ids, f1.choices[0].token_ids);
      info = (await a.get(`/v1/sessions/${s.id}`)).json;
      assertEquals(info.tokens, s.tokens + kept.choices[0].prompt_token_ids.length + 12);
      assertEquals(info.turns, 1);
      // After the kept turn the same question sees more context: the cache moved on.
      const after = await a.turn(s.id, " Then", { fork: true });
      assertEquals(after.usage.prompt_tokens_details.cached_tokens, info.tokens);
      assertEquals(
        await metricValue(server, KEY_A, 'magicpig:session_turns_total{outcome="fork"}'),
        3,
      );
    } finally {
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "a MagicPIG session's fork turn longer than its local window rolls back exactly",
  ignore: skip !== null,
  async fn() {
    // Generated tokens beyond window + gen_buffer leave the local region during the turn;
    // truncating the turn away must still restore the session exactly.
    const server = await stories();
    const a = client(server, KEY_A);
    try {
      const s = await a.create({
        prompt: STORY,
        attention: { method: "magicpig", K: 4, L: 8, sinks: 2, window: 4, gen_buffer: 4 },
      });
      const first = await a.turn(s.id, " Then", { fork: true, max_tokens: 32 });
      const second = await a.turn(s.id, " Then", { fork: true, max_tokens: 32 });
      assertEquals(second.choices[0].token_ids, first.choices[0].token_ids);
      assertEquals((await a.get(`/v1/sessions/${s.id}`)).json.tokens, s.tokens);
      const kept = await a.turn(s.id, " Then", { max_tokens: 32 });
      assertEquals(kept.choices[0].token_ids, first.choices[0].token_ids);
      assertEquals(
        (await a.get(`/v1/sessions/${s.id}`)).json.tokens,
        s.tokens + kept.choices[0].prompt_token_ids.length + 32,
      );
    } finally {
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "turns on MagicPIG sessions with their own K and L decode together, each as alone",
  ignore: skip !== null,
  async fn() {
    // The scheduler batches the two turns' decode steps; the sessions' indexes differ in K
    // and in L, by enough to pad to different table counts (one batched sampled attention per
    // count). Before that, the whole step failed and both turns answered an error.
    const server = await stories();
    const a = client(server, KEY_A);
    try {
      const ss = [];
      for (const [K, L] of [[4, 8], [6, 40]]) {
        ss.push(
          await a.create({
            prompt: STORY,
            attention: { method: "magicpig", K, L, sinks: 2, window: 4, gen_buffer: 4 },
          }),
        );
      }
      const alone = [];
      for (const s of ss) alone.push(await a.turn(s.id, " Then", { fork: true, max_tokens: 96 }));
      const together = await Promise.all(
        ss.map((s) => a.turn(s.id, " Then", { fork: true, max_tokens: 96 })),
      );
      for (let i = 0; i < ss.length; i++) {
        assertEquals(
          together[i].choices[0].token_ids,
          alone[i].choices[0].token_ids,
          `session ${i}`,
        );
      }
    } finally {
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "the openai client reaches a session through session_id, streaming and not",
  ignore: skip !== null,
  async fn() {
    const server = await stories();
    const a = client(server, KEY_A);
    const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY_A, maxRetries: 0 });
    try {
      const s = await a.create({ prompt: STORY, attention: "dense" });
      const body = {
        model: "stories260K.gguf",
        prompt: " One day",
        max_tokens: 8,
        temperature: 0,
        session_id: s.id,
        fork: true,
      } as OpenAI.CompletionCreateParamsNonStreaming;
      const res = await openai.completions.create(body);
      const usage = res.usage as OpenAI.CompletionUsage & {
        prompt_tokens_details: { cached_tokens: number };
      };
      assertEquals(usage.prompt_tokens_details.cached_tokens, s.tokens);
      assertEquals(usage.completion_tokens, 8);

      const stream = await openai.completions.create({
        ...body,
        fork: false,
        stream: true,
        stream_options: { include_usage: true },
      } as OpenAI.CompletionCreateParamsStreaming);
      let text = "";
      let streamedUsage: OpenAI.CompletionUsage | undefined;
      for await (const chunk of stream) {
        if (chunk.choices.length > 0) text += chunk.choices[0].text;
        if (chunk.usage) streamedUsage = chunk.usage;
      }
      assertEquals(text, res.choices[0].text, "the kept turn answers like the fork did");
      assertEquals(
        (streamedUsage as typeof usage).prompt_tokens_details.cached_tokens,
        s.tokens,
      );
      const info = (await a.get(`/v1/sessions/${s.id}`)).json;
      assertEquals(info.tokens, s.tokens + usage.prompt_tokens + 8);

      // The follow-up sees the turn the stream added.
      const next = await openai.completions.create({ ...body, prompt: " Then" });
      assertEquals(
        (next.usage as typeof usage).prompt_tokens_details.cached_tokens,
        info.tokens,
      );
      // A wrong key through the client is refused the OpenAI way.
      const other = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "sk-nope", maxRetries: 0 });
      const err = await other.completions.create(body).catch((e) => e);
      assert(err instanceof OpenAI.AuthenticationError, String(err));
      // Another key does not see the session: 404 through the client too.
      const bob = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY_B, maxRetries: 0 });
      const missing = await bob.completions.create(body).catch((e) => e);
      assert(missing instanceof OpenAI.NotFoundError, String(missing));
    } finally {
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "sessions belong to their key: lifecycle, 401 without a key, 404 for another key",
  ignore: skip !== null,
  async fn() {
    const server = await stories();
    const a = client(server, KEY_A);
    const b = client(server, KEY_B);
    try {
      const noKey = await client(server, null).get("/v1/sessions");
      assertEquals(noKey.status, 401);
      assertEquals(noKey.json.error.code, "invalid_api_key");
      assertEquals(noKey.json.error.type, "invalid_request_error");
      const wrong = await client(server, "sk-wrong").post("/v1/completions", { prompt: "x" });
      assertEquals(wrong.status, 401);
      assertEquals((await fetch(`${server.url}/health`)).status, 200, "/health needs no key");
      assertEquals((await client(server, null).get("/metrics")).status, 401);

      const s1 = await a.create({ prompt: STORY, ttl_seconds: 600 });
      const s2 = await a.create({ prompt: [1, 403, 407], attention: { method: "dense" } });
      assertEquals(s1.attention.method, "magicpig", "sessions default to MagicPIG");
      assertEquals(s1.ttl_seconds, 600);
      assertLess(Math.abs(s1.expires_at - (s1.created_at + 600)), 2);
      assertEquals(s2.tokens, 3);
      const list = (await a.get("/v1/sessions")).json;
      assertEquals(list.object, "list");
      assertEquals(list.data.map((x: { id: string }) => x.id).sort(), [s1.id, s2.id].sort());
      assertEquals((await b.get("/v1/sessions")).json.data, []);

      for (
        const r of [
          await b.get(`/v1/sessions/${s1.id}`),
          await b.del(`/v1/sessions/${s1.id}`),
          await b.post(`/v1/sessions/${s1.id}/save`, {}),
          await b.post(`/v1/sessions/${s1.id}/completions`, { prompt: " x" }),
          await b.post("/v1/completions", { session_id: s1.id, prompt: " x" }),
        ]
      ) {
        assertEquals(r.status, 404, JSON.stringify(r.json));
        assertEquals(r.json.error.code, "session_not_found");
      }
      const got = (await a.get(`/v1/sessions/${s1.id}`)).json;
      assertEquals(got.id, s1.id);
      assertEquals(got.state, "host");
      assertEquals(got.busy, false);
      const save = await a.post(`/v1/sessions/${s1.id}/save`, {});
      assertEquals(save.status, 400);
      assertEquals(save.json.error.code, "session_dir_not_configured");

      const del = await a.del(`/v1/sessions/${s1.id}`);
      assertEquals(del.json, { id: s1.id, object: "session.deleted", deleted: true });
      assertEquals((await a.get(`/v1/sessions/${s1.id}`)).status, 404);
      assertEquals((await a.del(`/v1/sessions/${s1.id}`)).status, 404);
      assertEquals((await a.get("/v1/sessions")).json.data.length, 1);
      assertEquals(await metricValue(server, KEY_A, 'magicpig:sessions{state="host"}'), 1);
    } finally {
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "bad session inputs get their 4xx naming the parameter",
  ignore: skip !== null,
  async fn() {
    const server = await stories({ sessions: { maxTtlSeconds: 3600 } });
    const a = client(server, KEY_A);
    try {
      const s = await a.create({ prompt: STORY });
      const maxLen = server.state.llm!.info.maxModelLen;
      const cases: [string, unknown, number, string | null, string?][] = [
        ["/v1/sessions", {}, 400, "prompt"],
        [
          "/v1/sessions",
          { prompt: "x", messages: [{ role: "user", content: "x" }] },
          400,
          "messages",
        ],
        ["/v1/sessions", { prompt: 5 }, 400, "prompt"],
        ["/v1/sessions", { prompt: "" }, 400, "prompt"],
        ["/v1/sessions", { prompt: [] }, 400, "prompt"],
        ["/v1/sessions", { prompt: [1, 9999] }, 400, "prompt"],
        ["/v1/sessions", { prompt: "x", ttl_seconds: "long" }, 400, "ttl_seconds"],
        ["/v1/sessions", { prompt: "x", ttl_seconds: 0 }, 400, "ttl_seconds"],
        ["/v1/sessions", { prompt: "x", ttl_seconds: 3601 }, 400, "ttl_seconds"],
        ["/v1/sessions", { prompt: "x", ttl_seconds: 1.5 }, 400, "ttl_seconds"],
        ["/v1/sessions", { prompt: "x", attention: { method: "nope" } }, 400, "attention.method"],
        ["/v1/sessions", { prompt: "x", attention: { K: 99 } }, 400, "attention.K"],
        ["/v1/sessions", { prompt: "x", stream: "yes" }, 400, "stream"],
        ["/v1/sessions", { prompt: "x", model: "gpt-4" }, 404, "model", "model_not_found"],
        [
          "/v1/sessions",
          { prompt: new Array(maxLen).fill(1) },
          400,
          "prompt",
          "context_length_exceeded",
        ],
        // stories260K has no chat template.
        [
          "/v1/sessions",
          { messages: [{ role: "user", content: "hi" }] },
          400,
          "messages",
          "no_chat_template",
        ],
        [
          "/v1/sessions/sess_00000000000000000000000000000000/completions",
          { prompt: "x" },
          404,
          null,
          "session_not_found",
        ],
        ["/v1/sessions/../../etc/completions", { prompt: "x" }, 404, null],
        ["/v1/completions", { session_id: "nope", prompt: "x" }, 404, "session_id"],
        ["/v1/completions", { session_id: 5, prompt: "x" }, 400, "session_id"],
        ["/v1/completions", { prompt: "x", fork: true }, 400, "fork"],
        [`/v1/sessions/${s.id}/completions`, { prompt: "x", fork: "yes" }, 400, "fork"],
        [`/v1/sessions/${s.id}/completions`, {}, 400, "prompt"],
        [`/v1/sessions/${s.id}/completions`, { prompt: "" }, 400, "prompt"],
        [`/v1/sessions/${s.id}/completions`, { prompt: [1, -2] }, 400, "prompt"],
        [
          `/v1/sessions/${s.id}/completions`,
          { prompt: "x", attention: { method: "dense" } },
          400,
          "attention",
        ],
        [
          `/v1/sessions/${s.id}/completions`,
          { prompt: "x", max_tokens: maxLen },
          400,
          "max_tokens",
          "context_length_exceeded",
        ],
        [`/v1/sessions/${s.id}/completions`, { prompt: "x", temperature: 9 }, 400, "temperature"],
        [
          `/v1/sessions/${s.id}/chat/completions`,
          { messages: [{ role: "user", content: "hi" }] },
          400,
          "messages",
          "no_chat_template",
        ],
      ];
      for (const [path, body, status, param, code] of cases) {
        const r = await a.post(path, body);
        const what = `${path} ${JSON.stringify(body).slice(0, 80)}`;
        assertEquals(r.status, status, `${what}: ${JSON.stringify(r.json)}`);
        assertEquals(r.json.error.param, param, `${what}: ${r.json.error.message}`);
        if (code) assertEquals(r.json.error.code, code, what);
        assert(r.json.error.message.length > 0);
      }
      // Nothing above changed the session, and it still serves.
      const info = (await a.get(`/v1/sessions/${s.id}`)).json;
      assertEquals(info.tokens, s.tokens);
      assertEquals(info.turns, 0);
      await a.turn(s.id, " More");
    } finally {
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "POST /v1/sessions with stream: true sends prefill progress, then the session",
  ignore: skip !== null,
  async fn() {
    const server = await stories({ prefillChunk: 8 });
    const a = client(server, KEY_A);
    try {
      const res = await fetch(`${server.url}/v1/sessions`, {
        method: "POST",
        headers: a.headers(),
        body: JSON.stringify({ prompt: STORY, stream: true, attention: "dense" }),
      });
      assertEquals(res.status, 200);
      assertEquals(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
      const all = await sseEvents(res);
      assertEquals(all[all.length - 1], "[DONE]");
      const events = all.slice(0, -1) as Record<string, unknown>[];
      const session = events[events.length - 1];
      assertEquals(session.object, "session");
      const progress = events.slice(0, -1);
      const total = session.tokens as number;
      assertEquals(progress.length, Math.ceil(total / 8));
      assert(progress.every((p) => p.object === "session.progress" && p.tokens_total === total));
      assertEquals(
        progress.map((p) => p.tokens_done),
        progress.map((_, i) => Math.min(total, 8 * (i + 1))),
      );
      assertEquals((await a.get(`/v1/sessions/${session.id}`)).json.tokens, total);
      // A bad request still gets its status before any event.
      const bad = await fetch(`${server.url}/v1/sessions`, {
        method: "POST",
        headers: a.headers(),
        body: JSON.stringify({ prompt: [1, 99999], stream: true }),
      });
      assertEquals(bad.status, 400);
      await bad.body?.cancel();
    } finally {
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "sessions expire after their TTL and are swept",
  ignore: skip !== null,
  async fn() {
    const server = await stories({ sessions: { sweepIntervalMs: 50 } });
    const a = client(server, KEY_A);
    try {
      const short = await a.create({ prompt: STORY, ttl_seconds: 1 });
      const long = await a.create({ prompt: STORY, ttl_seconds: 60 });
      assertEquals((await a.get(`/v1/sessions/${short.id}`)).status, 200);
      await new Promise((r) => setTimeout(r, 1300));
      assertEquals((await a.get(`/v1/sessions/${short.id}`)).status, 404);
      assertEquals(
        (await a.post(`/v1/sessions/${short.id}/completions`, { prompt: "x" })).status,
        404,
      );
      assertEquals((await a.get(`/v1/sessions/${long.id}`)).status, 200);
      assertEquals(
        await metricValue(server, KEY_A, 'magicpig:session_evictions_total{reason="expired"}'),
        1,
      );
      assertEquals(server.state.llm!.sessions!.usage.host, 1);
    } finally {
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "LRU eviction under a small host budget: to disk with a session folder, dropped without",
  ignore: skip !== null,
  async fn() {
    // One session's bytes, from a probe.
    let probe = await stories();
    const sessionBytes = (await client(probe, KEY_A).create({ prompt: STORY, attention: "dense" }))
      .host_bytes;
    await probe.shutdown();

    const dir = await tempDir("sessions-lru");
    const server = await stories({
      sessions: { dir, hostMemoryBudget: Math.floor(2.5 * sessionBytes) },
    });
    const a = client(server, KEY_A);
    try {
      const s1 = await a.create({ prompt: STORY, attention: "dense" });
      const s2 = await a.create({ prompt: STORY, attention: "dense" });
      const before = await a.turn(s2.id, " Then", { fork: true });
      await a.turn(s1.id, " One day", { fork: true }); // s1 is now the most recently used
      const s3 = await a.create({ prompt: STORY, attention: "dense" });
      const state = async (id: string) => (await a.get(`/v1/sessions/${id}`)).json.state;
      assertEquals([await state(s1.id), await state(s2.id), await state(s3.id)], [
        "host",
        "disk",
        "host",
      ]);
      assertEquals((await a.get(`/v1/sessions/${s2.id}`)).json.host_bytes, 0);
      assertEquals(
        await metricValue(server, KEY_A, 'magicpig:session_evictions_total{reason="budget"}'),
        1,
      );
      assertEquals(
        await metricValue(
          server,
          KEY_A,
          'magicpig:session_snapshot_writes_total{trigger="eviction"}',
        ),
        1,
      );
      // Using s2 loads it back (evicting s1, now the least recently used) and it answers as before.
      const after = await a.turn(s2.id, " Then", { fork: true });
      assertEquals(after.choices[0].token_ids, before.choices[0].token_ids);
      assertEquals([await state(s1.id), await state(s2.id), await state(s3.id)], [
        "disk",
        "host",
        "host",
      ]);
      assertEquals(await metricValue(server, KEY_A, "magicpig:session_restores_total"), 1);
      const usage = server.state.llm!.sessions!.usage;
      assertLess(usage.hostBytes, usage.hostBudget + 1);
    } finally {
      await server.shutdown();
      await Deno.remove(dir, { recursive: true });
    }

    probe = await stories({ sessions: { hostMemoryBudget: Math.floor(1.5 * sessionBytes) } });
    const c = client(probe, KEY_A);
    try {
      const s1 = await c.create({ prompt: STORY });
      const s2 = await c.create({ prompt: STORY });
      assertEquals(
        (await c.get(`/v1/sessions/${s1.id}`)).status,
        404,
        "dropped: no session folder",
      );
      assertEquals((await c.get(`/v1/sessions/${s2.id}`)).json.state, "host");
      const tooBig = await c.post("/v1/sessions", { prompt: new Array(1900).fill(1) });
      assertEquals(tooBig.status, 400);
      assertEquals(tooBig.json.error.code, "session_too_large");
    } finally {
      await probe.shutdown();
    }
  },
});

Deno.test({
  name: "demo model: chat sessions render follow-ups as the whole conversation would",
  async fn() {
    const server = await demo();
    const a = client(server, KEY_A);
    const llm = server.state.llm!;
    try {
      const context = [
        { role: "system", content: "You answer questions about the document." },
        { role: "user", content: "Document: the cat sat on the mat. The dog slept." },
      ];
      const s = await a.create({ messages: context, attention: "dense" });
      assertEquals(s.kind, "chat");

      const q1 = { role: "user", content: "Where did the cat sit?" };
      const chat = (messages: unknown[], extra: Record<string, unknown> = {}) =>
        a.post(`/v1/sessions/${s.id}/chat/completions`, {
          messages,
          max_completion_tokens: 5,
          temperature: 0,
          return_token_ids: true,
          ...extra,
        });
      /** One fresh greedy request over `ids`: the answer a session turn must equal. */
      const fresh = async (ids: number[]) => {
        const r = await a.post("/v1/completions", {
          prompt: ids,
          max_tokens: 5,
          temperature: 0,
          return_token_ids: true,
          attention: "dense",
        });
        assertEquals(r.status, 200, JSON.stringify(r.json));
        return r.json.choices[0].token_ids as number[];
      };
      const r1 = await chat([q1]);
      assertEquals(r1.status, 200, JSON.stringify(r1.json));
      // Session + the first turn's prompt = the whole conversation rendered at once.
      const full1 = llm.renderChat([...context, q1], { addGenerationPrompt: true }).ids;
      assertEquals(r1.json.prompt_token_ids, full1.slice(s.tokens));
      assertEquals(r1.json.usage.prompt_tokens_details.cached_tokens, s.tokens);
      const reply = r1.json.choices[0].message.content as string;
      const replyIds = r1.json.choices[0].token_ids as number[];
      assertEquals(replyIds, await fresh(full1), "the session holds exactly that rendering");

      // The second turn: resending the whole conversation or only the new message is the same.
      const q2 = { role: "user", content: "And the dog?" };
      const whole = await chat([...context, q1, { role: "assistant", content: reply }, q2], {
        fork: true,
      });
      const onlyNew = await chat([q2]);
      assertEquals(whole.status, 200, JSON.stringify(whole.json));
      assertEquals(whole.json.prompt_token_ids, onlyNew.json.prompt_token_ids);
      assertEquals(whole.json.choices[0].token_ids, onlyNew.json.choices[0].token_ids);
      const history = [...full1, ...replyIds];
      assertEquals(onlyNew.json.usage.prompt_tokens_details.cached_tokens, history.length);
      assertEquals(
        onlyNew.json.choices[0].token_ids,
        await fresh([...history, ...onlyNew.json.prompt_token_ids]),
      );

      // Its text closes the assistant turn (when the model did not) and opens the next one
      // exactly as rendering the whole conversation does.
      const detok = await a.post("/detokenize", {
        tokens: onlyNew.json.prompt_token_ids,
        skip_special_tokens: false,
      });
      const rendered = llm.renderChatText(
        [...context, q1, { role: "assistant", content: reply }, q2],
        { addGenerationPrompt: true },
      );
      assert(rendered.endsWith(detok.json.prompt), `${rendered}\n---\n${detok.json.prompt}`);
      const closed = r1.json.choices[0].finish_reason === "stop";
      assertEquals(detok.json.prompt.startsWith("<|eot_id|>"), !closed);
      assertStringIncludes(detok.json.prompt, "And the dog?");

      // An empty message list asks for the assistant's turn of the conversation so far.
      const empty = await chat([], { fork: true });
      assertEquals(empty.status, 200, JSON.stringify(empty.json));
      const gen = await a.post("/detokenize", {
        tokens: empty.json.prompt_token_ids,
        skip_special_tokens: false,
      });
      assertEquals(gen.json.prompt, "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    } finally {
      await server.shutdown();
    }
  },
});

Deno.test({
  name:
    "demo model: busy sessions answer 409, deletes are deferred, disconnects roll back, budgets answer 429",
  async fn() {
    // Long turns on the demo model (milliseconds per token) overlap with other requests.
    // No headroom: a short prompt takes the cache's smallest capacity (256 rows).
    const server = await demo({ sessions: { reserveHeadroom: 0 } });
    const a = client(server, KEY_A);
    const llm = server.state.llm!;
    let budget = 0;
    try {
      const s = await a.create({ prompt: "The quick brown fox", attention: "dense" });
      budget = s.host_bytes;

      // 409 while a turn runs; the session stays listed as busy.
      let turn = await longTurn(server, s.id);
      const busy = await a.post(`/v1/sessions/${s.id}/completions`, { prompt: " x" });
      assertEquals(busy.status, 409);
      assertEquals(busy.json.error.code, "session_busy");
      assertEquals((await a.get(`/v1/sessions/${s.id}`)).json.busy, true);

      // A client that goes away: its turn is aborted within a step and rolled back, and an
      // immediate follow-up is served on the session as it was.
      await turn.stop();
      // The server learns of the disconnect when the connection closes; from then on the
      // turn ends within one step.
      let aborted = llm.scheduler.finished(turn.id);
      for (let i = 0; i < 250 && !aborted; i++) {
        await new Promise((r) => setTimeout(r, 20));
        aborted = llm.scheduler.finished(turn.id);
      }
      assertEquals(aborted?.reason, "abort");
      assertLess(aborted!.finishedAtStep - aborted!.abortRequestedAtStep!, 2);
      assertLess(aborted!.completionTokens, 2000);
      const next = await a.turn(s.id, " and", { max_tokens: 3 });
      assertEquals(next.usage.prompt_tokens_details.cached_tokens, s.tokens);
      assertEquals(
        await metricValue(server, KEY_A, 'magicpig:session_turns_total{outcome="rollback"}'),
        1,
      );

      // A delete while a turn runs: gone at once, the turn ends, the memory is freed.
      turn = await longTurn(server, s.id);
      const del = await a.del(`/v1/sessions/${s.id}`);
      assertEquals(del.status, 200);
      assertEquals((await a.get(`/v1/sessions/${s.id}`)).status, 404);
      for (let r = await turn.reader.read(); !r.done; r = await turn.reader.read()) {
        // drain: the stream ends because the turn was aborted
      }
      for (let i = 0; i < 100 && llm.sessions!.usage.host > 0; i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      assertEquals(llm.sessions!.usage.host, 0);
    } finally {
      await server.shutdown();
    }

    // 429: the budget holds one session growing through a long turn, and nothing else. A
    // short prompt takes the cache's smallest capacity (256 rows); the 2000-token turn grows
    // it by quarters to 2048 rows; another session needs 256 more.
    const perRow = budget / 256;
    const tight = await demo({
      sessions: {
        hostMemoryBudget: Math.floor(perRow * (2048 + 128)),
        retryAfterSeconds: 3,
        reserveHeadroom: 0,
      },
    });
    const c = client(tight, KEY_A);
    try {
      const s = await c.create({ prompt: "The quick brown fox", attention: "dense" });
      const turn = await longTurn(tight, s.id);
      const refused = await c.post("/v1/sessions", { prompt: "Another document" });
      assertEquals(refused.status, 429, JSON.stringify(refused.json));
      assertEquals(refused.headers.get("retry-after"), "3");
      assertEquals(refused.json.error.code, "session_budget_exhausted");
      assertEquals(refused.json.error.type, "rate_limit_error");
      await turn.stop();
      // Once the turn has unwound the session is idle and can be evicted: admitted.
      let admitted = await c.post("/v1/sessions", { prompt: "Another document" });
      for (let i = 0; i < 50 && admitted.status === 429; i++) {
        await new Promise((r) => setTimeout(r, 20));
        admitted = await c.post("/v1/sessions", { prompt: "Another document" });
      }
      assertEquals(admitted.status, 200, JSON.stringify(admitted.json));
      assertGreaterOrEqual(
        await metricValue(tight, KEY_A, "magicpig:session_admission_rejections_total"),
        1,
      );
    } finally {
      await tight.shutdown();
    }
  },
});

Deno.test({
  name: "Metrics renders counters, gauges and histograms in the Prometheus text format",
  async fn() {
    const { Metrics } = await import("../engine/metrics.ts");
    const m = new Metrics();
    const c = m.counter("magicpig:x_total", "X\nthings", ["kind"]);
    c.inc({ kind: 'a"b' });
    c.inc({ kind: 'a"b' }, 2);
    const g = m.gauge("magicpig:g", "G");
    let v = 0;
    m.collect(() => g.set(++v));
    const h = m.histogram("magicpig:h_seconds", "H", [0.1, 1]);
    h.observe(0.05);
    h.observe(0.5);
    h.observe(5);
    const text = m.render();
    assertStringIncludes(
      text,
      "# HELP magicpig:x_total X\\nthings\n# TYPE magicpig:x_total counter\n",
    );
    assertStringIncludes(text, 'magicpig:x_total{kind="a\\"b"} 3\n');
    assertStringIncludes(text, "magicpig:g 1\n");
    assertStringIncludes(text, 'magicpig:h_seconds_bucket{le="0.1"} 1\n');
    assertStringIncludes(text, 'magicpig:h_seconds_bucket{le="1"} 2\n');
    assertStringIncludes(text, 'magicpig:h_seconds_bucket{le="+Inf"} 3\n');
    assertStringIncludes(text, "magicpig:h_seconds_count 3\n");
    assertStringIncludes(m.render(), "magicpig:g 2\n");
    assertEquals(m.counter("magicpig:x_total", "again", ["kind"]), c, "registered once");
    let threw = false;
    try {
      m.gauge("magicpig:x_total", "clash");
    } catch {
      threw = true;
    }
    assert(threw, "a name keeps its type");
  },
});

Deno.test({
  name: "benchSessions() measures follow-up and re-prefill TTFT and host bytes (small, CPU)",
  ignore: skip !== null,
  async fn() {
    const { benchSessions } = await import("../bench/sessions.ts");
    const llm = await openLLM({ model: gguf, threads: 2 }, silent);
    try {
      const rows = await benchSessions(llm, llm.sessions!, {
        contexts: [64, 200],
        question: 8,
        repeats: 1,
        attention: { method: "dense" },
      });
      assertEquals(rows.map((r) => r.context), [64, 200]);
      for (const r of rows) {
        assert(r.followUpTtft > 0 && r.rePrefillTtft > 0 && r.pinSeconds > 0, JSON.stringify(r));
        assertEquals(r.kvBytesPerToken, llm.sessions!.kvBytesPerToken);
        assertGreater(r.hostBytesPerToken, r.kvBytesPerToken - 1);
        assertEquals(r.sessionsPer100GB, Math.floor(1e11 / r.hostBytes));
      }
      assertEquals(llm.sessions!.usage.host, 0, "the bench deletes its sessions");
    } finally {
      await llm.close();
    }
  },
});
