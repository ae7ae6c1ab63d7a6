/**
 * The function host over a real server on port 0 with real permission-less workers:
 * sandboxing, limits, crashes, streaming, hot reload, caller identity.
 */
import {
  assert,
  assertEquals,
  assertGreater,
  assertMatch,
  assertRejects,
  assertStringIncludes,
} from "./_std.ts";
import { chunks, fixtures, noEngine, serveFunctions, tempFunctions } from "./_functions.ts";
import { FunctionWorker, LoadFailure } from "../engine/functions/_runner.ts";
import { EngineError } from "../engine/errors.ts";
import type { Caller, FunctionHostServices } from "../engine/functions/services.ts";
import type { SessionInfo } from "../engine/functions/types.ts";

async function json(res: Response): Promise<Record<string, unknown>> {
  return await res.json() as Record<string, unknown>;
}

async function errorOf(res: Response): Promise<{ message: string; type: string; code: string }> {
  const body = await json(res);
  return body.error as { message: string; type: string; code: string };
}

Deno.test("FunctionHost.invoke() hands the function its URL, method, headers without Authorization, body and env", async () => {
  const s = serveFunctions(fixtures);
  try {
    const res = await fetch(`${s.base}/v1/functions/echo/sub/path?x=1`, {
      method: "PUT",
      headers: { authorization: "Bearer secret-key", "x-custom": "yes" },
      body: "payload",
    });
    assertEquals(res.status, 200);
    assertEquals(res.headers.get("x-echo"), "1");
    const got = await json(res);
    assertEquals(got.name, "echo");
    assertEquals(got.method, "PUT");
    assertEquals(got.url, `${s.base}/v1/functions/echo/sub/path?x=1`);
    assertEquals(got.body, "payload");
    assertEquals(got.env, { GREETING: "hello from the manifest" });
    const headers = got.headers as Record<string, string>;
    assertEquals(headers["x-custom"], "yes");
    assertEquals(headers.authorization, undefined);
    assertMatch(String(got.requestId), /^req-/);
  } finally {
    await s.close();
  }
});

Deno.test("GET /v1/functions lists the functions with their descriptions", async () => {
  const s = serveFunctions(fixtures);
  try {
    const res = await fetch(`${s.base}/v1/functions`);
    const body = await json(res);
    const data = body.data as { name: string; description: string | null }[];
    const echo = data.find((f) => f.name === "echo");
    assertEquals(echo?.description, "Echoes its request");
    assert(!data.some((f) => f.name.startsWith("_")), "helpers are not functions");
  } finally {
    await s.close();
  }
});

Deno.test("FunctionHost.invoke() answers 404 for an unknown or malformed function name", async () => {
  const s = serveFunctions(fixtures);
  try {
    for (const path of ["nope", "..%2Fsecret", "_lib"]) {
      const res = await fetch(`${s.base}/v1/functions/${path}`);
      assertEquals(res.status, 404, path);
      const err = await errorOf(res);
      assertEquals(err.type, "not_found_error");
      assertStringIncludes(err.message, "does not exist");
    }
  } finally {
    await s.close();
  }
});

Deno.test("a function cannot read or write files, reach the network, read the environment, run programs or load libraries", async () => {
  const secretDir = await Deno.makeTempDir();
  const secret = `${secretDir}/secret.json`;
  await Deno.writeTextFile(secret, '{"secret": "do not leak"}');
  // Something to connect to, so a refusal is the sandbox and not a closed port.
  const target = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("export default 1;", { headers: { "content-type": "text/javascript" } }),
  );
  const s = serveFunctions(fixtures);
  try {
    const res = await fetch(`${s.base}/v1/functions/sandbox`, {
      method: "POST",
      body: JSON.stringify({ file: secret, port: target.addr.port }),
    });
    assertEquals(res.status, 200);
    const got = await json(res) as Record<string, string>;
    const expect: Record<string, RegExp> = {
      read: /NotCapable: Requires read access/,
      write: /NotCapable: Requires write access/,
      env: /NotCapable: Requires env access/,
      env_object: /NotCapable: Requires env access/,
      net_fetch: /NotCapable: Requires net access/,
      net_connect: /NotCapable: Requires net access/,
      net_listen: /NotCapable: Requires net access/,
      run: /NotCapable: Requires run access/,
      ffi: /NotCapable: Requires ffi access/,
      sys: /NotCapable: Requires sys access/,
      import_file: /Requires read access/,
      import_json: /Requires read access/,
      import_remote: /Requires import access/,
      permission_request: /denied/,
      exit: /Deno.exit\(\) is not available/,
    };
    for (const [k, re] of Object.entries(expect)) assertMatch(got[k], re, k);
    for (const v of Object.values(got)) assert(!v.includes("do not leak"), v);
    // Nothing was written, and the host still serves.
    await assertRejects(() => Deno.stat(`${secret}.written`), Deno.errors.NotFound);
    const echo = await fetch(`${s.base}/v1/functions/echo`);
    assertEquals(echo.status, 200);
    await echo.text();
  } finally {
    await s.close();
    await target.shutdown();
    await Deno.remove(secretDir, { recursive: true });
  }
});

Deno.test("FunctionWorker loads a function with the worker's own permissions, so a static file import is refused", async () => {
  const secretDir = await Deno.makeTempDir();
  const secret = `${secretDir}/secret.json`;
  await Deno.writeTextFile(secret, '{"secret": "do not leak"}');
  // Straight to the worker, past the host's import check: the sandbox itself must refuse.
  const src = `import s from ${JSON.stringify("file://" + secret)} with { type: "json" };\n` +
    `export default () => Response.json(s);`;
  const url = URL.createObjectURL(new Blob([src], { type: "application/typescript" }));
  const w = new FunctionWorker(url, "static_import", {}, noEngine, () => {}, 100);
  try {
    const e = await assertRejects(() => w.ready, LoadFailure);
    assertStringIncludes(e.message, "Requires read access");
    assert(!e.message.includes("do not leak"));
  } finally {
    w.terminate();
    URL.revokeObjectURL(url);
    await Deno.remove(secretDir, { recursive: true });
  }
});

Deno.test("an infinite loop is ended by the timeout (504) and the next invocation works", async () => {
  await using fns = await tempFunctions({
    "spin.ts": `export default (request: Request): Response => {
  if (new URL(request.url).searchParams.has("spin")) for (;;) Math.random();
  return new Response("ok");
};
`,
    "spin.json": `{ "timeout_ms": 300 }`,
  });
  const s = serveFunctions(fns.dir);
  try {
    const res = await fetch(`${s.base}/v1/functions/spin?spin=1`);
    assertEquals(res.status, 504);
    const err = await errorOf(res);
    assertEquals(err.type, "timeout_error");
    assertStringIncludes(err.message, `Function "spin" did not finish within 300 ms`);
    assertEquals(s.host.stats().workers, 0, "the spinning worker was terminated");
    const next = await fetch(`${s.base}/v1/functions/spin`);
    assertEquals(next.status, 200);
    assertEquals(await next.text(), "ok");
  } finally {
    await s.close();
  }
});

Deno.test("a function that loops at load time is ended by the timeout too", async () => {
  await using fns = await tempFunctions({
    "stuck.ts": `for (;;) Math.random();\nexport default () => new Response("never");\n`,
    "stuck.json": `{ "timeout_ms": 300 }`,
  });
  const s = serveFunctions(fns.dir);
  try {
    const res = await fetch(`${s.base}/v1/functions/stuck`);
    assertEquals(res.status, 504);
    await res.body?.cancel();
    assertEquals(s.host.stats().workers, 0);
  } finally {
    await s.close();
  }
});

Deno.test("a function that throws gets a 500 with its message while other functions keep serving", async () => {
  const s = serveFunctions(fixtures);
  try {
    const res = await fetch(`${s.base}/v1/functions/throws`);
    assertEquals(res.status, 500);
    const err = await errorOf(res);
    assertEquals(err.message, `Function "throws" threw: Error: boom from the function`);
    assertEquals(err.code, "function_threw");
    const logged = await s.waitForLog((r) => r.function === "throws" && r.level === "error");
    assertStringIncludes(String(logged.stack), "boom from the function");
    const bad = await fetch(`${s.base}/v1/functions/not_a_response`);
    assertEquals(bad.status, 500);
    assertStringIncludes((await errorOf(bad)).message, "must return a Response");
    const ok = await fetch(`${s.base}/v1/functions/echo`);
    assertEquals(ok.status, 200);
    await ok.text();
  } finally {
    await s.close();
  }
});

Deno.test("an unhandled rejection ends the worker with a 500 naming it; the host keeps serving", async () => {
  const s = serveFunctions(fixtures);
  try {
    const res = await fetch(`${s.base}/v1/functions/rejects`);
    assertEquals(res.status, 500);
    const err = await errorOf(res);
    assertEquals(err.message, `Function "rejects" crashed: Unhandled rejection: Error: late boom`);
    const again = await fetch(`${s.base}/v1/functions/rejects`);
    assertEquals(again.status, 500, "a fresh worker serves the next invocation");
    await again.body?.cancel();
    const ok = await fetch(`${s.base}/v1/functions/echo`);
    assertEquals(ok.status, 200);
    await ok.text();
    assertEquals(s.host.stats().workers, 1, "only echo's worker is left");
  } finally {
    await s.close();
  }
});

Deno.test("a function that fails to load answers 500 naming the error", async () => {
  await using fns = await tempFunctions({
    "syntax.ts": `export default function ( {\n`,
    "nodefault.ts": `export const x = 1;\n`,
    "toplevel.ts": `throw new Error("cannot start");\nexport default () => new Response("x");\n`,
    "badmanifest.ts": `export default () => new Response("x");\n`,
    "badmanifest.json": `{ "timeout_ms": -5 }`,
    "unknownfield.ts": `export default () => new Response("x");\n`,
    "unknownfield.json": `{ "timeout": 5 }`,
    "outside.ts": `import x from "../elsewhere.ts";\nexport default () => new Response(x);\n`,
    "npm.ts": `import { z } from "npm:zod";\nexport default () => new Response(typeof z);\n`,
    "missing.ts": `import { y } from "./_lib/none.ts";\nexport default () => new Response(y);\n`,
  });
  const s = serveFunctions(fns.dir);
  try {
    const cases: Record<string, RegExp> = {
      syntax: /failed to load: .*(SyntaxError|Expected|Unexpected)/,
      nodefault:
        /failed to load: TypeError: The module must export a default handler function: it has no default export/,
      toplevel: /failed to load: Error: cannot start/,
      badmanifest:
        /failed to load: Manifest "badmanifest.json" field "timeout_ms" must be an integer/,
      unknownfield: /failed to load: Manifest "unknownfield.json" has an unknown field "timeout"/,
      outside:
        /failed to load: "outside.ts" imports "..\/elsewhere.ts", which is outside the functions folder/,
      npm:
        /failed to load: "npm.ts" imports "npm:zod": functions may import only files of the functions folder/,
      missing: /failed to load: "missing.ts" imports "_lib\/none.ts", which does not exist/,
    };
    for (const [name, re] of Object.entries(cases)) {
      const res = await fetch(`${s.base}/v1/functions/${name}`);
      assertEquals(res.status, 500, name);
      const err = await errorOf(res);
      assertEquals(err.code, "function_load_failed", name);
      assertMatch(err.message, re, name);
    }
    // Fixing a file is enough: the next invocation loads it.
    await fns.write("_lib/none.ts", `export const y = "found";\n`);
    const fixed = await fetch(`${s.base}/v1/functions/missing`);
    assertEquals(await fixed.text(), "found");
  } finally {
    await s.close();
  }
});

Deno.test("a streamed response reaches the client before the function finishes, and a disconnect cancels it", async () => {
  const s = serveFunctions(fixtures);
  try {
    const sse = await fetch(`${s.base}/v1/functions/stream?n=3`);
    assertEquals(sse.headers.get("content-type"), "text/event-stream");
    assertEquals(await sse.text(), "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n");

    // This one never ends on its own: its first event must arrive all the same.
    const abort = new AbortController();
    const res = await fetch(`${s.base}/v1/functions/stream?hold=1`, { signal: abort.signal });
    const it = chunks(res);
    assertEquals((await it.next()).value, "data: first\n\n");
    assertEquals(s.host.stats().running, 1);
    abort.abort();
    await it.cancel().catch(() => {});
    // The function saw its request aborted and its body cancelled.
    await s.waitForLog((r) => r.function === "stream" && r.msg === "cancelled");
    await s.waitForLog((r) => r.function === "stream" && r.msg === "body cancelled");
    await s.settled();
  } finally {
    await s.close();
  }
});

Deno.test("the payload limit answers 413 past max_body_bytes, by Content-Length or by streamed size", async () => {
  const s = serveFunctions(fixtures);
  try {
    const at = await fetch(`${s.base}/v1/functions/small`, {
      method: "POST",
      body: "x".repeat(16),
    });
    assertEquals(await at.text(), "16");
    const over = await fetch(`${s.base}/v1/functions/small`, {
      method: "POST",
      body: "x".repeat(17),
    });
    assertEquals(over.status, 413);
    assertEquals((await errorOf(over)).code, "payload_too_large");
    // No Content-Length: counted as it arrives.
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new Uint8Array(10));
        c.enqueue(new Uint8Array(10));
        c.close();
      },
    });
    const streamed = await fetch(`${s.base}/v1/functions/small`, { method: "POST", body });
    assertEquals(streamed.status, 413);
    await streamed.body?.cancel();
  } finally {
    await s.close();
  }
});

Deno.test("concurrency: one invocation runs, one waits, the next gets 429 with Retry-After", async () => {
  const s = serveFunctions(fixtures);
  try {
    const a = new AbortController();
    const first = await fetch(`${s.base}/v1/functions/hold`, { signal: a.signal });
    const firstIt = chunks(first);
    assertEquals((await firstIt.next()).value, "holding\n");

    const b = new AbortController();
    const second = fetch(`${s.base}/v1/functions/hold`, { signal: b.signal });
    const until = Date.now() + 5000;
    while (s.host.stats().waiting < 1 && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 5));
    }
    assertEquals(s.host.stats().waiting, 1);

    const third = await fetch(`${s.base}/v1/functions/hold`);
    assertEquals(third.status, 429);
    assertEquals(third.headers.get("retry-after"), "1");
    assertEquals((await errorOf(third)).code, "function_busy");

    // The first ends: the waiting one runs.
    a.abort();
    await firstIt.cancel().catch(() => {});
    const secondRes = await second;
    const secondIt = chunks(secondRes);
    assertEquals((await secondIt.next()).value, "holding\n");
    b.abort();
    await secondIt.cancel().catch(() => {});
    await s.settled();
  } finally {
    await s.close();
  }
});

Deno.test("hot reload: a changed function serves its new code at once, while an invocation in flight finishes on the old code", async () => {
  const version = (v: string) =>
    `export default (request: Request): Response => {
  if (!new URL(request.url).searchParams.has("slow")) return new Response("${v}");
  const enc = new TextEncoder();
  return new Response(new ReadableStream({
    async start(c) {
      c.enqueue(enc.encode("${v}-a "));
      await new Promise((r) => setTimeout(r, 1500));
      c.enqueue(enc.encode("${v}-b"));
      c.close();
    },
  }));
};
`;
  await using fns = await tempFunctions({ "v.ts": version("v1") });
  const s = serveFunctions(fns.dir);
  try {
    assertEquals(await (await fetch(`${s.base}/v1/functions/v`)).text(), "v1");
    const slow = await fetch(`${s.base}/v1/functions/v?slow`);
    const it = chunks(slow);
    assertEquals((await it.next()).value, "v1-a ");

    await fns.write("v.ts", version("v2"));
    assertEquals(await (await fetch(`${s.base}/v1/functions/v`)).text(), "v2");
    // The old invocation ends on the old code.
    let rest = "";
    for await (const c of it) rest += c;
    assertEquals(rest, "v1-b");
    assertEquals(s.host.stats().workers, 1, "the old version's worker ended after its invocation");

    // Same size, same second: still noticed.
    await fns.write("v.ts", version("v3"));
    assertEquals(await (await fetch(`${s.base}/v1/functions/v`)).text(), "v3");
    // A manifest change is a change too.
    await fns.write("v.json", `{ "env": { "A": "1" } }`);
    await fns.write(
      "v.ts",
      `import type { FunctionContext } from "x";\nexport default (_r: Request, ctx: FunctionContext) => new Response(ctx.env.A);\n`,
    );
    assertEquals(await (await fetch(`${s.base}/v1/functions/v`)).text(), "1");
    await fns.write("v.json", `{ "env": { "A": "2" } }`);
    assertEquals(await (await fetch(`${s.base}/v1/functions/v`)).text(), "2");

    // A new file is served without a restart; a deleted one is gone.
    await fns.write("w.ts", `export default () => new Response("new");\n`);
    assertEquals(await (await fetch(`${s.base}/v1/functions/w`)).text(), "new");
    await Deno.remove(`${fns.dir}/w.ts`);
    const gone = await fetch(`${s.base}/v1/functions/w`);
    assertEquals(gone.status, 404);
    await gone.body?.cancel();

    // A helper change reloads the function that imports it.
    await fns.write("_lib/h.ts", `export const h = "h1";\n`);
    await fns.write(
      "u.ts",
      `import { h } from "./_lib/h.ts";\nexport default () => new Response(h);\n`,
    );
    assertEquals(await (await fetch(`${s.base}/v1/functions/u`)).text(), "h1");
    await fns.write("_lib/h.ts", `export const h = "h2";\n`);
    assertEquals(await (await fetch(`${s.base}/v1/functions/u`)).text(), "h2");
  } finally {
    await s.close();
  }
});

Deno.test("a function imports helper modules and JSON of its folder by relative specifiers", async () => {
  const s = serveFunctions(fixtures);
  try {
    const res = await fetch(`${s.base}/v1/functions/uses_lib?who=tests`);
    assertEquals(await res.text(), "Hello, tests!");
  } finally {
    await s.close();
  }
});

Deno.test("ctx.log and console lines carry the function's name and the request id", async () => {
  const s = serveFunctions(fixtures);
  try {
    const res = await fetch(`${s.base}/v1/functions/logs`);
    assertEquals(await res.text(), "logged");
    const structured = await s.waitForLog((r) => r.function === "logs" && r.msg === "structured");
    assertEquals(structured.level, "warn");
    assertEquals(structured.answer, 42);
    assertMatch(String(structured.request_id), /^req-/);
    const fromConsole = await s.waitForLog((r) =>
      r.function === "logs" && r.msg.startsWith("from console")
    );
    assertEquals(fromConsole.request_id, structured.request_id);
    assertEquals(fromConsole.source, "function");
  } finally {
    await s.close();
  }
});

/**
 * Sessions keyed by API key, kept in a Map: only here to observe which key the function
 * host passes for each ctx call (the session manager's own tests cover the real store).
 */
function keyedSessions(seen: string[]): FunctionHostServices {
  const byKey = new Map<string | null, Map<string, SessionInfo>>();
  const mine = (c: Caller) => {
    seen.push(String(c.apiKey));
    let m = byKey.get(c.apiKey);
    if (!m) byKey.set(c.apiKey, m = new Map());
    return m;
  };
  const notFound = (id: string) =>
    new EngineError("not_found", `Session "${id}" does not exist`, "session_id");
  return {
    ...noEngine,
    sessions: {
      create(caller) {
        const info: SessionInfo = {
          id: `s${byKey.size}-${crypto.randomUUID()}`,
          tokens: 3,
          host_bytes: 0,
          prefill_seconds: 0,
          expires_at: 0,
        };
        mine(caller).set(info.id, info);
        return Promise.resolve(info);
      },
      get(caller, id) {
        const s = mine(caller).get(id);
        return s ? Promise.resolve(s) : Promise.reject(notFound(id));
      },
      query(_caller, id) {
        throw notFound(id);
      },
      delete(caller, id) {
        return mine(caller).delete(id) ? Promise.resolve() : Promise.reject(notFound(id));
      },
    },
  };
}

Deno.test("ctx.sessions acts for the caller's API key: another key's session is not found, and a key cannot be passed in", async () => {
  const seen: string[] = [];
  const s = serveFunctions(fixtures, keyedSessions(seen));
  const call = async (key: string, body: unknown) =>
    await json(
      await fetch(`${s.base}/v1/functions/identity`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}` },
        body: JSON.stringify(body),
      }),
    );
  try {
    const created = await call("alice", { op: "create" });
    const id = String(created.id);
    assertEquals((await call("alice", { op: "get", id })).id, id);
    const other = await call("bob", { op: "get", id });
    assertEquals(other.name, "BindingError");
    assertEquals(other.status, 404);
    assertEquals(other.type, "not_found_error");
    const smuggled = await call("bob", { op: "smuggle", key: "alice" });
    assertEquals(smuggled.status, 400);
    assertStringIncludes(String(smuggled.message), `Unknown parameter "api_key"`);
    // A raw message naming alice still acts for the caller of the request in progress.
    const forged = await call("bob", { op: "forge", key: "alice" });
    assertEquals(typeof forged.id, "string");
    assertEquals(seen, ["alice", "alice", "bob", "bob"]);
  } finally {
    await s.close();
  }
});

Deno.test("ctx.generate reports a host without a model as a BindingError the function can catch", async () => {
  await using fns = await tempFunctions({
    "gen.ts": `import type { FunctionContext, BindingErrorInfo } from "x";
export default async (_r: Request, ctx: FunctionContext) => {
  try {
    await ctx.generate({ prompt: "hi" });
    return new Response("generated");
  } catch (e) {
    const b = e as BindingErrorInfo;
    return Response.json({ name: b.name, status: b.status, message: b.message });
  }
};
`,
  });
  const s = serveFunctions(fns.dir);
  try {
    const got = await json(await fetch(`${s.base}/v1/functions/gen`));
    assertEquals(got, { name: "BindingError", status: 503, message: "No model is loaded" });
  } finally {
    await s.close();
  }
});

Deno.test("FunctionHost.close() ends every worker and refuses new invocations", async () => {
  const s = serveFunctions(fixtures);
  try {
    const res = await fetch(`${s.base}/v1/functions/echo`);
    await res.text();
    assertGreater(s.host.stats().workers, 0);
    await s.host.close();
    assertEquals(s.host.stats().workers, 0);
    const after = await fetch(`${s.base}/v1/functions/echo`);
    assertEquals(after.status, 503);
    await after.body?.cancel();
  } finally {
    await s.close();
  }
});

Deno.test("a missing functions folder serves no functions", async () => {
  const s = serveFunctions("/nonexistent/magicpig-functions");
  try {
    const list = await (await fetch(`${s.base}/v1/functions`)).json() as { data: unknown[] };
    assertEquals(list.data, []);
    const res = await fetch(`${s.base}/v1/functions/anything`, { method: "POST", body: "x" });
    assertEquals(res.status, 404);
    await res.body?.cancel();
  } finally {
    await s.close();
  }
});

Deno.test("ctx calls are capped per invocation and aborted when the invocation ends", async () => {
  let started = 0;
  let aborted = 0;
  // Generation that only ends when its signal aborts, to hold calls in flight.
  const services: FunctionHostServices = {
    ...noEngine,
    async *generate(_caller, _params, signal) {
      started++;
      await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
      aborted++;
      yield* [];
    },
  };
  await using fns = await tempFunctions({
    "many.ts": `import type { FunctionContext } from "x";
export default async (_r: Request, ctx: FunctionContext) => {
  const calls = Array.from({ length: 17 }, () => ctx.generate({ prompt: "x" }));
  return new Response(await Promise.race(calls.map((p, i) =>
    p.then(() => "ok " + i, (e) => i + " " + e.status + " " + e.message)
  )));
};
`,
  });
  const s = serveFunctions(fns.dir, services);
  try {
    const res = await fetch(`${s.base}/v1/functions/many`);
    assertEquals(
      await res.text(),
      "16 429 Too many ctx calls in flight: at most 16 per invocation",
    );
    await s.settled();
    const until = Date.now() + 5000;
    while (aborted < 16 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    assertEquals([started, aborted], [16, 16]);
  } finally {
    await s.close();
  }
});
