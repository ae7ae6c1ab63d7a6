/**
 * One entry point that turns a `--model` argument into a {@link LoadedModel}: no path →
 * the generated demo model (random weights); a directory with config.json → Hugging Face;
 * a `.gguf` file → GGUF. Weights go to the native engine straight from the files; the
 * tokenizer and chat template come from the checkpoint. Each phase is timed for the
 * startup log.
 *
 * @example
 * ```ts
 * import { loadModel } from "./loader.ts";
 * const model = await loadModel({ path: "stories260K.gguf", log: console.log });
 * console.log(model.id, model.config.n_layers, model.timings);
 * await model.close();
 * ```
 *
 * @module
 */
import { Engine, type ModelConfig, setThreads } from "../../ffi/native.ts";
import type { ChatTemplate, LoadedModel, Tokenizer } from "./types.ts";
import { type TensorLoad, uploadTensors } from "./_llama.ts";
import {
  applyGgufRopeFreqs,
  ggufLlamaConfig,
  GgufMeta,
  ggufTensorLoads,
  readGguf,
} from "./gguf.ts";
import { hfTensorLoads, type JsonObject, readHfConfig, readJsonObject } from "./hf.ts";
import { HfTokenizer } from "./tokenizer_hf.ts";
import { SpmTokenizer } from "./tokenizer_spm.ts";
import { JinjaChatTemplate } from "./chat_template.ts";
import { DEMO_MODEL_ID, ensureDemoModel } from "./demo.ts";

/** Options of {@link loadModel}. */
export interface LoadModelOptions {
  /** A Hugging Face directory or a .gguf file; undefined → the demo model. */
  path?: string;
  /** enum mp_backend (default AUTO). */
  backend?: number;
  /** CPU threads (default: all cores). */
  threads?: number;
  /** Engine weight storage dtype (default: the backend's). */
  weightDtype?: number;
  /** KV cache dtype (default: the backend's). */
  kvDtype?: number;
  gpuMemoryBudget?: bigint;
  /** Where the demo model is cached (default: demo.ts cacheRoot()). */
  cacheRoot?: string;
  log?: (msg: string) => void;
}

/** What a format-specific reader hands to the common loading path. */
interface Parsed {
  id: string;
  path: string;
  format: "hf" | "gguf" | "demo";
  config: ModelConfig;
  loads: TensorLoad[];
  /** Builds the tokenizer and chat template (timed separately). */
  text: () => Promise<{ tokenizer: Tokenizer | null; chatTemplate: ChatTemplate | null }>;
  /** End-of-generation ids known without a tokenizer. */
  eosIds: number[];
}

class Model implements LoadedModel {
  constructor(
    readonly id: string,
    readonly path: string,
    readonly format: "hf" | "gguf" | "demo",
    readonly config: ModelConfig,
    readonly engine: Engine,
    readonly tokenizer: Tokenizer | null,
    readonly chatTemplate: ChatTemplate | null,
    readonly eosIds: readonly number[],
    readonly timings: Record<string, number>,
  ) {}

  close(): Promise<void> {
    return this.engine.close();
  }
}

function baseName(p: string): string {
  const parts = p.replace(/\/+$/, "").split("/");
  return parts[parts.length - 1] || p;
}

function numberIds(v: unknown): number[] {
  if (typeof v === "number") return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === "number");
  return [];
}

async function parseHf(dir: string, id: string, format: "hf" | "demo"): Promise<Parsed> {
  const { config, json } = await readHfConfig(dir, dir);
  const loads = await hfTensorLoads(dir, config, dir);
  const gen: JsonObject = (await readJsonObject(`${dir}/generation_config.json`)) ?? {};
  const eosIds = [...numberIds(json.eos_token_id), ...numberIds(gen.eos_token_id)];
  return {
    id,
    path: dir,
    format,
    config,
    loads,
    eosIds,
    text: async () => {
      const tokenizer = await HfTokenizer.fromDir(dir);
      const cfg = (await readJsonObject(`${dir}/tokenizer_config.json`)) ?? {};
      return { tokenizer, chatTemplate: JinjaChatTemplate.fromTokenizerConfig(cfg) };
    },
  };
}

async function parseGguf(
  path: string,
  log: (msg: string) => void,
): Promise<Parsed> {
  const file = await readGguf(path);
  const config = ggufLlamaConfig(file, path);
  await applyGgufRopeFreqs(file, config, path);
  const loads = ggufTensorLoads(file, config, path);
  const m = new GgufMeta(file, (d) => {
    throw new Error(`Cannot load model "${path}": ${d}`);
  });
  const eosIds = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
    .filter((k) => m.has(k))
    .map((k) => m.number(k))
    .filter((x) => x >= 0 && x < config.vocab_size);
  return {
    id: baseName(path),
    path,
    format: "gguf",
    config,
    loads,
    eosIds,
    text: () => {
      let tokenizer: Tokenizer | null = null;
      try {
        tokenizer = m.string("tokenizer.ggml.model") === "gpt2"
          ? HfTokenizer.fromGguf(file)
          : SpmTokenizer.fromGguf(file);
      } catch (e) {
        log(`${e instanceof Error ? e.message : e}; serving token-id prompts only`);
      }
      const chatTemplate = JinjaChatTemplate.fromGguf(file);
      return Promise.resolve({ tokenizer, chatTemplate });
    },
  };
}

/**
 * Loads a model: parses its config and tensor layout, uploads the weights into a new
 * native engine, builds its tokenizer and chat template, and finalizes the engine.
 * Errors name the model and what is wrong (`Cannot load model "x.gguf": tensor ... has
 * type Q4_K, which is not supported ...`); the engine is freed when loading fails.
 */
export async function loadModel(opts: LoadModelOptions = {}): Promise<LoadedModel> {
  const log = opts.log ?? (() => {});
  const timings: Record<string, number> = {};
  let t = performance.now();
  const lap = (phase: string) => {
    const now = performance.now();
    timings[phase] = (now - t) / 1000;
    t = now;
  };
  if (opts.threads !== undefined) setThreads(opts.threads);

  let parsed: Parsed;
  if (opts.path === undefined) {
    const dir = await ensureDemoModel({ root: opts.cacheRoot, log });
    lap("demo");
    log(
      `Serving the demo model "${DEMO_MODEL_ID}" from "${dir}": RANDOM WEIGHTS, its output is gibberish; pass --model to serve a real model`,
    );
    parsed = await parseHf(dir, DEMO_MODEL_ID, "demo");
  } else {
    const path = opts.path;
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(path);
    } catch {
      throw new Error(`Cannot load model "${path}": no such file or directory`);
    }
    if (info.isDirectory) {
      try {
        await Deno.stat(`${path}/config.json`);
      } catch {
        throw new Error(
          `Cannot load model "${path}": the directory has no config.json (expected a Hugging Face model directory)`,
        );
      }
      parsed = await parseHf(path, baseName(path), "hf");
    } else if (path.toLowerCase().endsWith(".gguf")) {
      parsed = await parseGguf(path, log);
    } else {
      throw new Error(
        `Cannot load model "${path}": not a Hugging Face directory or a .gguf file`,
      );
    }
  }
  lap("parse");

  const engine = Engine.create(parsed.config, {
    backend: opts.backend,
    weightDtype: opts.weightDtype,
    kvDtype: opts.kvDtype,
    gpuMemoryBudget: opts.gpuMemoryBudget,
  });
  try {
    try {
      await uploadTensors(engine, parsed.loads);
    } catch (e) {
      throw new Error(
        `Cannot load model "${parsed.path}": ${e instanceof Error ? e.message : e}`,
      );
    }
    lap("weights");
    const { tokenizer, chatTemplate } = await parsed.text();
    if (tokenizer && tokenizer.vocabSize > parsed.config.vocab_size) {
      log(
        `Model "${parsed.id}": the tokenizer has ${tokenizer.vocabSize} tokens but the model only ${parsed.config.vocab_size}`,
      );
    }
    if (!tokenizer) log(`Model "${parsed.id}" has no tokenizer: only token-id prompts are served`);
    lap("tokenizer");
    await engine.finalize();
    lap("finalize");
    const eos = new Set<number>([...(tokenizer?.eosIds ?? []), ...parsed.eosIds]);
    const eosIds = [...eos].filter((id) => id >= 0 && id < parsed.config.vocab_size);
    return new Model(
      parsed.id,
      parsed.path,
      parsed.format,
      parsed.config,
      engine,
      tokenizer,
      chatTemplate,
      eosIds,
      timings,
    );
  } catch (e) {
    await engine.close();
    throw e;
  }
}

/** The ids that end generation for `model` (its own list, else its tokenizer's). */
export function eosIdsOf(model: LoadedModel): readonly number[] {
  return model.eosIds ?? model.tokenizer?.eosIds ?? [];
}
