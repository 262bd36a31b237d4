"""Device time of this tree's cudit against another copy's, shape by shape, in one process.

    PYTHONPATH=.:ab python benchmarks/kernel_ab.py PACKAGE [SHAPE,SHAPE ...] [--heads-per-thread K]
                                                   [--row-iters N] [--fp8 [--amax]]

PACKAGE: a copy written by benchmarks/ab_package.py (with --arch, to time that commit's
kernels). Shapes: names from bench.production_shapes() (default: all). Each shape is
timed three times each way, alternating, with the benchmark's method (graphs of rotating
inputs, device events); the table gives medians, % of copy bandwidth and new / other. The
tuning knobs (as benchmarks/bench.py has them) apply to this tree's planner only. --fp8: the
shapes of benchmarks/fp8_bench.py, Q, K and V written as fp8 in one call (--amax: with
per-tensor amaxes too).
"""
import argparse
import statistics
import sys

import torch

import ab_package  # benchmarks/, beside this script
import bench  # benchmarks/, beside this script
import fp8_bench  # benchmarks/, beside this script


def forward_kind(l2: int):
    """(shapes, inputs of a shape, call of a shape through a package, bytes of a shape): bf16 rows."""
    return (bench.production_shapes(), lambda s: bench.rotation(s, torch, l2), bench.cudit_call,
            bench.bytes_moved)


def fp8_kind(l2: int, amax: bool):
    """The same for fp8 output: four input sets, each with its own fp8 output, as fp8_bench rotates."""
    return (fp8_bench.SHAPES,
            lambda s: fp8_bench.with_fp8_buffers([bench.make_inputs(s, torch) for _ in range(4)], torch),
            lambda s, pkg=None: fp8_bench.fp8_call(s, torch, amax, cudit=pkg), fp8_bench.fp8_bytes)


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    ap.add_argument("shapes", nargs="?", default="")
    ap.add_argument("--heads-per-thread", type=int, default=None)
    ap.add_argument("--row-iters", type=int, default=None)
    ap.add_argument("--fp8", action="store_true", help="fp8 output rows (fp8_bench's shapes)")
    ap.add_argument("--amax", action="store_true", help="with --fp8: amaxes asked for too")
    args = ap.parse_args(argv)
    pkg = ab_package.import_package(args.package)
    bench.apply_knobs(args.heads_per_thread, args.row_iters)
    only = set(args.shapes.split(",")) if args.shapes else None
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    copy = bench.copy_bandwidth(torch)
    print(f"{torch.cuda.get_device_properties(0).name}; copy bandwidth {copy:.0f} GB/s; other: {pkg.__name__}")
    shapes, make, call, moved = fp8_kind(l2, args.amax) if args.fp8 else forward_kind(l2)
    for s in shapes:
        if only and s.name not in only:
            continue
        inputs = make(s)
        new, old = [], []
        for _ in range(3):
            new.append(bench.time_call(call(s), inputs, torch))
            old.append(bench.time_call(call(s, pkg), inputs, torch))
        n, o = statistics.median(new) * 1e3, statistics.median(old) * 1e3
        floor = moved(s) / copy / 1e3
        print(f"{s.name:<28} this {n:8.1f} us ({floor / n * 100:5.1f}%)  other {o:8.1f} us "
              f"({floor / o * 100:5.1f}%)  this/other {n / o:.3f}", flush=True)
        del inputs
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
