#!/usr/bin/env bash
# The tensor-parallel results of docs/results/<card>/parallel-*: the parallel tests, the example
# under torchrun, and the benchmark for WAN-14B and WAN-1.3B at 480p. Carry cudit/_cubins.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
# NVLink multicast stays off (it can take the host's GPUs down).
export PYTHONPATH=. PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
n=$(nvidia-smi -L | wc -l)
quiet() { grep -v "^W[0-9]\{4\} \|OMP_NUM\|\*\*\*\*\|_warn_once\|^\s*$"; }
timeout 240 python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu_parallel.py tests/test_multi_gpu.py \
    > "$OUT/pytest-parallel.log" 2>&1
echo "== parallel tests rc $?"; tail -1 "$OUT/pytest-parallel.log"
timeout 120 torchrun --nproc-per-node "$n" examples/wan_tensor_parallel.py 2>&1 | quiet > "$OUT/example-tp.txt"
echo "== example rc ${PIPESTATUS[0]}"; cat "$OUT/example-tp.txt"
for heads in 40 12; do
    timeout 150 torchrun --nproc-per-node "$n" benchmarks/tp_bench.py --tokens 32760 --heads $heads \
        --json "$OUT/tp-bench-h$heads.json" 2>&1 | quiet > "$OUT/tp-bench-h$heads.txt"
    echo "== tp_bench $heads heads rc ${PIPESTATUS[0]}"; cat "$OUT/tp-bench-h$heads.txt"
done
