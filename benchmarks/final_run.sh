#!/usr/bin/env bash
# The run behind the committed results: GPU tests, main job, SASS check, host profile, full benchmark.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt"
python3 -m pytest -q -rs -p no:cacheprovider tests/ > "$OUT/pytest.log" 2>&1; t=$?
python3 -m cudit > "$OUT/selfcheck.log" 2>&1; m=$?
for f in qknr_bf16_interleaved_f32_full_k4 qknr_bf16_half_bf16_full_k4; do
  echo "$f:"; cuobjdump -sass -fun "$f" cudit/_cubins/qk_norm_rope.sm_90.cubin | grep -oE "(LDG|STG)[.A-Z0-9]*" | sort | uniq -c
done > "$OUT/sass.txt" 2>&1
PYTHONPATH=. python3 benchmarks/profile_host.py > "$OUT/host.txt" 2>&1
python3 -m cudit bench --json "$OUT/bench.json" --png "$OUT/bench.png" > "$OUT/bench.log" 2>&1; b=$?
cat "$OUT/gpu.txt"; echo "== pytest rc $t"; grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head; tail -1 "$OUT/pytest.log"
echo "== main job rc $m"; cat "$OUT/selfcheck.log"; echo "== sass"; cat "$OUT/sass.txt"
echo "== host"; head -3 "$OUT/host.txt"; echo "== bench rc $b"; grep -v "^  " "$OUT/bench.log" | tail -40
