/**
 * Shared test helpers: where the outside model files are, seeded random inputs, and
 * float comparisons.
 *
 * @module
 */

/**
 * `../shared/models` next to the repository (or `$MAGICPIG_SHARED_MODELS`, e.g. a copy
 * carried to the GPU server), or null when it is absent.
 */
export const sharedModels: string | null = (() => {
  const p = Deno.env.get("MAGICPIG_SHARED_MODELS") ||
    new URL("../../shared/models", import.meta.url).pathname;
  try {
    Deno.statSync(p);
    return p;
  } catch {
    return null;
  }
})();

/** Why model-file tests skip, printed once per test file that needs them. */
export function skipReason(what: string): string | null {
  if (sharedModels) return null;
  const msg = `skipping ${what}: ../shared/models is not present next to the repository`;
  console.warn(msg);
  return msg;
}

/** A seeded PRNG (mulberry32) for reproducible test inputs. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n standard-normal values from a seeded PRNG (Box–Muller). */
export function randn(n: number, seed: number, scale = 1): Float32Array<ArrayBuffer> {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u1 = Math.max(r(), 1e-12);
    const u2 = r();
    out[i] = scale * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
  return out;
}

/** ‖a − b‖ / ‖b‖ (b is the reference); NaN anywhere gives Infinity. */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  if (!Number.isFinite(num)) return Infinity;
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}

/** max |a − b|. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = d; // NaN propagates
  }
  return m;
}

// ------------------------------------------------------------
// 16-bit float formats (bit patterns in Uint16Array), for native tests

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** float -> bf16 bits, round to nearest even (NaN stays NaN). */
export function toBf16(x: ArrayLike<number>): Uint16Array<ArrayBuffer> {
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    f32buf[0] = x[i];
    const u = u32buf[0];
    if ((u & 0x7fffffff) > 0x7f800000) out[i] = (u >>> 16) | 0x40;
    else out[i] = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return out;
}

/** bf16 bits -> float. */
export function fromBf16(h: ArrayLike<number>): Float32Array<ArrayBuffer> {
  const out = new Float32Array(h.length);
  for (let i = 0; i < h.length; i++) {
    u32buf[0] = h[i] << 16;
    out[i] = f32buf[0];
  }
  return out;
}

/** float -> f16 bits (round to nearest even, via the platform's Float16Array when present). */
export function toF16(x: ArrayLike<number>): Uint16Array<ArrayBuffer> {
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
    const a = Math.abs(v);
    if (Number.isNaN(v)) out[i] = 0x7e00;
    else if (a >= 65520) out[i] = sign | 0x7c00;
    else if (a < 2 ** -24 / 2) out[i] = sign;
    else {
      let e = Math.floor(Math.log2(a));
      if (2 ** e > a) e--;
      if (2 ** (e + 1) <= a) e++;
      if (e < -14) {
        const m = roundEven(a / 2 ** -24);
        out[i] = sign | m; // m may reach 1024 = the smallest normal, which is the right bits
      } else {
        let m = roundEven((a / 2 ** e - 1) * 1024);
        if (m === 1024) {
          m = 0;
          e++;
        }
        out[i] = e + 15 >= 31 ? sign | 0x7c00 : sign | ((e + 15) << 10) | m;
      }
    }
  }
  return out;
}

/** f16 bits -> float. */
export function fromF16(h: ArrayLike<number>): Float32Array<ArrayBuffer> {
  const out = new Float32Array(h.length);
  for (let i = 0; i < h.length; i++) {
    const sign = h[i] & 0x8000 ? -1 : 1;
    const e = (h[i] >>> 10) & 0x1f;
    const m = h[i] & 0x3ff;
    if (e === 0) out[i] = sign * m * 2 ** -24;
    else if (e === 31) out[i] = m ? NaN : sign * Infinity;
    else out[i] = sign * (1 + m / 1024) * 2 ** (e - 15);
  }
  return out;
}

function roundEven(x: number): number {
  const f = Math.floor(x);
  const r = x - f;
  if (r > 0.5) return f + 1;
  if (r < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}
