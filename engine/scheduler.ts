/**
 * Continuous batching in the shape of vLLM v1's `EngineCore.step()`: one loop, one native
 * call per step.
 *
 * ```
 * step():
 *   plan   = schedule()          // a prefill chunk of one request, or one decode batch
 *   result = await execute(plan) // one nonblocking native call (engine is free meanwhile)
 *   applyAborts()                // signals, disconnects and deadlines that arrived meanwhile
 *   update(plan, result)         // sample each sequence, check stop conditions
 *   emit()                       // token events to each request's stream
 * ```
 *
 * Every request runs on a native session. An *ephemeral* session is created when the
 * request is admitted and freed when it finishes; a *pinned* session is passed in by its
 * owner (the session manager), appended to, and left open at the end.
 *
 * Prompts are prefilled in chunks of `backend.prefillChunk` tokens; a last piece shorter
 * than a quarter chunk joins the chunk before it (every prefill call after the first
 * attends to all earlier rows, which a GPU engine uploads from the host cache: on the
 * H200, a 64-token tail after 96K tokens took 0.29 s on its own). While requests are
 * decoding, prefill chunks and decode steps alternate, so a long prompt delays running
 * streams by at most one chunk per token. Aborts take effect between steps, never inside
 * one: a request whose client went away is finished (and its session freed) right after
 * the step in flight when the abort arrived. An abort also sets the flag the native
 * prefill polls, so a long chunk of an aborted request ends early.
 *
 * @example
 * ```ts
 * import { Scheduler } from "./scheduler.ts";
 * declare const backend: import("./backend.ts").Backend;
 * const scheduler = new Scheduler(backend, { eosIds: [2] });
 * for await (const ev of scheduler.submit({ promptIds: [1, 403], maxTokens: 8 })) {
 *   if (ev.type === "token") console.log(ev.id);
 * }
 * await scheduler.shutdown();
 * ```
 *
 * @module
 */
import { Channel } from "./_channel.ts";
import { type AttentionOptions, defaultAttention } from "./attention.ts";
import {
  AbortedError,
  type Backend,
  type BackendSession,
  type SampleResult,
  type SessionStats,
} from "./backend.ts";
import { type DecodeFn, IncrementalDetokenizer } from "./detokenizer.ts";
import { EngineError, toEngineError } from "./errors.ts";

// ------------------------------------------------------------
// request and event types

/**
 * The lifecycle of a request. `WAITING` → `PREFILLING` → `RUNNING` → one of the
 * `FINISHED_*` states; a request can finish from any state (abort, deadline, error).
 */
export const RequestStatus = {
  /** Queued; no session work done yet (the batch is full or the loop has not reached it). */
  WAITING: "waiting",
  /** Its prompt is being appended to its session, chunk by chunk. */
  PREFILLING: "prefilling",
  /** Decoding: one token per decode step. */
  RUNNING: "running",
  /** Ended by an EOS/stop token or a stop string. */
  FINISHED_STOPPED: "finished_stopped",
  /** Ended by `maxTokens` or the context limit. */
  FINISHED_LENGTH: "finished_length",
  /** Aborted by its signal, its consumer going away, or shutdown. */
  FINISHED_ABORTED: "finished_aborted",
  /** Its deadline passed. */
  FINISHED_DEADLINE: "finished_deadline",
  /** A native or engine error ended it. */
  FINISHED_ERROR: "finished_error",
} as const;
/** One of {@link RequestStatus}. */
export type RequestStatus = (typeof RequestStatus)[keyof typeof RequestStatus];

/** Why a request finished, as reported to clients. */
export type FinishReason = "stop" | "length" | "abort" | "deadline" | "error";

const finishedStatus: Record<FinishReason, RequestStatus> = {
  stop: RequestStatus.FINISHED_STOPPED,
  length: RequestStatus.FINISHED_LENGTH,
  abort: RequestStatus.FINISHED_ABORTED,
  deadline: RequestStatus.FINISHED_DEADLINE,
  error: RequestStatus.FINISHED_ERROR,
};

/** How to pick each token. */
export interface SamplingOptions {
  /** 0 (default): greedy, first maximum wins. At most 2. */
  temperature?: number;
  /** Nucleus mass in (0, 1]; 1 (default) is off. */
  topP?: number;
  /** Keep the k most likely tokens; 0 (default) is off. */
  topK?: number;
  /** Seeds this request's RNG; unset: a random seed. Same seed, same tokens. */
  seed?: number | bigint;
  /** Report the log-probabilities of this many most likely alternatives per token (0..20). */
  logprobs?: number;
}

/** A generation request, as the scheduler takes it. */
export interface GenerateRequest {
  /** An id for logs and lookups; one is made up when absent. */
  id?: string;
  /** Prompt token ids (at least one), appended to the session before generation. */
  promptIds: readonly number[];
  /** Most tokens to generate. 0: prefill only (a session being created). */
  maxTokens: number;
  sampling?: SamplingOptions;
  /** Strings that end generation; they are not part of the output text. */
  stop?: readonly string[];
  /** Token ids that end generation, in addition to the model's EOS ids. */
  stopTokenIds?: readonly number[];
  /** Keep generating past EOS ids (stop token ids still stop). */
  ignoreEos?: boolean;
  /** Attention of the ephemeral session (ignored for a pinned session). */
  attention?: AttentionOptions;
  /**
   * A pinned session owned by the caller: the prompt is appended to it and it stays open
   * when the request ends (holding the prompt and every generated token but the last,
   * which {@link FinishEvent.outputIds} carries). Absent: an ephemeral session.
   */
  session?: BackendSession;
  /**
   * Commit the session after the prompt (MagicPIG indexes it); default true. With no token to
   * generate, the commit is part of the prompt's last prefill call. Otherwise it runs once
   * the first token is out (that token does not wait for the index), and an ephemeral
   * session whose request ends at its first token is not committed.
   */
  commit?: boolean;
  /** Aborts the request (client disconnect); takes effect within one step. */
  signal?: AbortSignal;
  /** Absolute deadline in ms since the epoch (`Date.now()` clock). */
  deadline?: number;
}

/** Progress of a prompt's prefill, after each chunk. */
export interface PrefillEvent {
  type: "prefill";
  /** Prompt tokens appended so far. */
  done: number;
  /** Prompt tokens in all. */
  total: number;
}

/** One generated token. */
export interface TokenEvent {
  type: "token";
  /** The token id. */
  id: number;
  /** Its position in the output (0 for the first generated token). */
  index: number;
  /** Its log-probability under the model's distribution. */
  logprob: number;
  /** The most likely alternatives, when `sampling.logprobs` > 0. */
  top: { id: number; logprob: number }[];
  /** Output text that became final with this token (possibly empty; "" without a tokenizer). */
  text: string;
}

/** Token counts and attention statistics of a finished request. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
  /** Tokens already in a pinned session before this request (reused, not prefilled). */
  cachedTokens: number;
  /** The session's attention method. */
  attention: AttentionOptions["method"];
  /**
   * Keys attended / keys offloaded in the sparse region during this request (from the
   * session's counters); 1 when nothing was offloaded (dense attention).
   */
  keysFraction: number;
}

/** The last event of every request. */
export interface FinishEvent {
  type: "finish";
  reason: FinishReason;
  /** Text released at the end (held-back tail); empty after a stop string. */
  text: string;
  /** Every generated id (the last one is not in a pinned session's KV cache). */
  outputIds: number[];
  usage: Usage;
  /** For `reason: "error"` (and aborts by shutdown), what went wrong. */
  error?: EngineError;
}

/** What a request's stream yields. */
export type SchedulerEvent = PrefillEvent | TokenEvent | FinishEvent;

/**
 * The stream of one submitted request. Iterate it with `for await`; leaving the loop early
 * aborts the request (that is how a disconnected HTTP client stops generation).
 */
export interface RequestStream extends AsyncIterable<SchedulerEvent> {
  /** The request id. */
  readonly id: string;
  /** Its current status. */
  readonly status: RequestStatus;
  /** Aborts the request; it finishes with reason "abort" after the current step. */
  abort(): void;
}

/** What the scheduler remembers about a finished request (for metrics and tests). */
export interface FinishedSummary {
  id: string;
  reason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  /** The step during which the abort arrived, for aborted requests. */
  abortRequestedAtStep: number | null;
  /** The step after which the request finished. */
  finishedAtStep: number;
  /** Milliseconds from submission to the first token (null when none). */
  ttftMs: number | null;
  /** Milliseconds from submission to the end. */
  totalMs: number;
}

/** Counters, for /metrics and tests. */
export interface SchedulerStats {
  waiting: number;
  prefilling: number;
  running: number;
  /** Steps executed (prefill chunks + decode steps). */
  steps: number;
  prefillSteps: number;
  decodeSteps: number;
  promptTokens: number;
  generatedTokens: number;
  finished: Record<FinishReason, number>;
}

/**
 * Hooks for metrics (time to first token, inter-token latency, finished requests). Called
 * synchronously from the loop: keep them cheap and never throw.
 */
export interface SchedulerObserver {
  /** A request's first token arrived `seconds` after it was submitted. */
  firstToken?(seconds: number): void;
  /** A later token arrived `seconds` after the previous one of the same request. */
  interToken?(seconds: number): void;
  /** A request finished, with its usage. */
  finished?(summary: FinishedSummary, usage: Usage): void;
}

/** Options of {@link Scheduler}. */
export interface SchedulerOptions {
  /** Token ids that end generation (the tokenizer's EOS/EOT ids). */
  eosIds?: readonly number[];
  /** Decodes ids to text; without it no text is produced and stop strings are refused. */
  decode?: DecodeFn | null;
  /** Most requests prefilling or running at once; default `backend.maxBatch`. */
  maxRunning?: number;
  /** How many finished summaries to keep; default 256. */
  historySize?: number;
  /** Metrics hooks. */
  observer?: SchedulerObserver;
}

// ------------------------------------------------------------
// internal request state

interface Request {
  readonly id: string;
  status: RequestStatus;
  readonly prompt: Int32Array<ArrayBuffer>;
  readonly maxTokens: number;
  readonly sample: { temperature: number; topK: number; topP: number; nLogprobs: number };
  readonly stopIds: Set<number>;
  readonly attention: AttentionOptions;
  readonly pinned: boolean;
  readonly commit: boolean;
  /** Prefilled, commit still to do: it runs once the first token is out (see #update). */
  commitPending: boolean;
  readonly deadline: number;
  readonly rng: BigUint64Array<ArrayBuffer>;
  readonly detok: IncrementalDetokenizer | null;
  readonly channel: Channel<SchedulerEvent>;
  readonly abortFlag: Int32Array<ArrayBuffer>;
  readonly arrival: number;
  session: BackendSession | null;
  statsAtStart: SessionStats | null;
  prefilled: number;
  pending: number | null;
  output: number[];
  abortRequestedAtStep: number | null;
  firstTokenAt: number | null;
  /** `performance.now()` at submission and at the last token (metrics). */
  readonly arrivalPerf: number;
  lastTokenPerf: number | null;
  detachSignal: (() => void) | null;
}

type Plan =
  | { kind: "idle" }
  | { kind: "prefill"; req: Request; start: number; end: number }
  | { kind: "decode"; reqs: Request[] };

type Outcome =
  | { kind: "idle" }
  | { kind: "prefill"; req: Request; end: number; logits: Float32Array<ArrayBuffer> | null }
  | { kind: "decode"; reqs: Request[]; logits: Float32Array<ArrayBuffer> }
  | { kind: "failed"; reqs: Request[]; error: EngineError };

function splitmix64(x: bigint): bigint {
  const M = (1n << 64n) - 1n;
  let z = (x + 0x9e3779b97f4a7c15n) & M;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M;
  return (z ^ (z >> 31n)) & M;
}

function seedState(seed: number | bigint | undefined): BigUint64Array<ArrayBuffer> {
  const state = new BigUint64Array(1);
  if (seed === undefined) {
    crypto.getRandomValues(state);
  } else {
    state[0] = splitmix64(BigInt.asUintN(64, BigInt(seed)));
  }
  if (state[0] === 0n) state[0] = 0x5eedn;
  return state;
}

let nextId = 0;

// ------------------------------------------------------------
// scheduler

/**
 * The continuous-batching loop over one {@link Backend}. Create one per engine; submit
 * requests with {@link Scheduler.submit}; end it with {@link Scheduler.shutdown}.
 */
export class Scheduler {
  readonly #backend: Backend;
  readonly #eosIds: readonly number[];
  readonly #decode: DecodeFn | null;
  readonly #maxRunning: number;
  readonly #historySize: number;
  readonly #maxContext: number;
  readonly #observer: SchedulerObserver;

  /** Submitted, not yet admitted (FIFO). */
  #waiting: Request[] = [];
  /** Admitted: prefilling or running, in admission order. */
  #active: Request[] = [];
  /** Pinned sessions in use, so that one session never runs two requests. */
  #busySessions = new Set<BackendSession>();
  #closed = false;
  #shutdownError: EngineError | null = null;
  #stopLoop = false;
  #wake: (() => void) | null = null;
  #loop: Promise<void>;
  #lastWasPrefill = false;
  #tick = new MessageChannel();
  #stepAbort = new Int32Array(1);
  #decodeLogits: Float32Array<ArrayBuffer>;
  #history: FinishedSummary[] = [];
  #stats: SchedulerStats = {
    waiting: 0,
    prefilling: 0,
    running: 0,
    steps: 0,
    prefillSteps: 0,
    decodeSteps: 0,
    promptTokens: 0,
    generatedTokens: 0,
    finished: { stop: 0, length: 0, abort: 0, deadline: 0, error: 0 },
  };

  constructor(backend: Backend, options: SchedulerOptions = {}) {
    this.#backend = backend;
    this.#eosIds = options.eosIds ?? [];
    this.#decode = options.decode ?? null;
    this.#maxRunning = Math.max(
      1,
      Math.min(options.maxRunning ?? backend.maxBatch, backend.maxBatch),
    );
    this.#historySize = options.historySize ?? 256;
    this.#observer = options.observer ?? {};
    this.#maxContext = backend.maxContext > 0 ? backend.maxContext : Number.POSITIVE_INFINITY;
    this.#decodeLogits = new Float32Array(this.#maxRunning * backend.vocabSize);
    this.#loop = this.#run();
  }

  /** Most tokens (prompt + generated) one sequence may hold. */
  get maxContext(): number {
    return this.#maxContext;
  }

  /** Current counters (a copy). */
  get stats(): SchedulerStats {
    return {
      ...this.#stats,
      waiting: this.#waiting.length,
      prefilling: this.#active.filter((r) => r.status !== RequestStatus.RUNNING).length,
      running: this.#active.filter((r) => r.status === RequestStatus.RUNNING).length,
      finished: { ...this.#stats.finished },
    };
  }

  /** Summaries of the most recently finished requests, oldest first. */
  get history(): readonly FinishedSummary[] {
    return this.#history;
  }

  /** The summary of a finished request, by id (if still remembered). */
  finished(id: string): FinishedSummary | undefined {
    return this.#history.find((s) => s.id === id);
  }

  /** The status of a live request, by id. */
  statusOf(id: string): RequestStatus | undefined {
    return (this.#active.find((r) => r.id === id) ?? this.#waiting.find((r) => r.id === id))
      ?.status;
  }

  /**
   * Queues a request and returns its event stream. Throws an {@link EngineError} at once
   * for requests that can never run: an empty prompt, ids outside the vocabulary, more
   * tokens than the context holds, stop strings without a tokenizer, a pinned session
   * already in use, or a scheduler that is shutting down.
   */
  submit(request: GenerateRequest): RequestStream {
    if (this.#closed) {
      throw new EngineError("unavailable", "The engine is shutting down");
    }
    const req = this.#makeRequest(request);
    if (req.pinned) this.#busySessions.add(req.session!);
    const onAbort = () => this.#requestAbort(req);
    if (request.signal) {
      if (request.signal.aborted) {
        req.abortRequestedAtStep = this.#stats.steps;
      } else {
        request.signal.addEventListener("abort", onAbort, { once: true });
        req.detachSignal = () => request.signal!.removeEventListener("abort", onAbort);
      }
    }
    this.#waiting.push(req);
    this.#wakeUp();
    const channel = req.channel;
    return {
      id: req.id,
      get status() {
        return req.status;
      },
      abort: onAbort,
      [Symbol.asyncIterator]: () => channel[Symbol.asyncIterator](),
    };
  }

  /**
   * Stops the scheduler. New submissions fail at once. With `drain`, running and waiting
   * requests may finish for up to `timeoutMs` (default 30 s); whatever is left is aborted
   * (finish reason "abort" with an `unavailable` error), ephemeral sessions are freed, and
   * the loop ends. Idempotent.
   */
  async shutdown(options: { drain?: boolean; timeoutMs?: number } = {}): Promise<void> {
    this.#closed = true;
    if (options.drain && this.#active.length + this.#waiting.length > 0) {
      const until = Date.now() + (options.timeoutMs ?? 30_000);
      while (this.#active.length + this.#waiting.length > 0 && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    const error = new EngineError("unavailable", "The engine is shutting down");
    this.#shutdownError = error;
    for (const req of [...this.#waiting, ...this.#active]) {
      req.abortFlag[0] = 1;
      req.abortRequestedAtStep ??= this.#stats.steps;
    }
    this.#stepAbort[0] = 1;
    this.#stopLoop = true;
    this.#wakeUp();
    await this.#loop;
    this.#tick.port1.close();
    this.#tick.port2.close();
    // The loop has ended: finish whatever it left (nothing is in flight now).
    for (const req of [...this.#waiting, ...this.#active]) {
      await this.#finish(req, "abort", error);
    }
  }

  // ----------------------------------------------------------
  // submission

  #makeRequest(request: GenerateRequest): Request {
    const ids = request.promptIds;
    if (ids.length === 0) {
      throw new EngineError(
        "invalid_request",
        "The prompt is empty: at least one token is needed",
        "prompt",
      );
    }
    const vocab = this.#backend.vocabSize;
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= vocab) {
        throw new EngineError(
          "invalid_request",
          `Invalid token id "${id}" in the prompt: ids are integers in [0, ${vocab})`,
          "prompt",
        );
      }
    }
    const maxTokens = request.maxTokens;
    if (!Number.isInteger(maxTokens) || maxTokens < 0) {
      throw new EngineError("invalid_request", `Invalid "max_tokens": ${maxTokens}`, "max_tokens");
    }
    const session = request.session ?? null;
    const cached = session ? session.stats().nTokens : 0;
    const needed = cached + ids.length + maxTokens;
    if (cached + ids.length > this.#maxContext || needed > this.#maxContext) {
      const param = cached + ids.length > this.#maxContext ? "prompt" : "max_tokens";
      throw new EngineError(
        "invalid_request",
        `This model's maximum context length is ${this.#maxContext} tokens, but ${needed} were requested (${
          cached ? `${cached} in the session, ` : ""
        }${ids.length} in the prompt, ${maxTokens} to generate)`,
        param,
        "context_length_exceeded",
      );
    }
    if (session && this.#busySessions.has(session)) {
      throw new EngineError("conflict", "The session is already running a request");
    }
    const stop = request.stop ?? [];
    if (stop.some((s) => s.length > 0) && !this.#decode) {
      throw new EngineError(
        "invalid_request",
        "Stop strings need a tokenizer, and this model has none: use stop token ids",
        "stop",
      );
    }
    const s = request.sampling ?? {};
    const sample = {
      temperature: s.temperature ?? 0,
      topK: s.topK ?? 0,
      topP: s.topP ?? 1,
      nLogprobs: s.logprobs ?? 0,
    };
    if (!(sample.temperature >= 0 && sample.temperature <= 2)) {
      throw new EngineError(
        "invalid_request",
        `Invalid "temperature": ${sample.temperature}`,
        "temperature",
      );
    }
    if (!(sample.topP > 0 && sample.topP <= 1)) {
      throw new EngineError("invalid_request", `Invalid "top_p": ${sample.topP}`, "top_p");
    }
    if (!Number.isInteger(sample.topK) || sample.topK < 0) {
      throw new EngineError("invalid_request", `Invalid "top_k": ${sample.topK}`, "top_k");
    }
    if (!Number.isInteger(sample.nLogprobs) || sample.nLogprobs < 0 || sample.nLogprobs > 20) {
      throw new EngineError(
        "invalid_request",
        `Invalid "logprobs": ${sample.nLogprobs}`,
        "logprobs",
      );
    }
    const stopIds = new Set<number>(request.stopTokenIds ?? []);
    if (!request.ignoreEos) { for (const id of this.#eosIds) stopIds.add(id); }
    const id = request.id ?? `req-${++nextId}`;
    const req: Request = {
      id,
      status: RequestStatus.WAITING,
      prompt: Int32Array.from(ids),
      maxTokens,
      sample,
      stopIds,
      attention: request.attention ?? defaultAttention,
      pinned: session !== null,
      commit: request.commit ?? true,
      commitPending: false,
      deadline: request.deadline ?? Number.POSITIVE_INFINITY,
      rng: seedState(s.seed),
      detok: this.#decode ? new IncrementalDetokenizer(this.#decode, ids, stop) : null,
      channel: new Channel<SchedulerEvent>(() => this.#requestAbort(req)),
      abortFlag: new Int32Array(1),
      arrival: Date.now(),
      session,
      statsAtStart: null,
      prefilled: 0,
      pending: null,
      output: [],
      abortRequestedAtStep: null,
      firstTokenAt: null,
      arrivalPerf: performance.now(),
      lastTokenPerf: null,
      detachSignal: null,
    };
    return req;
  }

  #requestAbort(req: Request): void {
    if (req.abortRequestedAtStep !== null || req.status.startsWith("finished")) return;
    req.abortRequestedAtStep = this.#stats.steps;
    // A prefill in flight polls this flag and returns early; decode steps are short and
    // shared by the batch, so they are never interrupted for one request.
    req.abortFlag[0] = 1;
    this.#wakeUp();
  }

  /**
   * Resolves after one macrotask turn (the event loop polls I/O in between). A message to
   * ourselves costs ~20 µs where `setTimeout(0)` costs a timer tick (1–4 ms), which would
   * dominate a small model's decode step.
   */
  #yieldToEventLoop(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.#tick.port1.onmessage = () => resolve();
      this.#tick.port2.postMessage(null);
    });
  }

  #wakeUp(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  // ----------------------------------------------------------
  // the loop

  async #run(): Promise<void> {
    while (!this.#stopLoop) {
      if (this.#waiting.length === 0 && this.#active.length === 0) {
        await new Promise<void>((resolve) => this.#wake = resolve);
        continue;
      }
      try {
        await this.#step();
      } catch (e) {
        // A bug in the loop itself: fail what is in flight rather than hang it.
        const error = toEngineError(e, "The scheduler failed", false);
        for (const req of [...this.#active]) await this.#finish(req, "error", error);
      }
      // Let I/O (new requests, disconnects) in between steps.
      await this.#yieldToEventLoop();
    }
  }

  /** One iteration: schedule → execute → apply aborts → update (which emits). */
  async #step(): Promise<void> {
    await this.#applyAborts();
    const plan = this.#schedule();
    if (plan.kind === "idle") return;
    this.#stats.steps++;
    const outcome = await this.#execute(plan);
    await this.#applyAborts();
    await this.#update(outcome);
  }

  /** Admits waiting requests and picks this step's work. */
  #schedule(): Plan {
    while (this.#waiting.length > 0 && this.#active.length < this.#maxRunning) {
      this.#active.push(this.#waiting.shift()!);
    }
    const prefill = this.#active.find((r) =>
      r.status === RequestStatus.WAITING || r.status === RequestStatus.PREFILLING
    );
    const decode = this.#active.filter((r) => r.status === RequestStatus.RUNNING);
    // Alternate while both kinds of work exist, so that neither starves the other.
    const doPrefill = prefill !== undefined && (decode.length === 0 || !this.#lastWasPrefill);
    if (doPrefill) {
      this.#lastWasPrefill = true;
      const start = prefill.prefilled;
      const chunk = this.#backend.prefillChunk;
      let end = Math.min(prefill.prompt.length, start + chunk);
      if (prefill.prompt.length - end < chunk / 4) end = prefill.prompt.length; // short tail
      return { kind: "prefill", req: prefill, start, end };
    }
    this.#lastWasPrefill = false;
    if (decode.length > 0) return { kind: "decode", reqs: decode };
    return { kind: "idle" };
  }

  /** Runs the plan's one native call (plus session creation / commit around a prefill). */
  async #execute(plan: Plan): Promise<Outcome> {
    if (plan.kind === "idle") return plan;
    if (plan.kind === "prefill") {
      const req = plan.req;
      try {
        if (req.session === null) {
          req.session = await this.#backend.createSession(
            req.attention,
            req.prompt.length + req.maxTokens,
          );
        }
        if (req.statsAtStart === null) req.statsAtStart = req.session.stats();
        req.status = RequestStatus.PREFILLING;
        const last = plan.end === req.prompt.length;
        const logits = last && req.maxTokens > 0 ? new Float32Array(this.#backend.vocabSize) : null;
        this.#stats.prefillSteps++;
        // The commit (a MAGICPIG index build) joins the prompt's last prefill call when no
        // first token waits for it (on a GPU the index is then built beside that call). With a
        // token to sample it runs once that token is out: built beside the call, it would
        // delay the first token (0.75 s at 96K through 8192-token calls: the build shares the
        // GPU with the last call) to save the second one 0.2 s.
        const commitHere = last && req.commit && logits === null;
        await req.session.prefill(
          req.prompt.subarray(plan.start, plan.end),
          logits,
          req.abortFlag,
          commitHere,
        );
        if (last && req.commit && !commitHere) req.commitPending = true;
        return { kind: "prefill", req, end: plan.end, logits };
      } catch (e) {
        if (e instanceof AbortedError) return { kind: "idle" }; // applyAborts finishes it
        return { kind: "failed", reqs: [req], error: toEngineError(e, "Prefill failed") };
      }
    }
    const n = plan.reqs.length;
    const V = this.#backend.vocabSize;
    const tokens = Int32Array.from(plan.reqs, (r) => r.pending!);
    const logits = this.#decodeLogits.subarray(0, n * V);
    try {
      this.#stats.decodeSteps++;
      await this.#backend.decodeStep(
        plan.reqs.map((r) => r.session!),
        tokens,
        logits,
        this.#stepAbort,
      );
      return { kind: "decode", reqs: plan.reqs, logits };
    } catch (e) {
      if (e instanceof AbortedError) return { kind: "idle" }; // shutdown
      // Every argument of a step is the engine's own (sampled tokens, its sessions): a
      // native "invalid argument" here is an engine fault, answered 500, not 400.
      return {
        kind: "failed",
        reqs: plan.reqs,
        error: toEngineError(e, "Decode step failed", false),
      };
    }
  }

  /** Finishes requests whose abort or deadline arrived; frees their sessions. */
  async #applyAborts(): Promise<void> {
    const now = Date.now();
    for (const req of [...this.#waiting, ...this.#active]) {
      if (req.abortRequestedAtStep !== null) {
        await this.#finish(req, "abort", this.#shutdownError ?? undefined);
      } else if (now >= req.deadline) {
        await this.#finish(req, "deadline");
      }
    }
  }

  /** Samples, checks stop conditions, emits events. */
  async #update(outcome: Outcome): Promise<void> {
    switch (outcome.kind) {
      case "idle":
        return;
      case "failed":
        for (const req of outcome.reqs) await this.#finish(req, "error", outcome.error);
        return;
      case "prefill": {
        const req = outcome.req;
        if (req.status.startsWith("finished")) return;
        this.#stats.promptTokens += outcome.end - req.prefilled;
        req.prefilled = outcome.end;
        req.channel.push({ type: "prefill", done: req.prefilled, total: req.prompt.length });
        if (req.prefilled < req.prompt.length) return;
        if (req.maxTokens === 0) {
          await this.#finish(req, "length");
          return;
        }
        req.status = RequestStatus.RUNNING;
        await this.#accept(req, outcome.logits!);
        // The first token is on its way to the client; the commit runs before any decode
        // step reads the index. (A request that already finished: see #finish.)
        if (req.commitPending && !req.status.startsWith("finished")) {
          req.commitPending = false;
          try {
            await req.session!.commit();
          } catch (e) {
            await this.#finish(req, "error", toEngineError(e, "Commit failed", false));
          }
        }
        return;
      }
      case "decode": {
        const V = this.#backend.vocabSize;
        for (let i = 0; i < outcome.reqs.length; i++) {
          const req = outcome.reqs[i];
          if (req.status.startsWith("finished")) continue;
          await this.#accept(req, outcome.logits.subarray(i * V, (i + 1) * V));
        }
        return;
      }
    }
  }

  /** Samples one token for `req` from `logits`, emits it, and finishes the request if done. */
  async #accept(req: Request, logits: Float32Array<ArrayBuffer>): Promise<void> {
    let picked: SampleResult;
    try {
      picked = this.#backend.sample(logits, req.sample, req.rng);
    } catch (e) {
      await this.#finish(req, "error", toEngineError(e, "Sampling failed"));
      return;
    }
    const token = picked.token;
    req.output.push(token);
    req.firstTokenAt ??= Date.now();
    const nowPerf = performance.now();
    if (req.lastTokenPerf === null) {
      this.#observer.firstToken?.((nowPerf - req.arrivalPerf) / 1000);
    } else {
      this.#observer.interToken?.((nowPerf - req.lastTokenPerf) / 1000);
    }
    req.lastTokenPerf = nowPerf;
    this.#stats.generatedTokens++;
    const step = req.detok ? req.detok.push(token) : { text: "", stopped: false };
    req.channel.push({
      type: "token",
      id: token,
      index: req.output.length - 1,
      logprob: picked.logprob,
      top: picked.top,
      text: step.text,
    });
    const kvTokens = (req.statsAtStart?.nTokens ?? 0) + req.prompt.length + req.output.length - 1;
    if (step.stopped || req.stopIds.has(token)) {
      await this.#finish(req, "stop");
    } else if (req.output.length >= req.maxTokens || kvTokens + 1 > this.#maxContext) {
      await this.#finish(req, "length");
    } else {
      req.pending = token;
    }
  }

  /** Ends a request: final event, session freed (ephemeral) or released (pinned). */
  async #finish(req: Request, reason: FinishReason, error?: EngineError): Promise<void> {
    if (req.status.startsWith("finished")) return;
    if (req.commitPending) {
      // Finished at its first token: a pinned session still gets the commit its owner
      // expects; an ephemeral one is freed below, so its index is never built.
      req.commitPending = false;
      if (req.pinned && req.session) {
        try {
          await req.session.commit();
        } catch (e) {
          if (reason !== "error") {
            reason = "error";
            error = toEngineError(e, "Commit failed", false);
          }
        }
      }
    }
    req.status = finishedStatus[reason];
    this.#waiting = this.#waiting.filter((r) => r !== req);
    this.#active = this.#active.filter((r) => r !== req);
    req.detachSignal?.();
    let keysFraction = 1;
    let method = req.attention.method;
    if (req.session && req.statsAtStart) {
      try {
        const end = req.session.stats();
        method = end.method;
        const offloaded = end.keysOffloaded - req.statsAtStart.keysOffloaded;
        if (offloaded > 0) {
          keysFraction = (end.keysAttended - req.statsAtStart.keysAttended) / offloaded;
        }
      } catch {
        // Counters are informational; a failure here must not lose the request's result.
      }
    }
    if (req.pinned) {
      this.#busySessions.delete(req.session!);
    } else if (req.session) {
      const session = req.session;
      req.session = null;
      try {
        await session.close();
      } catch {
        // Freeing cannot be retried meaningfully; the backend's finalizer is the backstop.
      }
    }
    const text = reason === "error" || !req.detok ? "" : req.detok.flush();
    this.#stats.finished[reason]++;
    const now = Date.now();
    const summary: FinishedSummary = {
      id: req.id,
      reason,
      promptTokens: req.prompt.length,
      completionTokens: req.output.length,
      abortRequestedAtStep: req.abortRequestedAtStep,
      finishedAtStep: this.#stats.steps,
      ttftMs: req.firstTokenAt === null ? null : req.firstTokenAt - req.arrival,
      totalMs: now - req.arrival,
    };
    this.#history.push(summary);
    if (this.#history.length > this.#historySize) this.#history.shift();
    const usage: Usage = {
      promptTokens: req.prompt.length,
      completionTokens: req.output.length,
      cachedTokens: req.pinned ? req.statsAtStart?.nTokens ?? 0 : 0,
      attention: method,
      keysFraction,
    };
    try {
      this.#observer.finished?.(summary, usage);
    } catch {
      // Metrics must never break a request.
    }
    req.channel.push({
      type: "finish",
      reason,
      text,
      outputIds: req.output,
      usage,
      ...(error ? { error } : {}),
    });
    req.channel.close();
  }
}
