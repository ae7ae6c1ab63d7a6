/**
 * A fake native layer for scheduler unit tests only (architecture.md §6 allows it there):
 * a deterministic toy "model" whose greedy next token after `t` is `(3 t + 1) % vocab`,
 * sessions that count their tokens, and a log of every native call so tests can check the
 * order of prefill chunks and decode batches. Server tests use the real library.
 *
 * @module
 */
import type { AttentionOptions } from "../engine/attention.ts";
import {
  AbortedError,
  type Backend,
  type BackendSession,
  type SampleParams,
  type SampleResult,
  type SessionStats,
} from "../engine/backend.ts";

/** The toy model's greedy successor of `t`. */
export function nextToken(t: number, vocab: number): number {
  return (3 * t + 1) % vocab;
}

/** One logged native call. */
export type FakeCall =
  | { kind: "create"; session: number }
  | { kind: "prefill"; session: number; n: number; aborted: boolean; commit: boolean }
  | { kind: "commit"; session: number }
  | { kind: "decode"; sessions: number[] }
  | { kind: "close"; session: number };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A fake session. */
export class FakeSession implements BackendSession {
  readonly handle: number;
  readonly tokens: number[] = [];
  closed = false;
  #backend: FakeBackend;
  #attention: AttentionOptions;
  #attended = 0;
  #offloaded = 0;

  constructor(backend: FakeBackend, handle: number, attention: AttentionOptions) {
    this.#backend = backend;
    this.handle = handle;
    this.#attention = attention;
  }

  async prefill(
    tokens: Int32Array<ArrayBuffer>,
    logits: Float32Array<ArrayBuffer> | null,
    abort: Int32Array<ArrayBuffer> | null,
    commit: boolean,
  ): Promise<void> {
    if (this.closed) throw new Error("Session is closed");
    // Simulated work: `prefillMsPerToken` per token, polling the abort flag like the
    // native loop does between chunks.
    const before = this.tokens.length;
    for (let i = 0; i < tokens.length; i++) {
      if (abort && abort[0] !== 0) {
        this.tokens.length = before;
        this.#backend.calls.push({
          kind: "prefill",
          session: this.handle,
          n: tokens.length,
          aborted: true,
          commit,
        });
        throw new AbortedError();
      }
      if (this.#backend.prefillMsPerToken > 0) await sleep(this.#backend.prefillMsPerToken);
      this.tokens.push(tokens[i]);
    }
    if (this.#backend.prefillMsPerToken === 0) await sleep(0);
    this.#backend.calls.push({
      kind: "prefill",
      session: this.handle,
      n: tokens.length,
      aborted: false,
      commit,
    });
    if (commit) await this.commit(); // the same native call, logged after the prefill
    if (logits) this.#backend.fillLogits(this.tokens[this.tokens.length - 1], logits);
  }

  /** Commits finished (a commit is logged in `calls` when it starts). */
  commits = 0;

  async commit(): Promise<void> {
    this.#backend.calls.push({ kind: "commit", session: this.handle });
    if (this.#backend.commitMs > 0) await sleep(this.#backend.commitMs);
    this.commits++;
  }

  /** Called by the fake decode step. */
  append(token: number): void {
    this.tokens.push(token);
    if (this.#attention.method !== "dense") {
      this.#offloaded += this.tokens.length;
      this.#attended += this.tokens.length / 4;
    }
  }

  stats(): SessionStats {
    return {
      nTokens: this.tokens.length,
      keysAttended: this.#attended,
      keysOffloaded: this.#offloaded,
      method: this.#attention.method,
    };
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.#backend.calls.push({ kind: "close", session: this.handle });
    }
    return Promise.resolve();
  }
}

/** Options of {@link FakeBackend}. */
export interface FakeBackendOptions {
  vocabSize?: number;
  maxContext?: number;
  maxBatch?: number;
  prefillChunk?: number;
  /** Simulated prefill time per token. */
  prefillMsPerToken?: number;
  /** Simulated time per decode step. */
  decodeMs?: number;
  /** Simulated time of a commit (an index build). */
  commitMs?: number;
}

/** The fake backend. */
export class FakeBackend implements Backend {
  readonly vocabSize: number;
  readonly maxContext: number;
  readonly maxBatch: number;
  readonly prefillChunk: number;
  prefillMsPerToken: number;
  decodeMs: number;
  commitMs: number;
  readonly calls: FakeCall[] = [];
  readonly sessions: FakeSession[] = [];
  /** When set, the next decode step throws this. */
  failNextDecode: Error | null = null;

  constructor(options: FakeBackendOptions = {}) {
    this.vocabSize = options.vocabSize ?? 32;
    this.maxContext = options.maxContext ?? 64;
    this.maxBatch = options.maxBatch ?? 4;
    this.prefillChunk = options.prefillChunk ?? 8;
    this.prefillMsPerToken = options.prefillMsPerToken ?? 0;
    this.decodeMs = options.decodeMs ?? 0;
    this.commitMs = options.commitMs ?? 0;
  }

  fillLogits(last: number, out: Float32Array<ArrayBuffer>): void {
    const want = nextToken(last, this.vocabSize);
    for (let i = 0; i < this.vocabSize; i++) out[i] = i === want ? 5 : -Math.abs(i - want) / 8;
  }

  createSession(attention: AttentionOptions): Promise<BackendSession> {
    const s = new FakeSession(this, this.sessions.length + 1, attention);
    this.sessions.push(s);
    this.calls.push({ kind: "create", session: s.handle });
    return Promise.resolve(s);
  }

  async decodeStep(
    sessions: readonly BackendSession[],
    tokens: Int32Array<ArrayBuffer>,
    logits: Float32Array<ArrayBuffer>,
    abort: Int32Array<ArrayBuffer> | null,
  ): Promise<void> {
    await sleep(this.decodeMs);
    if (this.failNextDecode) {
      const e = this.failNextDecode;
      this.failNextDecode = null;
      throw e;
    }
    if (abort && abort[0] !== 0) throw new AbortedError();
    const fakes = sessions as readonly FakeSession[];
    if (new Set(fakes).size !== fakes.length) throw new Error("Duplicate session in a batch");
    this.calls.push({ kind: "decode", sessions: fakes.map((s) => s.handle) });
    fakes.forEach((s, i) => {
      if (s.closed) throw new Error("Session is closed");
      s.append(tokens[i]);
      this.fillLogits(tokens[i], logits.subarray(i * this.vocabSize, (i + 1) * this.vocabSize));
    });
  }

  sample(
    logits: Float32Array<ArrayBuffer>,
    params: SampleParams,
    rngState: BigUint64Array<ArrayBuffer>,
  ): SampleResult {
    const V = logits.length;
    let max = -Infinity;
    for (let i = 0; i < V; i++) max = Math.max(max, logits[i]);
    let sum = 0;
    for (let i = 0; i < V; i++) sum += Math.exp(logits[i] - max);
    const lse = max + Math.log(sum);
    let token = 0;
    if (params.temperature === 0) {
      for (let i = 1; i < V; i++) if (logits[i] > logits[token]) token = i;
    } else {
      // xorshift64 on the caller's state, then inverse-CDF on the tempered softmax.
      let x = rngState[0];
      x ^= (x << 13n) & 0xffffffffffffffffn;
      x ^= x >> 7n;
      x ^= (x << 17n) & 0xffffffffffffffffn;
      rngState[0] = x;
      const u = Number(x >> 11n) / 2 ** 53;
      const w = Array.from(logits, (l) => Math.exp((l - max) / params.temperature));
      const total = w.reduce((a, b) => a + b, 0);
      let acc = 0;
      token = V - 1;
      for (let i = 0; i < V; i++) {
        acc += w[i] / total;
        if (u < acc) {
          token = i;
          break;
        }
      }
    }
    const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b] - logits[a]);
    return {
      token,
      logprob: logits[token] - lse,
      top: order.slice(0, params.nLogprobs).map((id) => ({ id, logprob: logits[id] - lse })),
    };
  }
}
