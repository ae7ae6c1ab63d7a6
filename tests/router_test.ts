/**
 * The router and middleware on a real `Deno.serve` (port 0): JSON errors in OpenAI's
 * shape for unknown routes, wrong methods, malformed and oversized bodies; request ids.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./_std.ts";
import { Router } from "../routes/_router.ts";
import { bodyLimit, jsonBody, requestId, requestLog } from "../routes/_middleware.ts";
import { EngineError, toEngineError } from "../engine/errors.ts";
import { MagicpigError, Status } from "../ffi/native.ts";
import { HttpError, toHttpError } from "../routes/_http_error.ts";
import { Logger } from "../engine/log.ts";
import { DONE, sseResponse } from "../routes/_sse.ts";

async function withServer(router: Router, fn: (url: string) => Promise<void>): Promise<void> {
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, router.fetch);
  try {
    await fn(`http://127.0.0.1:${server.addr.port}`);
  } finally {
    await server.shutdown();
  }
}

function app(lines: string[] = []): Router {
  return new Router({ log: new Logger({ sink: (l) => lines.push(l) }) })
    .use(requestId(), requestLog(), bodyLimit({ maxBytes: 64 }))
    .get("/items/:id", (_req, ctx) => Response.json({ id: ctx.params.id }))
    .post("/echo", jsonBody(), (_req, ctx) => Response.json(ctx.body))
    .get("/engine-error", () => {
      throw new EngineError("overloaded", "Out of memory: 1 GiB more needed");
    })
    .get("/bug", () => {
      throw new TypeError("x is undefined");
    })
    .get("/teapot", () => {
      throw new HttpError(418, "I am a teapot", { param: "tea", code: "teapot" });
    })
    .get("/sse", () => {
      async function* gen() {
        yield { a: 1 };
        yield { b: "two\nlines" };
        yield DONE;
      }
      return sseResponse(gen());
    });
}

async function errorOf(res: Response) {
  assertEquals(res.headers.get("content-type"), "application/json");
  const body = await res.json();
  assert(typeof body.error?.message === "string", JSON.stringify(body));
  assert("type" in body.error && "param" in body.error && "code" in body.error);
  return body.error as { message: string; type: string; param: string | null; code: string };
}

Deno.test("Router answers unknown routes with 404 and wrong methods with 405 and Allow", async () => {
  await withServer(app(), async (url) => {
    let res = await fetch(`${url}/nope`);
    assertEquals(res.status, 404);
    assertStringIncludes((await errorOf(res)).message, `"GET /nope"`);
    res = await fetch(`${url}/echo`);
    assertEquals(res.status, 405);
    assertEquals(res.headers.get("allow"), "POST");
    assertEquals((await errorOf(res)).code, "method_not_allowed");
    res = await fetch(`${url}/items/a%20b`);
    assertEquals(await res.json(), { id: "a b" });
  });
});

Deno.test("jsonBody() answers malformed, empty and non-object bodies with 400", async () => {
  await withServer(app(), async (url) => {
    for (const body of ["{nope", "", "[1,2]", "42"]) {
      const res = await fetch(`${url}/echo`, { method: "POST", body });
      assertEquals(res.status, 400, body);
      const e = await errorOf(res);
      assertEquals(e.type, "invalid_request_error");
    }
    const ok = await fetch(`${url}/echo`, { method: "POST", body: `{"a":1}` });
    assertEquals(await ok.json(), { a: 1 });
  });
});

Deno.test("bodyLimit() answers 413 by Content-Length and for chunked bodies", async () => {
  await withServer(app(), async (url) => {
    const big = JSON.stringify({ x: "y".repeat(100) });
    let res = await fetch(`${url}/echo`, { method: "POST", body: big });
    assertEquals(res.status, 413);
    assertEquals((await errorOf(res)).code, "request_too_large");
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new TextEncoder().encode(big.slice(0, 50)));
        c.enqueue(new TextEncoder().encode(big.slice(50)));
        c.close();
      },
    });
    res = await fetch(`${url}/echo`, { method: "POST", body: stream });
    assertEquals(res.status, 413);
    await res.body?.cancel();
  });
});

Deno.test("Router maps every thrown error to OpenAI's error JSON in one place", async () => {
  const lines: string[] = [];
  await withServer(app(lines), async (url) => {
    let res = await fetch(`${url}/engine-error`);
    assertEquals(res.status, 503);
    assertEquals((await errorOf(res)).type, "server_error");
    res = await fetch(`${url}/bug`);
    assertEquals(res.status, 500);
    assertStringIncludes((await errorOf(res)).message, "x is undefined");
    res = await fetch(`${url}/teapot`);
    assertEquals(res.status, 418);
    assertEquals(await errorOf(res), {
      message: "I am a teapot",
      type: "invalid_request_error",
      param: "tea",
      code: "teapot",
    });
  });
  const logged = lines.map((l) => JSON.parse(l));
  assert(logged.some((l) => l.msg === "request" && l.status === 500 && l.path === "/bug"));
  assert(logged.every((l) => typeof l.request_id === "string"), "every line has a request id");
});

Deno.test("requestId() echoes a given X-Request-Id or makes one up", async () => {
  await withServer(app(), async (url) => {
    let res = await fetch(`${url}/items/1`, { headers: { "x-request-id": "abc-123" } });
    await res.body?.cancel();
    assertEquals(res.headers.get("x-request-id"), "abc-123");
    res = await fetch(`${url}/nope`, { headers: { "x-request-id": "bad id with spaces" } });
    await res.body?.cancel();
    assertMatch(res.headers.get("x-request-id")!, /^req-[0-9a-f-]{36}$/);
  });
});

Deno.test("sseResponse() writes data: lines and ends with [DONE]", async () => {
  await withServer(app(), async (url) => {
    const res = await fetch(`${url}/sse`);
    assertEquals(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
    assertEquals(
      await res.text(),
      `data: {"a":1}\n\ndata: {"b":"two\\nlines"}\n\ndata: [DONE]\n\n`,
    );
  });
});

Deno.test("toHttpError() maps native out-of-memory to 503, invalid arguments to 400 (500 from a decode step) and other native errors to 500", () => {
  const oom = toHttpError(toEngineError(new MagicpigError(Status.OOM, "x.cpp:1: 2 GiB"), "Decode"));
  assertEquals(oom.status, 503);
  assertStringIncludes(oom.message, "x.cpp:1: 2 GiB");
  const bug = toHttpError(
    toEngineError(new MagicpigError(Status.INTERNAL, "y.cpp:2: bad"), "Decode"),
  );
  assertEquals(bug.status, 500);
  assertEquals(bug.toJSON().error.type, "server_error");
  // invalid arguments are the caller's (400) unless the engine made them (a decode step: 500)
  const invalid = new MagicpigError(Status.INVALID, "z.cpp:3: another shape");
  assertEquals(toHttpError(toEngineError(invalid, "Prefill")).status, 400);
  const step = toHttpError(toEngineError(invalid, "Decode step failed", false));
  assertEquals(step.status, 500);
  assertEquals(step.toJSON().error.type, "server_error");
  assertEquals(toHttpError(new EngineError("conflict", "busy")).status, 409);
  assertEquals(toHttpError(new EngineError("not_found", "no session")).status, 404);
});
