/**
 * safetensors files: an 8-byte little-endian header length, a JSON header mapping each
 * tensor name to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the end
 * of the header), then the data. Only the header is read here; tensor bytes are read by
 * the native engine at the absolute offsets this module computes. Also reads the shard
 * index (`model.safetensors.index.json`) and writes files (for the demo model and tests).
 *
 * @example
 * ```ts
 * import { readSafetensorsHeader } from "./safetensors.ts";
 * const h = await readSafetensorsHeader("model.safetensors");
 * console.log(h.tensors.get("model.norm.weight"));
 * ```
 *
 * @module
 */

/** One tensor's entry in a safetensors header. */
export interface SafetensorsTensor {
  name: string;
  dtype: string;
  shape: number[];
  /** Absolute file offset of the first byte. */
  offset: number;
  nbytes: number;
}

/** A parsed safetensors header. */
export interface SafetensorsHeader {
  path: string;
  tensors: Map<string, SafetensorsTensor>;
  metadata: Record<string, string>;
  /** Absolute offset where the data section starts. */
  dataOffset: number;
  fileSize: number;
}

/** Bytes per element of each safetensors dtype (sub-byte types are not listed). */
export const safetensorsDtypeBytes: Record<string, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

const MAX_HEADER = 100_000_000; // the format's own limit

async function readExactly(f: Deno.FsFile, n: number, what: string): Promise<Uint8Array> {
  const buf = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await f.read(buf.subarray(got));
    if (r === null) throw new Error(`the file ends inside its ${what}`);
    got += r;
  }
  return buf;
}

/** Reads and validates a safetensors header (not the data). */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const fail = (detail: string): never => {
    throw new Error(`Cannot read safetensors file "${path}": ${detail}`);
  };
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path, { read: true });
  } catch (e) {
    return fail(e instanceof Error ? e.message : String(e));
  }
  try {
    const fileSize = (await f.stat()).size;
    let header: unknown;
    let dataOffset = 0;
    try {
      const lenBytes = await readExactly(f, 8, "header length");
      const len = Number(new DataView(lenBytes.buffer).getBigUint64(0, true));
      if (len > MAX_HEADER || len + 8 > fileSize) {
        throw new Error(`header length ${len} is out of range`);
      }
      dataOffset = 8 + len;
      const text = new TextDecoder().decode(await readExactly(f, len, "header"));
      header = JSON.parse(text);
    } catch (e) {
      return fail(e instanceof Error ? e.message : String(e));
    }
    if (typeof header !== "object" || header === null || Array.isArray(header)) {
      return fail("the header is not a JSON object");
    }
    const tensors = new Map<string, SafetensorsTensor>();
    let metadata: Record<string, string> = {};
    for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
      if (name === "__metadata__") {
        metadata = (v ?? {}) as Record<string, string>;
        continue;
      }
      const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (
        typeof e?.dtype !== "string" || !Array.isArray(e.shape) ||
        !Array.isArray(e.data_offsets) || e.data_offsets.length !== 2
      ) {
        fail(`tensor "${name}" has a malformed entry`);
      }
      const shape = (e.shape as unknown[]).map(Number);
      const [begin, end] = (e.data_offsets as unknown[]).map(Number);
      if (shape.some((d) => !Number.isInteger(d) || d < 0)) {
        fail(`tensor "${name}" has a bad shape`);
      }
      if (!(Number.isInteger(begin) && Number.isInteger(end) && begin <= end)) {
        fail(`tensor "${name}" has bad data offsets`);
      }
      if (dataOffset + end > fileSize) fail(`tensor "${name}" extends past the end of the file`);
      const bytes = safetensorsDtypeBytes[e.dtype as string];
      const elems = shape.reduce((a, b) => a * b, 1);
      if (bytes !== undefined && elems * bytes !== end - begin) {
        fail(`tensor "${name}" has ${end - begin} bytes for shape [${shape}] of ${e.dtype}`);
      }
      tensors.set(name, {
        name,
        dtype: e.dtype as string,
        shape,
        offset: dataOffset + begin,
        nbytes: end - begin,
      });
    }
    return { path, tensors, metadata, dataOffset, fileSize };
  } finally {
    f.close();
  }
}

/**
 * Reads `model.safetensors.index.json` in `dir`: tensor name → shard file name. Returns
 * null when there is no index.
 */
export async function readSafetensorsIndex(dir: string): Promise<Map<string, string> | null> {
  const path = `${dir}/model.safetensors.index.json`;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  let json: { weight_map?: Record<string, unknown> };
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`Cannot read "${path}": ${e instanceof Error ? e.message : e}`);
  }
  if (typeof json?.weight_map !== "object" || json.weight_map === null) {
    throw new Error(`Cannot read "${path}": "weight_map" is missing`);
  }
  const map = new Map<string, string>();
  for (const [name, file] of Object.entries(json.weight_map)) {
    if (typeof file !== "string" || file.includes("/") || file.includes("\\")) {
      throw new Error(`Cannot read "${path}": tensor "${name}" maps to a bad file name`);
    }
    map.set(name, file);
  }
  return map;
}

/** One tensor to write with {@link writeSafetensors}. */
export interface SafetensorsInput {
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

/**
 * Writes a safetensors file: tensors in the given order, header padded with spaces to a
 * multiple of 8 bytes (as the reference implementation does).
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, SafetensorsInput>,
  metadata: Record<string, string> = {},
): Promise<void> {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let off = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.length] };
    off += t.data.length;
  }
  let json = JSON.stringify(header);
  const enc = new TextEncoder();
  const pad = (8 - (enc.encode(json).length % 8)) % 8;
  json += " ".repeat(pad);
  const hb = enc.encode(json);
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    const len = new Uint8Array(8);
    new DataView(len.buffer).setBigUint64(0, BigInt(hb.length), true);
    await writeAll(f, len);
    await writeAll(f, hb);
    for (const t of Object.values(tensors)) await writeAll(f, t.data);
  } finally {
    f.close();
  }
}

async function writeAll(f: Deno.FsFile, b: Uint8Array): Promise<void> {
  let o = 0;
  while (o < b.length) o += await f.write(b.subarray(o));
}
