/**
 * The engine and sessions on the CPU backend: a tiny random Llama against the float64
 * reference forward pass, the equivalences the KV cache must keep (chunked prefill vs
 * decode, batched vs single decode, truncate, snapshots), aborts, and error reporting.
 * Ends with the real stories260K model against its outside reference.
 */
import {
  assert,
  assertEquals,
  assertLess,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "./_std.ts";
import { fromBf16, maxAbsDiff, randn, sharedModels, skipReason, toBf16 } from "./_util.ts";
import { llamaForwardRef, type LlamaWeights } from "./_ref.ts";
import {
  AttentionMethod,
  Backend,
  decodeStep,
  DType,
  Engine,
  type EngineOptions,
  MagicpigError,
  type ModelConfig,
  Session,
  Status,
  TensorKind,
} from "../ffi/native.ts";
import { bytesOf, errorBuffer } from "../ffi/native.ts";
import { lib } from "../ffi/lib.ts";

const tiny: ModelConfig = {
  n_layers: 2,
  dim: 32,
  n_heads: 4,
  n_kv_heads: 2,
  head_dim: 8,
  ffn_dim: 48,
  vocab_size: 50,
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

const dense = { attention: { method: AttentionMethod.DENSE } };

function randomWeights(c: ModelConfig, seed: number): LlamaWeights {
  const q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  let s = seed * 1000;
  const mat = (rows: number, cols: number) => randn(rows * cols, s++, 1 / Math.sqrt(cols));
  const norm = () => randn(c.dim, s++, 0.1).map((x) => 1 + x);
  return {
    tokenEmbd: randn(c.vocab_size * c.dim, s++),
    outputNorm: norm(),
    output: c.tied_embeddings ? null : mat(c.vocab_size, c.dim),
    layers: Array.from({ length: c.n_layers }, () => ({
      attnNorm: norm(),
      wq: mat(q, c.dim),
      wk: mat(kv, c.dim),
      wv: mat(kv, c.dim),
      wo: mat(c.dim, q),
      ffnNorm: norm(),
      wGate: mat(c.ffn_dim, c.dim),
      wDown: mat(c.dim, c.ffn_dim),
      wUp: mat(c.ffn_dim, c.dim),
    })),
  };
}

/** Loads every tensor (except `skip`) through Engine.loadTensor, then finalizes. */
async function makeEngine(
  c: ModelConfig,
  w: LlamaWeights,
  options: EngineOptions & { skip?: [number, number]; bf16Source?: boolean } = {},
): Promise<Engine> {
  const e = Engine.create(c, { backend: Backend.CPU, ...options });
  const put = (kind: number, layer: number, rows: number, cols: number, data: Float32Array) => {
    if (options.skip && options.skip[0] === kind && options.skip[1] === layer) return;
    const shape = rows === 1 ? [cols] : [rows, cols];
    if (options.bf16Source) e.loadTensor(kind, layer, DType.BF16, shape, toBf16(data));
    else e.loadTensor(kind, layer, DType.F32, shape, data as Float32Array<ArrayBuffer>);
  };
  const q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  put(TensorKind.TOKEN_EMBD, 0, c.vocab_size, c.dim, w.tokenEmbd);
  put(TensorKind.OUTPUT_NORM, 0, 1, c.dim, w.outputNorm);
  if (w.output) put(TensorKind.OUTPUT, 0, c.vocab_size, c.dim, w.output);
  w.layers.forEach((L, l) => {
    put(TensorKind.ATTN_NORM, l, 1, c.dim, L.attnNorm);
    put(TensorKind.WQ, l, q, c.dim, L.wq);
    put(TensorKind.WK, l, kv, c.dim, L.wk);
    put(TensorKind.WV, l, kv, c.dim, L.wv);
    put(TensorKind.WO, l, c.dim, q, L.wo);
    put(TensorKind.FFN_NORM, l, 1, c.dim, L.ffnNorm);
    put(TensorKind.W_GATE, l, c.ffn_dim, c.dim, L.wGate);
    put(TensorKind.W_DOWN, l, c.dim, c.ffn_dim, L.wDown);
    put(TensorKind.W_UP, l, c.ffn_dim, c.dim, L.wUp);
  });
  await e.finalize();
  return e;
}

function tokensOf(n: number, seed: number, vocab = tiny.vocab_size): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7 + seed * 13 + ((i * i) % 5)) % vocab);
}

async function prefill(s: Session, tokens: number[]): Promise<Float32Array<ArrayBuffer>> {
  const logits = new Float32Array(s.engine.config.vocab_size);
  await s.prefill(new Int32Array(tokens), { logits });
  return logits;
}

async function decode(s: Session, token: number): Promise<Float32Array<ArrayBuffer>> {
  const logits = new Float32Array(s.engine.config.vocab_size);
  await decodeStep(s.engine, [s], new Int32Array([token]), logits);
  return logits;
}

async function rejectsWith(
  fn: () => Promise<unknown>,
  status: number,
  includes: string,
): Promise<MagicpigError> {
  const e = (await assertRejects(fn, MagicpigError, includes)) as MagicpigError;
  assertEquals(e.status, status, e.message);
  return e;
}

// ------------------------------------------------------------
// exactness against the float64 reference

const variants: [string, ModelConfig][] = [
  ["interleaved RoPE, untied head", tiny],
  ["rotate-half RoPE, tied head", {
    ...tiny,
    tied_embeddings: true,
    rope: { ...tiny.rope, style: 1 },
  }],
  ["rotate-half RoPE with llama3 scaling", {
    ...tiny,
    rope: {
      theta: 500000,
      style: 1,
      scaling: 1,
      factor: 4,
      low_freq_factor: 1,
      high_freq_factor: 2,
      original_max_position: 16,
    },
  }],
];

for (const [name, c] of variants) {
  Deno.test(`prefill and decode logits of a tiny Llama (${name}) match the float64 reference`, async () => {
    const w = randomWeights(c, 1);
    await using e = await makeEngine(c, w, { prefillChunk: 16 });
    const tokens = tokensOf(44, 2);
    const ref = llamaForwardRef(c, w, tokens);
    await using s = await Session.create(e, dense);
    const got = await prefill(s, tokens.slice(0, 40));
    assertLess(maxAbsDiff(got, ref[39]), 1e-4);
    for (let i = 40; i < 44; i++) assertLess(maxAbsDiff(await decode(s, tokens[i]), ref[i]), 1e-4);
    assertEquals(s.info().nTokens, 44);
  });
}

Deno.test("weights given in BF16 and stored as F32, BF16 or F16 reproduce the reference of the rounded weights", async () => {
  const w = randomWeights(tiny, 3);
  const round = (a: Float32Array) => fromBf16(toBf16(a));
  const rounded: LlamaWeights = {
    tokenEmbd: round(w.tokenEmbd),
    outputNorm: round(w.outputNorm),
    output: w.output && round(w.output),
    layers: w.layers.map((L) => ({
      attnNorm: round(L.attnNorm),
      wq: round(L.wq),
      wk: round(L.wk),
      wv: round(L.wv),
      wo: round(L.wo),
      ffnNorm: round(L.ffnNorm),
      wGate: round(L.wGate),
      wDown: round(L.wDown),
      wUp: round(L.wUp),
    })),
  };
  const tokens = tokensOf(12, 4);
  const ref = llamaForwardRef(tiny, rounded, tokens);
  for (const weightDtype of [DType.F32, DType.BF16, DType.F16]) {
    await using e = await makeEngine(tiny, w, { bf16Source: true, weightDtype });
    assertEquals(e.info().weightDtype, weightDtype);
    await using s = await Session.create(e, dense);
    assertLess(maxAbsDiff(await prefill(s, tokens), ref[11]), 1e-4);
  }
});

Deno.test("loadTensorFile() reads tensors at file offsets like loadTensor() from memory", async () => {
  const c = { ...tiny, tied_embeddings: true };
  const w = randomWeights(c, 20);
  const dir = await Deno.makeTempDir();
  try {
    // One file: a 13-byte header, then every tensor in BF16 (so it is converted on load).
    const parts: [number, number, number[], Uint16Array][] = [];
    const q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
    parts.push([TensorKind.TOKEN_EMBD, 0, [c.vocab_size, c.dim], toBf16(w.tokenEmbd)]);
    parts.push([TensorKind.OUTPUT_NORM, 0, [c.dim], toBf16(w.outputNorm)]);
    w.layers.forEach((L, l) => {
      parts.push([TensorKind.ATTN_NORM, l, [c.dim], toBf16(L.attnNorm)]);
      parts.push([TensorKind.WQ, l, [q, c.dim], toBf16(L.wq)]);
      parts.push([TensorKind.WK, l, [kv, c.dim], toBf16(L.wk)]);
      parts.push([TensorKind.WV, l, [kv, c.dim], toBf16(L.wv)]);
      parts.push([TensorKind.WO, l, [c.dim, q], toBf16(L.wo)]);
      parts.push([TensorKind.FFN_NORM, l, [c.dim], toBf16(L.ffnNorm)]);
      parts.push([TensorKind.W_GATE, l, [c.ffn_dim, c.dim], toBf16(L.wGate)]);
      parts.push([TensorKind.W_DOWN, l, [c.dim, c.ffn_dim], toBf16(L.wDown)]);
      parts.push([TensorKind.W_UP, l, [c.ffn_dim, c.dim], toBf16(L.wUp)]);
    });
    const total = 13 + parts.reduce((a, p) => a + p[3].byteLength, 0);
    const file = new Uint8Array(total);
    const offsets: number[] = [];
    let off = 13;
    for (const p of parts) {
      offsets.push(off);
      file.set(new Uint8Array(p[3].buffer, p[3].byteOffset, p[3].byteLength), off);
      off += p[3].byteLength;
    }
    const path = `${dir}/weights.bin`;
    await Deno.writeFile(path, file);
    await using fromFile = Engine.create(c, { backend: Backend.CPU });
    await Promise.all(
      parts.map((p, i) =>
        fromFile.loadTensorFile(p[0], p[1], DType.BF16, p[2], path, offsets[i], p[3].byteLength)
      ),
    );
    await fromFile.finalize();
    await using fromMemory = await makeEngine(c, w, { bf16Source: true });
    const tokens = tokensOf(9, 5);
    await using a = await Session.create(fromFile, dense);
    await using b = await Session.create(fromMemory, dense);
    assertEquals(await prefill(a, tokens), await prefill(b, tokens));
    await using bad = Engine.create(c, { backend: Backend.CPU });
    await rejectsWith(
      () => bad.loadTensorFile(TensorKind.WQ, 1, DType.BF16, [q, c.dim], path, total - 100, 2048),
      Status.IO,
      'tensor "blk.1.attn_q" from',
    );
    await rejectsWith(
      () => bad.loadTensorFile(TensorKind.WQ, 1, DType.BF16, [q, c.dim], `${dir}/nope`, 0, 2048),
      Status.IO,
      "nope",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ------------------------------------------------------------
// KV-cache equivalences (bit-exact on the CPU backend)

for (const kvDtype of [DType.F32, DType.BF16]) {
  const kvName = kvDtype === DType.F32 ? "F32" : "BF16";

  Deno.test(`chunked prefill gives the same logits as token-by-token decode (${kvName} KV)`, async () => {
    const w = randomWeights(tiny, 5);
    await using e = await makeEngine(tiny, w, { prefillChunk: 3, kvDtype });
    assertEquals(e.info().kvDtype, kvDtype);
    const tokens = tokensOf(11, 6);
    await using a = await Session.create(e, dense);
    await using b = await Session.create(e, dense);
    const la = await prefill(a, tokens);
    await prefill(b, tokens.slice(0, 1));
    let lb = new Float32Array(0);
    for (const t of tokens.slice(1)) lb = await decode(b, t);
    assertEquals(lb, la);
    assertEquals(await decode(a, 9), await decode(b, 9));
    if (kvDtype === DType.BF16) {
      await using f = await makeEngine(tiny, w, { kvDtype: DType.F32 });
      await using c = await Session.create(f, dense);
      assertLess(maxAbsDiff(await prefill(c, tokens), la), 5e-2);
    }
  });
}

Deno.test("a batched decode step of sessions of different lengths equals each session alone", async () => {
  const w = randomWeights(tiny, 7);
  await using e = await makeEngine(tiny, w, { prefillChunk: 4 });
  const prompts = [tokensOf(1, 1), tokensOf(6, 2), tokensOf(13, 3)];
  const next = new Int32Array([3, 17, 42]);
  const batch = await Promise.all(prompts.map(() => Session.create(e, dense)));
  const alone = await Promise.all(prompts.map(() => Session.create(e, dense)));
  for (let i = 0; i < 3; i++) {
    await prefill(batch[i], prompts[i]);
    await prefill(alone[i], prompts[i]);
  }
  const V = tiny.vocab_size;
  for (let step = 0; step < 3; step++) {
    const logits = new Float32Array(3 * V);
    await decodeStep(e, batch, next, logits);
    for (let i = 0; i < 3; i++) {
      assertEquals(logits.slice(i * V, (i + 1) * V), await decode(alone[i], next[i]));
      assertEquals(batch[i].info().nTokens, prompts[i].length + step + 1);
    }
  }
  for (const s of [...batch, ...alone]) await s.close();
});

Deno.test("truncate() then decoding again reproduces the original logits", async () => {
  const w = randomWeights(tiny, 8);
  await using e = await makeEngine(tiny, w, { prefillChunk: 5 });
  await using s = await Session.create(e, dense);
  const tokens = tokensOf(9, 9);
  await prefill(s, tokens);
  const first = await decode(s, 11);
  const second = await decode(s, 12);
  await s.truncate(9);
  assertEquals(s.info().nTokens, 9);
  assertEquals(await decode(s, 11), first);
  await s.truncate(4);
  await prefill(s, tokens.slice(4));
  assertEquals(await decode(s, 11), first);
  assertEquals(await decode(s, 12), second);
  await rejectsWith(() => s.truncate(100), Status.INVALID, 'n "100"');
  await rejectsWith(() => s.truncate(-1), Status.INVALID, 'n "-1"');
});

// ------------------------------------------------------------
// snapshots

Deno.test("save() and load() round-trip a session to identical logits", async () => {
  const w = randomWeights(tiny, 10);
  for (const kvDtype of [DType.F32, DType.BF16]) {
    await using e = await makeEngine(tiny, w, { kvDtype });
    const dir = await Deno.makeTempDir();
    try {
      await using s = await Session.create(e, {
        attention: { method: AttentionMethod.DENSE, lshK: 7, seed: 99n },
      });
      await prefill(s, tokensOf(30, 11));
      const path = `${dir}/s.snap`;
      await s.save(path);
      assertEquals([...Deno.readDirSync(dir)].map((d) => d.name), ["s.snap"], "no .tmp left");
      await using r = await Session.load(e, path);
      const a = s.info(), b = r.info();
      assertEquals(b.nTokens, 30);
      assertEquals([b.method, b.lshK, b.seed], [a.method, 7, 99n]);
      assertEquals(await decode(r, 5), await decode(s, 5));
      await using empty = await Session.create(e, dense);
      await empty.save(`${dir}/empty.snap`);
      await using e2 = await Session.load(e, `${dir}/empty.snap`);
      assertEquals(e2.info().nTokens, 0);
      assertEquals(await prefill(e2, [1, 2]), await prefill(empty, [1, 2]));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("load() refuses a damaged snapshot, another model's snapshot and a non-snapshot", async () => {
  const w = randomWeights(tiny, 12);
  await using e = await makeEngine(tiny, w);
  const dir = await Deno.makeTempDir();
  try {
    await using s = await Session.create(e, dense);
    await prefill(s, tokensOf(20, 13));
    const path = `${dir}/s.snap`;
    await s.save(path);
    const bytes = await Deno.readFile(path);
    for (const at of [20, Math.floor(bytes.length / 2), bytes.length - 3]) {
      const bad = bytes.slice();
      bad[at] ^= 0x10;
      await Deno.writeFile(`${dir}/bad.snap`, bad);
      await rejectsWith(() => Session.load(e, `${dir}/bad.snap`), Status.CORRUPT, "checksum");
    }
    await Deno.writeFile(`${dir}/short.snap`, bytes.slice(0, bytes.length - 100));
    await rejectsWith(() => Session.load(e, `${dir}/short.snap`), Status.CORRUPT, "snapshot");
    await Deno.writeTextFile(`${dir}/text.snap`, "hello, this is not a snapshot at all");
    await rejectsWith(
      () => Session.load(e, `${dir}/text.snap`),
      Status.CORRUPT,
      "not a session snapshot",
    );
    await rejectsWith(() => Session.load(e, `${dir}/missing.snap`), Status.IO, "missing.snap");
    const other = { ...tiny, ffn_dim: 40 };
    await using e2 = await makeEngine(other, randomWeights(other, 1));
    await rejectsWith(
      () => Session.load(e2, path),
      Status.INVALID,
      "ffn_dim is 48, this model has 40",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ------------------------------------------------------------
// aborts

Deno.test("an abort flag set before prefill or decode returns aborted and changes nothing", async () => {
  const w = randomWeights(tiny, 14);
  await using e = await makeEngine(tiny, w);
  await using s = await Session.create(e, dense);
  await prefill(s, tokensOf(5, 1));
  const abort = new Int32Array([1]);
  const e1 = await rejectsWith(
    () => s.prefill(new Int32Array([1, 2, 3]), { abort }),
    Status.ABORTED,
    "aborted",
  );
  assertEquals(e1.code, "aborted");
  assertEquals(s.info().nTokens, 5);
  const logits = new Float32Array(tiny.vocab_size);
  await rejectsWith(
    () => decodeStep(e, [s], new Int32Array([4]), logits, abort),
    Status.ABORTED,
    "aborted",
  );
  assertEquals(s.info().nTokens, 5);
  abort[0] = 0;
  await using t = await Session.create(e, dense);
  await prefill(t, tokensOf(5, 1));
  assertEquals(await decode(s, 4), await decode(t, 4));
});

Deno.test("an abort during a long prefill rolls the session back", async () => {
  const c = { ...tiny, vocab_size: 50 };
  const w = randomWeights(c, 15);
  await using e = await makeEngine(c, w, { prefillChunk: 8 });
  await using s = await Session.create(e, dense);
  await prefill(s, tokensOf(3, 2));
  const abort = new Int32Array(1);
  const timer = setTimeout(() => abort[0] = 1, 30);
  try {
    await rejectsWith(
      () => s.prefill(new Int32Array(tokensOf(16384, 3)), { abort }),
      Status.ABORTED,
      "aborted",
    );
  } finally {
    clearTimeout(timer);
  }
  assertEquals(s.info().nTokens, 3);
  await using t = await Session.create(e, dense);
  await prefill(t, tokensOf(3, 2));
  assertEquals(await decode(s, 7), await decode(t, 7));
});

// ------------------------------------------------------------
// policies (the methods themselves: magicpig_session_test.ts)

Deno.test("non-dense methods decode short prompts like dense and count no offloaded keys", async () => {
  const w = randomWeights(tiny, 16);
  await using e = await makeEngine(tiny, w);
  await using d = await Session.create(e, dense);
  await using m = await Session.create(e, { attention: { denseLayers: [0] } });
  const tokens = tokensOf(10, 4);
  assertEquals(await prefill(m, tokens), await prefill(d, tokens));
  // 10 tokens ≤ sinks + window: no offloaded region, exact attention
  assertEquals(await decode(m, 3), await decode(d, 3));
  const info = m.info();
  assertEquals(info.method, AttentionMethod.MAGICPIG);
  assertEquals([info.lshK, info.lshL, info.seed], [10, 150, 0x5eedn]);
  assertEquals([info.keysOffloaded, info.keysAttended], [0, 0]);
  assertEquals(d.info().keysOffloaded, 0);
  await m.commit();
  assertEquals(m.info().nIndexed, 0);
});

// ------------------------------------------------------------
// errors and lifetimes

Deno.test("finalize() names the first missing tensor", async () => {
  const w = randomWeights(tiny, 17);
  const e1 = await rejectsWith(
    () => makeEngine(tiny, w, { skip: [TensorKind.W_UP, 1] }),
    Status.STATE,
    'tensor "blk.1.ffn_up" (kind W_UP, layer 1) was not loaded',
  );
  assertStringIncludes(e1.message, "Cannot finalize the engine");
  await rejectsWith(
    () => makeEngine(tiny, w, { skip: [TensorKind.OUTPUT, 0] }),
    Status.STATE,
    'tensor "output" (kind OUTPUT) was not loaded',
  );
});

Deno.test("loadTensor() rejects a wrong shape, size, dtype or layer, naming the tensor", () => {
  const e = Engine.create(tiny, { backend: Backend.CPU });
  try {
    const err = assertThrows(
      () => e.loadTensor(TensorKind.WQ, 0, DType.F32, [32, 16], new Float32Array(512)),
      MagicpigError,
      'tensor "blk.0.attn_q" (kind WQ, layer 0) has shape [32, 16], expected [32, 32]',
    ) as MagicpigError;
    assertEquals(err.status, Status.INVALID);
    assertThrows(
      () => e.loadTensor(TensorKind.WK, 1, DType.F32, [16, 32], new Float32Array(100)),
      MagicpigError,
      'tensor "blk.1.attn_k" (kind WK, layer 1) has 400 bytes, expected 2048',
    );
    assertThrows(
      () => e.loadTensor(TensorKind.FFN_NORM, 2, DType.F32, [32], new Float32Array(32)),
      MagicpigError,
      'layer "2"',
    );
    assertThrows(
      () => e.loadTensor(TensorKind.FFN_NORM, 0, 7, [32], new Float32Array(32)),
      MagicpigError,
      'dtype "7"',
    );
  } finally {
    e.close();
  }
  const t = Engine.create({ ...tiny, tied_embeddings: true }, { backend: Backend.CPU });
  assertThrows(
    () => t.loadTensor(TensorKind.OUTPUT, 0, DType.F32, [50, 32], new Float32Array(1600)),
    MagicpigError,
    "tied_embeddings",
  );
  t.close();
});

Deno.test("Engine.create() rejects bad configurations and backends with a named field", () => {
  const bad: [Partial<ModelConfig>, string][] = [
    [{ n_kv_heads: 3 }, "model.n_kv_heads"],
    [{ head_dim: 7 }, "model.head_dim"],
    [{ dim: 0 }, "model.dim"],
    [{ rms_eps: 0 }, "model.rms_eps"],
    [{ rope: { ...tiny.rope, style: 5 } }, "model.rope.style"],
    [
      { rope: { ...tiny.rope, scaling: 1, original_max_position: 0 } },
      "model.rope.original_max_position",
    ],
  ];
  for (const [patch, field] of bad) {
    const e = assertThrows(
      () => Engine.create({ ...tiny, ...patch }),
      MagicpigError,
      field,
    ) as MagicpigError;
    assertEquals(e.status, Status.INVALID);
  }
  assertThrows(() => Engine.create(tiny, { kvDtype: DType.F16 }), MagicpigError, "kv_dtype");
  assertThrows(() => Engine.create(tiny, { prefillChunk: -1 }), MagicpigError, "prefill_chunk");
  const cuda = assertThrows(
    () => Engine.create(tiny, { backend: Backend.CUDA }),
    MagicpigError,
  ) as MagicpigError;
  assert(cuda.status === Status.UNSUPPORTED || cuda.status === Status.NO_DEVICE, cuda.message);
});

Deno.test("sessions and steps reject bad arguments and leave the session as it was", async () => {
  const w = randomWeights(tiny, 18);
  const unfinished = Engine.create(tiny, { backend: Backend.CPU });
  await rejectsWith(() => Session.create(unfinished), Status.STATE, "not finalized");
  await unfinished.close();
  await using e = await makeEngine(tiny, w, { maxBatch: 2 });
  await rejectsWith(
    () => Session.create(e, { attention: { lshK: 17 } }),
    Status.INVALID,
    "attention.lsh_k",
  );
  await rejectsWith(
    () => Session.create(e, { attention: { budget: 2 } }),
    Status.INVALID,
    "attention.budget",
  );
  await rejectsWith(
    () => Session.create(e, { attention: { denseLayers: [0, 5] } }),
    Status.INVALID,
    "attention.dense_layers[1]",
  );
  await using s = await Session.create(e, dense);
  await prefill(s, [1, 2, 3]);
  await rejectsWith(() => s.prefill(new Int32Array([4, 50])), Status.INVALID, 'tokens[1] "50"');
  await rejectsWith(() => s.prefill(new Int32Array([])), Status.INVALID, 'n "0"');
  assertEquals(s.info().nTokens, 3);
  const V = tiny.vocab_size;
  await rejectsWith(
    () => decodeStep(e, [s, s], new Int32Array([1, 2]), new Float32Array(2 * V)),
    Status.INVALID,
    "same session",
  );
  await using t = await Session.create(e, dense);
  await using u = await Session.create(e, dense);
  await rejectsWith(
    () => decodeStep(e, [s, t, u], new Int32Array([1, 2, 3]), new Float32Array(3 * V)),
    Status.INVALID,
    "max_batch",
  );
  await rejectsWith(
    () => decodeStep(e, [s], new Int32Array([-5]), new Float32Array(V)),
    Status.INVALID,
    'tokens[0] "-5"',
  );
  assertEquals(s.info().nTokens, 3);
  await using other = await makeEngine(tiny, w);
  await assertRejects(
    () => decodeStep(other, [s], new Int32Array([1]), new Float32Array(V)),
    Error,
    "another engine",
  );
});

Deno.test("a session outlives its engine's handle and closes idempotently", async () => {
  const w = randomWeights(tiny, 19);
  const e = await makeEngine(tiny, w);
  const s = await Session.create(e, dense);
  await prefill(s, [1, 2, 3, 4]);
  await e.close();
  await e.close();
  assertEquals(s.info().nTokens, 4);
  assert(s.info().hostKvBytes > 0n);
  await s.close();
  await s.close();
  assert(s.closed);
});

Deno.test("initRandom() is deterministic for a seed and info() reports the CPU engine", async () => {
  const make = async (seed: bigint) => {
    const e = Engine.create(tiny, { backend: Backend.CPU });
    await e.initRandom(seed, 0.05);
    await e.finalize();
    return e;
  };
  const logits: Float32Array[] = [];
  for (const seed of [1n, 1n, 2n]) {
    await using e = await make(seed);
    await using s = await Session.create(e, dense);
    logits.push(await prefill(s, [1, 2, 3]));
    const info = e.info();
    assertEquals(info.backend, Backend.CPU);
    assertEquals(info.weightDtype, DType.F32);
    const c = tiny;
    const params = 2 * c.vocab_size * c.dim + c.dim +
      c.n_layers * (2 * c.dim + c.dim * c.head_dim * (2 * c.n_heads + 2 * c.n_kv_heads) +
          3 * c.dim * c.ffn_dim);
    assertEquals(info.weightBytes, BigInt(4 * params));
  }
  assertEquals(logits[0], logits[1]);
  assert(maxAbsDiff(logits[0], logits[2]) > 0);
});

// ------------------------------------------------------------
// the real stories260K model (llama2.c checkpoint) against its outside reference

interface Reference {
  prompt_run: {
    prompt_ids: number[];
    generated_ids: number[];
    logits_at_pos4_float32: number[];
  };
  bos_only_256: { prompt_ids: number[]; generated_ids: number[] };
}

async function loadStories(dir: string): Promise<Engine> {
  const path = `${dir}/stories260K/stories260K.bin`;
  const bytes = await Deno.readFile(path);
  const hdr = new Int32Array(bytes.buffer, 0, 7);
  const [dim, hidden, nLayers, nHeads, nKv, vocabRaw, seqLen] = Array.from(hdr);
  const vocab = Math.abs(vocabRaw);
  const headDim = dim / nHeads;
  const config: ModelConfig = {
    n_layers: nLayers,
    dim,
    n_heads: nHeads,
    n_kv_heads: nKv,
    head_dim: headDim,
    ffn_dim: hidden,
    vocab_size: vocab,
    max_context: seqLen,
    rms_eps: 1e-5,
    tied_embeddings: vocabRaw > 0,
    rope: { ...tiny.rope, theta: 10000, style: 0 },
  };
  const e = Engine.create(config, { backend: Backend.CPU });
  let off = 28;
  const next = (count: number) => {
    const a = new Float32Array(bytes.buffer.slice(off, off + count * 4));
    off += count * 4;
    return a;
  };
  const perLayer = (kind: number, rows: number, cols: number) => {
    for (let l = 0; l < nLayers; l++) {
      e.loadTensor(kind, l, DType.F32, rows === 1 ? [cols] : [rows, cols], next(rows * cols));
    }
  };
  e.loadTensor(TensorKind.TOKEN_EMBD, 0, DType.F32, [vocab, dim], next(vocab * dim));
  perLayer(TensorKind.ATTN_NORM, 1, dim);
  perLayer(TensorKind.WQ, nHeads * headDim, dim);
  perLayer(TensorKind.WK, nKv * headDim, dim);
  perLayer(TensorKind.WV, nKv * headDim, dim);
  perLayer(TensorKind.WO, dim, nHeads * headDim);
  perLayer(TensorKind.FFN_NORM, 1, dim);
  perLayer(TensorKind.W_GATE, hidden, dim);
  perLayer(TensorKind.W_DOWN, dim, hidden);
  perLayer(TensorKind.W_UP, hidden, dim);
  e.loadTensor(TensorKind.OUTPUT_NORM, 0, DType.F32, [dim], next(dim));
  await e.finalize();
  return e;
}

const storiesSkip = skipReason("the stories260K reference test");

Deno.test({
  name: "stories260K reproduces the reference logits and greedy tokens",
  ignore: storiesSkip !== null,
  fn: async () => {
    const dir = sharedModels!;
    const ref = JSON.parse(
      await Deno.readTextFile(`${dir}/reference/stories260K_reference.json`),
    ) as Reference;
    await using e = await loadStories(dir);
    const V = e.config.vocab_size;
    const greedyRun = async (
      prompt: number[],
      steps: number,
      check?: (l: Float32Array) => void,
    ) => {
      await using s = await Session.create(e, dense);
      let logits = await prefill(s, prompt);
      check?.(logits);
      const out: number[] = [];
      for (let i = 0; i < steps; i++) {
        let best = 0;
        for (let j = 1; j < V; j++) if (logits[j] > logits[best]) best = j;
        out.push(best);
        if (i + 1 < steps) logits = await decode(s, best);
      }
      return out;
    };
    const run = ref.prompt_run;
    const got = await greedyRun(run.prompt_ids, run.generated_ids.length, (l) => {
      assertLess(maxAbsDiff(l, run.logits_at_pos4_float32), 1e-4);
    });
    assertEquals(got, run.generated_ids);
    const bos = ref.bos_only_256;
    assertEquals(await greedyRun(bos.prompt_ids, bos.generated_ids.length), bos.generated_ids);
  },
});

// ------------------------------------------------------------
// the three-call decode (mp_decode_submit / wait / finish) that decodeStep uses

Deno.test("mp_decode_submit/wait/finish give mp_decode_step's logits, errors and state checks", async () => {
  const w = randomWeights(tiny, 14);
  await using e = await makeEngine(tiny, w);
  await using a = await Session.create(e, dense);
  await using b = await Session.create(e, dense);
  const prompt = tokensOf(12, 14);
  await prefill(a, prompt);
  await prefill(b, prompt);
  const L = lib();
  const err = errorBuffer();
  const text = () => new TextDecoder().decode(err.subarray(0, err.indexOf(0)));
  const ptrs = (ss: Session[]) =>
    bytesOf(BigUint64Array.from(ss.map((s) => BigInt(Deno.UnsafePointer.value(s.pointer)))));
  // nothing in flight: finish refuses, wait returns at once
  assertEquals(L.mp_decode_finish(e.pointer, err, BigInt(err.length)), Status.STATE);
  assertStringIncludes(text(), "mp_decode_submit");
  for (const token of [3, 9, 27]) {
    const one = new Float32Array(tiny.vocab_size), three = new Float32Array(tiny.vocab_size);
    const tok = new Int32Array([token]);
    assertEquals(
      await L.mp_decode_step_async(e.pointer, ptrs([a]), 1, tok, one, null, err, 1024n),
      Status.OK,
    );
    assertEquals(L.mp_decode_submit(e.pointer, ptrs([b]), 1, tok, three, null, err, 1024n), 0);
    // a second submit while one is in flight is refused and leaves it alone
    assertEquals(
      L.mp_decode_submit(e.pointer, ptrs([a]), 1, tok, one, null, err, 1024n),
      Status.STATE,
    );
    assertStringIncludes(text(), "already in flight");
    assertEquals(await L.mp_decode_wait_async(e.pointer), Status.OK);
    assertEquals(L.mp_decode_finish(e.pointer, err, BigInt(err.length)), Status.OK, text());
    assertEquals(three, one);
  }
  assertEquals(b.info().nTokens, 15);
  // a failing step reports at finish, as mp_decode_step does, and changes no session
  const bad = new Int32Array([tiny.vocab_size]);
  const lg = new Float32Array(tiny.vocab_size);
  assertEquals(L.mp_decode_submit(e.pointer, ptrs([b]), 1, bad, lg, null, err, 1024n), 0);
  await L.mp_decode_wait_async(e.pointer);
  assertEquals(L.mp_decode_finish(e.pointer, err, BigInt(err.length)), Status.INVALID);
  assertStringIncludes(text(), `${tiny.vocab_size}`);
  assertEquals(b.info().nTokens, 15);
  // and decodeStep (the same three calls) goes on from there
  assertEquals(await decode(b, 5), await decode(a, 5));
});
