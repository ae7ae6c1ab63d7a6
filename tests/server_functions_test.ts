/**
 * The function host wired into the real server: `startServer({functions})` serves the
 * example functions behind the API-key middleware, and `ctx.sessions` acts for the key the
 * request authenticated with.
 */
import { assert, assertEquals, assertGreater } from "./_std.ts";
import { sharedModels, skipReason } from "./_util.ts";
import { startServer } from "../server.ts";
import { Logger } from "../engine/log.ts";

const skip = skipReason("the server function-host test");

Deno.test({
  name: "startServer() serves /v1/functions with the caller's API key bound to ctx.sessions",
  ignore: skip !== null,
  async fn() {
    const server = await startServer({
      port: 0,
      host: "127.0.0.1",
      model: `${sharedModels}/stories260K/stories260K.gguf`,
      threads: 2,
      apiKeys: ["key-a", "key-b"],
      functions: new URL("../functions", import.meta.url).pathname,
      log: new Logger({ level: "silent" }),
    });
    try {
      await server.ready;
      const call = (name: string, key: string | null, body: unknown) =>
        fetch(`${server.url}/v1/functions/${name}`, {
          method: "POST",
          headers: {
            "content-type": "application/json",
            ...(key ? { authorization: `Bearer ${key}` } : {}),
          },
          body: JSON.stringify(body),
        });

      const anonymous = await call("summarize", null, { document: "Lily" });
      assertEquals(anonymous.status, 401);
      await anonymous.body?.cancel();

      const listed = await fetch(`${server.url}/v1/functions`, {
        headers: { authorization: "Bearer key-a" },
      }).then((r) => r.json());
      const names = (listed.data as { id: string }[]).map((f) => f.id).sort();
      assert(names.includes("ask") && names.includes("summarize"), JSON.stringify(names));

      const pinned = await call("summarize", "key-a", {
        document: "Once upon a time, there was a little girl named Lily. She loved to play.",
        max_tokens: 8,
      }).then((r) => r.json());
      const id = pinned.session_id as string;
      assertGreater(pinned.tokens, 10);

      // The session is key A's: visible over /v1/sessions for A, 404 for B.
      const mine = await fetch(`${server.url}/v1/sessions/${id}`, {
        headers: { authorization: "Bearer key-a" },
      });
      assertEquals(mine.status, 200);
      await mine.body?.cancel();
      const theirs = await call("ask", "key-b", { session_id: id, question: "Who?" });
      assertEquals(theirs.status, 404);
      await theirs.body?.cancel();

      // Streaming answer through the function, for the owner.
      const res = await call("ask", "key-a", { session_id: id, question: "Who?", max_tokens: 6 });
      assertEquals(res.status, 200);
      assertEquals(res.headers.get("content-type"), "text/event-stream");
      const text = await res.text();
      const events = text.split("\n\n").filter((e) => e.startsWith("data: "));
      assertEquals(events.at(-1), "data: [DONE]");
      assert(events.some((e) => e.includes('"text"')), text);
      assert(events.some((e) => e.includes('"finish_reason"')), text);
    } finally {
      await server.shutdown();
    }
  },
});
