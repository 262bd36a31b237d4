# Memory checker on the 16-bit-table pairings (runtime table kind) and a sample of modes, and the
# PTX fallback (the sm_90 cubin removed: the driver JITs the compute_80 PTX).
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
compute-sanitizer --tool memcheck --report-api-errors no python3 -m pytest -q -p no:cacheprovider \
  tests/test_gpu_qk_norm_rope.py -k "table and (f16 or bf16) or d96 or Cosmos or LTX" > "$OUT/memcheck.log" 2>&1
grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck.log" | tail -3
rm -rf /tmp/ptxonly && cp -r cudit/_cubins /tmp/ptxonly && rm /tmp/ptxonly/qk_norm_rope.sm_90.cubin
python3 -c "
import json; p='/tmp/ptxonly/manifest.json'; m=json.load(open(p)); del m['archs']['sm_90']; json.dump(m, open(p,'w'))"
CUDIT_CUBIN_DIR=/tmp/ptxonly timeout 300 python3 -m cudit 2>&1 | tee "$OUT/ptx-selfcheck.log"
