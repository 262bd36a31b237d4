#!/usr/bin/env python3
"""Compile every cudit kernel variant ahead of time into cubins, plus one PTX.

Toolchain: PyPI wheels only. NVRTC 12.x (nvidia-cuda-nvrtc-cu12, driven through
cuda.core's Program) turns the CUDA C++ under kernels/ into PTX; ptxas from
nvidia-cuda-nvcc-cu12 assembles each architecture's cubin and reports registers,
spills and shared memory, which go into manifest.json beside the cubins.

    python build_cubins.py                 # all architectures into cudit/_cubins
    python build_cubins.py --arch sm_90    # a subset (repeatable)
    python build_cubins.py --force         # rebuild even when up to date
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
KERNELS = ROOT / "kernels"
DEFAULT_OUT = ROOT / "cudit" / "_cubins"

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")
# Oldest virtual arch: the driver can JIT it for any GPU newer than every shipped cubin.
PTX_ARCH = "compute_80"
FAMILY = "qk_norm_rope"

DTYPES = {"f32": "float", "f16": "__half", "bf16": "__nv_bfloat16"}
ROPES = {"none": 0, "interleaved": 1, "half": 2}
NORMS = {"none": 0, "head": 1, "full": 2}
# Kernels outside the variant table: the benchmark's empty-launch baseline.
EXTRA_KERNELS = ("cudit_empty",)
# Heads a thread holds in registers (0: loops over heads).
HEADS_PER_THREAD = (1, 2, 3, 4, 0)
# Block-size bound by (vectors an item holds, heads a thread holds): it sets the register cap
# (65536 / threads), chosen as the largest block for which no architecture spills.
MAX_THREADS = {(1, 1): 1024, (1, 2): 768, (1, 3): 512, (1, 4): 512, (1, 0): 768,
               (2, 1): 512, (2, 2): 512, (2, 0): 512, (3, 1): 640, (3, 0): 640}
# Variants that fit a tighter cap (more threads resident), by (vectors, norm, heads a thread).
# Per-head rows of two vectors, and 16-bit per-head rows of four heads a thread, read a shared
# table late (kernels/qk_norm_rope.cu late_table): 96 and 80 registers. Three-vector rows of one
# head a thread, finished vector by vector: 68 registers on sm_90, 9 blocks of 96 an SM instead
# of 7 at the general bound (Lumina-2 on an H100 82.9 -> 87.3% of copy, docs/perf-notes.md v10);
# with the next vector's constants requested early, 80 and 8 blocks (87.4 -> 88.4%, v11).
MAX_THREADS_BY_NORM = {(1, "full", 4): 768, (1, "full", 3): 768, (1, "full", 2): 768, (1, "none", 4): 768,
                       (1, "none", 2): 1024, (1, "head", 1): 768, (1, "head", 4): 768, (2, "head", 2): 640,
                       (3, "head", 1): 768}
# fp32 per-head rows of four heads keep their table in registers under the general bound: the
# late table and 768 threads cost FLUX.1-fp32 88.0 -> 85.1% of copy (docs/perf-notes.md v8).
MAX_THREADS_BY_DTYPE = {("f32", 1, "head", 4): 512}
# Architectures whose ptxas spills a variant at the common bound: a looser one there (more
# registers a thread). The planner's blocks stay under VARIANT_MAX_THREADS (cudit/_planner.py),
# which is below every bound. By (arch, vectors, norm, heads a thread). The rows-ahead request
# (docs/perf-notes.md v9) added the full-dim K = 2 / 3 and per-head K = 4 entries, three-vector
# items the loop entries.
ARCH_MAX_THREADS = {("sm_100", 1, "full", 4): 512, ("sm_100", 1, "full", 3): 640, ("sm_100", 1, "full", 2): 640,
                    ("sm_100", 1, "head", 4): 640,
                    ("sm_120", 1, "full", 4): 512, ("sm_120", 1, "full", 3): 640, ("sm_120", 1, "full", 2): 640,
                    ("sm_120", 2, "head", 2): 576, ("sm_100", 3, "head", 0): 512, ("sm_120", 3, "head", 0): 512}
# Variants built a second time for a table the planner knows is one [S, D] slice for all heads
# (kernels/qk_norm_rope.cu TABLE_SHARED, name suffix _st), by (rope, norm, heads a thread): their
# launch bound. Full-dim rotate_half rows then read the slice vector by vector after the
# reduction: 80 registers, four blocks of 192 an SM instead of two of 240 (docs/perf-notes.md v9).
SHARED_TABLE_BOUNDS = {("half", "full", 2): 768}
# sm_100 and sm_120 spilled 4-20 bytes there at 768, 640 and 576: the general bound, by (arch,
# rope, norm, heads a thread). Not measured: no such card here.
SHARED_TABLE_ARCH_BOUNDS = {("sm_100", "half", "full", 2): 512, ("sm_120", "half", "full", 2): 512}
# Variants built a second time without the rows-ahead code (kernels/qk_norm_rope.cu AHEAD = 0,
# name suffix _na) for plans of several row groups a block, which never ask for rows ahead, by
# (rope, norm, heads a thread): Cosmos on an H100 90.1 -> 91.9% of copy (docs/perf-notes.md v10).
NO_AHEAD_VARIANTS = {("half", "head", 2)}
# Per-head rows whose items hold more vectors than the rope needs (cudit/_planner.py item_parts):
# vectors -> (activation dtypes, most heads a thread). Two: fp32 heads over 128 values (one vector
# a lane would need more than a warp's 32 lanes for a head). Three: D / VEC three times a power of
# two (D = 96: 4 lanes a head, not 12 of 16), one head a thread (two measured 2.5 points worse on
# Lumina-2 and spilled on every architecture but sm_90; finished vector by vector, 4.4 worse, v10).
EXTRA_PARTS = {2: (("f32",), 2), 3: (("f32", "f16", "bf16"), 1)}


def natural_parts(rope: str) -> int:
    """Vectors an item holds unless the planner asks for more: rotate_half pairs d with d + D/2."""
    return 2 if rope == "half" else 1


def kernel_name(dtype: str, rope: str, table, norm: str, k: int, parts: int, shared_table: bool = False,
                ahead: bool = True) -> str:
    """The name the runtime looks a variant up by (cudit/_planner.py builds the same)."""
    suffix = (f"_p{parts}" if parts != natural_parts(rope) else "") + ("_st" if shared_table else "") + \
        ("" if ahead else "_na")
    return f"qknr_{dtype}_{rope}{'_' + table if table else ''}_{norm}_k{k}{suffix}"


def _variant(dt, rope, table, norm, k, parts, shared_table=False, ahead=True) -> dict:
    bound = MAX_THREADS_BY_DTYPE.get((dt, parts, norm, k),
                                     MAX_THREADS_BY_NORM.get((parts, norm, k), MAX_THREADS[(parts, k)]))
    if shared_table:
        bound = SHARED_TABLE_BOUNDS[(rope, norm, k)]
    return {"name": kernel_name(dt, rope, table, norm, k, parts, shared_table, ahead), "dtype": dt,
            "table_dtype": table, "rope": rope, "norm": norm, "heads_per_thread": k, "parts": parts,
            "shared_table": shared_table, "ahead": ahead, "max_threads": bound}


def variants() -> list[dict]:
    """Every kernel the runtime may launch, with the name it is looked up by."""
    out = []
    for dt, rope, norm, k in itertools.product(DTYPES, ROPES, NORMS, HEADS_PER_THREAD):
        if rope == "none" and norm == "none":
            continue  # nothing to do: the runtime rejects it before planning
        if norm == "full" and k == 1:
            continue  # one head: the planner runs full-dim as per-head, the same computation
        if rope == "half" and k > 2:
            continue  # rotate_half holds at most 2 heads a thread (cudit/_planner.py MAX_K)
        if k == 3 and norm != "full":
            continue  # three heads a thread: full-dim rows only (cudit/_planner.py geometry)
        tables = DTYPES if rope != "none" else (None,)
        out += [_variant(dt, rope, table, norm, k, natural_parts(rope)) for table in tables]
        if (rope, norm, k) in SHARED_TABLE_BOUNDS:
            out += [_variant(dt, rope, table, norm, k, natural_parts(rope), True) for table in tables]
        if (rope, norm, k) in NO_AHEAD_VARIANTS:
            out += [_variant(dt, rope, table, norm, k, natural_parts(rope), ahead=False) for table in tables]
        if norm == "head" and rope != "half":
            out += [_variant(dt, rope, table, norm, k, parts)
                    for parts, (dts, most) in EXTRA_PARTS.items() if dt in dts and k <= most for table in tables]
    return out


def arch_bound(v: dict, arch: str) -> int:
    """The launch bound a variant is compiled with for one architecture."""
    if v["shared_table"]:
        return SHARED_TABLE_ARCH_BOUNDS.get((arch, v["rope"], v["norm"], v["heads_per_thread"]), v["max_threads"])
    return ARCH_MAX_THREADS.get((arch, v["parts"], v["norm"], v["heads_per_thread"]), v["max_threads"])


def instantiation_source(arch: str = "") -> str:
    lines = [f'#include "{FAMILY}.cu"']
    for v in variants():
        table = DTYPES[v["table_dtype"] or "f32"]
        lines.append(
            f"CUDIT_QKNR({v['name']}, {DTYPES[v['dtype']]}, {table}, {ROPES[v['rope']]}, "
            f"{NORMS[v['norm']]}, {v['heads_per_thread']}, {v['parts']}, {int(v['shared_table'])}, {int(v['ahead'])}, "
            f"{arch_bound(v, arch)})"
        )
    return "\n".join(lines) + "\n"


def _wheel_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"build_cubins: Python package {package!r} is missing; pip install it")
    return Path(list(spec.submodule_search_locations)[0])


def toolchain() -> dict:
    include = _wheel_dir("nvidia.cuda_runtime") / "include"
    ptxas = _wheel_dir("nvidia.cuda_nvcc") / "bin" / "ptxas"
    if not (include / "cuda_fp16.h").exists():
        raise SystemExit(f"build_cubins: no cuda_fp16.h under {include} (nvidia-cuda-runtime-cu12)")
    if not ptxas.exists():
        raise SystemExit(f"build_cubins: no ptxas at {ptxas} (nvidia-cuda-nvcc-cu12)")
    version = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True, check=True).stdout
    release = re.search(r"release (\d+\.\d+)", version)
    return {"include": str(include), "ptxas": str(ptxas), "version": release.group(1) if release else "?"}


def source_digest(tools: dict) -> str:
    h = hashlib.sha256()
    for path in sorted(KERNELS.glob("*")) + [Path(__file__)]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(tools["version"].encode())
    return h.hexdigest()


def _nvrtc_check(result):
    from cuda.bindings import nvrtc

    err, *rest = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"NVRTC: {nvrtc.nvrtcGetErrorString(err)[1].decode()}")
    return rest[0] if len(rest) == 1 else rest


def compile_ptx(virtual_arch: str, tools: dict, arch: str = "") -> str:
    """NVRTC front end (cuda.bindings.nvrtc: cuda.core's Program needs a driver, CI has none)."""
    from cuda.bindings import nvrtc

    prog = _nvrtc_check(nvrtc.nvrtcCreateProgram(instantiation_source(arch).encode(), f"{FAMILY}_variants.cu".encode(),
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
    missing = ({v["name"] for v in variants()} | set(EXTRA_KERNELS)) - set(kernels)
    if missing:
        raise SystemExit(f"build_cubins: ptxas report for {arch} lacks {sorted(missing)}")
    for v in variants():
        if arch_bound(v, arch) != v["max_threads"]:
            kernels[v["name"]]["max_threads"] = arch_bound(v, arch)
    return {"file": cubin.name, "kernels": kernels}


def build_ptx(tools: dict, out: Path) -> dict:
    path = out / f"{FAMILY}.{PTX_ARCH}.ptx"
    path.write_text(compile_ptx(PTX_ARCH, tools))
    return {"arch": PTX_ARCH, "file": path.name}


def load_manifest(out: Path) -> dict:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def up_to_date(old: dict, arch: str, digest: str, out: Path) -> bool:
    entry = old.get("archs", {}).get(arch)
    return bool(entry) and entry.get("digest") == digest and (out / entry["file"]).exists()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", choices=ARCHS, help="build only these (repeatable)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)

    tools = toolchain()
    digest = source_digest(tools)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    old = load_manifest(out)
    archs = args.arch or list(ARCHS)

    manifest = {
        "family": FAMILY,
        "toolkit": tools["version"],
        "variants": {v["name"]: {k: x for k, x in v.items() if k != "name"} for v in variants()},
        # Keep what other invocations built, so that `--arch` adds to the set.
        "archs": {a: e for a, e in old.get("archs", {}).items() if a in ARCHS and up_to_date(old, a, digest, out)},
        "ptx": old.get("ptx") if old.get("ptx", {}).get("digest") == digest else None,
    }
    todo = [a for a in archs if args.force or not up_to_date(old, a, digest, out)]
    need_ptx = args.force or manifest["ptx"] is None or not (out / manifest["ptx"]["file"]).exists()

    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(build_arch, a, tools, out): a for a in todo}
        ptx_future = pool.submit(build_ptx, tools, out) if need_ptx else None
        for fut in concurrent.futures.as_completed(futures):
            arch = futures[fut]
            manifest["archs"][arch] = dict(fut.result(), digest=digest)
            worst = max(manifest["archs"][arch]["kernels"].values(), key=lambda k: k["registers"])
            print(f"build_cubins: {arch}: {len(manifest['archs'][arch]['kernels'])} kernels, "
                  f"max {worst['registers']} registers", flush=True)
        if ptx_future is not None:
            manifest["ptx"] = dict(ptx_future.result(), digest=digest)
    skipped = sorted(set(archs) - set(todo))
    if skipped:
        print(f"build_cubins: up to date: {', '.join(skipped)}")
    manifest["archs"] = dict(sorted(manifest["archs"].items(), key=lambda kv: int(kv[0][3:])))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
