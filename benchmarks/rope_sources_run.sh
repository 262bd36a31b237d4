# Position ids, partial rotary and in-kernel 3-D RoPE on one GPU: their tests (FULL=1: the whole
# GPU suite), a memory check of the new variants, and bench rows beside the table path.
. "$(dirname "$0")/gpu_suite.sh"
suite_or pytest-sources.log -m gpu tests/test_gpu_qk_norm_rope.py tests/test_gpu_frameworks.py \
  -k "positions or partial or grid or random or rope3d or rope_sources"
compute-sanitizer --tool memcheck --report-api-errors no python3 -m pytest -q -p no:cacheprovider -m gpu \
  tests/test_gpu_qk_norm_rope.py -k "positions or partial or (grid and not random)" > "$OUT/memcheck-sources.log" 2>&1
grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck-sources.log" | tail -2
ROWS=${ROWS:-WAN-1.3B,WAN-14B,HunyuanVideo}
timeout ${BENCH_TIMEOUT:-240} python3 benchmarks/bench.py $([ -n "$COMPILE" ] || echo --no-compile) --json "$OUT/bench-sources.json" \
  --png "$OUT/bench-sources.png" --only $ROWS,WAN-1.3B-rope3d,WAN-14B-rope3d,HunyuanVideo-rope3d,WAN-1.3B-positions \
  > "$OUT/bench-sources.txt" 2>&1
grep -A24 "copy bandwidth" "$OUT/bench-sources.txt"
