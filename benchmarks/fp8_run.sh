# fp8 output (#11) on one GPU: its tests (FULL=1: the whole GPU suite), a memory check of the
# fp8 variants, the fp8 bench beside bf16 plus a separate cast, and bf16 rows of the production
# bench (the kernels the fp8 axis touched).
. "$(dirname "$0")/gpu_suite.sh"
suite_or pytest-fp8.log -m gpu tests/test_gpu_fp8.py
compute-sanitizer --tool memcheck --report-api-errors no python3 -m pytest -q -p no:cacheprovider -m gpu \
  tests/test_gpu_fp8.py -k "wan-like or saturating or loop or split or d96 or random1" > "$OUT/memcheck-fp8.log" 2>&1
grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck-fp8.log" | tail -2
timeout ${BENCH_TIMEOUT:-240} python3 benchmarks/fp8_bench.py --json "$OUT/bench-fp8.json" > "$OUT/bench-fp8.txt" 2>&1
tail -7 "$OUT/bench-fp8.txt"
ROWS=${ROWS:-WAN-1.3B,WAN-14B,FLUX.1,HunyuanVideo,LTX-2-video,Cosmos,Lumina-2}
[ -n "$NO_BF16" ] || timeout ${BENCH_TIMEOUT:-240} python3 benchmarks/bench.py --no-compile --json "$OUT/bench-bf16.json" \
  --png "$OUT/bench-bf16.png" --only $ROWS > "$OUT/bench-bf16.txt" 2>&1
[ -n "$NO_BF16" ] || grep -A10 "copy bandwidth" "$OUT/bench-bf16.txt"
