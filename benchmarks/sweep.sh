#!/usr/bin/env bash
# Tuning sweep on the device: GPU tests, then cudit-only benchmark tables for each setting.
# Usage: bash benchmarks/sweep.sh "--row-iters 1" "--row-iters 4" ...
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider tests/ > "$OUT/pytest.log" 2>&1
grep -E "^FAILED" "$OUT/pytest.log" | head -20; tail -1 "$OUT/pytest.log"
i=0
for setting in "$@"; do
  i=$((i + 1))
  python3 benchmarks/bench.py --no-baselines $setting --json "$OUT/sweep$i.json" --png "$OUT/sweep$i.png" > "$OUT/sweep$i.log" 2>&1
  echo "== $setting"; grep -v "^  " "$OUT/sweep$i.log" | awk 'NR<=2 || NR>2 {print substr($0,1,60)}'
done
