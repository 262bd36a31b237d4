#!/usr/bin/env bash
# The run behind the committed results. Stages (default: both):
#   checks  GPU tests, main job, worked examples, SASS check, host profile
#   bench   the full benchmark (python -m cudit bench, which ends with python -m cudit launch)
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=.
stage=${1:-all}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt"
cat "$OUT/gpu.txt"
if [ "$stage" = all ] || [ "$stage" = checks ]; then
  python3 -m pytest -q -rs -p no:cacheprovider tests/ > "$OUT/pytest.log" 2>&1; t=$?
  python3 -m cudit > "$OUT/selfcheck.log" 2>&1; m=$?
  python3 examples/wan_block_torch.py > "$OUT/example-torch.log" 2>&1; et=$?
  python3 examples/jax_block.py > "$OUT/example-jax.log" 2>&1; ej=$?
  for f in qknr_bf16_interleaved_f32_full_k4 qknr_bf16_interleaved_f32_head_k4 qknr_bf16_half_bf16_full_k2 qknr_bf16_half_f32_full_k2_st qknr_bf16_interleaved_f32_head_k1_p3; do
    echo "$f:"; cuobjdump -sass -fun "$f" cudit/_cubins/qk_norm_rope.sm_90.cubin | grep -oE "(LDG|STG)[.A-Z0-9]*" | sort | uniq -c
  done > "$OUT/sass.txt" 2>&1
  python3 benchmarks/host_breakdown.py > "$OUT/host.txt" 2>&1
  echo "== pytest rc $t"; grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head; tail -1 "$OUT/pytest.log"
  echo "== main job rc $m"; cat "$OUT/selfcheck.log"
  echo "== examples rc $et $ej"; tail -n 2 "$OUT/example-torch.log" "$OUT/example-jax.log"
  echo "== sass"; cat "$OUT/sass.txt"; echo "== host"; cat "$OUT/host.txt"
fi
if [ "$stage" = all ] || [ "$stage" = bench ]; then
  python3 -m cudit bench --json "$OUT/bench.json" --png "$OUT/bench.png" > "$OUT/bench.log" 2>&1; b=$?
  echo "== bench rc $b"; grep -v "^  [A-Za-z0-9.-]*: [0-9.]* us$" "$OUT/bench.log" | tail -60
fi
