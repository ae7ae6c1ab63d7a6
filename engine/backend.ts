/**
 * The narrow surface of the native layer that the scheduler drives: sessions (prefill,
 * commit, info, close), one batched decode step, and token sampling. The real
 * implementation adapts `ffi/native.ts` ({@link nativeBackend} in `native_backend.ts`);
 * scheduler unit tests may pass a fake, everything else uses the real one.
 *
 * Threading: the scheduler awaits at most one long call at a time, so an implementation
 * may assume calls on one engine never overlap when only the scheduler drives it.
 *
 * @module
 */
import type { AttentionMethod, AttentionOptions } from "./attention.ts";

/** Counters of a session (mp_session_info), as plain numbers. */
export interface SessionStats {
  /** Tokens in the session's KV cache. */
  nTokens: number;
  /** Σ of keys attended in the offloaded (sparse) region, over layers, heads and steps. */
  keysAttended: number;
  /** Σ of the offloaded region's size over the same. */
  keysOffloaded: number;
  /** The session's attention method. */
  method: AttentionMethod;
}

/**
 * One sequence's native state: its KV cache and (for MagicPIG) LSH index. A session is
 * either *ephemeral* (the scheduler creates it for one request and closes it at the end)
 * or *pinned* (a session manager owns it; the scheduler only appends to it).
 */
export interface BackendSession {
  /**
   * Appends `tokens` with dense attention. When `logits` is given it receives the logits
   * of the last token. A non-zero `abort[0]` (polled between layers or chunks) ends the
   * call early with {@link AbortedError}; the session is then as before the call.
   * `commit`: the call ends the turn, as {@link commit} right after it would, in one native
   * call (on a GPU the MagicPIG index is then built beside the prefill, each layer while the
   * GPU computes the next). If only the commit fails, the tokens stay prefilled and the error
   * says so.
   */
  prefill(
    tokens: Int32Array<ArrayBuffer>,
    logits: Float32Array<ArrayBuffer> | null,
    abort: Int32Array<ArrayBuffer> | null,
    commit: boolean,
  ): Promise<void>;
  /** Ends a turn: MagicPIG indexes the prompt's keys; a no-op for dense attention. */
  commit(): Promise<void>;
  /** The session's counters. */
  stats(): SessionStats;
  /** Frees the native session. Idempotent. */
  close(): Promise<void>;
}

/** Sampling parameters for one token (mp_sampling_params). */
export interface SampleParams {
  /** 0: greedy (first maximum wins). */
  temperature: number;
  /** 0: off. */
  topK: number;
  /** 1: off. */
  topP: number;
  /** Most likely alternatives to report with their log-probabilities (0..20). */
  nLogprobs: number;
}

/** The outcome of {@link Backend.sample}. */
export interface SampleResult {
  token: number;
  /** log-softmax of the unmodified logits at `token`. */
  logprob: number;
  /** The `nLogprobs` most likely tokens, most likely first. */
  top: { id: number; logprob: number }[];
}

/** The native layer as the scheduler sees it. */
export interface Backend {
  /** Logits per position. */
  readonly vocabSize: number;
  /** Most tokens one session may hold (the model's trained context). */
  readonly maxContext: number;
  /** Most sessions in one {@link Backend.decodeStep}. */
  readonly maxBatch: number;
  /** Prompt tokens per prefill call the scheduler issues (interleaving granularity). */
  readonly prefillChunk: number;
  /** Creates an empty session with room reserved for `reserveTokens`. */
  createSession(attention: AttentionOptions, reserveTokens: number): Promise<BackendSession>;
  /**
   * Appends `tokens[i]` to `sessions[i]` for every i and writes the logits of each new
   * position to `logits[i * vocabSize ...]`. On error or abort no session changed.
   */
  decodeStep(
    sessions: readonly BackendSession[],
    tokens: Int32Array<ArrayBuffer>,
    logits: Float32Array<ArrayBuffer>,
    abort: Int32Array<ArrayBuffer> | null,
  ): Promise<void>;
  /** Picks a token from `logits` (one row), advancing the caller-owned `rngState`. */
  sample(
    logits: Float32Array<ArrayBuffer>,
    params: SampleParams,
    rngState: BigUint64Array<ArrayBuffer>,
  ): SampleResult;
}

/** Thrown by a backend call that stopped because its abort flag was set. */
export class AbortedError extends Error {
  constructor(message = "The native call was aborted") {
    super(message);
    this.name = "AbortedError";
  }
}

// ------------------------------------------------------------
// pinned sessions (the session manager's side of the native layer)

/** Where a session's bytes are (mp_session_info), as plain numbers. */
export interface SessionMemory {
  /** Tokens in the KV cache. */
  nTokens: number;
  /** Tokens covered by the LSH index (they cannot be truncated away). */
  nIndexed: number;
  /** Host bytes held for K, V (allocated capacity) and key norms. */
  hostKvBytes: number;
  /** Host bytes held for the LSH index. */
  hostIndexBytes: number;
  /** Device bytes held for this session (0 on the CPU backend). */
  gpuBytes: number;
}

/**
 * A session that a session manager keeps between requests: a {@link BackendSession} that
 * can also be rolled back (a forked or aborted turn), written to disk, and measured.
 */
export interface PinnedSession extends BackendSession {
  /** Drops every token after the first `n` (n >= the indexed length). */
  truncate(n: number): Promise<void>;
  /** Writes a checksummed snapshot to `path` atomically (`path`.tmp, fsync, rename). */
  save(path: string): Promise<void>;
  /** Lengths and byte counts (cheap, synchronous). */
  memory(): SessionMemory;
}

/** Why a snapshot could not be restored. */
export type SnapshotFailure = "corrupt" | "incompatible" | "io";

/** A snapshot that could not be restored; `reason` says whether it is damaged. */
export class SnapshotError extends Error {
  readonly reason: SnapshotFailure;
  constructor(reason: SnapshotFailure, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SnapshotError";
    this.reason = reason;
  }
}

/** Creates and restores {@link PinnedSession}s on one engine. */
export interface SessionStore {
  /** Host bytes of K and V per token (all layers), for admission estimates. */
  readonly kvBytesPerToken: number;
  /** An empty session with room for `reserveTokens`. */
  create(attention: AttentionOptions, reserveTokens: number): Promise<PinnedSession>;
  /** Restores a snapshot; throws a {@link SnapshotError}. */
  load(path: string): Promise<PinnedSession>;
}
