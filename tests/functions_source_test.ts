/**
 * The pieces of the function host that need no worker: the import scanner that rewrites
 * relative imports to blob URLs, the manifest parser, and the concurrency limiter.
 */
import { assertEquals, assertRejects, assertThrows } from "./_std.ts";
import { findImports } from "../engine/functions/_source.ts";
import { defaultLimits, parseManifest } from "../engine/functions/manifest.ts";
import { Limiter, LimiterFullError } from "../engine/functions/_limiter.ts";

const specifiers = (src: string) => findImports(src).map((i) => i.specifier);

Deno.test("findImports() finds static, side-effect, re-export and literal dynamic imports", () => {
  const src = `
import a from "./a.ts";
import * as b from './b.ts';
import { c, d as e } from "./c.ts";
import f, { g } from "./f.ts";
import "./side.ts";
import data from "./data.json" with { type: "json" };
export { h } from "./h.ts";
export * from "./star.ts";
export * as ns from "./ns.ts";
const lazy = await import("./lazy.ts");
const computed = await import(name);
`;
  assertEquals(specifiers(src), [
    "./a.ts",
    "./b.ts",
    "./c.ts",
    "./f.ts",
    "./side.ts",
    "./data.json",
    "./h.ts",
    "./star.ts",
    "./ns.ts",
    "./lazy.ts",
  ]);
});

Deno.test("findImports() skips type-only imports and text that only looks like an import", () => {
  const src = `
import type { A } from "../engine/functions/types.ts";
import type * as T from "../types.ts";
export type { B } from "../b.ts";
import type from "./default_named_type.ts";
// import x from "./commented.ts";
/* export * from "./block.ts"; */
const s = 'import y from "./in_string.ts"';
const t = \`import z from "./in_template.ts" \${'import("./in_expr.ts")'} done\`;
const re = /import q from "\\.\\/in_regex.ts"/;
const ratio = 1 / 2; const other = 3 / 4;
const m = import.meta.url;
obj.import("./method.ts");
export { local };
const z = { from: "./not_an_import.ts" };
`;
  assertEquals(specifiers(src), ["./default_named_type.ts"]);
});

Deno.test("findImports() reports the literal's position, quotes included", () => {
  const src = `import a from "./a.ts";`;
  const [site] = findImports(src);
  assertEquals(src.slice(site.start, site.end), `"./a.ts"`);
});

Deno.test("parseManifest() fills defaults and names the field at fault", () => {
  const m = parseManifest(`{"env": {"A": "1"}, "concurrency": 2}`, "f.json", defaultLimits);
  assertEquals(m.env, { A: "1" });
  assertEquals(m.limits, { ...defaultLimits, concurrency: 2 });
  assertEquals(m.description, null);
  const bad: [string, string][] = [
    [`[1]`, `Manifest "f.json" must be a JSON object`],
    [`{"env": {"A": 1}}`, `Manifest "f.json" env value of "A" must be a string`],
    [`{"env": {"1A": "x"}}`, `Manifest "f.json" env name "1A" is not a valid variable name`],
    [
      `{"queue": 1.5}`,
      `Manifest "f.json" field "queue" must be an integer in [0, 100000]: got 1.5`,
    ],
    [
      `{"timeout_ms": 0}`,
      `Manifest "f.json" field "timeout_ms" must be an integer in [1, 3600000]: got 0`,
    ],
    [`{"memory": 1}`, `Manifest "f.json" has an unknown field "memory"`],
    [`{`, `Manifest "f.json" is not valid JSON`],
  ];
  for (const [text, message] of bad) {
    assertThrows(() => parseManifest(text, "f.json", defaultLimits), Error, message);
  }
});

Deno.test("Limiter.acquire() runs up to the concurrency, queues up to the queue, refuses the rest", async () => {
  const l = new Limiter();
  const r1 = await l.acquire(1, 1);
  const order: string[] = [];
  const second = l.acquire(1, 1).then((r) => {
    order.push("second");
    return r;
  });
  assertEquals([l.running, l.waiting], [1, 1]);
  await assertRejects(() => l.acquire(1, 1), LimiterFullError);
  // A waiter whose client leaves gives its place back.
  const gone = new AbortController();
  r1();
  const r2 = await second;
  const third = l.acquire(1, 1, gone.signal);
  gone.abort(new Error("client gone"));
  await assertRejects(() => third, Error, "client gone");
  assertEquals([l.running, l.waiting], [1, 0]);
  r2();
  r2(); // idempotent
  assertEquals([l.running, l.waiting, order], [0, 0, ["second"]]);
});
