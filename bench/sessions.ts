/**
 * Session benchmark: what a pinned session saves. For each context length, one context of
 * random token ids is pinned through the session manager (the production path: manager →
 * scheduler → native session), then
 *
 * - **follow-up TTFT**: a question of `question` tokens is asked on the session as a fork
 *   (`maxTokens: 1`; the session is left unchanged, so every repeat sees the same state),
 *   timed from the call to the first token, median of `repeats`;
 * - **re-prefill TTFT**: the same context + question sent as one fresh request (what a
 *   stateless host pays on every follow-up), timed the same way;
 * - **host bytes**: the pinned session's host bytes (KV + index, from the native session
 *   info) per token, and how many such sessions 100 GB of host memory holds.
 *
 * Without `--model` the engine gets seeded random weights of a named shape: `llama-3.1-8b`
 * (the target, on the GPU server) or `tiny` (4 layers, dim 256: runs on a CPU in
 * seconds). Without a GPU the defaults are the tiny shape at contexts 512 and 2048.
 *
 * ```sh
 * # on the GPU server (targets: follow-up <= 0.3 s at 96K and >= 20x faster than re-prefill)
 * deno run --allow-all bench/sessions.ts --shape llama-3.1-8b --contexts 8192,32768,98304
 * # here, small, on the CPU
 * deno run --allow-all bench/sessions.ts --shape tiny --contexts 512,2048 --threads 2
 * ```
 *
 * Options: `--model PATH` | `--shape llama-3.1-8b|tiny`, `--contexts N,N,...`,
 * `--question N` (default 64), `--repeats N` (default 3), `--attention magicpig|dense|...`
 * (default magicpig), `--threads N`, `--prefill-chunk N`, `--out FILE` (JSON).
 * {@link benchSessions} is the same measurement as a function, for `bench/bench.ts`.
 *
 * @module
 */
import { Backend, deviceCount, Engine, type ModelConfig, setThreads } from "../ffi/native.ts";
import { attentionMethods, type AttentionOptions } from "../engine/attention.ts";
import { LLM, type ServedModel } from "../engine/llm.ts";
import { loadModel } from "../engine/model/loader.ts";
import { nativeBackend, nativeSessionStore } from "../engine/native_backend.ts";
import { ANONYMOUS_OWNER, SessionManager } from "../engine/sessions.ts";
import type { RequestStream } from "../engine/scheduler.ts";
import { llama31_8b } from "./_shapes.ts";

/** One context length's results. */
export interface SessionBenchRow {
  /** Tokens pinned in the session. */
  context: number;
  /** Tokens of the follow-up question. */
  question: number;
  /** The session's attention method. */
  attention: string;
  /** Seconds the pinning prefill took (session create). */
  pinSeconds: number;
  /** Median seconds from a follow-up on the pinned session to its first token. */
  followUpTtft: number;
  /** Median seconds from a fresh request over context + question to its first token. */
  rePrefillTtft: number;
  /** rePrefillTtft / followUpTtft. */
  speedup: number;
  /** Host bytes the pinned session holds (KV capacity + index). */
  hostBytes: number;
  /** hostBytes / context. */
  hostBytesPerToken: number;
  /** Host KV bytes per token of the model (all layers, K and V), without capacity slack. */
  kvBytesPerToken: number;
  /** Sessions of this context that 100 GB (1e11 bytes) of host memory holds. */
  sessionsPer100GB: number;
  /** The same if the cache held exactly `context` rows (no capacity slack, no index). */
  sessionsPer100GBKvOnly: number;
}

/** Options of {@link benchSessions}. */
export interface SessionBenchOptions {
  /** Context lengths to pin. */
  contexts: number[];
  /** Question tokens (default 64). */
  question?: number;
  /** Timed follow-ups per context (default 3); re-prefills: min(repeats, 2). */
  repeats?: number;
  /** Attention of the sessions (default MagicPIG with the library's parameters). */
  attention?: AttentionOptions;
  /** Called with each row as it is measured. */
  onRow?: (row: SessionBenchRow) => void;
}

/** Seeded token ids in [16, vocab). */
function tokens(n: number, vocab: number, seed: number): number[] {
  let a = seed >>> 0;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out.push(16 + (((t ^ (t >>> 14)) >>> 0) % (vocab - 16)));
  }
  return out;
}

/** Seconds from now until `stream`'s first token (then the stream is drained). */
async function ttft(start: () => Promise<RequestStream> | RequestStream): Promise<number> {
  const t0 = performance.now();
  const stream = await start();
  let first = -1;
  for await (const ev of stream) {
    if (ev.type === "token" && first < 0) first = (performance.now() - t0) / 1000;
    if (ev.type === "finish" && ev.reason !== "length" && ev.reason !== "stop") {
      throw ev.error ?? new Error(`The request ended with "${ev.reason}"`);
    }
  }
  if (first < 0) throw new Error("The request produced no token");
  return first;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Measures follow-up vs re-prefill time to first token, and host bytes per session, on
 * `llm` with its session manager `sessions`.
 */
export async function benchSessions(
  llm: LLM,
  sessions: SessionManager,
  options: SessionBenchOptions,
): Promise<SessionBenchRow[]> {
  const question = options.question ?? 64;
  const repeats = Math.max(1, options.repeats ?? 3);
  const attention = options.attention ?? { method: "magicpig" };
  const vocab = llm.info.vocabSize;
  const rows: SessionBenchRow[] = [];
  // One small turn first, so that lazy initialisation is not timed.
  await ttft(() => llm.generate({ promptIds: tokens(8, vocab, 7), maxTokens: 1, attention }));
  for (const context of options.contexts) {
    if (context + question + 1 > llm.info.maxModelLen) {
      throw new Error(
        `Context ${context} + question ${question} exceeds the model's ${llm.info.maxModelLen} tokens`,
      );
    }
    const ctx = tokens(context, vocab, context);
    const q = tokens(question, vocab, context + 1);
    const t0 = performance.now();
    const s = await sessions.create(ANONYMOUS_OWNER, {
      promptIds: ctx,
      attention,
      ttlSeconds: 3600,
    });
    const pinSeconds = (performance.now() - t0) / 1000;
    const follow: number[] = [];
    for (let i = 0; i < repeats; i++) {
      follow.push(
        await ttft(() =>
          sessions.query(ANONYMOUS_OWNER, s.id, { promptIds: q, maxTokens: 1, fork: true })
        ),
      );
    }
    const fresh: number[] = [];
    for (let i = 0; i < Math.min(repeats, 2); i++) {
      fresh.push(
        await ttft(() => llm.generate({ promptIds: [...ctx, ...q], maxTokens: 1, attention })),
      );
    }
    const info = sessions.get(ANONYMOUS_OWNER, s.id);
    await sessions.delete(ANONYMOUS_OWNER, s.id);
    const followUpTtft = median(follow);
    const rePrefillTtft = median(fresh);
    const row: SessionBenchRow = {
      context,
      question,
      attention: attention.method,
      pinSeconds,
      followUpTtft,
      rePrefillTtft,
      speedup: rePrefillTtft / followUpTtft,
      hostBytes: info.hostBytes,
      hostBytesPerToken: info.hostBytes / context,
      kvBytesPerToken: sessions.kvBytesPerToken,
      sessionsPer100GB: Math.floor(1e11 / Math.max(1, info.hostBytes)),
      sessionsPer100GBKvOnly: Math.floor(1e11 / Math.max(1, sessions.kvBytesPerToken * context)),
    };
    rows.push(row);
    options.onRow?.(row);
  }
  return rows;
}

// ------------------------------------------------------------
// command line

const shapes: Record<string, ModelConfig> = { "llama-3.1-8b": llama31_8b };
shapes.tiny = {
  ...shapes["llama-3.1-8b"],
  n_layers: 4,
  dim: 256,
  n_heads: 8,
  n_kv_heads: 2,
  head_dim: 32,
  ffn_dim: 512,
  vocab_size: 2000,
  max_context: 32768,
};

interface Cli {
  model: string | null;
  shape: string;
  contexts: number[];
  question: number;
  repeats: number;
  attention: string;
  threads: number | null;
  prefillChunk: number | null;
  out: string | null;
}

function parseCli(args: string[], gpu: boolean): Cli {
  const o: Cli = {
    model: null,
    shape: gpu ? "llama-3.1-8b" : "tiny",
    contexts: gpu ? [8192, 32768, 98304] : [512, 2048],
    question: 64,
    repeats: 3,
    attention: "magicpig",
    threads: null,
    prefillChunk: null,
    out: null,
  };
  const int = (name: string, v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) {
      throw new Error(`Invalid ${name} "${v}": expected an integer >= 1`);
    }
    return n;
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const v = () => {
      const x = args[++i];
      if (x === undefined) throw new Error(`Missing value for "${a}"`);
      return x;
    };
    if (a === "--model") o.model = v();
    else if (a === "--shape") o.shape = v();
    else if (a === "--contexts") o.contexts = v().split(",").map((x) => int("--contexts", x));
    else if (a === "--question") o.question = int(a, v());
    else if (a === "--repeats") o.repeats = int(a, v());
    else if (a === "--attention") o.attention = v();
    else if (a === "--threads") o.threads = int(a, v());
    else if (a === "--prefill-chunk") o.prefillChunk = int(a, v());
    else if (a === "--out") o.out = v();
    else throw new Error(`Unknown option "${a}": see the module comment of bench/sessions.ts`);
  }
  if (!shapes[o.shape]) {
    throw new Error(
      `Unknown shape "${o.shape}": known shapes are ${Object.keys(shapes).join(", ")}`,
    );
  }
  if (!(attentionMethods as readonly string[]).includes(o.attention)) {
    throw new Error(
      `Unknown attention "${o.attention}": expected one of ${attentionMethods.join(", ")}`,
    );
  }
  return o;
}

async function main(): Promise<void> {
  let gpus = 0;
  try {
    gpus = deviceCount();
  } catch {
    gpus = 0;
  }
  const o = parseCli(Deno.args, gpus > 0);
  if (o.threads !== null) setThreads(o.threads);
  let served: ServedModel;
  let engine: Engine;
  let described: string;
  if (o.model) {
    const m = await loadModel({ path: o.model, threads: o.threads ?? undefined });
    served = m;
    engine = m.engine;
    described = `${m.id} (${m.format})`;
  } else {
    const cfg = shapes[o.shape];
    engine = Engine.create(cfg, {
      backend: gpus > 0 ? Backend.CUDA : Backend.CPU,
      prefillChunk: o.prefillChunk ?? undefined,
    });
    await engine.initRandom(1n, 0.02);
    await engine.finalize();
    served = {
      id: `random-${o.shape}`,
      path: "(random weights)",
      format: "gguf",
      tokenizer: null,
      chatTemplate: null,
      eosIds: [],
      config: cfg,
      close: () => engine.close(),
    };
    described = `${o.shape} shape, seeded random weights`;
  }
  const device = gpus > 0 ? "cuda" : "cpu";
  console.log(`session bench: ${described} on ${device}; attention ${o.attention}`);
  const llm = new LLM(served, nativeBackend(engine, { prefillChunk: o.prefillChunk ?? undefined }));
  const store = nativeSessionStore(engine);
  const sessions = new SessionManager(llm, { store, hostMemoryBudget: 200e9 });
  llm.sessions = sessions;
  llm.onClose(() => sessions.close());
  const header = [
    "context",
    "question",
    "pin s",
    "follow-up TTFT s",
    "re-prefill TTFT s",
    "speedup",
    "host B/token",
    "sessions/100GB",
    "(KV only)",
  ];
  console.log(header.join("\t"));
  let rows: SessionBenchRow[] = [];
  try {
    rows = await benchSessions(llm, sessions, {
      contexts: o.contexts,
      question: o.question,
      repeats: o.repeats,
      attention: { method: o.attention as AttentionOptions["method"] },
      onRow: (r) => {
        console.log([
          r.context,
          r.question,
          r.pinSeconds.toFixed(3),
          r.followUpTtft.toFixed(4),
          r.rePrefillTtft.toFixed(4),
          `${r.speedup.toFixed(1)}x`,
          Math.round(r.hostBytesPerToken),
          r.sessionsPer100GB,
          r.sessionsPer100GBKvOnly,
        ].join("\t"));
      },
    });
  } finally {
    await llm.close();
  }
  if (o.out) {
    await Deno.writeTextFile(
      o.out,
      JSON.stringify({ model: described, device, attention: o.attention, rows }, null, 2) + "\n",
    );
    console.log(`wrote ${o.out}`);
  }
}

if (import.meta.main) await main();
