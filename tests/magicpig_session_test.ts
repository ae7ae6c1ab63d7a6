/**
 * MagicPIG in sessions (cuda/engine/policy.cpp): commit builds the per-layer LSH indexes
 * over [sinks, n − window), decode merges exact sinks + local tokens with the sampled
 * offloaded region, the generation buffer flushes into the index, the keys fraction is
 * counted, snapshots keep the index, and the TopK/Quest/oracle baselines run on sparse
 * layers. A random model of a small shape on the CPU backend.
 */
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertLessOrEqual,
  assertRejects,
} from "./_std.ts";
import { maxAbsDiff } from "./_util.ts";
import { tempDir } from "./_tmp.ts";
import {
  AttentionMethod,
  type AttentionOptions,
  Backend,
  decodeStep,
  Engine,
  MagicpigError,
  type ModelConfig,
  Session,
} from "../ffi/native.ts";
import { LshHashing, setKernel } from "../ffi/gpu.ts";

const config: ModelConfig = {
  n_layers: 4, // dense layers {0, 2} by default: layers 1 and 3 are sparse
  dim: 64,
  n_heads: 4,
  n_kv_heads: 2,
  head_dim: 16,
  ffn_dim: 96,
  vocab_size: 64,
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
const SPARSE_LAYERS = 2;

let engineCache: Promise<Engine> | null = null;
function engine(): Promise<Engine> {
  engineCache ??= (async () => {
    const e = Engine.create(config, { backend: Backend.CPU });
    await e.initRandom(7n, 0.5);
    await e.finalize();
    return e;
  })();
  return engineCache;
}

function tokens(n: number, seed: number): Int32Array<ArrayBuffer> {
  return Int32Array.from({ length: n }, (_, i) => (i * 7 + seed * 13 + ((i * i) % 11)) % 64);
}

async function session(attention: AttentionOptions, prompt: Int32Array<ArrayBuffer>) {
  const s = await Session.create(await engine(), { attention });
  await s.prefill(prompt);
  return s;
}

async function step(s: Session, token: number): Promise<Float32Array<ArrayBuffer>> {
  const logits = new Float32Array(config.vocab_size);
  await decodeStep(s.engine, [s], new Int32Array([token]), logits);
  return logits;
}

const dense: AttentionOptions = { method: AttentionMethod.DENSE };

Deno.test("commit() indexes [sinks, n − window) of every sparse layer and reports its bytes", async () => {
  const K = 8, L = 50, n = 600;
  await using s = await session({ lshK: K, lshL: L }, tokens(n, 1));
  assertEquals(s.info().nIndexed, 0);
  await s.commit();
  const info = s.info();
  assertEquals(info.nIndexed, n - 64);
  const m = n - 64 - 4; // indexed tokens per layer
  const entries = SPARSE_LAYERS * 2 * L * m * 2;
  const offsets = SPARSE_LAYERS * 2 * L * ((1 << K) + 1) * 4;
  const norms = SPARSE_LAYERS * 2 * (m + 16) * 4;
  assertEquals(Number(info.hostIndexBytes), entries + offsets + norms);
  // committing again without new tokens changes nothing
  await s.commit();
  assertEquals(s.info().nIndexed, n - 64);
});

Deno.test("MAGICPIG decode counts sampled and offloaded keys per sparse layer and head", async () => {
  const n = 500;
  await using s = await session({ lshK: 6, lshL: 40 }, tokens(n, 2));
  await s.commit();
  await step(s, 5);
  const info = s.info();
  const E = n - 64;
  assertEquals(info.keysOffloaded, SPARSE_LAYERS * config.n_heads * (E - 4));
  assert(info.keysAttended > 0 && info.keysAttended < info.keysOffloaded, `${info.keysAttended}`);
});

Deno.test("a decode batch of MAGICPIG sessions with their own K and L gives each row its logits alone", async () => {
  // lsh::attention batches indexes of one padded table count: the policy splits the batch
  // by L (rows interleaved: L 40, 24, 40, each with its own K).
  const kinds: AttentionOptions[] = [{ lshK: 6, lshL: 40 }, { lshK: 8, lshL: 24 }, {
    lshK: 4,
    lshL: 40,
  }];
  const batch: Session[] = [], alone: Session[] = [];
  try {
    for (let i = 0; i < kinds.length; i++) {
      for (const list of [batch, alone]) {
        const s = await session(kinds[i], tokens(300 + 50 * i, 7 + i));
        await s.commit();
        list.push(s);
      }
    }
    const V = config.vocab_size;
    for (let t = 0; t < 3; t++) {
      const next = Int32Array.from(kinds, (_, i) => (t * 5 + i * 11) % V);
      const logits = new Float32Array(kinds.length * V);
      await decodeStep(batch[0].engine, batch, next, logits);
      for (let i = 0; i < kinds.length; i++) {
        assertEquals(logits.slice(i * V, (i + 1) * V), await step(alone[i], next[i]), `row ${i}`);
        assertEquals(batch[i].info().keysAttended, alone[i].info().keysAttended, `row ${i} keys`);
      }
    }
  } finally {
    for (const s of [...batch, ...alone]) await s.close();
  }
});

Deno.test("short prompts (≤ sinks + window) decode exactly like dense", async () => {
  const p = tokens(40, 3);
  await using m = await session({}, p);
  await using d = await session(dense, p);
  await m.commit();
  assertEquals(m.info().nIndexed, 0);
  for (let i = 0; i < 5; i++) assertEquals(await step(m, i), await step(d, i));
  assertEquals([m.info().keysAttended, m.info().keysOffloaded], [0, 0]);
});

Deno.test("a sampler that retrieves every key (K1L1024) decodes like dense", async () => {
  const p = tokens(400, 4);
  await using m = await session({ lshK: 1, lshL: 1024 }, p);
  await using d = await session(dense, p);
  await m.commit();
  for (let i = 0; i < 4; i++) {
    const a = await step(m, i), b = await step(d, i);
    // u = 1 to float precision: only the −ln(1 + ε) shift of the sampled part remains
    assertLessOrEqual(maxAbsDiff(a, b), 1e-3);
  }
  const info = m.info();
  assertLessOrEqual(info.keysOffloaded - info.keysAttended, 1e-3 * info.keysOffloaded);
});

/** E, the end of the offloaded region, from the keys-offloaded count one step added. */
function regionEnd(before: number, after: number, S = 4): number {
  return (after - before) / (SPARSE_LAYERS * config.n_heads) + S;
}

Deno.test("the generation buffer flushes its oldest tokens into the index", async () => {
  const W = 8, gb = 16;
  await using s = await session({ lshK: 6, lshL: 40, window: W, genBuffer: gb }, tokens(100, 5));
  await s.commit();
  assertEquals(s.info().nIndexed, 92);
  let flushes = 0, last = 92;
  for (let i = 0; i < 60; i++) {
    const before = s.info().keysOffloaded;
    await step(s, i % 64);
    const { nTokens, keysOffloaded, nIndexed } = s.info();
    const E = regionEnd(before, keysOffloaded);
    assertLessOrEqual(nTokens - E, W + gb, "the local region never overflows");
    if (E !== last) {
      assertEquals(E, nTokens - W, "a flush keeps the last window exact");
      flushes++;
      last = E;
    }
    assertEquals(nIndexed, 92, "n_indexed is the last commit's boundary");
  }
  assert(flushes >= 2, `${flushes} flushes`);
  await s.commit();
  assertEquals(
    s.info().nIndexed,
    s.info().nTokens - W,
    "a commit makes the flushed tokens permanent",
  );
  // a long prompt that was never committed is indexed at its first decode step
  await using u = await session({ lshK: 6, lshL: 40, window: W, genBuffer: gb }, tokens(200, 6));
  await step(u, 1);
  assertEquals(regionEnd(0, u.info().keysOffloaded), 201 - W);
  assertEquals(u.info().nIndexed, 0);
});

Deno.test("a turn truncated away after flushes leaves the index as the commit left it", async () => {
  // the session manager's forked turns: generate past window + gen_buffer, then roll back
  const attention = { lshK: 6, lshL: 40, window: 4, genBuffer: 4, sinks: 2 };
  for (const commitFirst of [true, false]) {
    await using s = await session(attention, tokens(300, 10));
    if (commitFirst) await s.commit();
    const n = s.info().nTokens;
    const run = async () => {
      const out: number[][] = [];
      let t = 1;
      for (let i = 0; i < 32; i++) {
        const l = await step(s, t);
        out.push(Array.from(l));
        t = l.indexOf(Math.max(...l));
      }
      return out;
    };
    const first = await run();
    await s.truncate(n);
    assertEquals(s.info().nTokens, n);
    const second = await run();
    assertEquals(second, first, `identical after the rollback (commit first: ${commitFirst})`);
  }
});

Deno.test("truncate() refuses to cut into the indexed tokens; a fork is indexed by its own commit", async () => {
  await using s = await session({ lshK: 6, lshL: 40 }, tokens(300, 7));
  await s.commit();
  await using f = await s.fork();
  assertEquals(f.info().nIndexed, 0);
  await f.commit();
  assertEquals(f.info().nIndexed, s.info().nIndexed);
  assertEquals(await step(f, 3), await step(s, 3), "same tokens, same index: same logits");
  const e = await assertRejects(() => s.truncate(100), MagicpigError);
  assert(e.message.includes('"100"'), e.message);
  await s.truncate(s.info().nIndexed);
  assertEquals(s.info().nTokens, s.info().nIndexed);
});

Deno.test("a snapshot keeps the LSH index: the restored session decodes bit for bit the same", async () => {
  // a flushed tail and merged blocks both travel
  await using s = await session({ lshK: 6, lshL: 40, window: 8, genBuffer: 16 }, tokens(700, 8));
  await s.commit();
  for (let i = 0; i < 30; i++) await step(s, i);
  const path = `${await tempDir("mpsnap")}/s.snap`;
  await s.save(path);
  await using r = await Session.load(s.engine, path);
  const a = s.info(), b = r.info();
  assertEquals([b.nTokens, b.nIndexed], [a.nTokens, a.nIndexed]);
  // bytes count allocations: the restored index is compacted (no growth slack)
  assert(b.hostIndexBytes > 0n && b.hostIndexBytes <= a.hostIndexBytes);
  assertEquals([b.keysAttended, b.keysOffloaded], [a.keysAttended, a.keysOffloaded]);
  for (let i = 0; i < 3; i++) assertEquals(await step(r, i), await step(s, i));
});

// mp_gpu_set_kernel("lsh") exists in builds with the CUDA backend compiled in (no GPU needed).
const lshSwitch = (() => {
  try {
    setKernel("lsh", LshHashing.AUTO);
    return true;
  } catch {
    return false;
  }
})();

Deno.test({
  name:
    "an index built from precomputed codes (the GPU's path) equals the CPU-hashed one byte for byte",
  ignore: !lshSwitch,
  async fn() {
    // three commits: a first build (codes used in place), a short turn (codes transposed into
    // the tail) and a long one (tail + codes merged into the blocks)
    const dir = await tempDir("mpcodes");
    await using base = await session(dense, tokens(700, 10));
    const files: Uint8Array[] = [];
    const logits: Float32Array[] = [];
    try {
      for (const mode of [LshHashing.CPU, LshHashing.CPU_CODES]) {
        await using f = await base.fork({ attention: { lshK: 10, lshL: 150 } });
        setKernel("lsh", mode);
        await f.commit();
        await f.prefill(tokens(300, 11));
        await f.commit();
        await f.prefill(tokens(4000, 12));
        await f.commit();
        setKernel("lsh", LshHashing.AUTO);
        assertEquals(f.info().nIndexed, 5000 - 64);
        await f.save(`${dir}/${mode}.snap`);
        files.push(await Deno.readFile(`${dir}/${mode}.snap`));
        logits.push(await step(f, 3));
      }
    } finally {
      setKernel("lsh", LshHashing.AUTO);
    }
    assertEquals(files[1].length, files[0].length);
    assert(files[1].every((b, i) => b === files[0][i]), "the snapshots differ");
    assertEquals(logits[1], logits[0]);
  },
});

Deno.test({
  name: "prefill with commit (the index built beside the prefill) equals prefill, then commit",
  ignore: !lshSwitch,
  async fn() {
    // CPU_CODES runs the build beside the prefill on a CPU engine too (a thread that waits
    // for each layer's keys); AUTO on a CPU engine commits after the prefill.
    const dir = await tempDir("mpprefillcommit");
    const attention = { lshK: 8, lshL: 40, window: 16 };
    const prompt = tokens(1500, 14);
    const snap = async (s: Session, name: string) => {
      await s.save(`${dir}/${name}.snap`);
      return await Deno.readFile(`${dir}/${name}.snap`);
    };
    try {
      for (const mode of [LshHashing.CPU_CODES, LshHashing.AUTO]) {
        setKernel("lsh", mode);
        await using ref = await session(attention, prompt);
        await ref.commit();
        const want = await snap(ref, `ref-${mode}`);
        // one call, with logits; then a prompt in two calls (the first without commit)
        await using one = await Session.create(await engine(), { attention });
        const logits = new Float32Array(config.vocab_size);
        await one.prefill(prompt, { logits, commit: true });
        assertEquals(one.info().nIndexed, 1500 - 16);
        assertEquals(await snap(one, `one-${mode}`), want, `mode ${mode}: one call`);
        await using two = await Session.create(await engine(), { attention });
        await two.prefill(prompt.slice(0, 700));
        await two.prefill(prompt.slice(700), { commit: true });
        assertEquals(await snap(two, `two-${mode}`), want, `mode ${mode}: two calls`);
        assertEquals(await step(two, 5), await step(ref, 5));
        // a later turn: the first build is done, the commit indexes the new tokens
        await two.prefill(tokens(200, 15), { commit: true });
        await ref.prefill(tokens(200, 15));
        await ref.commit();
        assertEquals(two.info().nIndexed, ref.info().nIndexed);
        assertEquals(await step(two, 6), await step(ref, 6));
      }
    } finally {
      setKernel("lsh", LshHashing.AUTO);
    }
  },
});

Deno.test({
  name: "an aborted prefill with commit leaves the session as before, and it can be redone",
  ignore: !lshSwitch,
  async fn() {
    // The abort lands somewhere in the call (before the build beside the prefill starts,
    // while it waits for the last chunk's layers, after some of them): either the call
    // completed and committed, or nothing changed. The delays are fractions of the
    // uninterrupted call's time on this machine.
    const attention = { lshK: 8, lshL: 40, window: 16 };
    const prompt = tokens(4000, 16);
    setKernel("lsh", LshHashing.CPU_CODES);
    try {
      await using ref = await Session.create(await engine(), { attention });
      const t0 = performance.now();
      await ref.prefill(prompt, { commit: true });
      const full = performance.now() - t0;
      for (const part of [0, 0.3, 0.85, 0.95, 0.99]) {
        const delayMs = Math.round(part * full);
        await using s = await Session.create(await engine(), { attention });
        const abort = new Int32Array(1);
        const timer = setTimeout(() => abort[0] = 1, delayMs);
        let aborted = false;
        try {
          await s.prefill(prompt, { abort, commit: true });
        } catch (e) {
          assert(e instanceof MagicpigError && e.code === "aborted", String(e));
          aborted = true;
        } finally {
          clearTimeout(timer);
        }
        const info = s.info();
        if (aborted) {
          assertEquals([info.nTokens, info.nIndexed, Number(info.hostIndexBytes)], [0, 0, 0]);
        } else {
          assertEquals([info.nTokens, info.nIndexed], [4000, 4000 - 16]);
        }
        console.log(
          `abort after ${delayMs} of ${Math.round(full)} ms: ${
            aborted ? "rolled back" : "completed"
          }`,
        );
      }
      // the same prompt again on a fresh session, uninterrupted: as the reference
      await using again = await Session.create(await engine(), { attention });
      await again.prefill(prompt, { commit: true });
      const want = await step(ref, 7);
      assertEquals(await step(again, 7), want);
      // and as prefill, then commit, with the CPU's own build
      setKernel("lsh", LshHashing.AUTO);
      await using plain = await session(attention, prompt);
      await plain.commit();
      assertEquals(await step(plain, 7), want);
    } finally {
      setKernel("lsh", LshHashing.AUTO);
    }
  },
});

Deno.test("TopK and Quest with budget 1 decode like dense; their keys fraction is the budget", async () => {
  const p = tokens(300, 9);
  await using d = await session(dense, p);
  const want = await step(d, 1);
  for (const method of [AttentionMethod.TOPK, AttentionMethod.QUEST]) {
    await using s = await session({ method, budget: 1 }, p);
    assertLessOrEqual(maxAbsDiff(await step(s, 1), want), 1e-4);
    const info = s.info();
    assertEquals(info.keysAttended, info.keysOffloaded);
    assertEquals(info.keysOffloaded, SPARSE_LAYERS * config.n_heads * (301 - 64 - 4));
  }
  await using t = await session({ method: AttentionMethod.TOPK, budget: 0.1 }, p);
  await step(t, 1);
  const off = 301 - 64 - 4;
  assertAlmostEquals(
    t.info().keysAttended,
    SPARSE_LAYERS * config.n_heads * Math.ceil(0.1 * off),
    0,
  );
  await using o = await session({ method: AttentionMethod.ORACLE, budget: 0.5 }, p);
  const lo = await step(o, 1);
  assert(lo.every(Number.isFinite));
  const oi = o.info();
  assert(oi.keysAttended > 0 && oi.keysAttended <= oi.keysOffloaded);
});
