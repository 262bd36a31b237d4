#!/usr/bin/env bash
# The runs behind the committed results, on the device. Stages (default: checks and bench):
#   checks  GPU tests, main job, worked examples, SASS check
#   bench   the full benchmark (benchmarks/bench.py, which ends with benchmarks/launchbench.py)
#   ab PKG  every production shape against another copy (benchmarks/ab_package.py), one process
#   same    shapes beside a plain mul_ over the same bytes (benchmarks/same_bytes.py)
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=.:ab
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
  echo "== pytest rc $t"; grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head; tail -1 "$OUT/pytest.log"
  echo "== main job rc $m"; cat "$OUT/selfcheck.log"
  echo "== examples rc $et $ej"; tail -n 2 "$OUT/example-torch.log" "$OUT/example-jax.log"
fi
if [ "$stage" = all ] || [ "$stage" = bench ]; then
  python3 benchmarks/bench.py --json "$OUT/bench.json" --png "$OUT/bench.png" > "$OUT/bench.log" 2>&1; b=$?
  echo "== bench rc $b"; grep -v "^  [A-Za-z0-9.-]*: [0-9.]* us$" "$OUT/bench.log" | tail -60
fi
if [ "$stage" = ab ]; then
  python3 benchmarks/kernel_ab.py "$2" ${3:-} > "$OUT/ab.txt" 2>&1; echo "== ab rc $?"; cat "$OUT/ab.txt"
fi
if [ "$stage" = same ]; then
  python3 benchmarks/same_bytes.py ${2:+"$2"} > "$OUT/same.txt" 2>&1; echo "== same rc $?"; cat "$OUT/same.txt"
fi
