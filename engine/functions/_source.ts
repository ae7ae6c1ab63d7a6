/**
 * Loads a function's source for a worker that cannot read files: the host reads
 * `NAME.ts` and every file it imports with a relative specifier (inside the functions
 * folder only), rewrites those specifiers to blob URLs of the files' text, and hands the
 * worker the blob URL of the entry module. It also records what it read (paths, sizes,
 * mtimes, a content hash) so that a changed file is noticed on the next invocation.
 *
 * Import rules for function modules:
 * - `import type` / `export type ... from` may name any path: they are erased before the
 *   module runs (use them for `FunctionContext`);
 * - other imports must be relative (`./_lib/text.ts`) and stay inside the functions folder;
 *   `.ts`, `.mts`, `.js`, `.mjs` and `.json` files; no import cycles;
 * - anything else (`npm:`, `node:`, `https:`, `file:`, bare names) is refused at load time
 *   with a message naming the import. Specifiers computed at run time are not rewritten:
 *   they are checked against the worker's (empty) permissions and fail there.
 *
 * The rewriting uses a small tokenizer, not a full parser. It is not a security boundary
 * (the worker's permissions are): a specifier it misreads only makes the load fail.
 *
 * @module
 */

/** What was read, to tell later whether it changed. */
export interface FileStamp {
  path: string;
  /** null: the file did not exist (an optional manifest). */
  mtimeMs: number | null;
  size: number;
  ino: number | null;
}

/** A function's module graph as blob URLs. */
export interface LoadedSource {
  /** The entry module's blob URL. */
  moduleUrl: string;
  /** Every file read, entry first. */
  stamps: FileStamp[];
  /** SHA-256 of every file's path and text. */
  hash: string;
  /** Frees the blob URLs (after the last worker of this version has loaded). */
  revoke(): void;
}

/** A problem with the function's source; the message names the file and the import. */
export class SourceError extends Error {
  override readonly name = "SourceError";
}

const maxFiles = 256;
const maxBytes = 16 * 1024 * 1024;

const mediaTypes: Record<string, string> = {
  ".ts": "application/typescript",
  ".mts": "application/typescript",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".json": "application/json",
};

function extension(path: string): string {
  const m = /\.[A-Za-z0-9]+$/.exec(path);
  return m ? m[0].toLowerCase() : "";
}

/** Stats `path`; a missing file gives a stamp with `mtimeMs: null`. */
export async function stamp(path: string): Promise<FileStamp> {
  try {
    const s = await Deno.stat(path);
    if (!s.isFile) return { path, mtimeMs: null, size: 0, ino: null };
    return { path, mtimeMs: s.mtime?.getTime() ?? 0, size: s.size, ino: s.ino };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { path, mtimeMs: null, size: 0, ino: null };
    throw e;
  }
}

/** Whether two stamps describe the same file state. */
export function sameStamp(a: FileStamp, b: FileStamp): boolean {
  return a.path === b.path && a.mtimeMs === b.mtimeMs && a.size === b.size && a.ino === b.ino;
}

/**
 * Reads `entryPath` and its relative imports under `root`, and makes blob URLs of them.
 * Throws {@link SourceError} for a bad import and `Deno.errors.NotFound` when the entry
 * file is missing.
 */
export async function loadSource(root: string, entryPath: string): Promise<LoadedSource> {
  const rootDir = root.endsWith("/") ? root : root + "/";
  const urls = new Map<string, string>();
  const visiting: string[] = [];
  const stamps: FileStamp[] = [];
  const hashParts: string[] = [];
  let bytes = 0;
  const created: string[] = [];
  const display = (p: string) => p.startsWith(rootDir) ? p.slice(rootDir.length) : p;

  const visit = async (path: string, importer: string | null): Promise<string> => {
    const done = urls.get(path);
    if (done) return done;
    if (visiting.includes(path)) {
      const cycle = [...visiting.slice(visiting.indexOf(path)), path].map(display).join(" -> ");
      throw new SourceError(`Import cycle: ${cycle}`);
    }
    const ext = extension(path);
    const type = mediaTypes[ext];
    if (!type) {
      throw new SourceError(
        `"${display(importer ?? path)}" imports "${
          display(path)
        }": only .ts, .mts, .js, .mjs and .json files can be imported`,
      );
    }
    if (stamps.length >= maxFiles) {
      throw new SourceError(`The function imports more than ${maxFiles} files`);
    }
    visiting.push(path);
    const before = await stamp(path);
    if (before.mtimeMs === null) {
      if (importer === null) throw new Deno.errors.NotFound(`"${path}" does not exist`);
      throw new SourceError(
        `"${display(importer)}" imports "${display(path)}", which does not exist`,
      );
    }
    const text = await Deno.readTextFile(path);
    bytes += text.length;
    if (bytes > maxBytes) {
      throw new SourceError(`The function's source is larger than ${maxBytes} bytes`);
    }
    stamps.push(before);
    hashParts.push(path, "\0", text, "\0");
    let out = text;
    if (type !== "application/json") {
      const edits: { start: number; end: number; url: string }[] = [];
      for (const imp of findImports(text)) {
        if (!imp.specifier.startsWith("./") && !imp.specifier.startsWith("../")) {
          throw new SourceError(
            `"${display(path)}" imports "${imp.specifier}": functions may import only files ` +
              `of the functions folder, with a relative specifier (types: use "import type")`,
          );
        }
        const target = decodeURIComponent(new URL(imp.specifier, "file://" + path).pathname);
        if (!target.startsWith(rootDir)) {
          throw new SourceError(
            `"${display(path)}" imports "${imp.specifier}", which is outside the functions folder`,
          );
        }
        edits.push({ start: imp.start, end: imp.end, url: await visit(target, path) });
      }
      for (const e of edits.reverse()) {
        out = out.slice(0, e.start) + JSON.stringify(e.url) + out.slice(e.end);
      }
    }
    const url = URL.createObjectURL(new Blob([out], { type }));
    created.push(url);
    urls.set(path, url);
    visiting.pop();
    return url;
  };

  try {
    const moduleUrl = await visit(entryPath, null);
    // Entry first, as documented.
    const entry = stamps.findIndex((s) => s.path === entryPath);
    stamps.unshift(...stamps.splice(entry, 1));
    const digest = await crypto.subtle.digest(
      "SHA-256",
      new TextEncoder().encode(hashParts.join("")),
    );
    const hash = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
    let revoked = false;
    return {
      moduleUrl,
      stamps,
      hash,
      revoke() {
        if (revoked) return;
        revoked = true;
        for (const u of created) URL.revokeObjectURL(u);
      },
    };
  } catch (e) {
    for (const u of created) URL.revokeObjectURL(u);
    throw e;
  }
}

// ------------------------------------------------------------
// import scanning

/** A runtime import's string literal in the source: `[start, end)` includes the quotes. */
export interface ImportSite {
  specifier: string;
  start: number;
  end: number;
}

interface Token {
  kind: "word" | "string" | "punct" | "template";
  value: string;
  start: number;
  end: number;
}

const regexAfterWords = new Set([
  "return",
  "typeof",
  "instanceof",
  "in",
  "of",
  "new",
  "delete",
  "void",
  "throw",
  "case",
  "do",
  "else",
  "yield",
  "await",
]);

function isWordChar(c: string): boolean {
  return /[A-Za-z0-9_$\u0080-\uffff]/.test(c);
}

/** Splits JavaScript/TypeScript source into words, strings and punctuation; comments dropped. */
function tokenize(src: string): Token[] {
  const tokens: Token[] = [];
  // Brace depth at which each open template's `${` expression closes.
  const templateStack: number[] = [];
  let depth = 0;
  let i = 0;
  const n = src.length;

  const readTemplate = (from: number): number => {
    // From just after "`" or "}" of a substitution: to after the closing "`" or "${".
    let j = from;
    while (j < n) {
      const c = src[j];
      if (c === "\\") j += 2;
      else if (c === "`") return j + 1;
      else if (c === "$" && src[j + 1] === "{") {
        templateStack.push(depth);
        depth++;
        return j + 2;
      } else j++;
    }
    return n;
  };

  while (i < n) {
    const c = src[i];
    if (c === " " || c === "\t" || c === "\n" || c === "\r" || c === "\f" || c === "\v") {
      i++;
    } else if (c === "/" && src[i + 1] === "/") {
      while (i < n && src[i] !== "\n") i++;
    } else if (c === "/" && src[i + 1] === "*") {
      const e = src.indexOf("*/", i + 2);
      i = e < 0 ? n : e + 2;
    } else if (c === "'" || c === '"') {
      let j = i + 1;
      while (j < n && src[j] !== c && src[j] !== "\n") j += src[j] === "\\" ? 2 : 1;
      const end = Math.min(j + 1, n);
      tokens.push({ kind: "string", value: src.slice(i + 1, j), start: i, end });
      i = end;
    } else if (c === "`") {
      const end = readTemplate(i + 1);
      tokens.push({ kind: "template", value: "`", start: i, end });
      i = end;
    } else if (c === "}" && templateStack.length > 0 && templateStack.at(-1) === depth - 1) {
      templateStack.pop();
      depth--;
      const end = readTemplate(i + 1);
      tokens.push({ kind: "template", value: "}", start: i, end });
      i = end;
    } else if (c === "/") {
      const prev = tokens.at(-1);
      const regexAllowed = !prev ||
        (prev.kind === "punct" && !")]}".includes(prev.value)) ||
        (prev.kind === "word" && regexAfterWords.has(prev.value)) ||
        (prev.kind === "template" && prev.value !== "`" && src[prev.end - 1] === "{");
      if (regexAllowed) {
        let j = i + 1;
        let inClass = false;
        while (j < n && src[j] !== "\n") {
          const d = src[j];
          if (d === "\\") j++;
          else if (d === "[") inClass = true;
          else if (d === "]") inClass = false;
          else if (d === "/" && !inClass) break;
          j++;
        }
        j++;
        while (j < n && isWordChar(src[j])) j++;
        tokens.push({ kind: "punct", value: "regex", start: i, end: j });
        i = j;
      } else {
        tokens.push({ kind: "punct", value: "/", start: i, end: i + 1 });
        i++;
      }
    } else if (isWordChar(c)) {
      let j = i + 1;
      while (j < n && isWordChar(src[j])) j++;
      tokens.push({ kind: "word", value: src.slice(i, j), start: i, end: j });
      i = j;
    } else {
      if (c === "{") depth++;
      else if (c === "}") depth--;
      tokens.push({ kind: "punct", value: c, start: i, end: i + 1 });
      i++;
    }
  }
  return tokens;
}

/**
 * The string literals of runtime imports in `src`: `import ... from "x"`, `import "x"`,
 * `export ... from "x"`, `import("x")`; type-only imports and exports are skipped.
 */
export function findImports(src: string): ImportSite[] {
  const t = tokenize(src);
  const out: ImportSite[] = [];
  const site = (tok: Token) => out.push({ specifier: tok.value, start: tok.start, end: tok.end });
  const is = (k: number, value: string) => t[k]?.value === value && t[k].kind !== "string";
  // From token k of an import statement, its `from "x"`.
  const fromClause = (k: number): Token | null => {
    for (let j = k; j < t.length; j++) {
      if (is(j, ";") || is(j, "import") || is(j, "export")) return null;
      if (is(j, "from") && t[j + 1]?.kind === "string") return t[j + 1];
    }
    return null;
  };
  for (let k = 0; k < t.length; k++) {
    const tok = t[k];
    if (tok.kind !== "word" || (tok.value !== "import" && tok.value !== "export")) continue;
    const prev = t[k - 1];
    if (prev && prev.kind === "punct" && (prev.value === "." || prev.value === "?")) continue;
    const next = t[k + 1];
    if (!next) break;
    if (tok.value === "import") {
      if (is(k + 1, "(")) {
        if (t[k + 2]?.kind === "string" && (is(k + 3, ")") || is(k + 3, ","))) site(t[k + 2]);
        continue;
      }
      if (is(k + 1, ".")) continue; // import.meta
      if (next.kind === "string") {
        site(next);
        continue;
      }
      // `import type X from`, `import type { X } from` (but not `import type from "x"`).
      if (is(k + 1, "type") && !is(k + 2, "from") && !is(k + 2, ",") && !is(k + 2, "=")) continue;
      const f = fromClause(k + 1);
      if (f) site(f);
    } else if (is(k + 1, "*")) {
      // export * from "x" / export * as ns from "x"
      const f = is(k + 2, "from") ? k + 2 : is(k + 2, "as") && is(k + 4, "from") ? k + 4 : -1;
      if (f > 0 && t[f + 1]?.kind === "string") site(t[f + 1]);
    } else if (is(k + 1, "{")) {
      // export { a, b as c } from "x" (and not the local `export { a };`)
      let j = k + 2;
      while (j < t.length && !is(j, "}")) j++;
      if (is(j + 1, "from") && t[j + 2]?.kind === "string") site(t[j + 2]);
    }
    // `export type { X } from` and `export type * from` are skipped: their next token is "type".
  }
  return out;
}
