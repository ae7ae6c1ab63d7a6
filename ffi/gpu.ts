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
export const MatmulKernel = { AUTO: 0, CUBLAS: 1, SKINNY: 2, SIMPLE: 3 } as const;
/** Variants of op "attention" for {@link setKernel}. */
export const AttentionKernel = { AUTO: 0, FLASH: 1, DECODE: 2, GENERIC: 3, WGMMA: 4 } as const;

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
 * GPU's precomputed-codes path (tests that path without a GPU).
 */
export const LshHashing = { AUTO: 0, GPU: 1, CPU: 2, CPU_CODES: 3 } as const;

/** Forces a kernel variant of an op family for later CUDA work (0: automatic). */
export function setKernel(
  op: "matmul" | "attention" | "kv" | "graphs" | "pin" | "lsh",
  variant: number,
): void {
  const err = errorBuffer();
  unwrap(
    lib().mp_gpu_set_kernel(cstr(op), variant, err, BigInt(err.length)),
    err,
    `Cannot select kernel ${variant} for "${op}"`,
  );
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
