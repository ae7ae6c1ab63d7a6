source .device/unpack.sh && export MAGICPIG_SHARED_MODELS=$PWD/.device_models
OUT=$OUT DEADLINE=250 STEPS=build,test,opbench OPBENCH_LIMIT=90 OPBENCH_ARGS="--only wgmma,wgmma96k --budget 80" sh scripts/gpu_run.sh > $OUT/run.log 2>&1
tail -4 $OUT/run.log; grep -E "not ok|FAILED" $OUT/test.log | head; grep -E "n=8192|^prefill96k|FAIL|fail|NaN" $OUT/opbench.log | head -30; grep -c "^prefill " $OUT/opbench.log
for c in 0 5 0 5; do
  MP_WGMMA_CONFIG=$c timeout 60 deno run --allow-all bench/bench.ts --contexts 98304 --methods dense-gpu --batches 1 --no-budget-pass --time-limit 1 --short-context 0 --out /tmp/b$c.json >> $OUT/bench_cfg.log 2>&1
  echo "cfg $c: $(grep -E '^prefill' $OUT/bench_cfg.log | tail -1)"
done
