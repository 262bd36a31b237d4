"""Launch-bound shapes: this tree's cudit against other copies, and a plain elementwise kernel.

    PYTHONPATH=.:ab python benchmarks/launch_ab.py [PACKAGE ...]

Each launch-bound shape of `python -m cudit launch` (graphs of 100 launches, PDL off), in
microseconds over an empty kernel's, medians of three: this tree, each PACKAGE (written by
benchmarks/ab_package.py), then torch's in-place `mul_(1)` over a contiguous buffer of the same
bytes (one streaming kernel: what moving these bytes costs without a reduction) and over the
Q and K columns of the packed input (a strided view, as cudit reads them).
"""
import statistics
import sys

import torch

import ab_package  # benchmarks/, beside this script
import bench  # benchmarks/, beside this script
import launchbench
from cudit import _launch


def main(names) -> int:
    pkgs = [ab_package.import_package(n) for n in names]
    for launch_module in [_launch] + [__import__(p.__name__ + "._launch", fromlist=["PDL"]) for p in pkgs]:
        launch_module.PDL = False
    empty = launchbench._graph_us(launchbench._empty_launcher(torch), torch)
    cols = ["this"] + [p.__name__ for p in pkgs] + ["mul_ same bytes", "mul_ Q,K view"]
    print(f"{torch.cuda.get_device_properties(0).name}; empty kernel {empty:.2f} us; us over empty: "
          + " | ".join(cols))
    for s in launchbench.LAUNCH_BOUND:
        inp = bench.make_inputs(s, torch)
        flat = torch.randn(bench.bytes_moved(s) // 4, device="cuda", dtype=torch.bfloat16)  # half read, half written
        view = inp[0][..., : 2 * s.heads * s.d]
        runs = [bench.cudit_call(s)] + [bench.cudit_call(s, p) for p in pkgs]
        fns = [lambda r=r: r(inp) for r in runs] + [lambda: flat.mul_(1.0), lambda: view.mul_(1.0)]
        times = [[] for _ in fns]
        for _ in range(3):
            for t, fn in zip(times, fns):
                t.append(launchbench._graph_us(fn, torch))
        print(f"{s.name:<20}" + "".join(f"{statistics.median(t) - empty:+9.2f}" for t in times), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
