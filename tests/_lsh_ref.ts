/**
 * Plain-TypeScript (float64) references for the MagicPIG oracle tests: the seeded
 * Gaussian stream of mp::Rng, SimHash codes and their fp16 packing, CSR tables, the
 * ≥ 2-collision retrieval rule, the closed form of u(θ), and attention sums.
 *
 * @module
 */

// ------------------------------------------------------------
// mp::Rng: splitmix64 seeding + xoshiro256**, Box–Muller normals

const M64 = (1n << 64n) - 1n;

function rotl(x: bigint, k: bigint): bigint {
  return ((x << k) | (x >> (64n - k))) & M64;
}

/** The same stream as mp::Rng (common.cpp). */
export class RefRng {
  s: bigint[];
  constructor(seed: bigint) {
    let x = seed & M64;
    this.s = [];
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b97f4a7c15n) & M64;
      let z = x;
      z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
      z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
      this.s.push(z ^ (z >> 31n));
    }
  }
  next(): bigint {
    const s = this.s;
    const result = (rotl((s[1] * 5n) & M64, 7n) * 9n) & M64;
    const t = (s[1] << 17n) & M64;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45n);
    return result;
  }
  uniform(): number {
    return Number(this.next() >> 11n) / 9007199254740992;
  }
  normal(): number {
    let u1 = this.uniform();
    const u2 = this.uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
}

// ------------------------------------------------------------
// bf16

/** f32 → bf16 bits, round to nearest even (as mp::f32_to_bf16). */
export function toBf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer)[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** bf16 bits → number. */
export function fromBf16(h: number): number {
  const u = new Uint32Array([h << 16]);
  return new Float32Array(u.buffer)[0];
}

/** A Float32Array converted to bf16 bits. */
export function bf16Array(a: ArrayLike<number>): Uint16Array<ArrayBuffer> {
  const out = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = toBf16(a[i]);
  return out;
}

/** bf16 bits back to numbers. */
export function bf16ToF32(a: Uint16Array): Float32Array<ArrayBuffer> {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = fromBf16(a[i]);
  return out;
}

// ------------------------------------------------------------
// SimHash

/**
 * Float64 projections x·R[:, c] of rows x[n][d] and their codes; `ambiguous[i·L + t]` is
 * set when some bit of (i, t) has |x·r| ≤ tol·‖x‖·‖r‖, i.e. a sign an fp32 kernel may
 * legitimately flip.
 */
export function refCodes(
  R: ArrayLike<number>,
  x: ArrayLike<number>,
  n: number,
  d: number,
  K: number,
  L: number,
  tol = 0,
): { codes: Uint16Array; ambiguous: Uint8Array; proj: Float64Array } {
  const cols = K * L;
  const rnorm = new Float64Array(cols);
  for (let c = 0; c < cols; c++) {
    let s = 0;
    for (let k = 0; k < d; k++) s += R[k * cols + c] ** 2;
    rnorm[c] = Math.sqrt(s);
  }
  const codes = new Uint16Array(n * L);
  const ambiguous = new Uint8Array(n * L);
  const proj = new Float64Array(n * cols);
  for (let i = 0; i < n; i++) {
    let xn = 0;
    for (let k = 0; k < d; k++) xn += x[i * d + k] ** 2;
    xn = Math.sqrt(xn);
    for (let t = 0; t < L; t++) {
      let code = 0;
      for (let j = 0; j < K; j++) {
        const c = t * K + j;
        let s = 0;
        for (let k = 0; k < d; k++) s += x[i * d + k] * R[k * cols + c];
        proj[i * cols + c] = s;
        if (s > 0) code |= 1 << j;
        if (Math.abs(s) <= tol * xn * rnorm[c]) ambiguous[i * L + t] = 1;
      }
      codes[i * L + t] = code;
    }
  }
  return { codes, ambiguous, proj };
}

/**
 * The reference implementation's packing (magicpig.md §4): bits cast to fp16, multiplied
 * by the fp16 powers of two and summed in fp16, then cast to an integer. Exact for K ≤ 11.
 */
export function fp16Pack(proj: Float64Array, n: number, K: number, L: number): Uint16Array {
  const out = new Uint16Array(n * L);
  for (let i = 0; i < n; i++) {
    for (let t = 0; t < L; t++) {
      let acc = 0;
      for (let j = 0; j < K; j++) {
        const bit = proj[i * K * L + t * K + j] > 0 ? 1 : 0;
        acc = Math.f16round(acc + Math.f16round(bit * Math.f16round(2 ** j)));
      }
      out[i * L + t] = Math.trunc(acc) & 0xffff;
    }
  }
  return out;
}

/** CSR of one table by counting sort (stable): offsets[2^K + 1], indices[n]. */
export function refCsr(
  codes: Uint16Array,
  n: number,
  L: number,
  t: number,
  K: number,
): { offsets: Uint32Array; indices: Int32Array } {
  const NB = 1 << K;
  const offsets = new Uint32Array(NB + 1);
  for (let i = 0; i < n; i++) offsets[codes[i * L + t] + 1]++;
  for (let c = 0; c < NB; c++) offsets[c + 1] += offsets[c];
  const cur = offsets.slice(0, NB);
  const indices = new Int32Array(n);
  for (let i = 0; i < n; i++) indices[cur[codes[i * L + t]]++] = i;
  return { offsets, indices };
}

/** {i : #{t : code_t(i) = q_t} ≥ 2}, ascending. */
export function refRetrieve(
  codes: Uint16Array,
  n: number,
  L: number,
  q: ArrayLike<number>,
): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    let hits = 0;
    for (let t = 0; t < L; t++) if (codes[i * L + t] === q[t]) hits++;
    if (hits >= 2) out.push(i);
  }
  return out;
}

// ------------------------------------------------------------
// collision probability

/** p = (1 − acos(cos)/π)^K in float64. */
export function pCollide(cos: number, K: number): number {
  const c = Math.min(1, Math.max(-1, cos));
  return (1 - Math.acos(c) / Math.PI) ** K;
}

/** u = 1 − (1 − p)^L − L·p·(1 − p)^(L−1), the closed form in float64. */
export function uClosed(cos: number, K: number, L: number): number {
  const p = pCollide(cos, K);
  return 1 - (1 - p) ** L - L * p * (1 - p) ** (L - 1);
}

/** The second algebraic form: 1 − (1 − p)^(L−1)·(1 + (L − 1)·p). */
export function uClosedAlt(cos: number, K: number, L: number): number {
  const p = pCollide(cos, K);
  return 1 - (1 - p) ** (L - 1) * (1 + (L - 1) * p);
}

/**
 * u as P[Binomial(L, p) ≥ 2] summed term by term in float64: accurate in relative terms
 * also where the closed forms cancel (tiny u).
 */
export function uBinomial(cos: number, K: number, L: number): number {
  const p = pCollide(cos, K);
  if (p === 0) return 0;
  if (p === 1) return 1;
  // Σ_{j≥2} C(L,j) p^j (1−p)^(L−j), in log space
  const lp = Math.log(p), lq = Math.log1p(-p);
  let lc = 0; // log C(L, j)
  let sum = 0;
  for (let j = 1; j <= L; j++) {
    lc += Math.log((L - j + 1) / j);
    if (j >= 2) sum += Math.exp(lc + j * lp + (L - j) * lq);
  }
  return sum;
}

// ------------------------------------------------------------
// attention sums

/** Float64 dot product. */
export function dot(a: ArrayLike<number>, ao: number, b: ArrayLike<number>, bo: number, d: number) {
  let s = 0;
  for (let e = 0; e < d; e++) s += a[ao + e] * b[bo + e];
  return s;
}

/**
 * Softmax-weighted sum over `ids` with logits ell(i): out[d] and base-2 LSE, float64,
 * values V[(row0 + i)·d ..]. An empty set gives zeros and −∞.
 */
export function refAttend(
  ids: readonly number[],
  ell: (i: number) => number,
  V: ArrayLike<number>,
  row0: number,
  d: number,
): { out: Float64Array; lse2: number } {
  const out = new Float64Array(d);
  if (ids.length === 0) return { out, lse2: -Infinity };
  const ls = ids.map(ell);
  const m = Math.max(...ls);
  let l = 0;
  ids.forEach((i, j) => {
    const w = Math.exp(ls[j] - m);
    l += w;
    for (let e = 0; e < d; e++) out[e] += w * V[(row0 + i) * d + e];
  });
  for (let e = 0; e < d; e++) out[e] /= l;
  return { out, lse2: (m + Math.log(l)) / Math.LN2 };
}

/** Merge of two partial attentions by base-2 LSE (max-subtracted), float64. */
export function refMerge(
  o1: ArrayLike<number>,
  a: number,
  o2: ArrayLike<number>,
  b: number,
): { out: Float64Array; lse2: number } {
  const d = o1.length;
  const out = new Float64Array(d);
  const m = Math.max(a, b);
  if (m === -Infinity) return { out, lse2: -Infinity };
  const w1 = 2 ** (a - m), w2 = 2 ** (b - m);
  for (let e = 0; e < d; e++) out[e] = (w1 * o1[e] + w2 * o2[e]) / (w1 + w2);
  return { out, lse2: m + Math.log2(w1 + w2) };
}
