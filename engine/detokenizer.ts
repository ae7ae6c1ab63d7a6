/**
 * Incremental detokenization with stop strings: turns a growing list of generated token
 * ids into text deltas that never change once emitted.
 *
 * Decoding one token at a time is wrong for most tokenizers (SentencePiece drops the
 * leading space of the first piece; byte-level tokens split UTF-8 characters), so the
 * text of new tokens is the difference between decoding a window that ends before them
 * and the same window that includes them (vLLM's prefix/read offsets). The window starts a
 * few tokens into the prompt, so the first generated token gets its leading space.
 *
 * Text is held back while it ends in U+FFFD (an incomplete UTF-8 sequence) or could be
 * the start of a stop string; a stop string found in the text ends generation and is not
 * part of the output.
 *
 * @example
 * ```ts
 * import { IncrementalDetokenizer } from "./detokenizer.ts";
 * const d = new IncrementalDetokenizer((ids) => ids.map((i) => String.fromCharCode(i)).join(""), [], ["\n"]);
 * d.push(104); // "h"
 * d.push(10); // stop: the result has stopped = true
 * ```
 *
 * @module
 */

/** Decodes token ids to text (special tokens skipped). */
export type DecodeFn = (ids: readonly number[]) => string;

/** The result of {@link IncrementalDetokenizer.push}. */
export interface DetokenizeStep {
  /** New text that is final (possibly empty). */
  text: string;
  /** A stop string was completed; `text` ends right before it and generation must end. */
  stopped: boolean;
  /** The stop string that matched, when `stopped`. */
  stopString: string | null;
}

/** Prompt tokens decoded before the first generated one, for the leading-space context. */
const PROMPT_CONTEXT = 5;

/** Turns generated ids into stable text deltas; one per request. */
export class IncrementalDetokenizer {
  readonly #decode: DecodeFn;
  readonly #stops: readonly string[];
  readonly #maxStop: number;
  /** Context prompt ids followed by every generated id. */
  readonly #ids: number[];
  #prefixOffset: number;
  #readOffset: number;
  /** Every stable character decoded so far (held-back tail included). */
  #text = "";
  /** How much of #text has been emitted. */
  #emitted = 0;
  #stopped = false;

  /**
   * @param decode the tokenizer's decode (skipping special tokens)
   * @param promptIds the prompt; its last few ids give the first token its context
   * @param stopStrings strings that end generation (empty strings are ignored)
   */
  constructor(decode: DecodeFn, promptIds: readonly number[], stopStrings: readonly string[]) {
    this.#decode = decode;
    this.#stops = stopStrings.filter((s) => s.length > 0);
    this.#maxStop = this.#stops.reduce((m, s) => Math.max(m, s.length), 0);
    const context = promptIds.slice(Math.max(0, promptIds.length - PROMPT_CONTEXT));
    this.#ids = [...context];
    this.#prefixOffset = 0;
    this.#readOffset = context.length;
  }

  /** Whether a stop string has been found (later pushes return nothing). */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** Every character emitted so far. */
  get emittedText(): string {
    return this.#text.slice(0, this.#emitted);
  }

  /** Adds one generated token; returns the text that became final. */
  push(id: number): DetokenizeStep {
    if (this.#stopped) return { text: "", stopped: true, stopString: null };
    this.#ids.push(id);
    const prefix = this.#decode(this.#ids.slice(this.#prefixOffset, this.#readOffset));
    const full = this.#decode(this.#ids.slice(this.#prefixOffset));
    if (full.length > prefix.length && !full.endsWith("\uFFFD")) {
      this.#text += full.slice(prefix.length);
      this.#prefixOffset = this.#readOffset;
      this.#readOffset = this.#ids.length;
    }
    return this.#release(false);
  }

  /** Ends the stream: returns whatever is still held back (incomplete tails included). */
  flush(): string {
    if (this.#stopped) return "";
    const prefix = this.#decode(this.#ids.slice(this.#prefixOffset, this.#readOffset));
    const full = this.#decode(this.#ids.slice(this.#prefixOffset));
    if (full.length > prefix.length) this.#text += full.slice(prefix.length);
    this.#prefixOffset = this.#readOffset = this.#ids.length;
    return this.#release(true).text;
  }

  #release(final: boolean): DetokenizeStep {
    if (this.#stops.length > 0) {
      // A stop string can only newly appear in text that was not emitted yet, or straddle
      // the boundary by at most maxStop - 1 characters.
      const from = Math.max(0, this.#emitted - this.#maxStop + 1);
      let at = -1;
      let which: string | null = null;
      for (const s of this.#stops) {
        const i = this.#text.indexOf(s, from);
        if (i >= 0 && (at < 0 || i < at)) {
          at = i;
          which = s;
        }
      }
      if (at >= 0) {
        const text = this.#text.slice(this.#emitted, Math.max(at, this.#emitted));
        this.#text = this.#text.slice(0, Math.max(at, this.#emitted));
        this.#emitted = this.#text.length;
        this.#stopped = true;
        return { text, stopped: true, stopString: which };
      }
    }
    const end = final ? this.#text.length : this.#text.length - this.#holdBack();
    const text = end > this.#emitted ? this.#text.slice(this.#emitted, end) : "";
    this.#emitted = Math.max(this.#emitted, end);
    return { text, stopped: false, stopString: null };
  }

  /** Length of the longest suffix of the text that is a proper prefix of a stop string. */
  #holdBack(): number {
    const tailFrom = Math.max(this.#emitted, this.#text.length - this.#maxStop + 1);
    for (let start = tailFrom; start < this.#text.length; start++) {
      const tail = this.#text.slice(start);
      if (this.#stops.some((s) => s.startsWith(tail))) return this.#text.length - start;
    }
    return 0;
  }
}
