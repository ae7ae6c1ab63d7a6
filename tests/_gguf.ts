/**
 * A small GGUF v3 writer for tests: synthetic files with chosen metadata, tensor types
 * and shapes, written the way ggml lays them out (header, tensor infos, padding to the
 * alignment, tensor data each aligned).
 *
 * @module
 */
import { GgufType } from "../engine/model/gguf.ts";

/** A metadata value with its GGUF type (arrays give their element type). */
export type KvValue =
  | {
    type: "u32" | "i32" | "f32" | "u64" | "bool" | "string";
    value: number | bigint | boolean | string;
  }
  | { type: "array"; of: "string"; value: string[] }
  | { type: "array"; of: "f32" | "i32"; value: ArrayLike<number> };

/** One tensor: dims fastest first (GGUF order), ggml type code, raw bytes. */
export interface TensorIn {
  name: string;
  dims: number[];
  type: number;
  data: Uint8Array;
}

const scalarCode = {
  u32: GgufType.UINT32,
  i32: GgufType.INT32,
  f32: GgufType.FLOAT32,
  u64: GgufType.UINT64,
  bool: GgufType.BOOL,
  string: GgufType.STRING,
} as const;

class Out {
  parts: Uint8Array[] = [];
  size = 0;
  #enc = new TextEncoder();
  push(b: Uint8Array) {
    this.parts.push(b);
    this.size += b.length;
  }
  u32(v: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, true);
    this.push(b);
  }
  i32(v: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setInt32(0, v, true);
    this.push(b);
  }
  f32(v: number) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    this.push(b);
  }
  u64(v: number | bigint) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
    this.push(b);
  }
  str(s: string) {
    const b = this.#enc.encode(s);
    this.u64(b.length);
    this.push(b);
  }
  pad(align: number) {
    const n = (align - (this.size % align)) % align;
    if (n) this.push(new Uint8Array(n));
  }
  bytes(): Uint8Array<ArrayBuffer> {
    const out = new Uint8Array(this.size);
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}

/** The bytes of a GGUF v3 file. */
export function ggufBytes(
  kv: [string, KvValue][],
  tensors: TensorIn[],
  alignment = 32,
): Uint8Array<ArrayBuffer> {
  const o = new Out();
  o.u32(0x46554747);
  o.u32(3);
  o.u64(tensors.length);
  o.u64(kv.length);
  for (const [key, v] of kv) {
    o.str(key);
    if (v.type === "array") {
      o.u32(GgufType.ARRAY);
      if (v.of === "string") {
        o.u32(GgufType.STRING);
        o.u64(v.value.length);
        for (const s of v.value) o.str(s);
      } else {
        o.u32(v.of === "f32" ? GgufType.FLOAT32 : GgufType.INT32);
        o.u64(v.value.length);
        for (let i = 0; i < v.value.length; i++) {
          if (v.of === "f32") o.f32(v.value[i]);
          else o.i32(v.value[i]);
        }
      }
      continue;
    }
    o.u32(scalarCode[v.type]);
    switch (v.type) {
      case "u32":
        o.u32(Number(v.value));
        break;
      case "i32":
        o.i32(Number(v.value));
        break;
      case "f32":
        o.f32(Number(v.value));
        break;
      case "u64":
        o.u64(v.value as number | bigint);
        break;
      case "bool":
        o.push(Uint8Array.of(v.value ? 1 : 0));
        break;
      case "string":
        o.str(String(v.value));
        break;
    }
  }
  let off = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    offsets.push(off);
    off += Math.ceil(t.data.length / alignment) * alignment;
  }
  tensors.forEach((t, i) => {
    o.str(t.name);
    o.u32(t.dims.length);
    for (const d of t.dims) o.u64(d);
    o.u32(t.type);
    o.u64(offsets[i]);
  });
  o.pad(alignment);
  for (const t of tensors) {
    o.push(t.data);
    o.pad(alignment);
  }
  return o.bytes();
}

/** Metadata of a tiny llama model (dim 8, 1 layer, 2 heads, 1 KV head, ffn 16, vocab 4). */
export function tinyLlamaKv(overrides: Record<string, KvValue> = {}): [string, KvValue][] {
  const base: Record<string, KvValue> = {
    "general.architecture": { type: "string", value: "llama" },
    "llama.context_length": { type: "u32", value: 64 },
    "llama.embedding_length": { type: "u32", value: 8 },
    "llama.block_count": { type: "u32", value: 1 },
    "llama.feed_forward_length": { type: "u32", value: 16 },
    "llama.attention.head_count": { type: "u32", value: 2 },
    "llama.attention.head_count_kv": { type: "u32", value: 1 },
    "llama.attention.layer_norm_rms_epsilon": { type: "f32", value: 1e-5 },
    "llama.rope.dimension_count": { type: "u32", value: 4 },
  };
  return Object.entries({ ...base, ...overrides });
}

/** The tensors of {@link tinyLlamaKv}'s model in F32, optionally overriding one's type. */
export function tinyLlamaTensors(override?: { name: string; type: number }): TensorIn[] {
  const dim = 8, ffn = 16, vocab = 4, q = 8, kv = 4;
  const shapes: [string, number[]][] = [
    ["token_embd.weight", [dim, vocab]],
    ["output_norm.weight", [dim]],
    ["blk.0.attn_norm.weight", [dim]],
    ["blk.0.attn_q.weight", [dim, q]],
    ["blk.0.attn_k.weight", [dim, kv]],
    ["blk.0.attn_v.weight", [dim, kv]],
    ["blk.0.attn_output.weight", [q, dim]],
    ["blk.0.ffn_norm.weight", [dim]],
    ["blk.0.ffn_gate.weight", [dim, ffn]],
    ["blk.0.ffn_down.weight", [ffn, dim]],
    ["blk.0.ffn_up.weight", [dim, ffn]],
  ];
  return shapes.map(([name, dims]) => {
    const n = dims.reduce((a, b) => a * b, 1);
    const type = override?.name === name ? override.type : 0;
    return { name, dims, type, data: new Uint8Array(new Float32Array(n).fill(0.5).buffer) };
  });
}
