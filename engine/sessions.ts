/**
 * The session manager: long contexts pinned in host memory between requests.
 *
 * A *session* is one native session handle (its KV cache and, for MagicPIG, its LSH
 * index, in host memory) plus what the manager knows about it: the owner (a hash of the
 * API key that created it), its TTL and last use, its attention options, and for chat
 * sessions the conversation so far.
 *
 * **Create** prefills the context once (text, token ids, or chat messages) through the
 * scheduler (`maxTokens: 0`, with progress events) and commits it, so MagicPIG indexes it.
 *
 * **Query** (one turn) appends the new tokens densely and generates with the session's
 * attention policy. The scheduler runs the turn with `commit: false`; when the turn ends
 * normally the manager appends the last generated token (the scheduler leaves it out of
 * the cache) and commits, so the turn's prompt and answer join the session and its index
 * and the next turn sees the whole conversation. A turn that is aborted (client gone,
 * deadline, shutdown) or fails is rolled back with `truncate`, and a *fork* turn
 * (`fork: true`) is always rolled back: the session is left exactly as before.
 *
 * **Concurrency.** One turn at a time per session: a query on a session whose turn is
 * running answers 409 (`session_busy`) at once, rather than queueing behind a generation
 * of unknown length. A turn that is already being aborted (its client went away) is
 * waited for, so a client that disconnects and asks again is served. A delete while a
 * turn runs is *deferred*: the session disappears at once (404 from then on), its turn is
 * aborted, and its memory and files are freed when the turn has unwound.
 *
 * **Memory.** Every resident session's host bytes (KV + index, as the native session
 * reports them) count against `hostMemoryBudget`, and its device bytes against
 * `gpuMemoryBudget`. Before a create, a restore from disk or a turn that grows a session,
 * the manager estimates the bytes needed and evicts idle sessions, least recently used
 * first, until they fit: with a session folder an evicted session is written to disk and
 * stays listed (state "disk"; its next use loads it back), without one it is dropped.
 * When the budget is held by sessions whose turns are running, the request is refused
 * with `overloaded` + `retryAfterSeconds` (HTTP 429 + `Retry-After`) instead of failing
 * later; a request that could never fit is a 400 (`session_too_large`).
 *
 * **Snapshots** (`dir`): written on eviction, on {@link SessionManager.save}, and on
 * {@link SessionManager.close} (the server's SIGTERM/SIGINT flush, which runs after the
 * scheduler has stopped and before the engine is freed); restored by
 * {@link SessionManager.restore} at startup. A damaged snapshot or record is logged,
 * counted (`magicpig:session_snapshots_corrupt_total`) and moved aside (`*.corrupt`),
 * never loaded. The file format is in `_session_files.ts`.
 *
 * **Chat sessions.** The session holds exactly the tokens the model saw and produced. Its
 * prefix is the *stable* part of the conversation's rendering: `render(history)` for most
 * templates, cut before the assistant header's role for templates that add that header
 * whatever `add_generation_prompt` says (the original Llama-3 template). A follow-up's
 * messages append `render(history + new, generation prompt)` minus that prefix, preceded
 * by whatever closes the previous assistant turn and is not in the cache yet (the
 * template's `<|eot_id|>` when the answer stopped by length; nothing when the model
 * produced it), so the session's text equals rendering the whole conversation at once.
 * The closing text is found by rendering the history with a sentinel assistant message,
 * so templates that trim or wrap contents work too. Templates that rewrite earlier
 * messages when new ones arrive are refused (`template_not_incremental`). A raw
 * completions turn on a chat session ends the chat state: later chat turns render their
 * messages as a new conversation appended to the session (without a second BOS).
 *
 * @example
 * ```ts
 * import { ownerOf, SessionManager } from "./sessions.ts";
 * declare const llm: import("./llm.ts").LLM;
 * declare const store: import("./backend.ts").SessionStore;
 * const sessions = new SessionManager(llm, { store, hostMemoryBudget: 8 << 30 });
 * const owner = await ownerOf("sk-key");
 * const s = await sessions.create(owner, { text: "A long document..." });
 * const turn = await sessions.query(owner, s.id, { text: " Question?", maxTokens: 16 });
 * for await (const ev of turn) if (ev.type === "token") console.log(ev.text);
 * await sessions.close();
 * ```
 *
 * @module
 */
import { Channel } from "./_channel.ts";
import {
  RECORD_VERSION,
  SessionDir,
  sessionIdPattern,
  type SessionRecord,
  sha256Hex,
} from "./_session_files.ts";
import { type AttentionMethod, type AttentionOptions, parseAttention } from "./attention.ts";
import { type PinnedSession, type SessionStore, SnapshotError } from "./backend.ts";
import { EngineError, toEngineError } from "./errors.ts";
import type { LLM } from "./llm.ts";
import { Logger } from "./log.ts";
import { Metrics } from "./metrics.ts";
import type { ChatMessage } from "./model/types.ts";
import type {
  FinishEvent,
  RequestStatus,
  RequestStream,
  SamplingOptions,
  SchedulerEvent,
} from "./scheduler.ts";

// ------------------------------------------------------------
// public types

/** The owner of sessions created without an API key (a server with no keys). */
export const ANONYMOUS_OWNER = "anonymous";

/** The owner id of an API key: its SHA-256 (hex); {@link ANONYMOUS_OWNER} for null. */
export async function ownerOf(apiKey: string | null): Promise<string> {
  if (apiKey === null) return ANONYMOUS_OWNER;
  return await sha256Hex(apiKey);
}

/** What the manager tells about one session. */
export interface SessionInfo {
  id: string;
  /** "chat" when created from messages. */
  kind: "text" | "chat";
  /** "host": resident in host memory; "disk": evicted to the session folder. */
  state: "host" | "disk";
  /** Whether a turn (or a save/load) is running on it. */
  busy: boolean;
  /** Tokens in the session. */
  tokens: number;
  /** Host bytes held now (KV + index); 0 on disk. */
  hostBytes: number;
  /** Device bytes held now. */
  gpuBytes: number;
  /** Seconds the creating prefill took. */
  prefillSeconds: number;
  /** Unix milliseconds. */
  createdAt: number;
  lastUsedAt: number;
  expiresAt: number;
  ttlSeconds: number;
  attention: AttentionOptions;
  /** Completed (committed) turns. */
  turns: number;
  /** Unix milliseconds of the latest snapshot on disk; null when none. */
  savedAt: number | null;
}

/** Input of {@link SessionManager.create}: exactly one of `promptIds`, `text`, `messages`. */
export interface CreateSessionRequest {
  /** A request id for logs. */
  id?: string;
  promptIds?: readonly number[];
  /** Tokenized with the tokenizer's special tokens (BOS). */
  text?: string;
  /** Rendered with the chat template, without the generation prompt. */
  messages?: readonly ChatMessage[];
  /** Seconds after the last use before the session expires; the manager's default when absent. */
  ttlSeconds?: number;
  /** Attention options; default MagicPIG with the library's parameters. */
  attention?: AttentionOptions;
  /** Aborts the prefill (client gone); nothing is kept. */
  signal?: AbortSignal;
  /** Absolute deadline (ms since the epoch). */
  deadline?: number;
  /** Called after each prefill chunk. */
  onProgress?: (done: number, total: number) => void;
}

/** Input of {@link SessionManager.query}: exactly one of `promptIds`, `text`, `messages`. */
export interface SessionQuery {
  /** A request id for logs and scheduler lookups. */
  id?: string;
  promptIds?: readonly number[];
  /** Appended as is: tokenized without special tokens unless `addSpecialTokens`. */
  text?: string;
  addSpecialTokens?: boolean;
  /**
   * New chat messages (may be empty: generate the assistant's turn for the conversation so
   * far). Messages that repeat the session's whole history first are accepted and skipped,
   * so clients that resend the conversation work too.
   */
  messages?: readonly ChatMessage[];
  /** Most tokens to generate; absent: `defaultMaxTokens` capped to the context. */
  maxTokens?: number;
  /** Used when `maxTokens` is absent; null: the rest of the context. Default null. */
  defaultMaxTokens?: number | null;
  /** The parameter name errors about `maxTokens` cite (default "max_tokens"). */
  maxTokensParam?: string;
  /** Leave the session exactly as before the turn. */
  fork?: boolean;
  sampling?: SamplingOptions;
  stop?: readonly string[];
  stopTokenIds?: readonly number[];
  ignoreEos?: boolean;
  /** Aborts the turn (client gone); the session is rolled back. */
  signal?: AbortSignal;
  /** Absolute deadline (ms since the epoch). */
  deadline?: number;
}

/**
 * A running turn: the scheduler's event stream (the finish event arrives after the turn
 * has been committed or rolled back, so the session is free again by then).
 */
export interface SessionTurn extends RequestStream {
  /** The tokens appended for this turn's prompt. */
  readonly promptIds: readonly number[];
  /** Tokens already in the session (reused, not prefilled). */
  readonly cachedTokens: number;
  /** The resolved generation limit. */
  readonly maxTokens: number;
}

/** Options of {@link SessionManager}. */
export interface SessionManagerOptions {
  /** Creates and restores native sessions. */
  store: SessionStore;
  /** The snapshot folder; null/absent: no persistence (evicted sessions are dropped). */
  dir?: string | null;
  /** Host bytes all resident sessions may hold. */
  hostMemoryBudget: number;
  /** Device bytes all resident sessions may hold; null/absent: no limit. */
  gpuMemoryBudget?: number | null;
  /** TTL of sessions that name none (default 3600 s). */
  defaultTtlSeconds?: number;
  /** Largest TTL accepted (default 7 days). */
  maxTtlSeconds?: number;
  /** `Retry-After` of admission refusals (default 2 s). */
  retryAfterSeconds?: number;
  /** How often expired sessions are swept (default 1000 ms). */
  sweepIntervalMs?: number;
  /**
   * Spare tokens reserved at create beyond the prompt (default 1024), so that follow-up
   * turns append without re-allocating the cache (on a GPU backend: re-pinning it). The
   * native cache grows by a quarter when a turn outgrows it.
   */
  reserveHeadroom?: number;
  log?: Logger;
  metrics?: Metrics;
}

/** What {@link SessionManager.restore} did. */
export interface RestoreSummary {
  /** Sessions found on disk and registered. */
  restored: number;
  /** Of those, loaded into host memory now (the rest load on first use). */
  loaded: number;
  /** Damaged records or snapshots moved aside. */
  corrupt: number;
  /** Expired sessions removed. */
  expired: number;
  /** Records of another model, left in place. */
  skipped: number;
}

// ------------------------------------------------------------
// internal state

type OpKind = "create" | "turn" | "save" | "evict" | "load" | "expire" | "delete";

interface Turn {
  stream: RequestStream;
  done: Promise<void>;
  cancelled: boolean;
  signal: AbortSignal | undefined;
}

interface ChatState {
  messages: ChatMessage[];
  /** Text the canonical rendering has after the last message that is not in the cache. */
  pending: string;
}

interface Entry {
  readonly id: string;
  readonly owner: string;
  readonly kind: "text" | "chat";
  readonly attention: AttentionOptions;
  readonly createdAt: number;
  readonly prefillSeconds: number;
  ttlSeconds: number;
  lastUsedAt: number;
  /** Order of last use (LRU), from a counter: timestamps can tie. */
  useSeq: number;
  tokens: number;
  turns: number;
  chat: ChatState | null;
  session: PinnedSession | null;
  hostBytes: number;
  gpuBytes: number;
  /** Host bytes when last resident (what loading it back takes). */
  residentHostBytes: number;
  op: OpKind | null;
  opDone: Promise<void> | null;
  resolveOp: (() => void) | null;
  turn: Turn | null;
  deleted: boolean;
  /** The session changed since its snapshot (or has none). */
  dirty: boolean;
  /** Times changed since the record was written. */
  recordDirty: boolean;
  snapshot: string | null;
  savedAt: number | null;
  generation: number;
}

interface Reservation {
  host: number;
  gpu: number;
}

const SENTINEL = "\u27e6magicpig-reply-sentinel\u27e7";
const PROBE = "\u27e6magicpig-next-message\u27e7";

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function newId(): string {
  return `sess_${crypto.randomUUID().replaceAll("-", "")}`;
}

function sameMessage(a: ChatMessage, b: ChatMessage): boolean {
  return a.role === b.role && a.content === b.content && (a.name ?? null) === (b.name ?? null);
}

/**
 * A session's attention options from untyped input (the `attention` of a create request):
 * like a request's ({@link parseAttention}), but MagicPIG when no method is named.
 */
export function parseSessionAttention(value: unknown, nLayers: number): AttentionOptions {
  if (value === undefined || value === null) return { method: "magicpig" };
  if (typeof value === "object" && !Array.isArray(value) && !("method" in value)) {
    value = { ...value, method: "magicpig" };
  }
  return parseAttention(value, "attention", nLayers);
}

/** Attention options as the wire shows them (and records store them). */
export function attentionJson(a: AttentionOptions): Record<string, unknown> {
  const out: Record<string, unknown> = { method: a.method };
  if (a.lshK !== undefined) out.K = a.lshK;
  if (a.lshL !== undefined) out.L = a.lshL;
  if (a.sinks !== undefined) out.sinks = a.sinks;
  if (a.window !== undefined) out.window = a.window;
  if (a.genBuffer !== undefined) out.gen_buffer = a.genBuffer;
  if (a.budget !== undefined) out.budget = a.budget;
  if (a.pageSize !== undefined) out.page_size = a.pageSize;
  if (a.seed !== undefined) out.seed = Number(a.seed);
  if (a.denseLayers !== undefined) out.dense_layers = [...a.denseLayers];
  return out;
}

function notFound(id: string): EngineError {
  return new EngineError(
    "not_found",
    `Session "${id}" does not exist`,
    "session_id",
    "session_not_found",
  );
}

// ------------------------------------------------------------
// the manager

/** Owns every pinned session of one served model. */
export class SessionManager {
  readonly #llm: LLM;
  readonly #store: SessionStore;
  readonly #dir: SessionDir | null;
  readonly #hostBudget: number;
  readonly #gpuBudget: number | null;
  readonly #defaultTtl: number;
  readonly #maxTtl: number;
  readonly #retryAfter: number;
  readonly #headroom: number;
  readonly #log: Logger;
  readonly #entries = new Map<string, Entry>();
  readonly #reservations = new Set<Reservation>();
  readonly #tasks = new Set<Promise<unknown>>();
  /** Index bytes per KV byte, learned per attention method from real sessions. */
  readonly #indexRatio = new Map<AttentionMethod, number>();
  #gpuPerToken = 0;
  #useSeq = 0;
  #sweeper: ReturnType<typeof setInterval> | null = null;
  #closing = false;
  #closed: Promise<void> | null = null;
  readonly #m: ReturnType<typeof registerMetrics>;

  constructor(llm: LLM, options: SessionManagerOptions) {
    this.#llm = llm;
    this.#store = options.store;
    this.#dir = options.dir ? new SessionDir(options.dir) : null;
    this.#hostBudget = options.hostMemoryBudget;
    this.#gpuBudget = options.gpuMemoryBudget ?? null;
    this.#defaultTtl = options.defaultTtlSeconds ?? 3600;
    this.#maxTtl = options.maxTtlSeconds ?? 7 * 24 * 3600;
    this.#retryAfter = options.retryAfterSeconds ?? 2;
    this.#headroom = options.reserveHeadroom ?? 1024;
    this.#log = options.log ?? new Logger({ level: "silent" });
    this.#m = registerMetrics(options.metrics ?? new Metrics(), this);
    const interval = options.sweepIntervalMs ?? 1000;
    const sweeper = setInterval(() => this.#sweep(), interval);
    Deno.unrefTimer(sweeper);
    this.#sweeper = sweeper;
  }

  /** The snapshot folder, if any. */
  get dir(): string | null {
    return this.#dir?.path ?? null;
  }

  /** Host KV bytes per token of the served model (all layers, K and V). */
  get kvBytesPerToken(): number {
    return this.#store.kvBytesPerToken;
  }

  /** TTL bounds, for validation messages. */
  get ttlLimits(): { default: number; max: number } {
    return { default: this.#defaultTtl, max: this.#maxTtl };
  }

  /** Totals over live sessions (for metrics and tests). */
  get usage(): {
    host: number;
    disk: number;
    hostBytes: number;
    gpuBytes: number;
    hostBudget: number;
    gpuBudget: number | null;
  } {
    let host = 0, disk = 0, hostBytes = 0, gpuBytes = 0;
    for (const e of this.#entries.values()) {
      if (e.deleted) continue;
      if (e.session) {
        host++;
        hostBytes += e.hostBytes;
        gpuBytes += e.gpuBytes;
      } else {
        disk++;
      }
    }
    return {
      host,
      disk,
      hostBytes,
      gpuBytes,
      hostBudget: this.#hostBudget,
      gpuBudget: this.#gpuBudget,
    };
  }

  // ----------------------------------------------------------
  // public operations

  /** Pins a new context for `owner`; resolves once it is prefilled and committed. */
  async create(owner: string, req: CreateSessionRequest): Promise<SessionInfo> {
    this.#checkOpen();
    const llm = this.#llm;
    const ttlSeconds = this.#ttl(req.ttlSeconds);
    const attention = req.attention ?? { method: "magicpig" };
    let ids: number[];
    let kind: "text" | "chat" = "text";
    let chat: ChatState | null = null;
    const given = [req.promptIds, req.text, req.messages].filter((x) => x !== undefined).length;
    if (given !== 1) {
      throw new EngineError(
        "invalid_request",
        `Exactly one of "prompt" or "messages" is required, got ${given}`,
        "prompt",
      );
    }
    if (req.messages !== undefined) {
      if (req.messages.length === 0) {
        throw new EngineError("invalid_request", `Invalid "messages": it is empty`, "messages");
      }
      ids = llm.encodeChatText(this.#stablePrefix(req.messages));
      kind = "chat";
      chat = { messages: req.messages.map((m) => ({ ...m })), pending: "" };
    } else if (req.text !== undefined) {
      if (req.text.length === 0) {
        throw new EngineError("invalid_request", `Invalid "prompt": the prompt is empty`, "prompt");
      }
      ids = llm.tokenize(req.text);
    } else {
      ids = [...req.promptIds!];
      llm.checkIds(ids, "prompt");
    }
    const param = kind === "chat" ? "messages" : "prompt";
    if (ids.length === 0) {
      throw new EngineError(
        "invalid_request",
        `Invalid "${param}": it encodes to no tokens`,
        param,
      );
    }
    const ctx = llm.info.maxModelLen;
    if (ids.length >= ctx) {
      throw new EngineError(
        "invalid_request",
        `This model's maximum context length is ${ctx} tokens, but the ${param} has ${ids.length} tokens, leaving no room to generate`,
        param,
        "context_length_exceeded",
      );
    }
    const reserve = Math.min(ctx, ids.length + this.#headroom);
    const room = await this.#admit(
      this.#hostEstimate(reserve, attention.method),
      this.#gpuPerToken * reserve,
      null,
      param,
    );
    let session: PinnedSession | null = null;
    let prefillSeconds = 0;
    try {
      session = await this.#store.create(attention, reserve);
      const t0 = performance.now();
      const stream = llm.generate({
        id: req.id,
        promptIds: ids,
        maxTokens: 0,
        session,
        commit: true,
        signal: req.signal,
        deadline: req.deadline,
      });
      let finish: FinishEvent | null = null;
      for await (const ev of stream) {
        if (ev.type === "prefill") req.onProgress?.(ev.done, ev.total);
        else if (ev.type === "finish") finish = ev;
      }
      if (!finish || finish.reason !== "length") throw failedPrefill(finish);
      prefillSeconds = (performance.now() - t0) / 1000;
      if (this.#closing) throw new EngineError("unavailable", "The server is shutting down");
    } catch (e) {
      room.release();
      await session?.close().catch(() => {});
      throw e;
    }
    const now = Date.now();
    const entry: Entry = {
      id: newId(),
      owner,
      kind,
      attention,
      createdAt: now,
      prefillSeconds,
      ttlSeconds,
      lastUsedAt: now,
      useSeq: ++this.#useSeq,
      tokens: ids.length,
      turns: 0,
      chat,
      session,
      hostBytes: 0,
      gpuBytes: 0,
      residentHostBytes: 0,
      op: null,
      opDone: null,
      resolveOp: null,
      turn: null,
      deleted: false,
      dirty: true,
      recordDirty: true,
      snapshot: null,
      savedAt: null,
      generation: 0,
    };
    this.#measure(entry);
    this.#entries.set(entry.id, entry);
    room.release();
    this.#m.created.inc();
    this.#log.info("session created", {
      ...(req.id ? { request_id: req.id } : {}),
      session_id: entry.id,
      tokens: entry.tokens,
      host_bytes: entry.hostBytes,
      prefill_s: Math.round(prefillSeconds * 1000) / 1000,
      method: attention.method,
    });
    await this.#fitAfterGrowth(entry);
    return this.#info(entry);
  }

  /** The caller's sessions, most recently used first. */
  list(owner: string): SessionInfo[] {
    return [...this.#entries.values()]
      .filter((e) => e.owner === owner && !e.deleted)
      .sort((a, b) => b.lastUsedAt - a.lastUsedAt)
      .map((e) => this.#info(e));
  }

  /** The caller's session `id` (not found for unknown ids and other owners' sessions). */
  get(owner: string, id: string): SessionInfo {
    return this.#info(this.#find(owner, id));
  }

  /**
   * Deletes the caller's session. While a turn runs the delete is deferred: the session is
   * gone for callers at once, its turn is aborted, and it is freed when the turn unwinds.
   */
  async delete(owner: string, id: string): Promise<void> {
    const e = this.#find(owner, id);
    e.deleted = true;
    this.#log.info("session deleted", { session_id: id, deferred: e.op !== null });
    if (e.op === null) {
      e.op = "delete";
      try {
        await this.#destroy(e);
      } finally {
        e.op = null;
      }
      return;
    }
    e.turn?.stream.abort();
    // #release() destroys it once the running operation ends.
  }

  /** Writes the caller's session to the session folder now. */
  async save(owner: string, id: string): Promise<SessionInfo> {
    this.#checkOpen();
    const e = this.#find(owner, id);
    if (!this.#dir) {
      throw new EngineError(
        "invalid_request",
        "Sessions cannot be saved: the server runs without a session folder (--session-dir)",
        null,
        "session_dir_not_configured",
      );
    }
    await this.#acquire(e, "save");
    try {
      if (e.session && e.dirty) await this.#snapshot(e, "request");
      else if (e.recordDirty && e.snapshot) await this.#writeRecord(e);
    } finally {
      this.#release(e);
    }
    return this.#info(e);
  }

  /**
   * Starts one turn on the caller's session. Rejects at once (before anything is
   * generated) for an unknown session (not_found), a busy one (conflict), bad input
   * (invalid_request) or a full budget (overloaded with a retry time).
   */
  async query(owner: string, id: string, q: SessionQuery): Promise<SessionTurn> {
    this.#checkOpen();
    const llm = this.#llm;
    const e = this.#find(owner, id);
    await this.#acquire(e, "turn");
    let room: { release(): void } | null = null;
    let plan: { ids: number[]; chat: { newMessages: ChatMessage[] } | null };
    let maxTokens: number;
    let stream: RequestStream;
    let n0: number;
    try {
      await this.#ensureResident(e);
      plan = this.#plan(e, q);
      n0 = e.session!.memory().nTokens;
      const ctx = llm.info.maxModelLen;
      const used = n0 + plan.ids.length;
      const param = q.messages !== undefined ? "messages" : "prompt";
      if (used >= ctx) {
        throw new EngineError(
          "invalid_request",
          `This model's maximum context length is ${ctx} tokens, but the session holds ${n0} and the ${param} adds ${plan.ids.length}, leaving no room to generate`,
          param,
          "context_length_exceeded",
        );
      }
      const maxParam = q.maxTokensParam ?? "max_tokens";
      if (q.maxTokens !== undefined && !(Number.isInteger(q.maxTokens) && q.maxTokens >= 1)) {
        throw new EngineError(
          "invalid_request",
          `Invalid "${maxParam}": expected an integer >= 1, got ${JSON.stringify(q.maxTokens)}`,
          maxParam,
        );
      }
      const fallback = q.defaultMaxTokens ?? null;
      maxTokens = q.maxTokens ?? (fallback === null ? ctx - used : Math.min(fallback, ctx - used));
      if (used + maxTokens > ctx) {
        throw new EngineError(
          "invalid_request",
          `This model's maximum context length is ${ctx} tokens, but ${
            used + maxTokens
          } were requested (${n0} in the session, ${plan.ids.length} in the ${param}, ${maxTokens} in "${maxParam}"): reduce "${maxParam}" or the ${param}`,
          maxParam,
          "context_length_exceeded",
        );
      }
      room = await this.#admit(this.#growthEstimate(e, plan.ids.length + maxTokens), 0, e, param);
      stream = llm.generate({
        id: q.id,
        promptIds: plan.ids,
        maxTokens,
        session: e.session!,
        commit: false,
        sampling: q.sampling,
        stop: q.stop,
        stopTokenIds: q.stopTokenIds,
        ignoreEos: q.ignoreEos,
        signal: q.signal,
        deadline: q.deadline,
      });
    } catch (err) {
      room?.release();
      this.#release(e);
      throw err;
    }
    e.lastUsedAt = Date.now();
    e.useSeq = ++this.#useSeq;
    e.recordDirty = true;
    const fork = q.fork ?? false;
    const out = new Channel<SchedulerEvent>(() => {
      turn.cancelled = true;
      stream.abort();
    });
    const turn: Turn = { stream, done: Promise.resolve(), cancelled: false, signal: q.signal };
    const chatPlan = plan.chat;
    turn.done = (async () => {
      let finish: FinishEvent | null = null;
      let reply = "";
      try {
        for await (const ev of stream) {
          if (ev.type === "finish") {
            finish = ev;
            reply += ev.text;
          } else {
            if (ev.type === "token") reply += ev.text;
            out.push(ev);
          }
        }
        await this.#endTurn(e, n0, finish, fork, chatPlan, reply);
      } catch (err) {
        this.#log.error("session turn cleanup failed", {
          session_id: e.id,
          error: err instanceof Error ? err.message : String(err),
        });
        e.dirty = true;
        try {
          this.#measure(e);
        } catch {
          // The session is unusable; its next use reports the native error.
        }
      } finally {
        e.turn = null;
        room!.release();
        this.#release(e);
        if (finish) out.push(finish);
        out.close();
      }
    })();
    e.turn = turn;
    this.#track(turn.done);
    return {
      id: stream.id,
      get status(): RequestStatus {
        return stream.status;
      },
      abort: () => {
        turn.cancelled = true;
        stream.abort();
      },
      promptIds: plan.ids,
      cachedTokens: n0,
      maxTokens,
      [Symbol.asyncIterator]: () => out[Symbol.asyncIterator](),
    };
  }

  /**
   * Registers the sessions of the session folder (their records), removes expired ones,
   * moves damaged ones aside, and loads the most recently used into host memory while
   * they fit the budget (the rest load on first use). Call once, before serving.
   */
  async restore(): Promise<RestoreSummary> {
    const summary: RestoreSummary = { restored: 0, loaded: 0, corrupt: 0, expired: 0, skipped: 0 };
    if (!this.#dir) return summary;
    await this.#dir.ensure();
    const scan = await this.#dir.scan();
    for (const c of scan.corrupt) {
      summary.corrupt++;
      this.#m.corrupt.inc();
      this.#log.error("corrupt session record moved aside", { file: c.file, error: c.error });
    }
    const now = Date.now();
    const model = this.#llm.info.id;
    for (const r of scan.records) {
      if (r.model !== model) {
        summary.skipped++;
        this.#log.warn("session snapshot of another model left in place", {
          session_id: r.id,
          model: r.model,
        });
        continue;
      }
      if (now >= r.last_used_at + r.ttl_seconds * 1000) {
        summary.expired++;
        await this.#dir.removeSession(r.id, r.snapshot);
        this.#m.evictions.inc({ reason: "expired" });
        continue;
      }
      let attention: AttentionOptions;
      try {
        attention = parseAttention(r.attention, "attention", this.#llm.info.nLayers);
      } catch (e) {
        summary.corrupt++;
        await this.#quarantine(r.id, r.snapshot, `invalid attention options: ${String(e)}`);
        continue;
      }
      const entry: Entry = {
        id: r.id,
        owner: r.owner,
        kind: r.kind,
        attention,
        createdAt: r.created_at,
        prefillSeconds: r.prefill_seconds,
        ttlSeconds: r.ttl_seconds,
        lastUsedAt: r.last_used_at,
        useSeq: 0,
        tokens: r.tokens,
        turns: r.turns,
        chat: r.chat
          ? { messages: r.chat.messages.map((m) => ({ ...m })), pending: r.chat.pending }
          : null,
        session: null,
        hostBytes: 0,
        gpuBytes: 0,
        residentHostBytes: r.host_bytes,
        op: null,
        opDone: null,
        resolveOp: null,
        turn: null,
        deleted: false,
        dirty: false,
        recordDirty: false,
        snapshot: r.snapshot,
        savedAt: r.saved_at,
        generation: Number(r.snapshot.split(".")[1]) || 0,
      };
      this.#entries.set(entry.id, entry);
      summary.restored++;
    }
    // Least recently used first in the LRU order; then load the most recently used while
    // they fit without evicting anything.
    const byAge = [...this.#entries.values()].sort((a, b) => a.lastUsedAt - b.lastUsedAt);
    for (const e of byAge) e.useSeq = ++this.#useSeq;
    const byRecency = byAge.reverse();
    for (const e of byRecency) {
      const u = this.usage;
      if (u.hostBytes + e.residentHostBytes > this.#hostBudget) continue;
      try {
        await this.#withOp(e, "load", () => this.#load(e));
        summary.loaded++;
      } catch (err) {
        if (err instanceof EngineError && err.code === "session_snapshot_corrupt") {
          summary.corrupt++;
          summary.restored--;
        } else {
          this.#log.warn("session left on disk", {
            session_id: e.id,
            error: err instanceof Error ? err.message : String(err),
          });
        }
      }
    }
    for (const name of scan.removed) {
      this.#log.debug("leftover session file removed", { file: name });
    }
    this.#log.info("sessions restored", { ...summary, dir: this.#dir.path });
    return summary;
  }

  /**
   * Ends the manager: refuses new work, waits for running turns to unwind (the scheduler
   * has aborted or finished them), writes every changed session to the session folder,
   * and frees every native session. Idempotent. Call before the engine is freed.
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#closing = true;
      if (this.#sweeper !== null) clearInterval(this.#sweeper);
      this.#sweeper = null;
      while (this.#tasks.size > 0) await Promise.allSettled([...this.#tasks]);
      let saved = 0, failed = 0;
      for (const e of [...this.#entries.values()]) {
        if (e.deleted) continue;
        if (this.#dir) {
          try {
            if (e.session && e.dirty) {
              await this.#snapshot(e, "shutdown");
              saved++;
            } else if (e.recordDirty && e.snapshot) {
              await this.#writeRecord(e);
            }
          } catch {
            failed++; // logged and counted by #snapshot
          }
        }
        await e.session?.close().catch(() => {});
        e.session = null;
      }
      this.#entries.clear();
      if (this.#dir) this.#log.info("sessions flushed", { saved, failed, dir: this.#dir.path });
    })();
    return this.#closed;
  }

  // ----------------------------------------------------------
  // lookup and locking

  #checkOpen(): void {
    if (this.#closing) throw new EngineError("unavailable", "The server is shutting down");
  }

  #find(owner: string, id: string): Entry {
    const e = sessionIdPattern.test(id) ? this.#entries.get(id) : undefined;
    if (!e || e.deleted || e.owner !== owner) throw notFound(id);
    return e;
  }

  /**
   * Takes the session for `op`. A running turn is a conflict unless it is being aborted
   * (then it is waited for); internal operations (save, eviction, load) are waited for.
   */
  async #acquire(e: Entry, op: OpKind): Promise<void> {
    const until = Date.now() + 30_000;
    while (e.op !== null) {
      const t = e.turn;
      const aborting = t !== null &&
        (t.cancelled || t.signal?.aborted === true || t.stream.status.startsWith("finished"));
      if (e.op === "turn" && !aborting) {
        throw new EngineError(
          "conflict",
          `Session "${e.id}" is busy: a turn is running on it; send one request at a time per session`,
          "session_id",
          "session_busy",
        );
      }
      if (Date.now() > until) {
        throw new EngineError(
          "conflict",
          `Session "${e.id}" is busy`,
          "session_id",
          "session_busy",
        );
      }
      await Promise.race([e.opDone, delay(100)]);
      if (e.deleted) throw notFound(e.id);
    }
    if (e.deleted) throw notFound(e.id);
    e.op = op;
    const { promise, resolve } = Promise.withResolvers<void>();
    e.opDone = promise;
    e.resolveOp = resolve;
  }

  #release(e: Entry): void {
    const resolve = e.resolveOp;
    e.op = null;
    e.opDone = null;
    e.resolveOp = null;
    resolve?.();
    if (e.deleted && this.#entries.get(e.id) === e) {
      e.op = "delete";
      this.#track(this.#destroy(e).finally(() => (e.op = null)));
    }
  }

  async #withOp<T>(e: Entry, op: OpKind, fn: () => Promise<T>): Promise<T> {
    await this.#acquire(e, op);
    try {
      return await fn();
    } finally {
      this.#release(e);
    }
  }

  #track(p: Promise<unknown>): void {
    const t = p.catch(() => {}).finally(() => this.#tasks.delete(t));
    this.#tasks.add(t);
  }

  // ----------------------------------------------------------
  // turns

  /** The prompt ids of a query, and the chat bookkeeping it needs at the end. */
  #plan(e: Entry, q: SessionQuery): { ids: number[]; chat: { newMessages: ChatMessage[] } | null } {
    const llm = this.#llm;
    const given = [q.promptIds, q.text, q.messages].filter((x) => x !== undefined).length;
    if (given !== 1) {
      throw new EngineError(
        "invalid_request",
        `Exactly one of "prompt" or "messages" is required, got ${given}`,
        "prompt",
      );
    }
    if (q.promptIds !== undefined) {
      if (q.promptIds.length === 0) {
        throw new EngineError("invalid_request", `Invalid "prompt": the prompt is empty`, "prompt");
      }
      llm.checkIds(q.promptIds, "prompt");
      return { ids: [...q.promptIds], chat: null };
    }
    if (q.text !== undefined) {
      if (q.text.length === 0) {
        throw new EngineError("invalid_request", `Invalid "prompt": the prompt is empty`, "prompt");
      }
      const ids = llm.tokenize(q.text, { addSpecialTokens: q.addSpecialTokens ?? false });
      if (ids.length === 0) {
        throw new EngineError(
          "invalid_request",
          `Invalid "prompt": it encodes to no tokens`,
          "prompt",
        );
      }
      return { ids, chat: null };
    }
    let messages = [...q.messages!];
    const history = e.chat?.messages ?? [];
    if (
      history.length > 0 && messages.length >= history.length &&
      history.every((m, i) => sameMessage(m, messages[i]))
    ) {
      messages = messages.slice(history.length);
    }
    let ids: number[];
    if (history.length > 0) {
      const base = this.#stablePrefix(history);
      const full = llm.renderChatText([...history, ...messages], { addGenerationPrompt: true });
      if (!full.startsWith(base)) {
        throw new EngineError(
          "invalid_request",
          "The chat template does not render this conversation incrementally: rendering the new messages changes how earlier ones render",
          "messages",
          "template_not_incremental",
        );
      }
      ids = llm.tokenize(e.chat!.pending + full.slice(base.length), {
        addSpecialTokens: false,
        param: "messages",
      });
    } else {
      if (messages.length === 0) {
        throw new EngineError(
          "invalid_request",
          `Invalid "messages": this session has no conversation yet, so at least one message is needed`,
          "messages",
        );
      }
      ids = llm.renderChat(messages, { addGenerationPrompt: true }).ids;
      if (e.tokens > 0 && ids.length > 0 && ids[0] === llm.bosId) ids = ids.slice(1);
      const pending = e.chat?.pending ?? "";
      if (pending) ids = [...llm.tokenize(pending, { addSpecialTokens: false }), ...ids];
    }
    if (ids.length === 0) {
      throw new EngineError(
        "invalid_request",
        `Invalid "messages": they add no tokens`,
        "messages",
      );
    }
    return { ids, chat: { newMessages: messages } };
  }

  /**
   * The part of a conversation's rendering that stays the same whatever comes next: the
   * common prefix of `render(messages)` and `render(messages + [a user message], generation
   * prompt)`. For most templates it is `render(messages)`; for templates that always add the
   * assistant header (the original Llama-3 one) it stops before the header's role.
   */
  #stablePrefix(messages: readonly ChatMessage[]): string {
    const a = this.#llm.renderChatText(messages, { addGenerationPrompt: false });
    const b = this.#llm.renderChatText([...messages, { role: "user", content: PROBE }], {
      addGenerationPrompt: true,
    });
    const n = Math.min(a.length, b.length);
    let i = 0;
    while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
    return a.slice(0, i);
  }

  /** Commits a finished turn, or rolls it back (fork, abort, error). */
  async #endTurn(
    e: Entry,
    n0: number,
    finish: FinishEvent | null,
    fork: boolean,
    chat: { newMessages: ChatMessage[] } | null,
    reply: string,
  ): Promise<void> {
    const session = e.session!;
    const ok = finish !== null && (finish.reason === "stop" || finish.reason === "length");
    if (!ok || fork || e.deleted) {
      const kind = fork && ok ? "fork" : "rollback";
      try {
        if (session.memory().nTokens !== n0) await session.truncate(n0);
      } catch (err) {
        // The library could not drop the turn (its tokens were indexed): keep the session
        // consistent with what it now holds rather than lose it.
        e.tokens = session.memory().nTokens;
        e.dirty = true;
        e.chat = null;
        this.#log.error("session turn could not be rolled back", {
          session_id: e.id,
          tokens: e.tokens,
          error: err instanceof Error ? err.message : String(err),
        });
      }
      this.#m.turns.inc({ outcome: kind });
      this.#measure(e);
      return;
    }
    const out = finish!.outputIds;
    if (out.length > 0 && session.memory().nTokens + 1 <= this.#llm.info.maxModelLen) {
      // The last generated token is not in the cache yet: one call prefills it and commits.
      await session.prefill(Int32Array.from([out[out.length - 1]]), null, null, true);
    } else {
      await session.commit();
    }
    e.tokens = session.memory().nTokens;
    e.turns++;
    e.dirty = true;
    e.recordDirty = true;
    e.lastUsedAt = Date.now();
    e.useSeq = ++this.#useSeq;
    if (chat) {
      const history = [...(e.chat?.messages ?? []), ...chat.newMessages];
      const probe = this.#stablePrefix([...history, { role: "assistant", content: SENTINEL }]);
      const at = probe.lastIndexOf(SENTINEL);
      let closing = at < 0 ? "" : probe.slice(at + SENTINEL.length);
      const last = out[out.length - 1];
      if (last !== undefined && finish!.reason === "stop") {
        const lastText = this.#llm.tokenText(last);
        if (lastText && closing.startsWith(lastText)) closing = closing.slice(lastText.length);
      }
      e.chat = { messages: [...history, { role: "assistant", content: reply }], pending: closing };
    } else {
      e.chat = null;
    }
    this.#m.turns.inc({ outcome: "commit" });
    this.#measure(e);
    await this.#fitAfterGrowth(e);
  }

  // ----------------------------------------------------------
  // memory

  #measure(e: Entry): void {
    if (!e.session) {
      e.hostBytes = 0;
      e.gpuBytes = 0;
      return;
    }
    const m = e.session.memory();
    e.tokens = m.nTokens;
    e.hostBytes = m.hostKvBytes + m.hostIndexBytes;
    e.gpuBytes = m.gpuBytes;
    e.residentHostBytes = e.hostBytes;
    if (m.hostKvBytes > 0) {
      this.#indexRatio.set(e.attention.method, m.hostIndexBytes / m.hostKvBytes);
    }
    if (m.nTokens > 0 && m.gpuBytes > 0) this.#gpuPerToken = m.gpuBytes / m.nTokens;
  }

  /** Host bytes of a new session with room for `tokens` (the cache rounds up to 2^k >= 64). */
  #hostEstimate(tokens: number, method: AttentionMethod): number {
    const capacity = nativeCapacity(0, tokens);
    const per = this.#store.kvBytesPerToken;
    return Math.ceil(capacity * per + tokens * per * (this.#indexRatio.get(method) ?? 0));
  }

  /** Extra host bytes a resident session needs to grow by `more` tokens. */
  #growthEstimate(e: Entry, more: number): number {
    const m = e.session!.memory();
    const per = this.#store.kvBytesPerToken;
    const capacity = per > 0 ? Math.floor(m.hostKvBytes / per) : 0;
    const after = m.nTokens + more;
    const kvAfter = after > capacity ? nativeCapacity(capacity, after) * per : m.hostKvBytes;
    const ratio = this.#indexRatio.get(e.attention.method) ?? 0;
    return Math.max(0, kvAfter - m.hostKvBytes) + Math.ceil(more * per * ratio);
  }

  #reserved(): Reservation {
    let host = 0, gpu = 0;
    for (const r of this.#reservations) {
      host += r.host;
      gpu += r.gpu;
    }
    return { host, gpu };
  }

  #fits(host: number, gpu: number): boolean {
    const u = this.usage;
    const r = this.#reserved();
    const hostOk = u.hostBytes + r.host + host <= this.#hostBudget;
    const gpuOk = this.#gpuBudget === null || u.gpuBytes + r.gpu + gpu <= this.#gpuBudget;
    return hostOk && gpuOk;
  }

  /**
   * Makes room for `host`/`gpu` more bytes by evicting idle sessions (least recently used
   * first, never `self`) and reserves them until `release()`.
   */
  async #admit(
    host: number,
    gpu: number,
    self: Entry | null,
    param: string,
  ): Promise<{ release(): void }> {
    const selfBytes = self ? self.hostBytes : 0;
    if (host + selfBytes > this.#hostBudget) {
      throw new EngineError(
        "invalid_request",
        `The session needs about ${
          host + selfBytes
        } bytes of host memory, more than the budget of ${this.#hostBudget} bytes (--host-memory-budget)`,
        param,
        "session_too_large",
      );
    }
    if (this.#gpuBudget !== null && gpu > this.#gpuBudget) {
      throw new EngineError(
        "invalid_request",
        `The session needs about ${gpu} bytes of GPU memory, more than the budget of ${this.#gpuBudget} bytes (--gpu-memory-budget)`,
        param,
        "session_too_large",
      );
    }
    const failed = new Set<Entry>();
    while (!this.#fits(host, gpu)) {
      const victim = this.#lruIdle(self, failed);
      if (!victim) {
        this.#m.rejected.inc();
        throw new EngineError(
          "overloaded",
          `The session memory budget is held by sessions that are in use: retry in ${this.#retryAfter} s`,
          null,
          "session_budget_exhausted",
          { retryAfterSeconds: this.#retryAfter },
        );
      }
      if (!(await this.#evictOne(victim, "budget"))) failed.add(victim);
    }
    const r: Reservation = { host, gpu };
    this.#reservations.add(r);
    return { release: () => this.#reservations.delete(r) };
  }

  #lruIdle(self: Entry | null, skip: ReadonlySet<Entry>): Entry | null {
    let best: Entry | null = null;
    for (const e of this.#entries.values()) {
      if (e === self || skip.has(e) || e.deleted || e.op !== null || e.session === null) continue;
      if (!best || e.useSeq < best.useSeq) best = e;
    }
    return best;
  }

  /** After a session grew: evict idle others while the budget is exceeded. */
  async #fitAfterGrowth(self: Entry): Promise<void> {
    const failed = new Set<Entry>();
    while (!this.#fits(0, 0)) {
      const victim = this.#lruIdle(self, failed);
      if (!victim) return; // over budget only by sessions in use; admission holds new work
      if (!(await this.#evictOne(victim, "budget"))) failed.add(victim);
    }
  }

  /** Evicts `e`; false when it could not be (busy, or its snapshot failed: it stays). */
  async #evictOne(e: Entry, reason: "budget"): Promise<boolean> {
    try {
      await this.#withOp(e, "evict", () => this.#evict(e, reason));
      return true;
    } catch (err) {
      if (!(err instanceof EngineError && err.kind === "conflict")) {
        this.#log.error("session eviction failed", {
          session_id: e.id,
          error: err instanceof Error ? err.message : String(err),
        });
      }
      return false;
    }
  }

  async #evict(e: Entry, reason: "budget"): Promise<void> {
    if (!e.session) return;
    if (this.#dir) {
      if (e.dirty || !e.snapshot) await this.#snapshot(e, "eviction");
      await e.session.close();
      e.session = null;
      this.#measure(e);
      this.#log.info("session evicted to disk", { session_id: e.id, reason });
    } else {
      e.deleted = true;
      await this.#destroy(e);
      this.#log.info("session evicted", { session_id: e.id, reason, persisted: false });
    }
    this.#m.evictions.inc({ reason });
  }

  async #ensureResident(e: Entry): Promise<void> {
    if (e.session) return;
    const room = await this.#admit(
      e.residentHostBytes,
      this.#gpuPerToken * e.tokens,
      e,
      "session_id",
    );
    try {
      await this.#load(e);
    } finally {
      room.release();
    }
  }

  async #load(e: Entry): Promise<void> {
    const dir = this.#dir!;
    let session: PinnedSession;
    try {
      session = await this.#store.load(dir.file(e.snapshot!));
    } catch (err) {
      this.#m.snapshotFailures.inc({ operation: "load" });
      const missing = err instanceof SnapshotError && err.reason === "io" &&
        !(await Deno.stat(dir.file(e.snapshot!)).then(() => true, () => false));
      if (err instanceof SnapshotError && (err.reason === "corrupt" || missing)) {
        await this.#quarantine(e.id, e.snapshot, err.message);
        this.#entries.delete(e.id);
        e.deleted = true;
        throw new EngineError(
          "internal",
          `The snapshot of session "${e.id}" is damaged: it was moved aside and the session is lost`,
          "session_id",
          "session_snapshot_corrupt",
          { cause: err },
        );
      }
      throw toEngineError(err, `Cannot restore session "${e.id}"`);
    }
    const n = session.memory().nTokens;
    if (n !== e.tokens) {
      await session.close();
      const why = `the snapshot holds ${n} tokens, its record says ${e.tokens}`;
      await this.#quarantine(e.id, e.snapshot, why);
      this.#entries.delete(e.id);
      e.deleted = true;
      throw new EngineError(
        "internal",
        `The snapshot of session "${e.id}" does not match its record (${why}): it was moved aside`,
        "session_id",
        "session_snapshot_corrupt",
      );
    }
    e.session = session;
    this.#measure(e);
    this.#m.restores.inc();
  }

  async #quarantine(id: string, snapshot: string | null, why: string): Promise<void> {
    this.#m.corrupt.inc();
    const dir = this.#dir!;
    const moved: string[] = [];
    for (const name of [`${id}.json`, snapshot]) {
      if (!name) continue;
      const to = await dir.moveAside(name).catch(() => null);
      if (to) moved.push(to);
    }
    this.#log.error("corrupt session snapshot moved aside", {
      session_id: id,
      error: why,
      moved,
    });
  }

  // ----------------------------------------------------------
  // snapshots and lifetime

  #record(e: Entry): SessionRecord {
    return {
      version: RECORD_VERSION,
      id: e.id,
      owner: e.owner,
      model: this.#llm.info.id,
      kind: e.kind,
      created_at: e.createdAt,
      last_used_at: e.lastUsedAt,
      ttl_seconds: e.ttlSeconds,
      tokens: e.tokens,
      turns: e.turns,
      prefill_seconds: e.prefillSeconds,
      host_bytes: e.session ? e.hostBytes : e.residentHostBytes,
      gpu_bytes: e.gpuBytes,
      attention: attentionJson(e.attention),
      chat: e.chat
        ? { messages: e.chat.messages.map((m) => ({ ...m })), pending: e.chat.pending }
        : null,
      snapshot: e.snapshot!,
      saved_at: e.savedAt ?? Date.now(),
    };
  }

  async #writeRecord(e: Entry): Promise<void> {
    await this.#dir!.writeRecord(this.#record(e));
    e.recordDirty = false;
  }

  /** Writes the native snapshot, then the record naming it, then drops the old one. */
  async #snapshot(e: Entry, trigger: "eviction" | "shutdown" | "request"): Promise<void> {
    const dir = this.#dir!;
    const old = e.snapshot;
    const name = dir.snapshotName(e.id, e.generation + 1);
    const t0 = performance.now();
    try {
      await dir.ensure();
      await e.session!.save(dir.file(name));
      e.generation++;
      e.snapshot = name;
      e.savedAt = Date.now();
      await this.#writeRecord(e);
    } catch (err) {
      e.snapshot = old;
      this.#m.snapshotFailures.inc({ operation: "save" });
      this.#log.error("session snapshot failed", {
        session_id: e.id,
        trigger,
        error: err instanceof Error ? err.message : String(err),
      });
      await dir.remove(name).catch(() => {});
      throw toEngineError(err, `Cannot save session "${e.id}"`);
    }
    if (old && old !== name) await dir.remove(old).catch(() => {});
    e.dirty = false;
    this.#m.snapshotWrites.inc({ trigger });
    this.#log.info("session saved", {
      session_id: e.id,
      trigger,
      tokens: e.tokens,
      ms: Math.round(performance.now() - t0),
    });
  }

  async #destroy(e: Entry): Promise<void> {
    if (this.#entries.get(e.id) === e) this.#entries.delete(e.id);
    const session = e.session;
    e.session = null;
    await session?.close().catch(() => {});
    if (this.#dir && e.snapshot) {
      await this.#dir.removeSession(e.id, e.snapshot).catch((err) =>
        this.#log.warn("cannot remove session files", { session_id: e.id, error: String(err) })
      );
    } else if (this.#dir) {
      await this.#dir.remove(`${e.id}.json`).catch(() => {});
    }
  }

  #sweep(): void {
    if (this.#closing) return;
    const now = Date.now();
    for (const e of [...this.#entries.values()]) {
      if (e.deleted || e.op !== null) continue;
      if (now < e.lastUsedAt + e.ttlSeconds * 1000) continue;
      e.deleted = true;
      e.op = "expire";
      this.#m.evictions.inc({ reason: "expired" });
      this.#log.info("session expired", { session_id: e.id, ttl_seconds: e.ttlSeconds });
      this.#track(this.#destroy(e).finally(() => (e.op = null)));
    }
  }

  #ttl(v: number | undefined): number {
    if (v === undefined) return this.#defaultTtl;
    if (!Number.isInteger(v) || v < 1 || v > this.#maxTtl) {
      throw new EngineError(
        "invalid_request",
        `Invalid "ttl_seconds": expected an integer in [1, ${this.#maxTtl}], got ${
          JSON.stringify(v)
        }`,
        "ttl_seconds",
      );
    }
    return v;
  }

  #info(e: Entry): SessionInfo {
    return {
      id: e.id,
      kind: e.kind,
      state: e.session ? "host" : "disk",
      busy: e.op !== null,
      tokens: e.tokens,
      hostBytes: e.session ? e.hostBytes : 0,
      gpuBytes: e.session ? e.gpuBytes : 0,
      prefillSeconds: e.prefillSeconds,
      createdAt: e.createdAt,
      lastUsedAt: e.lastUsedAt,
      expiresAt: e.lastUsedAt + e.ttlSeconds * 1000,
      ttlSeconds: e.ttlSeconds,
      attention: e.attention,
      turns: e.turns,
      savedAt: e.savedAt,
    };
  }
}

function failedPrefill(finish: FinishEvent | null): EngineError {
  if (finish?.error) return finish.error;
  if (finish?.reason === "deadline") {
    return new EngineError(
      "unavailable",
      "The request's deadline (Cancel-After) passed during the prefill",
      null,
      "deadline_exceeded",
    );
  }
  if (finish?.reason === "abort") {
    return new EngineError(
      "unavailable",
      "The client closed the request during the prefill",
      null,
      "client_closed_request",
    );
  }
  return new EngineError("internal", "The prefill ended without a result");
}

// ------------------------------------------------------------
// metrics

function registerMetrics(m: Metrics, manager: SessionManager) {
  const sessions = m.gauge("magicpig:sessions", "Pinned sessions by where they are", ["state"]);
  const hostBytes = m.gauge(
    "magicpig:session_host_bytes",
    "Host bytes held by resident sessions (KV cache and LSH index)",
  );
  const gpuBytes = m.gauge("magicpig:session_gpu_bytes", "Device bytes held by resident sessions");
  const hostBudget = m.gauge(
    "magicpig:session_host_memory_budget_bytes",
    "Host bytes sessions may hold (--host-memory-budget)",
  );
  const usagePerc = m.gauge(
    "magicpig:session_host_memory_usage_perc",
    "Fraction of the host memory budget held by resident sessions (1 = full)",
  );
  m.collect(() => {
    const u = manager.usage;
    sessions.set(u.host, { state: "host" });
    sessions.set(u.disk, { state: "disk" });
    hostBytes.set(u.hostBytes);
    gpuBytes.set(u.gpuBytes);
    hostBudget.set(u.hostBudget);
    usagePerc.set(u.hostBudget > 0 ? u.hostBytes / u.hostBudget : 0);
  });
  const out = {
    created: m.counter("magicpig:sessions_created_total", "Sessions created"),
    turns: m.counter(
      "magicpig:session_turns_total",
      "Session turns by outcome: commit (kept), fork (rolled back on purpose), rollback (aborted or failed)",
      ["outcome"],
    ),
    evictions: m.counter(
      "magicpig:session_evictions_total",
      "Sessions evicted from host memory: budget (LRU, to disk when a session folder is set, else dropped) or expired (TTL)",
      ["reason"],
    ),
    rejected: m.counter(
      "magicpig:session_admission_rejections_total",
      "Requests refused with 429 because the session memory budget was held by sessions in use",
    ),
    snapshotWrites: m.counter(
      "magicpig:session_snapshot_writes_total",
      "Session snapshots written, by trigger (eviction, shutdown, request)",
      ["trigger"],
    ),
    snapshotFailures: m.counter(
      "magicpig:session_snapshot_failures_total",
      "Session snapshots that could not be written (save) or read (load)",
      ["operation"],
    ),
    corrupt: m.counter(
      "magicpig:session_snapshots_corrupt_total",
      "Damaged session snapshots or records found, moved aside and never loaded",
    ),
    restores: m.counter(
      "magicpig:session_restores_total",
      "Sessions loaded back into host memory from their snapshots",
    ),
  };
  // Known label values start at 0, so that rate() and alerts see them before the first event.
  for (const outcome of ["commit", "fork", "rollback"]) out.turns.inc({ outcome }, 0);
  for (const reason of ["budget", "expired"]) out.evictions.inc({ reason }, 0);
  for (const trigger of ["eviction", "shutdown", "request"]) {
    out.snapshotWrites.inc({ trigger }, 0);
  }
  for (const operation of ["save", "load"]) out.snapshotFailures.inc({ operation }, 0);
  return out;
}

/**
 * The rows the native KV cache holds after growing from `capacity` to fit `needed` tokens
 * (mirrors Session::reserve in cuda/engine/session.cpp: an exact first reservation, then
 * growth by a quarter, at least 256 rows; always rounded up to 256 rows).
 */
export function nativeCapacity(capacity: number, needed: number): number {
  if (needed <= capacity) return capacity;
  const grown = capacity === 0
    ? needed
    : Math.max(needed, capacity + Math.max(Math.floor(capacity / 4), 256));
  return Math.ceil(grown / 256) * 256;
}
