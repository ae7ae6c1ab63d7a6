/**
 * Plain-TypeScript float64 references for the native ops and the whole Llama forward pass.
 * Written straight from the definitions (no blocking, no tricks) so that the native CPU
 * kernels can be checked against them.
 *
 * @module
 */
import type { ModelConfig } from "../ffi/native.ts";

/** Rope parameters as in {@link ModelConfig}. */
export type RopeConfig = ModelConfig["rope"];

/** out[i][j] = w[j] · x[i][j] / sqrt(mean(x[i]²) + eps) */
export function rmsnormRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  n: number,
  dim: number,
  eps: number,
): Float64Array {
  const out = new Float64Array(n * dim);
  for (let i = 0; i < n; i++) {
    let ss = 0;
    for (let j = 0; j < dim; j++) ss += x[i * dim + j] ** 2;
    const r = 1 / Math.sqrt(ss / dim + eps);
    for (let j = 0; j < dim; j++) out[i * dim + j] = w[j] * x[i * dim + j] * r;
  }
  return out;
}

/** inv_freq with Llama-3 scaling, as Hugging Face's `_compute_llama3_parameters`. */
export function invFreqRef(rope: RopeConfig, headDim: number): number[] {
  const f: number[] = [];
  for (let i = 0; i < headDim / 2; i++) f.push(1 / rope.theta ** ((2 * i) / headDim));
  if (rope.scaling !== 1) return f;
  const lowWavelen = rope.original_max_position / rope.low_freq_factor;
  const highWavelen = rope.original_max_position / rope.high_freq_factor;
  return f.map((x) => {
    const wavelen = (2 * Math.PI) / x;
    if (wavelen < highWavelen) return x;
    if (wavelen > lowWavelen) return x / rope.factor;
    const s = (rope.original_max_position / wavelen - rope.low_freq_factor) /
      (rope.high_freq_factor - rope.low_freq_factor);
    return (1 - s) * (x / rope.factor) + s * x;
  });
}

/** RoPE on a copy of x[n][heads][d]; style 0 pairs (2i, 2i+1), style 1 pairs (i, i+d/2). */
export function ropeRef(
  x: ArrayLike<number>,
  n: number,
  heads: number,
  d: number,
  positions: ArrayLike<number>,
  rope: RopeConfig,
): Float64Array {
  const out = Float64Array.from(x);
  const f = invFreqRef(rope, d);
  for (let t = 0; t < n; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * d;
      for (let i = 0; i < d / 2; i++) {
        const a = positions[t] * f[i];
        const [p0, p1] = rope.style === 0 ? [2 * i, 2 * i + 1] : [i, i + d / 2];
        const x0 = x[base + p0], x1 = x[base + p1];
        out[base + p0] = x0 * Math.cos(a) - x1 * Math.sin(a);
        out[base + p1] = x0 * Math.sin(a) + x1 * Math.cos(a);
      }
    }
  }
  return out;
}

/** y[n][out] = x[n][in] · W[out][in]^T */
export function matmulRef(
  w: ArrayLike<number>,
  x: ArrayLike<number>,
  n: number,
  inDim: number,
  outDim: number,
): Float64Array {
  const y = new Float64Array(n * outDim);
  for (let t = 0; t < n; t++) {
    for (let o = 0; o < outDim; o++) {
      let s = 0;
      for (let i = 0; i < inDim; i++) s += w[o * inDim + i] * x[t * inDim + i];
      y[t * outDim + o] = s;
    }
  }
  return y;
}

/**
 * Causal GQA attention: q[n][H][d], k/v [T][Hkv][d]; query i attends keys
 * 0..min(qPos0 + i, T − 1). Returns out[n][H][d] and lse2[n][H].
 */
export function attentionRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  n: number,
  T: number,
  H: number,
  Hkv: number,
  d: number,
  qPos0: number,
): { out: Float64Array; lse2: Float64Array } {
  const out = new Float64Array(n * H * d);
  const lse2 = new Float64Array(n * H);
  const G = H / Hkv;
  const scale = 1 / Math.sqrt(d);
  for (let i = 0; i < n; i++) {
    const L = Math.min(qPos0 + i, T - 1) + 1;
    for (let h = 0; h < H; h++) {
      const hk = Math.floor(h / G);
      const s = new Float64Array(L);
      let m = -Infinity;
      for (let t = 0; t < L; t++) {
        let dot = 0;
        for (let j = 0; j < d; j++) dot += q[(i * H + h) * d + j] * k[(t * Hkv + hk) * d + j];
        s[t] = dot * scale;
        m = Math.max(m, s[t]);
      }
      let sum = 0;
      for (let t = 0; t < L; t++) sum += Math.exp(s[t] - m);
      for (let t = 0; t < L; t++) {
        const p = Math.exp(s[t] - m) / sum;
        for (let j = 0; j < d; j++) out[(i * H + h) * d + j] += p * v[(t * Hkv + hk) * d + j];
      }
      lse2[i * H + h] = (m + Math.log(sum)) / Math.LN2;
    }
  }
  return { out, lse2 };
}

/** silu(g) · u */
export function swigluRef(g: ArrayLike<number>, u: ArrayLike<number>): Float64Array {
  const out = new Float64Array(g.length);
  for (let i = 0; i < g.length; i++) out[i] = (g[i] / (1 + Math.exp(-g[i]))) * u[i];
  return out;
}

// ------------------------------------------------------------
// the whole model

/** Weights of a Llama model as the engine was given them (F32 values, [out][in] rows). */
export interface LlamaWeights {
  tokenEmbd: Float32Array;
  outputNorm: Float32Array;
  /** null when the head is tied to the embedding. */
  output: Float32Array | null;
  layers: {
    attnNorm: Float32Array;
    wq: Float32Array;
    wk: Float32Array;
    wv: Float32Array;
    wo: Float32Array;
    ffnNorm: Float32Array;
    wGate: Float32Array;
    wDown: Float32Array;
    wUp: Float32Array;
  }[];
}

/** Logits [vocab] at every position of `tokens`, in float64. */
export function llamaForwardRef(
  c: ModelConfig,
  w: LlamaWeights,
  tokens: readonly number[],
): Float64Array[] {
  const n = tokens.length;
  const { dim, n_heads: H, n_kv_heads: Hkv, head_dim: d, ffn_dim: F, vocab_size: V } = c;
  let x = new Float64Array(n * dim);
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < dim; j++) x[t * dim + j] = w.tokenEmbd[tokens[t] * dim + j];
  }
  const positions = tokens.map((_, i) => i);
  for (const L of w.layers) {
    const xb = rmsnormRef(x, L.attnNorm, n, dim, c.rms_eps);
    const q = ropeRef(matmulRef(L.wq, xb, n, dim, H * d), n, H, d, positions, c.rope);
    const k = ropeRef(matmulRef(L.wk, xb, n, dim, Hkv * d), n, Hkv, d, positions, c.rope);
    const v = matmulRef(L.wv, xb, n, dim, Hkv * d);
    const att = attentionRef(q, k, v, n, n, H, Hkv, d, 0).out;
    const o = matmulRef(L.wo, att, n, H * d, dim);
    x = x.map((xi, i) => xi + o[i]);
    const xb2 = rmsnormRef(x, L.ffnNorm, n, dim, c.rms_eps);
    const g = matmulRef(L.wGate, xb2, n, dim, F);
    const u = matmulRef(L.wUp, xb2, n, dim, F);
    const down = matmulRef(L.wDown, swigluRef(g, u), n, F, dim);
    x = x.map((xi, i) => xi + down[i]);
  }
  const xf = rmsnormRef(x, w.outputNorm, n, dim, c.rms_eps);
  const logits = matmulRef(w.output ?? w.tokenEmbd, xf, n, dim, V);
  return Array.from({ length: n }, (_, t) => logits.slice(t * V, (t + 1) * V));
}
