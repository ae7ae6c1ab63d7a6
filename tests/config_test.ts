import { assertEquals, assertStringIncludes, assertThrows } from "./_std.ts";
import { ConfigError, defaults, parseConfig, usage } from "../engine/config.ts";

Deno.test("parseConfig() takes flags over environment over defaults", () => {
  const r = parseConfig(["--port", "9001", "--threads=4"], {
    PORT: "7000",
    HOST: "127.0.0.1",
    MAGICPIG_MODEL: "/m/model.gguf",
  });
  if (r.kind !== "config") throw new Error("expected a config");
  assertEquals(r.config.port, 9001);
  assertEquals(r.config.host, "127.0.0.1");
  assertEquals(r.config.model, "/m/model.gguf");
  assertEquals(r.config.threads, 4);
  assertEquals(r.config.logLevel, defaults.logLevel);
  const none = parseConfig([], {});
  if (none.kind !== "config") throw new Error("expected a config");
  assertEquals(none.config, defaults);
  assertEquals(none.config.port, 8080);
  assertEquals(none.config.host, "0.0.0.0");
  assertEquals(none.config.model, null);
});

Deno.test("parseConfig() names the flag or variable of a bad value", () => {
  assertThrows(() => parseConfig(["--port", "http"], {}), ConfigError, `--port "http"`);
  assertThrows(() => parseConfig([], { PORT: "70000" }), ConfigError, `PORT "70000"`);
  assertThrows(() => parseConfig(["--threads", "0"], {}), ConfigError, "--threads");
  assertThrows(() => parseConfig(["--nope"], {}), ConfigError, `Unknown option "--nope"`);
  assertThrows(() => parseConfig(["--model"], {}), ConfigError, `Missing value for "--model"`);
  assertThrows(() => parseConfig(["model.gguf"], {}), ConfigError, "Unexpected argument");
});

Deno.test("parseConfig() answers --help with every option and its variable", () => {
  const r = parseConfig(["--port", "1", "--help"], {});
  assertEquals(r.kind, "help");
  const text = usage();
  for (const s of ["--model PATH", "MAGICPIG_MODEL", "--port", "[PORT]", "--host", "[HOST]"]) {
    assertStringIncludes(text, s);
  }
  assertStringIncludes(text, "MAGICPIG_THREADS");
});
