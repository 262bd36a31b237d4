# Sourced by the *_run.sh scripts: the whole GPU suite into $OUT/pytest-gpu.log, the diffusers
# tests included from a wheel carried in .whl/ (the device has no package registry).
gpu_suite() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site:.
  python3 -m pytest -q -rs -p no:cacheprovider -m gpu tests/ > "$OUT/pytest-gpu.log" 2>&1
  tail -3 "$OUT/pytest-gpu.log"
}
