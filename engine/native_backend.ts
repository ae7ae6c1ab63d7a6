/**
 * The scheduler's {@link Backend} over the real native library (`ffi/native.ts`):
 * sessions, batched decode steps and sampling on one engine. Native statuses become
 * engine errors where the scheduler handles them: an aborted call becomes
 * {@link AbortedError}; everything else stays a `MagicpigError`, which the scheduler turns
 * into an `EngineError` by its code (out of memory → overloaded).
 *
 * @example
 * ```ts
 * import { nativeBackend } from "./native_backend.ts";
 * import { Scheduler } from "./scheduler.ts";
 * declare const engine: import("../ffi/native.ts").Engine;
 * const scheduler = new Scheduler(nativeBackend(engine));
 * ```
 *
 * @module
 */
import {
  AttentionMethod as MethodCode,
  Backend as BackendCode,
  decodeStep,
  DType,
  type Engine,
  MagicpigError,
  sample,
  Session,
} from "../ffi/native.ts";
import type { AttentionMethod, AttentionOptions } from "./attention.ts";
import {
  AbortedError,
  type Backend,
  type PinnedSession,
  type SampleParams,
  type SampleResult,
  type SessionMemory,
  type SessionStats,
  type SessionStore,
  SnapshotError,
} from "./backend.ts";

const codeOf: Record<AttentionMethod, number> = {
  dense: MethodCode.DENSE,
  magicpig: MethodCode.MAGICPIG,
  topk: MethodCode.TOPK,
  quest: MethodCode.QUEST,
  oracle: MethodCode.ORACLE,
};
const methodOf = new Map<number, AttentionMethod>(
  Object.entries(codeOf).map(([name, code]) => [code, name as AttentionMethod]),
);

/** Defaults of the engine (mp_engine_params) the scheduler plans with. */
const DEFAULT_MAX_BATCH = 16;
const DEFAULT_PREFILL_CHUNK = 512;
/**
 * On the CUDA backend every prefill call streams the session's earlier KV from host memory
 * once per layer, so small chunks cost PCIe traffic quadratic in the prompt (on the H200
 * a 96K prompt in 512-token chunks took 47.6 s against 13.6 s in one call); 8192-token
 * chunks keep that to a few percent while a long prompt still yields to decode steps.
 */
const DEFAULT_PREFILL_CHUNK_CUDA = 8192;

function rethrow(e: unknown): never {
  if (e instanceof MagicpigError && e.code === "aborted") throw new AbortedError(e.message);
  throw e;
}

/** A native session as the scheduler and the session manager see it. */
export class NativeSession implements PinnedSession {
  /** The native session (a session manager keeps it between requests). */
  readonly session: Session;

  constructor(session: Session) {
    this.session = session;
  }

  async prefill(
    tokens: Int32Array<ArrayBuffer>,
    logits: Float32Array<ArrayBuffer> | null,
    abort: Int32Array<ArrayBuffer> | null,
    commit: boolean,
  ): Promise<void> {
    try {
      await this.session.prefill(tokens, {
        logits: logits ?? undefined,
        abort: abort ?? undefined,
        commit,
      });
    } catch (e) {
      rethrow(e);
    }
  }

  commit(): Promise<void> {
    return this.session.commit();
  }

  stats(): SessionStats {
    const info = this.session.info();
    return {
      nTokens: info.nTokens,
      keysAttended: info.keysAttended,
      keysOffloaded: info.keysOffloaded,
      method: methodOf.get(info.method) ?? "dense",
    };
  }

  truncate(n: number): Promise<void> {
    return this.session.truncate(n);
  }

  save(path: string): Promise<void> {
    return this.session.save(path);
  }

  memory(): SessionMemory {
    const info = this.session.info();
    return {
      nTokens: info.nTokens,
      nIndexed: info.nIndexed,
      hostKvBytes: Number(info.hostKvBytes),
      hostIndexBytes: Number(info.hostIndexBytes),
      gpuBytes: Number(info.gpuBytes),
    };
  }

  close(): Promise<void> {
    return this.session.close();
  }
}

function nativeAttention(attention: AttentionOptions) {
  return {
    method: codeOf[attention.method],
    lshK: attention.lshK,
    lshL: attention.lshL,
    sinks: attention.sinks,
    window: attention.window,
    genBuffer: attention.genBuffer,
    budget: attention.budget,
    pageSize: attention.pageSize,
    seed: attention.seed,
    denseLayers: attention.denseLayers,
  };
}

/** Options of {@link nativeBackend}. */
export interface NativeBackendOptions {
  /** Most sessions per decode step (the engine's `max_batch`; default 16). */
  maxBatch?: number;
  /** Prompt tokens per prefill call the scheduler issues (default 512; 8192 on CUDA). */
  prefillChunk?: number;
}

/** The {@link Backend} of one native engine. */
export function nativeBackend(engine: Engine, options: NativeBackendOptions = {}): Backend {
  const config = engine.config;
  const cuda = engine.info().backend === BackendCode.CUDA;
  return {
    vocabSize: config.vocab_size,
    maxContext: config.max_context,
    maxBatch: options.maxBatch ?? DEFAULT_MAX_BATCH,
    prefillChunk: options.prefillChunk ??
      (cuda ? DEFAULT_PREFILL_CHUNK_CUDA : DEFAULT_PREFILL_CHUNK),
    async createSession(attention: AttentionOptions, reserveTokens: number) {
      const session = await Session.create(engine, {
        attention: nativeAttention(attention),
        reserveTokens,
      });
      return new NativeSession(session);
    },
    async decodeStep(sessions, tokens, logits, abort) {
      try {
        await decodeStep(
          engine,
          sessions.map((s) => (s as NativeSession).session),
          tokens,
          logits,
          abort ?? undefined,
        );
      } catch (e) {
        rethrow(e);
      }
    },
    sample(logits: Float32Array<ArrayBuffer>, params: SampleParams, rngState): SampleResult {
      return sample(logits, params, rngState);
    },
  };
}

/**
 * The {@link SessionStore} of one native engine: pinned sessions and their snapshots.
 * Load failures become {@link SnapshotError}s: a bad checksum or format is "corrupt", a
 * snapshot of another model shape "incompatible", a file that cannot be read "io".
 */
export function nativeSessionStore(engine: Engine): SessionStore {
  const c = engine.config;
  const elem = engine.info().kvDtype === DType.F32 ? 4 : 2;
  return {
    kvBytesPerToken: 2 * c.n_layers * c.n_kv_heads * c.head_dim * elem,
    async create(attention: AttentionOptions, reserveTokens: number) {
      const session = await Session.create(engine, {
        attention: nativeAttention(attention),
        reserveTokens,
      });
      return new NativeSession(session);
    },
    async load(path: string) {
      try {
        return new NativeSession(await Session.load(engine, path));
      } catch (e) {
        if (!(e instanceof MagicpigError)) throw e;
        const reason = e.code === "corrupt"
          ? "corrupt"
          : e.code === "invalid_argument"
          ? "incompatible"
          : "io";
        throw new SnapshotError(reason, e.message, { cause: e });
      }
    },
  };
}
