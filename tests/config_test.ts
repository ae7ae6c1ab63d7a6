import { assertEquals, assertStringIncludes, assertThrows } from "./_std.ts";
import { bytes, ConfigError, defaults, parseConfig, usage } from "../engine/config.ts";

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

Deno.test("parseConfig() reads session and API key options (repeatable keys, byte sizes)", () => {
  const r = parseConfig(
    [
      "--api-key",
      "k1",
      "--api-key=k2",
      "--host-memory-budget",
      "64G",
      "--gpu-memory-budget=24GB",
      "--session-dir",
      "/var/lib/s",
      "--session-ttl",
      "600",
    ],
    { MAGICPIG_API_KEYS: "env1,env2", MAGICPIG_SESSION_MAX_TTL: "86400" },
  );
  if (r.kind !== "config") throw new Error("expected a config");
  assertEquals(r.config.apiKeys, ["k1", "k2"], "flags replace the environment's list");
  assertEquals(r.config.hostMemoryBudget, 64 * 1024 ** 3);
  assertEquals(r.config.gpuMemoryBudget, 24e9);
  assertEquals(r.config.sessionDir, "/var/lib/s");
  assertEquals(r.config.sessionTtlSeconds, 600);
  assertEquals(r.config.sessionMaxTtlSeconds, 86400);
  const env = parseConfig([], { MAGICPIG_API_KEYS: "a, b,," });
  if (env.kind !== "config") throw new Error("expected a config");
  assertEquals(env.config.apiKeys, ["a", "b"]);
  assertEquals(bytes("1.5KiB"), 1536);
  assertEquals(bytes("123"), 123);
  assertThrows(() => parseConfig(["--host-memory-budget", "lots"], {}), ConfigError, "byte count");
  assertThrows(() => parseConfig(["--session-ttl", "0"], {}), ConfigError, "--session-ttl");
  assertThrows(() => parseConfig(["--api-key", " "], {}), ConfigError, "--api-key");
});
