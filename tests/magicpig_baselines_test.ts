/**
 * The sparse-attention baselines MagicPIG is compared with (magicpig.md §14.2): TopK,
 * Quest and oracle sampling, against float64 references of their definitions; and the
 * argument checks of the MagicPIG entry points.
 */
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertLessOrEqual,
  assertThrows,
} from "./_std.ts";
import { randn } from "./_util.ts";
import { bf16Array, bf16ToF32, dot, refAttend } from "./_lsh_ref.ts";
import {
  attentionOracle,
  attentionQuest,
  attentionTopk,
  lshAttention,
  LshIndex,
  type RawKv,
} from "../ffi/lsh.ts";
import { DType, MagicpigError } from "../ffi/native.ts";

const hkv = 2, H = 6, d = 32, n = 2000, G = H / hkv;

function data(seed: number, dtype: number = DType.F32) {
  const keys = randn(hkv * n * d, seed);
  const values = randn(hkv * n * d, seed + 1);
  const q = randn(H * d, seed + 2, 0.6);
  const k64 = dtype === DType.F32 ? keys : bf16ToF32(bf16Array(keys));
  const v64 = dtype === DType.F32 ? values : bf16ToF32(bf16Array(values));
  const kv: RawKv = {
    dtype,
    keys: dtype === DType.F32 ? keys : bf16Array(keys),
    values: dtype === DType.F32 ? values : bf16Array(values),
    n,
    nKvHeads: hkv,
    headDim: d,
  };
  const score = (h: number, i: number) =>
    dot(q, h * d, k64, (Math.floor(h / G) * n + i) * d, d) / Math.sqrt(d);
  return { kv, q, k64, v64, score };
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const all = Array.from({ length: n }, (_, i) => i);

for (const dtype of [DType.F32, DType.BF16]) {
  const tag = dtype === DType.F32 ? "F32" : "BF16";

  Deno.test(`attentionTopk() attends exactly to the top ⌈budget·n⌉ scores (${tag})`, () => {
    const { kv, q, v64, score } = data(1, dtype);
    for (const budget of [1, 0.05, 0.0125]) {
      const got = attentionTopk(kv, q, H, budget);
      const k = Math.ceil(budget * n - 1e-9);
      for (let h = 0; h < H; h++) {
        const top = all.slice().sort((a, b) => score(h, b) - score(h, a)).slice(0, k);
        const want = refAttend(top, (i) => score(h, i), v64, Math.floor(h / G) * n, d);
        assertEquals(got.nnz[h], k);
        assertLessOrEqual(
          maxDiff(got.out.subarray(h * d, (h + 1) * d), want.out),
          1e-5,
          `budget ${budget}`,
        );
        assertAlmostEquals(got.lse2[h], want.lse2, 1e-5);
      }
    }
  });

  Deno.test(`attentionQuest() attends to the pages with the largest min/max bound (${tag})`, () => {
    const { kv, q, k64, v64, score } = data(2, dtype);
    const page = 16, pages = n / page;
    for (const budget of [1, 0.1]) {
      const got = attentionQuest(kv, q, H, budget, page);
      const kp = Math.ceil(budget * pages - 1e-9);
      for (let h = 0; h < H; h++) {
        const row0 = Math.floor(h / G) * n;
        const bound = (p: number) => {
          let b = 0;
          for (let e = 0; e < d; e++) {
            let lo = Infinity, hi = -Infinity;
            for (let i = p * page; i < (p + 1) * page; i++) {
              lo = Math.min(lo, k64[(row0 + i) * d + e]);
              hi = Math.max(hi, k64[(row0 + i) * d + e]);
            }
            b += Math.max(q[h * d + e] * lo, q[h * d + e] * hi);
          }
          return b;
        };
        const bounds = Array.from({ length: pages }, (_, p) => bound(p));
        // the bound holds for every key of its page
        for (let p = 0; p < pages; p += 17) {
          for (let i = p * page; i < (p + 1) * page; i++) {
            assert(score(h, i) * Math.sqrt(d) <= bounds[p] + 1e-9, "q·k ≤ page bound");
          }
        }
        const top = Array.from({ length: pages }, (_, p) => p).sort((a, b) => bounds[b] - bounds[a])
          .slice(0, kp).sort((a, b) => a - b);
        const ids = top.flatMap((p) => Array.from({ length: page }, (_, j) => p * page + j));
        const want = refAttend(ids, (i) => score(h, i), v64, row0, d);
        assertEquals(got.nnz[h], kp * page);
        assertLessOrEqual(
          maxDiff(got.out.subarray(h * d, (h + 1) * d), want.out),
          1e-5,
          `budget ${budget}`,
        );
        assertAlmostEquals(got.lse2[h], want.lse2, 1e-5);
      }
    }
  });

  Deno.test(`attentionOracle() is an unbiased draw from the exact softmax with its exact LSE (${tag})`, () => {
    const { kv, q, v64, score } = data(3, dtype);
    // budget 1: m = n draws, so the mean is within a few σ/√m of the exact output
    const got = attentionOracle(kv, q, H, 1, 5n);
    assertEquals(attentionOracle(kv, q, H, 1, 5n).out, got.out, "seeded: the same draws again");
    const other = attentionOracle(kv, q, H, 1, 6n);
    assert(maxDiff(other.out, got.out) > 0, "another seed draws differently");
    for (let h = 0; h < H; h++) {
      const row0 = Math.floor(h / G) * n;
      const exact = refAttend(all, (i) => score(h, i), v64, row0, d);
      assertAlmostEquals(got.lse2[h], exact.lse2, 1e-5, "the LSE is the exact one");
      // per component: |mean − E| ≤ 5·sd/√m with sd the softmax-weighted std of v
      const m = n;
      const ps = all.map((i) => Math.exp(score(h, i) - exact.lse2 * Math.LN2));
      for (let e = 0; e < d; e++) {
        let v2 = 0;
        all.forEach((i, j) => v2 += ps[j] * (v64[(row0 + i) * d + e] - exact.out[e]) ** 2);
        assertLessOrEqual(
          Math.abs(got.out[h * d + e] - exact.out[e]),
          5 * Math.sqrt(v2 / m) + 1e-6,
        );
      }
      assert(got.nnz[h] > 0 && got.nnz[h] <= n);
    }
  });
}

Deno.test("MagicPIG entry points reject invalid arguments with a message", async () => {
  const keys = randn(2 * 10 * 8, 1);
  const e = await LshIndex.create({ k: 17 }, 2, 8, DType.F32, keys, keys, 10).then(
    () => null,
    (err) => err,
  );
  assert(e instanceof MagicpigError && e.code === "invalid_argument", String(e));
  assert(e.message.includes('"17"'), e.message);
  using idx = await LshIndex.create({ k: 4, l: 8 }, 2, 8, DType.F32, keys, keys, 10);
  const err = assertThrows(() => lshAttention([idx], new Float32Array(3 * 8), 3), MagicpigError);
  assert(err.message.includes('"3"'), err.message);
  const f16 = await LshIndex.create(
    {},
    2,
    8,
    DType.F16,
    new Uint16Array(160),
    new Uint16Array(160),
    10,
  )
    .then(() => null, (x) => x);
  assert(f16 instanceof MagicpigError && f16.code === "unsupported", String(f16));
});
