/**
 * Typed wrappers over the single ops of libmagicpig (`mp_op_*`): each runs one layer
 * operation on the CPU or CUDA backend over host arrays and returns fresh output arrays.
 * Tests compare them with TypeScript references, and GPU parity tests compare the two
 * backends.
 *
 * @example
 * ```ts
 * import { rmsnorm } from "./ops.ts";
 * const y = rmsnorm(new Float32Array([1, 2, 3, 4]), new Float32Array(4).fill(1), 1, 4, 1e-5);
 * ```
 *
 * @module
 */
import { lib } from "./lib.ts";
import { Backend, DType, errorBuffer, unwrap } from "./native.ts";
import * as L from "./layouts.ts";

/** MP_BACKEND_CPU or MP_BACKEND_CUDA. */
export type OpBackend = typeof Backend.CPU | typeof Backend.CUDA;

/** RoPE parameters (mp_rope_params). */
export interface RopeParams {
  theta: number;
  /** {@link RopeStyle}: 0 interleaved pairs (GGUF), 1 rotate-half (Hugging Face). */
  style: number;
  /** {@link RopeScaling}: 0 none, 1 llama3. */
  scaling: number;
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPosition: number;
}

/** A weight or table: F32 values, or F16/BF16 bit patterns. */
export type HostTensor = Float32Array<ArrayBuffer> | Uint16Array<ArrayBuffer>;

function dtypeOf(t: HostTensor, dtype?: number): number {
  if (t instanceof Float32Array) return DType.F32;
  if (dtype === undefined || dtype === DType.F32) {
    throw new TypeError("A Uint16Array tensor needs dtype F16 or BF16");
  }
  return dtype;
}

function call(status: number, err: Uint8Array, what: string): void {
  unwrap(status, err, `Cannot run ${what}`);
}

/** out[n][dim] = table[tokens[i]]; `dtype` for Uint16Array tables (F16/BF16). */
export function embedding(
  table: HostTensor,
  vocab: number,
  dim: number,
  tokens: Int32Array<ArrayBuffer>,
  options: { dtype?: number; backend?: OpBackend } = {},
): Float32Array<ArrayBuffer> {
  const out = new Float32Array(tokens.length * dim);
  const err = errorBuffer();
  call(
    lib().mp_op_embedding(
      options.backend ?? Backend.CPU,
      dtypeOf(table, options.dtype),
      table,
      vocab,
      dim,
      tokens,
      tokens.length,
      out,
      err,
      BigInt(err.length),
    ),
    err,
    "embedding",
  );
  return out;
}

/** out[n][dim] = x / sqrt(mean(x²) + eps) * w */
export function rmsnorm(
  x: Float32Array<ArrayBuffer>,
  w: Float32Array<ArrayBuffer>,
  n: number,
  dim: number,
  eps: number,
  backend: OpBackend = Backend.CPU,
): Float32Array<ArrayBuffer> {
  const out = new Float32Array(n * dim);
  const err = errorBuffer();
  call(
    lib().mp_op_rmsnorm(backend, x, w, n, dim, eps, out, err, BigInt(err.length)),
    err,
    "rmsnorm",
  );
  return out;
}

/** RoPE on a copy of x[n][heads][headDim], token i at positions[i]. */
export function rope(
  x: Float32Array<ArrayBuffer>,
  n: number,
  heads: number,
  headDim: number,
  positions: Int32Array<ArrayBuffer>,
  params: RopeParams,
  backend: OpBackend = Backend.CPU,
): Float32Array<ArrayBuffer> {
  const y = x.slice();
  const p = L.ropeParams.encode({
    theta: params.theta,
    style: params.style,
    scaling: params.scaling,
    factor: params.factor,
    low_freq_factor: params.lowFreqFactor,
    high_freq_factor: params.highFreqFactor,
    original_max_position: params.originalMaxPosition,
  });
  const err = errorBuffer();
  call(
    lib().mp_op_rope(backend, y, n, heads, headDim, positions, p, err, BigInt(err.length)),
    err,
    "rope",
  );
  return y;
}

/** y[n][out] = x[n][in] · W[out][in]^T; `wdtype` for Uint16Array weights (F16/BF16). */
export function matmul(
  w: HostTensor,
  x: Float32Array<ArrayBuffer>,
  n: number,
  inDim: number,
  outDim: number,
  options: { wdtype?: number; backend?: OpBackend } = {},
): Float32Array<ArrayBuffer> {
  const y = new Float32Array(n * outDim);
  const err = errorBuffer();
  call(
    lib().mp_op_matmul(
      options.backend ?? Backend.CPU,
      dtypeOf(w, options.wdtype),
      w,
      x,
      n,
      inDim,
      outDim,
      y,
      err,
      BigInt(err.length),
    ),
    err,
    "matmul",
  );
  return y;
}

/** Inputs of {@link attention}: q[n][H][d]; k, v [T][Hkv][d] (F32, or BF16 bits). */
export interface AttentionInputs {
  q: Float32Array<ArrayBuffer>;
  k: HostTensor;
  v: HostTensor;
  n: number;
  T: number;
  H: number;
  Hkv: number;
  d: number;
  /** Position of query 0; query i attends keys 0..qPos0 + i. */
  qPos0: number;
  /** dtype of Uint16Array k/v (BF16 or F16). */
  kvDtype?: number;
}

/** Causal GQA attention: out[n][H][d] and lse2[n][H] (base-2 log-sum-exp of the scores). */
export function attention(
  a: AttentionInputs,
  backend: OpBackend = Backend.CPU,
): { out: Float32Array<ArrayBuffer>; lse2: Float32Array<ArrayBuffer> } {
  const out = new Float32Array(a.n * a.H * a.d);
  const lse2 = new Float32Array(a.n * a.H);
  const err = errorBuffer();
  const dt = dtypeOf(a.k, a.kvDtype);
  if (dtypeOf(a.v, a.kvDtype) !== dt) throw new TypeError("k and v must have the same dtype");
  call(
    lib().mp_op_attention(
      backend,
      dt,
      a.q,
      a.k,
      a.v,
      a.n,
      a.T,
      a.H,
      a.Hkv,
      a.d,
      a.qPos0,
      out,
      lse2,
      err,
      BigInt(err.length),
    ),
    err,
    "attention",
  );
  return { out, lse2 };
}

/** out = silu(gate) * up */
export function swiglu(
  gate: Float32Array<ArrayBuffer>,
  up: Float32Array<ArrayBuffer>,
  backend: OpBackend = Backend.CPU,
): Float32Array<ArrayBuffer> {
  const out = new Float32Array(gate.length);
  const err = errorBuffer();
  call(
    lib().mp_op_swiglu(backend, gate, up, BigInt(gate.length), out, err, BigInt(err.length)),
    err,
    "swiglu",
  );
  return out;
}

/** Merges two partial attentions o1/o2 [n][d] by their base-2 log-sum-exps [n]. */
export function merge(
  o1: Float32Array<ArrayBuffer>,
  lse1: Float32Array<ArrayBuffer>,
  o2: Float32Array<ArrayBuffer>,
  lse2: Float32Array<ArrayBuffer>,
  n: number,
  d: number,
  backend: OpBackend = Backend.CPU,
): { out: Float32Array<ArrayBuffer>; lse: Float32Array<ArrayBuffer> } {
  const out = new Float32Array(n * d);
  const lse = new Float32Array(n);
  const err = errorBuffer();
  call(
    lib().mp_op_merge(backend, o1, lse1, o2, lse2, n, d, out, lse, err, BigInt(err.length)),
    err,
    "merge",
  );
  return { out, lse };
}
