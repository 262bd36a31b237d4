#!/usr/bin/env python3
"""Compile every cudit kernel variant ahead of time into cubins, plus one PTX.

Toolchain: PyPI wheels only. NVRTC 12.x (nvidia-cuda-nvrtc-cu12, through cuda.bindings' nvrtc
module, which needs no driver) turns the CUDA C++ under kernels/ into PTX; ptxas from
nvidia-cuda-nvcc-cu12 assembles each architecture's cubin and reports registers, spills and
shared memory, which go into manifest.json beside the cubins. The variants come from
cudit/_variants.py, the table the runtime picks from.

    python build_cubins.py                 # all architectures into cudit/_cubins
    python build_cubins.py --arch sm_90    # a subset (repeatable)
    python build_cubins.py --force         # rebuild even when up to date

Each output is also kept in a build cache keyed by the sources' digest ($CUDIT_BUILD_CACHE, else
$XDG_CACHE_HOME/cudit/build or ~/.cache/cudit/build; "off" turns it off), so that a second build
of the same sources (an sdist's wheel after an install from the tree, a reinstall) copies instead
of compiling.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
KERNELS = ROOT / "kernels"
DEFAULT_OUT = ROOT / "cudit" / "_cubins"
VARIANTS_FILE = ROOT / "cudit" / "_variants.py"


def _load_variants():
    """cudit/_variants.py by path: the package itself needs numpy and cuda-core, the build neither."""
    spec = importlib.util.spec_from_file_location("cudit_variants", VARIANTS_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


variants = _load_variants()
ARCHS, PTX_ARCH, PTX_SOURCE, FAMILY = variants.ARCHS, variants.PTX_ARCH, variants.PTX_SOURCE, variants.FAMILY


def _wheel_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"build_cubins: Python package {package!r} is missing; pip install it")
    return Path(list(spec.submodule_search_locations)[0])


def _preload_nvrtc() -> None:
    """Load libnvrtc from its wheel by path: cuda-bindings looks for it in the installed
    site-packages, which a pip build environment's are not."""
    import ctypes

    libs = sorted((_wheel_dir("nvidia.cuda_nvrtc") / "lib").glob("libnvrtc.so.*"))
    if not libs:
        raise SystemExit("build_cubins: no libnvrtc.so in nvidia-cuda-nvrtc-cu12")
    ctypes.CDLL(str(libs[0]), mode=ctypes.RTLD_GLOBAL)


def toolchain() -> dict:
    include = _wheel_dir("nvidia.cuda_runtime") / "include"
    ptxas = _wheel_dir("nvidia.cuda_nvcc") / "bin" / "ptxas"
    if not (include / "cuda_fp16.h").exists():
        raise SystemExit(f"build_cubins: no cuda_fp16.h under {include} (nvidia-cuda-runtime-cu12)")
    if not ptxas.exists():
        raise SystemExit(f"build_cubins: no ptxas at {ptxas} (nvidia-cuda-nvcc-cu12)")
    version = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True, check=True).stdout
    release = re.search(r"release (\d+\.\d+)", version)
    return {"include": str(include), "ptxas": str(ptxas), "version": release.group(1) if release else "?",
            "nvrtc": nvrtc_version()}


def nvrtc_version() -> str:
    _preload_nvrtc()
    from cuda.bindings import nvrtc

    return "{}.{}".format(*_nvrtc_check(nvrtc.nvrtcVersion()))


def source_digest(tools: dict) -> str:
    h = hashlib.sha256()
    for path in sorted(KERNELS.glob("*")) + [Path(__file__), VARIANTS_FILE]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(f"{tools['version']} {tools['nvrtc']}".encode())
    return h.hexdigest()


def _nvrtc_check(result):
    from cuda.bindings import nvrtc

    err, *rest = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"NVRTC: {nvrtc.nvrtcGetErrorString(err)[1].decode()}")
    return rest[0] if len(rest) == 1 else rest


def compile_ptx(virtual_arch: str, tools: dict, arch: str = "") -> str:
    """NVRTC front end (cuda.bindings.nvrtc: cuda.core's Program needs a driver, CI has none)."""
    _preload_nvrtc()
    from cuda.bindings import nvrtc

    prog = _nvrtc_check(nvrtc.nvrtcCreateProgram(variants.instantiation_source(arch).encode(), f"{FAMILY}_variants.cu".encode(),
                                                 0, [], []))
    opts = [f"--gpu-architecture={virtual_arch}", "--std=c++17", "-default-device",
            f"-I{KERNELS}", f"-I{tools['include']}"]
    try:
        err, = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        size = _nvrtc_check(nvrtc.nvrtcGetProgramLogSize(prog))
        log = bytearray(size)
        _nvrtc_check(nvrtc.nvrtcGetProgramLog(prog, log))
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise SystemExit(f"build_cubins: NVRTC failed for {virtual_arch}:\n{log.decode(errors='replace')}")
        size = _nvrtc_check(nvrtc.nvrtcGetPTXSize(prog))
        ptx = bytearray(size)
        _nvrtc_check(nvrtc.nvrtcGetPTX(prog, ptx))
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return bytes(ptx).rstrip(b"\0").decode()


_RESOURCE = re.compile(
    r"Compiling entry function '(?P<name>\w+)'.*?"
    r"(?P<stack>\d+) bytes stack frame, (?P<st>\d+) bytes spill stores, (?P<ld>\d+) bytes spill loads.*?"
    r"Used (?P<regs>\d+) registers(?P<rest>[^\n]*)",
    re.S,
)


def parse_ptxas_report(report: str) -> dict:
    """ptxas -v output -> {kernel: {registers, spill_stores, spill_loads, stack, static_smem}}."""
    kernels = {}
    for m in _RESOURCE.finditer(report):
        smem = re.search(r"(\d+) bytes smem", m.group("rest"))
        kernels[m.group("name")] = {
            "registers": int(m.group("regs")),
            "spill_stores": int(m.group("st")),
            "spill_loads": int(m.group("ld")),
            "stack_bytes": int(m.group("stack")),
            "static_smem": int(smem.group(1)) if smem else 0,
        }
    return kernels


def build_arch(arch: str, tools: dict, out: Path) -> dict:
    """One architecture's cubin and its resource report; PTX_SOURCE's build also keeps its PTX,
    the one shipped for GPUs newer than every cubin (entry["ptx"])."""
    ptx = compile_ptx("compute_" + arch[3:], tools, arch)
    cubin = out / f"{FAMILY}.{arch}.cubin"
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path = Path(tmp) / "k.ptx"
        ptx_path.write_text(ptx)
        res = subprocess.run(
            [tools["ptxas"], f"-arch={arch}", "-O3", "-v", str(ptx_path), "-o", str(cubin)],
            capture_output=True, text=True,
        )
    if res.returncode != 0:
        raise SystemExit(f"build_cubins: ptxas failed for {arch}:\n{res.stderr}")
    kernels = parse_ptxas_report(res.stderr)
    missing = variants.KERNEL_NAMES - set(kernels)
    if missing:
        raise SystemExit(f"build_cubins: ptxas report for {arch} lacks {sorted(missing)}")
    entry = {"file": cubin.name, "kernels": kernels}
    if arch == PTX_SOURCE:
        shipped = out / f"{FAMILY}.{PTX_ARCH}.ptx"
        shipped.write_text(ptx)
        entry["ptx"] = {"arch": PTX_ARCH, "file": shipped.name}
    return entry


def load_manifest(out: Path) -> dict:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def up_to_date(old: dict, arch: str, digest: str, out: Path) -> bool:
    entry = old.get("archs", {}).get(arch)
    return bool(entry) and entry.get("digest") == digest and (out / entry["file"]).exists()


def cache_dir(digest: str) -> Path | None:
    """Where outputs of these exact sources and tools are kept; None when the cache is off."""
    root = os.environ.get("CUDIT_BUILD_CACHE") or \
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cudit" / "build"
    return None if str(root) == "off" else Path(root) / digest


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _files(entry: dict) -> list:
    """The output files a build entry names: its cubin, and the PTX beside PTX_SOURCE's."""
    return [entry["file"]] + ([entry["ptx"]["file"]] if "ptx" in entry else [])


def from_cache(cache: Path | None, arch: str, out: Path) -> dict | None:
    """The cached build of `arch` copied into out, and its entry; None on a miss."""
    if cache is None:
        return None
    try:
        entry = json.loads((cache / f"{arch}.json").read_text())
        for name in _files(entry):
            _copy_atomic(cache / name, out / name)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return entry


def to_cache(cache: Path | None, arch: str, entry: dict, out: Path) -> None:
    if cache is None:
        return
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for name in _files(entry):
            _copy_atomic(out / name, cache / name)
        tmp = cache / f".{arch}.json.{os.getpid()}"
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, cache / f"{arch}.json")   # the entry last: it marks the build complete
    except OSError as e:
        print(f"build_cubins: not cached ({e})", flush=True)


def _timed(fn, *args):
    t0 = time.monotonic()
    return fn(*args), time.monotonic() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", choices=ARCHS, help="build only these (repeatable)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true", help="compile even when up to date or cached")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)

    tools = toolchain()
    digest = source_digest(tools)
    cache = cache_dir(digest)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    old = load_manifest(out)
    archs = args.arch or list(ARCHS)

    manifest = {
        "family": FAMILY,
        "toolkit": tools["version"],
        # Keep what other invocations built, so that `--arch` adds to the set.
        "archs": {a: e for a, e in old.get("archs", {}).items() if a in ARCHS and up_to_date(old, a, digest, out)},
        "ptx": old.get("ptx") if (old.get("ptx") or {}).get("digest") == digest else None,
    }
    ptx_ok = manifest["ptx"] is not None and (out / manifest["ptx"]["file"]).exists()
    todo = [a for a in archs if args.force or not up_to_date(old, a, digest, out) or (a == PTX_SOURCE and not ptx_ok)]
    current = sorted(set(archs) - set(todo))

    def record(arch: str, entry: dict) -> dict:
        entry = dict(entry, digest=digest)
        if "ptx" in entry:
            manifest["ptx"] = dict(entry.pop("ptx"), digest=digest)
        manifest["archs"][arch] = entry
        return entry

    cached = []
    for arch in [] if args.force else todo:
        entry = from_cache(cache, arch, out)
        if entry:
            record(arch, entry)
            cached.append(arch)
    todo = [a for a in todo if a not in cached]
    if cached:
        print(f"build_cubins: from the build cache {cache}: {', '.join(cached)}", flush=True)

    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(_timed, build_arch, a, tools, out): a for a in todo}
        for fut in concurrent.futures.as_completed(futures):
            arch = futures[fut]
            result, seconds = fut.result()
            to_cache(cache, arch, result, out)
            kernels = record(arch, result)["kernels"]
            worst = max(kernels.values(), key=lambda k: k["registers"])
            print(f"build_cubins: {arch}: {len(kernels)} kernels, max {worst['registers']} registers"
                  f"{' (and the PTX)' if arch == PTX_SOURCE else ''}, {seconds:.0f} s", flush=True)
    if current:
        print(f"build_cubins: up to date: {', '.join(current)}")
    manifest["archs"] = dict(sorted(manifest["archs"].items(), key=lambda kv: int(kv[0][3:])))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
