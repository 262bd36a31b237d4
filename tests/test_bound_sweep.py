"""benchmarks/bound_sweep.py: variants built at chosen bounds, and the runtime switched between cubin directories."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bound_sweep  # noqa: E402

from cudit import _modules, _variants  # noqa: E402

FULL = "qknr_bf16_interleaved_f32_full_k4"
HEAD = "qknr_bf16_interleaved_f32_head_k4_st"


def _toolchain_or_skip():
    import build_cubins

    try:
        build_cubins.toolchain()
    except SystemExit as exc:
        pytest.skip(f"no CUDA toolchain wheels: {exc}")


def test_each_variant_takes_its_own_bound_or_the_common_one(tmp_path):
    _toolchain_or_skip()
    bound_sweep.build(tmp_path, 1024, [f"{FULL}@384", HEAD], "sm_90")
    man = json.loads((tmp_path / "manifest.json").read_text())
    entry = man["archs"]["sm_90"]
    kernels = entry["kernels"]
    assert set(kernels) >= {FULL, HEAD, _variants.BACKWARD_REDUCE}
    assert (tmp_path / entry["file"]).is_file()
    assert kernels[HEAD]["registers"] <= 65536 // 1024
    # Looser at 384: ptxas may take more than the 1024-thread cap allows.
    assert kernels[FULL]["registers"] <= 65536 // 384
    assert entry["file"] == f"{_variants.FAMILY}.sm_90.cubin"   # found where the shipped one is
    import build_cubins

    assert build_cubins.variants.KERNEL_NAMES == _variants.KERNEL_NAMES   # the table's build untouched


def test_switching_directories_forgets_every_loaded_kernel(tmp_path, monkeypatch):
    from cudit import _launch, api

    monkeypatch.setattr(_modules, "CUBIN_DIR", _modules.CUBIN_DIR)
    _launch._LAUNCHERS["stale"] = object()
    _launch._BACKWARD["stale"] = object()
    api._WARM["stale"] = object()
    _modules._object_code(str(_modules.CUBIN_DIR / "any.cubin"), "cubin")   # lazy: no driver needed
    assert _modules._object_code.cache_info().currsize
    bound_sweep.use_cubins(tmp_path)
    assert _modules.CUBIN_DIR == tmp_path
    assert _modules.load_kernel.cache_info().currsize == 0 and _modules._object_code.cache_info().currsize == 0
    assert "stale" not in _launch._LAUNCHERS and "stale" not in _launch._BACKWARD and "stale" not in api._WARM
