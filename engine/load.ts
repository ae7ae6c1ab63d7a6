/**
 * Opens the served model: loads it ({@link loadModel}: weights, tokenizer, chat template),
 * wraps its engine for the scheduler, warms it up, starts its session manager and restores
 * the sessions of the session folder, and logs one startup line with the seconds each
 * phase took.
 *
 * @example
 * ```ts
 * import { openLLM } from "./load.ts";
 * import { Logger } from "./log.ts";
 * const llm = await openLLM({ model: "stories260K.gguf" }, new Logger());
 * await llm.close();
 * ```
 *
 * @module
 */
import { servingMetrics } from "./_serving_metrics.ts";
import { LLM } from "./llm.ts";
import type { Logger } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { loadModel } from "./model/loader.ts";
import { nativeBackend, nativeSessionStore } from "./native_backend.ts";
import { SessionManager, type SessionManagerOptions } from "./sessions.ts";

/** Session manager settings of {@link openLLM} (see {@link SessionManagerOptions}). */
export type SessionOptions =
  & Omit<
    SessionManagerOptions,
    "store" | "log" | "metrics" | "hostMemoryBudget"
  >
  & {
    /** Host bytes sessions may hold; null/absent: half of the machine's memory. */
    hostMemoryBudget?: number | null;
  };

/** Options of {@link openLLM}. */
export interface OpenOptions {
  /** A Hugging Face directory or a .gguf file; null/absent: the demo model. */
  model?: string | null;
  /** CPU threads; null/absent: all cores. */
  threads?: number | null;
  /** Most requests prefilling or decoding at once; null/absent: the engine's max batch. */
  maxRunning?: number | null;
  /** Run one tiny request before serving (default true). */
  warmUp?: boolean;
  /** GPU bytes the engine may take (and sessions' device parts may hold); null: no limit. */
  gpuMemoryBudget?: number | null;
  /** Prompt tokens per prefill step (default: the engine's). */
  prefillChunk?: number;
  /** Pinned sessions; absent: defaults (no session folder). */
  sessions?: SessionOptions;
  /** Where request and session metrics go (default: a private registry). */
  metrics?: Metrics;
}

/** Half of the machine's memory: the default session budget. */
export function defaultHostMemoryBudget(): number {
  try {
    return Math.floor(Deno.systemMemoryInfo().total / 2);
  } catch {
    return 8 * 1024 ** 3;
  }
}

/** Loads, wraps and warms up the model; the startup log line is "model loaded". */
export async function openLLM(options: OpenOptions, log: Logger): Promise<LLM> {
  const t0 = performance.now();
  log.info("loading model", { model: options.model ?? "(demo)" });
  const model = await loadModel({
    path: options.model ?? undefined,
    threads: options.threads ?? undefined,
    gpuMemoryBudget: options.gpuMemoryBudget ? BigInt(options.gpuMemoryBudget) : undefined,
    log: (msg) => log.info(msg),
  });
  const metrics = options.metrics ?? new Metrics();
  let llm: LLM | null = null;
  const observer = servingMetrics(metrics, () => llm?.scheduler.stats ?? null);
  try {
    llm = new LLM(model, nativeBackend(model.engine, { prefillChunk: options.prefillChunk }), {
      maxRunning: options.maxRunning ?? undefined,
      observer,
    });
  } catch (e) {
    await model.close();
    throw e;
  }
  const phases: Record<string, number> = { ...model.timings };
  if (options.warmUp ?? true) {
    const t = performance.now();
    try {
      await llm.warmUp();
    } catch (e) {
      await llm.close();
      throw e;
    }
    phases.warm_up = (performance.now() - t) / 1000;
  }
  const so = options.sessions ?? {};
  const t = performance.now();
  const sessions = new SessionManager(llm, {
    ...so,
    store: nativeSessionStore(model.engine),
    hostMemoryBudget: so.hostMemoryBudget ?? defaultHostMemoryBudget(),
    gpuMemoryBudget: so.gpuMemoryBudget ?? options.gpuMemoryBudget ?? null,
    log,
    metrics,
  });
  llm.sessions = sessions;
  llm.onClose(() => sessions.close());
  let restored;
  try {
    restored = await sessions.restore();
  } catch (e) {
    await llm.close();
    throw e;
  }
  phases.session_restore = (performance.now() - t) / 1000;
  const round = (s: number) => Math.round(s * 1000) / 1000;
  log.info("model loaded", {
    model: llm.info.id,
    format: llm.info.format,
    path: llm.info.path,
    max_model_len: llm.info.maxModelLen,
    tokenizer: llm.info.hasTokenizer,
    chat_template: llm.info.hasChatTemplate,
    sessions_restored: restored.restored,
    phases: Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, round(v)])),
    total_s: round((performance.now() - t0) / 1000),
  });
  return llm;
}
