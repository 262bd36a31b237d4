"""Production shapes under several tuning tables, in one process (device events, rotated inputs).

    PYTHONPATH=. python benchmarks/tuning_ab.py analytic "" "block_targets.full/1=192,row_iters.full/1=4:98304" [--only A,B]

Each argument is a set of Tuning fields (comma-separated name=value) applied over the device's
own table ("" is that table, "analytic" the default a card with no table gets, "analytic,..."
fields over that default); every shape is timed under each, alternating, three times; the
table gives medians as % of copy and beside them a plain mul_ over the same bytes.
"""
import argparse
import statistics
import sys

import torch

import bench  # benchmarks/, beside this script
from cudit import _launch
from cudit._tuning import analytic


def apply(base, spec: str):
    """base with spec's fields: name=value, or per kind of row block_targets.KIND=threads and
    row_iters.KIND=most:below (KIND as in the tables, e.g. full/1)."""
    t = base
    for item in filter(None, spec.split(",")):
        name, value = item.split("=")
        if "." in name:
            field, kind = name.split(".", 1)
            t = t.with_kind(field, kind, tuple(int(x) for x in value.split(":")) if ":" in value else int(value))
        else:
            t = t.with_knobs(**{name: None if value == "None" else (float(value) if "." in value else int(value))})
    return t


def table_for(spec: str, base, device):
    """A command-line spec's table: fields over the device's own table, or over the analytic
    default where the spec starts with "analytic"."""
    if spec.startswith("analytic"):
        return apply(analytic(device), spec[len("analytic"):].lstrip(","))
    return apply(base, spec)


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tunings", nargs="+")
    ap.add_argument("--only", default="")
    args = ap.parse_args(argv)
    st = _launch.device_state(0)
    base = st.tuning
    tunings = [table_for(t, base, st.spec) for t in args.tunings]
    only = set(args.only.split(",")) if args.only else None
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    copy = bench.copy_bandwidth(torch)
    print(f"{torch.cuda.get_device_properties(0).name}; copy {copy:.0f} GB/s; base table {base.name}")
    print(f"{'shape':<26}" + "".join(f"{t or 'table':>16.16}" for t in args.tunings) + f"{'mul_':>8}")
    for s in bench.production_shapes():
        if only and s.name not in only:
            continue
        inputs = bench.rotation(s, torch, l2)
        bufs = [torch.randn(bench.bytes_moved(s) // 4, device="cuda", dtype=torch.bfloat16) for _ in inputs]
        times = [[] for _ in tunings]
        for _ in range(3):
            for i, t in enumerate(tunings):
                _launch.set_tuning(t)
                times[i].append(bench.time_call(bench.cudit_call(s), inputs, torch))
        m = statistics.median(bench.time_call(lambda b: b.mul_(1.0), bufs, torch) for _ in range(3))
        floor = bench.bytes_moved(s) / copy / 1e6
        print(f"{s.name:<26}" + "".join(f"{100 * floor / statistics.median(t):>15.1f}%" for t in times)
              + f"{100 * floor / m:>7.1f}%", flush=True)
        del inputs, bufs
        torch.cuda.empty_cache()
    _launch.set_tuning(None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
