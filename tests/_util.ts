/**
 * Shared test helpers: where the outside model files are, seeded random inputs, and
 * float comparisons.
 *
 * @module
 */

/** `../shared/models` next to the repository, or null when it is absent. */
export const sharedModels: string | null = (() => {
  const p = new URL("../../shared/models", import.meta.url).pathname;
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
