/**
 * Temporary folders for tests, removed when the test module unloads.
 *
 * @module
 */

let root: string | null = null;

/** A fresh folder under this test module's temporary root. */
export async function tempDir(prefix = "t"): Promise<string> {
  if (root === null) {
    root = Deno.makeTempDirSync({ prefix: "mp-test-" });
    const r = root;
    globalThis.addEventListener("unload", () => {
      try {
        Deno.removeSync(r, { recursive: true });
      } catch {
        // already gone
      }
    });
  }
  return await Deno.makeTempDir({ dir: root, prefix: `${prefix}-` });
}
