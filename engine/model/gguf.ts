/**
 * GGUF v3 files: the header (metadata key/values of every type, tensor infos, alignment,
 * data offset) read through a small buffered reader, so that a multi-gigabyte file is never
 * read whole; the mapping of `llama` metadata to a {@link ModelConfig}; and the weight
 * upload through {@link Engine.loadTensorFile} (the native side reads each tensor with
 * pread: no copy passes through JavaScript).
 *
 * GGUF lists a tensor's dimensions fastest first (ggml's ne0, ne1, ...), so a row-major
 * `[out][in]` matrix appears as `[in, out]`; the engine is given `[out, in]`. GGUF stores
 * the Q and K projections permuted for llama.cpp's interleaved-pair RoPE, so GGUF models run
 * with {@link RopeStyle.INTERLEAVED}.
 *
 * @example
 * ```ts
 * import { readGguf, ggufLlamaConfig } from "./gguf.ts";
 * const file = await readGguf("stories260K.gguf");
 * console.log(ggufLlamaConfig(file).n_layers);
 * ```
 *
 * @module
 */
import { DType, type ModelConfig, RopeScaling, RopeStyle } from "../../ffi/native.ts";
import { type LayerPart, llamaTensorPlan, type TensorLoad } from "./_llama.ts";

// ------------------------------------------------------------
// value types

/** GGUF metadata value type codes (gguf_type). */
export const GgufType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;

/** A metadata value: numbers (64-bit integers as bigint), booleans, strings, arrays. */
export type GgufValue =
  | number
  | bigint
  | boolean
  | string
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array
  | boolean[]
  | string[]
  | GgufValue[];

/** ggml tensor type names by code (ggml_type), for messages. */
export const ggmlTypeNames: Record<number, string> = {
  0: "F32",
  1: "F16",
  2: "Q4_0",
  3: "Q4_1",
  6: "Q5_0",
  7: "Q5_1",
  8: "Q8_0",
  9: "Q8_1",
  10: "Q2_K",
  11: "Q3_K",
  12: "Q4_K",
  13: "Q5_K",
  14: "Q6_K",
  15: "Q8_K",
  16: "IQ2_XXS",
  17: "IQ2_XS",
  18: "IQ3_XXS",
  19: "IQ1_S",
  20: "IQ4_NL",
  21: "IQ3_S",
  22: "IQ2_S",
  23: "IQ4_XS",
  24: "I8",
  25: "I16",
  26: "I32",
  27: "I64",
  28: "F64",
  29: "IQ1_M",
  30: "BF16",
  34: "TQ1_0",
  35: "TQ2_0",
  39: "MXFP4",
};

/** The ggml types the engine loads, with their mp_dtype and element size. */
const supportedTypes: Record<number, { dtype: number; bytes: number }> = {
  0: { dtype: DType.F32, bytes: 4 },
  1: { dtype: DType.F16, bytes: 2 },
  30: { dtype: DType.BF16, bytes: 2 },
};

/** The name of a ggml type code ("type 99" when unknown). */
export function ggmlTypeName(type: number): string {
  return ggmlTypeNames[type] ?? `type ${type}`;
}

/** One tensor's header entry. */
export interface GgufTensorInfo {
  name: string;
  /** Dimensions as GGUF lists them: fastest first (ne0, ne1, ...). */
  dims: number[];
  /** ggml_type code. */
  type: number;
  /** Absolute file offset of the data. */
  offset: number;
}

/** A parsed GGUF header. */
export interface GgufFile {
  path: string;
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Absolute file offset where tensor data starts. */
  dataOffset: number;
  fileSize: number;
}

// ------------------------------------------------------------
// header reader

/** Sequential little-endian reads over a file, refilled a chunk at a time. */
class ChunkReader {
  #file: Deno.FsFile;
  #buf = new Uint8Array(1 << 20);
  #view = new DataView(this.#buf.buffer);
  #start = 0; // file offset of #buf[0]
  #len = 0; // valid bytes in #buf
  #pos = 0; // read position within #buf
  #eof = false;
  #decoder = new TextDecoder();

  #size: number;

  constructor(file: Deno.FsFile, size: number) {
    this.#file = file;
    this.#size = size;
  }

  /** File offset of the next byte. */
  get offset(): number {
    return this.#start + this.#pos;
  }

  async #ensure(n: number): Promise<void> {
    if (this.#pos + n <= this.#len) return;
    if (this.offset + n > this.#size) throw new Error("the header runs past the end of the file");
    // keep the unread tail, grow when one item is larger than the buffer
    const tail = this.#len - this.#pos;
    if (n > this.#buf.length) {
      const grown = new Uint8Array(Math.max(n, this.#buf.length * 2));
      grown.set(this.#buf.subarray(this.#pos, this.#len));
      this.#buf = grown;
      this.#view = new DataView(grown.buffer);
    } else {
      this.#buf.copyWithin(0, this.#pos, this.#len);
    }
    this.#start += this.#pos;
    this.#pos = 0;
    this.#len = tail;
    while (this.#len < n && !this.#eof) {
      const got = await this.#file.read(this.#buf.subarray(this.#len));
      if (got === null) this.#eof = true;
      else this.#len += got;
    }
    if (this.#len < n) throw new Error("the file ends inside its header");
  }

  async u8(): Promise<number> {
    await this.#ensure(1);
    return this.#buf[this.#pos++];
  }
  async u32(): Promise<number> {
    await this.#ensure(4);
    const v = this.#view.getUint32(this.#pos, true);
    this.#pos += 4;
    return v;
  }
  async u64(): Promise<bigint> {
    await this.#ensure(8);
    const v = this.#view.getBigUint64(this.#pos, true);
    this.#pos += 8;
    return v;
  }
  /** A u64 that must fit a JS number (counts, offsets, lengths). */
  async count(what: string): Promise<number> {
    const v = await this.u64();
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${what} ${v} is out of range`);
    return Number(v);
  }
  async string(): Promise<string> {
    const n = await this.count("string length");
    await this.#ensure(n);
    const s = this.#decoder.decode(this.#buf.subarray(this.#pos, this.#pos + n));
    this.#pos += n;
    return s;
  }
  /** Copies `n` raw bytes. */
  async bytes(n: number): Promise<Uint8Array<ArrayBuffer>> {
    await this.#ensure(n);
    const out = this.#buf.slice(this.#pos, this.#pos + n);
    this.#pos += n;
    return out;
  }

  async scalar(type: number): Promise<GgufValue> {
    switch (type) {
      case GgufType.UINT8:
        return await this.u8();
      case GgufType.INT8:
        return ((await this.u8()) << 24) >> 24;
      case GgufType.UINT16:
        return new DataView((await this.bytes(2)).buffer).getUint16(0, true);
      case GgufType.INT16:
        return new DataView((await this.bytes(2)).buffer).getInt16(0, true);
      case GgufType.UINT32:
        return await this.u32();
      case GgufType.INT32:
        return (await this.u32()) | 0;
      case GgufType.FLOAT32:
        return new DataView((await this.bytes(4)).buffer).getFloat32(0, true);
      case GgufType.BOOL:
        return (await this.u8()) !== 0;
      case GgufType.STRING:
        return await this.string();
      case GgufType.UINT64:
        return await this.u64();
      case GgufType.INT64:
        return BigInt.asIntN(64, await this.u64());
      case GgufType.FLOAT64:
        return new DataView((await this.bytes(8)).buffer).getFloat64(0, true);
      case GgufType.ARRAY:
        return await this.array();
      default:
        throw new Error(`unknown metadata value type ${type}`);
    }
  }

  async array(): Promise<GgufValue> {
    const type = await this.u32();
    const n = await this.count("array length");
    const numeric: Record<number, [number, (b: ArrayBuffer, n: number) => GgufValue]> = {
      [GgufType.UINT8]: [1, (b, n) => new Uint8Array(b, 0, n)],
      [GgufType.INT8]: [1, (b, n) => new Int8Array(b, 0, n)],
      [GgufType.UINT16]: [2, (b, n) => new Uint16Array(b, 0, n)],
      [GgufType.INT16]: [2, (b, n) => new Int16Array(b, 0, n)],
      [GgufType.UINT32]: [4, (b, n) => new Uint32Array(b, 0, n)],
      [GgufType.INT32]: [4, (b, n) => new Int32Array(b, 0, n)],
      [GgufType.FLOAT32]: [4, (b, n) => new Float32Array(b, 0, n)],
      [GgufType.UINT64]: [8, (b, n) => new BigUint64Array(b, 0, n)],
      [GgufType.INT64]: [8, (b, n) => new BigInt64Array(b, 0, n)],
      [GgufType.FLOAT64]: [8, (b, n) => new Float64Array(b, 0, n)],
    };
    const num = numeric[type];
    if (num) {
      // little-endian host (x86-64, aarch64): the bytes are the typed array
      const raw = await this.bytes(n * num[0]);
      return num[1](raw.buffer, n);
    }
    if (type === GgufType.BOOL) {
      const raw = await this.bytes(n);
      return Array.from(raw, (b) => b !== 0);
    }
    if (type === GgufType.STRING) {
      const out: string[] = new Array(n);
      for (let i = 0; i < n; i++) out[i] = await this.string();
      return out;
    }
    if (type === GgufType.ARRAY) {
      const out: GgufValue[] = new Array(n);
      for (let i = 0; i < n; i++) out[i] = await this.array();
      return out;
    }
    throw new Error(`unknown array element type ${type}`);
  }
}

const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian

/**
 * Reads a GGUF file's header: metadata, tensor infos and where the data starts. Only the
 * header region is read.
 *
 * @example
 * ```ts
 * const f = await readGguf("model.gguf");
 * console.log(f.metadata.get("general.architecture"), f.tensors.length);
 * ```
 */
export async function readGguf(path: string): Promise<GgufFile> {
  const fail = (detail: string): never => {
    throw new Error(`Cannot read GGUF file "${path}": ${detail}`);
  };
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    return fail(e instanceof Error ? e.message : String(e));
  }
  try {
    const fileSize = (await file.stat()).size;
    const r = new ChunkReader(file, fileSize);
    let magic: number;
    try {
      magic = await r.u32();
    } catch {
      return fail("the file is too short to be GGUF");
    }
    if (magic !== GGUF_MAGIC) fail("bad magic (not a GGUF file)");
    const version = await r.u32();
    if (version !== 2 && version !== 3) {
      fail(`version ${version} is not supported (supported: 2, 3)`);
    }
    try {
      const nTensors = await r.count("tensor count");
      const nKv = await r.count("metadata count");
      const metadata = new Map<string, GgufValue>();
      for (let i = 0; i < nKv; i++) {
        const key = await r.string();
        const type = await r.u32();
        metadata.set(key, await r.scalar(type));
      }
      const tensors: GgufTensorInfo[] = [];
      const rel: number[] = [];
      for (let i = 0; i < nTensors; i++) {
        const name = await r.string();
        const nDims = await r.u32();
        if (nDims > 4) throw new Error(`tensor "${name}" has ${nDims} dimensions`);
        const dims: number[] = [];
        for (let d = 0; d < nDims; d++) dims.push(await r.count(`tensor "${name}" dimension`));
        const type = await r.u32();
        rel.push(await r.count(`tensor "${name}" offset`));
        tensors.push({ name, dims, type, offset: 0 });
      }
      const alignValue = metadata.get("general.alignment");
      const alignment = alignValue === undefined ? 32 : Number(alignValue);
      if (!Number.isInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0) {
        throw new Error(`general.alignment ${alignment} is not a power of two`);
      }
      const dataOffset = Math.ceil(r.offset / alignment) * alignment;
      for (let i = 0; i < tensors.length; i++) {
        if (rel[i] % alignment !== 0) {
          throw new Error(`tensor "${tensors[i].name}" is not aligned to ${alignment} bytes`);
        }
        tensors[i].offset = dataOffset + rel[i];
        const t = supportedTypes[tensors[i].type];
        if (t) {
          const end = tensors[i].offset + tensorElements(tensors[i]) * t.bytes;
          if (end > fileSize) throw new Error(`tensor "${tensors[i].name}" extends past the end`);
        }
      }
      return { path, version, metadata, tensors, alignment, dataOffset, fileSize };
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      const head = new Uint8Array(Math.min(fileSize, 1 << 16));
      await file.seek(0, Deno.SeekMode.Start);
      const got = (await file.read(head)) ?? 0;
      return fail(hasReplacement(head.subarray(0, got)) ? `${msg}${mangledHint}` : msg);
    }
  } finally {
    file.close();
  }
}

const mangledHint =
  "; the file contains U+FFFD replacement sequences (EF BF BD): it was probably damaged by a text conversion of a binary file";

/** Whether `b` holds the UTF-8 encoding of U+FFFD. */
function hasReplacement(b: Uint8Array): boolean {
  for (let i = 0; i + 2 < b.length; i++) {
    if (b[i] === 0xef && b[i + 1] === 0xbf && b[i + 2] === 0xbd) return true;
  }
  return false;
}

/** Number of elements of a tensor. */
export function tensorElements(t: GgufTensorInfo): number {
  return t.dims.reduce((a, b) => a * b, 1);
}

// ------------------------------------------------------------
// typed metadata access

/** Typed getters over a GGUF file's metadata, failing with messages that name the key. */
export class GgufMeta {
  readonly #m: Map<string, GgufValue>;
  readonly #fail: (detail: string) => never;

  constructor(file: GgufFile, fail: (detail: string) => never) {
    this.#m = file.metadata;
    this.#fail = fail;
  }

  has(key: string): boolean {
    return this.#m.has(key);
  }

  /** A numeric scalar (integers of any width, floats) as a number. */
  number(key: string): number;
  number(key: string, fallback: number): number;
  number(key: string, fallback?: number): number {
    const v = this.#m.get(key);
    if (v === undefined) {
      if (fallback !== undefined) return fallback;
      return this.#fail(`metadata "${key}" is missing`);
    }
    if (typeof v === "number") return v;
    if (typeof v === "bigint") return Number(v);
    return this.#fail(`metadata "${key}" is not a number`);
  }

  string(key: string): string | undefined {
    const v = this.#m.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== "string") return this.#fail(`metadata "${key}" is not a string`);
    return v;
  }

  bool(key: string): boolean | undefined {
    const v = this.#m.get(key);
    if (v === undefined) return undefined;
    if (typeof v !== "boolean") return this.#fail(`metadata "${key}" is not a boolean`);
    return v;
  }

  strings(key: string): string[] | undefined {
    const v = this.#m.get(key);
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) {
      return this.#fail(`metadata "${key}" is not an array of strings`);
    }
    return v as string[];
  }

  /** A numeric array as float64 values (any element type). */
  numbers(key: string): Float64Array | undefined {
    const v = this.#m.get(key);
    if (v === undefined) return undefined;
    if (ArrayBuffer.isView(v) && !(v instanceof DataView)) {
      return Float64Array.from(v as ArrayLike<number | bigint>, (x) => Number(x));
    }
    return this.#fail(`metadata "${key}" is not a numeric array`);
  }
}

// ------------------------------------------------------------
// llama architecture

/** The error every GGUF model failure throws: `Cannot load model "x.gguf": detail`. */
function failer(name: string): (detail: string) => never {
  return (detail: string): never => {
    throw new Error(`Cannot load model "${name}": ${detail}`);
  };
}

/**
 * Maps `general.architecture == "llama"` metadata to the engine's model config. Other
 * architectures, partial rotary dimensions and RoPE scalings the engine does not implement
 * fail with a message naming them.
 *
 * Llama-3 RoPE scaling: when `rope.scaling.type` is `llama3`, its factor and frequency
 * factors come from `rope.scaling.*`; llama.cpp's converter instead writes the per-pair
 * divisors as a `rope_freqs.weight` tensor, which {@link ggufRopeFreqs} reads and
 * {@link fitLlama3Rope} turns back into parameters.
 */
export function ggufLlamaConfig(file: GgufFile, name: string = file.path): ModelConfig {
  const fail = failer(name);
  const m = new GgufMeta(file, fail);
  const arch = m.string("general.architecture");
  if (arch === undefined) fail(`metadata "general.architecture" is missing`);
  if (arch !== "llama") {
    fail(`architecture "${arch}" is not supported (supported: llama)`);
  }
  const k = (s: string) => `llama.${s}`;
  const dim = m.number(k("embedding_length"));
  const nHeads = m.number(k("attention.head_count"));
  const nKv = m.number(k("attention.head_count_kv"), nHeads);
  const headDim = m.number(k("attention.key_length"), nHeads > 0 ? dim / nHeads : 0);
  const valueLen = m.number(k("attention.value_length"), headDim);
  if (valueLen !== headDim) {
    fail(
      `attention.value_length ${valueLen} differs from key_length ${headDim}, which is not supported`,
    );
  }
  const ropeDims = m.number(k("rope.dimension_count"), headDim);
  if (ropeDims !== headDim) {
    fail(
      `rope.dimension_count ${ropeDims} is not the head size ${headDim} (partial RoPE is not supported)`,
    );
  }
  const tokens = m.strings("tokenizer.ggml.tokens");
  const embd = file.tensors.find((t) => t.name === "token_embd.weight");
  // the embedding rows are what the engine needs (the loader warns when the tokenizer has
  // more tokens than that)
  const vocab = embd?.dims[1] ?? m.number(k("vocab_size"), tokens?.length ?? 0);
  const config: ModelConfig = {
    n_layers: m.number(k("block_count")),
    dim,
    n_heads: nHeads,
    n_kv_heads: nKv,
    head_dim: headDim,
    ffn_dim: m.number(k("feed_forward_length")),
    vocab_size: vocab,
    max_context: m.number(k("context_length"), 0),
    rms_eps: m.number(k("attention.layer_norm_rms_epsilon"), 1e-5),
    tied_embeddings: !file.tensors.some((t) => t.name === "output.weight"),
    rope: {
      theta: m.number(k("rope.freq_base"), 10000),
      style: RopeStyle.INTERLEAVED,
      scaling: RopeScaling.NONE,
      factor: 1,
      low_freq_factor: 1,
      high_freq_factor: 1,
      original_max_position: 0,
    },
  };
  for (const [key, v] of Object.entries(config)) {
    if (typeof v === "number" && !(Number.isFinite(v) && v >= 0)) fail(`${key} ${v} is invalid`);
  }
  if (!Number.isInteger(headDim) || headDim <= 0) fail(`head size ${headDim} is invalid`);
  if (nKv <= 0 || nHeads % nKv !== 0) {
    fail(`head_count ${nHeads} is not a multiple of head_count_kv ${nKv}`);
  }
  const scalingType = m.string(k("rope.scaling.type"));
  const scalingFactor = m.number(k("rope.scaling.factor"), 1);
  if (scalingType === "llama3") {
    config.rope.scaling = RopeScaling.LLAMA3;
    config.rope.factor = scalingFactor;
    config.rope.low_freq_factor = m.number(k("rope.scaling.low_freq_factor"), 1);
    config.rope.high_freq_factor = m.number(k("rope.scaling.high_freq_factor"), 4);
    config.rope.original_max_position = m.number(
      k("rope.scaling.original_context_length"),
      8192,
    );
  } else if (scalingType !== undefined && scalingType !== "none" && scalingFactor !== 1) {
    fail(`RoPE scaling "${scalingType}" is not supported (supported: llama3)`);
  }
  return config;
}

const ggufLayerNames: Record<LayerPart, string> = {
  attn_norm: "attn_norm",
  wq: "attn_q",
  wk: "attn_k",
  wv: "attn_v",
  wo: "attn_output",
  ffn_norm: "ffn_norm",
  w_gate: "ffn_gate",
  w_down: "ffn_down",
  w_up: "ffn_up",
};

/** The GGUF tensor name of a llama block part (`blk.3.attn_q.weight`). */
export function ggufLayerTensor(layer: number, part: LayerPart): string {
  return `blk.${layer}.${ggufLayerNames[part]}.weight`;
}

/**
 * Checks every tensor of a llama GGUF file against the config (names, types, shapes) and
 * returns the uploads to make. Unknown tensors, missing tensors, unsupported types and
 * wrong shapes fail with a message that names the tensor.
 */
export function ggufTensorLoads(
  file: GgufFile,
  config: ModelConfig,
  name: string = file.path,
): TensorLoad[] {
  const fail = failer(name);
  const plan = llamaTensorPlan(config, {
    embd: "token_embd.weight",
    outNorm: "output_norm.weight",
    out: "output.weight",
    layer: ggufLayerTensor,
  });
  const byName = new Map(file.tensors.map((t) => [t.name, t]));
  const planned = new Set(plan.map((p) => p.name));
  for (const t of file.tensors) {
    if (planned.has(t.name) || t.name === "rope_freqs.weight") continue;
    fail(`tensor "${t.name}" is not part of the llama architecture this engine runs`);
  }
  const loads: TensorLoad[] = [];
  for (const p of plan) {
    const t = byName.get(p.name);
    if (!t) fail(`tensor "${p.name}" is missing`);
    const st = supportedTypes[t!.type];
    if (!st) {
      fail(
        `tensor "${p.name}" has type ${
          ggmlTypeName(t!.type)
        }, which is not supported (supported: F32, F16, BF16)`,
      );
    }
    const shape = [...t!.dims].reverse();
    if (shape.length !== p.shape.length || shape.some((d, i) => d !== p.shape[i])) {
      fail(`tensor "${p.name}" has shape [${shape}], expected [${p.shape}]`);
    }
    loads.push({
      name: p.name,
      kind: p.kind,
      layer: p.layer,
      shape: p.shape,
      dtype: st.dtype,
      path: file.path,
      offset: t!.offset,
      nbytes: tensorElements(t!) * st.bytes,
    });
  }
  return loads;
}

/** Reads the `rope_freqs.weight` tensor (llama.cpp's Llama-3 RoPE divisors), if present. */
export async function ggufRopeFreqs(file: GgufFile): Promise<Float32Array | null> {
  const t = file.tensors.find((x) => x.name === "rope_freqs.weight");
  if (!t) return null;
  if (t.type !== 0) {
    throw new Error(`Cannot load model "${file.path}": tensor "rope_freqs.weight" is not F32`);
  }
  const n = tensorElements(t);
  const f = await Deno.open(file.path, { read: true });
  try {
    await f.seek(t.offset, Deno.SeekMode.Start);
    const buf = new Uint8Array(n * 4);
    let got = 0;
    while (got < buf.length) {
      const r = await f.read(buf.subarray(got));
      if (r === null) throw new Error(`Cannot load model "${file.path}": the file is truncated`);
      got += r;
    }
    return new Float32Array(buf.buffer);
  } finally {
    f.close();
  }
}

/**
 * Llama-3 RoPE divisors for each rotated pair (head_dim/2 values), as Meta's reference and
 * llama.cpp's converter compute them: 1 for short wavelengths, `factor` for long ones, a
 * smooth blend in between.
 */
export function llama3RopeDivisors(
  headDim: number,
  theta: number,
  factor: number,
  lowFreqFactor: number,
  highFreqFactor: number,
  originalMaxPosition: number,
): Float64Array {
  const out = new Float64Array(headDim / 2);
  const lowWavelen = originalMaxPosition / lowFreqFactor;
  const highWavelen = originalMaxPosition / highFreqFactor;
  for (let i = 0; i < out.length; i++) {
    const freq = 1 / Math.pow(theta, (2 * i) / headDim);
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = factor;
    else {
      const smooth = (originalMaxPosition / wavelen - lowFreqFactor) /
        (highFreqFactor - lowFreqFactor);
      out[i] = 1 / ((1 - smooth) / factor + smooth);
    }
  }
  return out;
}

/**
 * Recovers Llama-3 RoPE scaling parameters from llama.cpp's `rope_freqs.weight` divisors:
 * the factor is the largest divisor; the frequency factors and original context are taken
 * from metadata when present, else Meta's published values (1, 4, 8192). The result is
 * accepted only if it reproduces every divisor (relative error 1e-4); otherwise null.
 */
export function fitLlama3Rope(
  divisors: Float32Array,
  headDim: number,
  theta: number,
  hints: { low?: number; high?: number; original?: number } = {},
): { factor: number; low: number; high: number; original: number } | null {
  if (divisors.length !== headDim / 2) return null;
  if (divisors.every((d) => d === 1)) {
    return { factor: 1, low: 1, high: 4, original: 8192 };
  }
  const factor = Math.max(...divisors);
  const low = hints.low ?? 1;
  const high = hints.high ?? 4;
  const original = hints.original ?? 8192;
  const want = llama3RopeDivisors(headDim, theta, factor, low, high, original);
  for (let i = 0; i < want.length; i++) {
    if (Math.abs(want[i] - divisors[i]) > 1e-4 * Math.abs(want[i])) return null;
  }
  return { factor, low, high, original };
}

/**
 * Applies `rope_freqs.weight` (when the file has it) to `config`: Llama-3 scaling that
 * the engine computes from parameters. Fails when the divisors are not Llama-3's.
 */
export async function applyGgufRopeFreqs(
  file: GgufFile,
  config: ModelConfig,
  name: string = file.path,
): Promise<void> {
  const divisors = await ggufRopeFreqs(file);
  if (!divisors) return;
  const m = new GgufMeta(file, failer(name));
  const fromMeta = config.rope.scaling === RopeScaling.LLAMA3;
  const fit = fitLlama3Rope(divisors, config.head_dim, config.rope.theta, {
    low: fromMeta ? config.rope.low_freq_factor : undefined,
    high: fromMeta ? config.rope.high_freq_factor : undefined,
    original: fromMeta
      ? config.rope.original_max_position
      : m.has("llama.rope.scaling.original_context_length")
      ? m.number("llama.rope.scaling.original_context_length")
      : undefined,
  });
  if (!fit) {
    failer(name)(
      `tensor "rope_freqs.weight" holds RoPE frequency factors that are not Llama-3's (only llama3 RoPE scaling is supported)`,
    );
  }
  if (fit!.factor === 1) return;
  config.rope.scaling = RopeScaling.LLAMA3;
  config.rope.factor = fit!.factor;
  config.rope.low_freq_factor = fit!.low;
  config.rope.high_freq_factor = fit!.high;
  config.rope.original_max_position = fit!.original;
}
