/**
 * The CUDA backend's own entry points (magicpig.h, section "CUDA backend"): forcing a
 * kernel variant for the parity tests and benchmarks, token sampling on the GPU, and a
 * description of the device. Every call throws a `no_device` {@link MagicpigError} where
 * no GPU is usable.
 *
 * @example
 * ```ts
 * import { describeGpu, MatmulKernel, setKernel } from "./gpu.ts";
 * console.log(describeGpu());
 * setKernel("matmul", MatmulKernel.SKINNY);
 * ```
 *
 * @module
 */
import { lib } from "./lib.ts";
import { cstr, errorBuffer, unwrap } from "./native.ts";
import * as L from "./layouts.ts";

/** Variants of op "matmul" for {@link setKernel}. */
export const MatmulKernel = { AUTO: 0, CUBLAS: 1, SKINNY: 2, SIMPLE: 3, GEMV: 4 } as const;
/** Variants of op "attention" for {@link setKernel}. */
export const AttentionKernel = {
  AUTO: 0,
  FLASH: 1,
  DECODE: 2,
  GENERIC: 3,
  /** Hopper wgmma kernel (sm_90a build on an sm_90 device, head_dim 128). */
  WGMMA: 4,
  /** Tuned mma.sync flash kernel (32 rows per warp, the GQA group's heads per block). */
  FLASH2: 5,
} as const;

/** Variants of op "kv" (decode KV placement) for {@link setKernel}. */
export const KvPlacement = { AUTO: 0, RESIDENT: 1, STREAMED: 2 } as const;

/** Variants of op "pin" (sessions' host KV in page-locked memory) for {@link setKernel}. */
export const PinnedKv = { AUTO: 0, ON: 1, OFF: 2 } as const;

/** Variants of op "graphs" (CUDA graphs for decode steps) for {@link setKernel}. */
export const Graphs = { AUTO: 0, ON: 1, OFF: 2 } as const;

/**
 * Variants of op "lsh" (where MAGICPIG index builds hash the keys at commit) for
 * {@link setKernel}: automatic = on the GPU of a CUDA engine for layers of >= 1024 new tokens
 * (CPU on failure); GPU whatever the size (a failure fails the commit); CPU; CPU through the
 * GPU's precomputed-codes path (tests that path without a GPU); as automatic, but a layer's
 * first build only hashes on the GPU and sorts on the CPU (in AUTO and GPU the GPU also
 * computes its mean key and sorted blocks when K <= 12).
 */
export const LshHashing = { AUTO: 0, GPU: 1, CPU: 2, CPU_CODES: 3, GPU_CODES: 4 } as const;

/**
 * Variants of op "offload" (split decode's GPU share of MAGICPIG sampled attention: the
 * GPU gathers the K/V rows of some KV heads from mapped host memory while the CPU attends
 * the others) for {@link setKernel}: automatic = tuned per batch size after each step from
 * how late or early the GPU's share ended against the CPU's (half at first); none; all; a
 * quarter; three quarters; half.
 */
export const GpuShare = {
  AUTO: 0,
  NONE: 1,
  ALL: 2,
  QUARTER: 3,
  THREE_QUARTERS: 4,
  HALF: 5,
} as const;

/**
 * Variants of op "qcodes" (split decode's MAGICPIG query codes) for {@link setKernel}:
 * automatic = hashed on the GPU beside q (bit for bit the CPU's codes); GPU; CPU.
 */
export const QueryCodes = { AUTO: 0, GPU: 1, CPU: 2 } as const;

/**
 * Variants of op "retrieval" (where the samples of split decode's GPU share are retrieved)
 * for {@link setKernel}: automatic = on the GPU, which counts collisions in the index's
 * page-locked blocks in place and starts at once (the CPU does those heads' unsorted tail),
 * where every offloaded session's blocks are page-locked and they index >= 32768 tokens
 * together (below that its fixed PCIe latency is longer than the CPU's part), else on the
 * CPU; GPU (also below that size); CPU (each KV head's sample handed to the GPU as it
 * completes).
 */
export const Retrieval = { AUTO: 0, GPU: 1, CPU: 2 } as const;

/** Forces a kernel variant of an op family for later CUDA work (0: automatic). */
export function setKernel(
  op:
    | "matmul"
    | "attention"
    | "kv"
    | "graphs"
    | "pin"
    | "lsh"
    | "offload"
    | "qcodes"
    | "retrieval",
  variant: number,
): void {
  const err = errorBuffer();
  unwrap(
    lib().mp_gpu_set_kernel(cstr(op), variant, err, BigInt(err.length)),
    err,
    `Cannot select kernel ${variant} for "${op}"`,
  );
}

/** Decode stage timers (host ms summed over decode calls since the last reset). */
export interface DecodeProfile {
  /** Decode calls. */
  steps: number;
  /** Whole calls. */
  totalMs: number;
  /** Placement, split-decode windows and tables, before the first launch. */
  setupMs: number;
  /** Split layers: waiting for the GPU to deliver q (the GPU segment between CPU parts). */
  waitQMs: number;
  /** Split layers: the CPU's retrieval + sampled attention. */
  cpuMs: number;
  /** Waiting for the GPU after the last launch. */
  tailMs: number;
  /** Host rows written back. */
  postMs: number;
  /** Split layer-calls (layers × steps). */
  splitLayers: number;
  /** Query heads whose sample the GPU attended (split decode's GPU share). */
  gpuJobs: number;
  /** Split layers: from the CPU part's start until every query head's sample existed. */
  phaseAMs: number;
  /** Split layers: from the CPU part's start until the GPU share was launched. */
  handoffMs: number;
  /** Split layers: how long the GPU share ran past the CPU part's end (GPU clock). */
  shareLateMs: number;
  /** Split layers: how long before the CPU part's end the GPU share was done (GPU clock). */
  shareSlackMs: number;
  /** Split layer-calls whose GPU share ended after the CPU part. */
  shareLateLayers: number;
  /** Split layers: from the CPU part's start until the retrieval tasks start. */
  prepareMs: number;
  /** Split layers: the longest single query head's retrieval. */
  headMaxMs: number;
  /** Split layers: every query head's retrieval, summed over heads. */
  headSumMs: number;
  /** Split layers: bucket entries scanned by retrieval. */
  entries: number;
  /** Split layer-calls whose MAGICPIG query codes the GPU computed. */
  qcodesGpu: number;
  /** Split layer-calls whose GPU share the GPU retrieved itself (op "retrieval"). */
  gpuRetrieval: number;
}

/** Reads (and with `reset`, clears) the CUDA backend's decode stage timers. */
export function decodeProfile(reset = false): DecodeProfile {
  const v = new Float64Array(20);
  lib().mp_decode_profile(v, v.length, reset ? 1 : 0);
  return {
    steps: v[0],
    totalMs: v[1],
    setupMs: v[2],
    waitQMs: v[3],
    cpuMs: v[4],
    tailMs: v[5],
    postMs: v[6],
    splitLayers: v[7],
    gpuJobs: v[8],
    phaseAMs: v[9],
    handoffMs: v[10],
    shareLateMs: v[11],
    shareSlackMs: v[12],
    shareLateLayers: v[13],
    prepareMs: v[14],
    headMaxMs: v[15],
    headSumMs: v[16],
    entries: v[17],
    qcodesGpu: v[18],
    gpuRetrieval: v[19],
  };
}

/** How {@link gpuSample} picks tokens. */
export interface GpuSamplingParams {
  /** <= 0: greedy (first maximum). */
  temperature: number;
  /** 0: off. */
  topK: number;
  /** 1: off. */
  topP: number;
}

/**
 * Picks one token per row of `logits[n][vocab]` on the GPU; `u[i]` in [0, 1) is row i's
 * uniform draw (needed when temperature > 0).
 */
export function gpuSample(
  logits: Float32Array<ArrayBuffer>,
  n: number,
  vocab: number,
  params: GpuSamplingParams,
  u: Float32Array<ArrayBuffer> | null = null,
): Int32Array<ArrayBuffer> {
  const p = L.samplingParams.encode({
    size: BigInt(L.samplingParams.size),
    temperature: params.temperature,
    top_k: params.topK,
    top_p: params.topP,
    n_logprobs: 0,
  });
  const tokens = new Int32Array(n);
  const err = errorBuffer();
  unwrap(
    lib().mp_gpu_sample(logits, n, vocab, p, u, tokens, err, BigInt(err.length)),
    err,
    "Cannot sample on the GPU",
  );
  return tokens;
}

/** "NVIDIA H200, cc 9.0, 132 SMs, 139.8 GiB, L2 50 MB" */
export function describeGpu(): string {
  const out = new Uint8Array(256);
  const err = errorBuffer();
  unwrap(lib().mp_gpu_describe(out, BigInt(out.length), err, BigInt(err.length)), err, "GPU");
  const end = out.indexOf(0);
  return new TextDecoder().decode(out.subarray(0, end < 0 ? out.length : end));
}
