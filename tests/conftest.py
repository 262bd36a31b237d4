"""Shared fixtures. GPU tests carry the `gpu` marker and skip, with the reason, when no
usable GPU (or not the one CUDIT_ARCH names) is attached; multi-GPU tests also carry
`multi_gpu` and skip with fewer than two GPUs."""
from __future__ import annotations

import functools
import os

import pytest


@functools.lru_cache(maxsize=None)
def gpu_arch():
    """(major, minor) of GPU 0, or a string saying why there is none."""
    try:
        from cuda.bindings import driver
    except ImportError as exc:
        return f"cuda.bindings is not importable ({exc})"
    try:
        (err,) = driver.cuInit(0)
    except Exception as exc:  # no driver library at all
        return f"no CUDA driver ({exc.__class__.__name__})"
    if err != driver.CUresult.CUDA_SUCCESS:
        return f"no usable CUDA driver (cuInit: {err.name})"
    err, n = driver.cuDeviceGetCount()
    if err != driver.CUresult.CUDA_SUCCESS or n == 0:
        return "no GPU attached"
    from cuda.core import Device

    return tuple(Device(0).compute_capability)


def gpu_count() -> int:
    if isinstance(gpu_arch(), str):
        return 0
    from cuda.bindings import driver

    return driver.cuDeviceGetCount()[1]


def wanted_arch():
    """CUDIT_ARCH=sm_90 (set by the per-arch tox envs) -> (9, 0); None when unset."""
    name = os.environ.get("CUDIT_ARCH")
    if not name:
        return None
    digits = name.split("_", 1)[1]
    return int(digits[:-1]), int(digits[-1])


def pytest_collection_modifyitems(config, items):
    arch = gpu_arch()
    want = wanted_arch()
    if isinstance(arch, str):
        reason = arch
    elif want is not None and arch != want:
        reason = f"the attached GPU is sm_{arch[0]}{arch[1]}, this run is for sm_{want[0]}{want[1]}"
    else:
        if gpu_count() < 2:
            skip = pytest.mark.skip(reason=f"multi-GPU test skipped: {gpu_count()} GPU attached")
            for item in items:
                if "multi_gpu" in item.keywords:
                    item.add_marker(skip)
        return
    skip = pytest.mark.skip(reason=f"GPU test skipped: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def full_size_geometry():
    """Plan small GPU test shapes as production sizes are planned: without the rules for small
    grids (two heads a thread, one row a block), so the three- and four-head variants and blocks
    of several rows run."""
    from gpu_cases import tuned

    restore = tuned(small_grid_threads=0, one_row_blocks_up_to=0)
    yield
    restore()
