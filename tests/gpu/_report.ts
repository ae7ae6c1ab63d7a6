/**
 * Per-case records of the GPU tests: each comparison prints one line and, when
 * `$MP_GPU_REPORT` names a file, is appended to the JSON array there (scripts/gpu_check.sh
 * summarises it), so every number survives a failing assertion.
 *
 * @module
 */

/** One comparison of a GPU result with its reference. */
export interface ReportRow {
  op: string;
  case: string;
  err: number;
  tol: number;
  ok: boolean;
  extra?: string;
}

const reportPath = Deno.env.get("MP_GPU_REPORT");

/** Records one comparison; returns a failure line, or null when within tolerance. */
export function check(
  op: string,
  name: string,
  err: number,
  tol: number,
  extra = "",
): string | null {
  const ok = Number.isFinite(err) && err <= tol;
  console.log(
    `${ok ? "ok  " : "FAIL"} ${op.padEnd(10)} ${name.padEnd(56)} err ${err.toExponential(2)} ` +
      `tol ${tol.toExponential(1)}${extra ? "  " + extra : ""}`,
  );
  if (reportPath) {
    let rows: ReportRow[] = [];
    try {
      rows = JSON.parse(Deno.readTextFileSync(reportPath)) as ReportRow[];
    } catch {
      rows = [];
    }
    rows.push({ op, case: name, err, tol, ok, extra: extra || undefined });
    Deno.writeTextFileSync(reportPath, JSON.stringify(rows, null, 1));
  }
  return ok ? null : `${op} ${name}: err ${err} > ${tol}${extra ? ` (${extra})` : ""}`;
}

/** Fails with every out-of-tolerance case at once. */
export function assertAll(failures: (string | null)[]): void {
  const bad = failures.filter((f): f is string => f !== null);
  if (bad.length) throw new Error(`${bad.length} case(s) out of tolerance:\n${bad.join("\n")}`);
}
