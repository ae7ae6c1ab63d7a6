/**
 * CPU micro-benchmark of one MagicPIG decode step of one layer: collision retrieval +
 * sampled attention over a host-resident index (issue 3, item 5).
 *
 * Shape: 96K indexed keys, 32 query heads, 8 KV heads, head_dim 128, BF16 K/V, K10L150,
 * synthetic keys with a shared mean offset (the index centers them), batch 1 and 8.
 * Each batch entry and each "layer" has its own index and K/V copy (distinct memory,
 * cycled), so the step gathers from DRAM, not from a warm L3. Query codes are hashed
 * beforehand (on the server the GPU computes them); the step with hashing inside is
 * reported too.
 *
 * Reports per batch: median ms per layer (p10/p90), effective GB/s (bytes of K/V rows,
 * norms, index entries and bucket offsets the step touched / time), the keys fraction
 * (sample size / indexed keys, per query head) and the row fraction (distinct rows / keys,
 * after sharing within a GQA group). JSON goes to --out.
 *
 * Queries are independent N(0, 1) per head by default — the worst case for sharing the
 * gathers of a GQA group (real heads of a group are correlated); `--group-corr ρ` gives
 * the heads of a group a shared component of variance ρ.
 *
 * Usage:
 *   deno task bench:attention [--n 98304] [--batch 1,8] [--layers 4] [--reps 30]
 *                             [--threads 0] [--k 10] [--l 150] [--group-corr 0]
 *                             [--out bench.json]
 *
 * @module
 */
import { buildInfo, DType, getThreads, setThreads } from "../ffi/native.ts";
import { lshAttention, lshHash, LshIndex, lshProjection } from "../ffi/lsh.ts";

/** `--name value` options over defaults; unknown names are an error. */
function options<T extends Record<string, string>>(argv: string[], defaults: T): T {
  const out: Record<string, string> = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m || !(m[1] in defaults)) throw new Error(`Unknown option "${argv[i]}"`);
    out[m[1]] = m[2] ?? argv[++i] ?? "";
  }
  return out as T;
}

const args = options(Deno.args, {
  n: "98304",
  batch: "1,8",
  layers: "4",
  reps: "30",
  threads: "0",
  k: "10",
  l: "150",
  "group-corr": "0",
  out: "",
});

const n = Number(args.n), H = 32, hkv = 8, d = 128;
const K = Number(args.k), L = Number(args.l);
const batches = args.batch.split(",").map(Number);
const layers = Number(args.layers), reps = Number(args.reps);
setThreads(Number(args.threads));

// ------------------------------------------------------------
// synthetic data: bf16 keys = per-head mean offset + N(0, 1), values N(0, 1)

function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

const NORMALS = (() => {
  const r = xorshift(12345);
  const t = new Float32Array(1 << 16);
  for (let i = 0; i < t.length; i++) {
    const u1 = (r() + 1) / 4294967297, u2 = r() / 4294967296;
    t[i] = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
  return t;
})();

function toBf16(f: Float32Array<ArrayBuffer>): Uint16Array<ArrayBuffer> {
  const u = new Uint32Array(f.buffer);
  const out = new Uint16Array(f.length);
  for (let i = 0; i < u.length; i++) out[i] = (u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16;
  return out;
}

function synth(seed: number, offset: number): Uint16Array<ArrayBuffer> {
  const r = xorshift(seed);
  const f = new Float32Array(hkv * n * d);
  const mean = new Float32Array(hkv * d);
  for (let i = 0; i < mean.length; i++) mean[i] = offset * NORMALS[r() & 0xffff];
  for (let h = 0; h < hkv; h++) {
    for (let i = 0; i < n; i++) {
      const o = (h * n + i) * d;
      for (let e = 0; e < d; e++) f[o + e] = mean[h * d + e] + NORMALS[r() & 0xffff];
    }
  }
  return toBf16(f);
}

// Queries: N(0, 1) per head; with --group-corr ρ the heads of a GQA group share a
// component, q = √ρ·z_group + √(1 − ρ)·z_head (ρ = 0: independent heads, the worst case
// for sharing gathers within a group).
const rho = Number(args["group-corr"]);
function queries(B: number, seed: number): Float32Array<ArrayBuffer> {
  const r = xorshift(seed);
  const q = new Float32Array(B * H * d);
  const G = H / hkv, a = Math.sqrt(rho), b = Math.sqrt(1 - rho);
  for (let bg = 0; bg < B * hkv; bg++) {
    const shared = Float32Array.from({ length: d }, () => NORMALS[r() & 0xffff]);
    for (let g = 0; g < G; g++) {
      const o = (bg * G + g) * d;
      for (let e = 0; e < d; e++) q[o + e] = a * shared[e] + b * NORMALS[r() & 0xffff];
    }
  }
  return q;
}

// ------------------------------------------------------------
// run

interface Row {
  batch: number;
  codes: "given" | "hashed";
  ms_per_layer: number;
  ms_p10: number;
  ms_p90: number;
  gb_per_s: number;
  bytes_per_step: number;
  keys_fraction: number;
  rows_fraction: number;
  rows_per_step: number;
  tasks: number;
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

const t0 = performance.now();
const keys = synth(1, 2);
const values = synth(2, 0);
const genS = (performance.now() - t0) / 1000;
const distinct = Math.max(layers, ...batches);
console.error(
  `magicpig bench: n ${n}, H ${H}, Hkv ${hkv}, d ${d}, K${K}L${L}, bf16, ${getThreads()} threads, ` +
    `${distinct} indexes, GQA query correlation ${rho} (${buildInfo()}); data ${genS.toFixed(1)}s`,
);
const indexes: LshIndex[] = [];
const buildMs: number[] = [];
for (let i = 0; i < distinct; i++) {
  const t = performance.now();
  indexes.push(
    await LshIndex.create(
      { k: K, l: L, seed: BigInt(1000 + i) },
      hkv,
      d,
      DType.BF16,
      keys,
      values,
      n,
    ),
  );
  buildMs.push(performance.now() - t);
}
const info = indexes[0].info();
console.error(
  `index build ${quantile(buildMs, 0.5).toFixed(0)} ms per sequence-layer; ` +
    `${info.bytesPerToken.toFixed(1)} index B/token/KV head ` +
    `(entries ${(info.entryBytes / n / hkv).toFixed(0)}, offsets ${
      (info.offsetBytes / n / hkv).toFixed(1)
    })`,
);

const rows: Row[] = [];
for (const B of batches) {
  for (const mode of ["given", "hashed"] as const) {
    // groups of B distinct indexes ("layers"), cycled
    const groups: LshIndex[][] = [];
    const nGroups = Math.max(1, Math.floor(distinct / B));
    for (let g = 0; g < nGroups; g++) groups.push(indexes.slice(g * B, g * B + B));
    const times: number[] = [];
    let bytes = 0, sampled = 0, rowsGathered = 0, tasks = 0, steps = 0;
    for (let rep = -3; rep < reps; rep++) {
      const group = groups[((rep % nGroups) + nGroups) % nGroups];
      const q = queries(B, 777 + rep);
      let qcodes: Uint16Array<ArrayBuffer> | undefined;
      if (mode === "given") {
        qcodes = new Uint16Array(B * H * L);
        for (let b = 0; b < B; b++) {
          const R = lshProjection(BigInt(1000 + indexes.indexOf(group[b])), d, K, L);
          qcodes.set(lshHash(R, q.slice(b * H * d, (b + 1) * H * d), H, d, K, L), b * H * L);
        }
      }
      const t = performance.now();
      const r = lshAttention(group, q, H, { qcodes });
      const ms = performance.now() - t;
      if (rep < 0) continue; // warm-up
      times.push(ms);
      bytes += r.stats.bytes;
      sampled += r.stats.sampled;
      rowsGathered += r.stats.rows;
      tasks = r.stats.tasks;
      steps++;
    }
    const med = quantile(times, 0.5);
    const row: Row = {
      batch: B,
      codes: mode,
      ms_per_layer: med,
      ms_p10: quantile(times, 0.1),
      ms_p90: quantile(times, 0.9),
      gb_per_s: bytes / steps / (med * 1e6),
      bytes_per_step: bytes / steps,
      keys_fraction: sampled / steps / (B * H * n),
      rows_fraction: rowsGathered / steps / (B * hkv * n),
      rows_per_step: rowsGathered / steps,
      tasks,
    };
    rows.push(row);
  }
}

console.log(
  "| batch | query codes | ms/layer (p10–p90) | GB/s | MB/step | keys fraction | rows fraction |",
);
console.log("|---|---|---|---|---|---|---|");
for (const r of rows) {
  console.log(
    `| ${r.batch} | ${r.codes} | ${r.ms_per_layer.toFixed(3)} (${r.ms_p10.toFixed(3)}–${
      r.ms_p90.toFixed(3)
    }) | ${r.gb_per_s.toFixed(1)} | ${(r.bytes_per_step / 1e6).toFixed(1)} | ${
      (100 * r.keys_fraction).toFixed(2)
    }% | ${(100 * r.rows_fraction).toFixed(2)}% |`,
  );
}

if (args.out) {
  const json = {
    bench: "attention_cpu",
    shape: { n, H, hkv, d, K, L, kv_dtype: "bf16", group_corr: rho },
    threads: getThreads(),
    build_info: buildInfo(),
    index: {
      build_ms_median: quantile(buildMs, 0.5),
      bytes_per_token_per_kv_head: info.bytesPerToken,
      entry_bytes: info.entryBytes,
      offset_bytes: info.offsetBytes,
    },
    rows,
  };
  await Deno.writeTextFile(args.out, JSON.stringify(json, null, 2) + "\n");
  console.error(`wrote ${args.out}`);
}
for (const i of indexes) i.close();
