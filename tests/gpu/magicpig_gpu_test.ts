/**
 * MagicPIG on the GPU machine: SimHash codes from the CUDA kernel equal the CPU op's
 * (integer-exact where the arithmetic is exact, and wherever the projection is not within
 * rounding of a hyperplane), and MAGICPIG sessions of a CUDA engine — whose sparse layers
 * run the policy on the CPU from the host KV the GPU wrote — decode like dense when the
 * sampler retrieves every key.
 *
 * Runs on a machine with a GPU (`deno task test:gpu`); elsewhere every test is skipped
 * with the reason printed.
 *
 * @module
 */
import { assert, assertEquals, assertLessOrEqual } from "../_std.ts";
import { maxAbsDiff, randn, rng } from "../_util.ts";
import { refCodes } from "../_lsh_ref.ts";
import {
  AttentionMethod,
  Backend,
  decodeStep,
  deviceCount,
  Engine,
  type ModelConfig,
  Session,
} from "../../ffi/native.ts";
import { lshHash, lshProjection } from "../../ffi/lsh.ts";

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
    "skipping MagicPIG GPU tests: mp_device_count() is 0 (no usable CUDA device, or a CPU-only build)",
  );
}

Deno.test({
  name: "lshHash() on CUDA equals the CPU codes bit for bit on exact arithmetic",
  ignore,
  fn() {
    const r = rng(3);
    const ints = (n: number) => Float32Array.from({ length: n }, () => Math.floor(r() * 17) - 8);
    for (const [K, L, d] of [[10, 150, 128], [8, 75, 64], [16, 7, 96], [11, 300, 128]]) {
      const n = 513;
      const R = ints(d * K * L), x = ints(n * d);
      const cpu = lshHash(R, x, n, d, K, L, Backend.CPU);
      const gpu = lshHash(R, x, n, d, K, L, Backend.CUDA);
      assertEquals(gpu, cpu, `K${K}L${L} d${d}`);
      assertEquals(cpu, refCodes(R, x, n, d, K, L).codes);
    }
  },
});

Deno.test({
  name: "lshHash() on CUDA equals the CPU codes on Gaussian data away from the hyperplanes",
  ignore,
  fn() {
    const K = 10, L = 150, d = 128, n = 2048;
    const R = lshProjection(99n, d, K, L);
    const x = randn(n * d, 5);
    const cpu = lshHash(R, x, n, d, K, L, Backend.CPU);
    const gpu = lshHash(R, x, n, d, K, L, Backend.CUDA);
    const { ambiguous } = refCodes(R, x, n, d, K, L, 1e-5);
    let differ = 0;
    for (let i = 0; i < n * L; i++) {
      if (gpu[i] === cpu[i]) continue;
      assert(ambiguous[i] === 1, `code ${i} differs away from a hyperplane`);
      differ++;
    }
    console.log(`codes differing within rounding of a hyperplane: ${differ} of ${n * L}`);
  },
});

const config: ModelConfig = {
  n_layers: 4,
  dim: 128,
  n_heads: 8,
  n_kv_heads: 2,
  head_dim: 16,
  ffn_dim: 256,
  vocab_size: 128,
  max_context: 0,
  rms_eps: 1e-5,
  tied_embeddings: false,
  rope: {
    theta: 10000,
    style: 0,
    scaling: 0,
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position: 8192,
  },
};

Deno.test({
  name: "a MAGICPIG session of a CUDA engine decodes like dense when every key is sampled",
  ignore,
  async fn() {
    console.log("CUDA engine, dense and MAGICPIG K1L1024 sessions of 600 tokens, 4 decode steps");
    await using e = Engine.create(config, { backend: Backend.CUDA });
    await e.initRandom(11n, 0.05);
    await e.finalize();
    const prompt = Int32Array.from({ length: 600 }, (_, i) => (i * 13 + 7) % 128);
    await using d = await Session.create(e, { attention: { method: AttentionMethod.DENSE } });
    await using m = await Session.create(e, { attention: { lshK: 1, lshL: 1024 } });
    await d.prefill(prompt);
    await m.prefill(prompt);
    await m.commit();
    assertEquals(m.info().nIndexed, 600 - 64);
    const a = new Float32Array(2 * config.vocab_size);
    for (let i = 0; i < 4; i++) {
      await decodeStep(e, [d, m], new Int32Array([i, i]), a);
      const dl = a.subarray(0, config.vocab_size), ml = a.subarray(config.vocab_size);
      // the policy attends the host rows in f32 while the dense kernel reads bf16 on the GPU
      assertLessOrEqual(maxAbsDiff(ml, dl), 2e-2, `step ${i}`);
    }
    const info = m.info();
    assert(info.keysOffloaded > 0);
    assertLessOrEqual(info.keysOffloaded - info.keysAttended, 1e-3 * info.keysOffloaded);
  },
});
