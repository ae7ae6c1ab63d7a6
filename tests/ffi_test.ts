import { assert, assertEquals } from "./_std.ts";
import { allLayouts } from "../ffi/layouts.ts";
import {
  abiVersion,
  buildInfo,
  deviceCount,
  getThreads,
  setThreads,
  structSize,
} from "../ffi/native.ts";
import { ABI_VERSION } from "../ffi/symbols.ts";

Deno.test("lib() loads a library with the expected ABI version", () => {
  assertEquals(abiVersion(), ABI_VERSION);
  assert(buildInfo().startsWith("cpu"), buildInfo());
  assert(deviceCount() >= 0);
});

Deno.test("every TypeScript struct layout has the size of its C struct", () => {
  for (const [name, layout] of Object.entries(allLayouts)) {
    assertEquals(layout.size, structSize(name), `sizeof(${name})`);
  }
});

Deno.test("setThreads() changes the thread count at run time", () => {
  const before = getThreads();
  assertEquals(setThreads(1), 1);
  assertEquals(getThreads(), 1);
  setThreads(0);
  assertEquals(getThreads(), before);
});
