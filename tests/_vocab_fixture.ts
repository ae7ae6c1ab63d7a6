/**
 * The Llama-2 SentencePiece vocabulary of llama.cpp's tokenizer tests
 * (`../shared/models/tokenizer_tests/ggml-vocab-llama-spm.gguf`), ready to read.
 *
 * The copy in shared/ went through a lossy text conversion at some point: every byte
 * sequence that is not valid UTF-8 became U+FFFD (EF BF BD), 65,205 times. Token texts
 * (valid UTF-8), token types, ids and flags survived; the float32 fields did not: the 32,000
 * token scores, the RMS epsilon and the RoPE dimension count (128). When the file is damaged this way, this module rebuilds
 * the original bytes and proves the rebuild: replaying the same conversion on the rebuilt
 * file must give the damaged file byte for byte, and nothing outside the two rebuilt fields
 * may hold a replacement character. The rebuilt fields:
 *
 * - scores: SentencePiece BPE gives normal token i the score −(i − first normal id), as the
 *   intact stories260K vocabulary shows; the Llama-2 model also gives −1e9 to the pieces
 *   made only of "▁". Control and byte tokens score 0.
 * - RMS epsilon: 1e-5; RoPE dimension count: embedding_length / head_count (neither is used
 *   by tokenization).
 *
 * A clean copy of the file is used as it is.
 *
 * @module
 */
import { readGguf } from "../engine/model/gguf.ts";
import { sharedModels } from "./_util.ts";

const REPLACEMENT = [0xef, 0xbf, 0xbd];

function findBytes(hay: Uint8Array, needle: Uint8Array, from = 0): number {
  outer: for (let i = from; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

function countReplacements(b: Uint8Array): number {
  let n = 0;
  for (let i = 0; i + 2 < b.length; i++) {
    if (b[i] === REPLACEMENT[0] && b[i + 1] === REPLACEMENT[1] && b[i + 2] === REPLACEMENT[2]) n++;
  }
  return n;
}

/** The offset where the next metadata key starts: u64 length, then a [a-z0-9_.] key. */
function nextKey(b: Uint8Array, from: number): number {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (let i = from; i + 8 < b.length; i++) {
    const len = Number(dv.getBigUint64(i, true));
    if (len < 4 || len > 128 || i + 8 + len + 4 > b.length) continue;
    let ok = true;
    for (let j = 0; j < len && ok; j++) {
      const c = b[i + 8 + j];
      ok = (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x5f || c === 0x2e;
    }
    if (ok && dv.getUint32(i + 8 + len, true) < 13) return i;
  }
  return -1;
}

/** Start of the value of metadata `key` (after its type code). */
function valueStart(b: Uint8Array, key: string): number {
  const k = new TextEncoder().encode(key);
  const at = findBytes(b, k);
  if (at < 0) throw new Error(`key "${key}" not found`);
  return at + k.length + 4;
}

/** Rebuilds the damaged vocabulary; throws when the rebuild does not explain the damage. */
function rebuild(damaged: Uint8Array): Uint8Array {
  const dv = new DataView(damaged.buffer, damaged.byteOffset, damaged.byteLength);
  // RMS epsilon (float32 scalar)
  const epsStart = valueStart(damaged, "llama.attention.layer_norm_rms_epsilon");
  const epsEnd = nextKey(damaged, epsStart);
  // tokens (intact): u32 element type 8, u64 count, then strings
  let p = valueStart(damaged, "tokenizer.ggml.tokens");
  if (dv.getUint32(p, true) !== 8) throw new Error("tokenizer.ggml.tokens is not a string array");
  const n = Number(dv.getBigUint64(p + 4, true));
  p += 12;
  const dec = new TextDecoder("utf-8", { fatal: true });
  const tokens: string[] = [];
  for (let i = 0; i < n; i++) {
    const len = Number(dv.getBigUint64(p, true));
    tokens.push(dec.decode(damaged.subarray(p + 8, p + 8 + len)));
    p += 8 + len;
  }
  // scores (float32 array): header intact, payload damaged
  const scoresHead = valueStart(damaged, "tokenizer.ggml.scores");
  if (dv.getUint32(scoresHead, true) !== 6 || Number(dv.getBigUint64(scoresHead + 4, true)) !== n) {
    throw new Error("tokenizer.ggml.scores header is not float32[n_tokens]");
  }
  const scoresStart = scoresHead + 12;
  const scoresEnd = nextKey(damaged, scoresStart);
  // token types follow as the next key: intact int32 values
  const typesAt = valueStart(damaged, "tokenizer.ggml.token_type") + 12;
  const types = new Int32Array(damaged.slice(typesAt, typesAt + 4 * n).buffer);
  const firstNormal = types.findIndex((t) => t === 1);
  const scores = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    if (types[i] !== 1) scores[i] = 0;
    else if (/^\u2581+$/.test(tokens[i])) scores[i] = -1e9;
    else scores[i] = -(i - firstNormal);
  }
  // the head size, from two intact fields: 4096 / 32
  const u32At = (key: string) => dv.getUint32(valueStart(damaged, key), true);
  const headDim = u32At("llama.embedding_length") / u32At("llama.attention.head_count");
  const ropeStart = valueStart(damaged, "llama.rope.dimension_count");
  const fixes = [
    { start: epsStart, end: epsEnd, bytes: new Uint8Array(new Float32Array([1e-5]).buffer) },
    {
      start: ropeStart,
      end: nextKey(damaged, ropeStart),
      bytes: new Uint8Array(new Uint32Array([headDim]).buffer),
    },
    { start: scoresStart, end: scoresEnd, bytes: new Uint8Array(scores.buffer) },
  ].sort((x, y) => x.start - y.start);
  const pieces: Uint8Array[] = [];
  const kept: Uint8Array[] = [];
  let at = 0;
  for (const f of fixes) {
    kept.push(damaged.subarray(at, f.start));
    pieces.push(damaged.subarray(at, f.start), f.bytes);
    at = f.end;
  }
  kept.push(damaged.subarray(at));
  pieces.push(damaged.subarray(at));
  // token texts are valid UTF-8 by construction, so the "\uFFFD" pieces among them are real
  // (Llama-2 has two); any other replacement would be unrepaired damage
  const inTokens = tokens.reduce((a, t) => a + (t.match(/\uFFFD/g)?.length ?? 0), 0);
  const left = kept.reduce((a, k) => a + countReplacements(k), 0);
  if (left !== inTokens) {
    throw new Error(`${left - inTokens} replacement characters outside the rebuilt fields`);
  }
  const out = new Uint8Array(pieces.reduce((a, x) => a + x.length, 0));
  let o = 0;
  for (const x of pieces) {
    out.set(x, o);
    o += x.length;
  }
  // replaying the lossy conversion must give the damaged file exactly
  const replay = new TextEncoder().encode(new TextDecoder().decode(out));
  if (replay.length !== damaged.length || replay.some((x, i) => x !== damaged[i])) {
    throw new Error("the rebuilt file does not reproduce the damaged one");
  }
  return out;
}

/**
 * The path of a readable ggml-vocab-llama-spm.gguf (a verified rebuild in a temp dir when
 * the shared copy is damaged), with a note saying which; null when shared/ is absent.
 */
export async function llamaSpmVocab(): Promise<{ path: string; note: string } | null> {
  if (!sharedModels) return null;
  const path = `${sharedModels}/tokenizer_tests/ggml-vocab-llama-spm.gguf`;
  try {
    await readGguf(path);
    return { path, note: "shared copy" };
  } catch (e) {
    const damaged = await Deno.readFile(path);
    const count = countReplacements(damaged);
    if (count === 0) throw e;
    const fixed = rebuild(damaged);
    // the repository's ignored .cache/ holds the rebuild: one file, replaced atomically
    const dir = new URL("../.cache/test-fixtures/", import.meta.url).pathname;
    await Deno.mkdir(dir, { recursive: true });
    const out = `${dir}ggml-vocab-llama-spm.rebuilt.gguf`;
    const tmp = `${out}.${crypto.randomUUID()}.tmp`;
    await Deno.writeFile(tmp, fixed);
    await Deno.rename(tmp, out);
    return {
      path: out,
      note:
        `shared copy is damaged (${count} U+FFFD replacements from a text conversion); using a rebuild verified to reproduce it byte for byte`,
    };
  }
}
