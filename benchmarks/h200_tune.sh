# The H200 tuning run (#8): measure a table, then every production shape under the analytic
# default and under that table, beside mul_ over the same bytes.
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m cudit tune --out cudit/tuning/nvidia-h200.json 2>&1 | tee "$OUT/tune.log"
cp cudit/tuning/nvidia-h200.json "$OUT/"
python3 -m cudit info
timeout 400 python3 benchmarks/tuning_ab.py analytic "" 2>&1 | tee "$OUT/tuning_ab.txt"
