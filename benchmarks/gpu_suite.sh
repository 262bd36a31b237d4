# Sourced by the *_run.sh scripts: their environment and output folder, and the whole GPU suite
# into $OUT/pytest-gpu.log, the diffusers tests included from a wheel carried in .whl/ (the
# device has no package registry).
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
gpu_suite() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site:.
  python3 -m pytest -q -rs -p no:cacheprovider -m gpu tests/ > "$OUT/pytest-gpu.log" 2>&1
  tail -3 "$OUT/pytest-gpu.log"
}
# FULL=1: the whole suite; else pytest over the rest of the arguments into $OUT/$1.
suite_or() {
  log=$1; shift
  if [ -n "$FULL" ]; then
    gpu_suite
  else
    python3 -m pytest -q -p no:cacheprovider "$@" > "$OUT/$log" 2>&1
    tail -3 "$OUT/$log"
  fi
}
