"""Shipped cubins: the manifest, architecture selection and (lazy, cached) module loading."""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ._errors import NoImageError
from ._variants import PTX_SOURCE

# CUDIT_CUBIN_DIR: a developer's knob to load another build (A/B timing of kernel variants).
CUBIN_DIR = Path(os.environ.get("CUDIT_CUBIN_DIR") or Path(__file__).resolve().parent / "_cubins")


@functools.lru_cache(maxsize=None)
def manifest(directory: Path = CUBIN_DIR) -> dict:
    path = Path(directory) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NoImageError(f"no cubins in {directory}: build them with `python build_cubins.py`") from None


def arch_tuple(name: str) -> tuple:
    """'sm_90' / 'compute_80' -> (9, 0); 'sm_120' -> (12, 0)."""
    digits = name.split("_", 1)[1]
    return int(digits[:-1]), int(digits[-1])


@dataclass(frozen=True)
class Image:
    kind: str       # "cubin" or "ptx"
    arch: str       # "sm_90", "compute_80"
    file: str


def select_image(device_arch: tuple, man: dict, driver_version: str = "unknown") -> Image:
    """Cubin of the same major with the highest minor not above the device's; else the PTX."""
    major, minor = device_arch
    same_major = [(arch_tuple(a), a) for a in man["archs"] if arch_tuple(a)[0] == major and arch_tuple(a)[1] <= minor]
    if same_major:
        _, arch = max(same_major)
        return Image("cubin", arch, man["archs"][arch]["file"])
    ptx = man.get("ptx")
    if ptx and arch_tuple(ptx["arch"]) <= tuple(device_arch):
        return Image("ptx", ptx["arch"], ptx["file"])
    raise NoImageError(
        f"this GPU is sm_{major}{minor}; cudit ships cubins for {', '.join(man['archs']) or 'none'}"
        f" and PTX for {ptx['arch'] if ptx else 'none'} (JIT-able for newer GPUs only); "
        f"CUDA driver version {driver_version}"
    )


def kernel_meta(man: dict, image: Image, variant) -> dict:
    """Registers, shared memory and launch bound of a variant's kernel (the PTX, compiled with
    PTX_SOURCE's bounds, has no report: assume the register cap)."""
    if image.kind == "ptx":
        bound = variant.bound(PTX_SOURCE)
        return {"registers": 65536 // bound, "static_smem": 512, "max_threads": bound}
    try:
        return {"max_threads": variant.bound(image.arch), **man["archs"][image.arch]["kernels"][variant.name]}
    except KeyError:
        raise NoImageError(
            f"the cubins have no kernel {variant.name}: they predate this runtime (rebuild with "
            f"`python build_cubins.py`)") from None


@functools.lru_cache(maxsize=None)
def _object_code(path: str, kind: str):
    from cuda.core import ObjectCode

    return ObjectCode.from_cubin(path) if kind == "cubin" else ObjectCode.from_ptx(path)


@functools.lru_cache(maxsize=None)
def load_kernel(image: Image, name: str):
    """cuda.core Kernel (context-independent CUkernel) of one variant."""
    return _object_code(str(CUBIN_DIR / image.file), image.kind).get_kernel(name)
