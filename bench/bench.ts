/**
 * `deno task bench`: prefill and decode speed of the engine, with the floors they are
 * measured against.
 *
 * On a machine with a GPU: the Llama-3.1-8B shape (32 layers, 4096 hidden, 14336 FFN, 32/8
 * heads of 128, 128,256 vocab) with seeded random bf16 weights generated on the GPU. For
 * each context length (8K, 32K, 96K by default) one prompt is prefilled once into a base
 * session (timed: the prefill figure). The methods decode from it:
 *   dense-gpu   exact attention, KV resident on the GPU (where it fits); decode steps
 *               replay a CUDA graph (dense-gpu-nographs: the same launched kernel by kernel,
 *               at the first context and batch 1 only)
 *   dense-host  exact attention, each layer's KV streamed from host memory every step
 *   magicpig    K10L150 from host memory (dense layers 0 and 16 on the GPU)
 *   topk, quest the baselines at the default 2% budget
 * A dense batch decodes the base itself as its first member (truncated back afterwards) plus
 * forks; the other methods decode forks (Session.fork copies the KV; MAGICPIG forks build
 * their index at commit, keys hashed on the GPU). Forks' host KV is page-locked only for
 * dense-host, the one method that streams it every step (pinning 12 GB costs seconds).
 * Decode is teacher-forced (bench.py's method, magicpig.md §15): warm-up steps, then timed
 * steps, each step one native call for the batch, the median step reported as ms/token and
 * batch/median as tokens/s. Jobs run in priority order, so that the time limit cuts the
 * least important: prefill at every context; batch 1 of dense-gpu, dense-host and magicpig
 * at every context; at the longest context under `--gpu-memory-budget` (default 24GB, its
 * own engine; `--no-budget-pass` skips it) magicpig and dense-host at batch 1 and at the
 * largest batch of --batches that fits host memory, then dense-gpu; then larger batches;
 * then TopK and Quest. Each row carries the bytes the step must move and
 * the floor they imply (HBM 4.3 TB/s, pinned PCIe 55 GB/s, host random gathers 35 GB/s,
 * cuBLAS bf16 ~790 TFLOP/s: gpu-server.md), the keys fraction, host bytes per token (KV and
 * index), the GPU memory peak and the setup time (forks + index builds). The full tables,
 * the targets of issue 4 (from rows that ran; "not measured" otherwise) and a compact
 * summary table come last.
 *
 * Without a GPU the same task runs a small CPU configuration and says so.
 *
 * Options: --out FILE (JSON), --contexts 8192,32768,98304, --batches 1,4,8,16,
 * --methods dense-gpu,dense-host,magicpig,topk,quest, --gpu-memory-budget 24GB,
 * --no-budget-pass, --time-limit SECONDS (default 240: with the build and the last job the run
 * fits about 5 minutes), --short-context N (default 1024 on a GPU, 0: off: one more dense-gpu
 * batch-1 row at a short context, where the weights are nearly all a step reads: the
 * architecture's "short context" target), --prefill-chunk N (tokens per prefill chunk; default
 * 8192 on a GPU, 256 on the CPU), --cpu (force the CPU config).
 *
 * @module
 */
import {
  AttentionMethod,
  Backend,
  decodeStep,
  deviceCount,
  Engine,
  type ModelConfig,
  Session,
  type SessionOptions,
} from "../ffi/native.ts";
import {
  DecodeProfile,
  decodeProfile,
  describeGpu,
  GpuShare,
  Graphs,
  KvPlacement,
  PinnedKv,
  QueryCodes,
  Retrieval,
  setKernel,
} from "../ffi/gpu.ts";
import { llama31_8b } from "./_shapes.ts";

// ------------------------------------------------------------
// options

interface Options {
  out: string | null;
  contexts: number[];
  batches: number[];
  methods: string[];
  budget: bigint;
  budgetPass: boolean;
  timeLimit: number;
  shortContext: number;
  prefillChunk: number;
  cpu: boolean;
}

function parseBytes(s: string): bigint {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?$/i.exec(s.trim());
  if (!m) throw new Error(`Invalid byte size "${s}": use e.g. 24GB`);
  const mult = { "": 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[m[2].toUpperCase()]!;
  return BigInt(Math.round(Number(m[1]) * mult));
}

function parseArgs(args: string[], gpu: boolean): Options {
  const o: Options = {
    out: null,
    contexts: gpu ? [8192, 32768, 98304] : [512, 2048],
    batches: gpu ? [1, 4, 8, 16] : [1, 4],
    methods: [
      "dense-gpu",
      "dense-gpu-nographs",
      "dense-host",
      "magicpig",
      "magicpig-cpu",
      "topk",
      "quest",
    ],
    budget: 24n * 2n ** 30n,
    budgetPass: gpu,
    timeLimit: gpu ? 240 : 60,
    shortContext: gpu ? 1024 : 0,
    prefillChunk: 0,
    cpu: !gpu,
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const next = () => {
      const v = args[++i];
      if (v === undefined) throw new Error(`Option "${a}" needs a value`);
      return v;
    };
    const ints = (v: string) => v.split(",").map((x) => Number.parseInt(x, 10));
    if (a === "--out") o.out = next();
    else if (a === "--contexts") o.contexts = ints(next());
    else if (a === "--batches") o.batches = ints(next());
    else if (a === "--methods") o.methods = next().split(",");
    else if (a === "--gpu-memory-budget") o.budget = parseBytes(next());
    else if (a === "--no-budget-pass") o.budgetPass = false;
    else if (a === "--time-limit") o.timeLimit = Number(next());
    else if (a === "--short-context") o.shortContext = Number(next());
    else if (a === "--prefill-chunk") o.prefillChunk = Number(next());
    else if (a === "--cpu") o.cpu = true;
    else throw new Error(`Unknown option "${a}"`);
  }
  if (o.cpu) o.budgetPass = false;
  return o;
}

// ------------------------------------------------------------
// model shapes and floors

const llama8b: ModelConfig = llama31_8b;

const cpuModel: ModelConfig = {
  ...llama8b,
  n_layers: 4,
  dim: 256,
  n_heads: 8,
  n_kv_heads: 2,
  head_dim: 32,
  ffn_dim: 512,
  vocab_size: 2000,
};

const FLOOR = { hbm: 4.3e12, pcie: 55e9, gather: 35e9, gemm: 790e12, cpuStream: 82e9 };

function matrixParams(c: ModelConfig): number {
  const layer = c.dim * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim +
    c.n_heads * c.head_dim * c.dim + 3 * c.dim * c.ffn_dim;
  return c.n_layers * layer + c.vocab_size * c.dim;
}

/** K+V bytes per token over all layers (bf16). */
function kvBytesPerToken(c: ModelConfig): number {
  return c.n_layers * c.n_kv_heads * c.head_dim * 2 * 2;
}

function prefillFlops(c: ModelConfig, n: number): number {
  const gemm = 2 * (matrixParams(c) - c.vocab_size * c.dim) * n;
  const attn = 4 * c.head_dim * c.n_heads * c.n_layers * (n * (n + 1)) / 2;
  return gemm + attn;
}

// ------------------------------------------------------------
// methods

interface Method {
  name: string;
  options: SessionOptions;
  placement: number;
  commit: boolean;
  graphs?: number;
  /** Split decode's GPU share of sampled attention (op "offload"); default automatic. */
  share?: number;
  /** Where split decode hashes MAGICPIG queries (op "qcodes"); default automatic. */
  qcodes?: number;
  /** Where the GPU share's samples are retrieved (op "retrieval"); default automatic. */
  retrieval?: number;
}

/** "magicpig@SHARE": MAGICPIG with split decode's GPU share forced (op "offload"). */
const SHARES: Record<string, number> = {
  none: GpuShare.NONE,
  quarter: GpuShare.QUARTER,
  half: GpuShare.HALF,
  auto: GpuShare.AUTO,
  "three-quarters": GpuShare.THREE_QUARTERS,
  all: GpuShare.ALL,
};

function methodOf(name: string): Method {
  const at = /^magicpig@(.+)$/.exec(name);
  if (at) {
    if (!(at[1] in SHARES)) {
      throw new Error(`Unknown GPU share "${at[1]}": use ${Object.keys(SHARES).join(", ")}`);
    }
    return { ...methodOf("magicpig"), name, share: SHARES[at[1]] };
  }
  switch (name) {
    case "dense-gpu":
      return {
        name,
        options: { attention: { method: AttentionMethod.DENSE } },
        placement: KvPlacement.RESIDENT,
        commit: false,
      };
    case "dense-gpu-nographs":
      return {
        name,
        options: { attention: { method: AttentionMethod.DENSE } },
        placement: KvPlacement.RESIDENT,
        commit: false,
        graphs: Graphs.OFF,
      };
    case "dense-host":
      return {
        name,
        options: { attention: { method: AttentionMethod.DENSE } },
        placement: KvPlacement.STREAMED,
        commit: false,
      };
    case "magicpig":
      return {
        name,
        options: { attention: { method: AttentionMethod.MAGICPIG, lshK: 10, lshL: 150 } },
        placement: KvPlacement.AUTO,
        commit: true,
      };
    case "magicpig-cpu": // the same without the GPU's share: the CPU gathers every row
      return {
        name,
        options: { attention: { method: AttentionMethod.MAGICPIG, lshK: 10, lshL: 150 } },
        placement: KvPlacement.AUTO,
        commit: true,
        share: GpuShare.NONE,
      };
    case "magicpig-cpu-codes": // magicpig with the query codes hashed on the CPU (A/B)
      return { ...methodOf("magicpig"), name, qcodes: QueryCodes.CPU };
    case "magicpig-cpu-retrieval": // the GPU share's samples retrieved by the CPU (A/B)
      return { ...methodOf("magicpig"), name, retrieval: Retrieval.CPU };
    case "topk":
      return {
        name,
        options: { attention: { method: AttentionMethod.TOPK } },
        placement: KvPlacement.AUTO,
        commit: true,
      };
    case "quest":
      return {
        name,
        options: { attention: { method: AttentionMethod.QUEST } },
        placement: KvPlacement.AUTO,
        commit: true,
      };
  }
  throw new Error(
    `Unknown method "${name}": use dense-gpu, dense-gpu-nographs, dense-host, magicpig, ` +
      `magicpig@SHARE, magicpig-cpu, magicpig-cpu-codes, magicpig-cpu-retrieval, topk or quest`,
  );
}

// ------------------------------------------------------------
// measurement

interface PrefillRow {
  budget: string;
  context: number;
  seconds: number;
  tokensPerSecond: number;
  floorSeconds: number;
  gpuPeakGiB: number;
}

interface DecodeRow {
  budget: string;
  context: number;
  method: string;
  batch: number;
  msPerToken: number | null;
  tokensPerSecond: number | null;
  steps: number;
  /** Seconds to make the batch's sessions (forks, MAGICPIG index builds). */
  setupSeconds: number | null;
  floorMs: number | null;
  floorWhat: string;
  keysFraction: number | null;
  hostKvBytesPerToken: number | null;
  hostIndexBytesPerToken: number | null;
  gpuPeakGiB: number;
  /** Host ms per timed step by stage (CUDA backend; null on the CPU): see ffi/gpu.ts. */
  stages: StageMs | null;
  note: string;
}

/** Per-step host time of a decode step by stage (ms), from the backend's timers. */
interface StageMs {
  /** Placement, split-decode windows and tables. */
  setup: number;
  /** Split layers waiting for q: the GPU segments between CPU parts. */
  waitQ: number;
  /** Split layers' CPU part (retrieval + sampled attention). */
  cpu: number;
  /** The GPU after the last launch (dense tail, LM head). */
  tail: number;
  /** Host rows written back. */
  post: number;
  /** The rest: launches and copies queued by the host. */
  other: number;
  /** The whole native step (mp_decode_step's backend call); the row's ms/token less this is
   * the FFI call and the caller. */
  native: number;
  /** CPU part per split layer. */
  cpuPerLayer: number;
  /** Per split layer: the CPU part's start to every head's sample (retrieval). */
  phaseAPerLayer: number;
  /** Per split layer: the CPU part's start to the GPU share's launch (0: no share). */
  handoffPerLayer: number;
  /** Per split layer: the GPU share's end after (+) or before (−) the CPU part's end. */
  shareLagPerLayer: number;
  /** Split layers whose GPU share ended after the CPU part, as a fraction. */
  shareLateFraction: number;
  /** Per split layer: the CPU part's start to the retrieval tasks' start. */
  preparePerLayer: number;
  /** Per split layer: the longest query head's retrieval, and the mean one. */
  headMaxPerLayer: number;
  headMeanPerLayer: number;
  /** Per split layer and query head: bucket entries scanned. */
  entriesPerHead: number;
  /** Per split layer and sequence: KV heads whose sampled attention the GPU took (mean). */
  gpuKvHeads: number;
  /** Split layers whose GPU share the GPU retrieved itself (op "retrieval"), as a fraction. */
  gpuRetrievedFraction: number;
}

/** `heads`: query heads per split layer-call (batch × the model's query heads); `kvHeads`: the
 * model's KV heads. */
function stagesOf(p: DecodeProfile, heads: number, kvHeads: number): StageMs | null {
  if (p.steps <= 0) return null;
  const per = (x: number) => x / p.steps;
  const known = p.setupMs + p.waitQMs + p.cpuMs + p.tailMs + p.postMs;
  const perLayer = (x: number) => p.splitLayers > 0 ? x / p.splitLayers : 0;
  return {
    setup: per(p.setupMs),
    waitQ: per(p.waitQMs),
    cpu: per(p.cpuMs),
    tail: per(p.tailMs),
    post: per(p.postMs),
    other: per(p.totalMs - known),
    native: per(p.totalMs),
    cpuPerLayer: perLayer(p.cpuMs),
    phaseAPerLayer: perLayer(p.phaseAMs),
    handoffPerLayer: perLayer(p.handoffMs),
    shareLagPerLayer: perLayer(p.shareLateMs - p.shareSlackMs),
    shareLateFraction: perLayer(p.shareLateLayers),
    preparePerLayer: perLayer(p.prepareMs),
    headMaxPerLayer: perLayer(p.headMaxMs),
    headMeanPerLayer: perLayer(p.headSumMs) / heads,
    entriesPerHead: p.splitLayers > 0 ? perLayer(p.entries) / heads : 0,
    // jobs are query heads: (GPU KV heads per sequence) × group × batch per layer-call
    gpuKvHeads: perLayer(p.gpuJobs) * kvHeads / heads,
    gpuRetrievedFraction: perLayer(p.gpuRetrieval),
  };
}

/** "; stages ms: setup …" for a row's log line ("" without timers). */
function stageText(s: StageMs | null): string {
  if (!s) return "";
  const f = (x: number) => x.toFixed(2);
  const us = (x: number) => (x * 1e3).toFixed(0);
  const split = s.cpuPerLayer > 0
    ? ` (${us(s.cpuPerLayer)} us/layer: retrieval done at ${us(s.phaseAPerLayer)}` +
      ` (prepared at ${us(s.preparePerLayer)}; per head ${us(s.headMeanPerLayer)}, longest ${
        us(s.headMaxPerLayer)
      }, ${s.entriesPerHead.toFixed(0)} entries)` +
      (s.gpuKvHeads > 0
        ? `, GPU share of ${s.gpuKvHeads.toFixed(1)} KV heads ${
          s.gpuRetrievedFraction > 0
            ? `retrieved on the GPU in ${(100 * s.gpuRetrievedFraction).toFixed(0)}% of layers`
            : `launched at ${us(s.handoffPerLayer)}`
        }, ended ${us(Math.abs(s.shareLagPerLayer))} us ${
          s.shareLagPerLayer > 0 ? "after" : "before"
        } the CPU part (late in ${(100 * s.shareLateFraction).toFixed(0)}% of layers)`
        : "") +
      ")"
    : "";
  return `; stages ms/step: setup ${f(s.setup)}, gpu-for-q ${f(s.waitQ)}, cpu ${f(s.cpu)}` +
    `${split}, tail ${f(s.tail)}, post ${f(s.post)}, other ${f(s.other)}; native ${f(s.native)}`;
}

function tokens(n: number, seed: number, vocab: number): Int32Array<ArrayBuffer> {
  let x = seed >>> 0;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = 1 + (x % (vocab - 1));
  }
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const GiB = 2 ** 30;

async function main(): Promise<void> {
  let gpus = 0;
  try {
    gpus = deviceCount();
  } catch {
    gpus = 0;
  }
  const o = parseArgs(Deno.args, gpus > 0);
  const useGpu = gpus > 0 && !o.cpu;
  const cfg = useGpu ? llama8b : cpuModel;
  const started = performance.now();
  const elapsed = () => (performance.now() - started) / 1000;
  const notes: string[] = [];
  const device = useGpu ? describeGpu() : "cpu";
  if (!useGpu) {
    const why = gpus > 0 ? "--cpu was given" : "no GPU is usable on this machine";
    const msg = `${why}: running a small CPU configuration (${cfg.n_layers} layers, ` +
      `dim ${cfg.dim}, contexts ${o.contexts}), not the Llama-3.1-8B benchmark`;
    console.log(msg);
    notes.push(msg);
  } else {
    console.log(`device: ${device}; model: Llama-3.1-8B shape, random bf16 weights (seed 1)`);
  }
  const prefills: PrefillRow[] = [];
  const decodes: DecodeRow[] = [];
  for (const m of o.methods) methodOf(m); // validates the names
  const hostLimit = 110 * GiB; // host memory the bench's sessions may take (125 GiB machine)

  // Engines (one per budget) and prefilled base sessions are made on first use; the jobs
  // run in priority order so that the figures that matter most exist when the time limit
  // stops the run: prefill at every context, batch 1 of the main methods, the budget pass
  // at the longest context, then larger batches and the other baselines.
  const engines = new Map<string, Engine>();
  const bases = new Map<string, Session>();
  const budgetName = (b: bigint) => (b === 0n ? "none" : `${Number(b) / GiB}GB`);
  const engineFor = async (budget: bigint): Promise<Engine> => {
    const key = budgetName(budget);
    let e = engines.get(key);
    if (!e) {
      e = Engine.create(cfg, {
        backend: useGpu ? Backend.CUDA : Backend.CPU,
        gpuMemoryBudget: budget,
        maxBatch: Math.max(...o.batches, 1),
        prefillChunk: o.prefillChunk || (useGpu ? 8192 : 256),
      });
      engines.set(key, e);
      await e.initRandom(1n, 0.02);
      await e.finalize();
    }
    return e;
  };
  const baseFor = async (budget: bigint, N: number): Promise<Session> => {
    const bname = budgetName(budget);
    const key = `${bname}:${N}`;
    let base = bases.get(key);
    if (base) return base;
    const engine = await engineFor(budget);
    base = await Session.create(engine, {
      attention: { method: AttentionMethod.DENSE },
      reserveTokens: N + 256,
    });
    bases.set(key, base);
    const t0 = performance.now();
    await base.prefill(tokens(N, N, cfg.vocab_size));
    const secs = (performance.now() - t0) / 1000;
    if (prefills.some((p) => p.budget === bname && p.context === N)) return base; // again
    const row: PrefillRow = {
      budget: bname,
      context: N,
      seconds: secs,
      tokensPerSecond: N / secs,
      floorSeconds: prefillFlops(cfg, N) / FLOOR.gemm,
      gpuPeakGiB: Number(engine.info().gpuBytesPeak) / GiB,
    };
    prefills.push(row);
    console.log(
      `prefill ${bname} ${N}: ${secs.toFixed(2)} s (${row.tokensPerSecond.toFixed(0)} tok/s; ` +
        `compute floor ${row.floorSeconds.toFixed(2)} s)`,
    );
    return base;
  };
  const dropBases = async (bname: string) => {
    for (const [k, b] of bases) {
      if (k.startsWith(`${bname}:`)) {
        await b.close();
        bases.delete(k);
      }
    }
  };

  // Jobs in priority order (the time limit cuts from the end): prefill at every context;
  // decode B=1 of dense-gpu, dense-host and magicpig at every context; the budget pass at
  // the longest context (magicpig and dense-host at B=1 and at the largest batch that fits
  // host memory, then dense-gpu); then larger batches; then TopK/Quest.
  // B = 0 in a job: the largest batch of --batches that fits host memory, chosen when it runs.
  type Job = { budget: bigint; N: number; method: string; B: number };
  const jobs: Job[] = [];
  const want = (m: string) => o.methods.includes(m);
  const main = ["dense-gpu", "dense-host", "magicpig"].filter(want);
  const others = ["topk", "quest"].filter(want);
  const Nmax = o.contexts[o.contexts.length - 1];
  for (const N of o.contexts) jobs.push({ budget: 0n, N, method: "", B: 0 }); // prefill
  for (const N of o.contexts) for (const m of main) jobs.push({ budget: 0n, N, method: m, B: 1 });
  if (o.shortContext > 0 && want("dense-gpu") && !o.contexts.includes(o.shortContext)) {
    jobs.push({ budget: 0n, N: o.shortContext, method: "dense-gpu", B: 1 });
  }
  if (o.budgetPass) {
    const bm = ["magicpig", "dense-host"].filter(want);
    for (const m of bm) jobs.push({ budget: o.budget, N: Nmax, method: m, B: 1 });
    for (const m of bm) jobs.push({ budget: o.budget, N: Nmax, method: m, B: 0 });
    if (want("dense-gpu")) jobs.push({ budget: o.budget, N: Nmax, method: "dense-gpu", B: 1 });
  }
  if (want("dense-gpu-nographs")) {
    jobs.push({ budget: 0n, N: o.contexts[0], method: "dense-gpu-nographs", B: 1 });
  }
  for (const m of ["magicpig-cpu", "magicpig-cpu-codes", "magicpig-cpu-retrieval"].filter(want)) {
    jobs.push({ budget: 0n, N: Nmax, method: m, B: 1 });
  }
  for (const m of o.methods.filter((x) => x.startsWith("magicpig@"))) {
    jobs.push({ budget: 0n, N: Nmax, method: m, B: 1 });
  }
  for (const B of o.batches.filter((b) => b !== 1)) {
    for (const N of o.contexts) for (const m of main) jobs.push({ budget: 0n, N, method: m, B });
  }
  for (const B of o.batches.filter((b) => b <= 4)) {
    for (const N of o.contexts) for (const m of others) jobs.push({ budget: 0n, N, method: m, B });
  }

  /** Host bytes of one more session of N tokens of a method (KV, plus the index if any). */
  const sessionHost = (m: Method, N: number) =>
    kvBytesPerToken(cfg) * (N + 512) *
    (m.options.attention?.method === AttentionMethod.DENSE ? 1 : 1.6);
  // Page-locked forks (dense-host) are slow to make (cudaHostAlloc) and pin RAM the OS
  // cannot reclaim: at most this much of them at once.
  const pinnedLimit = 64 * GiB;

  try {
    let lastBudget = 0n;
    for (const job of jobs) {
      if (elapsed() > o.timeLimit) {
        const left = jobs.slice(jobs.indexOf(job));
        const what = left.map((j) =>
          j.method === ""
            ? `prefill ${j.N}`
            : `${budgetName(j.budget)} ${j.N} ${j.method} B=${j.B || "max"}`
        );
        notes.push(
          `time limit (${o.timeLimit} s) reached: ${left.length} jobs skipped (${
            what.slice(0, 8).join(", ")
          }${what.length > 8 ? ", ..." : ""})`,
        );
        break;
      }
      if (job.budget !== lastBudget) {
        // Leaving the budget pass frees its host sessions (the unlimited pass keeps its
        // bases: the later jobs fork them again).
        if (lastBudget !== 0n) await dropBases(budgetName(lastBudget));
        // Entering it frees the unlimited pass's longest base (host memory for the budget
        // pass's own sessions); it is prefilled again if a later job needs it.
        if (job.budget !== 0n) {
          const big = bases.get(`none:${Nmax}`);
          if (big) {
            await big.close();
            bases.delete(`none:${Nmax}`);
          }
        }
        lastBudget = job.budget;
      }
      try {
        const base = await baseFor(job.budget, job.N);
        if (job.method === "") continue;
        const engine = await engineFor(job.budget);
        const m = methodOf(job.method);
        let held = 0; // host bytes of the base sessions alive now
        for (const k of bases.keys()) held += kvBytesPerToken(cfg) * Number(k.split(":")[1]);
        const dense = m.options.attention?.method === AttentionMethod.DENSE;
        const per = sessionHost(m, job.N);
        // new sessions a batch of B needs (a dense batch decodes the base itself as member 0)
        const fresh = (b: number) => (dense && useGpu ? b - 1 : b);
        const room = Math.min(hostLimit - held, m.name === "dense-host" ? pinnedLimit : Infinity);
        let B = job.B;
        let note = "";
        if (B === 0) {
          const fits = o.batches.filter((b) => b > 1 && fresh(b) * per <= room);
          if (fits.length === 0) {
            note = `no batch of ${o.batches.filter((b) => b > 1)} fits host memory ` +
              `(${(per / GiB).toFixed(1)} GiB per session, ${(room / GiB).toFixed(0)} GiB free)`;
          } else {
            B = Math.max(...fits);
            const larger = o.batches.filter((b) => b > B);
            if (larger.length) {
              note = `largest batch that fits host memory (${
                (per / GiB).toFixed(1)
              } GiB per session, ${(room / GiB).toFixed(0)} GiB free)`;
            }
          }
        }
        const r = B === 0
          ? emptyRow(engine, m.name, 0, job.N, budgetName(job.budget), `skipped: ${note}`)
          : fresh(B) * per > room
          ? emptyRow(
            engine,
            m.name,
            B,
            job.N,
            budgetName(job.budget),
            `skipped: ${B} sessions of ${job.N} tokens need more host memory than allowed`,
          )
          : await decodeRun(engine, base, m, B, job.N, budgetName(job.budget));
        if (r) {
          if (note && r.msPerToken !== null) r.note = note;
          decodes.push(r);
          const d = r;
          console.log(
            `decode ${d.budget} ${d.context} ${d.method} B=${d.batch}: ` +
              (d.msPerToken === null ? d.note : `${d.msPerToken.toFixed(2)} ms/token, ` +
                `${d.tokensPerSecond!.toFixed(1)} tok/s` + stageText(d.stages)),
          );
        }
      } catch (e) {
        const msg = `${budgetName(job.budget)} ${job.N} ${job.method || "prefill"}: ${
          e instanceof Error ? e.message : e
        }`;
        console.log(msg);
        notes.push(msg.slice(0, 300));
      }
    }
  } finally {
    for (const b of bases.values()) await b.close();
    for (const e of engines.values()) await e.close();
  }

  function emptyRow(
    engine: Engine,
    method: string,
    B: number,
    N: number,
    bname: string,
    note: string,
  ): DecodeRow {
    return {
      budget: bname,
      context: N,
      method,
      batch: B,
      msPerToken: null,
      tokensPerSecond: null,
      steps: 0,
      setupSeconds: null,
      floorMs: null,
      floorWhat: "",
      keysFraction: null,
      hostKvBytesPerToken: null,
      hostIndexBytesPerToken: null,
      gpuPeakGiB: Number(engine.info().gpuBytesPeak) / GiB,
      stages: null,
      note,
    };
  }

  async function decodeRun(
    engine: Engine,
    base: Session,
    m: Method,
    B: number,
    N: number,
    bname: string,
  ): Promise<DecodeRow | null> {
    const empty = (note: string) => emptyRow(engine, m.name, B, N, bname, note);
    // On the CPU these are the same as plain dense.
    if (
      !useGpu &&
      (m.name === "dense-host" || m.name === "dense-gpu-nographs" || m.name === "magicpig-cpu")
    ) return null;
    const dense = m.options.attention?.method === AttentionMethod.DENSE;
    // A dense batch decodes the base itself as its first member (truncated back afterwards):
    // no copy, and the base's host KV is already page-locked.
    const useBase = dense && useGpu;
    if (useGpu) setKernel("kv", m.placement);
    if (useGpu) setKernel("graphs", m.graphs ?? Graphs.AUTO);
    if (useGpu) setKernel("offload", m.share ?? GpuShare.AUTO);
    if (useGpu) setKernel("qcodes", m.qcodes ?? QueryCodes.AUTO);
    if (useGpu) setKernel("retrieval", m.retrieval ?? Retrieval.AUTO);
    const members: Session[] = [];
    const forks: Session[] = [];
    try {
      const tf = performance.now();
      if (useBase) members.push(base);
      // Forks' host KV: page-locked where the GPU reads it every step (dense-host streams it;
      // MAGICPIG's GPU share gathers sampled rows from it, mapped); pinning 12 GB takes
      // seconds, and the CPU policies and one-time uploads read pageable memory as well.
      const pin = m.name === "dense-host" ||
        (m.name.startsWith("magicpig") && m.share !== GpuShare.NONE);
      if (useGpu) setKernel("pin", pin ? PinnedKv.ON : PinnedKv.OFF);
      try {
        while (members.length < B) {
          if (elapsed() > o.timeLimit + 15) {
            return empty(`skipped: time limit reached after ${members.length} of ${B} sessions`);
          }
          // Room for the warm-up and timed steps, so the host cache never grows.
          const f = await base.fork({ ...m.options, reserveTokens: N + 512 });
          forks.push(f);
          members.push(f);
          if (m.commit) await f.commit();
        }
      } finally {
        if (useGpu) setKernel("pin", PinnedKv.AUTO);
      }
      const setup = (performance.now() - tf) / 1000;
      console.log(
        `  ${m.name} ${N} B=${B}: ${forks.length} fork(s)${m.commit ? " + index build" : ""} in ` +
          `${setup.toFixed(1)} s`,
      );
      const V = cfg.vocab_size;
      const logits = new Float32Array(B * V);
      const teach = tokens(512, 7 * N + B, V);
      let k = 0;
      const step = async () => {
        const t = new Int32Array(B);
        for (let i = 0; i < B; i++) t[i] = teach[(k + i) % teach.length];
        k++;
        const t0 = performance.now();
        await decodeStep(engine, members, t, logits);
        return performance.now() - t0;
      };
      // Warm-up (also activates the sessions: uploads their GPU-resident KV).
      const first = await step();
      const w2 = await step();
      const per = Math.min(first, w2);
      const budgetMs = useGpu ? 2500 : 800;
      const steps = Math.max(3, Math.min(32, Math.floor(budgetMs / Math.max(per, 1e-3))));
      const infos0 = members.map((f) => f.info());
      if (useGpu) decodeProfile(true);
      const times: number[] = [];
      for (let i = 0; i < steps; i++) {
        if (i >= 3 && elapsed() > o.timeLimit + 15) break; // the run's deadline is near
        times.push(await step());
      }
      const infos1 = members.map((f) => f.info());
      const stages = useGpu ? stagesOf(decodeProfile(true), B * cfg.n_heads, cfg.n_kv_heads) : null;
      let att = 0, off = 0;
      for (let i = 0; i < B; i++) {
        att += infos1[i].keysAttended - infos0[i].keysAttended;
        off += infos1[i].keysOffloaded - infos0[i].keysOffloaded;
      }
      const ms = median(times);
      const ctx = N + k;
      const kvTok = kvBytesPerToken(cfg);
      const weights = matrixParams(cfg) * 2;
      let floorMs: number, what: string;
      const keysFraction = off > 0 ? att / off : null;
      if (m.name.startsWith("dense-gpu")) {
        floorMs = (weights + B * ctx * kvTok) / FLOOR.hbm * 1e3;
        what = "weights + KV from HBM";
      } else if (m.name === "dense-host") {
        floorMs = Math.max(B * ctx * kvTok / FLOOR.pcie, weights / FLOOR.hbm) * 1e3;
        what = "KV over PCIe";
      } else {
        // Sparse layers: the sampled keys' K and V rows gathered on the CPU.
        const dl = 2 / cfg.n_layers;
        const gathered = (keysFraction ?? 0.02) * B * ctx * kvTok * (1 - dl) / 4;
        floorMs = Math.max(gathered / FLOOR.gather, weights / FLOOR.hbm) * 1e3;
        what = "sampled rows gathered on the CPU";
      }
      if (!useGpu) floorMs = NaN;
      const i0 = infos1[members.length - 1];
      return {
        budget: bname,
        context: N,
        method: useGpu ? m.name : m.name.replace("-gpu", ""),
        batch: B,
        msPerToken: ms,
        tokensPerSecond: B / (ms / 1e3),
        steps: times.length,
        setupSeconds: setup,
        floorMs: Number.isFinite(floorMs) ? floorMs : null,
        floorWhat: what,
        keysFraction,
        hostKvBytesPerToken: Number(i0.hostKvBytes) / Math.max(1, i0.nTokens),
        hostIndexBytesPerToken: Number(i0.hostIndexBytes) / Math.max(1, i0.nTokens),
        gpuPeakGiB: Number(engine.info().gpuBytesPeak) / GiB,
        stages,
        note: "",
      };
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      // A method whose KV cannot live on the GPU under the budget: say so plainly.
      if (/GPU memory budget is exceeded/.test(msg)) {
        const kv = B * N * kvBytesPerToken(cfg) / GiB;
        return empty(
          `does not fit: ${kv.toFixed(1)} GiB of KV on the GPU beside ` +
            `${
              (matrixParams(cfg) * 2 / GiB).toFixed(1)
            } GiB of weights exceeds the ${bname} budget`,
        );
      }
      return empty(msg.slice(0, 160));
    } finally {
      for (const f of forks) await f.close();
      if (useBase) await base.truncate(N);
      if (useGpu) setKernel("kv", KvPlacement.AUTO);
      if (useGpu) setKernel("graphs", Graphs.AUTO);
      if (useGpu) setKernel("offload", GpuShare.AUTO);
      if (useGpu) setKernel("qcodes", QueryCodes.AUTO);
      if (useGpu) setKernel("retrieval", Retrieval.AUTO);
    }
  }

  // ------------------------------------------------------------
  // report: the full table, then targets and notes, then a compact table last
  const pad = (s: string | number, n: number) => String(s).padStart(n);
  const fx = (x: number | null, d = 1) => (x === null || !Number.isFinite(x) ? "-" : x.toFixed(d));
  console.log("\nprefill");
  console.log("budget    context   seconds    tok/s  floor s  GPU peak GiB");
  for (const p of prefills) {
    console.log(
      `${p.budget.padEnd(8)} ${pad(p.context, 8)} ${pad(fx(p.seconds, 2), 9)} ${
        pad(fx(p.tokensPerSecond, 0), 8)
      } ` +
        `${pad(fx(p.floorSeconds, 2), 8)} ${pad(fx(p.gpuPeakGiB, 1), 13)}`,
    );
  }
  console.log("\ndecode");
  console.log(
    "budget    context  method       B   ms/tok    tok/s  floor ms  %floor  keys%  KV B/tok  idx B/tok  GPU GiB  setup s  note",
  );
  const pct = (d: DecodeRow) =>
    d.msPerToken && d.floorMs ? (100 * d.floorMs / d.msPerToken).toFixed(0) + "%" : "-";
  for (const d of decodes) {
    console.log(
      `${d.budget.padEnd(8)} ${pad(d.context, 8)}  ${d.method.padEnd(10)} ${pad(d.batch, 3)} ` +
        `${pad(fx(d.msPerToken, 2), 8)} ${pad(fx(d.tokensPerSecond, 1), 8)} ${
          pad(fx(d.floorMs, 2), 9)
        } ` +
        `${pad(pct(d), 7)} ${
          pad(d.keysFraction === null ? "-" : (100 * d.keysFraction).toFixed(2), 6)
        } ` +
        `${pad(fx(d.hostKvBytesPerToken, 0), 9)} ${pad(fx(d.hostIndexBytesPerToken, 0), 10)} ` +
        `${pad(fx(d.gpuPeakGiB, 1), 8)} ${pad(fx(d.setupSeconds, 1), 8)}  ${d.note}`,
    );
  }
  // Targets of issue 4, from rows that ran ("not measured" otherwise).
  const find = (b: string, n: number, m: string, B: number) =>
    decodes.find((d) =>
      d.budget === b && d.context === n && d.method === m && d.batch === B && d.msPerToken
    );
  const lastCtx = o.contexts[o.contexts.length - 1];
  const targets: string[] = [];
  const nm = (what: string) => `${what}: not measured`;
  if (useGpu) {
    const mp1 = find("none", lastCtx, "magicpig", 1);
    targets.push(
      mp1?.msPerToken
        ? `magicpig ${lastCtx} B=1: ${mp1.msPerToken.toFixed(1)} ms/token (target <= 25)`
        : nm(`magicpig ${lastCtx} B=1 (target <= 25 ms/token)`),
    );
    // The short-context target: the --short-context row, else the shortest context's.
    const shortN = o.shortContext > 0 ? o.shortContext : o.contexts[0];
    const d1 = find("none", shortN, "dense-gpu", 1);
    const d8 = shortN === o.contexts[0] ? null : find("none", o.contexts[0], "dense-gpu", 1);
    const also = d8?.msPerToken ? `; ${o.contexts[0]}: ${d8.msPerToken.toFixed(2)} ms/token` : "";
    targets.push(
      d1?.msPerToken
        ? `dense-gpu ${shortN} B=1: ${d1.msPerToken.toFixed(2)} ms/token (target <= 4.5)${also}`
        : nm(`dense-gpu ${shortN} B=1 (target <= 4.5 ms/token)`),
    );
    const pf = prefills.find((p) => p.budget === "none" && p.context === lastCtx);
    targets.push(
      pf
        ? `prefill ${lastCtx}: ${pf.seconds.toFixed(2)} s (target <= 6)`
        : nm(`prefill ${lastCtx} (target <= 6 s)`),
    );
    const bname = budgetName(o.budget);
    const best = (m: string) => {
      const rows = decodes.filter((d) =>
        d.budget === bname && d.context === lastCtx && d.method === m && d.tokensPerSecond
      );
      if (rows.length === 0) return null;
      return rows.reduce((a, b) => (b.tokensPerSecond! > a.tokensPerSecond! ? b : a));
    };
    const bm = best("magicpig"), bd = best("dense-host");
    if (!o.budgetPass) {
      targets.push(nm(`${bname} ${lastCtx} magicpig vs dense-host (no budget pass)`));
    } else if (bm && bd) {
      const ratio = bm.tokensPerSecond! / bd.tokensPerSecond!;
      targets.push(
        `${bname} ${lastCtx}: magicpig ${bm.tokensPerSecond!.toFixed(1)} tok/s (B=${bm.batch}) ` +
          `vs dense-host ${bd.tokensPerSecond!.toFixed(1)} tok/s (B=${bd.batch}) = ` +
          `${ratio.toFixed(1)}x (target >= 8x)`,
      );
    } else {
      targets.push(
        nm(
          `${bname} ${lastCtx} magicpig vs dense-host (target >= 8x; ${
            [bm ? "" : "magicpig", bd ? "" : "dense-host"].filter(Boolean).join(" and ")
          } did not run)`,
        ),
      );
    }
  }
  // Compact table last: one line per decode row that ran or was skipped with a reason.
  console.log("\nsummary (ms/token, tok/s, % of floor; setup = forks + index builds)");
  for (const p of prefills) {
    console.log(`prefill  ${p.budget.padEnd(5)} ${pad(p.context, 6)}  ${fx(p.seconds, 2)} s`);
  }
  for (const d of decodes) {
    const head = `${d.budget.padEnd(5)} ${pad(d.context, 6)} ${d.method.padEnd(10)} B=${
      String(d.batch).padEnd(2)
    }`;
    console.log(
      d.msPerToken === null
        ? `decode   ${head} ${d.note.slice(0, 70)}`
        : `decode   ${head} ${pad(fx(d.msPerToken, 2), 8)} ms ${
          pad(fx(d.tokensPerSecond, 1), 7)
        } tok/s ${pad(pct(d), 5)}  setup ${fx(d.setupSeconds, 1)} s${
          d.keysFraction === null ? "" : `  keys ${(100 * d.keysFraction).toFixed(2)}%`
        }`,
    );
  }
  if (targets.length) console.log("\ntargets\n" + targets.map((t) => "  " + t).join("\n"));
  for (const n of notes) console.log(`note: ${n}`);
  const result = {
    device,
    gpu: useGpu,
    model: useGpu ? "Llama-3.1-8B shape, random bf16 weights" : "small CPU configuration",
    config: cfg,
    floors: FLOOR,
    prefill: prefills,
    decode: decodes,
    targets,
    notes,
    seconds: elapsed(),
  };
  if (o.out) await Deno.writeTextFile(o.out, JSON.stringify(result, null, 1));
  console.log(`bench done in ${elapsed().toFixed(0)} s${o.out ? `, JSON in ${o.out}` : ""}`);
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(e instanceof Error ? e.message : String(e));
    Deno.exit(1);
  }
}
