/**
 * The CPU single ops (ffi/ops.ts over mp_op_*) and the sampler against float64 TypeScript
 * references on seeded random inputs.
 */
import { assert, assertEquals, assertLess, assertThrows } from "./_std.ts";
import { fromBf16, fromF16, maxAbsDiff, randn, relError, toBf16, toF16 } from "./_util.ts";
import { attentionRef, invFreqRef, matmulRef, rmsnormRef, ropeRef, swigluRef } from "./_ref.ts";
import { attention, embedding, matmul, merge, rmsnorm, rope, swiglu } from "../ffi/ops.ts";
import type { RopeParams } from "../ffi/ops.ts";
import { Backend, DType, MagicpigError, sample, Status } from "../ffi/native.ts";

function ropeConfig(p: RopeParams) {
  return {
    theta: p.theta,
    style: p.style,
    scaling: p.scaling,
    factor: p.factor,
    low_freq_factor: p.lowFreqFactor,
    high_freq_factor: p.highFreqFactor,
    original_max_position: p.originalMaxPosition,
  };
}

function assertInvalid(fn: () => unknown, includes: string): void {
  const e = assertThrows(fn, MagicpigError, includes);
  assertEquals((e as MagicpigError).status, Status.INVALID);
}

// ------------------------------------------------------------
// embedding

Deno.test("embedding() copies rows of F32, F16 and BF16 tables exactly", () => {
  const vocab = 37, dim = 19;
  const table = randn(vocab * dim, 1);
  const tokens = new Int32Array([0, 36, 5, 5, 17]);
  const expect = (t: ArrayLike<number>) => {
    const out = new Float32Array(tokens.length * dim);
    tokens.forEach((tok, i) => out.set(Array.from(t).slice(tok * dim, tok * dim + dim), i * dim));
    return out;
  };
  assertEquals(embedding(table, vocab, dim, tokens), expect(table));
  const bf = toBf16(table);
  assertEquals(embedding(bf, vocab, dim, tokens, { dtype: DType.BF16 }), expect(fromBf16(bf)));
  const f16 = toF16(table);
  assertEquals(embedding(f16, vocab, dim, tokens, { dtype: DType.F16 }), expect(fromF16(f16)));
});

Deno.test("embedding() rejects an out-of-range token, naming it", () => {
  const table = randn(10 * 4, 2);
  assertInvalid(() => embedding(table, 10, 4, new Int32Array([1, 10])), 'tokens[1] "10"');
  assertInvalid(() => embedding(table, 10, 4, new Int32Array([-1])), 'tokens[0] "-1"');
});

// ------------------------------------------------------------
// rmsnorm, swiglu

Deno.test("rmsnorm() matches the float64 reference", () => {
  for (const [n, dim] of [[1, 7], [5, 64], [3, 1000]]) {
    const x = randn(n * dim, 3 + dim, 2);
    const w = randn(dim, 4 + dim);
    const got = rmsnorm(x, w, n, dim, 1e-5);
    assertLess(relError(got, rmsnormRef(x, w, n, dim, 1e-5)), 1e-6);
  }
});

Deno.test("swiglu() matches silu(gate) * up", () => {
  const g = randn(1001, 5, 3), u = randn(1001, 6);
  assertLess(relError(swiglu(g, u), swigluRef(g, u)), 1e-6);
});

// ------------------------------------------------------------
// rope

const ropeCases: [string, RopeParams][] = [
  ["interleaved", {
    theta: 10000,
    style: 0,
    scaling: 0,
    factor: 1,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPosition: 8192,
  }],
  ["half", {
    theta: 500000,
    style: 1,
    scaling: 0,
    factor: 1,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPosition: 8192,
  }],
  ["half + llama3 scaling", {
    theta: 500000,
    style: 1,
    scaling: 1,
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPosition: 8192,
  }],
  ["interleaved + llama3 scaling", {
    theta: 10000,
    style: 0,
    scaling: 1,
    factor: 4,
    lowFreqFactor: 1,
    highFreqFactor: 2,
    originalMaxPosition: 64,
  }],
];

for (const [name, p] of ropeCases) {
  Deno.test(`rope() rotates ${name} pairs as the float64 reference`, () => {
    const n = 6, heads = 3, d = 128;
    const x = randn(n * heads * d, 7);
    const positions = new Int32Array([0, 1, 17, 511, 8191, 131071]);
    const got = rope(x, n, heads, d, positions, p);
    const want = ropeRef(x, n, heads, d, positions, ropeConfig(p));
    assertLess(relError(got, want), 2e-7);
    assertLess(maxAbsDiff(got, want), 2e-6);
  });
}

Deno.test("rope() with llama3 scaling keeps high, stretches low and blends middle frequencies", () => {
  // One frequency of each band: compare the rotation angle of pair i at position 1.
  const p = ropeCases[2][1];
  const d = 128;
  const f = invFreqRef(ropeConfig(p), d);
  const plain = invFreqRef({ ...ropeConfig(p), scaling: 0 }, d);
  assertEquals(f[0], plain[0]); // wavelength 2π < 2048: kept
  assertLess(Math.abs(f[63] - plain[63] / 8), 1e-18); // very long wavelength: divided
  const mid = f.findIndex((x, i) => x !== plain[i] && Math.abs(x - plain[i] / 8) > 1e-15);
  assert(mid > 0, "a blended band exists");
  // The native op must agree on every band: rotate e_{pair i} at position 1.
  const x = new Float32Array(d);
  for (let i = 0; i < d / 2; i++) x[i] = 1; // half style: pair (i, i+64) = (1, 0)
  const y = rope(x, 1, 1, d, new Int32Array([1]), p);
  for (let i = 0; i < d / 2; i++) {
    assertLess(Math.abs(y[i] - Math.cos(f[i])), 1e-7);
    assertLess(Math.abs(y[i + d / 2] - Math.sin(f[i])), 1e-7);
  }
});

Deno.test("rope() rejects an odd head_dim and bad scaling parameters", () => {
  const p = ropeCases[0][1];
  assertInvalid(() => rope(new Float32Array(6), 1, 2, 3, new Int32Array([0]), p), "head_dim");
  assertInvalid(
    () =>
      rope(new Float32Array(8), 1, 1, 8, new Int32Array([0]), {
        ...p,
        scaling: 1,
        highFreqFactor: 0.5,
      }),
    "rope.high_freq_factor",
  );
});

// ------------------------------------------------------------
// matmul

Deno.test("matmul() with F32 weights matches the reference for many shapes", () => {
  for (
    const [n, inDim, outDim] of [[1, 64, 32], [1, 37, 13], [5, 100, 70], [13, 16, 9], [64, 200, 33]]
  ) {
    const w = randn(outDim * inDim, n + inDim, 0.5);
    const x = randn(n * inDim, outDim + 11);
    const y = matmul(w, x, n, inDim, outDim);
    assertLess(relError(y, matmulRef(w, x, n, inDim, outDim)), 1e-6, `${n}x${inDim}x${outDim}`);
  }
});

Deno.test("matmul() with BF16 and F16 weights accumulates in F32", () => {
  const n = 6, inDim = 130, outDim = 40;
  const w = randn(outDim * inDim, 21, 0.5);
  const x = randn(n * inDim, 22);
  const bf = toBf16(w);
  assertLess(
    relError(
      matmul(bf, x, n, inDim, outDim, { wdtype: DType.BF16 }),
      matmulRef(fromBf16(bf), x, n, inDim, outDim),
    ),
    1e-6,
  );
  const f16 = toF16(w);
  assertLess(
    relError(
      matmul(f16, x, n, inDim, outDim, { wdtype: DType.F16 }),
      matmulRef(fromF16(f16), x, n, inDim, outDim),
    ),
    1e-6,
  );
});

Deno.test("matmul() gives a token the same bits alone and inside a batch", () => {
  const n = 11, inDim = 77, outDim = 29;
  const w = randn(outDim * inDim, 31);
  const x = randn(n * inDim, 32);
  const all = matmul(w, x, n, inDim, outDim);
  for (const t of [0, 4, 10]) {
    const one = matmul(w, x.slice(t * inDim, (t + 1) * inDim), 1, inDim, outDim);
    assertEquals(one, all.slice(t * outDim, (t + 1) * outDim));
  }
});

// ------------------------------------------------------------
// attention

function kvFor(dtype: number, k: Float32Array<ArrayBuffer>, v: Float32Array<ArrayBuffer>) {
  if (dtype === DType.F32) return { k, v, kRef: k, vRef: v };
  const kb = toBf16(k), vb = toBf16(v);
  return { k: kb, v: vb, kRef: fromBf16(kb), vRef: fromBf16(vb) };
}

for (const dtype of [DType.F32, DType.BF16]) {
  const dname = dtype === DType.F32 ? "F32" : "BF16";
  Deno.test(`attention() over ${dname} KV matches the reference for prefill chunks (GQA, q_pos0 > 0)`, () => {
    for (
      const [n, T, H, Hkv, d, qPos0] of [
        [7, 7, 4, 2, 8, 0],
        [5, 600, 8, 2, 16, 595],
        [40, 300, 6, 3, 12, 260],
        [3, 1000, 4, 1, 32, 100], // causal: queries see 101..103 of 1000 keys
      ]
    ) {
      const q = randn(n * H * d, n + T);
      const { k, v, kRef, vRef } = kvFor(dtype, randn(T * Hkv * d, T), randn(T * Hkv * d, T + 1));
      const got = attention({ q, k, v, n, T, H, Hkv, d, qPos0, kvDtype: dtype });
      const want = attentionRef(q, kRef, vRef, n, T, H, Hkv, d, qPos0);
      assertLess(relError(got.out, want.out), 1e-5, `out ${n} ${T}`);
      assertLess(maxAbsDiff(got.lse2, want.lse2), 1e-5, `lse2 ${n} ${T}`);
    }
  });

  Deno.test(`attention() over ${dname} KV decodes one query over many keys (split schedule)`, () => {
    const T = 2000, H = 8, Hkv = 2, d = 64;
    const q = randn(H * d, 91);
    const { k, v, kRef, vRef } = kvFor(dtype, randn(T * Hkv * d, 92), randn(T * Hkv * d, 93));
    const got = attention({ q, k, v, n: 1, T, H, Hkv, d, qPos0: T - 1, kvDtype: dtype });
    const want = attentionRef(q, kRef, vRef, 1, T, H, Hkv, d, T - 1);
    assertLess(relError(got.out, want.out), 1e-5);
    assertLess(maxAbsDiff(got.lse2, want.lse2), 1e-5);
  });
}

Deno.test("attention() gives a query the same bits in a chunk and decoded alone", () => {
  const n = 20, T = 700, H = 4, Hkv = 2, d = 16, qPos0 = 680;
  const q = randn(n * H * d, 41);
  const k = randn(T * Hkv * d, 42), v = randn(T * Hkv * d, 43);
  const all = attention({ q, k, v, n, T, H, Hkv, d, qPos0 });
  for (const i of [0, 7, 19]) {
    const one = attention({
      q: q.slice(i * H * d, (i + 1) * H * d),
      k,
      v,
      n: 1,
      T: qPos0 + i + 1,
      H,
      Hkv,
      d,
      qPos0: qPos0 + i,
    });
    assertEquals(one.out, all.out.slice(i * H * d, (i + 1) * H * d));
    assertEquals(one.lse2, all.lse2.slice(i * H, (i + 1) * H));
  }
});

Deno.test("attention() rejects H not divisible by Hkv", () => {
  const q = new Float32Array(6 * 4), k = new Float32Array(4 * 4);
  assertInvalid(
    () => attention({ q, k, v: k, n: 1, T: 1, H: 6, Hkv: 4, d: 4, qPos0: 0 }),
    "must divide H",
  );
});

// ------------------------------------------------------------
// merge

Deno.test("merge() of attention over two key sets equals attention over their union", () => {
  const T = 300, split = 130, H = 4, Hkv = 2, d = 16;
  const q = randn(H * d, 51);
  const k = randn(T * Hkv * d, 52), v = randn(T * Hkv * d, 53);
  const rows = Hkv * d;
  const a = attention({
    q,
    k: k.slice(0, split * rows),
    v: v.slice(0, split * rows),
    n: 1,
    T: split,
    H,
    Hkv,
    d,
    qPos0: split - 1,
  });
  const b = attention({
    q,
    k: k.slice(split * rows),
    v: v.slice(split * rows),
    n: 1,
    T: T - split,
    H,
    Hkv,
    d,
    qPos0: T,
  });
  const full = attention({ q, k, v, n: 1, T, H, Hkv, d, qPos0: T - 1 });
  const m = merge(a.out, a.lse2, b.out, b.lse2, H, d);
  assertLess(relError(m.out, full.out), 1e-6);
  assertLess(maxAbsDiff(m.lse, full.lse2), 1e-5);
});

Deno.test("merge() ignores a −∞ side and zeroes rows where both sides are −∞", () => {
  const d = 3;
  const o1 = new Float32Array([1, 2, 3, 4, 5, 6, 7, 8, 9]);
  const o2 = new Float32Array([NaN, NaN, NaN, -1, -2, -3, 0.5, 0.5, 0.5]);
  const l1 = new Float32Array([2, -Infinity, -Infinity]);
  const l2 = new Float32Array([-Infinity, 1.5, -Infinity]);
  const m = merge(o1, l1, o2, l2, 3, d);
  assertEquals(Array.from(m.out), [1, 2, 3, -1, -2, -3, 0, 0, 0]);
  assertEquals(Array.from(m.lse), [2, 1.5, -Infinity]);
  // equal weights average
  const e = merge(
    new Float32Array([0, 2]),
    new Float32Array([1]),
    new Float32Array([2, 4]),
    new Float32Array([1]),
    1,
    2,
  );
  assertEquals(Array.from(e.out), [1, 3]);
  assertEquals(e.lse[0], 2);
});

Deno.test("ops reject an unknown backend", () => {
  assertInvalid(() => swiglu(new Float32Array(2), new Float32Array(2), 7 as 1), 'backend "7"');
  assertInvalid(
    () => swiglu(new Float32Array(2), new Float32Array(2), Backend.AUTO as 1),
    "backend",
  );
});

// ------------------------------------------------------------
// sampling

const greedy = { temperature: 0, topK: 0, topP: 1, nLogprobs: 0 };

function logSoftmax(l: ArrayLike<number>): number[] {
  const m = Math.max(...Array.from(l));
  const s = Array.from(l).reduce((a, x) => a + Math.exp(x - m), 0);
  return Array.from(l, (x) => x - m - Math.log(s));
}

Deno.test("sample() greedy picks the first maximum and reports raw log-probabilities", () => {
  const logits = new Float32Array([0.5, 3, -1, 3, 2, 3]);
  const r = sample(logits, { ...greedy, nLogprobs: 4 }, new BigUint64Array([1n]));
  assertEquals(r.token, 1);
  const lp = logSoftmax(logits);
  assertLess(Math.abs(r.logprob - lp[1]), 1e-6);
  assertEquals(r.top.map((t) => t.id), [1, 3, 5, 4]);
  for (const t of r.top) assertLess(Math.abs(t.logprob - lp[t.id]), 1e-6);
});

Deno.test("sample() with a seed is reproducible and advances the state", () => {
  const logits = randn(500, 61, 2);
  const p = { temperature: 1, topK: 0, topP: 1, nLogprobs: 0 };
  const s1 = new BigUint64Array([42n]), s2 = new BigUint64Array([42n]);
  const a = Array.from({ length: 50 }, () => sample(logits, p, s1).token);
  const b = Array.from({ length: 50 }, () => sample(logits, p, s2).token);
  assertEquals(a, b);
  assert(s1[0] !== 42n);
  assert(new Set(a).size > 5, "draws vary");
  const c = Array.from({ length: 50 }, () => sample(logits, p, new BigUint64Array([s1[0]])).token);
  assertEquals(new Set(c).size, 1, "one state gives one token");
});

Deno.test("sample() keeps to the top-k and top-p support sets", () => {
  const logits = new Float32Array([1, 4, 2, 3.5, 0, 3]); // order: 1, 3, 5, 2, 0, 4
  const state = new BigUint64Array([7n]);
  const seen = (p: { temperature: number; topK: number; topP: number }) => {
    const s = new Set<number>();
    for (let i = 0; i < 2000; i++) s.add(sample(logits, { ...p, nLogprobs: 0 }, state).token);
    return [...s].sort();
  };
  assertEquals(seen({ temperature: 1, topK: 3, topP: 1 }), [1, 3, 5]);
  assertEquals(seen({ temperature: 5, topK: 2, topP: 1 }), [1, 3]);
  // probabilities of 1, 3, 5 at T=1: .50, .30, .18 (of the whole)
  const p = logSoftmax(logits).map(Math.exp);
  const top2 = p[1] + p[3];
  assertEquals(seen({ temperature: 1, topK: 0, topP: top2 - 0.01 }), [1, 3]);
  assertEquals(seen({ temperature: 1, topK: 0, topP: top2 + 0.01 }), [1, 3, 5]);
  assertEquals(seen({ temperature: 1, topK: 0, topP: 0.01 }), [1]);
  assertEquals(seen({ temperature: 1, topK: 1, topP: 1 }), [1]);
});

Deno.test("sample() draws by the temperature-scaled softmax", () => {
  const logits = new Float32Array([0, 1, 2, -1]);
  const state = new BigUint64Array([123n]);
  for (const T of [0.5, 1, 2]) {
    const counts = [0, 0, 0, 0];
    const draws = 20000;
    for (let i = 0; i < draws; i++) {
      counts[sample(logits, { temperature: T, topK: 0, topP: 1, nLogprobs: 0 }, state).token]++;
    }
    const expected = logSoftmax(Array.from(logits, (x) => x / T)).map(Math.exp);
    for (let i = 0; i < 4; i++) {
      const sd = Math.sqrt(draws * expected[i] * (1 - expected[i]));
      assertLess(Math.abs(counts[i] - draws * expected[i]), 5 * sd + 1, `T=${T} token ${i}`);
    }
  }
});

Deno.test("sample() log-probabilities of the whole vocabulary sum to one", () => {
  const logits = randn(20, 71, 3);
  const r = sample(logits, { ...greedy, nLogprobs: 20 }, new BigUint64Array([0n]));
  assertEquals(r.top.length, 20);
  const total = r.top.reduce((a, t) => a + Math.exp(t.logprob), 0);
  assertLess(Math.abs(total - 1), 1e-5);
  for (let i = 1; i < 20; i++) assert(r.top[i - 1].logprob >= r.top[i].logprob);
  // the vocabulary is large: a big random one with top-p also works (partial sort path)
  const big = randn(50000, 72, 4);
  const s = sample(
    big,
    { temperature: 1, topK: 0, topP: 0.9, nLogprobs: 3 },
    new BigUint64Array([5n]),
  );
  assert(s.token >= 0 && s.token < 50000);
  assertEquals(s.top.length, 3);
});

Deno.test("sample() rejects bad parameters and NaN logits with a named argument", () => {
  const l = new Float32Array([1, 2]);
  const st = new BigUint64Array([1n]);
  assertInvalid(() => sample(l, { ...greedy, temperature: -1 }, st), "temperature");
  assertInvalid(() => sample(l, { ...greedy, topP: 0 }, st), "top_p");
  assertInvalid(() => sample(l, { ...greedy, topK: -2 }, st), "top_k");
  assertInvalid(() => sample(l, { ...greedy, nLogprobs: 21 }, st), "n_logprobs");
  assertInvalid(() => sample(new Float32Array([1, NaN]), greedy, st), "logits[1]");
});
