/**
 * Scheduler unit tests over the fake native layer in `_fake_backend.ts`: batching,
 * interleaving, stop conditions, aborts, deadlines, sessions and shutdown. The real
 * library is exercised end to end by `server_test.ts`.
 */
import { assert, assertEquals, assertGreater, assertLessOrEqual, assertThrows } from "./_std.ts";
import { FakeBackend, type FakeCall, nextToken } from "./_fake_backend.ts";
import {
  type FinishEvent,
  type RequestStream,
  Scheduler,
  type SchedulerEvent,
  type TokenEvent,
} from "../engine/scheduler.ts";
import { EngineError } from "../engine/errors.ts";

async function collect(stream: AsyncIterable<SchedulerEvent>): Promise<SchedulerEvent[]> {
  const out: SchedulerEvent[] = [];
  for await (const ev of stream) out.push(ev);
  return out;
}

function tokens(events: SchedulerEvent[]): number[] {
  return events.filter((e): e is TokenEvent => e.type === "token").map((e) => e.id);
}

function finish(events: SchedulerEvent[]): FinishEvent {
  const last = events[events.length - 1];
  assert(last?.type === "finish", "the last event is a finish event");
  return last;
}

function greedyChain(from: number, n: number, vocab = 32): number[] {
  const out: number[] = [];
  let t = from;
  for (let i = 0; i < n; i++) out.push(t = nextToken(t, vocab));
  return out;
}

/** A decode function for the toy vocabulary: token i is the letter "a" + i. */
const letters = (ids: readonly number[]) =>
  ids.map((i) => String.fromCharCode(97 + (i % 26))).join("");

Deno.test("Scheduler.submit() generates greedy tokens until max_tokens and frees the session", async () => {
  const backend = new FakeBackend();
  const scheduler = new Scheduler(backend);
  const events = await collect(scheduler.submit({ promptIds: [1, 2, 3], maxTokens: 5 }));
  assertEquals(tokens(events), greedyChain(3, 5));
  const end = finish(events);
  assertEquals(end.reason, "length");
  assertEquals(end.usage.promptTokens, 3);
  assertEquals(end.usage.completionTokens, 5);
  assertEquals(end.usage.keysFraction, 1);
  assert(backend.sessions[0].closed, "the ephemeral session was freed");
  // The prompt plus every generated token but the last went through the session.
  assertEquals(backend.sessions[0].tokens, [1, 2, 3, ...greedyChain(3, 4)]);
  await scheduler.shutdown();
});

Deno.test("Scheduler.submit() stops at an EOS id and counts it, unless ignoreEos", async () => {
  const backend = new FakeBackend();
  const chain = greedyChain(3, 6);
  const scheduler = new Scheduler(backend, { eosIds: [chain[2]] });
  const events = await collect(scheduler.submit({ promptIds: [3], maxTokens: 10 }));
  assertEquals(tokens(events), chain.slice(0, 3));
  assertEquals(finish(events).reason, "stop");
  const ignored = await collect(
    scheduler.submit({ promptIds: [3], maxTokens: 6, ignoreEos: true }),
  );
  assertEquals(tokens(ignored), chain);
  assertEquals(finish(ignored).reason, "length");
  const byStopId = await collect(
    scheduler.submit({ promptIds: [3], maxTokens: 6, ignoreEos: true, stopTokenIds: [chain[1]] }),
  );
  assertEquals(tokens(byStopId), chain.slice(0, 2));
  await scheduler.shutdown();
});

Deno.test("Scheduler.submit() ends at a stop string, holds back its prefix and leaves it out", async () => {
  const backend = new FakeBackend({ vocabSize: 26 });
  const scheduler = new Scheduler(backend, { decode: letters });
  // From token 0 the toy chain is 1, 4, 13, 14, 17, 0, 1, ... = "benor" "a" "b"...
  const chain = greedyChain(0, 8, 26);
  const text = letters(chain);
  const stop = text.slice(3, 5); // "or"
  const events = await collect(
    scheduler.submit({ promptIds: [0], maxTokens: 8, stop: [stop, "zz"] }),
  );
  const deltas = events.filter((e): e is TokenEvent => e.type === "token").map((e) => e.text);
  assertEquals(deltas.join("") + finish(events).text, text.slice(0, 3));
  // "o" could start "or": it was never emitted.
  assert(deltas.every((d) => !d.includes(stop[0])));
  assertEquals(finish(events).reason, "stop");
  assertEquals(tokens(events), chain.slice(0, 5));
  // Without a match the held-back text comes out at the end.
  const plain = await collect(scheduler.submit({ promptIds: [0], maxTokens: 4, stop: ["nz"] }));
  const all = plain.map((e) => e.type === "finish" || e.type === "token" ? e.text : "").join("");
  assertEquals(all, letters(chain.slice(0, 4)));
  await scheduler.shutdown();
});

Deno.test("Scheduler batches concurrent requests into one decode step", async () => {
  const backend = new FakeBackend({ decodeMs: 2 });
  const scheduler = new Scheduler(backend);
  const a = collect(scheduler.submit({ promptIds: [1], maxTokens: 6 }));
  const b = collect(scheduler.submit({ promptIds: [2], maxTokens: 6 }));
  const [ea, eb] = await Promise.all([a, b]);
  assertEquals(tokens(ea), greedyChain(1, 6));
  assertEquals(tokens(eb), greedyChain(2, 6));
  const batched = backend.calls.filter((c) => c.kind === "decode" && c.sessions.length === 2);
  assertGreater(batched.length, 0, "some decode steps carried both requests");
  await scheduler.shutdown();
});

Deno.test("Scheduler interleaves prefill chunks of a long prompt with decode steps", async () => {
  const backend = new FakeBackend({ prefillChunk: 4, maxContext: 256, decodeMs: 1 });
  const scheduler = new Scheduler(backend);
  const running = scheduler.submit({ promptIds: [1], maxTokens: 40 });
  const it = running[Symbol.asyncIterator]();
  // Wait until the first request streams.
  while ((await it.next()).value?.type !== "token");
  const longPrompt = Array.from({ length: 40 }, (_, i) => i % 32);
  const long = collect(scheduler.submit({ promptIds: longPrompt, maxTokens: 2 }));
  while (!(await it.next()).done);
  await long;
  const longSession = 2;
  const order = backend.calls.filter((c): c is Exclude<FakeCall, { kind: "create" }> =>
    (c.kind === "prefill" && c.session === longSession) || c.kind === "decode"
  );
  const chunks = order.filter((c) => c.kind === "prefill").length;
  assertEquals(chunks, 10, "40 prompt tokens in chunks of 4");
  for (let i = 1; i < order.length; i++) {
    if (order[i].kind === "prefill" && order[i - 1].kind === "prefill") {
      throw new Error(`two prefill chunks in a row at call ${i}: running streams stalled`);
    }
  }
  await scheduler.shutdown();
});

Deno.test("Scheduler aborts a request within one step of its signal and frees its session", async () => {
  const backend = new FakeBackend({ decodeMs: 2, maxContext: 1024 });
  const scheduler = new Scheduler(backend);
  const ac = new AbortController();
  const stream = scheduler.submit({ promptIds: [1], maxTokens: 500, signal: ac.signal });
  const events: SchedulerEvent[] = [];
  for await (const ev of stream) {
    events.push(ev);
    if (tokens(events).length === 3) ac.abort();
  }
  const end = finish(events);
  assertEquals(end.reason, "abort");
  assertLessOrEqual(tokens(events).length, 5);
  const summary = scheduler.finished(stream.id)!;
  assertEquals(summary.reason, "abort");
  assertLessOrEqual(summary.finishedAtStep - summary.abortRequestedAtStep!, 1);
  assert(backend.sessions[0].closed);
  assertEquals(scheduler.stats.finished.abort, 1);
  await scheduler.shutdown();
});

Deno.test("Scheduler aborts a request whose consumer stops iterating", async () => {
  const backend = new FakeBackend({ decodeMs: 2, maxContext: 1024 });
  const scheduler = new Scheduler(backend);
  const stream = scheduler.submit({ promptIds: [1], maxTokens: 500 });
  let n = 0;
  for await (const ev of stream) if (ev.type === "token" && ++n === 2) break;
  while (scheduler.statusOf(stream.id) !== undefined) await new Promise((r) => setTimeout(r, 1));
  assertEquals(stream.status, "finished_aborted");
  const summary = scheduler.finished(stream.id)!;
  assertLessOrEqual(summary.finishedAtStep - summary.abortRequestedAtStep!, 1);
  assertLessOrEqual(summary.completionTokens, 4);
  assert(backend.sessions[0].closed);
  await scheduler.shutdown();
});

Deno.test("Scheduler folds a short last piece of a prompt into the chunk before it", async () => {
  const backend = new FakeBackend({ prefillChunk: 8, maxContext: 256 });
  const scheduler = new Scheduler(backend);
  const sizes = async (n: number) => {
    const start = backend.calls.length;
    await collect(
      scheduler.submit({ promptIds: Array.from({ length: n }, (_, i) => i % 32), maxTokens: 1 }),
    );
    return backend.calls.slice(start).flatMap((c) => c.kind === "prefill" ? [c.n] : []);
  };
  // 41 = 5 chunks + 1: the 1-token tail (< 8 / 4) rides with the fifth chunk
  assertEquals(await sizes(41), [8, 8, 8, 8, 9]);
  // 43 = 5 chunks + 3: a tail of 3 (>= 2) is a call of its own
  assertEquals(await sizes(43), [8, 8, 8, 8, 8, 3]);
  await scheduler.shutdown();
});

Deno.test("Scheduler stops a long prefill early when its request is aborted", async () => {
  const backend = new FakeBackend({ prefillChunk: 64, prefillMsPerToken: 2, maxContext: 1024 });
  const scheduler = new Scheduler(backend);
  const ac = new AbortController();
  const stream = scheduler.submit({
    promptIds: Array.from({ length: 64 }, (_, i) => i % 32),
    maxTokens: 4,
    signal: ac.signal,
  });
  setTimeout(() => ac.abort(), 20);
  const events = await collect(stream);
  assertEquals(finish(events).reason, "abort");
  assertEquals(tokens(events), []);
  const prefill = backend.calls.find((c) => c.kind === "prefill");
  assert(prefill?.kind === "prefill" && prefill.aborted, "the native prefill saw the abort flag");
  assert(backend.sessions[0].closed);
  await scheduler.shutdown();
});

Deno.test("Scheduler finishes a request at its deadline", async () => {
  const backend = new FakeBackend({ decodeMs: 2, maxContext: 10_000 });
  const scheduler = new Scheduler(backend);
  const events = await collect(
    scheduler.submit({ promptIds: [1], maxTokens: 5000, deadline: Date.now() + 30 }),
  );
  assertEquals(finish(events).reason, "deadline");
  assertGreater(tokens(events).length, 0);
  assertLessOrEqual(tokens(events).length, 100);
  await scheduler.shutdown();
});

Deno.test("Scheduler.submit() refuses requests that can never run, naming the parameter", async () => {
  const backend = new FakeBackend({ maxContext: 16, vocabSize: 32 });
  const scheduler = new Scheduler(backend);
  const cases: [Parameters<Scheduler["submit"]>[0], string, string | null][] = [
    [{ promptIds: [], maxTokens: 1 }, "prompt", null],
    [{ promptIds: [32], maxTokens: 1 }, "prompt", null],
    [{ promptIds: [-1], maxTokens: 1 }, "prompt", null],
    [{ promptIds: new Array(17).fill(1), maxTokens: 1 }, "prompt", "context_length_exceeded"],
    [{ promptIds: new Array(10).fill(1), maxTokens: 7 }, "max_tokens", "context_length_exceeded"],
    [{ promptIds: [1], maxTokens: 1, stop: ["x"] }, "stop", null],
    [{ promptIds: [1], maxTokens: 1, sampling: { temperature: 3 } }, "temperature", null],
    [{ promptIds: [1], maxTokens: 1, sampling: { topP: 0 } }, "top_p", null],
  ];
  for (const [req, param, code] of cases) {
    const e = assertThrows(() => scheduler.submit(req), EngineError) as EngineError;
    assertEquals(e.kind, "invalid_request", e.message);
    assertEquals(e.param, param, e.message);
    assertEquals(e.code, code, e.message);
  }
  // prompt + max_tokens == context is fine, and generation stops at the limit.
  const events = await collect(
    scheduler.submit({ promptIds: new Array(10).fill(1), maxTokens: 6 }),
  );
  assertEquals(tokens(events).length, 6);
  assertEquals(backend.sessions.length, 1);
  await scheduler.shutdown();
});

Deno.test("Scheduler appends to a pinned session and leaves it open", async () => {
  const backend = new FakeBackend({ vocabSize: 32 });
  const scheduler = new Scheduler(backend);
  const session = await backend.createSession({ method: "magicpig" });
  const first = await collect(scheduler.submit({ promptIds: [1, 2], maxTokens: 3, session }));
  assertEquals(finish(first).usage.cachedTokens, 0);
  assertEquals(finish(first).usage.attention, "magicpig");
  assert(!backend.sessions[0].closed, "a pinned session stays open");
  const held = backend.sessions[0].tokens.length;
  assertEquals(held, 2 + 3 - 1);
  const second = scheduler.submit({ promptIds: [5], maxTokens: 3, session });
  // One session cannot run two requests at once.
  assertThrows(() => scheduler.submit({ promptIds: [5], maxTokens: 1, session }), EngineError);
  const events = await collect(second);
  assertEquals(finish(events).usage.cachedTokens, held);
  const f = finish(events).usage.keysFraction;
  assert(f > 0 && f < 1, `keys fraction ${f} comes from the session's counters`);
  assertEquals(tokens(events), greedyChain(5, 3));
  await scheduler.shutdown();
  assert(!backend.sessions[0].closed, "shutdown leaves pinned sessions to their owner");
});

Deno.test("Scheduler commits after the first token, and not at all for a request done by then", async () => {
  const backend = new FakeBackend({ vocabSize: 32, commitMs: 150 });
  const scheduler = new Scheduler(backend);
  // The first token does not wait for the commit; the decode steps do.
  const stream = scheduler.submit({ promptIds: [1, 2, 3], maxTokens: 3 });
  const it = stream[Symbol.asyncIterator]();
  let ev = await it.next();
  while (ev.value?.type !== "token") ev = await it.next();
  const s1 = backend.sessions[0];
  assertEquals(s1.commits, 0, "the first token came before the commit finished");
  while (!(await it.next()).done);
  const kinds = backend.calls.filter((c) =>
    c.kind === "decode" ? c.sessions.includes(s1.handle) : c.session === s1.handle
  ).map((c) => c.kind);
  assertEquals(kinds, ["create", "prefill", "commit", "decode", "decode", "close"]);
  // An ephemeral request that ends at its first token is never committed...
  const before = backend.calls.length;
  await collect(scheduler.submit({ promptIds: [4, 5], maxTokens: 1 }));
  assert(!backend.calls.slice(before).some((c) => c.kind === "commit"));
  // ...a pinned session is (its owner relies on it), and so is a prompt with no tokens.
  const pinned = await backend.createSession({ method: "magicpig" });
  await collect(scheduler.submit({ promptIds: [6], maxTokens: 1, session: pinned }));
  await collect(scheduler.submit({ promptIds: [7, 8], maxTokens: 0 }));
  const commits = backend.calls.slice(before).filter((c) => c.kind === "commit").length;
  assertEquals(commits, 2);
  assertEquals(backend.sessions.find((s) => s.handle === 3)?.commits, 1);
  await scheduler.shutdown();
});

Deno.test("Scheduler commits a prompt without generation in its last prefill call", async () => {
  const backend = new FakeBackend({ vocabSize: 32, commitMs: 20 });
  const scheduler = new Scheduler(backend);
  // A prompt of three calls (chunks of 8) and no token to generate (a pin): the commit is
  // part of the last call (one native call; on a GPU the index is built beside it).
  const prompt = Array.from({ length: 20 }, (_, i) => i + 1);
  await collect(scheduler.submit({ promptIds: prompt, maxTokens: 0 }));
  const s1 = backend.sessions[0];
  assertEquals(s1.commits, 1);
  const mine = backend.calls.filter((c) => c.kind !== "decode" && c.session === s1.handle);
  assertEquals(mine.map((c) => c.kind), [
    "create",
    "prefill",
    "prefill",
    "prefill",
    "commit",
    "close",
  ]);
  assertEquals(mine.filter((c) => c.kind === "prefill").map((c) => c.commit), [false, false, true]);
  // With tokens to generate, the last prefill call does not commit: the first token comes first.
  const before = backend.calls.length;
  await collect(scheduler.submit({ promptIds: prompt, maxTokens: 2 }));
  const later = backend.calls.slice(before);
  assert(later.every((c) => c.kind !== "prefill" || !c.commit));
  assertEquals(later.filter((c) => c.kind === "commit").length, 1);
  await scheduler.shutdown();
});

Deno.test("Scheduler: a seed makes sampling reproducible", async () => {
  const backend = new FakeBackend({ vocabSize: 32, maxContext: 128 });
  const scheduler = new Scheduler(backend);
  const run = (seed: number) =>
    collect(
      scheduler.submit({ promptIds: [1], maxTokens: 30, sampling: { temperature: 1.5, seed } }),
    ).then(tokens);
  const [a, b, c] = await Promise.all([run(7), run(7), run(8)]);
  assertEquals(a, b);
  assert(a.join() !== c.join(), "another seed gives other tokens");
  await scheduler.shutdown();
});

Deno.test("Scheduler reports a failed decode step to the requests of that batch", async () => {
  const backend = new FakeBackend({ decodeMs: 1 });
  const scheduler = new Scheduler(backend);
  const stream = scheduler.submit({ promptIds: [1], maxTokens: 10 });
  backend.failNextDecode = Object.assign(new Error("out of memory"), { code: "out_of_memory" });
  const events = await collect(stream);
  const end = finish(events);
  assertEquals(end.reason, "error");
  assertEquals(end.error?.kind, "overloaded");
  assert(backend.sessions[0].closed);
  // The scheduler keeps serving.
  const ok = await collect(scheduler.submit({ promptIds: [1], maxTokens: 2 }));
  assertEquals(finish(ok).reason, "length");
  await scheduler.shutdown();
});

Deno.test("A decode step's native 'invalid argument' ends its requests as internal errors (500), not the caller's", async () => {
  const backend = new FakeBackend({ decodeMs: 1 });
  const scheduler = new Scheduler(backend);
  const stream = scheduler.submit({ promptIds: [1], maxTokens: 10 });
  backend.failNextDecode = Object.assign(new Error("index 1 of the batch has another shape"), {
    code: "invalid_argument",
  });
  const end = finish(await collect(stream));
  assertEquals(end.reason, "error");
  assertEquals(end.error?.kind, "internal");
  assert(backend.sessions[0].closed);
  await scheduler.shutdown();
});

Deno.test("Scheduler admits at most maxBatch requests; the rest wait", async () => {
  const backend = new FakeBackend({ maxBatch: 2, decodeMs: 1 });
  const scheduler = new Scheduler(backend);
  const streams: RequestStream[] = [1, 2, 3].map((t) =>
    scheduler.submit({ promptIds: [t], maxTokens: 8 })
  );
  await new Promise((r) => setTimeout(r, 5));
  assertEquals(scheduler.stats.waiting, 1);
  const results = await Promise.all(streams.map(collect));
  results.forEach((ev, i) => assertEquals(tokens(ev), greedyChain(i + 1, 8)));
  assert(backend.calls.every((c) => c.kind !== "decode" || c.sessions.length <= 2));
  await scheduler.shutdown();
});

Deno.test("Scheduler.shutdown() aborts running requests, frees their sessions and refuses new ones", async () => {
  const backend = new FakeBackend({ decodeMs: 2, maxContext: 10_000 });
  const scheduler = new Scheduler(backend);
  const stream = collect(scheduler.submit({ promptIds: [1], maxTokens: 5000 }));
  await new Promise((r) => setTimeout(r, 20));
  await scheduler.shutdown();
  const end = finish(await stream);
  assertEquals(end.reason, "abort");
  assertEquals(end.error?.kind, "unavailable");
  assert(backend.sessions.every((s) => s.closed));
  const e = assertThrows(
    () => scheduler.submit({ promptIds: [1], maxTokens: 1 }),
    EngineError,
  ) as EngineError;
  assertEquals(e.kind, "unavailable");
});

Deno.test("Scheduler.shutdown({drain}) lets running requests finish", async () => {
  const backend = new FakeBackend({ decodeMs: 1 });
  const scheduler = new Scheduler(backend);
  const stream = collect(scheduler.submit({ promptIds: [1], maxTokens: 10 }));
  await scheduler.shutdown({ drain: true, timeoutMs: 5000 });
  assertEquals(finish(await stream).reason, "length");
  assertEquals(tokens(await stream).length, 10);
});
