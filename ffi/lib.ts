/**
 * Finds and opens libmagicpig once, and refuses a library built for another ABI.
 *
 * The library is looked up at `$MAGICPIG_LIB`, else at `build/libmagicpig.so` in the
 * repository (relative to this module). When it is missing or stale the error says to run
 * `deno task build`.
 *
 * @example
 * ```ts
 * import { lib } from "./lib.ts";
 * console.log(lib().mp_device_count());
 * ```
 *
 * @module
 */
import { ABI_VERSION, type Symbols, symbols } from "./symbols.ts";

let opened: Deno.DynamicLibrary<typeof symbols> | null = null;

/** Path the library is loaded from. */
export function libraryPath(): string {
  const override = Deno.env.get("MAGICPIG_LIB");
  if (override) return override;
  return new URL("../build/libmagicpig.so", import.meta.url).pathname;
}

/** The library's symbols, opening it on first use. Throws when it is missing or stale. */
export function lib(): Symbols {
  if (opened) return opened.symbols;
  const path = libraryPath();
  try {
    Deno.statSync(path);
  } catch {
    throw new Error(
      `Cannot load the native library "${path}": the file does not exist; run "deno task build"`,
    );
  }
  // Check the ABI with a one-symbol handle first, so a stale library with missing
  // symbols gets the same clear message instead of a dlsym error.
  const probe = Deno.dlopen(path, { mp_abi_version: symbols.mp_abi_version });
  const version = probe.symbols.mp_abi_version();
  probe.close();
  if (version !== ABI_VERSION) {
    throw new Error(
      `Cannot load the native library "${path}": it has ABI version ${version}, this code expects ${ABI_VERSION}; run "deno task build"`,
    );
  }
  try {
    opened = Deno.dlopen(path, symbols);
  } catch (e) {
    throw new Error(
      `Cannot load the native library "${path}": ${
        e instanceof Error ? e.message : String(e)
      }; run "deno task build"`,
    );
  }
  return opened.symbols;
}
