/**
 * MagicPIG oracle tests, part 2: the bucket index and collision retrieval (magicpig.md
 * §5–6, §18.2–3). The CSR of every (head, table) must be exactly the stable counting sort
 * of the codes, and retrieval exactly {i : code_t(i) = q_t for ≥ 2 tables}, with GQA
 * groups > 1 and batches > 1, for blocks, the appended tail, and after merges.
 */
import { assert, assertEquals, assertLessOrEqual } from "./_std.ts";
import { randn, rng } from "./_util.ts";
import { refCsr, refRetrieve } from "./_lsh_ref.ts";
import {
  lshHash,
  type LshIndex,
  LshIndex as Index,
  lshProjection,
  lshRetrieve,
} from "../ffi/lsh.ts";
import { DType, getThreads, setThreads } from "../ffi/native.ts";

interface Built {
  idx: LshIndex;
  keys: Float32Array<ArrayBuffer>;
  n: number;
}

async function build(
  K: number,
  L: number,
  hkv: number,
  d: number,
  n: number,
  seed: number,
  tailMax = 4096,
): Promise<Built> {
  // keys with a shared mean offset, as real keys have
  const keys = randn(hkv * n * d, seed);
  for (let i = 0; i < keys.length; i++) keys[i] += 2 * ((i % d) / d - 0.5);
  const idx = await Index.create(
    { k: K, l: L, seed: BigInt(seed), tailMax },
    hkv,
    d,
    DType.F32,
    keys,
    keys,
    n,
  );
  return { idx, keys, n };
}

/** Codes of every token of head h, recomputed from the keys: hash(fround(k − μ)). */
function expectedCodes(b: Built, h: number, d: number, K: number, L: number, seed: number) {
  const { mean } = b.idx.mean();
  const x = new Float32Array(b.n * d);
  for (let i = 0; i < b.n; i++) {
    for (let e = 0; e < d; e++) x[i * d + e] = b.keys[(h * b.n + i) * d + e] - mean[h * d + e];
  }
  return lshHash(lshProjection(BigInt(seed), d, K, L), x, b.n, d, K, L);
}

function checkTables(b: Built, hkv: number, d: number, K: number, L: number, seed: number) {
  const NB = 1 << K;
  for (let h = 0; h < hkv; h++) {
    const codes = expectedCodes(b, h, d, K, L, seed);
    assertEquals(b.idx.codes(h, 0, b.n), codes, `codes of head ${h}`);
    for (let t = 0; t < L; t++) {
      const { offsets, indices } = b.idx.table(h, t);
      const what = `head ${h} table ${t}`;
      // the structural properties of §18.2 ...
      assertEquals(offsets[0], 0, what);
      assertEquals(offsets[NB], b.n, `${what}: Σ bucket sizes = n`);
      const seen = new Uint8Array(b.n);
      const hist = new Uint32Array(NB);
      for (let i = 0; i < b.n; i++) hist[codes[i * L + t]]++;
      for (let c = 0; c < NB; c++) {
        assert(offsets[c] <= offsets[c + 1], `${what}: offsets are non-decreasing`);
        assertEquals(offsets[c + 1] - offsets[c], hist[c], `${what}: bucket ${c} size = histogram`);
        for (let j = offsets[c]; j < offsets[c + 1]; j++) {
          const i = indices[j];
          assert(i >= 0 && i < b.n && !seen[i], `${what}: indices form a permutation`);
          seen[i] = 1;
          assertEquals(codes[i * L + t], c, `${what}: token ${i} lies in bucket ${c}`);
        }
      }
      // ... and exact equality with the stable counting sort
      const ref = refCsr(codes, b.n, L, t, K);
      assertEquals(offsets, ref.offsets, what);
      assertEquals(indices, ref.indices, what);
    }
  }
}

// K12L20 has fewer bucket entries than bitmap words (L·64 < 2^K): retrieval's
// listed-words harvest; the others sweep the bitmaps.
for (const [K, L] of [[4, 50], [8, 50], [4, 100], [8, 100], [12, 20]]) {
  Deno.test(`LshIndex.table() is the exact counting sort of the codes (K${K}L${L})`, async () => {
    const hkv = 2, d = 32, seed = 100 + K * L;
    const b = await build(K, L, hkv, d, 8192, seed);
    try {
      checkTables(b, hkv, d, K, L, seed);
      const info = b.idx.info();
      assertEquals(info.nTokens, 8192);
      assertEquals(info.nTail, 0);
      assertEquals(info.entryBytes, hkv * L * 8192 * 2, "2·L bytes of entries per token");
      assertEquals(info.offsetBytes, hkv * L * ((1 << K) + 1) * 4, "one block of offsets");
    } finally {
      b.idx.close();
    }
  });

  Deno.test(`lshRetrieve() returns every key colliding in ≥ 2 tables (K${K}L${L}, B 2, G 4)`, async () => {
    const hkv = 2, d = 32, H = 8, G = H / hkv;
    const seeds = [7 + K + L, 11 + K + L];
    const lens = [8192, 5003];
    const built = [
      await build(K, L, hkv, d, lens[0], seeds[0]),
      await build(K, L, hkv, d, lens[1], seeds[1]),
    ];
    try {
      const q = randn(2 * H * d, K * L);
      // the same check with hashed queries and with random query codes
      const r = rng(K * 31 + L);
      const randomCodes = Uint16Array.from({ length: 2 * H * L }, () => Math.floor(r() * (1 << K)));
      for (const qcodes of [undefined, randomCodes]) {
        const got = lshRetrieve(built.map((b) => b.idx), q, H, { qcodes });
        for (let b = 0; b < 2; b++) {
          const R = lshProjection(BigInt(seeds[b]), d, K, L);
          const qc = qcodes
            ? qcodes.subarray(b * H * L, (b + 1) * H * L)
            : lshHash(R, q.slice(b * H * d, (b + 1) * H * d), H, d, K, L);
          for (let h = 0; h < H; h++) {
            const codes = expectedCodes(built[b], Math.floor(h / G), d, K, L, seeds[b]);
            const want = refRetrieve(codes, lens[b], L, qc.subarray(h * L, (h + 1) * L));
            const what = `${qcodes ? "random codes" : "hashed q"}, sequence ${b}, head ${h}`;
            assertEquals(got.nnz[b * H + h], want.length, `${what}: nnz`);
            assertEquals(Array.from(got.sets[b * H + h]), want, `${what}: set`);
          }
        }
      }
    } finally {
      for (const b of built) b.idx.close();
    }
  });
}

Deno.test("lshRetrieve() finds a key whose codes the query copies", async () => {
  const K = 8, L = 50, d = 16, n = 1000;
  const b = await build(K, L, 1, d, n, 5);
  try {
    const target = 321;
    const qcodes = b.idx.codes(0, target, 1);
    // one table differs: still ≥ 2 collisions
    qcodes[0] = (qcodes[0] + 1) % (1 << K);
    const got = lshRetrieve([b.idx], new Float32Array(d), 1, { qcodes });
    assert(Array.from(got.sets[0]).includes(target));
    // only one table agrees: not retrieved unless it collides elsewhere by chance
    const one = new Uint16Array(L);
    const codes = b.idx.codes(0, target, 1);
    for (let t = 0; t < L; t++) one[t] = (codes[t] + 1) % (1 << K);
    one[3] = codes[3];
    assert(
      !Array.from(lshRetrieve([b.idx], new Float32Array(d), 1, { qcodes: one }).sets[0]).includes(
        target,
      ),
    );
  } finally {
    b.idx.close();
  }
});

Deno.test("LshIndex.append() keeps a tail that retrieval scans, then merges it exactly", async () => {
  const K = 8, L = 50, d = 16, hkv = 2, H = 4, G = 2, seed = 77;
  const n0 = 3000, m1 = 1000, m2 = 700;
  const all = randn(hkv * (n0 + m1 + m2) * d, 78);
  // [hkv][n][d] slices of the token range [a, b)
  const slice = (a: number, b: number) => {
    const out = new Float32Array(hkv * (b - a) * d);
    for (let h = 0; h < hkv; h++) {
      out.set(
        all.subarray((h * (n0 + m1 + m2) + a) * d, (h * (n0 + m1 + m2) + b) * d),
        h * (b - a) * d,
      );
    }
    return out;
  };
  const idx = await Index.create(
    { k: K, l: L, seed: BigInt(seed), tailMax: 100_000 },
    hkv,
    d,
    DType.F32,
    slice(0, n0),
    slice(0, n0),
    n0,
  );
  try {
    const check = (n: number, tail: number) => {
      const info = idx.info();
      assertEquals([info.nTokens, info.nTail], [n, tail]);
      const b: Built = { idx, keys: slice(0, n), n };
      checkTables(b, hkv, d, K, L, seed);
      const q = randn(H * d, n);
      const got = lshRetrieve([idx], q, H);
      const qc = lshHash(lshProjection(BigInt(seed), d, K, L), q, H, d, K, L);
      for (let h = 0; h < H; h++) {
        const codes = expectedCodes(b, Math.floor(h / G), d, K, L, seed);
        assertEquals(
          Array.from(got.sets[h]),
          refRetrieve(codes, n, L, qc.subarray(h * L, (h + 1) * L)),
        );
      }
    };
    check(n0, 0);
    await idx.append(slice(n0, n0 + m1), slice(n0, n0 + m1), m1);
    check(n0 + m1, m1);
    const { mean: before } = idx.mean();
    await idx.append(slice(n0 + m1, n0 + m1 + m2), slice(n0 + m1, n0 + m1 + m2), m2, true);
    check(n0 + m1 + m2, 0);
    assertEquals(idx.mean().mean, before, "μ stays the mean of the first batch");
  } finally {
    idx.close();
  }
});

Deno.test("LshIndex spans several 65,536-token blocks with a tail, exactly", async () => {
  const K = 4, L = 6, d = 8, hkv = 1, seed = 9;
  const n0 = 60_000, m = 12_000, n = n0 + m;
  const keys = randn(n * d, 10);
  const idx = await Index.create(
    { k: K, l: L, seed: BigInt(seed), tailMax: 100_000 },
    hkv,
    d,
    DType.F32,
    keys.slice(0, n0 * d),
    keys.slice(0, n0 * d),
    n0,
  );
  try {
    await idx.append(keys.slice(n0 * d), keys.slice(n0 * d), 5_000);
    assertEquals(idx.info().nTail, 5_000);
    await idx.append(keys.slice((n0 + 5_000) * d), keys.slice((n0 + 5_000) * d), m - 5_000, true);
    const info = idx.info();
    assertEquals([info.nTokens, info.nBlocked, info.nTail], [n, n, 0]);
    assertEquals(info.offsetBytes, 2 * L * ((1 << K) + 1) * 4, "two blocks");
    assertEquals(info.entryBytes, L * n * 2);
    assertLessOrEqual(info.bytesPerToken, 2 * L + 2 * L * ((1 << K) + 1) * 4 / n + 1e-9);
    const b: Built = { idx, keys, n };
    checkTables(b, hkv, d, K, L, seed);
    const H = 3;
    const q = randn(H * d, 11);
    const got = lshRetrieve([idx], q, H);
    const codes = expectedCodes(b, 0, d, K, L, seed);
    const qc = lshHash(lshProjection(BigInt(seed), d, K, L), q, H, d, K, L);
    for (let h = 0; h < H; h++) {
      assertEquals(
        Array.from(got.sets[h]),
        refRetrieve(codes, n, L, qc.subarray(h * L, (h + 1) * L)),
      );
    }
  } finally {
    idx.close();
  }
});

Deno.test("LshIndex.info() reports at most 2·L entry bytes per token per KV head", async () => {
  const b = await build(10, 150, 2, 64, 20_000, 3);
  try {
    const info = b.idx.info();
    assertEquals(info.entryBytes / (2 * 20_000), 2 * 150);
    assertEquals(info.bytesPerToken, (info.entryBytes + info.offsetBytes) / (2 * 20_000));
    assertEquals(info.normBytes, 2 * (20_000 + 64) * 4);
  } finally {
    b.idx.close();
  }
});

Deno.test("lshRetrieve() returns the same sets whatever the thread count (task split)", async () => {
  const K = 8, L = 50, d = 16, hkv = 2, H = 8;
  const b = await build(K, L, hkv, d, 30_000, 21);
  const before = getThreads();
  try {
    const q = randn(H * d, 22);
    setThreads(1);
    const one = lshRetrieve([b.idx], q, H);
    for (const t of [2, 5, 16]) {
      setThreads(t);
      const got = lshRetrieve([b.idx], q, H);
      assertEquals(got.nnz, one.nnz, `${t} threads`);
      assertEquals(got.sets, one.sets, `${t} threads`);
    }
  } finally {
    setThreads(before);
    b.idx.close();
  }
});
