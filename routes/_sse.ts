/**
 * Server-sent events: a typed facade over `@std/http`'s `ServerSentEventStream` (from the
 * npm package `deno-std`, which has no types), and {@link sseResponse}, which streams an
 * async iterable of JSON values as `data: {...}` lines ending with `data: [DONE]`, the
 * framing OpenAI clients read.
 *
 * Each data line is written with one space after `data:`: SSE parsers drop exactly one
 * leading space, and line-oriented clients that look for `"data: "` work too.
 *
 * When the client goes away the body stream is cancelled, which ends the source iterator
 * (its `return()` runs), so generation stops.
 *
 * @example
 * ```ts
 * import { sseResponse } from "./_sse.ts";
 * async function* chunks() { yield { text: "hi" }; }
 * const res = sseResponse(chunks());
 * ```
 *
 * @module
 */
import { ServerSentEventStream as ServerSentEventStreamJs } from "deno-std/http/server_sent_event_stream.js";

/** One server-sent event. */
export interface ServerSentEventMessage {
  /** Ignored by clients; useful as a keep-alive. */
  comment?: string;
  event?: string;
  /** The payload; newlines become several `data:` lines. */
  data?: string;
  id?: string | number;
  /** Reconnection time in ms. */
  retry?: number;
}

/** Turns {@link ServerSentEventMessage}s into the bytes of an event stream. */
export const ServerSentEventStream: new () => TransformStream<
  ServerSentEventMessage,
  Uint8Array
> = ServerSentEventStreamJs as never;

/** The terminator OpenAI streams end with. */
export const DONE = Symbol("[DONE]");

/**
 * A `text/event-stream` response whose events are `source`'s values as JSON
 * (`data: {...}`), and `data: [DONE]` for {@link DONE}.
 */
export function sseResponse(
  source: AsyncIterable<unknown>,
  init: { headers?: HeadersInit; status?: number } = {},
): Response {
  const iterator = source[Symbol.asyncIterator]();
  const messages = new ReadableStream<ServerSentEventMessage>({
    async pull(controller) {
      try {
        const { value, done } = await iterator.next();
        if (done) {
          controller.close();
          return;
        }
        controller.enqueue({ data: " " + (value === DONE ? "[DONE]" : JSON.stringify(value)) });
      } catch (e) {
        controller.error(e);
      }
    },
    async cancel() {
      await iterator.return?.();
    },
  });
  const headers = new Headers(init.headers);
  headers.set("content-type", "text/event-stream; charset=utf-8");
  headers.set("cache-control", "no-cache");
  headers.set("x-accel-buffering", "no");
  return new Response(messages.pipeThrough(new ServerSentEventStream()), {
    status: init.status ?? 200,
    headers,
  });
}
