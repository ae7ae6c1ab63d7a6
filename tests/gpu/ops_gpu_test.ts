/**
 * GPU op parity (ggml test-backend-ops style): every CUDA op, and every kernel variant of
 * it, runs on the same seeded inputs as the CPU op and is compared by the normalised error
 * ‖gpu − cpu‖ / ‖cpu‖ against a threshold chosen per op. Each case is recorded on its own
 * line (and in `$MP_GPU_REPORT` as JSON when set) before the test asserts, so one failing
 * case never hides the numbers of the others.
 *
 * Thresholds: exact copies 0; f32 arithmetic on both sides 1e-6..1e-5; ops whose GPU path
 * rounds an f32 input to bf16 (matmul's x, attention's q; the flash kernel also rounds the
 * softmax weights to bf16 for the tensor cores) 4e-3..1.5e-2.
 *
 * Runs on a machine with a GPU (`deno task test:gpu`); elsewhere every test is skipped
 * with the reason printed.
 *
 * @module
 */
import { assertEquals } from "../_std.ts";
import { assertAll, check } from "./_report.ts";
import { fromBf16, maxAbsDiff, randn, relError, rng, toBf16, toF16 } from "../_util.ts";
import { Backend, deviceCount, DType, RopeScaling, RopeStyle, sample } from "../../ffi/native.ts";
import * as ops from "../../ffi/ops.ts";
import { AttentionKernel, describeGpu, gpuSample, MatmulKernel, setKernel } from "../../ffi/gpu.ts";

const gpus = (() => {
  try {
    return deviceCount();
  } catch {
    return 0;
  }
})();
const ignore = gpus === 0;
if (ignore) {
  console.warn(
    "skipping GPU parity tests: mp_device_count() is 0 (no usable CUDA device, or a CPU-only build)",
  );
} else {
  console.log(`GPU: ${describeGpu()}`);
}

const CPU = Backend.CPU;
const GPU = Backend.CUDA;

/** Runs fn with a kernel variant forced, restoring the automatic choice afterwards. */
function withKernel<T>(op: "matmul" | "attention", variant: number, fn: () => T): T {
  setKernel(op, variant);
  try {
    return fn();
  } finally {
    setKernel(op, 0);
  }
}

/** A Float32Array with the values rounded to bf16 (what the GPU stores). */
function bf16Round(x: Float32Array<ArrayBuffer>): Float32Array<ArrayBuffer> {
  return fromBf16(toBf16(x));
}

Deno.test({
  name: "embedding() on CUDA copies the same rows as the CPU for F32, F16 and BF16 tables",
  ignore,
  fn() {
    const vocab = 1000, dim = 300;
    const table = randn(vocab * dim, 1);
    const r = rng(2);
    const tokens = Int32Array.from({ length: 57 }, () => Math.floor(r() * vocab));
    tokens[0] = 0, tokens[1] = vocab - 1;
    const cases: [string, ops.HostTensor, number | undefined][] = [
      ["F32", table, undefined],
      ["F16", toF16(table), DType.F16],
      ["BF16", toBf16(table), DType.BF16],
    ];
    const f: (string | null)[] = [];
    for (const [name, t, dtype] of cases) {
      const a = ops.embedding(t, vocab, dim, tokens, { dtype, backend: CPU });
      const b = ops.embedding(t, vocab, dim, tokens, { dtype, backend: GPU });
      f.push(
        check(
          "embedding",
          `${name} vocab ${vocab} dim ${dim} n ${tokens.length}`,
          relError(b, a),
          0,
        ),
      );
    }
    assertAll(f);
  },
});

Deno.test({
  name: "rmsnorm() on CUDA matches the CPU within f32 rounding",
  ignore,
  fn() {
    const f: (string | null)[] = [];
    // 4096, 14336 and 512: the vectorised kernel (256, 896 and 32 threads); 64, 100: the scalar one
    for (const [n, dim] of [[7, 4096], [33, 64], [1, 14336], [5, 100], [3, 512]]) {
      const x = randn(n * dim, 3 + dim, 2);
      const w = randn(dim, 4 + dim, 0.5);
      const a = ops.rmsnorm(x, w, n, dim, 1e-5, CPU);
      const b = ops.rmsnorm(x, w, n, dim, 1e-5, GPU);
      f.push(check("rmsnorm", `n ${n} dim ${dim}`, relError(b, a), 2e-6));
    }
    assertAll(f);
  },
});

Deno.test({
  name: "rope() on CUDA matches the CPU for both pair conventions and Llama-3 scaling",
  ignore,
  fn() {
    const f: (string | null)[] = [];
    const llama3 = {
      theta: 500000,
      scaling: RopeScaling.LLAMA3,
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPosition: 8192,
    };
    const plain = {
      theta: 10000,
      scaling: RopeScaling.NONE,
      factor: 1,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPosition: 8192,
    };
    const r = rng(5);
    for (const style of [RopeStyle.INTERLEAVED, RopeStyle.HALF]) {
      for (
        const [cfgName, cfg, n, heads, d, maxPos] of [
          ["llama3", llama3, 16, 40, 128, 131072],
          ["plain", plain, 9, 12, 8, 512],
          ["plain", plain, 5, 3, 64, 4096],
        ] as const
      ) {
        const x = randn(n * heads * d, 6 + d);
        const pos = Int32Array.from(
          { length: n },
          (_, i) => i === 0 ? 0 : Math.floor(r() * maxPos),
        );
        const p = { ...cfg, style };
        const a = ops.rope(x, n, heads, d, pos, p, CPU);
        const b = ops.rope(x, n, heads, d, pos, p, GPU);
        const sname = style === RopeStyle.HALF ? "half" : "interleaved";
        f.push(
          check(
            "rope",
            `${sname} ${cfgName} n ${n} heads ${heads} d ${d} pos<${maxPos}`,
            relError(b, a),
            1e-5,
          ),
        );
      }
    }
    assertAll(f);
  },
});

Deno.test({
  name: "matmul() on CUDA matches the CPU with every kernel variant and odd shapes",
  ignore,
  fn() {
    const f: (string | null)[] = [];
    const shapes: [number, number, number][] = [
      [1, 4096, 1000],
      [5, 4096, 300],
      [16, 512, 1024],
      [17, 512, 1000],
      [100, 256, 300],
      [3, 172, 64],
      [4, 64, 172],
      [8, 14336, 64],
    ];
    const variants: [string, number][] = [
      ["auto", MatmulKernel.AUTO],
      ["cublas", MatmulKernel.CUBLAS],
      ["skinny", MatmulKernel.SKINNY],
      ["simple", MatmulKernel.SIMPLE],
      ["gemv", MatmulKernel.GEMV],
    ];
    for (const [n, inDim, outDim] of shapes) {
      const w = toBf16(randn(outDim * inDim, 7 + inDim, 0.05));
      const x = randn(n * inDim, 8 + outDim);
      // The GPU multiplies bf16-rounded x: compare against the CPU on the same rounding too,
      // which isolates the kernel (tight tolerance) from the input rounding (loose one).
      const ref = ops.matmul(w, x, n, inDim, outDim, { wdtype: DType.BF16, backend: CPU });
      const refRounded = ops.matmul(w, bf16Round(x), n, inDim, outDim, {
        wdtype: DType.BF16,
        backend: CPU,
      });
      for (const [vname, v] of variants) {
        const y = withKernel(
          "matmul",
          v,
          () => ops.matmul(w, x, n, inDim, outDim, { wdtype: DType.BF16, backend: GPU }),
        );
        const shape = `${vname} n ${n} in ${inDim} out ${outDim}`;
        f.push(check("matmul", `${shape} vs bf16(x)`, relError(y, refRounded), 1e-5));
        f.push(check("matmul", `${shape} vs f32 x`, relError(y, ref), 4e-3));
      }
    }
    // F32 weights are stored as bf16 by the CUDA engine: a looser bound.
    const w32 = randn(200 * 300, 9, 0.05);
    const x32 = randn(6 * 300, 10);
    const a = ops.matmul(w32, x32, 6, 300, 200, { backend: CPU });
    const b = ops.matmul(w32, x32, 6, 300, 200, { backend: GPU });
    f.push(
      check(
        "matmul",
        "auto F32 weights (rounded to bf16) n 6 in 300 out 200",
        relError(b, a),
        8e-3,
      ),
    );
    assertAll(f);
  },
});

Deno.test({
  name: "attention() on CUDA matches the CPU for flash, decode and generic kernels",
  ignore,
  fn() {
    const f: (string | null)[] = [];
    // [n, T, H, Hkv, d, qPos0, qScale, outlier]: outlier > 0 scales key row 700 of every head
    // by that much (a score far above the first key tile's maximum: the Hopper kernel's
    // key-norm bound must then keep the running maxima, or P overflows).
    const cases: [number, number, number, number, number, number, number, number?][] = [
      [70, 70, 32, 8, 128, 0, 1], // one causal chunk, partial tiles
      [130, 500, 32, 8, 128, 370, 1], // chunk at the end of a longer cache
      [1, 1000, 32, 8, 128, 999, 1], // decode
      [5, 1000, 16, 2, 128, 995, 3], // G = 8, sharper softmax
      [4, 10, 4, 4, 128, 20, 1], // queries past the end see every key; G = 1
      [200, 300, 8, 4, 64, 100, 1], // d = 64
      [40, 60, 8, 4, 8, 20, 1], // stories260K head size
      [3, 4097, 8, 2, 128, 4094, 1], // decode over several splits
      [300, 1100, 8, 2, 128, 777, 1], // several key tiles, unaligned chunk start, G = 4
      [400, 1000, 8, 2, 128, 600, 1, 100], // an outlier key after the first tile
      [260, 900, 8, 4, 128, 640, 2.5], // bound near the margin: some warps keep their maxima
    ];
    const variants: [string, number][] = [
      ["auto", AttentionKernel.AUTO],
      ["flash", AttentionKernel.FLASH],
      ["flash2", AttentionKernel.FLASH2],
      ["decode", AttentionKernel.DECODE],
      ["generic", AttentionKernel.GENERIC],
      // Hopper wgmma kernel (head_dim 128 on sm_90; elsewhere it falls back like auto).
      ["wgmma", AttentionKernel.WGMMA],
    ];
    let seed = 100;
    for (const [n, T, H, Hkv, d, qPos0, qScale, outlier = 0] of cases) {
      const q = randn(n * H * d, seed++, qScale);
      const kf = randn(T * Hkv * d, seed++);
      if (outlier > 0) {
        kf.subarray(700 * Hkv * d, 701 * Hkv * d).forEach((x, i, a) => a[i] = x * outlier);
      }
      const k = toBf16(kf);
      const v = toBf16(randn(T * Hkv * d, seed++));
      const inputs = { q, k, v, n, T, H, Hkv, d, qPos0, kvDtype: DType.BF16 };
      const ref = ops.attention(inputs, CPU);
      const refRounded = ops.attention({ ...inputs, q: bf16Round(q) }, CPU);
      for (const [vname, variant] of variants) {
        // Flash runs head_dim 64/128 only; other shapes fall back (still checked).
        const got = withKernel("attention", variant, () => ops.attention(inputs, GPU));
        const shape = `${vname} n ${n} T ${T} H ${H}/${Hkv} d ${d} pos0 ${qPos0}` +
          (outlier > 0 ? ` outlier ${outlier}` : "");
        const tol = variant === AttentionKernel.FLASH || variant === AttentionKernel.FLASH2 ||
            variant === AttentionKernel.WGMMA ||
            (variant === AttentionKernel.AUTO && n > 1 && (d === 64 || d === 128))
          ? 1.5e-2
          : 3e-3;
        const lseErr = maxAbsDiff(got.lse2, refRounded.lse2);
        f.push(
          check(
            "attention",
            shape,
            relError(got.out, refRounded.out),
            tol,
            `lse2 max abs ${lseErr.toExponential(2)}`,
          ),
        );
        f.push(check("attn.lse2", shape, lseErr, 2e-2 * qScale));
        f.push(
          check("attention", `${shape} vs f32 q`, relError(got.out, ref.out), tol + 8e-3 * qScale),
        );
      }
    }
    assertAll(f);
  },
});

Deno.test({
  name: "swiglu() on CUDA matches the CPU",
  ignore,
  fn() {
    const g = randn(10007, 20, 4);
    const u = randn(10007, 21, 2);
    const a = ops.swiglu(g, u, CPU);
    const b = ops.swiglu(g, u, GPU);
    assertAll([check("swiglu", "n 10007", relError(b, a), 2e-6)]);
  },
});

Deno.test({
  name: "merge() on CUDA matches the CPU, including empty (−∞) sides",
  ignore,
  fn() {
    const n = 64, d = 128;
    const o1 = randn(n * d, 30), o2 = randn(n * d, 31);
    const l1 = randn(n, 32, 3), l2 = randn(n, 33, 3);
    l1[1] = -Infinity;
    l2[2] = -Infinity;
    l1[3] = -Infinity, l2[3] = -Infinity;
    o1.fill(NaN, 1 * d, 2 * d); // an empty side's output must not leak through
    const a = ops.merge(o1, l1, o2, l2, n, d, CPU);
    const b = ops.merge(o1, l1, o2, l2, n, d, GPU);
    const f = [check("merge", `n ${n} d ${d} out`, relError(b.out, a.out), 1e-6)];
    const finite = (x: Float32Array) => Array.from(x).map((v) => (Number.isFinite(v) ? v : -1e30));
    f.push(check("merge", `n ${n} lse`, maxAbsDiff(finite(b.lse), finite(a.lse)), 1e-5));
    assertEquals(b.lse[3], -Infinity);
    assertAll(f);
  },
});

Deno.test({
  name: "gpuSample() is greedy like the CPU and draws from the top-k/top-p distribution",
  ignore,
  fn() {
    const f: (string | null)[] = [];
    // Greedy: every row equals the CPU's first maximum (ties included).
    const rows = 8, vocab = 128256;
    const logits = randn(rows * vocab, 40, 3);
    logits[5 * vocab + 77] = 50, logits[5 * vocab + 78] = 50; // a tie: the first wins
    const greedy = gpuSample(logits, rows, vocab, { temperature: 0, topK: 0, topP: 1 });
    let wrong = 0;
    for (let i = 0; i < rows; i++) {
      const row = logits.slice(i * vocab, (i + 1) * vocab);
      const cpu = sample(
        row,
        { temperature: 0, topK: 0, topP: 1, nLogprobs: 0 },
        new BigUint64Array([1n]),
      );
      if (cpu.token !== greedy[i]) wrong++;
    }
    f.push(check("sample", `greedy ${rows} x ${vocab} (rows differing)`, wrong, 0));
    assertEquals(greedy[5], 77);

    // Temperature + top-k + top-p: with stratified draws u_i = (i + ½)/N the histogram
    // equals N·p up to one count per token, and nothing outside the kept set is drawn.
    const V = 60, N = 6000, temp = 0.7, topK = 25, topP = 0.8;
    const base = randn(V, 41, 2);
    const many = new Float32Array(N * V);
    for (let i = 0; i < N; i++) many.set(base, i * V);
    const u = Float32Array.from({ length: N }, (_, i) => (i + 0.5) / N);
    const drawn = gpuSample(many, N, V, { temperature: temp, topK, topP }, u);
    // float64 reference distribution
    const x = Array.from(base, (l) => l / temp);
    const order = x.map((v, i) => [v, i] as [number, number]).sort((a, b) =>
      b[0] - a[0] || a[1] - b[1]
    );
    const kth = order[topK - 1][0];
    const keptK = x.map((v) => v >= kth);
    const mx = order[0][0];
    const w = x.map((v, i) => (keptK[i] ? Math.exp(v - mx) : 0));
    const zK = w.reduce((s, v) => s + v, 0);
    let mass = 0, tau = -Infinity;
    for (const [v] of order) {
      if (v < kth) break;
      mass += Math.exp(v - mx);
      tau = v;
      if (mass >= topP * zK) break;
    }
    const kept = x.map((v, i) => keptK[i] && v >= tau);
    const z = w.reduce((s, v, i) => s + (kept[i] ? v : 0), 0);
    const counts = new Array<number>(V).fill(0);
    for (const t of drawn) counts[t]++;
    let dev = 0, outside = 0;
    for (let i = 0; i < V; i++) {
      const p = kept[i] ? w[i] / z : 0;
      if (!kept[i]) outside += counts[i];
      dev = Math.max(dev, Math.abs(counts[i] - N * p));
    }
    f.push(
      check(
        "sample",
        `T ${temp} top-k ${topK} top-p ${topP}: tokens drawn outside the kept set`,
        outside,
        0,
      ),
    );
    f.push(check("sample", `T ${temp} top-k ${topK} top-p ${topP}: max |count − N·p|`, dev, 2));
    assertAll(f);
  },
});
