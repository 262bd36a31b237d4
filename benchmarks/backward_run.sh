# The backward (#12) on one GPU: its tests (FULL=1: the whole GPU suite), a memory check of its
# kernels, the fine-tuning example, and its bench rows with their baselines.
. "$(dirname "$0")/gpu_suite.sh"
suite_or pytest-backward.log -x tests/test_gpu_backward.py tests/test_autograd_guard.py tests/test_backward_planner.py
compute-sanitizer --tool memcheck --report-api-errors no python3 -m pytest -q -p no:cacheprovider -m gpu \
  tests/test_gpu_backward.py -k "backward_mode" > "$OUT/memcheck-backward.log" 2>&1
grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck-backward.log" | tail -2
python3 examples/finetune_step.py > "$OUT/example-finetune.log" 2>&1; tail -8 "$OUT/example-finetune.log"
[ -n "$NO_BENCH" ] || timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/backward_bench.py --json "$OUT/bench-backward.json" \
  ${ROWS:+--shapes $ROWS} > "$OUT/bench-backward.txt" 2>&1
tail -9 "$OUT/bench-backward.txt"
