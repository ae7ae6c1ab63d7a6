/**
 * MagicPIG oracle tests, part 3: the sampling probability u(θ) and sampled attention
 * (magicpig.md §7–8, §18.4–11): the kernel's u against a float64 closed form and the
 * reference table, inclusion frequencies and Horvitz–Thompson unbiasedness over 3000
 * hash draws, degenerate exactness, merges, centering invariance, the base-2 LSE
 * convention, and the sampled fraction for isotropic inputs.
 */
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertGreater,
  assertLessOrEqual,
} from "./_std.ts";
import { randn, rng } from "./_util.ts";
import {
  bf16Array,
  bf16ToF32,
  dot,
  pCollide,
  refAttend,
  refMerge,
  uBinomial,
  uClosed,
  uClosedAlt,
} from "./_lsh_ref.ts";
import {
  lshAttention,
  lshAttentionOffload,
  lshAttentionSets,
  lshCollisionWeights,
  LshFlags,
  LshIndex,
  lshRetrieve,
} from "../ffi/lsh.ts";
import { DType } from "../ffi/native.ts";
import * as ops from "../ffi/ops.ts";

// ------------------------------------------------------------
// u(θ)

/** magicpig.md §7: u at cos 0.0, 0.1, …, 0.7 (threshold 2). */
const TABLE: Record<string, number[]> = {
  K8L75: [0.03508, 0.08382, 0.17965, 0.34159, 0.56511, 0.79556, 0.94736, 0.99562],
  K9L120: [0.02339, 0.06366, 0.15341, 0.32160, 0.56908, 0.82210, 0.96702, 0.99872],
  K10L135: [0.00791, 0.02533, 0.07244, 0.18245, 0.39165, 0.68116, 0.91767, 0.99514],
  K10L150: [0.00968, 0.03074, 0.08674, 0.21367, 0.44328, 0.73555, 0.94341, 0.99768],
  K10L170: [0.01229, 0.03860, 0.10695, 0.25592, 0.50812, 0.79559, 0.96603, 0.99914],
  K11L300: [0.00971, 0.03448, 0.10625, 0.27520, 0.56533, 0.86227, 0.98829, 0.99994],
};
const THR1_K10L150 = [0.13632, 0.23819, 0.38746, 0.57893, 0.77872, 0.92749, 0.99004, 0.99976];

function configOf(name: string): [number, number] {
  const m = /^K(\d+)L(\d+)$/.exec(name)!;
  return [Number(m[1]), Number(m[2])];
}

/** A grid over [−1, 1] dense near the ends, where acos and u are steepest. */
function cosGrid(): Float32Array<ArrayBuffer> {
  const xs: number[] = [];
  for (let i = 0; i <= 4000; i++) xs.push(-1 + i / 2000);
  for (let k = 1; k <= 7; k++) xs.push(1 - 10 ** -k, -1 + 10 ** -k);
  return Float32Array.from(xs);
}

Deno.test("u(θ) closed forms reproduce the reference table of magicpig.md §7", () => {
  for (const [name, row] of Object.entries(TABLE)) {
    const [K, L] = configOf(name);
    row.forEach((want, i) => {
      const c = i / 10;
      assertAlmostEquals(uClosed(c, K, L), want, 5.1e-6, `${name} at cos ${c}`);
      assertAlmostEquals(uClosedAlt(c, K, L), uClosed(c, K, L), 1e-12, "the two forms agree");
      assertAlmostEquals(uBinomial(c, K, L), uClosed(c, K, L), 1e-12, "binomial tail agrees");
    });
  }
  // the ≥ 1-collision rule is a different (much looser) sampler
  THR1_K10L150.forEach((want, i) => {
    assertAlmostEquals(1 - (1 - pCollide(i / 10, 10)) ** 150, want, 5.1e-6);
  });
});

Deno.test("lshCollisionWeights() matches the float64 closed form within 1e-6 + 1e-4·u", () => {
  const cos = cosGrid();
  for (const name of [...Object.keys(TABLE), "K4L50", "K8L100", "K16L1000", "K1L2"]) {
    const [K, L] = configOf(name);
    const { u, lnw } = lshCollisionWeights(K, L, 1e-4, cos);
    for (let i = 0; i < cos.length; i++) {
      const want = uClosed(cos[i], K, L);
      const what = `${name} at cos ${cos[i]}`;
      assertLessOrEqual(Math.abs(u[i] - want), 1e-6 + 1e-4 * want, what);
      assertLessOrEqual(Math.abs(lnw[i] - Math.log(want + 1e-4)), 1e-4, `${what}: ln(u + 1e-4)`);
    }
    if (TABLE[name]) {
      const at = lshCollisionWeights(K, L, 1e-4, Float32Array.from(TABLE[name], (_, i) => i / 10));
      TABLE[name].forEach((want, i) => assertAlmostEquals(at.u[i], want, 6e-6, `${name} table`));
    }
  }
});

Deno.test("lshCollisionWeights() limits: u(1) = 1, u(−1) = 0 with ln(1e-4), p(0) = 2^−K", () => {
  for (const [K, L] of [[10, 150], [8, 75], [11, 300]]) {
    const { u, lnw } = lshCollisionWeights(K, L, 1e-4, Float32Array.from([1, -1, 0]));
    assertEquals(u[0], 1);
    assertEquals(u[1], 0);
    assertAlmostEquals(lnw[1], -9.21034, 1e-5);
    const p = 2 ** -K;
    const u0 = 1 - (1 - p) ** L - L * p * (1 - p) ** (L - 1);
    assertLessOrEqual(Math.abs(u[2] - u0), 1e-6 + 1e-4 * u0);
  }
  assertAlmostEquals(
    lshCollisionWeights(10, 150, 1e-4, Float32Array.from([0])).u[0],
    0.00968,
    5e-6,
  );
});

Deno.test("lshCollisionWeights() with eps 0 gives ln u to 1e-4 down to tiny u", () => {
  const cos = cosGrid();
  for (const [K, L] of [[10, 150], [8, 75], [11, 300], [16, 20]]) {
    const { u, lnw } = lshCollisionWeights(K, L, 0, cos);
    for (let i = 0; i < cos.length; i++) {
      const want = uBinomial(cos[i], K, L);
      const what = `K${K}L${L} at cos ${cos[i]}`;
      if (want > 1e-30) {
        assertLessOrEqual(Math.abs(lnw[i] - Math.log(want)), 1e-4, what);
        assertLessOrEqual(Math.abs(u[i] - want), 1e-6 + 1e-4 * want, what);
      } else {
        assertLessOrEqual(lnw[i], Math.max(Math.log(Math.max(want, 1e-300)), -100) + 1e-3, what);
        assert(lnw[i] >= -100, `${what}: floored at −100`);
      }
    }
  }
});

// ------------------------------------------------------------
// helpers

/** Dense attention over keys [hkv][n][d] (rows used as stored), float64. */
function refDense(
  q: ArrayLike<number>,
  K: ArrayLike<number>,
  V: ArrayLike<number>,
  n: number,
  H: number,
  hkv: number,
  d: number,
): { out: Float64Array; lse2: Float64Array } {
  const G = H / hkv;
  const out = new Float64Array(H * d), lse2 = new Float64Array(H);
  const ids = Array.from({ length: n }, (_, i) => i);
  for (let h = 0; h < H; h++) {
    const row0 = Math.floor(h / G) * n;
    const r = refAttend(ids, (i) => dot(q, h * d, K, (row0 + i) * d, d) / Math.sqrt(d), V, row0, d);
    out.set(r.out, h * d);
    lse2[h] = r.lse2;
  }
  return { out, lse2 };
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Keys with a shared mean offset; values standard normal. [hkv][n][d] */
function kvData(hkv: number, n: number, d: number, seed: number, offset = 1.5) {
  const keys = randn(hkv * n * d, seed);
  const off = randn(hkv * d, seed + 1, offset);
  for (let h = 0; h < hkv; h++) {
    for (let i = 0; i < n; i++) {
      for (let e = 0; e < d; e++) keys[(h * n + i) * d + e] += off[h * d + e];
    }
  }
  return { keys, values: randn(hkv * n * d, seed + 2) };
}

// ------------------------------------------------------------
// 3000 hash draws: inclusion frequencies and Horvitz–Thompson

interface Draws {
  R: number;
  u: number[];
  cos: number[];
  hits: number[];
  Z: number[];
  N: number[][];
  zExact: number;
  nExact: number[];
}

let drawsCache: Promise<Draws> | null = null;

/**
 * K10L150, eps 0, no centering: 24 keys at designed angles to one query, indexed under
 * 3000 independent hyperplane draws (seeds); per draw the retrieved set and the sampled
 * attention's Ẑ = 2^lse2 and N̂ = out·Ẑ.
 */
function draws(): Promise<Draws> {
  drawsCache ??= (async () => {
    const d = 16, K = 10, L = 150, R = 3000;
    const cs = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7];
    const r = rng(2024);
    const q = new Float32Array(d);
    q[0] = 3;
    const keys = new Float32Array(cs.length * 3 * d);
    let j = 0;
    for (const c of cs) {
      for (let rep = 0; rep < 3; rep++, j++) {
        const v = randn(d, 300 + j);
        v[0] = 0;
        const vn = Math.hypot(...v);
        const norm = 1 + 2 * r();
        keys[j * d] = norm * c;
        for (let e = 1; e < d; e++) keys[j * d + e] = norm * Math.sqrt(1 - c * c) * v[e] / vn;
      }
    }
    const n = j;
    const values = randn(n * d, 77);
    const cos: number[] = [], u: number[] = [];
    const w: number[] = [];
    for (let i = 0; i < n; i++) {
      const s = dot(q, 0, keys, i * d, d);
      const kn = Math.hypot(...keys.subarray(i * d, (i + 1) * d));
      cos.push(s / (3 * kn));
      u.push(uClosed(cos[i], K, L));
      w.push(Math.exp(s / Math.sqrt(d)));
    }
    const zExact = w.reduce((a, b) => a + b, 0);
    const nExact = Array.from(
      { length: d },
      (_, e) => w.reduce((a, wi, i) => a + wi * values[i * d + e], 0),
    );
    const hits = new Array(n).fill(0);
    const Z: number[] = [], N: number[][] = [];
    for (let s = 0; s < R; s++) {
      using idx = await LshIndex.create(
        { k: K, l: L, seed: BigInt(10_000 + s), eps: 0, center: false },
        1,
        d,
        DType.F32,
        keys,
        values,
        n,
      );
      const got = lshRetrieve([idx], q, 1);
      for (const i of got.sets[0]) hits[i]++;
      const a = lshAttention([idx], q, 1);
      assertEquals(a.nnz[0], got.nnz[0], "attention samples what retrieval returns");
      const z = 2 ** a.lse2[0];
      Z.push(z);
      N.push(Array.from(a.out, (o) => o * z));
    }
    return { R, u, cos, hits, Z, N, zExact, nExact };
  })();
  return drawsCache;
}

function meanSe(xs: number[]): [number, number] {
  const m = xs.reduce((a, b) => a + b, 0) / xs.length;
  const v = xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1);
  return [m, Math.sqrt(v / xs.length)];
}

Deno.test("retrieval frequency over 3000 hash draws is u(θ) within 4σ (K10L150)", async () => {
  const D = await draws();
  D.u.forEach((u, i) => {
    const f = D.hits[i] / D.R;
    const sigma = Math.sqrt(u * (1 - u) / D.R);
    assertLessOrEqual(
      Math.abs(f - u),
      4 * sigma,
      `key ${i} at cos ${D.cos[i].toFixed(3)}: ${f} vs ${u}`,
    );
  });
});

Deno.test("sampled numerator and denominator are unbiased (Horvitz–Thompson, eps 0)", async () => {
  const D = await draws();
  const [mz, sez] = meanSe(D.Z);
  assertLessOrEqual(Math.abs(mz - D.zExact), 4 * sez, `Σ e^s/u: ${mz} ± ${sez} vs ${D.zExact}`);
  D.nExact.forEach((want, e) => {
    const [m, se] = meanSe(D.N.map((v) => v[e]));
    assertLessOrEqual(Math.abs(m - want), 4 * se, `Σ e^s·v/u [${e}]: ${m} ± ${se} vs ${want}`);
  });
});

// ------------------------------------------------------------
// exactness

Deno.test("u ≡ 1 over every indexed key is full attention (F32 1e-6, B 2, G 4, blocks + tail)", async () => {
  const hkv = 2, H = 8, d = 64, lens = [20_000, 13_000], tail = 1_500;
  const flags = LshFlags.FORCE_U1 | LshFlags.RETRIEVE_ALL;
  const data = lens.map((n, b) => kvData(hkv, n + tail, d, 40 + b));
  // the first n tokens at create, the rest appended into the tail
  const part = (a: Float32Array, n: number, lo: number, hi: number) => {
    const out = new Float32Array(hkv * (hi - lo) * d);
    for (let h = 0; h < hkv; h++) {
      out.set(a.subarray((h * n + lo) * d, (h * n + hi) * d), h * (hi - lo) * d);
    }
    return out;
  };
  const idx: LshIndex[] = [];
  try {
    for (let b = 0; b < 2; b++) {
      const n = lens[b] + tail, { keys, values } = data[b];
      const i = await LshIndex.create(
        { k: 8, l: 20, seed: 5n },
        hkv,
        d,
        DType.F32,
        part(keys, n, 0, lens[b]),
        part(values, n, 0, lens[b]),
        lens[b],
      );
      await i.append(part(keys, n, lens[b], n), part(values, n, lens[b], n), tail);
      assertEquals(i.info().nTail, tail);
      idx.push(i);
    }
    const q = randn(2 * H * d, 9, 0.5);
    const got = lshAttention(idx, q, H, { flags });
    for (let b = 0; b < 2; b++) {
      const n = lens[b] + tail;
      const want = refDense(q.subarray(b * H * d), data[b].keys, data[b].values, n, H, hkv, d);
      assertLessOrEqual(maxDiff(got.out.subarray(b * H * d, (b + 1) * H * d), want.out), 1e-6);
      assertLessOrEqual(maxDiff(got.lse2.subarray(b * H, (b + 1) * H), want.lse2), 1e-5);
      for (let h = 0; h < H; h++) assertEquals(got.nnz[b * H + h], n);
    }
  } finally {
    for (const i of idx) i.close();
  }
});

Deno.test("u ≡ 1 over every key with BF16 storage: exact on the stored values, 1e-2 on the originals", async () => {
  const hkv = 2, H = 4, d = 128, n = 6000;
  const { keys, values } = kvData(hkv, n, d, 60);
  const kb = bf16Array(keys), vb = bf16Array(values);
  using idx = await LshIndex.create({ k: 10, l: 150, seed: 6n }, hkv, d, DType.BF16, kb, vb, n);
  const q = randn(H * d, 61, 0.3);
  const got = lshAttention([idx], q, H, { flags: LshFlags.FORCE_U1 | LshFlags.RETRIEVE_ALL });
  const stored = refDense(q, bf16ToF32(kb), bf16ToF32(vb), n, H, hkv, d);
  assertLessOrEqual(maxDiff(got.out, stored.out), 1e-6);
  assertLessOrEqual(maxDiff(got.lse2, stored.lse2), 1e-5);
  const orig = refDense(q, keys, values, n, H, hkv, d);
  assertLessOrEqual(maxDiff(got.out, orig.out), 1e-2);
  assertLessOrEqual(maxDiff(got.lse2, orig.lse2), 1e-2);
});

Deno.test("merging the attentions of a split by LSE equals attention over the union", async () => {
  const hkv = 2, H = 4, d = 32, n = 5000;
  const { keys, values } = kvData(hkv, n, d, 70);
  using idx = await LshIndex.create({ k: 8, l: 75, seed: 7n }, hkv, d, DType.F32, keys, values, n);
  const q = randn(H * d, 71);
  const r = rng(72);
  const A: number[][] = [], B: number[][] = [], U: number[][] = [];
  for (let h = 0; h < H; h++) {
    const a: number[] = [], b: number[] = [];
    for (let i = 0; i < n; i++) {
      const x = r();
      if (x < 0.06) a.push(i);
      else if (x < 0.12) b.push(i);
    }
    A.push(a);
    B.push(b);
    U.push([...a, ...b].sort((x, y) => x - y));
  }
  for (const flags of [0, LshFlags.FORCE_U1, LshFlags.EXACT_U]) {
    const ra = lshAttentionSets([idx], q, H, A, flags);
    const rb = lshAttentionSets([idx], q, H, B, flags);
    const ru = lshAttentionSets([idx], q, H, U, flags);
    const nm = ops.merge(ra.out, ra.lse2, rb.out, rb.lse2, H, d);
    assertLessOrEqual(maxDiff(nm.out, ru.out), 1e-6, `native merge, flags ${flags}`);
    assertLessOrEqual(maxDiff(nm.lse, ru.lse2), 1e-5, `native merge, flags ${flags}`);
    for (let h = 0; h < H; h++) {
      const m = refMerge(
        ra.out.subarray(h * d, (h + 1) * d),
        ra.lse2[h],
        rb.out.subarray(h * d, (h + 1) * d),
        rb.lse2[h],
      );
      assertLessOrEqual(
        maxDiff(m.out, ru.out.subarray(h * d, (h + 1) * d)),
        1e-6,
        `flags ${flags}`,
      );
      assertAlmostEquals(m.lse2, ru.lse2[h], 1e-5, `flags ${flags}`);
    }
  }
});

Deno.test("an empty sample gives a zero output and −∞, which merges to the dense side bit for bit", async () => {
  const hkv = 1, H = 2, d = 16, n = 100;
  const { keys, values } = kvData(hkv, n, d, 80);
  using idx = await LshIndex.create({ k: 8, l: 50, seed: 8n }, hkv, d, DType.F32, keys, values, n);
  const q = randn(H * d, 81);
  const empty = lshAttentionSets([idx], q, H, [[], []]);
  assertEquals(Array.from(empty.out), new Array(H * d).fill(0));
  assertEquals(Array.from(empty.lse2), [-Infinity, -Infinity]);
  // an exact part computed in fp32 (the sink/local side), merged with the empty sample by
  // the library's merge op (and by the float64 reference): the exact side comes back bit
  // for bit
  const dense = lshAttention([idx], q, H, { flags: LshFlags.FORCE_U1 | LshFlags.RETRIEVE_ALL });
  const native = ops.merge(dense.out, dense.lse2, empty.out, empty.lse2, H, d);
  assertEquals(native.out, dense.out);
  assertEquals(native.lse, dense.lse2);
  const swapped = ops.merge(empty.out, empty.lse2, dense.out, dense.lse2, H, d);
  assertEquals(swapped.out, dense.out);
  for (let h = 0; h < H; h++) {
    const o = dense.out.subarray(h * d, (h + 1) * d);
    const m = refMerge(o, dense.lse2[h], empty.out.subarray(h * d, (h + 1) * d), empty.lse2[h]);
    assertEquals(Array.from(m.out), Array.from(o));
    assertEquals(m.lse2, dense.lse2[h]);
  }
  // a query whose codes hit nothing samples nothing
  const none = new Uint16Array(H * 50).fill(0);
  const codes = idx.codes(0, 0, n);
  for (let t = 0; t < 50; t++) {
    const used = new Set<number>();
    for (let i = 0; i < n; i++) used.add(codes[i * 50 + t]);
    let c = 0;
    while (used.has(c)) c++;
    none[t] = none[50 + t] = c;
  }
  const r = lshAttention([idx], q, H, { qcodes: none });
  assertEquals(Array.from(r.nnz), [0, 0]);
  assertEquals(Array.from(r.lse2), [-Infinity, -Infinity]);
  assertEquals(Array.from(r.out), new Array(H * d).fill(0));
});

Deno.test("sampled attention equals the float64 formula on the retrieved set (LSE to 1e-5)", async () => {
  const hkv = 2, H = 8, d = 64, n = 12_000, K = 8, L = 75, eps = 1e-4;
  const { keys, values } = kvData(hkv, n, d, 90);
  const G = H / hkv;
  for (const dtype of [DType.F32, DType.BF16]) {
    const kk = dtype === DType.F32 ? keys : bf16ToF32(bf16Array(keys));
    const vv = dtype === DType.F32 ? values : bf16ToF32(bf16Array(values));
    using idx = await LshIndex.create(
      { k: K, l: L, seed: 9n, eps },
      hkv,
      d,
      dtype,
      dtype === DType.F32 ? keys : bf16Array(keys),
      dtype === DType.F32 ? values : bf16Array(values),
      n,
    );
    const { mean, norms } = idx.mean();
    const q = randn(H * d, 91, 0.4);
    const sets = lshRetrieve([idx], q, H).sets;
    for (const flags of [0, LshFlags.EXACT_U]) {
      const got = lshAttention([idx], q, H, { flags });
      for (let h = 0; h < H; h++) {
        const hk = Math.floor(h / G);
        const qn = Math.hypot(...q.subarray(h * d, (h + 1) * d));
        const qmu = dot(q, h * d, mean, hk * d, d);
        const ell = (i: number) => {
          const s = dot(q, h * d, kk, (hk * n + i) * d, d);
          // norms: ‖k − μ‖ as the index stores it (fp32), checked separately below
          const c = (s - qmu) / (qn * norms[hk * n + i]);
          return s / Math.sqrt(d) - Math.log(uClosed(c, K, L) + eps);
        };
        const want = refAttend(Array.from(sets[h]), ell, vv, hk * n, d);
        const what = `${dtype === DType.F32 ? "F32" : "BF16"} flags ${flags} head ${h}`;
        assertEquals(got.nnz[h], sets[h].length, what);
        assertLessOrEqual(Math.abs(got.lse2[h] - want.lse2), 1e-5, `${what}: lse2`);
        assertLessOrEqual(
          maxDiff(got.out.subarray(h * d, (h + 1) * d), want.out),
          1e-5,
          `${what}: out`,
        );
      }
    }
    // norms are ‖k − μ‖ of the stored keys, in fp32
    for (const i of [0, 17, n - 1]) {
      let s = 0;
      for (let e = 0; e < d; e++) s += (kk[i * d + e] - mean[e]) ** 2;
      assertAlmostEquals(norms[i], Math.sqrt(s), 1e-5 * Math.sqrt(s));
    }
  }
});

Deno.test("shifting every key by a constant leaves sampled attention unchanged; centering q breaks it", async () => {
  // Keys on a 2^-6 grid and n = 2048: the mean and the centered keys are exact in fp32,
  // so both indexes hash identical vectors.
  const hkv = 2, H = 8, d = 64, n = 2048, G = H / hkv;
  const r = rng(100);
  const keys = Float32Array.from(
    { length: hkv * n * d },
    () => Math.round((r() * 4 - 2) * 64) / 64 + 0.5,
  );
  const shift = Float32Array.from({ length: d }, () => Math.round(r() * 16 - 8));
  const shifted = keys.map((k, i) => k + shift[i % d]);
  const values = randn(hkv * n * d, 101);
  const params = { k: 8, l: 75, seed: 11n };
  using a = await LshIndex.create(params, hkv, d, DType.F32, keys, values, n);
  using b = await LshIndex.create(params, hkv, d, DType.F32, shifted, values, n);
  const q = randn(H * d, 102, 0.3);
  const ra = lshAttention([a], q, H), rb = lshAttention([b], q, H);
  assertEquals(lshRetrieve([a], q, H).sets, lshRetrieve([b], q, H).sets, "same samples");
  assertLessOrEqual(maxDiff(ra.out, rb.out), 1e-5);
  for (let h = 0; h < H; h++) {
    // the logits all move by q·c/√d, and so does the LSE
    const qc = dot(q, h * d, shift, 0, d) / Math.sqrt(d) / Math.LN2;
    assertAlmostEquals(rb.lse2[h] - ra.lse2[h], qc, 1e-4);
  }
  // centering the query as well changes the attention itself
  const ca = lshAttention([a], q, H, { flags: LshFlags.CENTER_QUERY });
  const cb = lshAttention([b], q, H, { flags: LshFlags.CENTER_QUERY });
  assertGreater(maxDiff(ca.out, cb.out), 1e-2, "centered queries are not shift invariant");
  // and, over every key with u ≡ 1, centering the keys alone is exact while the query's is not
  const all = LshFlags.FORCE_U1 | LshFlags.RETRIEVE_ALL;
  const exact = refDense(q, keys, values, n, H, hkv, d);
  assertLessOrEqual(maxDiff(lshAttention([b], q, H, { flags: all }).out, exact.out), 1e-5);
  assertGreater(
    maxDiff(lshAttention([b], q, H, { flags: all | LshFlags.CENTER_QUERY }).out, exact.out),
    1e-2,
  );
  void G;
});

Deno.test("sampled fraction for isotropic inputs is the mean u(cos) within 3 SE", async () => {
  const hkv = 2, H = 8, d = 64, n = 2048, G = H / hkv, draws = 16;
  const { keys, values } = kvData(hkv, n, d, 110, 3);
  const q = randn(H * d, 111);
  for (const name of ["K10L150", "K10L170", "K8L75", "K11L300"]) {
    const [K, L] = configOf(name);
    const fr: number[] = [];
    let predicted = 0;
    for (let s = 0; s < draws; s++) {
      using idx = await LshIndex.create(
        { k: K, l: L, seed: BigInt(500 + s) },
        hkv,
        d,
        DType.F32,
        keys,
        values,
        n,
      );
      if (s === 0) {
        const { mean } = idx.mean();
        for (let h = 0; h < H; h++) {
          const hk = Math.floor(h / G);
          const qn = Math.hypot(...q.subarray(h * d, (h + 1) * d));
          for (let i = 0; i < n; i++) {
            let sc = 0, kn = 0;
            for (let e = 0; e < d; e++) {
              const k = keys[(hk * n + i) * d + e] - mean[hk * d + e];
              sc += q[h * d + e] * k;
              kn += k * k;
            }
            predicted += uClosed(sc / (qn * Math.sqrt(kn)), K, L);
          }
        }
        predicted /= H * n;
      }
      const a = lshAttention([idx], q, H);
      fr.push(a.nnz.reduce((x, y) => x + y, 0) / (H * n));
    }
    const [m, se] = meanSe(fr);
    console.log(
      `${name}: sampled ${(100 * m).toFixed(3)}% ± ${(100 * se).toFixed(3)}, ` +
        `predicted ${(100 * predicted).toFixed(3)}%, u(0) ${(100 * uClosed(0, K, L)).toFixed(3)}%`,
    );
    assertLessOrEqual(Math.abs(m - predicted), 3 * se, name);
  }
});

Deno.test("an offloaded share whose blocks the GPU retrieves: the CPU attends exactly the tail part of those heads' samples", async () => {
  // split decode with GPU retrieval, CPU side: for offloaded KV heads the CPU retrieves and
  // attends only the tokens appended since the last merge (the unsorted tail); the other
  // heads are the plain call's bit for bit
  const hkv = 4, H = 16, d = 32, n = 5000, more = 700, K = 8, L = 75, B = 2;
  const G = H / hkv;
  const idxs: LshIndex[] = [];
  for (let b = 0; b < B; b++) {
    const { keys, values } = kvData(hkv, n + more, d, 310 + b);
    const part = (x: Float32Array, lo: number, hi: number) => {
      const o = new Float32Array(hkv * (hi - lo) * d);
      for (let h = 0; h < hkv; h++) {
        o.set(x.subarray((h * (n + more) + lo) * d, (h * (n + more) + hi) * d), h * (hi - lo) * d);
      }
      return bf16Array(o);
    };
    const idx = await LshIndex.create(
      { k: K, l: L, seed: BigInt(50 + b) },
      hkv,
      d,
      DType.BF16,
      part(keys, 0, n),
      part(values, 0, n),
      n,
    );
    await idx.append(part(keys, n, n + more), part(values, n, n + more), more);
    idxs.push(idx);
  }
  try {
    for (const i of idxs) assertEquals([i.info().nBlocked, i.info().nTail], [n, more]);
    const q = randn(B * H * d, 311, 0.4);
    const full = lshAttention(idxs, q, H);
    const sets = lshRetrieve(idxs, q, H).sets;
    const offload = new Uint8Array(B * hkv);
    offload[0] = offload[2] = 1;
    offload[hkv + 3] = 1;
    const got = lshAttentionOffload(idxs, q, H, offload, { flags: LshFlags.OFFLOAD_BLOCKS });
    assertEquals(got.handed, 0);
    const isOff = (bh: number) =>
      offload[Math.floor(bh / H) * hkv + Math.floor((bh % H) / G)] === 1;
    const tails = sets.map((s, bh) => isOff(bh) ? Array.from(s).filter((i) => i >= n) : []);
    const ref = lshAttentionSets(idxs, q, H, tails);
    let tailKeys = 0;
    for (let bh = 0; bh < B * H; bh++) {
      const what = `sequence ${Math.floor(bh / H)} head ${bh % H}`;
      const o = Array.from(got.out.subarray(bh * d, (bh + 1) * d));
      assertEquals(got.samples[bh].length, 0, `${what}: nothing handed out`);
      if (isOff(bh)) {
        tailKeys += tails[bh].length;
        assertEquals(got.nnz[bh], tails[bh].length, `${what}: nnz is the tail's`);
        assertEquals(got.lse2[bh], ref.lse2[bh], `${what}: lse2`);
        assertEquals(o, Array.from(ref.out.subarray(bh * d, (bh + 1) * d)), `${what}: out`);
      } else {
        assertEquals(got.nnz[bh], full.nnz[bh], `${what}: nnz`);
        assertEquals(got.lse2[bh], full.lse2[bh], `${what}: lse2`);
        assertEquals(o, Array.from(full.out.subarray(bh * d, (bh + 1) * d)), what);
      }
    }
    assertGreater(tailKeys, 0); // some tail token collides: the tail part is not trivial
  } finally {
    for (const i of idxs) i.close();
  }
});

Deno.test("an offloaded share: the other heads are unchanged bit for bit, the offloaded heads' samples are handed out once", async () => {
  // split decode's GPU share, CPU side: every head is retrieved; offloaded KV heads get no
  // CPU attention (0 and −∞, so the merge takes the GPU's part alone) and their samples are
  // exactly the retrieved sets
  const hkv = 4, H = 16, d = 32, n = 5000, K = 8, L = 75, B = 2;
  const G = H / hkv;
  const idxs: LshIndex[] = [];
  for (let b = 0; b < B; b++) {
    const { keys, values } = kvData(hkv, n, d, 300 + b);
    idxs.push(
      await LshIndex.create(
        { k: K, l: L, seed: BigInt(40 + b) },
        hkv,
        d,
        DType.BF16,
        bf16Array(keys),
        bf16Array(values),
        n,
      ),
    );
  }
  try {
    const q = randn(B * H * d, 301, 0.4);
    const full = lshAttention(idxs, q, H);
    const sets = lshRetrieve(idxs, q, H).sets;
    // sequence 0 offloads KV heads 1 and 3, sequence 1 offloads KV head 0
    const offload = new Uint8Array(B * hkv);
    offload[1] = offload[3] = 1;
    offload[hkv + 0] = 1;
    const got = lshAttentionOffload(idxs, q, H, offload);
    // one call per completed group of KV heads: 1 to 3 here (the library checks that each
    // offloaded KV head went in exactly one)
    assert(got.handed >= 1 && got.handed <= 3, `${got.handed} hand-offs`);
    let offloaded = 0;
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        const bh = b * H + h;
        const off = offload[b * hkv + Math.floor(h / G)] === 1;
        const what = `sequence ${b} head ${h}`;
        assertEquals(got.nnz[bh], full.nnz[bh], `${what}: nnz`);
        const o = got.out.subarray(bh * d, (bh + 1) * d);
        if (off) {
          offloaded++;
          assertEquals(got.lse2[bh], -Infinity, what);
          assert(o.every((x) => x === 0), `${what}: out must be 0`);
          assertEquals(Array.from(got.samples[bh]), Array.from(sets[bh]), `${what}: samples`);
        } else {
          assertEquals(got.lse2[bh], full.lse2[bh], `${what}: lse2`);
          assertEquals(Array.from(o), Array.from(full.out.subarray(bh * d, (bh + 1) * d)), what);
          assertEquals(got.samples[bh].length, 0, `${what}: not handed out`);
        }
      }
    }
    assertEquals(offloaded, 3 * G);
    assertGreater(sets[G].length, 0); // a non-trivial sample was handed out
    // nothing offloaded: no hand-off, the same result as lshAttention
    const none = lshAttentionOffload(idxs, q, H, new Uint8Array(B * hkv));
    assertEquals(none.handed, 0);
    assertEquals(Array.from(none.out), Array.from(full.out));
  } finally {
    for (const i of idxs) i.close();
  }
});
