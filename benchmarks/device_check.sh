#!/usr/bin/env bash
# One device call: GPU tests, the main job, and the benchmark; logs under $OUT (or ./out).
# Usage: bash benchmarks/device_check.sh [bench args...]   (no args: --quick)
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt"
python3 -m pytest -q -rs -p no:cacheprovider tests/ > "$OUT/pytest.log" 2>&1; t=$?
python3 -m cudit > "$OUT/selfcheck.log" 2>&1; m=$?
python3 -m cudit bench --json "$OUT/bench.json" --png "$OUT/bench.png" "${@:---quick}" > "$OUT/bench.log" 2>&1; b=$?
cat "$OUT/gpu.txt"
echo "== pytest (rc $t)"; grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -30; tail -1 "$OUT/pytest.log"
echo "== python -m cudit (rc $m)"; cat "$OUT/selfcheck.log"
echo "== bench (rc $b)"; tail -45 "$OUT/bench.log"
