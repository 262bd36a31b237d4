# The H200 tuning run (#8): measure a table (starting from the one in force), then the GPU tests
# under it, then every production shape under the analytic default and under that table,
# beside mul_ over the same bytes.
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m cudit tune --out cudit/tuning/nvidia-h200.json > "$OUT/tune.log" 2>&1; tail -8 "$OUT/tune.log"
cp cudit/tuning/nvidia-h200.json "$OUT/"
python3 -m cudit info | tail -1
python3 -m pytest -q -p no:cacheprovider tests/test_gpu_qk_norm_rope.py > "$OUT/pytest.log" 2>&1; tail -1 "$OUT/pytest.log"
timeout 300 python3 benchmarks/tuning_ab.py analytic "" 2>&1 | tee "$OUT/tuning_ab.txt"
