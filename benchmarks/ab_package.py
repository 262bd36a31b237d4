"""Another commit's cudit as a package beside this one, for A/B timing in one process.

    python benchmarks/ab_package.py REF [--out ab] [--arch sm_90 ...]

Writes OUT/cudit_<REF>/: that commit's cudit/*.py and tuning tables, with its torch library renamed to
cudit_<REF> so both copies can register their operators, and with --arch the cubins that
commit builds from its own kernels (its build_cubins.py). Without --arch the copy loads this
tree's cubins: fine for host-side A/B while the kernel parameters are unchanged. Carry OUT to
the GPU machine (it is git-ignored), then:

    PYTHONPATH=.:ab python benchmarks/host_breakdown.py --ab cudit_<REF>
    PYTHONPATH=.:ab python benchmarks/kernel_ab.py cudit_<REF> [SHAPE,SHAPE ...]

Process-to-process drift on the device hosts is 2-5 us of host time and a few percent of
device time: compare only inside one process.
"""
from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_name(ref: str) -> str:
    return "cudit_" + re.sub(r"\W", "_", ref)


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True).stdout


def rename_torch_library(source: str, name: str) -> str:
    """A copy's torch.py registering its operators as `name` instead of cudit."""
    for old, new in (('Library("cudit"', f'Library("{name}"'), ('"cudit::', f'"{name}::'),
                     ("torch.ops.cudit.", f"torch.ops.{name}.")):
        source = source.replace(old, new)
    return source


def write_package(ref: str, out: Path, archs=()) -> Path:
    """OUT/cudit_<ref> from that commit; with archs, also its cubins. Returns the package dir."""
    name = package_name(ref)
    dest = out / name
    dest.mkdir(parents=True, exist_ok=False)
    with tempfile.TemporaryDirectory() as tmp:
        tar = tarfile.open(fileobj=io.BytesIO(_git("archive", ref)), mode="r:")
        try:
            tar.extractall(tmp, filter="data")
        except TypeError:   # Python before 3.11.4: no extraction filters (our own repository)
            tar.extractall(tmp)
        for src in sorted((Path(tmp) / "cudit").glob("*.py")):
            text = src.read_text()
            (dest / src.name).write_text(rename_torch_library(text, name) if src.name == "torch.py" else text)
        tables = Path(tmp) / "cudit" / "tuning"   # its tuning tables: without them it plans by the analytic default
        if tables.is_dir():
            shutil.copytree(tables, dest / "tuning")
        if archs:
            build = [sys.executable, str(Path(tmp) / "build_cubins.py"), "--out", str(dest / "_cubins")]
            for arch in archs:
                build += ["--arch", arch]
            subprocess.run(build, check=True)
    return dest


def import_package(name: str):
    """Import an A/B copy: its own cubins where it has them, else this tree's (CUDIT_CUBIN_DIR)."""
    import importlib
    import importlib.util
    import os

    spec = importlib.util.find_spec(name)
    if spec is None:
        raise SystemExit(f"{name} is not importable: PYTHONPATH should hold the folder it was written to")
    saved = os.environ.get("CUDIT_CUBIN_DIR")
    if (Path(spec.origin).parent / "_cubins").is_dir():   # its own build, whatever this tree loads
        os.environ.pop("CUDIT_CUBIN_DIR", None)
    else:
        import cudit._modules

        os.environ["CUDIT_CUBIN_DIR"] = str(cudit._modules.CUBIN_DIR)   # read once, at its import
    try:
        pkg = importlib.import_module(name)
    finally:
        if saved is None:
            os.environ.pop("CUDIT_CUBIN_DIR", None)
        else:
            os.environ["CUDIT_CUBIN_DIR"] = saved
    try:
        importlib.import_module(name + ".torch")
    except ImportError:   # torch absent: the public call only
        pass
    return pkg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ref", help="a commit, branch or tag")
    ap.add_argument("--out", type=Path, default=ROOT / "ab")
    ap.add_argument("--arch", action="append", default=[], help="also build that commit's cubins (repeatable)")
    args = ap.parse_args(argv)
    print(write_package(args.ref, args.out, args.arch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
