/**
 * `deno task test:gpu`: the GPU test suite (tests/gpu/), each test in its own `deno test`
 * subprocess under a time limit, so that a hung kernel or a deadlock costs one test's
 * limit instead of the whole run. Tests are found by their literal `name: "..."` in the
 * files; a file with a test whose name is not a literal runs as one unit.
 *
 * Output is progressive: a line before each test ("▶ file: name"), the test's own output,
 * then "✔ name (1.2 s)", "✘ name (exit 1)" or "⏱ name: killed after 90 s". The summary
 * comes last; the exit code is the number of tests that did not pass.
 *
 * Options: --timeout SECONDS per test (default 90), --total SECONDS for the whole suite
 * (default 300; tests that would start after it are reported as skipped), --filter TEXT
 * (only tests whose name contains TEXT), and test files (default: tests/gpu/*_test.ts, ops
 * first, then magicpig, then engine).
 *
 * @module
 */

interface Unit {
  file: string;
  /** null: the whole file */
  name: string | null;
}

interface Outcome {
  unit: Unit;
  status: "ok" | "FAIL" | "TIME" | "SKIP";
  seconds: number;
  detail: string;
}

function parseArgs(args: string[]) {
  const o = { timeout: 90, total: 300, filter: "", files: [] as string[] };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const next = () => {
      const v = args[++i];
      if (v === undefined) throw new Error(`Option "${a}" needs a value`);
      return v;
    };
    if (a === "--timeout") o.timeout = Number(next());
    else if (a === "--total") o.total = Number(next());
    else if (a === "--filter") o.filter = next();
    else if (a.startsWith("--")) throw new Error(`Unknown option "${a}"`);
    else o.files.push(a);
  }
  return o;
}

const order = (f: string) => (f.includes("ops") ? 0 : f.includes("magicpig") ? 1 : 2);

async function defaultFiles(): Promise<string[]> {
  const dir = new URL("../tests/gpu/", import.meta.url);
  const files: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.endsWith("_test.ts")) files.push(`tests/gpu/${e.name}`);
  }
  return files.sort((a, b) => order(a) - order(b) || a.localeCompare(b));
}

/** The tests of a file by their literal names, or the file as one unit. */
async function unitsOf(file: string): Promise<Unit[]> {
  const src = await Deno.readTextFile(file);
  const calls = src.match(/Deno\.test\(/g)?.length ?? 0;
  const names = [...src.matchAll(/Deno\.test\(\{\s*name:\s*"((?:[^"\\]|\\.)*)"/g)].map((m) =>
    JSON.parse(`"${m[1]}"`) as string
  );
  if (names.length !== calls || new Set(names).size !== names.length) return [{ file, name: null }];
  return names.map((name) => ({ file, name }));
}

async function runUnit(deno: string, u: Unit, limit: number): Promise<Outcome> {
  const args = [
    "test",
    "--allow-all",
    "--unstable-worker-options",
    "--unstable-no-legacy-abort",
    "--no-check",
  ];
  if (u.name !== null) args.push("--filter", u.name);
  args.push(u.file);
  const label = u.name ?? "(whole file)";
  console.log(`\n▶ ${u.file}: ${label}`);
  const t0 = performance.now();
  const child = new Deno.Command(deno, {
    args,
    env: { MP_TEST_GPU: "1", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  // Echo the test's output as it comes, and keep its tail (an "ignored" test did not run).
  let tail = "";
  const echo = (async () => {
    const dec = new TextDecoder();
    for await (const chunk of child.stdout) {
      await Deno.stdout.write(chunk);
      tail = (tail + dec.decode(chunk, { stream: true })).slice(-4000);
    }
  })();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }, limit * 1000);
  const st = await child.status;
  clearTimeout(timer);
  await echo.catch(() => {});
  const seconds = (performance.now() - t0) / 1000;
  if (timedOut) {
    console.log(`⏱ ${label}: killed after ${limit} s (hung?)`);
    return { unit: u, status: "TIME", seconds, detail: `killed after ${limit} s` };
  }
  if (st.success) {
    const ignored = /\| (\d+) ignored/.exec(tail);
    const detail = ignored ? `${ignored[1]} ignored (no GPU?)` : "";
    console.log(`✔ ${label} (${seconds.toFixed(1)} s)${detail ? `: ${detail}` : ""}`);
    return { unit: u, status: "ok", seconds, detail };
  }
  console.log(`✘ ${label} (exit ${st.code}, ${seconds.toFixed(1)} s)`);
  return { unit: u, status: "FAIL", seconds, detail: `exit ${st.code}` };
}

async function main(): Promise<number> {
  const o = parseArgs(Deno.args);
  const deno = Deno.execPath();
  const files = o.files.length ? o.files : await defaultFiles();
  const started = performance.now();
  const left = () => o.total - (performance.now() - started) / 1000;

  // Type-check once (the subprocesses run with --no-check).
  console.log(`type-checking ${files.length} file(s)`);
  const check = await new Deno.Command(deno, { args: ["check", ...files] }).output();
  if (!check.success) {
    console.log(new TextDecoder().decode(check.stderr));
    console.log("✘ type check failed");
    return 1;
  }

  const units: Unit[] = [];
  for (const f of files) units.push(...await unitsOf(f));
  const picked = units.filter((u) => !o.filter || (u.name ?? "").includes(o.filter));
  const outcomes: Outcome[] = [];
  for (const u of picked) {
    const budget = Math.min(o.timeout, Math.floor(left()));
    if (budget < 10) {
      outcomes.push({ unit: u, status: "SKIP", seconds: 0, detail: "suite time limit reached" });
      continue;
    }
    outcomes.push(await runUnit(deno, u, budget));
  }

  const bad = outcomes.filter((x) => x.status !== "ok");
  console.log(
    `\n==== GPU tests: ${outcomes.length - bad.length}/${outcomes.length} passed ` +
      `in ${((performance.now() - started) / 1000).toFixed(0)} s`,
  );
  for (const x of outcomes) {
    console.log(
      `${x.status.padEnd(4)} ${x.seconds.toFixed(1).padStart(6)} s  ${
        x.unit.file.replace("tests/gpu/", "")
      }: ` +
        `${x.unit.name ?? "(whole file)"}${x.detail ? `  [${x.detail}]` : ""}`,
    );
  }
  return bad.length;
}

Deno.exit(await main());
