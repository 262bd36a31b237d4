"""Production shapes against one plain elementwise kernel moving the same bytes.

    PYTHONPATH=. python benchmarks/same_bytes.py [SHAPE,SHAPE ... | all] [--scale 0.5,1,2,4]

For each shape (default: the small ones and two large references): cudit's time and torch's
in-place `mul_(1)` over contiguous buffers of the shape's bytes (half read, half written), both
with the benchmark's method (graphs over input sets rotated past L2, device events, medians of
three), as % of the 1 GiB copy bandwidth. The second column says what a streaming kernel
reaches at that size, so it separates what the size costs from what the kernel does. --scale
repeats each shape at these multiples of its tokens: time minus floor against size separates a
fixed cost per launch (start and drain of the grid) from the steady state's bandwidth.
"""
import argparse
import dataclasses
import statistics
import sys

import torch

import bench  # benchmarks/, beside this script

DEFAULT = "FLUX.1,FLUX.2,Lumina-2,FLUX.1-other-rope,FLUX.1-other-norm,WAN-1.3B,HunyuanVideo"


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shapes", nargs="?", default=DEFAULT)
    ap.add_argument("--scale", default="1")
    args = ap.parse_args(argv)
    only = {s.name for s in bench.production_shapes()} if args.shapes == "all" else set(args.shapes.split(","))
    copy = bench.copy_bandwidth(torch)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    print(f"{torch.cuda.get_device_properties(0).name}; copy bandwidth {copy:.0f} GB/s")
    for base in bench.production_shapes():
        if base.name not in only:
            continue
        for scale in (float(x) for x in args.scale.split(",")):
            s = dataclasses.replace(base, tokens=int(base.tokens * scale), compile=False)
            nbytes = bench.bytes_moved(s)
            floor = nbytes / copy / 1e3
            inputs = bench.rotation(s, torch, l2)
            bufs = [torch.randn(nbytes // 4, device="cuda", dtype=torch.bfloat16) for _ in inputs]
            c = statistics.median([bench.time_call(bench.cudit_call(s), inputs, torch) for _ in range(3)]) * 1e3
            m = statistics.median([bench.time_call(lambda b: b.mul_(1.0), bufs, torch) for _ in range(3)]) * 1e3
            print(f"{s.name:<20} x{scale:<5g} floor {floor:7.1f} us  cudit {c:7.1f} us ({floor / c * 100:5.1f}%)  "
                  f"mul_ same bytes {m:7.1f} us ({floor / m * 100:5.1f}%)", flush=True)
            del inputs, bufs
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
