import { assertEquals, assertRejects } from "./_std.ts";
import {
  AttentionMethod,
  Backend,
  decodeStep,
  Engine,
  MagicpigError,
  type ModelConfig,
  Session,
} from "../ffi/native.ts";

const cfg: ModelConfig = {
  n_layers: 2,
  dim: 32,
  n_heads: 4,
  n_kv_heads: 2,
  head_dim: 8,
  ffn_dim: 48,
  vocab_size: 50,
  max_context: 0,
  rms_eps: 1e-5,
  tied_embeddings: true,
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

const dense = { attention: { method: AttentionMethod.DENSE } };

async function engine(): Promise<Engine> {
  const e = Engine.create(cfg, { backend: Backend.CPU });
  await e.initRandom(5n, 0.2);
  await e.finalize();
  return e;
}

async function step(e: Engine, s: Session, t: number): Promise<number[]> {
  const l = new Float32Array(cfg.vocab_size);
  await decodeStep(e, [s], new Int32Array([t]), l);
  return Array.from(l);
}

Deno.test("Session.fork() copies the tokens: the fork decodes exactly like its source", async () => {
  await using e = await engine();
  await using a = await Session.create(e, dense);
  await a.prefill(Int32Array.from({ length: 40 }, (_, i) => (i * 7) % cfg.vocab_size));
  await using b = await a.fork();
  assertEquals(b.info().nTokens, 40);
  assertEquals(await step(e, b, 3), await step(e, a, 3));
  assertEquals(a.info().nTokens, 41);
});

Deno.test("Session.fork() with n keeps a prefix and may change the method", async () => {
  await using e = await engine();
  await using a = await Session.create(e, dense);
  const toks = Int32Array.from({ length: 30 }, (_, i) => (i * 11) % cfg.vocab_size);
  await a.prefill(toks);
  await using ref = await Session.create(e, dense);
  await ref.prefill(toks.slice(0, 12));
  await using b = await a.fork({ attention: { method: AttentionMethod.MAGICPIG } }, 12);
  assertEquals(b.info().nTokens, 12);
  assertEquals(b.info().method, AttentionMethod.MAGICPIG);
  await using c = await a.fork(null, 12);
  assertEquals(await step(e, c, 9), await step(e, ref, 9));
  await assertRejects(() => a.fork(null, 31), MagicpigError, "holds 30 tokens");
});
