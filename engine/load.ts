/**
 * Opens the served model: loads it ({@link loadModel}: weights, tokenizer, chat template),
 * wraps its engine for the scheduler, warms it up, and logs one startup line with the
 * seconds each phase took.
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
import { LLM } from "./llm.ts";
import type { Logger } from "./log.ts";
import { loadModel } from "./model/loader.ts";
import { nativeBackend } from "./native_backend.ts";

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
}

/** Loads, wraps and warms up the model; the startup log line is "model loaded". */
export async function openLLM(options: OpenOptions, log: Logger): Promise<LLM> {
  const t0 = performance.now();
  log.info("loading model", { model: options.model ?? "(demo)" });
  const model = await loadModel({
    path: options.model ?? undefined,
    threads: options.threads ?? undefined,
    log: (msg) => log.info(msg),
  });
  let llm: LLM;
  try {
    llm = new LLM(model, nativeBackend(model.engine), {
      maxRunning: options.maxRunning ?? undefined,
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
  const round = (s: number) => Math.round(s * 1000) / 1000;
  log.info("model loaded", {
    model: llm.info.id,
    format: llm.info.format,
    path: llm.info.path,
    max_model_len: llm.info.maxModelLen,
    tokenizer: llm.info.hasTokenizer,
    chat_template: llm.info.hasChatTemplate,
    phases: Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, round(v)])),
    total_s: round((performance.now() - t0) / 1000),
  });
  return llm;
}
