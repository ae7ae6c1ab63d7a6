/**
 * `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's shape, with vLLM's
 * `max_model_len`.
 *
 * @module
 */
import type { LLM } from "../engine/llm.ts";
import { HttpError } from "./_http_error.ts";
import type { Handler } from "./_router.ts";

function modelJson(llm: LLM): Record<string, unknown> {
  return {
    id: llm.info.id,
    object: "model",
    created: llm.info.created,
    owned_by: "magicpig-host",
    root: llm.info.path,
    max_model_len: llm.info.maxModelLen,
  };
}

/** `GET /v1/models`: the served model as a one-entry list. */
export function listModels(getLLM: () => LLM): Handler {
  return function listModels() {
    return Response.json({ object: "list", data: [modelJson(getLLM())] });
  };
}

/** `GET /v1/models/{id}`: the served model, or 404. */
export function getModel(getLLM: () => LLM): Handler {
  return function getModel(_req, ctx) {
    const llm = getLLM();
    if (ctx.params.id !== llm.info.id) {
      throw new HttpError(404, `The model "${ctx.params.id}" does not exist`, {
        param: "model",
        code: "model_not_found",
      });
    }
    return Response.json(modelJson(llm));
  };
}
