# Position ids, partial rotary and in-kernel 3-D RoPE on one GPU: their tests, the whole GPU suite,
# a memory check of the new variants, and bench rows beside the table path.
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_qk_norm_rope.py \
  -k "positions or partial or grid or random or rope3d" > "$OUT/pytest-sources.log" 2>&1
tail -3 "$OUT/pytest-sources.log"
compute-sanitizer --tool memcheck --report-api-errors no python3 -m pytest -q -p no:cacheprovider -m gpu \
  tests/test_gpu_qk_norm_rope.py -k "positions or partial or (grid and not random)" > "$OUT/memcheck-sources.log" 2>&1
grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck-sources.log" | tail -2
timeout ${BENCH_TIMEOUT:-240} python3 benchmarks/bench.py --no-compile --json "$OUT/bench-sources.json" --png "$OUT/bench-sources.png" \
  --only WAN-1.3B,WAN-14B,HunyuanVideo,WAN-1.3B-rope3d,WAN-14B-rope3d,HunyuanVideo-rope3d,WAN-1.3B-positions \
  > "$OUT/bench-sources.txt" 2>&1
grep -A12 "copy bandwidth" "$OUT/bench-sources.txt"
if [ -n "$FULL" ]; then
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/ > "$OUT/pytest-gpu.log" 2>&1
  tail -3 "$OUT/pytest-gpu.log"
fi
