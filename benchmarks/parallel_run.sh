#!/usr/bin/env bash
# The runs behind docs/results/<card>/parallel-*: the tensor/sequence-parallel tests (one-GPU
# emulation and multi-GPU), the tensor-parallel benchmark under torchrun, then the rest of the
# GPU suite (diffusers included). Carry .whl/ (diffusers) and cudit/_cubins.
#   bash benchmarks/parallel_run.sh [TOKENS] [HEADS]
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# NVLink multicast stays off (it can take the host's GPUs down).
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpus.txt"; cat "$OUT/gpus.txt"
PYTEST="python3 -m pytest -q -rs -p no:cacheprovider"
timeout 240 $PYTEST tests/test_gpu_parallel.py tests/test_multi_gpu.py > "$OUT/pytest-parallel.log" 2>&1
echo "== parallel tests rc $?"; tail -3 "$OUT/pytest-parallel.log"; grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest-parallel.log" | head -20
n=$(nvidia-smi -L | wc -l)
timeout 180 torchrun --nproc-per-node "$n" benchmarks/tp_bench.py --tokens "${1:-32760}" --heads "${2:-40}" \
    --json "$OUT/tp-bench.json" ${PROFILE:+--profile} ${SWEEP:+--sweep} > "$OUT/tp-bench.txt" 2> "$OUT/tp-bench.err"
echo "== tp_bench rc $?"; cat "$OUT/tp-bench.txt"; grep -v "^\s*$" "$OUT/tp-bench.err" | grep -v Warning | tail -8
[ "${SUITE:-1}" = 1 ] || exit 0
timeout $((585 - SECONDS)) $PYTEST -m gpu tests/ --deselect tests/test_multi_gpu.py --deselect tests/test_gpu_parallel.py \
    > "$OUT/pytest-gpu.log" 2>&1
echo "== GPU suite rc $?"; tail -2 "$OUT/pytest-gpu.log"; grep -E "^(FAILED|ERROR)" "$OUT/pytest-gpu.log" | head -20
