/**
 * MagicPIG oracle tests, part 1: the hyperplanes and SimHash codes (magicpig.md §4,
 * §18.1). Codes must be integer-exact: equal to a float64 reference wherever the
 * reference's projection is not within rounding of zero, equal everywhere when the
 * arithmetic is exact, and equal to the reference implementation's fp16 packing for K ≤ 11.
 */
import { assert, assertEquals, assertLessOrEqual } from "./_std.ts";
import { randn, rng } from "./_util.ts";
import { fp16Pack, refCodes, RefRng } from "./_lsh_ref.ts";
import { lshHash, lshProjection } from "../ffi/lsh.ts";

Deno.test("lshProjection() draws R[d][K·L] from mp::Rng(seed) in row-major order", () => {
  const d = 8, K = 4, L = 5;
  const R = lshProjection(42n, d, K, L);
  const ref = new RefRng(42n);
  for (let i = 0; i < R.length; i++) {
    const want = Math.fround(ref.normal());
    assertLessOrEqual(Math.abs(R[i] - want), 1e-6 * Math.max(1, Math.abs(want)), `R[${i}]`);
  }
  assertEquals(lshProjection(42n, d, K, L), R, "same seed, same matrix");
  const other = lshProjection(43n, d, K, L);
  assert(other.some((v, i) => v !== R[i]), "another seed draws another matrix");
});

Deno.test("lshProjection() draws standard normal entries", () => {
  const R = lshProjection(7n, 64, 10, 150);
  let s = 0, s2 = 0;
  for (const v of R) {
    s += v;
    s2 += v * v;
  }
  const n = R.length, mean = s / n, variance = s2 / n - mean * mean;
  assertLessOrEqual(Math.abs(mean), 4 / Math.sqrt(n));
  assertLessOrEqual(Math.abs(variance - 1), 4 * Math.sqrt(2 / n));
});

Deno.test("lshHash() equals the reference bit for bit when the arithmetic is exact", () => {
  // Small integers: every partial sum is exact in fp32, so the summation order of the
  // kernel cannot matter and there is no tolerance (zero projections give bit 0).
  const r = rng(1);
  const ints = (n: number, m: number) =>
    Float32Array.from({ length: n }, () => Math.floor(r() * (2 * m + 1)) - m);
  for (
    const [K, L, d] of [[4, 50, 16], [8, 100, 32], [11, 7, 13], [12, 9, 64], [16, 3, 128], [
      10,
      150,
      128,
    ]]
  ) {
    const n = 37;
    const R = ints(d * K * L, 8);
    const x = ints(n * d, 8);
    const got = lshHash(R, x, n, d, K, L);
    const want = refCodes(R, x, n, d, K, L).codes;
    assertEquals(got, want, `K${K}L${L} d${d}`);
  }
});

Deno.test("lshHash() matches the float64 reference except within rounding of a hyperplane", () => {
  for (const [K, L, d] of [[10, 150, 128], [8, 75, 64], [16, 20, 96]]) {
    const n = 200;
    const R = lshProjection(BigInt(K * 1000 + L), d, K, L);
    const x = randn(n * d, K + L);
    const got = lshHash(R, x, n, d, K, L);
    const { codes, ambiguous } = refCodes(R, x, n, d, K, L, 1e-5);
    let amb = 0;
    for (let i = 0; i < n * L; i++) {
      if (ambiguous[i]) {
        amb++;
        continue;
      }
      assertEquals(got[i], codes[i], `K${K}L${L} row ${Math.floor(i / L)} table ${i % L}`);
    }
    // |x·r| ≤ 1e-5·‖x‖‖r‖ has probability ≈ 1e-5·√(2d/π) per bit
    assertLessOrEqual(amb, Math.max(10, n * L * K * 1e-3), "ambiguous codes");
  }
});

Deno.test("lshHash() codes equal the fp16 packing trick for K ≤ 11 and stay exact above", () => {
  const d = 32, n = 300;
  for (const K of [4, 8, 10, 11, 12, 16]) {
    const L = 40;
    const R = lshProjection(BigInt(K), d, K, L);
    const x = randn(n * d, 100 + K);
    const got = lshHash(R, x, n, d, K, L);
    const { codes, ambiguous, proj } = refCodes(R, x, n, d, K, L, 1e-5);
    const packed = fp16Pack(proj, n, K, L);
    let fp16Wrong = 0;
    for (let i = 0; i < n * L; i++) {
      if (ambiguous[i]) continue;
      assertEquals(got[i], codes[i]);
      if (packed[i] !== codes[i]) fp16Wrong++;
    }
    if (K <= 11) assertEquals(fp16Wrong, 0, `fp16 packing is exact for K = ${K}`);
    else assert(fp16Wrong > 0, `fp16 packing rounds some codes for K = ${K}`);
  }
});

Deno.test("lshHash() uses bit j of table t = [x·R[:, t·K + j] > 0], bit 0 least significant", () => {
  // One-hot hyperplanes make each bit the sign of one coordinate.
  const d = 6, K = 3, L = 2;
  const R = new Float32Array(d * K * L);
  for (let c = 0; c < K * L; c++) R[c * K * L + c] = 1; // column c reads x[c]
  const x = Float32Array.from([1, -1, 1, -1, -1, 1]);
  const codes = lshHash(R, x, 1, d, K, L);
  assertEquals(Array.from(codes), [0b101, 0b100]);
});
