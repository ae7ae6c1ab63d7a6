/**
 * The on-disk form of pinned sessions (`--session-dir`): for each session a native
 * snapshot `<id>.<generation>.snap` (checksummed by the library, written to `.tmp`,
 * fsynced and renamed) and a metadata record `<id>.json` (owner key hash, times, token
 * count, attention options, chat state, the name of its snapshot file), written the same
 * way and carrying a SHA-256 of its own content.
 *
 * Order of a save: the new snapshot file first, then the record that names it, then the
 * previous snapshot file is removed. A crash at any point leaves a record naming a
 * complete snapshot (the old or the new one); files that no record names are leftovers
 * and are removed on restore. Damaged files are renamed with a `.corrupt` suffix, never
 * loaded and never deleted, so that an operator can look at them.
 *
 * @module
 */
/** Version of the record format. */
export const RECORD_VERSION = 1;

/** Session ids: also file names, so nothing but this shape is ever accepted. */
export const sessionIdPattern = /^sess_[0-9a-f]{32}$/;

/** The metadata of one session, as written next to its snapshot. */
export interface SessionRecord {
  version: number;
  id: string;
  /** SHA-256 (hex) of the owner's API key, or "anonymous". */
  owner: string;
  /** The model the snapshot belongs to. */
  model: string;
  kind: "text" | "chat";
  /** Unix milliseconds. */
  created_at: number;
  last_used_at: number;
  ttl_seconds: number;
  tokens: number;
  turns: number;
  prefill_seconds: number;
  host_bytes: number;
  gpu_bytes: number;
  /** The attention options on the wire (`{"method": "magicpig", "K": 10, ...}`). */
  attention: Record<string, unknown>;
  /** Chat state: the conversation so far and text owed to the next turn. */
  chat: { messages: { role: string; content: string; name?: string }[]; pending: string } | null;
  /** The snapshot file name (in the same folder). */
  snapshot: string;
  /** Unix milliseconds of the snapshot. */
  saved_at: number;
}

/** SHA-256 of the UTF-8 bytes of `text`, as hex. */
export async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** What {@link SessionDir.scan} found. */
export interface ScanResult {
  /** Records whose checksum and fields are valid. */
  records: SessionRecord[];
  /** Record files that are damaged (already moved aside), with why. */
  corrupt: { file: string; error: string }[];
  /** Leftover files removed (stale snapshots, temporary files). */
  removed: string[];
}

function isRecord(v: unknown): v is SessionRecord {
  if (typeof v !== "object" || v === null) return false;
  const r = v as Record<string, unknown>;
  const num = (k: string) => typeof r[k] === "number" && Number.isFinite(r[k]);
  return r.version === RECORD_VERSION && typeof r.id === "string" &&
    sessionIdPattern.test(r.id) && typeof r.owner === "string" && typeof r.model === "string" &&
    (r.kind === "text" || r.kind === "chat") && num("created_at") && num("last_used_at") &&
    num("ttl_seconds") && num("tokens") && num("turns") && num("prefill_seconds") &&
    num("host_bytes") && num("gpu_bytes") && num("saved_at") &&
    typeof r.attention === "object" && r.attention !== null &&
    typeof r.snapshot === "string" && r.snapshot.startsWith(`${r.id}.`) &&
    r.snapshot.endsWith(".snap") && !r.snapshot.includes("/") &&
    (r.chat === null || (typeof r.chat === "object" && Array.isArray(
      (r.chat as Record<string, unknown>).messages,
    ) && typeof (r.chat as Record<string, unknown>).pending === "string"));
}

/** One session folder. */
export class SessionDir {
  readonly path: string;

  constructor(path: string) {
    this.path = path.replace(/\/+$/, "") || "/";
  }

  /** Creates the folder when missing. */
  async ensure(): Promise<void> {
    await Deno.mkdir(this.path, { recursive: true });
  }

  /** The full path of a file in the folder. */
  file(name: string): string {
    return `${this.path}/${name}`;
  }

  /** The snapshot file name of generation `gen` of session `id`. */
  snapshotName(id: string, gen: number): string {
    return `${id}.${gen}.snap`;
  }

  /** Writes `record` atomically (temporary file, fsync, rename) with its checksum. */
  async writeRecord(record: SessionRecord): Promise<void> {
    const body = JSON.stringify(record);
    const text = JSON.stringify({ checksum: await sha256Hex(body), record: JSON.parse(body) });
    const final = this.file(`${record.id}.json`);
    const tmp = `${final}.tmp`;
    const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
    try {
      const bytes = new TextEncoder().encode(text);
      let off = 0;
      while (off < bytes.length) off += await f.write(bytes.subarray(off));
      await f.sync();
    } finally {
      f.close();
    }
    await Deno.rename(tmp, final);
    this.#syncDir();
  }

  #syncDir(): void {
    try {
      const d = Deno.openSync(this.path, { read: true });
      try {
        d.syncSync();
      } finally {
        d.close();
      }
    } catch {
      // Not every platform can fsync a directory; the rename itself is atomic.
    }
  }

  /** Removes a file of the folder; a missing file is fine. */
  async remove(name: string): Promise<void> {
    try {
      await Deno.remove(this.file(name));
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }

  /** Removes session `id`'s record and snapshot. */
  async removeSession(id: string, snapshot: string | null): Promise<void> {
    await this.remove(`${id}.json`);
    if (snapshot) await this.remove(snapshot);
  }

  /**
   * Renames `name` to `name.corrupt` (or `name.corrupt.N` when that exists). Returns the
   * new name, or null when the file was gone.
   */
  async moveAside(name: string): Promise<string | null> {
    for (let i = 0; i < 1000; i++) {
      const to = i === 0 ? `${name}.corrupt` : `${name}.corrupt.${i}`;
      try {
        await Deno.lstat(this.file(to));
        continue;
      } catch {
        // free
      }
      try {
        await Deno.rename(this.file(name), this.file(to));
        return to;
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return null;
        throw e;
      }
    }
    return null;
  }

  /**
   * Reads every record: damaged ones are moved aside and listed in `corrupt`; temporary
   * files and snapshots that no valid record names are removed.
   */
  async scan(): Promise<ScanResult> {
    const names: string[] = [];
    for await (const e of Deno.readDir(this.path)) if (e.isFile) names.push(e.name);
    const result: ScanResult = { records: [], corrupt: [], removed: [] };
    const snapshots = new Set<string>();
    for (const name of names.sort()) {
      if (name.endsWith(".corrupt") || /\.corrupt\.\d+$/.test(name)) continue;
      if (name.endsWith(".tmp")) {
        await this.remove(name);
        result.removed.push(name);
        continue;
      }
      if (name.endsWith(".snap")) {
        snapshots.add(name);
        continue;
      }
      if (!name.endsWith(".json")) continue;
      const id = name.slice(0, -5);
      if (!sessionIdPattern.test(id)) continue; // not ours
      let why: string | null = null;
      try {
        const parsed = JSON.parse(await Deno.readTextFile(this.file(name)));
        const record = parsed?.record;
        if (typeof parsed?.checksum !== "string" || !isRecord(record)) {
          why = "the record is malformed";
        } else if ((await sha256Hex(JSON.stringify(record))) !== parsed.checksum) {
          why = "the record failed its checksum";
        } else if (record.id !== id) {
          why = `the record names session "${record.id}"`;
        } else {
          result.records.push(record);
        }
      } catch (e) {
        why = `the record cannot be read: ${e instanceof Error ? e.message : String(e)}`;
      }
      if (why !== null) {
        await this.moveAside(name);
        result.corrupt.push({ file: name, error: why });
      }
    }
    const named = new Set(result.records.map((r) => r.snapshot));
    const damaged = new Set(result.corrupt.map((c) => c.file.slice(0, -5)));
    for (const snap of snapshots) {
      if (named.has(snap)) continue;
      const owner = snap.slice(0, snap.indexOf("."));
      if (damaged.has(owner)) {
        // The snapshot of a damaged record: keep it for inspection, never load it.
        await this.moveAside(snap);
        continue;
      }
      await this.remove(snap);
      result.removed.push(snap);
    }
    return result;
  }
}
