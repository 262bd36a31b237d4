#!/usr/bin/env bash
# Tensor parallelism in one pass on two GPUs: the parallel tests, the example, the benchmark for
# WAN-14B and WAN-1.3B, and the forward's single-GPU tests of full-dim rows. CUBINS: a gzipped
# cubin directory to unpack into cudit/_cubins first (optional).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
if [ -n "${CUBINS:-}" ]; then rm -rf cudit/_cubins && mkdir -p cudit/_cubins && tar -xzf "$CUBINS" -C cudit/_cubins; fi
nvidia-smi -L
bash benchmarks/parallel_final.sh
export PYTHONPATH=.
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_qk_norm_rope.py -k "full" > "$OUT/pytest-full-dim.log" 2>&1
echo "== single-GPU full-dim tests rc $?"; tail -1 "$OUT/pytest-full-dim.log"
