/**
 * SentencePiece vocabularies embedded in GGUF files (`tokenizer.ggml.model = "llama"`),
 * tokenized the way llama.cpp does it:
 *
 * 1. Control, unknown and user-defined token texts in the input are split out first and
 *    emitted as their ids (longest text first).
 * 2. Every other fragment gets a leading space when it follows the start or a special token
 *    (`add_space_prefix`, default true), and every space becomes "▁" (U+2581).
 * 3. The fragment is split into characters; adjacent pairs whose concatenation is a token
 *    enter a priority queue ordered by that token's score (highest first, leftmost on ties);
 *    the best pair is merged and its new neighbours are queued, until nothing merges.
 * 4. A symbol that is not a token falls back to its UTF-8 bytes as `<0xXX>` tokens.
 *
 * Decoding maps "▁" back to spaces and byte tokens back to bytes, then reads the bytes as
 * UTF-8. The space that encoding put at the start is removed when the ids begin with BOS
 * (a whole prompt); a continuation (ids without BOS) keeps its leading space, so that
 * `prompt + decode(generated)` is the full text.
 *
 * @example
 * ```ts
 * import { readGguf } from "./gguf.ts";
 * import { SpmTokenizer } from "./tokenizer_spm.ts";
 * const tok = SpmTokenizer.fromGguf(await readGguf("stories260K.gguf"));
 * tok.encode("Once upon a time"); // [1, 403, 407, 261, 378]
 * ```
 *
 * @module
 */
import type { Tokenizer } from "./types.ts";
import { type GgufFile, GgufMeta } from "./gguf.ts";

/** llama_token_type values stored in `tokenizer.ggml.token_type`. */
export const TokenType = {
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

/** What an SPM vocabulary consists of. */
export interface SpmVocab {
  tokens: readonly string[];
  scores: ArrayLike<number>;
  types: ArrayLike<number>;
  bosId: number | null;
  eosId: number | null;
  unkId: number | null;
  /** Extra end-of-generation ids (eot, eom). */
  extraEosIds?: readonly number[];
  addBos: boolean;
  addEos: boolean;
  addSpacePrefix: boolean;
}

const SPACE = "\u2581";

/** A max-heap of merge candidates: highest score first, then leftmost. */
class BigramQueue {
  #left: number[] = [];
  #right: number[] = [];
  #score: number[] = [];
  #size: number[] = [];
  #heap: number[] = []; // indexes into the arrays above

  get length(): number {
    return this.#heap.length;
  }

  #before(a: number, b: number): boolean {
    const sa = this.#score[a];
    const sb = this.#score[b];
    return sa > sb || (sa === sb && this.#left[a] < this.#left[b]);
  }

  push(left: number, right: number, score: number, size: number): void {
    const id = this.#left.length;
    this.#left.push(left);
    this.#right.push(right);
    this.#score.push(score);
    this.#size.push(size);
    const h = this.#heap;
    let i = h.length;
    h.push(id);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.#before(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }

  /** Removes the best entry; returns [left, right, size]. */
  pop(): [number, number, number] {
    const h = this.#heap;
    const top = h[0];
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.#before(h[l], h[m])) m = l;
        if (r < h.length && this.#before(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return [this.#left[top], this.#right[top], this.#size[top]];
  }
}

/** A SentencePiece (llama) tokenizer over a GGUF vocabulary. */
export class SpmTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosIds: readonly number[];
  readonly #v: SpmVocab;
  readonly #ids = new Map<string, number>();
  readonly #byteIds = new Int32Array(256).fill(-1);
  /** Special texts split out before tokenizing, longest first, with whether they are
   * user-defined (always split) or control/unknown (split when parsing specials). */
  readonly #specials: { text: string; id: number; userDefined: boolean }[] = [];
  readonly #encoder = new TextEncoder();
  readonly #decoder = new TextDecoder();

  constructor(vocab: SpmVocab) {
    const n = vocab.tokens.length;
    if (vocab.scores.length !== n || vocab.types.length !== n) {
      throw new Error(
        `SentencePiece vocabulary has ${n} tokens but ${vocab.scores.length} scores and ${vocab.types.length} types`,
      );
    }
    this.#v = vocab;
    this.vocabSize = n;
    for (let i = 0; i < n; i++) {
      // the first id wins when a text repeats (llama.cpp builds the map the same way)
      if (!this.#ids.has(vocab.tokens[i])) this.#ids.set(vocab.tokens[i], i);
      const t = vocab.types[i];
      if (t === TokenType.BYTE) {
        const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(vocab.tokens[i]);
        if (m) this.#byteIds[parseInt(m[1], 16)] = i;
      } else if (
        (t === TokenType.CONTROL || t === TokenType.UNKNOWN || t === TokenType.USER_DEFINED) &&
        vocab.tokens[i].length > 0
      ) {
        this.#specials.push({
          text: vocab.tokens[i],
          id: i,
          userDefined: t === TokenType.USER_DEFINED,
        });
      }
    }
    this.#specials.sort((a, b) => b.text.length - a.text.length);
    this.bosId = vocab.bosId;
    const eos = new Set<number>();
    if (vocab.eosId !== null) eos.add(vocab.eosId);
    for (const id of vocab.extraEosIds ?? []) eos.add(id);
    this.eosIds = [...eos];
  }

  /**
   * Builds the tokenizer from a GGUF header with `tokenizer.ggml.model = "llama"`.
   * Returns null when the file has no vocabulary; throws for other tokenizer models.
   */
  static fromGguf(file: GgufFile): SpmTokenizer | null {
    const fail = (detail: string): never => {
      throw new Error(`Cannot load the tokenizer of "${file.path}": ${detail}`);
    };
    const m = new GgufMeta(file, fail);
    const model = m.string("tokenizer.ggml.model");
    if (model === undefined) return null;
    if (model !== "llama") {
      fail(`tokenizer model "${model}" is not supported (supported: llama, gpt2)`);
    }
    const tokens = m.strings("tokenizer.ggml.tokens") ?? fail("tokenizer.ggml.tokens is missing");
    const n = tokens.length;
    const scores = m.numbers("tokenizer.ggml.scores") ?? new Float64Array(n);
    const types = m.numbers("tokenizer.ggml.token_type") ??
      Float64Array.from(tokens, () => TokenType.NORMAL);
    const id = (key: string, fallback: number | null): number | null => {
      if (!m.has(key)) return fallback;
      const v = m.number(key);
      return v >= 0 && v < n ? v : null; // 0xFFFFFFFF / -1: none
    };
    const extra = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
      .map((k) => id(k, null))
      .filter((x): x is number => x !== null);
    return new SpmTokenizer({
      tokens,
      scores,
      types,
      bosId: id("tokenizer.ggml.bos_token_id", 1),
      eosId: id("tokenizer.ggml.eos_token_id", 2),
      unkId: id("tokenizer.ggml.unknown_token_id", 0),
      extraEosIds: extra,
      addBos: m.bool("tokenizer.ggml.add_bos_token") ?? true,
      addEos: m.bool("tokenizer.ggml.add_eos_token") ?? false,
      addSpacePrefix: m.bool("tokenizer.ggml.add_space_prefix") ?? true,
    });
  }

  /**
   * Encodes text. Control and user-defined token texts in `text` ("<s>") become their ids;
   * `addSpecialTokens` (default true) adds BOS (and EOS) as the vocabulary asks.
   */
  encode(
    text: string,
    opts: { addSpecialTokens?: boolean; parseSpecial?: boolean } = {},
  ): number[] {
    const addSpecial = opts.addSpecialTokens ?? true;
    const parseSpecial = opts.parseSpecial ?? true;
    const out: number[] = [];
    if (addSpecial && this.#v.addBos && this.#v.bosId !== null) out.push(this.#v.bosId);
    if (text.length > 0) {
      let prevSpecial = true;
      for (const frag of this.#partition(text, parseSpecial)) {
        if (typeof frag === "number") {
          out.push(frag);
          prevSpecial = true;
          continue;
        }
        let s = this.#v.addSpacePrefix && prevSpecial ? " " + frag : frag;
        s = s.replaceAll(" ", SPACE);
        this.#tokenize(s, out);
        prevSpecial = false;
      }
    }
    if (addSpecial && this.#v.addEos && this.#v.eosId !== null) out.push(this.#v.eosId);
    return out;
  }

  /** Splits special token texts out of `text`: strings are raw text, numbers token ids. */
  #partition(text: string, parseSpecial: boolean): (string | number)[] {
    let frags: (string | number)[] = [text];
    for (const sp of this.#specials) {
      if (!parseSpecial && !sp.userDefined) continue;
      const next: (string | number)[] = [];
      for (const f of frags) {
        if (typeof f === "number" || !f.includes(sp.text)) {
          next.push(f);
          continue;
        }
        const parts = f.split(sp.text);
        parts.forEach((p, i) => {
          if (i > 0) next.push(sp.id);
          if (p.length > 0) next.push(p);
        });
      }
      frags = next;
    }
    return frags;
  }

  /** The SPM merge loop over one fragment (spaces already escaped). */
  #tokenize(text: string, out: number[]): void {
    // symbols: code points as [start, end) ranges of `text` in a doubly linked list
    const start: number[] = [];
    const len: number[] = [];
    for (let i = 0; i < text.length;) {
      const cp = text.codePointAt(i)!;
      const w = cp > 0xffff ? 2 : 1;
      start.push(i);
      len.push(w);
      i += w;
    }
    const n = start.length;
    const prev = Array.from({ length: n }, (_, i) => i - 1);
    const next = Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1));
    const queue = new BigramQueue();
    const tryAdd = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const size = len[left] + len[right];
      const id = this.#ids.get(text.substr(start[left], size));
      if (id === undefined) return;
      queue.push(left, right, this.#v.scores[id], size);
    };
    for (let i = 1; i < n; i++) tryAdd(i - 1, i);
    while (queue.length > 0) {
      const [left, right, size] = queue.pop();
      // stale entries: one side already merged away or grown since it was queued
      if (len[left] === 0 || len[right] === 0 || len[left] + len[right] !== size) continue;
      len[left] += len[right];
      len[right] = 0;
      next[left] = next[right];
      if (next[right] >= 0) prev[next[right]] = left;
      tryAdd(prev[left], left);
      tryAdd(left, next[left]);
    }
    for (let i = n > 0 ? 0 : -1; i !== -1; i = next[i]) {
      const piece = text.substr(start[i], len[i]);
      const id = this.#ids.get(piece);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      // byte fallback: only single code points can be left unmerged here
      for (const b of this.#encoder.encode(piece)) {
        const bid = this.#byteIds[b];
        if (bid >= 0) out.push(bid);
        else if (this.#v.unkId !== null) out.push(this.#v.unkId);
      }
    }
  }

  /** The bytes one token stands for in output; control tokens only when `special`. */
  #pieceBytes(id: number, special: boolean): Uint8Array | null {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) return null;
    const t = this.#v.types[id];
    const text = this.#v.tokens[id];
    switch (t) {
      case TokenType.CONTROL:
      case TokenType.UNKNOWN:
        return special ? this.#encoder.encode(text) : null;
      case TokenType.USER_DEFINED:
        return this.#encoder.encode(text);
      case TokenType.BYTE: {
        const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(text);
        return m ? Uint8Array.of(parseInt(m[1], 16)) : this.#encoder.encode(text);
      }
      case TokenType.NORMAL:
        return this.#encoder.encode(text.replaceAll(SPACE, " "));
      default: // UNUSED and unknown types print nothing, as in llama.cpp
        return null;
    }
  }

  /** Decodes ids to text (see the module comment for the leading space). */
  decode(ids: readonly number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    const special = !(opts.skipSpecialTokens ?? true);
    const parts: Uint8Array[] = [];
    let total = 0;
    // the space the encoder put after BOS goes; a continuation keeps its own
    let strip = this.#v.addSpacePrefix && ids.length > 0 && ids[0] === this.#v.bosId;
    for (let i = 0; i < ids.length; i++) {
      let p = this.#pieceBytes(ids[i], special);
      if (!p || p.length === 0) continue;
      if (strip && i > 0) {
        if (p[0] === 0x20) p = p.subarray(1);
        strip = false;
      }
      parts.push(p);
      total += p.length;
    }
    const bytes = new Uint8Array(total);
    let o = 0;
    for (const p of parts) {
      bytes.set(p, o);
      o += p.length;
    }
    return this.#decoder.decode(bytes);
  }

  /** One token's text as it appears in output (control tokens included). */
  tokenText(id: number): string {
    const p = this.#pieceBytes(id, true);
    if (!p) return "";
    const t = this.#v.types[id];
    if (t === TokenType.BYTE && p.length === 1 && p[0] >= 0x80) return this.#v.tokens[id];
    return this.#decoder.decode(p);
  }

  /** Whether `id` is a control or unknown token. */
  isSpecial(id: number): boolean {
    const t = this.#v.types[id];
    return t === TokenType.CONTROL || t === TokenType.UNKNOWN;
  }
}
