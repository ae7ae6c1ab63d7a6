/**
 * API keys: {@link apiKeyAuth} checks `Authorization: Bearer <key>` on every request but
 * the public paths (`/health`), answers 401 in OpenAI's shape when the key is missing or
 * wrong, and records who the caller is (`ctx.apiKey`, and `ctx.owner`, the SHA-256 of the
 * key, which owns the sessions the request creates). With no keys configured every
 * request passes and every caller is the one anonymous owner.
 *
 * Keys are compared by their SHA-256 digests, so the comparison takes the same time
 * whatever prefix of a key a caller guesses.
 *
 * {@link loadApiKeys} gathers keys from flags, the environment and a key file.
 *
 * @example
 * ```ts
 * import { Router } from "./_router.ts";
 * import { apiKeyAuth } from "./_auth.ts";
 * const router = new Router().use(apiKeyAuth({ keys: ["sk-local-1"] }));
 * ```
 *
 * @module
 */
import { sha256Hex } from "../engine/_session_files.ts";
import { ANONYMOUS_OWNER } from "../engine/sessions.ts";
import { HttpError } from "./_http_error.ts";
import type { Middleware } from "./_router.ts";

/** Options of {@link apiKeyAuth}. */
export interface ApiKeyOptions {
  /** Accepted keys; empty: an open server. */
  keys: readonly string[];
  /** Paths served without a key (default `["/health"]`). */
  publicPaths?: readonly string[];
}

function unauthorized(message: string): HttpError {
  return new HttpError(401, message, {
    type: "invalid_request_error",
    code: "invalid_api_key",
    headers: { "www-authenticate": 'Bearer realm="magicpig"' },
  });
}

/** The key of an `Authorization: Bearer` header; null when absent or not a bearer token. */
export function bearerKey(req: Request): string | null {
  const h = req.headers.get("authorization");
  if (h === null) return null;
  const m = /^\s*Bearer\s+(\S+)\s*$/i.exec(h);
  return m ? m[1] : null;
}

/** The API key middleware over `keys` (hashed once). */
export function apiKeyAuth(options: ApiKeyOptions): Middleware {
  const open = options.keys.length === 0;
  const hashed = Promise.all(options.keys.map((k) => sha256Hex(k))).then((d) => new Set(d));
  const publicPaths = new Set(options.publicPaths ?? ["/health"]);
  return async function apiKeyAuth(req, ctx, next) {
    if (open) {
      ctx.apiKey = null;
      ctx.owner = ANONYMOUS_OWNER;
      return next();
    }
    if (publicPaths.has(ctx.url.pathname)) return next();
    const key = bearerKey(req);
    if (key === null) {
      throw unauthorized(
        'You didn\'t provide an API key: send it as "Authorization: Bearer YOUR_KEY"',
      );
    }
    const digest = await sha256Hex(key);
    if (!(await hashed).has(digest)) {
      throw unauthorized("Incorrect API key provided");
    }
    ctx.apiKey = key;
    ctx.owner = digest;
    return next();
  };
}

/**
 * Every key from the flags (`--api-key`, repeatable; MAGICPIG_API_KEYS), and from a key
 * file (one per line; blank lines and `#` comments skipped), without duplicates.
 */
export async function loadApiKeys(
  keys: readonly string[],
  file: string | null,
): Promise<string[]> {
  const out = new Set(keys.map((k) => k.trim()).filter((k) => k.length > 0));
  if (file !== null) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (e) {
      throw new Error(
        `Cannot read the API key file "${file}": ${e instanceof Error ? e.message : String(e)}`,
      );
    }
    for (const line of text.split(/\r?\n/)) {
      const k = line.replace(/#.*$/, "").trim();
      if (k.length > 0) out.add(k);
    }
  }
  for (const k of out) {
    if (/\s/.test(k)) throw new Error("Invalid API key: keys cannot contain whitespace");
  }
  return [...out];
}
