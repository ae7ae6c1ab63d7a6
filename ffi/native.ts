/**
 * Typed wrappers over libmagicpig: statuses become {@link MagicpigError}s carrying the C
 * message, long calls are nonblocking and serialised per handle, and every buffer handed
 * to a nonblocking call stays referenced until the call settles.
 *
 * @example
 * ```ts
 * import { Engine, deviceCount } from "./native.ts";
 * console.log(deviceCount());
 * ```
 *
 * @module
 */
import { lib } from "./lib.ts";
import { type FieldValue } from "./_struct.ts";
import * as L from "./layouts.ts";

// ------------------------------------------------------------
// enums (mirrors of magicpig.h)

/** enum mp_status */
export const Status = {
  OK: 0,
  ABORTED: 1,
  INVALID: -1,
  OOM: -2,
  CUDA: -3,
  CUDA_FATAL: -4,
  NO_DEVICE: -5,
  IO: -6,
  UNSUPPORTED: -7,
  STATE: -8,
  CORRUPT: -9,
  INTERNAL: -10,
} as const;

/** enum mp_dtype */
export const DType = { F32: 0, F16: 1, BF16: 2 } as const;
/** A dtype code. */
export type DTypeCode = (typeof DType)[keyof typeof DType];

/** enum mp_backend */
export const Backend = { AUTO: 0, CPU: 1, CUDA: 2 } as const;

/** enum mp_rope_style */
export const RopeStyle = { INTERLEAVED: 0, HALF: 1 } as const;

/** enum mp_rope_scaling */
export const RopeScaling = { NONE: 0, LLAMA3: 1 } as const;

/** enum mp_tensor_kind */
export const TensorKind = {
  TOKEN_EMBD: 0,
  OUTPUT_NORM: 1,
  OUTPUT: 2,
  ATTN_NORM: 3,
  WQ: 4,
  WK: 5,
  WV: 6,
  WO: 7,
  FFN_NORM: 8,
  W_GATE: 9,
  W_DOWN: 10,
  W_UP: 11,
} as const;

/** enum mp_attention_method */
export const AttentionMethod = { DENSE: 0, MAGICPIG: 1, TOPK: 2, QUEST: 3, ORACLE: 4 } as const;

// ------------------------------------------------------------
// errors

/** Names of the status codes, for messages and `MagicpigError.code`. */
export type StatusName =
  | "aborted"
  | "invalid_argument"
  | "out_of_memory"
  | "cuda_error"
  | "cuda_fatal"
  | "no_device"
  | "io_error"
  | "unsupported"
  | "invalid_state"
  | "corrupt"
  | "internal";

const statusNames: Record<number, StatusName> = {
  [Status.ABORTED]: "aborted",
  [Status.INVALID]: "invalid_argument",
  [Status.OOM]: "out_of_memory",
  [Status.CUDA]: "cuda_error",
  [Status.CUDA_FATAL]: "cuda_fatal",
  [Status.NO_DEVICE]: "no_device",
  [Status.IO]: "io_error",
  [Status.UNSUPPORTED]: "unsupported",
  [Status.STATE]: "invalid_state",
  [Status.CORRUPT]: "corrupt",
  [Status.INTERNAL]: "internal",
};

/** A non-OK status from the native library, with its message. */
export class MagicpigError extends Error {
  /** The C status code (enum mp_status). */
  readonly status: number;
  /** The status as a name. */
  readonly code: StatusName;
  constructor(status: number, message: string) {
    super(message);
    this.name = "MagicpigError";
    this.status = status;
    this.code = statusNames[status] ?? "internal";
  }
}

const ERR_CAP = 1024;

/** A fresh caller-owned error buffer (one per call: nonblocking calls run concurrently). */
export function errorBuffer(): Uint8Array<ArrayBuffer> {
  return new Uint8Array(ERR_CAP);
}

/** Throws a {@link MagicpigError} unless `status` is OK; `what` prefixes the message. */
export function unwrap(status: number, err: Uint8Array, what: string): void {
  if (status === Status.OK) return;
  const end = err.indexOf(0);
  const msg = new TextDecoder().decode(err.subarray(0, end < 0 ? err.length : end));
  throw new MagicpigError(status, `${what}: ${msg || statusNames[status] || `status ${status}`}`);
}

/** A NUL-terminated UTF-8 copy of `s`, for `const char *` parameters. */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(s);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** Reads a NUL-terminated C string the library owns. */
export function readCString(p: Deno.PointerValue): string {
  if (p === null) return "";
  return new Deno.UnsafePointerView(p).getCString();
}

/** Bytes of any typed array, for `void *` / `float *` parameters. */
export function bytesOf(a: ArrayBufferView<ArrayBuffer>): Uint8Array<ArrayBuffer> {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * Runs async tasks one at a time, in order: calls on one native handle are never
 * concurrent (magicpig.h's threading rule).
 */
export class SerialQueue {
  #tail: Promise<unknown> = Promise.resolve();

  /** Runs `task` after every task queued before it has settled. */
  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(task, task);
    this.#tail = result.then(() => undefined, () => undefined);
    return result;
  }
}

// ------------------------------------------------------------
// library

/** MP_ABI_VERSION of the loaded library. */
export function abiVersion(): number {
  return lib().mp_abi_version();
}

/** Usable CUDA devices (0: CPU only). */
export function deviceCount(): number {
  return lib().mp_device_count();
}

/** The library's build description. */
export function buildInfo(): string {
  return readCString(lib().mp_build_info());
}

/** Sets the CPU thread count (n <= 0: all cores); returns the count in effect. */
export function setThreads(n: number): number {
  return lib().mp_set_num_threads(n);
}

/** The CPU thread count in effect. */
export function getThreads(): number {
  return lib().mp_get_num_threads();
}

/** sizeof() of a public struct, by name (0 if unknown). */
export function structSize(name: string): number {
  return Number(lib().mp_struct_size(cstr(name)));
}

// ------------------------------------------------------------
// engine

/** Model shape and numerics (mp_model_config without `size`). */
export interface ModelConfig {
  n_layers: number;
  dim: number;
  n_heads: number;
  n_kv_heads: number;
  head_dim: number;
  ffn_dim: number;
  vocab_size: number;
  max_context: number;
  rms_eps: number;
  tied_embeddings: boolean;
  rope: {
    theta: number;
    style: number;
    scaling: number;
    factor: number;
    low_freq_factor: number;
    high_freq_factor: number;
    original_max_position: number;
  };
}

/** Options of {@link Engine.create}; unset fields take the library's defaults. */
export interface EngineOptions {
  backend?: number;
  device?: number;
  weightDtype?: number;
  kvDtype?: number;
  gpuMemoryBudget?: bigint;
  maxBatch?: number;
  prefillChunk?: number;
}

/** What {@link Engine.info} reports. */
export interface EngineInfo {
  backend: number;
  device: number;
  weightDtype: number;
  kvDtype: number;
  weightBytes: bigint;
  gpuBytesInUse: bigint;
  gpuBytesPeak: bigint;
  gpuBytesTotal: bigint;
  deviceName: string;
}

const engineRegistry = new FinalizationRegistry<Deno.PointerValue>((p) => {
  if (p !== null) lib().mp_engine_free(p);
});

/** One model's weights on one backend (mp_engine). Close it, or use `using`. */
export class Engine {
  #ptr: Deno.PointerValue;
  /** Serialises every call on this engine and its sessions. */
  readonly queue = new SerialQueue();
  readonly config: ModelConfig;

  private constructor(ptr: Deno.PointerValue, config: ModelConfig) {
    this.#ptr = ptr;
    this.config = config;
    engineRegistry.register(this, ptr, this);
  }

  /** Creates an engine with unloaded weights. */
  static create(config: ModelConfig, options: EngineOptions = {}): Engine {
    const defaults = new Uint8Array(L.engineParams.size);
    lib().mp_engine_default_params(defaults);
    const params: Record<string, FieldValue> = {
      model: {
        size: BigInt(L.modelConfig.size),
        ...config,
        tied_embeddings: config.tied_embeddings ? 1 : 0,
      } as unknown as Record<string, FieldValue>,
    };
    if (options.backend !== undefined) params.backend = options.backend;
    if (options.device !== undefined) params.device = options.device;
    if (options.weightDtype !== undefined) params.weight_dtype = options.weightDtype;
    if (options.kvDtype !== undefined) params.kv_dtype = options.kvDtype;
    if (options.gpuMemoryBudget !== undefined) params.gpu_memory_budget = options.gpuMemoryBudget;
    if (options.maxBatch !== undefined) params.max_batch = options.maxBatch;
    if (options.prefillChunk !== undefined) params.prefill_chunk = options.prefillChunk;
    const buf = L.engineParams.encode(params, defaults);
    const out = new BigUint64Array(1);
    const err = errorBuffer();
    unwrap(
      lib().mp_engine_create(buf, bytesOf(out), err, BigInt(err.length)),
      err,
      "Cannot create the engine",
    );
    return new Engine(Deno.UnsafePointer.create(out[0]), config);
  }

  /** The native handle; throws once closed. */
  get pointer(): Deno.PointerObject {
    if (this.#ptr === null) throw new Error("Engine is closed");
    return this.#ptr;
  }

  /** Copies one tensor from memory into the engine. */
  loadTensor(
    kind: number,
    layer: number,
    srcDtype: number,
    shape: readonly number[],
    data: ArrayBufferView<ArrayBuffer>,
  ): void {
    const err = errorBuffer();
    const s = new BigInt64Array(shape.map((x) => BigInt(x)));
    unwrap(
      lib().mp_engine_load_tensor(
        this.pointer,
        kind,
        layer,
        srcDtype,
        bytesOf(s),
        shape.length,
        bytesOf(data),
        BigInt(data.byteLength),
        err,
        BigInt(err.length),
      ),
      err,
      `Cannot load tensor kind ${kind} of layer ${layer}`,
    );
  }

  /** Loads one tensor by reading `nbytes` at `offset` of a file, off the main thread. */
  loadTensorFile(
    kind: number,
    layer: number,
    srcDtype: number,
    shape: readonly number[],
    path: string,
    offset: number | bigint,
    nbytes: number | bigint,
  ): Promise<void> {
    return this.queue.run(async () => {
      const err = errorBuffer();
      const s = new BigInt64Array(shape.map((x) => BigInt(x)));
      const p = cstr(path);
      const status = await lib().mp_engine_load_tensor_file_async(
        this.pointer,
        kind,
        layer,
        srcDtype,
        bytesOf(s),
        shape.length,
        p,
        BigInt(offset),
        BigInt(nbytes),
        err,
        BigInt(err.length),
      );
      unwrap(status, err, `Cannot load tensor kind ${kind} of layer ${layer} from "${path}"`);
    });
  }

  /** Fills every weight with seeded random values (benchmarks). */
  initRandom(seed: bigint, scale: number): Promise<void> {
    return this.queue.run(async () => {
      const err = errorBuffer();
      const status = await lib().mp_engine_init_random_async(
        this.pointer,
        seed,
        scale,
        err,
        BigInt(err.length),
      );
      unwrap(status, err, "Cannot initialise random weights");
    });
  }

  /** Checks every tensor is loaded and prepares the backend. */
  finalize(): Promise<void> {
    return this.queue.run(async () => {
      const err = errorBuffer();
      const status = await lib().mp_engine_finalize_async(this.pointer, err, BigInt(err.length));
      unwrap(status, err, "Cannot finalize the engine");
    });
  }

  /** Backend, memory and device facts. */
  info(): EngineInfo {
    const buf = L.engineInfo.encode({ size: BigInt(L.engineInfo.size) });
    const status = lib().mp_engine_get_info(this.pointer, buf);
    unwrap(status, new Uint8Array(1), "Cannot read the engine info");
    const v = L.engineInfo.decode(buf);
    return {
      backend: v.backend as number,
      device: v.device as number,
      weightDtype: v.weight_dtype as number,
      kvDtype: v.kv_dtype as number,
      weightBytes: v.weight_bytes as bigint,
      gpuBytesInUse: v.gpu_bytes_in_use as bigint,
      gpuBytesPeak: v.gpu_bytes_peak as bigint,
      gpuBytesTotal: v.gpu_bytes_total as bigint,
      deviceName: v.device_name as string,
    };
  }

  /** Frees the engine once every queued call has settled. Idempotent. */
  async close(): Promise<void> {
    if (this.#ptr === null) return;
    await this.queue.run(() => Promise.resolve());
    if (this.#ptr === null) return;
    const p = this.#ptr;
    this.#ptr = null;
    engineRegistry.unregister(this);
    lib().mp_engine_free(p);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

// ------------------------------------------------------------
// attention policies and sessions

/** enum mp_attention_method, as a code. */
export type AttentionMethodCode = (typeof AttentionMethod)[keyof typeof AttentionMethod];

/** mp_attention_params without `size`; unset fields take the library's defaults. */
export interface AttentionOptions {
  /** {@link AttentionMethod}; default MAGICPIG. */
  method?: number;
  /** Bits per LSH table, 1..16; default 10. */
  lshK?: number;
  /** LSH tables; default 150. */
  lshL?: number;
  /** First tokens always attended exactly; default 4. */
  sinks?: number;
  /** Last prompt tokens attended exactly; default 64. */
  window?: number;
  /** Local tokens beyond `window` before they are indexed; default 256. */
  genBuffer?: number;
  /** MagicPIG's ε; default 1e-4. */
  eps?: number;
  /** TOPK/QUEST/ORACLE fraction of the offloaded keys; default 0.02. */
  budget?: number;
  /** QUEST page; default 16. */
  pageSize?: number;
  /** LSH hyperplanes / oracle draws; default 0x5eed. */
  seed?: bigint;
  /** Layers kept dense (at most 16); default [0, n_layers / 2]. */
  denseLayers?: readonly number[];
}

/** Options of {@link Session.create}. */
export interface SessionOptions {
  attention?: AttentionOptions;
  /** KV capacity (tokens) to allocate up front; it grows on demand anyway. */
  reserveTokens?: number;
}

/** What {@link Session.info} reports (mp_session_info). */
export interface SessionInfo {
  nTokens: number;
  nIndexed: number;
  hostKvBytes: bigint;
  hostIndexBytes: bigint;
  gpuBytes: bigint;
  keysAttended: number;
  keysOffloaded: number;
  method: number;
  lshK: number;
  lshL: number;
  seed: bigint;
}

function encodeSessionParams(options: SessionOptions): Uint8Array<ArrayBuffer> {
  const defaults = new Uint8Array(L.sessionParams.size);
  lib().mp_session_default_params(defaults);
  const a = options.attention ?? {};
  const attention: Record<string, FieldValue> = {};
  const set = (key: string, v: number | bigint | undefined) => {
    if (v !== undefined) attention[key] = v;
  };
  set("method", a.method);
  set("lsh_k", a.lshK);
  set("lsh_l", a.lshL);
  set("sinks", a.sinks);
  set("window", a.window);
  set("gen_buffer", a.genBuffer);
  set("eps", a.eps);
  set("budget", a.budget);
  set("page_size", a.pageSize);
  set("seed", a.seed);
  if (a.denseLayers !== undefined) {
    if (a.denseLayers.length > 16) {
      throw new RangeError(
        `Invalid attention.denseLayers "${a.denseLayers.length}": at most 16 layers`,
      );
    }
    attention.n_dense_layers = a.denseLayers.length;
    attention.dense_layers = [...a.denseLayers];
  }
  const value: Record<string, FieldValue> = { attention };
  if (options.reserveTokens !== undefined) value.reserve_tokens = BigInt(options.reserveTokens);
  return L.sessionParams.encode(value, defaults);
}

const sessionRegistry = new FinalizationRegistry<Deno.PointerValue>((p) => {
  // The native session keeps its engine's internals alive, so freeing it late is safe.
  if (p !== null) lib().mp_session_free(p);
});

/**
 * One sequence's KV cache in host memory (mp_session). Every call goes through the
 * engine's queue, so calls on an engine and its sessions never overlap.
 *
 * @example
 * ```ts
 * const s = await Session.create(engine, { attention: { method: AttentionMethod.DENSE } });
 * const logits = new Float32Array(engine.config.vocab_size);
 * await s.prefill(new Int32Array([1, 2, 3]), { logits });
 * await s.close();
 * ```
 */
export class Session {
  #ptr: Deno.PointerValue;
  readonly engine: Engine;

  private constructor(engine: Engine, ptr: Deno.PointerValue) {
    this.engine = engine;
    this.#ptr = ptr;
    sessionRegistry.register(this, ptr, this);
  }

  /** Creates an empty session on a finalized engine. */
  static create(engine: Engine, options: SessionOptions = {}): Promise<Session> {
    const params = encodeSessionParams(options);
    return engine.queue.run(() => {
      const out = new BigUint64Array(1);
      const err = errorBuffer();
      unwrap(
        lib().mp_session_create(engine.pointer, params, bytesOf(out), err, BigInt(err.length)),
        err,
        "Cannot create a session",
      );
      return Promise.resolve(new Session(engine, Deno.UnsafePointer.create(out[0])));
    });
  }

  /** Restores a snapshot written by {@link Session.save}. */
  static load(engine: Engine, path: string): Promise<Session> {
    return engine.queue.run(async () => {
      const out = new BigUint64Array(1);
      const err = errorBuffer();
      const p = cstr(path);
      const status = await lib().mp_session_load_async(
        engine.pointer,
        p,
        bytesOf(out),
        err,
        BigInt(err.length),
      );
      unwrap(status, err, `Cannot load the session snapshot "${path}"`);
      return new Session(engine, Deno.UnsafePointer.create(out[0]));
    });
  }

  /**
   * A new session holding a copy of this one's first `n` tokens (default: all), with its
   * own attention policy (`options`; default: this session's). Nothing of the policy state
   * is copied: a MAGICPIG fork is indexed by its own {@link commit}.
   */
  fork(options: SessionOptions | null = null, n = -1): Promise<Session> {
    const params = options === null ? null : encodeSessionParams(options);
    return this.engine.queue.run(async () => {
      const out = new BigUint64Array(1);
      const err = errorBuffer();
      const status = await lib().mp_session_fork_async(
        this.engine.pointer,
        this.pointer,
        params,
        BigInt(n),
        bytesOf(out),
        err,
        BigInt(err.length),
      );
      unwrap(status, err, "Cannot fork the session");
      return new Session(this.engine, Deno.UnsafePointer.create(out[0]));
    });
  }

  /** The native handle; throws once closed. */
  get pointer(): Deno.PointerObject {
    if (this.#ptr === null) throw new Error("Session is closed");
    return this.#ptr;
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#ptr === null;
  }

  /**
   * Appends tokens with dense exact attention. `logits` ([vocab]) receives the last token's
   * logits. Setting `abort[0]` to non-zero stops the call between layers: it then rejects
   * with a {@link MagicpigError} of code "aborted" and the session is as before the call.
   * `commit: true` ends the turn in the same call, as {@link commit} after it would
   * (mp_session_prefill_commit): on a CUDA engine a MagicPIG session's first index is then
   * built layer by layer while the GPU computes the next layers. If only the commit fails,
   * the tokens stay prefilled and the error says so ("the commit failed").
   */
  async prefill(
    tokens: Int32Array<ArrayBuffer>,
    options: {
      logits?: Float32Array<ArrayBuffer>;
      abort?: Int32Array<ArrayBuffer>;
      commit?: boolean;
    } = {},
  ): Promise<void> {
    const { logits, abort, commit } = options;
    if (logits && logits.length < this.engine.config.vocab_size) {
      throw new RangeError(
        `Invalid logits length "${logits.length}": must be at least ${this.engine.config.vocab_size}`,
      );
    }
    await this.engine.queue.run(async () => {
      const err = errorBuffer();
      const call = commit ? lib().mp_session_prefill_commit_async : lib().mp_session_prefill_async;
      const status = await call(
        this.engine.pointer,
        this.pointer,
        tokens,
        tokens.length,
        logits ?? null,
        abort ?? null,
        err,
        BigInt(err.length),
      );
      unwrap(status, err, "Cannot prefill the session");
    });
  }

  /** Ends a turn (MagicPIG indexes the new tokens). */
  commit(): Promise<void> {
    return this.engine.queue.run(async () => {
      const err = errorBuffer();
      const status = await lib().mp_session_commit_async(
        this.engine.pointer,
        this.pointer,
        err,
        BigInt(err.length),
      );
      unwrap(status, err, "Cannot commit the session");
    });
  }

  /** Drops every token after the first `n`. */
  truncate(n: number): Promise<void> {
    return this.engine.queue.run(async () => {
      const err = errorBuffer();
      const status = await lib().mp_session_truncate_async(
        this.engine.pointer,
        this.pointer,
        BigInt(n),
        err,
        BigInt(err.length),
      );
      unwrap(status, err, `Cannot truncate the session to ${n} tokens`);
    });
  }

  /** Writes a checksummed snapshot to `path` (atomically: `path`.tmp, fsync, rename). */
  save(path: string): Promise<void> {
    return this.engine.queue.run(async () => {
      const err = errorBuffer();
      const p = cstr(path);
      const status = await lib().mp_session_save_async(
        this.engine.pointer,
        this.pointer,
        p,
        err,
        BigInt(err.length),
      );
      unwrap(status, err, `Cannot save the session to "${path}"`);
    });
  }

  /** Length, memory and attention statistics (reads counters; cheap and synchronous). */
  info(): SessionInfo {
    const buf = L.sessionInfo.encode({ size: BigInt(L.sessionInfo.size) });
    const status = lib().mp_session_get_info(this.pointer, buf);
    unwrap(status, new Uint8Array(1), "Cannot read the session info");
    const v = L.sessionInfo.decode(buf);
    return {
      nTokens: Number(v.n_tokens),
      nIndexed: Number(v.n_indexed),
      hostKvBytes: v.host_kv_bytes as bigint,
      hostIndexBytes: v.host_index_bytes as bigint,
      gpuBytes: v.gpu_bytes as bigint,
      keysAttended: v.keys_attended as number,
      keysOffloaded: v.keys_offloaded as number,
      method: v.method as number,
      lshK: v.lsh_k as number,
      lshL: v.lsh_l as number,
      seed: v.seed as bigint,
    };
  }

  /** Frees the session once every queued call has settled. Idempotent. */
  async close(): Promise<void> {
    if (this.#ptr === null) return;
    await this.engine.queue.run(() => Promise.resolve());
    if (this.#ptr === null) return;
    const p = this.#ptr;
    this.#ptr = null;
    sessionRegistry.unregister(this);
    lib().mp_session_free(p);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** $MP_DECODE_ONECALL=1: decodeStep makes one nonblocking mp_decode_step call (A/B runs). */
const decodeOneCall = (() => {
  try {
    return Deno.env.get("MP_DECODE_ONECALL") === "1";
  } catch {
    return false; // no env permission: the default
  }
})();

/**
 * Decodes one token for each session (distinct sessions of `engine`): appends `tokens[i]`
 * to `sessions[i]` and writes the new position's logits to `logits[i * vocab ...]`. On an
 * error or an abort (`abort[0]` set) it rejects and no session changed.
 */
export async function decodeStep(
  engine: Engine,
  sessions: readonly Session[],
  tokens: Int32Array<ArrayBuffer>,
  logits: Float32Array<ArrayBuffer>,
  abort?: Int32Array<ArrayBuffer>,
): Promise<void> {
  const n = sessions.length;
  if (tokens.length !== n) {
    throw new RangeError(`Invalid tokens length "${tokens.length}": must equal sessions (${n})`);
  }
  const vocab = engine.config.vocab_size;
  if (logits.length < n * vocab) {
    throw new RangeError(
      `Invalid logits length "${logits.length}": must be at least ${n} x ${vocab}`,
    );
  }
  for (const s of sessions) {
    if (s.engine !== engine) throw new Error("Cannot decode: a session belongs to another engine");
  }
  await engine.queue.run(async () => {
    const ptrs = new BigUint64Array(n);
    for (let i = 0; i < n; i++) ptrs[i] = BigInt(Deno.UnsafePointer.value(sessions[i].pointer));
    const err = errorBuffer();
    const args = [
      engine.pointer,
      bytesOf(ptrs),
      n,
      tokens,
      logits,
      abort ?? null,
      err,
      BigInt(err.length),
    ] as const;
    if (decodeOneCall) {
      unwrap(await lib().mp_decode_step_async(...args), err, "Cannot decode a step");
      return;
    }
    // Submitted to the engine's decode thread, waited for off the event loop until the GPU
    // is on its last kernel, then collected: the event loop's wake-up overlaps the step
    // instead of following it (mp_decode_submit in magicpig.h; a plain nonblocking call
    // cost ~0.17 ms per step on the GPU server).
    const submitted = lib().mp_decode_submit(...args);
    unwrap(submitted, err, "Cannot decode a step");
    await lib().mp_decode_wait_async(engine.pointer);
    unwrap(
      lib().mp_decode_finish(engine.pointer, err, BigInt(err.length)),
      err,
      "Cannot decode a step",
    );
  });
}

// ------------------------------------------------------------
// sampling

/** How {@link sample} picks a token (mp_sampling_params). */
export interface SamplingParams {
  /** 0: greedy (first maximum). */
  temperature: number;
  /** 0: off. */
  topK: number;
  /** 1: off. */
  topP: number;
  /** Alternatives to report, 0..20. */
  nLogprobs: number;
}

/** The token {@link sample} picked, with log-probabilities under the raw distribution. */
export interface SampleResult {
  token: number;
  logprob: number;
  /** The `nLogprobs` most likely tokens, most likely first (ties: lower id first). */
  top: { id: number; logprob: number }[];
}

/**
 * Picks a token from `logits` (mp_sample). `rngState[0]` is the caller's seeded generator
 * state; it is advanced.
 *
 * @example
 * ```ts
 * const r = sample(logits, { temperature: 0.8, topK: 40, topP: 0.95, nLogprobs: 0 },
 *   new BigUint64Array([42n]));
 * ```
 */
export function sample(
  logits: Float32Array<ArrayBuffer>,
  params: SamplingParams,
  rngState: BigUint64Array<ArrayBuffer>,
): SampleResult {
  const p = L.samplingParams.encode({
    size: BigInt(L.samplingParams.size),
    temperature: params.temperature,
    top_k: params.topK,
    top_p: params.topP,
    n_logprobs: params.nLogprobs,
  });
  const n = Math.max(0, Math.min(params.nLogprobs, 20));
  const token = new Int32Array(1);
  const logprob = new Float32Array(1);
  const ids = new Int32Array(Math.max(n, 1));
  const lps = new Float32Array(Math.max(n, 1));
  const err = errorBuffer();
  unwrap(
    lib().mp_sample(
      logits,
      logits.length,
      p,
      bytesOf(rngState),
      token,
      logprob,
      ids,
      lps,
      err,
      BigInt(err.length),
    ),
    err,
    "Cannot sample a token",
  );
  const top: { id: number; logprob: number }[] = [];
  for (let i = 0; i < n && ids[i] >= 0; i++) top.push({ id: ids[i], logprob: lps[i] });
  return { token: token[0], logprob: logprob[0], top };
}
