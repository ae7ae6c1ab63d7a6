/**
 * The CUDA forward pass end to end: the same weights on the CPU and CUDA engines give the
 * same logits (chunked prefill, follow-up prefill, batched decode of sessions of different
 * lengths, KV resident or streamed from host, policy layers on the CPU), the real
 * stories260K model reproduces its outside reference on the GPU, random weights generated
 * on the GPU are deterministic, and the GPU memory budget refuses what does not fit.
 *
 * The CUDA engine stores weights and KV in bf16 and rounds activations to bf16 before each
 * GEMM, so logits match the CPU engine (same bf16 weights, f32 activations) to about 1e-2
 * relative; greedy tokens are compared step by step with the reference's own tokens fed
 * back (teacher forcing), and only where the reference's top-2 margin is comfortable.
 *
 * @module
 */
import { assert, assertEquals, assertRejects } from "../_std.ts";
import { assertAll, check } from "./_report.ts";
import { randn, relError, sharedModels, toBf16 } from "../_util.ts";
import {
  AttentionMethod,
  Backend,
  decodeStep,
  deviceCount,
  DType,
  Engine,
  MagicpigError,
  type ModelConfig,
  Session,
  Status,
  TensorKind,
} from "../../ffi/native.ts";
import { Graphs, KvPlacement, setKernel } from "../../ffi/gpu.ts";
import { loadModel } from "../../engine/model/loader.ts";
import { ggufToHfDir } from "../_convert.ts";
import { tempDir } from "../_tmp.ts";

const gpus = (() => {
  try {
    return deviceCount();
  } catch {
    return 0;
  }
})();
const ignore = gpus === 0;
if (ignore) console.warn("skipping GPU engine tests: mp_device_count() is 0");

// head_dim 64 takes the flash and skinny-GEMM paths; 3 layers so that a MAGICPIG session
// with dense layers {0, 2} sends layer 1 to the CPU policy.
const cfg: ModelConfig = {
  n_layers: 3,
  dim: 256,
  n_heads: 4,
  n_kv_heads: 2,
  head_dim: 64,
  ffn_dim: 512,
  vocab_size: 1000,
  max_context: 0,
  rms_eps: 1e-5,
  tied_embeddings: false,
  rope: {
    theta: 500000,
    style: 1,
    scaling: 1,
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position: 8192,
  },
};

// head_dim 128: the Hopper wgmma prefill kernel, reading the engine's head-major K/V.
const cfg128: ModelConfig = { ...cfg, dim: 512, head_dim: 128 };

/** The same bf16 weights into an engine of either backend. */
async function makeEngine(
  backend: number,
  prefillChunk?: number,
  c: ModelConfig = cfg,
): Promise<Engine> {
  const cfg = c;
  const e = Engine.create(cfg, {
    backend,
    weightDtype: DType.BF16,
    kvDtype: DType.BF16,
    prefillChunk,
  });
  let s = 1;
  const put = (kind: number, layer: number, rows: number, cols: number, norm = false) => {
    const data = norm
      ? randn(cols, s++, 0.1).map((x) => 1 + x)
      : randn(rows * cols, s++, 1 / Math.sqrt(cols));
    if (norm) e.loadTensor(kind, layer, DType.F32, [cols], data);
    else e.loadTensor(kind, layer, DType.BF16, [rows, cols], toBf16(data));
  };
  const q = cfg.n_heads * cfg.head_dim, kv = cfg.n_kv_heads * cfg.head_dim;
  put(TensorKind.TOKEN_EMBD, 0, cfg.vocab_size, cfg.dim);
  put(TensorKind.OUTPUT_NORM, 0, 1, cfg.dim, true);
  put(TensorKind.OUTPUT, 0, cfg.vocab_size, cfg.dim);
  for (let l = 0; l < cfg.n_layers; l++) {
    put(TensorKind.ATTN_NORM, l, 1, cfg.dim, true);
    put(TensorKind.WQ, l, q, cfg.dim);
    put(TensorKind.WK, l, kv, cfg.dim);
    put(TensorKind.WV, l, kv, cfg.dim);
    put(TensorKind.WO, l, cfg.dim, q);
    put(TensorKind.FFN_NORM, l, 1, cfg.dim, true);
    put(TensorKind.W_GATE, l, cfg.ffn_dim, cfg.dim);
    put(TensorKind.W_DOWN, l, cfg.dim, cfg.ffn_dim);
    put(TensorKind.W_UP, l, cfg.ffn_dim, cfg.dim);
  }
  await e.finalize();
  return e;
}

function tokens(n: number, seed: number): Int32Array<ArrayBuffer> {
  return Int32Array.from(
    { length: n },
    (_, i) => (i * 7919 + seed * 104729 + i * i) % cfg.vocab_size,
  );
}

const denseOpts = { attention: { method: AttentionMethod.DENSE } };
// A non-DENSE method whose sparse layer (1) goes to the CPU policy; layers 0 and 2 dense.
const sparseOpts = { attention: { method: AttentionMethod.MAGICPIG, denseLayers: [0, 2] } };
// MAGICPIG with an index after commit and a small window and generation buffer, so that
// decode splits layer 1 (GPU window + CPU sample) and flushes the buffer every few steps;
// K1L1024 samples every key (u = 1 within rounding), so the result must equal dense.
const splitOpts = {
  attention: {
    method: AttentionMethod.MAGICPIG,
    denseLayers: [0, 2],
    sinks: 4,
    window: 16,
    genBuffer: 3,
    lshK: 1,
    lshL: 1024,
  },
};
// TOPK over every offloaded key (budget 1): the window slides every step.
const topkOpts = {
  attention: { method: AttentionMethod.TOPK, denseLayers: [0, 2], window: 16, budget: 1 },
};

Deno.test({
  name: "CUDA engine: chunked and follow-up prefill match the CPU engine (head_dim 64 and 128)",
  ignore,
  async fn() {
    const f: (string | null)[] = [];
    for (const c of [cfg, cfg128]) {
      await using cpu = await makeEngine(Backend.CPU, 96, c);
      await using gpu = await makeEngine(Backend.CUDA, 96, c);
      const V = c.vocab_size, hd = `head_dim ${c.head_dim}`;
      const prompt = tokens(300, 1), more = tokens(77, 2);
      console.log(`${hd}: prefill 300 tokens (chunks of 96) on both engines, then 77 more`);
      const lc = new Float32Array(V), lg = new Float32Array(V);
      await using sc = await Session.create(cpu, denseOpts);
      await using sg = await Session.create(gpu, denseOpts);
      await sc.prefill(prompt, { logits: lc });
      await sg.prefill(prompt, { logits: lg });
      f.push(
        check("engine", `${hd}: prefill 300 tokens in chunks of 96`, relError(lg, lc), 2e-2),
      );
      await sc.prefill(more, { logits: lc });
      await sg.prefill(more, { logits: lg });
      f.push(
        check("engine", `${hd}: follow-up prefill of 77 tokens at 300`, relError(lg, lc), 2e-2),
      );
      assertEquals(sg.info().nTokens, 377);
      if (c.head_dim === 128) {
        // A follow-up from 2048 tokens on gets the Hopper kernel's key-norm bound too, over
        // the earlier rows as well (uploaded from the host cache).
        const long = tokens(2100, 3);
        await sc.prefill(long, { logits: lc });
        await sg.prefill(long, { logits: lg });
        f.push(
          check("engine", `${hd}: follow-up prefill of 2100 tokens at 377`, relError(lg, lc), 2e-2),
        );
        assertEquals(sg.info().nTokens, 2477);
      }
    }
    assertAll(f);
  },
});

Deno.test({
  name: "CUDA engine: batched decode matches the CPU engine for resident, streamed and policy KV",
  ignore,
  async fn() {
    await using cpu = await makeEngine(Backend.CPU);
    await using gpu = await makeEngine(Backend.CUDA);
    const V = cfg.vocab_size;
    const f: (string | null)[] = [];
    // Graph case last: a failure there leaves the others' results printed first.
    for (
      const [name, placement, opts, graphs, commit] of [
        ["resident, no graph", KvPlacement.RESIDENT, denseOpts, Graphs.OFF, false],
        ["streamed", KvPlacement.STREAMED, denseOpts, Graphs.AUTO, false],
        ["policy layer, no index yet", KvPlacement.AUTO, sparseOpts, Graphs.AUTO, false],
        ["split decode: MAGICPIG index + flushes", KvPlacement.AUTO, splitOpts, Graphs.AUTO, true],
        ["split decode: TOPK sliding window", KvPlacement.AUTO, topkOpts, Graphs.AUTO, false],
        ["resident, CUDA graph", KvPlacement.RESIDENT, denseOpts, Graphs.ON, false],
      ] as const
    ) {
      console.log(`case: ${name}: prefill 3 sessions, then 8 decode steps`);
      setKernel("kv", placement);
      setKernel("graphs", graphs);
      try {
        const lens = [130, 7, 260];
        const cs: Session[] = [], gs: Session[] = [];
        for (const [i, n] of lens.entries()) {
          const c = await Session.create(cpu, opts), g = await Session.create(gpu, opts);
          await c.prefill(tokens(n, 10 + i));
          await g.prefill(tokens(n, 10 + i));
          if (commit) await c.commit(), await g.commit();
          cs.push(c), gs.push(g);
        }
        let worst = 0;
        const steps = 8;
        const lc = new Float32Array(3 * V), lg = new Float32Array(3 * V);
        for (let step = 0; step < steps; step++) {
          const t = tokens(3, 100 + step);
          await decodeStep(cpu, cs, t, lc);
          await decodeStep(gpu, gs, t, lg);
          worst = Math.max(worst, relError(lg, lc));
        }
        f.push(
          check(
            "engine",
            `decode ${steps} steps, batch of 3 (lengths ${lens}), ${name}`,
            worst,
            2.5e-2,
          ),
        );
        assertEquals(gs.map((s) => s.info().nTokens), lens.map((n) => n + steps));
        if (commit || opts === topkOpts) {
          // the offloaded part ran (and was counted) on both engines alike
          const [ci, gi] = [cs[2].info(), gs[2].info()];
          assert(gi.keysOffloaded > 0, `${name}: nothing was offloaded`);
          assertEquals(gi.keysOffloaded, ci.keysOffloaded);
        }
        for (const s of [...cs, ...gs]) await s.close();
      } finally {
        setKernel("kv", KvPlacement.AUTO);
        setKernel("graphs", Graphs.AUTO);
      }
    }
    assertAll(f);
  },
});

Deno.test({
  name: "CUDA engine: random weights generated on the GPU are deterministic",
  ignore,
  async fn() {
    const logitsOf = async (seed: bigint) => {
      await using e = Engine.create(cfg, { backend: Backend.CUDA });
      await e.initRandom(seed, 0.05);
      await e.finalize();
      await using s = await Session.create(e, denseOpts);
      const l = new Float32Array(cfg.vocab_size);
      await s.prefill(tokens(50, 3), { logits: l });
      return l;
    };
    console.log("three engines with GPU-generated weights (seeds 7, 7, 8), prefill 50 tokens");
    const a = await logitsOf(7n), b = await logitsOf(7n), c = await logitsOf(8n);
    assert(a.every(Number.isFinite), "non-finite logits");
    assertEquals(Array.from(a), Array.from(b));
    assert(relError(a, c) > 0.1, "different seeds gave the same weights");
  },
});

Deno.test({
  name: "CUDA engine: a gpu_memory_budget below the weights is refused with a clear error",
  ignore,
  async fn() {
    console.log("an engine with a 1 MiB GPU budget generates its weights");
    const e = Engine.create(cfg, { backend: Backend.CUDA, gpuMemoryBudget: 1024n * 1024n });
    try {
      const err = await assertRejects(() => e.initRandom(1n, 0.05), MagicpigError, "budget");
      assertEquals((err as MagicpigError).status, Status.OOM);
    } finally {
      await e.close();
    }
  },
});

interface StoriesRef {
  prompt_run: {
    prompt_ids: number[];
    generated_ids: number[];
    per_step: { pos: number; token_in: number; argmax: number; margin_top1_top2: number }[];
    logits_at_pos4_float32: number[];
  };
  bos_only_256: { prompt_ids: number[]; generated_ids: number[] };
}

/**
 * The stories260K checks on the CUDA engine: logits at position 4 against the float32
 * reference, teacher-forced greedy agreement wherever the reference's margin exceeds what
 * bf16 can move, and 256 steps from BOS.
 */
async function storiesOnCuda(path: string, label: string): Promise<void> {
  const ref = JSON.parse(
    await Deno.readTextFile(`${sharedModels!}/reference/stories260K_reference.json`),
  ) as StoriesRef;
  console.log(`stories260K (${label}) on the CUDA engine: prompt run, then 256 steps from BOS`);
  const model = await loadModel({ path, backend: Backend.CUDA });
  const e = model.engine;
  try {
    const V = e.config.vocab_size;
    const argmax = (l: Float32Array) => {
      let b = 0;
      for (let j = 1; j < V; j++) if (l[j] > l[b]) b = j;
      return b;
    };
    const f: (string | null)[] = [];
    // Teacher-forced: feed the reference's tokens; our argmax must agree wherever the
    // reference's top-2 margin exceeds what bf16 can move (0.5).
    const run = ref.prompt_run;
    await using s = await Session.create(e, denseOpts);
    const l = new Float32Array(V);
    await s.prefill(new Int32Array(run.prompt_ids), { logits: l });
    f.push(
      check(
        "engine",
        `stories260K (${label}) logits at position 4 vs float32 reference`,
        relError(l, Float32Array.from(run.logits_at_pos4_float32)),
        2e-2,
      ),
    );
    let disagree = 0, tight = 0;
    for (const [i, step] of run.per_step.entries()) {
      if (i > 0) await decodeStep(e, [s], new Int32Array([step.token_in]), l);
      if (argmax(l) !== step.argmax) {
        if (step.margin_top1_top2 >= 0.5) disagree++;
        else tight++;
      }
    }
    f.push(
      check(
        "engine",
        `stories260K (${label}) greedy steps differing where margin >= 0.5 (${tight} tight flips)`,
        disagree,
        0,
      ),
    );
    // From BOS, teacher-forced over all 256 reference tokens: bf16 may flip a few steps
    // whose margins are tight (the reference gives no margins for this run).
    await using b = await Session.create(e, denseOpts);
    const bos = ref.bos_only_256;
    await b.prefill(new Int32Array(bos.prompt_ids), { logits: l });
    let flips = 0;
    for (const [i, t] of bos.generated_ids.entries()) {
      if (argmax(l) !== t) flips++;
      if (i + 1 < bos.generated_ids.length) await decodeStep(e, [b], new Int32Array([t]), l);
    }
    f.push(
      check(
        "engine",
        `stories260K (${label}) from BOS, 256 teacher-forced steps: argmax flips`,
        flips,
        3,
      ),
    );
    assertAll(f);
  } finally {
    await e.close();
  }
}

Deno.test({
  name: "CUDA engine: stories260K (GGUF) reproduces the reference tokens",
  ignore: ignore || sharedModels === null,
  fn: () => storiesOnCuda(`${sharedModels!}/stories260K/stories260K.gguf`, "GGUF"),
});

Deno.test({
  name: "CUDA engine: stories260K as a Hugging Face directory reproduces the reference tokens",
  ignore: ignore || sharedModels === null,
  async fn() {
    // safetensors + config.json converted from the GGUF (Q/K rows un-permuted: rotate-half
    // RoPE), the Hugging Face layout the loader reads for real checkpoints
    const dir = await tempDir("hf-stories-gpu");
    await ggufToHfDir(`${sharedModels!}/stories260K/stories260K.gguf`, dir);
    await storiesOnCuda(dir, "Hugging Face format");
  },
});
