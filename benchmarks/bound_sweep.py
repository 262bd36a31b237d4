"""Launch bounds swept per kernel variant (issue #8): which variant each shape launches, cubins of
some variants at one bound, and shapes timed under several cubin directories in one process.

    python benchmarks/bound_sweep.py map [--kind K]                       # GPU: shape -> kernels
    python benchmarks/bound_sweep.py build OUT BOUND NAME[@BOUND][,..] [--arch sm_90]
                                                                          # no GPU; BOUND 0: the table's
    python benchmarks/bound_sweep.py time SHAPES DIR[,DIR..] [--rounds 3] [--kind K] [--heads-per-thread N]

`build` writes a cubin of just those variants (named as the shipped one) and a manifest with
their registers and spills. K: forward (the shapes of benchmarks/bench.py), fp8 (fp8_bench.py;
fp8-amax with amax outputs too) or backward (backward_bench.py). `time` takes shape names (`all`
for every one), loads each directory's cubin in turn in this process (DIR `ship`: cudit/_cubins)
and prints medians, % of copy and the ratio to the first directory. Every shape's variants must
be in every directory. Results: docs/dev/perf-notes.md v26.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
KINDS = ("forward", "fp8", "fp8-amax", "backward")


def _variant(table, name: str):
    """A forward or backward variant of the table by its kernel name (None: another kernel)."""
    return table.BY_NAME.get(name) or table.BACKWARD_BY_NAME.get(name)


def build(out: Path, bound: int, entries: list, arch: str) -> None:
    import build_cubins as b

    v = b.variants
    wanted = [(name, int(own or bound)) for name, _, own in (e.partition("@") for e in entries)]   # NAME@BOUND
    names = [name for name, _ in wanted]
    lines = []
    for name, at in wanted:
        variant = _variant(v, name)
        if variant is None:
            raise SystemExit(f"bound_sweep: no variant named {name}")
        line = variant.instantiation(arch)
        lines.append(line if not at else f"{line.rsplit(',', 1)[0]}, {at})")   # the bound is the last argument
    source = "\n".join([f'#include "{v.FAMILY}.cu"', f'#include "{v.FAMILY}_bwd.cu"', *lines]) + "\n"
    tools = b.toolchain()
    out.mkdir(parents=True, exist_ok=True)
    # build_arch compiles the table's translation unit and expects its kernels: these instead.
    saved = v.instantiation_source, v.KERNEL_NAMES
    v.instantiation_source, v.KERNEL_NAMES = (lambda _arch="": source), frozenset(names) | {v.BACKWARD_REDUCE}
    try:
        res = b.build_arch(arch, tools, out)
    finally:
        v.instantiation_source, v.KERNEL_NAMES = saved
    man = {"family": v.FAMILY, "toolkit": tools["version"], "archs": {arch: dict(res, digest="bound-sweep")}, "ptx": None}
    (out / "manifest.json").write_text(json.dumps(man, indent=1) + "\n")
    for name, k in sorted(res["kernels"].items()):
        print(f"{arch} {bound or 'table'} {name} registers {k['registers']} stack {k['stack_bytes']} "
              f"spill {k['spill_stores']}", flush=True)


def forget_launches() -> None:
    """Plans and launchers are made again at the next call, their kernels loaded again."""
    from cudit import _launch, _planner, api

    _launch._LAUNCHERS.clear()
    _launch._BACKWARD.clear()
    api.clear_warm()
    _planner.clear_cache()


def use_cubins(directory: Path) -> None:
    """Load kernels from another directory from now on."""
    from cudit import _modules

    _modules.CUBIN_DIR = directory
    _modules.load_kernel.cache_clear()
    _modules._object_code.cache_clear()
    forget_launches()


def workload(kind: str, torch, l2_bytes: int) -> list:
    """(shape, inputs, call, bytes) of each shape: the forward (bench), fp8 output (fp8_bench) or
    the backward (backward_bench)."""
    import backward_bench
    import bench
    import fp8_bench

    out = []
    if kind.startswith("fp8"):
        for s in fp8_bench.SHAPES:
            inputs = lambda s=s: fp8_bench.with_fp8_buffers([bench.make_inputs(s, torch) for _ in range(4)], torch)
            call = lambda s=s: fp8_bench.fp8_call(s, torch, amax=kind == "fp8-amax")
            out.append((s, inputs, call, fp8_bench.fp8_bytes(s)))
    elif kind == "backward":
        for s in backward_bench.SHAPES:
            prepare, run = backward_bench.backward_call(s, torch)
            inputs = lambda s=s, prepare=prepare: [prepare(bench.make_inputs(s, torch)) for _ in range(2)]
            out.append((s, inputs, lambda run=run: run, backward_bench.backward_bytes(s)))
    else:
        for s in bench.production_shapes():
            out.append((s, lambda s=s: bench.rotation(s, torch, l2_bytes), lambda s=s: bench.cudit_call(s),
                        bench.bytes_moved(s)))
    return out


def kernel_map(kind: str) -> None:
    import torch

    from cudit import _launch, _modules, _variants

    used: list = []
    load = _modules.load_kernel
    _modules.load_kernel = lambda image, name: (used.append(name), load(image, name))[1]
    image = _launch.device_state(0).image
    kernels = _modules.manifest()["archs"][image.arch]["kernels"]
    for s, inputs, call, _ in workload(kind, torch, 0):
        forget_launches()
        used.clear()
        call()(inputs()[0])
        torch.cuda.synchronize()
        info = [f"{n} ({kernels[n]['registers']} registers, bound {_variant(_variants, n).bound(image.arch)})"
                for n in sorted(set(used)) if _variant(_variants, n)]
        print(f"{s.name:<26} {', '.join(info)}", flush=True)
        torch.cuda.empty_cache()


def time_dirs(kind: str, shapes: str, dirs: list, rounds: int, heads_per_thread=None) -> None:
    import torch

    import bench

    bench.apply_knobs(heads_per_thread)

    props = torch.cuda.get_device_properties(0)
    copy = bench.copy_bandwidth(torch)
    print(f"{props.name}; copy bandwidth {copy:.0f} GB/s; medians of {rounds} rounds, directories in turn")
    paths = [HERE.parent / "cudit" / "_cubins" if d == "ship" else Path(d) for d in dirs]
    want = None if shapes == "all" else set(shapes.split(","))
    for s, make, call, nbytes in workload(kind, torch, props.L2_cache_size):
        if want and s.name not in want:
            continue
        inputs, floor = make(), nbytes / copy / 1e3
        times = [[] for _ in paths]
        for _ in range(rounds):
            for t, path in zip(times, paths):
                use_cubins(path)
                t.append(bench.time_call(call(), inputs, torch) * 1e3)
        med = [statistics.median(t) for t in times]
        print(f"{s.name:<26}" + "".join(f"  {d}: {m:7.1f} us {floor / m * 100:5.1f}% {m / med[0]:.3f}"
                                         for d, m in zip(dirs, med)), flush=True)
        del inputs
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("map")
    m.add_argument("--kind", choices=KINDS, default="forward")
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    b.add_argument("bound", type=int)
    b.add_argument("names")
    b.add_argument("--arch", default="sm_90")
    t = sub.add_parser("time")
    t.add_argument("shapes")
    t.add_argument("dirs")
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--kind", choices=KINDS, default="forward")
    t.add_argument("--heads-per-thread", type=int, help="tuning: force the planner's heads a thread")
    args = ap.parse_args(argv)
    if args.cmd == "map":
        kernel_map(args.kind)
    elif args.cmd == "build":
        build(args.out, args.bound, args.names.split(","), args.arch)
    else:
        time_dirs(args.kind, args.shapes, args.dirs.split(","), args.rounds, args.heads_per_thread)
    return 0


if __name__ == "__main__":
    sys.exit(main())
