#!/bin/sh
# gpu_run.sh — one bounded call on the GPU server: build, the GPU tests, the model bench,
# the sessions bench and the CPU sampled-attention micro-bench (the kernel bench, opbench,
# on request), each with its own time limit, output printed as it comes, logs under $OUT,
# a compact summary last. The whole run stays under DEADLINE seconds (default 510, i.e.
# 8.5 minutes, build included): a step gets at most the time left and is skipped when
# under 20 s remain. Steps run in priority order (the model bench first after the tests)
# and each runs even when an earlier one failed. Budget (limits; typical): build 100
# (20-40 s), tests 120, bench 200 (its own time limit 160 s stops starting jobs), sessions
# 75, attention 40.
#
# Usage (repository root, after `source .device/unpack.sh` on the server):
#   OUT=/some/dir sh scripts/gpu_run.sh
# Environment: OUT (default ./gpu_out), DEADLINE (seconds, default 510), STEPS (comma list,
# default build,test,bench,sessions,attention; add opbench for the kernels), BENCH_ARGS
# (replaces the model
# bench's default arguments), OPBENCH_ARGS (added to opbench's, e.g. --only wgmma,gemv2), BENCH_LIMIT and OPBENCH_LIMIT
# (their steps' time limits in seconds).
#
# Files under $OUT (8): build.log, test.log, test.json (one row per GPU parity check),
# bench.log, bench.json, sessions.log, attention.log, opbench.log.
set -u

OUT="${OUT:-$(pwd)/gpu_out}"
DEADLINE="${DEADLINE:-510}"
STEPS="${STEPS:-build,test,bench,sessions,attention}"
T_START=$(date +%s)
mkdir -p "$OUT"
# This run's files only (a reused OUT would otherwise show an older run's logs).
for f in build.log test.log test.json bench.log bench.json sessions.log attention.log \
  opbench.log .rc; do rm -f "$OUT/$f"; done
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$PATH:$CUDA_HOME/bin"
if command -v deno > /dev/null 2>&1; then DENO=deno; else DENO="sh scripts/deno.sh"; fi
SUMMARY="$(mktemp)"
FAILED=0
# A hung kernel fails its call after this many seconds instead of hanging the step.
export MP_GPU_TIMEOUT="${MP_GPU_TIMEOUT:-60}"

has_step() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
now() { date +%s; }
note() { printf '%-10s %-5s %4ss  %s\n' "$1" "$2" "$3" "$4" >> "$SUMMARY"; }

# run_step NAME LIMIT LOG COMMAND...: output to the terminal and the log as it comes.
run_step() {
  name=$1 limit=$2 log=$3
  shift 3
  left=$((DEADLINE - ($(now) - T_START)))
  if [ "$left" -lt 20 ]; then
    echo "==== $name: skipped, ${left}s left of DEADLINE=$DEADLINE" | tee -a "$log"
    LAST_ST=SKIP LAST_DT=0
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  t0=$(now)
  echo "==== $name: $* (limit ${limit}s, $(($(now) - T_START))s into the run)" | tee -a "$log"
  # `timeout` ends the step (KILL 5 s after TERM); the exit status survives the pipe
  # through a file.
  (
    timeout --signal=TERM --kill-after=5 "$limit" "$@"
    echo $? > "$OUT/.rc"
  ) 2>&1 | tee -a "$log"
  rc=$(cat "$OUT/.rc" 2> /dev/null || echo 0)
  rm -f "$OUT/.rc"
  dt=$(($(now) - t0))
  if [ "$rc" -eq 0 ]; then LAST_ST=ok; else LAST_ST=FAIL FAILED=$((FAILED + 1)); fi
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && LAST_ST=TIME
  echo "==== $name: exit $rc after ${dt}s" | tee -a "$log"
  LAST_DT=$dt
}
strip() { sed 's/\x1b\[[0-9;]*m//g'; }

# ------------------------------------------------------------ environment
{
  echo "date: $(date -u)"
  echo "commit: $(git rev-parse HEAD 2> /dev/null) ($(git status --porcelain 2> /dev/null | wc -l) dirty files)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
  nvcc --version 2>&1 | tail -1
  echo "cpus: $(nproc)  mem: $(free -g 2> /dev/null | awk '/Mem:/{print $2}') GiB"
} > "$OUT/build.log" 2>&1
cat "$OUT/build.log"

# ------------------------------------------------------------ build
if has_step build; then
  run_step build 100 "$OUT/build.log" $DENO task build
  note build "$LAST_ST" "$LAST_DT" "$(strip < "$OUT/build.log" | grep -o 'built build/libmagicpig.so.*' | tail -1 | cut -c1-80)"
fi

# ------------------------------------------------------------ GPU tests
if has_step test; then
  export MP_GPU_REPORT="$OUT/test.json"
  rm -f "$MP_GPU_REPORT"
  run_step test 120 "$OUT/test.log" $DENO run --allow-all scripts/gpu_tests.ts \
    --timeout 60 --total 110
  note test "$LAST_ST" "$LAST_DT" "$(strip < "$OUT/test.log" | grep -E '^==== GPU tests' | tail -1 | cut -c1-80)"
  unset MP_GPU_REPORT
fi

# ------------------------------------------------------------ model bench
if has_step bench; then
  # shellcheck disable=SC2086
  run_step bench "${BENCH_LIMIT:-200}" "$OUT/bench.log" $DENO run --allow-all bench/bench.ts \
    --out "$OUT/bench.json" ${BENCH_ARGS:---time-limit 160 --batches 1,4,8}
  note bench "$LAST_ST" "$LAST_DT" "$(strip < "$OUT/bench.log" | grep -E 'bench done|time limit' | tail -1 | cut -c1-80)"
fi

# ------------------------------------------------------------ sessions bench
if has_step sessions; then
  run_step sessions 75 "$OUT/sessions.log" $DENO run --allow-all bench/sessions.ts \
    --shape llama-3.1-8b --contexts 8192,32768,98304 --repeats 1
  note sessions "$LAST_ST" "$LAST_DT" "$(strip < "$OUT/sessions.log" | grep -iE 'follow-up|98304' | tail -1 | cut -c1-80)"
fi

# ------------------------------------------------------------ CPU sampled attention
if has_step attention; then
  run_step attention 40 "$OUT/attention.log" $DENO run --allow-all bench/attention_cpu.ts \
    --layers 2 --reps 10
  note attention "$LAST_ST" "$LAST_DT" "$(strip < "$OUT/attention.log" | grep -iE 'batch|ms' | tail -1 | cut -c1-80)"
fi

# ------------------------------------------------------------ kernels
if has_step opbench; then
  pre=cuda
  ls build/obj/cuda-cublas__gpu__*.o > /dev/null 2>&1 && pre=cuda-cublas
  libs="-lcudart_static"
  [ "$pre" = cuda-cublas ] && libs="$libs -lcublasLt -lcublas"
  echo "==== building opbench" >> "$OUT/opbench.log"
  if nvcc -std=c++17 -O2 -gencode=arch=compute_90,code=sm_90 -Xcompiler -fopenmp \
    -DMP_HAVE_CUDA=1 -Icuda/include -Icuda -c bench/gpu/opbench.cu -o build/opbench.o \
    >> "$OUT/opbench.log" 2>&1 &&
    g++ -o build/opbench build/opbench.o build/obj/${pre}__gpu__*.o \
      build/obj/${pre}__common__common.cpp.o -L"$CUDA_HOME/lib64" $libs \
      -Wl,-rpath,"$CUDA_HOME/lib64" -lrt -ldl -lpthread -fopenmp >> "$OUT/opbench.log" 2>&1; then
    # shellcheck disable=SC2086
    run_step opbench "${OPBENCH_LIMIT:-70}" "$OUT/opbench.log" build/opbench --budget 45 ${OPBENCH_ARGS:-}
  else
    LAST_ST=FAIL LAST_DT=0
    FAILED=$((FAILED + 1))
    echo "opbench build failed" | tee -a "$OUT/opbench.log"
  fi
  note opbench "$LAST_ST" "$LAST_DT" "$(grep -o '[0-9]* failures' "$OUT/opbench.log" | tail -1)"
fi

# ------------------------------------------------------------ summary (last; the model
# bench's compact table at the end, where a truncated output tail still shows it)
echo
echo "######## SUMMARY ########"
if [ -f "$OUT/test.log" ]; then
  echo "---- GPU tests (per test; parity rows that failed follow)"
  strip < "$OUT/test.log" | sed -n '/^==== GPU tests/,$p' | grep -v '^==== test:' | cut -c1-150
  strip < "$OUT/test.log" | grep -E '^FAIL ' | cut -c1-150 | head -20
fi
if [ -f "$OUT/opbench.log" ]; then
  echo "---- kernels (decode GEMVs, decode attention, prefill attention)"
  grep -E '^(gemv|decode|prefill|copy|pcie) ' "$OUT/opbench.log" | grep -v 'n=3 \|n=13 \|n=5 ' | cut -c1-120 | head -40
fi
if [ -f "$OUT/attention.log" ]; then
  echo "---- CPU sampled attention (last lines)"
  strip < "$OUT/attention.log" | grep -v '^====' | tail -10 | cut -c1-160
fi
if [ -f "$OUT/sessions.log" ]; then
  echo "---- sessions bench (last lines)"
  strip < "$OUT/sessions.log" | grep -v '^====' | tail -12 | cut -c1-160
fi
if [ -f "$OUT/bench.log" ]; then
  echo "---- model bench (compact table, targets, notes; full tables in bench.log)"
  if strip < "$OUT/bench.log" | grep -q '^summary ('; then
    strip < "$OUT/bench.log" | sed -n '/^summary (/,/^bench done/p' | cut -c1-160 | head -70
  else  # killed before its report: the rows as they were measured
    strip < "$OUT/bench.log" | grep -E '^(prefill|decode) |fork' | cut -c1-160 | tail -40
  fi
fi
echo
echo "==== gpu_run summary: $FAILED failed step(s), $(($(now) - T_START))s total (OUT=$OUT)"
cat "$SUMMARY"
rm -f "$SUMMARY"
exit "$FAILED"
