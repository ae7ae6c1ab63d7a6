#!/bin/sh
# gpu_check.sh — one command for the GPU server: build, kernel checks and timings, the GPU
# test suite and the benchmark, with every log under $OUT and a short summary table last.
#
# Usage (from the repository root, after `source .device/unpack.sh`):
#   sh scripts/gpu_check.sh
# Environment:
#   OUT        where logs go (default ./gpu_out); at most 8 files, flat
# (scripts/gpu_run.sh is the bounded all-in-one call: build, tests, benches, kernels.)
#   STEPS      comma list of steps to run, in this order (default: build,opbench,test — the
#              sanitizer is opt-in; run the benchmark as its own call: STEPS=build,bench):
#                build     deno task build + SASS/resource facts of the key kernels
#                opbench   kernel parity (float64 reference) and timings vs HBM/GEMM ceilings
#                test      deno task test:gpu (GPU op parity against the CPU ops, engine)
#                sanitizer compute-sanitizer memcheck over the small-shape opbench
#                bench     deno task bench (model-level prefill/decode benchmark)
#   BENCH_ARGS extra arguments for bench/bench.ts
#   DEADLINE   seconds the whole script may take (default 560, under a 10-minute call): a
#              step gets at most the time left and is skipped when under 20 s remain
# Each step has its own time limit and runs even when an earlier one failed; the exit code
# is the number of failed steps.
set -u

OUT="${OUT:-$(pwd)/gpu_out}"
STEPS="${STEPS:-build,opbench,test}"
DEADLINE="${DEADLINE:-560}"
T_START=$(date +%s)
mkdir -p "$OUT"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$PATH:$CUDA_HOME/bin"
# deno from `source .device/unpack.sh` on the GPU server, else the repository's wrapper.
if command -v deno > /dev/null 2>&1; then DENO=deno; else DENO="sh scripts/deno.sh"; fi
SUMMARY="$OUT/.summary.tmp"
: > "$SUMMARY"
FAILED=0

has_step() {
  case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac
}

# note STEP STATUS SECONDS DETAIL
note() {
  printf '%-10s %-5s %5ss  %s\n' "$1" "$2" "$3" "$4" >> "$SUMMARY"
}

now() { date +%s; }

# run_step NAME LIMIT_SECONDS LOGFILE COMMAND...
run_step() {
  name=$1 limit=$2 log=$3
  shift 3
  left=$((DEADLINE - ($(now) - T_START)))
  if [ "$left" -lt 20 ]; then
    echo "==== $name: skipped, ${left}s left of DEADLINE=$DEADLINE" | tee -a "$log"
    LAST_RC=125 LAST_DT=0 LAST_ST=SKIP
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  t0=$(now)
  echo "==== $name: $* (limit ${limit}s)" | tee -a "$log"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  dt=$(( $(now) - t0 ))
  if [ $rc -eq 0 ]; then st=ok; else st=FAIL; FAILED=$((FAILED + 1)); fi
  [ $rc -eq 124 ] && st=TIME
  echo "==== $name: exit $rc after ${dt}s" | tee -a "$log"
  LAST_RC=$rc LAST_DT=$dt LAST_ST=$st
}

# ------------------------------------------------------------ environment
{
  echo "date: $(date -u)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) dirty files"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
  nvcc --version 2>&1 | tail -2
  echo "cpus: $(nproc)  mem: $(free -g 2>/dev/null | awk '/Mem:/{print $2}') GiB"
  lscpu 2>/dev/null | grep -E 'Model name|Flags' | sed 's/\(.\{300\}\).*/\1.../'
} > "$OUT/build.log" 2>&1

# ------------------------------------------------------------ build
if has_step build; then
  run_step build 420 "$OUT/build.log" $DENO task build
  note build "$LAST_ST" "$LAST_DT" "$(grep -o 'built build/libmagicpig.so.*' "$OUT/build.log" | tail -1 | cut -c1-90)"
  # Resource usage and instruction mix of the kernels that matter (no GPU time needed).
  {
    echo "==== SASS facts"
    for o in build/obj/*gpu__matmul.cu.o build/obj/*gpu__attention_prefill.cu.o \
      build/obj/*gpu__attention_prefill_sm90a.cu.o \
      build/obj/*gpu__attention_decode.cu.o build/obj/*gpu__lsh.cu.o; do
      [ -f "$o" ] || continue
      echo "-- $o: $(cuobjdump --dump-sass "$o" 2>/dev/null | grep -c HMMA) HMMA, \
$(cuobjdump --dump-sass "$o" 2>/dev/null | grep -c HGMMA) HGMMA, \
$(cuobjdump --dump-sass "$o" 2>/dev/null | grep -c 'LDG.E.128') LDG.E.128, \
$(cuobjdump --dump-sass "$o" 2>/dev/null | grep -c 'LDGSTS') LDGSTS, \
$(cuobjdump --dump-sass "$o" 2>/dev/null | grep -cE 'LDL|STL') local-memory ops"
      cuobjdump --dump-resource-usage "$o" 2>/dev/null | grep -E 'Function|REG|STACK' | head -40
    done
  } >> "$OUT/build.log" 2>&1
fi

# ------------------------------------------------------------ opbench
OPBENCH=build/opbench
build_opbench() {
  pre=cuda
  ls build/obj/cuda-cublas__gpu__*.o > /dev/null 2>&1 && pre=cuda-cublas
  libs="-lcudart_static"
  [ "$pre" = cuda-cublas ] && libs="$libs -lcublasLt -lcublas"
  nvcc -std=c++17 -O2 -gencode=arch=compute_90,code=sm_90 -Xcompiler -fopenmp \
    -DMP_HAVE_CUDA=1 -Icuda/include -Icuda -c bench/gpu/opbench.cu -o build/opbench.o &&
    g++ -o "$OPBENCH" build/opbench.o build/obj/${pre}__gpu__*.o build/obj/${pre}__common__common.cpp.o \
      -L"$CUDA_HOME/lib64" $libs -Wl,-rpath,"$CUDA_HOME/lib64" -lrt -ldl -lpthread -fopenmp
}
if has_step opbench || has_step sanitizer; then
  echo "==== building opbench" >> "$OUT/opbench.log"
  build_opbench >> "$OUT/opbench.log" 2>&1 || echo "opbench build failed" >> "$OUT/opbench.log"
fi
if has_step opbench; then
  run_step opbench 150 "$OUT/opbench.log" "$OPBENCH" --budget 120 "$OUT/opbench.jsonl"
  note opbench "$LAST_ST" "$LAST_DT" "$(grep -o '[0-9]* failures' "$OUT/opbench.log" | tail -1)"
fi
# ------------------------------------------------------------ tests
if has_step test; then
  export MP_GPU_REPORT="$OUT/test_gpu.json"
  run_step test 300 "$OUT/test_gpu.log" $DENO task test:gpu
  note test "$LAST_ST" "$LAST_DT" "$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/test_gpu.log" | grep -E '^(ok|FAILED) \|' | tail -1 | cut -c1-90)"
fi

# ------------------------------------------------------------ sanitizer
if has_step sanitizer; then
  if command -v compute-sanitizer > /dev/null 2>&1; then
    run_step sanitizer 150 "$OUT/sanitizer.log" compute-sanitizer --tool memcheck \
      --leak-check no --error-exitcode 3 "$OPBENCH" --quick
    note sanitizer "$LAST_ST" "$LAST_DT" "$(grep -E 'ERROR SUMMARY|failures' "$OUT/sanitizer.log" | tail -2 | tr '\n' ' ' | cut -c1-90)"
  else
    note sanitizer skip 0 "compute-sanitizer not on PATH"
  fi
fi

# ------------------------------------------------------------ benchmark
if has_step bench; then
  if [ -f bench/bench.ts ]; then
    # shellcheck disable=SC2086
    run_step bench 420 "$OUT/bench.log" $DENO task bench --out "$OUT/bench.json" ${BENCH_ARGS:-}
    note bench "$LAST_ST" "$LAST_DT" "$(grep -E 'bench done|^pass ' "$OUT/bench.log" | tail -1 | cut -c1-90)"
  else
    note bench skip 0 "bench/bench.ts not present yet"
  fi
fi

# ------------------------------------------------------------ summary (last)
echo
if [ -f "$OUT/opbench.jsonl" ] && command -v python3 > /dev/null 2>&1; then
  python3 - "$OUT/opbench.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("kernel     variant  shape                                    ms      rate        %ceil  err")
for r in rows:
    if "error" in r:
        print(f"{r['name']:<10} ERROR {r['error'][:100]}")
        continue
    pct = f"{100*r['rate']/r['ceiling']:.0f}%" if r.get("ceiling") else "-"
    err = "-" if r["err"] < 0 else f"{r['err']:.1e}"
    flag = "" if r["ok"] else " FAIL"
    print(f"{r['name']:<10} {r['variant']:<8} {r['shape']:<34} {r['ms']:9.4f} {r['rate']:8.1f} "
          f"{r['unit']:<7} {pct:>5} {err}{flag}")
PY
fi
if [ -f "$OUT/test_gpu.json" ] && command -v python3 > /dev/null 2>&1; then
  python3 - "$OUT/test_gpu.json" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))
except Exception as e:
    print("test_gpu.json unreadable:", e); sys.exit(0)
bad = [r for r in rows if not r.get("ok")]
print(f"\nGPU parity checks: {len(rows) - len(bad)}/{len(rows)} within tolerance")
for r in bad[:20]:
    print(f"  FAIL {r.get('op')} {r.get('case')}: err {r.get('err')} > tol {r.get('tol')}")
PY
fi
if has_step bench && [ -f "$OUT/bench.log" ]; then
  echo
  sed -n '/^prefill$/,/^bench done/p' "$OUT/bench.log" | grep -v '^====' | head -90
fi
echo
echo "==== gpu_check summary (OUT=$OUT)"
cat "$SUMMARY"
rm -f "$SUMMARY"
exit "$FAILED"
