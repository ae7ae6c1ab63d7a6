/**
 * Typed wrappers over the MagicPIG ops of libmagicpig: SimHash projection and codes, the
 * compact LSH index of one sequence and layer ({@link LshIndex}), collision retrieval,
 * sampled attention, and the TopK / Quest / oracle-sampling baselines over raw K/V.
 *
 * Shapes follow magicpig.h: keys and values are `[nKvHeads][n][headDim]`, queries
 * `[B][H][headDim]`; BF16 tensors travel as `Uint16Array` bit patterns.
 *
 * @example
 * ```ts
 * import { LshIndex, lshAttention } from "./lsh.ts";
 * import { DType } from "./native.ts";
 * const keys = new Float32Array(2 * 1000 * 64).map(() => Math.random() - 0.5);
 * using idx = await LshIndex.create({ k: 8, l: 75 }, 2, 64, DType.F32, keys, keys, 1000);
 * const r = lshAttention([idx], new Float32Array(4 * 64).fill(0.1), 4);
 * console.log(r.lse2, r.nnz);
 * ```
 *
 * @module
 */
import { lib } from "./lib.ts";
import * as Layouts from "./layouts.ts";
import { Backend, bytesOf, DType, errorBuffer, unwrap } from "./native.ts";

/** enum mp_lsh_flags */
export const LshFlags = {
  /** u and ln(u + eps) in float64 scalar code. */
  EXACT_U: 1,
  /** u ≡ 1: a plain softmax over the sample. */
  FORCE_U1: 2,
  /** The sample is every indexed token. */
  RETRIEVE_ALL: 4,
  /** Also center the query: wrong on purpose, for the centering test. */
  CENTER_QUERY: 8,
  /** {@link lshAttentionOffload} only: the offloaded KV heads' blocked tokens are attended
   * elsewhere (split decode's GPU retrieval); the call attends only their tail. */
  OFFLOAD_BLOCKS: 16,
} as const;

/** Index parameters (mp_lsh_params); unset fields take the library's defaults. */
export interface LshParams {
  /** Bits per table, 1..16 (default 10). */
  k?: number;
  /** Tables, 2..1024 (default 150). */
  l?: number;
  /** Seed of the hyperplanes (default 0x5eed). */
  seed?: bigint;
  /** Logit correction −ln(u + eps) (default 1e-4; 0 allowed). */
  eps?: number;
  /** Subtract the mean key per KV head (default true). */
  center?: boolean;
  /** Appended tokens kept unsorted before a merge (default 4096). */
  tailMax?: number;
}

/** What {@link LshIndex.info} reports (mp_lsh_index_info). */
export interface LshIndexInfo {
  nTokens: number;
  nBlocked: number;
  nTail: number;
  nKvHeads: number;
  headDim: number;
  kvDtype: number;
  k: number;
  l: number;
  center: boolean;
  seed: bigint;
  eps: number;
  entryBytes: number;
  offsetBytes: number;
  tailBytes: number;
  normBytes: number;
  kvBytes: number;
  /** (entries + offsets + tail) bytes per token per KV head. */
  bytesPerToken: number;
}

/** Work counters of an attention call (mp_lsh_stats). */
export interface LshStats {
  /** Distinct K and V rows gathered. */
  rows: number;
  /** Σ over query heads of the sample size. */
  sampled: number;
  /** Bucket entries scanned plus tail tokens compared. */
  entries: number;
  /** Bytes of rows, norms, entries, offsets and tail codes touched. */
  bytes: number;
  /** Parallel tasks. */
  tasks: number;
}

/** A K or V tensor: F32 values, or BF16 bit patterns. */
export type KvArray = Float32Array<ArrayBuffer> | Uint16Array<ArrayBuffer>;

function check(status: number, err: Uint8Array, what: string): void {
  unwrap(status, err, what);
}

function kvBytes(dtype: number): number {
  return dtype === DType.F32 ? 4 : 2;
}

function checkKv(a: KvArray, dtype: number, elements: number, what: string): void {
  if (a.BYTES_PER_ELEMENT !== kvBytes(dtype)) {
    throw new TypeError(
      `${what} must be a ${dtype === DType.F32 ? "Float32Array" : "Uint16Array"}`,
    );
  }
  if (a.length < elements) {
    throw new RangeError(`${what} holds ${a.length} values, ${elements} are needed`);
  }
}

const indexRegistry = new FinalizationRegistry<Deno.PointerValue>((p) => {
  if (p !== null) lib().mp_lsh_index_free(p);
});

/** SimHash hyperplanes R[d][K·L] ~ N(0, 1) from a seed. */
export function lshProjection(
  seed: bigint,
  d: number,
  k: number,
  l: number,
): Float32Array<ArrayBuffer> {
  const r = new Float32Array(d * k * l);
  const err = errorBuffer();
  check(
    lib().mp_lsh_projection(seed, d, k, l, bytesOf(r), err, BigInt(err.length)),
    err,
    "Cannot draw the LSH projection",
  );
  return r;
}

/** Codes[n][L] of rows x[n][d] under hyperplanes R[d][K·L]. */
export function lshHash(
  r: Float32Array<ArrayBuffer>,
  x: Float32Array<ArrayBuffer>,
  n: number,
  d: number,
  k: number,
  l: number,
  backend: number = Backend.CPU,
): Uint16Array<ArrayBuffer> {
  if (r.length < d * k * l || x.length < n * d) {
    throw new RangeError(`Cannot hash: R or x is smaller than its shape`);
  }
  const codes = new Uint16Array(n * l);
  const err = errorBuffer();
  check(
    lib().mp_lsh_hash(
      backend,
      bytesOf(r),
      bytesOf(x),
      n,
      d,
      k,
      l,
      bytesOf(codes),
      err,
      BigInt(err.length),
    ),
    err,
    "Cannot hash",
  );
  return codes;
}

/**
 * The LSH index of one sequence and one layer, with its own copy of K and V
 * (mp_lsh_index). Close it, or use `using`.
 */
export class LshIndex {
  #ptr: Deno.PointerValue;
  #busy = false;
  readonly nKvHeads: number;
  readonly headDim: number;
  readonly kvDtype: number;

  private constructor(ptr: Deno.PointerValue, nKvHeads: number, headDim: number, kvDtype: number) {
    this.#ptr = ptr;
    this.nKvHeads = nKvHeads;
    this.headDim = headDim;
    this.kvDtype = kvDtype;
    indexRegistry.register(this, ptr, this);
  }

  /** Builds an index over n tokens (keys, values `[nKvHeads][n][headDim]`), off the main thread. */
  static async create(
    params: LshParams,
    nKvHeads: number,
    headDim: number,
    kvDtype: number,
    keys: KvArray,
    values: KvArray,
    n: number,
  ): Promise<LshIndex> {
    checkKv(keys, kvDtype, nKvHeads * n * headDim, "keys");
    checkKv(values, kvDtype, nKvHeads * n * headDim, "values");
    const p = encodeParams(params);
    const out = new BigUint64Array(1);
    const err = errorBuffer();
    const status = await lib().mp_lsh_index_create_async(
      p,
      nKvHeads,
      headDim,
      kvDtype,
      bytesOf(keys),
      bytesOf(values),
      BigInt(n),
      bytesOf(out),
      err,
      BigInt(err.length),
    );
    check(status, err, "Cannot create the LSH index");
    return new LshIndex(Deno.UnsafePointer.create(out[0]), nKvHeads, headDim, kvDtype);
  }

  /** The native handle; throws once closed or while an append runs. */
  get pointer(): Deno.PointerObject {
    if (this.#ptr === null) throw new Error("LSH index is closed");
    if (this.#busy) throw new Error("LSH index is busy: await its append first");
    return this.#ptr;
  }

  /** Appends m tokens (`[nKvHeads][m][headDim]`); `merge` folds the tail into the blocks now. */
  async append(keys: KvArray, values: KvArray, m: number, merge = false): Promise<void> {
    checkKv(keys, this.kvDtype, this.nKvHeads * m * this.headDim, "keys");
    checkKv(values, this.kvDtype, this.nKvHeads * m * this.headDim, "values");
    const ptr = this.pointer;
    const err = errorBuffer();
    this.#busy = true;
    try {
      const status = await lib().mp_lsh_index_append_async(
        ptr,
        bytesOf(keys),
        bytesOf(values),
        BigInt(m),
        merge ? 1 : 0,
        err,
        BigInt(err.length),
      );
      check(status, err, "Cannot append to the LSH index");
    } finally {
      this.#busy = false;
    }
  }

  /** Token counts, parameters and byte counts. */
  info(): LshIndexInfo {
    const buf = Layouts.lshIndexInfo.encode({ size: BigInt(Layouts.lshIndexInfo.size) });
    unwrap(
      lib().mp_lsh_index_get_info(this.pointer, buf),
      new Uint8Array(1),
      "Cannot read the LSH index info",
    );
    const v = Layouts.lshIndexInfo.decode(buf);
    return {
      nTokens: Number(v.n_tokens),
      nBlocked: Number(v.n_blocked),
      nTail: Number(v.n_tail),
      nKvHeads: v.n_kv_heads as number,
      headDim: v.head_dim as number,
      kvDtype: v.kv_dtype as number,
      k: v.k as number,
      l: v.l as number,
      center: (v.center as number) !== 0,
      seed: v.seed as bigint,
      eps: v.eps as number,
      entryBytes: Number(v.entry_bytes),
      offsetBytes: Number(v.offset_bytes),
      tailBytes: Number(v.tail_bytes),
      normBytes: Number(v.norm_bytes),
      kvBytes: Number(v.kv_bytes),
      bytesPerToken: v.bytes_per_token as number,
    };
  }

  /** Codes `[count][L]` of tokens [start, start + count) of one KV head. */
  codes(head: number, start: number, count: number): Uint16Array<ArrayBuffer> {
    const l = this.info().l;
    const out = new Uint16Array(count * l);
    const err = errorBuffer();
    check(
      lib().mp_lsh_index_get_codes(
        this.pointer,
        head,
        BigInt(start),
        BigInt(count),
        bytesOf(out),
        err,
        BigInt(err.length),
      ),
      err,
      "Cannot read the LSH codes",
    );
    return out;
  }

  /** The bucket table of (head, table) in global token ids. */
  table(
    head: number,
    table: number,
  ): { offsets: Uint32Array<ArrayBuffer>; indices: Int32Array<ArrayBuffer> } {
    const info = this.info();
    const offsets = new Uint32Array((1 << info.k) + 1);
    const indices = new Int32Array(Math.max(1, info.nTokens));
    const err = errorBuffer();
    check(
      lib().mp_lsh_index_get_table(
        this.pointer,
        head,
        table,
        bytesOf(offsets),
        bytesOf(indices),
        err,
        BigInt(err.length),
      ),
      err,
      "Cannot read the LSH table",
    );
    return { offsets, indices: indices.subarray(0, info.nTokens) };
  }

  /** μ `[nKvHeads][headDim]` and the key norms ‖k − μ‖ `[nKvHeads][n]`. */
  mean(): { mean: Float32Array<ArrayBuffer>; norms: Float32Array<ArrayBuffer> } {
    const n = this.info().nTokens;
    const mean = new Float32Array(this.nKvHeads * this.headDim);
    const norms = new Float32Array(Math.max(1, this.nKvHeads * n));
    const err = errorBuffer();
    check(
      lib().mp_lsh_index_get_mean(
        this.pointer,
        bytesOf(mean),
        bytesOf(norms),
        err,
        BigInt(err.length),
      ),
      err,
      "Cannot read the LSH mean",
    );
    return { mean, norms: norms.subarray(0, this.nKvHeads * n) };
  }

  /** Frees the index. Idempotent. */
  close(): void {
    if (this.#ptr === null) return;
    const p = this.#ptr;
    this.#ptr = null;
    indexRegistry.unregister(this);
    lib().mp_lsh_index_free(p);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function encodeParams(params: LshParams): Uint8Array<ArrayBuffer> {
  const defaults = new Uint8Array(Layouts.lshParams.size);
  lib().mp_lsh_default_params(defaults);
  const v: Record<string, number | bigint> = {};
  if (params.k !== undefined) v.k = params.k;
  if (params.l !== undefined) v.l = params.l;
  if (params.seed !== undefined) v.seed = params.seed;
  if (params.eps !== undefined) v.eps = params.eps;
  if (params.center !== undefined) v.center = params.center ? 1 : 0;
  if (params.tailMax !== undefined) v.tail_max = BigInt(params.tailMax);
  return Layouts.lshParams.encode(v, defaults);
}

/** The default index parameters of the library. */
export function lshDefaultParams(): Required<LshParams> {
  const buf = new Uint8Array(Layouts.lshParams.size);
  lib().mp_lsh_default_params(buf);
  const v = Layouts.lshParams.decode(buf);
  return {
    k: v.k as number,
    l: v.l as number,
    seed: v.seed as bigint,
    eps: v.eps as number,
    center: (v.center as number) !== 0,
    tailMax: Number(v.tail_max),
  };
}

function pointers(indexes: readonly LshIndex[]): BigUint64Array<ArrayBuffer> {
  if (indexes.length === 0) throw new RangeError("A batch needs at least one index");
  return new BigUint64Array(indexes.map((i) => BigInt(Deno.UnsafePointer.value(i.pointer))));
}

/** Options of {@link lshRetrieve} and {@link lshAttention}. */
export interface LshCallOptions {
  /** Precomputed query codes `[B][H][L]` (else hashed from q). */
  qcodes?: Uint16Array<ArrayBuffer>;
  /** {@link LshFlags} bits. */
  flags?: number;
}

/**
 * Collision retrieval: per (sequence, query head), the ids of tokens whose code equals
 * the query's in at least 2 tables, ascending. `cap` bounds the ids returned per head
 * (default: the longest index).
 */
export function lshRetrieve(
  indexes: readonly LshIndex[],
  q: Float32Array<ArrayBuffer>,
  H: number,
  options: LshCallOptions & { cap?: number } = {},
): { nnz: Int32Array<ArrayBuffer>; sets: Int32Array<ArrayBuffer>[] } {
  const cap = options.cap ?? Math.max(1, ...indexes.map((i) => i.info().nTokens));
  return retrieval(
    indexes.length * H,
    cap,
    "Cannot retrieve",
    (indices, nnz, err) =>
      lib().mp_lsh_retrieve(
        pointers(indexes),
        indexes.length,
        bytesOf(q),
        H,
        options.qcodes ? bytesOf(options.qcodes) : null,
        options.flags ?? 0,
        BigInt(cap),
        bytesOf(indices),
        bytesOf(nnz),
        err,
        BigInt(err.length),
      ),
  );
}

/**
 * Split decode's GPU retrieval on its own (a CUDA build with a GPU): the blocked tokens (not
 * the unsorted tail) of each index that collide with `qcodes[b][h][l]` in >= 2 tables,
 * counted on the GPU from the index's page-locked blocks. Same shape as {@link lshRetrieve}.
 */
export function lshRetrieveGpu(
  indexes: readonly LshIndex[],
  H: number,
  qcodes: Uint16Array<ArrayBuffer>,
): { nnz: Int32Array<ArrayBuffer>; sets: Int32Array<ArrayBuffer>[] } {
  const cap = Math.max(1, ...indexes.map((i) => i.info().nBlocked));
  return retrieval(
    indexes.length * H,
    cap,
    "Cannot retrieve on the GPU",
    (indices, nnz, err) =>
      lib().mp_lsh_retrieve_gpu(
        pointers(indexes),
        indexes.length,
        H,
        bytesOf(qcodes),
        BigInt(cap),
        bytesOf(indices),
        bytesOf(nnz),
        err,
        BigInt(err.length),
      ),
  );
}

/** Runs a retrieval call into rows of `cap` ids per head and cuts out each head's sample (the
 * first min(cap, nnz) ids of its row). */
function retrieval(
  rows: number,
  cap: number,
  what: string,
  call: (
    indices: Int32Array<ArrayBuffer>,
    nnz: Int32Array<ArrayBuffer>,
    err: Uint8Array<ArrayBuffer>,
  ) => number,
): { nnz: Int32Array<ArrayBuffer>; sets: Int32Array<ArrayBuffer>[] } {
  const nnz = new Int32Array(rows);
  const indices = new Int32Array(rows * cap);
  const err = errorBuffer();
  check(call(indices, nnz, err), err, what);
  const sets = Array.from(nnz, (n, j) => indices.slice(j * cap, j * cap + Math.min(cap, n)));
  return { nnz, sets };
}

/** Result of a sampled or baseline attention: out `[..][H][d]`, base-2 LSE `[..][H]`. */
export interface AttentionResult {
  out: Float32Array<ArrayBuffer>;
  lse2: Float32Array<ArrayBuffer>;
  /** Keys attended per head (sample size for LSH, keys used by a baseline). */
  nnz: Int32Array<ArrayBuffer>;
}

/** Sampled attention over the keys each query head retrieves (magicpig.md §7). */
export function lshAttention(
  indexes: readonly LshIndex[],
  q: Float32Array<ArrayBuffer>,
  H: number,
  options: LshCallOptions = {},
): AttentionResult & { stats: LshStats } {
  const B = indexes.length;
  const d = indexes[0].headDim;
  const out = new Float32Array(B * H * d);
  const lse2 = new Float32Array(B * H);
  const nnz = new Int32Array(B * H);
  const stats = Layouts.lshStats.encode({ size: BigInt(Layouts.lshStats.size) });
  const err = errorBuffer();
  check(
    lib().mp_lsh_attention(
      pointers(indexes),
      B,
      bytesOf(q),
      H,
      options.qcodes ? bytesOf(options.qcodes) : null,
      options.flags ?? 0,
      bytesOf(out),
      bytesOf(lse2),
      bytesOf(nnz),
      stats,
      err,
      BigInt(err.length),
    ),
    err,
    "Cannot compute sampled attention",
  );
  const s = Layouts.lshStats.decode(stats);
  return {
    out,
    lse2,
    nnz,
    stats: {
      rows: Number(s.rows),
      sampled: Number(s.sampled),
      entries: Number(s.entries),
      bytes: Number(s.bytes),
      tasks: Number(s.tasks),
    },
  };
}

/**
 * {@link lshAttention} with some KV heads attended elsewhere (split decode hands their
 * samples to the GPU): `offloadKv[b·Hkv + hkv]` = 1 marks one. Their out rows come back 0
 * with lse2 −∞, and `samples[b·H + h]` holds the ascending sample of every head of an
 * offloaded KV head (empty for the others); `handed` counts the hand-offs (an offloaded KV
 * head goes as soon as its heads' samples exist, with any other one ready by then; each in
 * exactly one; 0 when none is offloaded).
 */
export function lshAttentionOffload(
  indexes: readonly LshIndex[],
  q: Float32Array<ArrayBuffer>,
  H: number,
  offloadKv: Uint8Array<ArrayBuffer>,
  options: LshCallOptions = {},
): AttentionResult & { samples: Int32Array<ArrayBuffer>[]; handed: number } {
  const B = indexes.length;
  const d = indexes[0].headDim;
  const cap = Math.max(1, ...indexes.map((i) => i.info().nTokens));
  const out = new Float32Array(B * H * d);
  const lse2 = new Float32Array(B * H);
  const nnz = new Int32Array(B * H);
  const ids = new Int32Array(B * H * cap);
  const n = new Int32Array(B * H);
  const handed = new Int32Array(1);
  const err = errorBuffer();
  check(
    lib().mp_lsh_attention_offload(
      pointers(indexes),
      B,
      bytesOf(q),
      H,
      options.qcodes ? bytesOf(options.qcodes) : null,
      options.flags ?? 0,
      bytesOf(offloadKv),
      BigInt(cap),
      bytesOf(ids),
      bytesOf(n),
      bytesOf(handed),
      bytesOf(out),
      bytesOf(lse2),
      bytesOf(nnz),
      err,
      BigInt(err.length),
    ),
    err,
    "Cannot compute sampled attention with an offloaded share",
  );
  const samples: Int32Array<ArrayBuffer>[] = [];
  for (let bh = 0; bh < B * H; bh++) samples.push(ids.slice(bh * cap, bh * cap + n[bh]));
  return { out, lse2, nnz, samples, handed: handed[0] };
}

/** Sampled-attention weights over given samples: `sets[b·H + h]` are token ids. */
export function lshAttentionSets(
  indexes: readonly LshIndex[],
  q: Float32Array<ArrayBuffer>,
  H: number,
  sets: readonly ArrayLike<number>[],
  flags = 0,
): { out: Float32Array<ArrayBuffer>; lse2: Float32Array<ArrayBuffer> } {
  const B = indexes.length;
  const d = indexes[0].headDim;
  if (sets.length !== B * H) throw new RangeError(`Expected ${B * H} samples, got ${sets.length}`);
  const cap = Math.max(1, ...sets.map((s) => s.length));
  const flat = new Int32Array(B * H * cap);
  const n = new Int32Array(B * H);
  sets.forEach((s, i) => {
    flat.set(Array.from(s), i * cap);
    n[i] = s.length;
  });
  const out = new Float32Array(B * H * d);
  const lse2 = new Float32Array(B * H);
  const err = errorBuffer();
  check(
    lib().mp_lsh_attention_sets(
      pointers(indexes),
      B,
      bytesOf(q),
      H,
      bytesOf(flat),
      bytesOf(n),
      BigInt(cap),
      flags,
      bytesOf(out),
      bytesOf(lse2),
      err,
      BigInt(err.length),
    ),
    err,
    "Cannot compute sampled attention over the given samples",
  );
  return { out, lse2 };
}

/** u(cos) and ln(u + eps) by the kernel's vector code. */
export function lshCollisionWeights(
  k: number,
  l: number,
  eps: number,
  cos: Float32Array<ArrayBuffer>,
): { u: Float32Array<ArrayBuffer>; lnw: Float32Array<ArrayBuffer> } {
  const u = new Float32Array(cos.length);
  const lnw = new Float32Array(cos.length);
  const err = errorBuffer();
  check(
    lib().mp_lsh_collision_weights(
      k,
      l,
      eps,
      bytesOf(cos),
      BigInt(cos.length),
      bytesOf(u),
      bytesOf(lnw),
      err,
      BigInt(err.length),
    ),
    err,
    "Cannot compute collision weights",
  );
  return { u, lnw };
}

/** Raw K/V of one sequence for the baselines: `[nKvHeads][n][headDim]`. */
export interface RawKv {
  dtype: number;
  keys: KvArray;
  values: KvArray;
  n: number;
  nKvHeads: number;
  headDim: number;
}

function baselineOut(kv: RawKv, H: number) {
  checkKv(kv.keys, kv.dtype, kv.nKvHeads * kv.n * kv.headDim, "keys");
  checkKv(kv.values, kv.dtype, kv.nKvHeads * kv.n * kv.headDim, "values");
  return {
    out: new Float32Array(H * kv.headDim),
    lse2: new Float32Array(H),
    nnz: new Int32Array(H),
    err: errorBuffer(),
  };
}

/** TopK: exact attention over the top ⌈budget·n⌉ keys of each query head. */
export function attentionTopk(
  kv: RawKv,
  q: Float32Array<ArrayBuffer>,
  H: number,
  budget: number,
): AttentionResult {
  const r = baselineOut(kv, H);
  check(
    lib().mp_attention_topk(
      kv.dtype,
      bytesOf(kv.keys),
      bytesOf(kv.values),
      BigInt(kv.n),
      kv.nKvHeads,
      kv.headDim,
      bytesOf(q),
      H,
      budget,
      bytesOf(r.out),
      bytesOf(r.lse2),
      bytesOf(r.nnz),
      r.err,
      BigInt(r.err.length),
    ),
    r.err,
    "Cannot compute TopK attention",
  );
  return { out: r.out, lse2: r.lse2, nnz: r.nnz };
}

/** Quest: exact attention over the top ⌈budget·pages⌉ pages by their min/max bound. */
export function attentionQuest(
  kv: RawKv,
  q: Float32Array<ArrayBuffer>,
  H: number,
  budget: number,
  pageSize = 16,
): AttentionResult {
  const r = baselineOut(kv, H);
  check(
    lib().mp_attention_quest(
      kv.dtype,
      bytesOf(kv.keys),
      bytesOf(kv.values),
      BigInt(kv.n),
      kv.nKvHeads,
      kv.headDim,
      bytesOf(q),
      H,
      budget,
      pageSize,
      bytesOf(r.out),
      bytesOf(r.lse2),
      bytesOf(r.nnz),
      r.err,
      BigInt(r.err.length),
    ),
    r.err,
    "Cannot compute Quest attention",
  );
  return { out: r.out, lse2: r.lse2, nnz: r.nnz };
}

/** Oracle sampling: mean of max(1, round(budget·n)) draws from the exact softmax. */
export function attentionOracle(
  kv: RawKv,
  q: Float32Array<ArrayBuffer>,
  H: number,
  budget: number,
  seed = 1n,
): AttentionResult {
  const r = baselineOut(kv, H);
  check(
    lib().mp_attention_oracle(
      kv.dtype,
      bytesOf(kv.keys),
      bytesOf(kv.values),
      BigInt(kv.n),
      kv.nKvHeads,
      kv.headDim,
      bytesOf(q),
      H,
      budget,
      seed,
      bytesOf(r.out),
      bytesOf(r.lse2),
      bytesOf(r.nnz),
      r.err,
      BigInt(r.err.length),
    ),
    r.err,
    "Cannot compute oracle-sampling attention",
  );
  return { out: r.out, lse2: r.lse2, nnz: r.nnz };
}
