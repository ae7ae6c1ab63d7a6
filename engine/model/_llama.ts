/**
 * What every llama checkpoint format shares: the tensor plan (engine kind, layer and
 * `[out][in]` shape of each weight) and the upload of tensors that live in files.
 *
 * @module
 */
import { type Engine, type ModelConfig, TensorKind } from "../../ffi/native.ts";

/** One weight the engine needs: its name in the file, engine kind, layer and shape. */
export interface TensorPlanEntry {
  name: string;
  kind: number;
  layer: number;
  shape: number[];
}

/** The names of the tensors a llama model has, with their engine kinds and shapes. */
export function llamaTensorPlan(
  c: ModelConfig,
  names: {
    embd: string;
    outNorm: string;
    out: string;
    layer: (i: number, part: LayerPart) => string;
  },
): TensorPlanEntry[] {
  const q = c.n_heads * c.head_dim;
  const kv = c.n_kv_heads * c.head_dim;
  const plan: TensorPlanEntry[] = [
    { name: names.embd, kind: TensorKind.TOKEN_EMBD, layer: 0, shape: [c.vocab_size, c.dim] },
    { name: names.outNorm, kind: TensorKind.OUTPUT_NORM, layer: 0, shape: [c.dim] },
  ];
  if (!c.tied_embeddings) {
    plan.push({ name: names.out, kind: TensorKind.OUTPUT, layer: 0, shape: [c.vocab_size, c.dim] });
  }
  for (let l = 0; l < c.n_layers; l++) {
    const parts: [LayerPart, number, number[]][] = [
      ["attn_norm", TensorKind.ATTN_NORM, [c.dim]],
      ["wq", TensorKind.WQ, [q, c.dim]],
      ["wk", TensorKind.WK, [kv, c.dim]],
      ["wv", TensorKind.WV, [kv, c.dim]],
      ["wo", TensorKind.WO, [c.dim, q]],
      ["ffn_norm", TensorKind.FFN_NORM, [c.dim]],
      ["w_gate", TensorKind.W_GATE, [c.ffn_dim, c.dim]],
      ["w_down", TensorKind.W_DOWN, [c.dim, c.ffn_dim]],
      ["w_up", TensorKind.W_UP, [c.ffn_dim, c.dim]],
    ];
    for (const [part, kind, shape] of parts) {
      plan.push({ name: names.layer(l, part), kind, layer: l, shape });
    }
  }
  return plan;
}

/** The per-layer tensors of a llama block. */
export type LayerPart =
  | "attn_norm"
  | "wq"
  | "wk"
  | "wv"
  | "wo"
  | "ffn_norm"
  | "w_gate"
  | "w_down"
  | "w_up";

/** One tensor to upload: engine kind/layer/shape and where its bytes are. */
export interface TensorLoad {
  name: string;
  kind: number;
  layer: number;
  shape: number[];
  dtype: number;
  path: string;
  offset: number;
  nbytes: number;
}

/**
 * Uploads `loads` into `engine` through the native file reader (queued in order on the
 * engine). A failure names the tensor.
 */
export async function uploadTensors(engine: Engine, loads: readonly TensorLoad[]): Promise<void> {
  await Promise.all(
    loads.map((t) =>
      engine.loadTensorFile(t.kind, t.layer, t.dtype, t.shape, t.path, t.offset, t.nbytes)
        .catch((e) => {
          throw new Error(`tensor "${t.name}": ${e instanceof Error ? e.message : e}`, {
            cause: e,
          });
        })
    ),
  );
}
