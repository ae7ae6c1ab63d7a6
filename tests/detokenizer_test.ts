/**
 * IncrementalDetokenizer over a small SentencePiece-style vocabulary (leading "▁" is a
 * space that decode drops at the start of the text; byte tokens that split UTF-8). The
 * real tokenizers are exercised end to end by `server_test.ts`.
 */
import { assertEquals } from "./_std.ts";
import { IncrementalDetokenizer } from "../engine/detokenizer.ts";

// 0..2 control, 3.. pieces, 100+b: the byte b.
const pieces: Record<number, string> = {
  1: "",
  2: "",
  3: "▁Once",
  4: "▁upon",
  5: ",",
  6: "▁caf",
  7: "▁there",
  8: "\n",
};
function decode(ids: readonly number[]): string {
  const bytes: number[] = [];
  for (const id of ids) {
    if (id >= 100) bytes.push(id - 100);
    else bytes.push(...new TextEncoder().encode(pieces[id].replaceAll("▁", " ")));
  }
  const text = new TextDecoder().decode(new Uint8Array(bytes));
  return text.startsWith(" ") ? text.slice(1) : text; // SentencePiece drops the first space
}

function run(prompt: number[], out: number[], stops: string[] = []) {
  const d = new IncrementalDetokenizer(decode, prompt, stops);
  const deltas = out.map((id) => d.push(id));
  return { deltas: deltas.map((s) => s.text), stopped: d.stopped, tail: d.flush() };
}

Deno.test("IncrementalDetokenizer keeps the leading space of the first generated piece", () => {
  const r = run([1, 3], [4, 5, 7]);
  assertEquals(r.deltas, [" upon", ",", " there"]);
  // From BOS alone the first piece starts the text, without the space.
  assertEquals(run([1], [3, 4]).deltas, ["Once", " upon"]);
});

Deno.test("IncrementalDetokenizer holds back an incomplete UTF-8 character", () => {
  // "é" is C3 A9: two byte tokens.
  const r = run([1, 3], [6, 100 + 0xc3, 100 + 0xa9, 5]);
  assertEquals(r.deltas, [" caf", "", "é", ","]);
  // A stream that ends inside a character releases what it has at the end.
  const cut = run([1, 3], [6, 100 + 0xc3]);
  assertEquals(cut.deltas, [" caf", ""]);
  assertEquals(cut.tail, "\uFFFD");
});

Deno.test("IncrementalDetokenizer stops at a stop string and never emits it", () => {
  const r = run([1], [3, 4, 5, 7], [", th"]);
  assertEquals(r.deltas, ["Once", " upon", "", ""]);
  assertEquals(r.stopped, true);
  assertEquals(r.tail, "");
  // A held-back prefix that does not become the stop string is released.
  const s = run([1], [3, 5, 4], [", th"]);
  assertEquals(s.deltas, ["Once", "", ", upon"]);
  assertEquals(s.stopped, false);
  // A stop string spanning several pushes, and one inside a single piece.
  assertEquals(run([1], [3, 8, 4], ["\n"]).deltas, ["Once", "", ""]);
  assertEquals(run([1], [3, 4], ["pon"]).deltas, ["Once", " u"]);
});
