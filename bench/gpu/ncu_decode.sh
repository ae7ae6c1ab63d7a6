#!/bin/sh
# ncu_decode.sh — per-kernel GPU time of one dense decode step of the Llama-3.1-8B shape,
# from Nsight Compute (GPU server; after `source .device/unpack.sh && deno task build`).
#
# Runs the model bench for one context and batch under ncu, profiles CYCLE consecutive
# decode-step kernels after the first steps (any CYCLE consecutive kernels of the replayed
# step hold each of its kernels once), and prints their time summed by kernel and grid, with
# the DRAM bytes each moved and the bandwidth they reached. ncu serialises the kernels, so
# the sum is the step without the overlap that programmatic dependent launch gives; the
# bench's own ms/token minus this sum is what the launch boundaries cost (or save).
#
# Usage: sh bench/gpu/ncu_decode.sh [CONTEXT] [BATCH] > profile.txt   (default 8192 1)
set -eu
N="${1:-8192}"
B="${2:-1}"
OUTDIR="${OUT:-/tmp}"
CSV="$OUTDIR/ncu_decode_${N}_b${B}.csv"
# Kernels of a decode step: embedding, then per layer QKV GEMV, rope+append, attention,
# O / gate-up / down GEMVs, and the LM head GEMV.
CYCLE=$((1 + 32 * 6 + 1))
ncu --clock-control none --cache-control none --print-units base \
  -k 'regex:gemv_kernel|decode_attn|rope_append|embedding' \
  --launch-skip $((3 * CYCLE)) --launch-count "$CYCLE" \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size \
  --csv --page raw \
  deno run --allow-all bench/bench.ts --contexts "$N" --batches "$B" --methods dense-gpu \
  --no-budget-pass --time-limit 60 --out "$OUTDIR/ncu_bench.json" > "$CSV" 2> "$OUTDIR/ncu_decode.err" || true
python3 - "$CSV" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if r]
hdr = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
h = rows[hdr]
data = [r for r in rows[hdr + 1:] if len(r) == len(h) and r[h.index("ID")].isdigit()]
col = lambda r, n: r[h.index(n)]
num = lambda s: float(s.replace(",", "")) if s not in ("", "n/a") else 0.0
agg = collections.OrderedDict()
for r in data:
    name = col(r, "Kernel Name").split("(")[0].split("<")[0].split()[-1]
    key = (name, col(r, "launch__grid_size"))
    a = agg.setdefault(key, [0, 0.0, 0.0])
    a[0] += 1
    a[1] += num(col(r, "gpu__time_duration.sum"))
    a[2] += num(col(r, "dram__bytes_read.sum")) + num(col(r, "dram__bytes_write.sum"))
# units: ncu raw page reports gpu__time_duration in ns, dram bytes in bytes (checked below)
units = rows[hdr + 1] if hdr + 1 < len(rows) else []
print("units:", units[h.index("gpu__time_duration.sum")] if units else "?",
      units[h.index("dram__bytes_read.sum")] if units else "?")
tot_t = sum(a[1] for a in agg.values())
print(f"{'kernel':28s} {'grid':>8s} {'n':>4s} {'us each':>9s} {'us total':>9s} {'MB each':>8s} {'GB/s':>7s}")
for (name, grid), (n, t, by) in agg.items():
    print(f"{name:28s} {grid:>8s} {n:4d} {t / n / 1e3:9.2f} {t / 1e3:9.1f} {by / n / 1e6:8.2f} {by / max(t, 1):7.0f}")
print(f"kernels {len(data)}, GPU time summed {tot_t / 1e6:.3f} ms")
PY
