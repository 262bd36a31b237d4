#!/usr/bin/env bash
# The diffusers runs behind docs/results/<card>/diffusers-*: the GPU tests, both examples, and
# the step benchmark. The device machine has no package registry: carry the wheels in .whl/
# (diffusers; transformers is on the image) and name .whl in the run's carry.
#   bash benchmarks/diffusers_run.sh [MODELS]     (MODELS for benchmarks/diffusers_step.py)
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu_diffusers.py tests/test_diffusers.py > "$OUT/pytest-diffusers.log" 2>&1
echo "== pytest rc $?"; tail -1 "$OUT/pytest-diffusers.log"
for f in wan flux; do python3 examples/diffusers_$f.py 2>&1 | grep -v "it/s" | tail -2; done > "$OUT/examples-diffusers.log"
cat "$OUT/examples-diffusers.log"
python3 benchmarks/diffusers_step.py --models "${1:-wan-1.3b,wan-14b-720p,flux.1}" 2>&1 | grep -E "^\||stock|rror" > "$OUT/diffusers-step.txt"
cat "$OUT/diffusers-step.txt"
