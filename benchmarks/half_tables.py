"""rotate_half rows with whole-head tables against the same rows given tables of half heads (4-D
[.., D/2], one entry for values i and i + D/2), in one process on one card: each one's time, % of
copy and % of a `mul_` over its own bytes, and whether the two give the same bits when the whole
table is the half one twice over.

    python benchmarks/half_tables.py [--only NAME,..]     # names from bench.production_shapes()
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402


def pairs(only: set) -> list:
    """(whole, half) shapes of every production rotate_half row that reads a table by token."""
    rows = [s for s in bench.production_shapes() if s.rope == "half" and s.source == "table" and not s.half_table]
    return [(s, dataclasses.replace(s, name=s.name + "-half-table", half_table=True))
            for s in rows if not only or s.name in only]


def same_bits(half, torch) -> bool:
    """The half-table call and the whole-table call (the half entries twice over) on one input."""
    qkv, qw, kw, cos, sin, extra = bench.make_inputs(half, torch)
    whole = [torch.cat((t, t), dim=-1) for t in (cos, sin)]
    if half.table == "shared":
        whole = [t.view(half.tokens, half.d) for t in whole]
    outs = []
    for c, s in ((cos, sin), whole):
        x = tuple(t.clone() for t in qkv) if isinstance(qkv, tuple) else qkv.clone()
        bench.cudit_call(half)((x, qw, kw, c, s, extra))
        outs.append(x)
    torch.cuda.synchronize()
    return all(torch.equal(a, b) for a, b in zip(*(o if isinstance(o, tuple) else (o,) for o in outs)))


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(prog="python benchmarks/half_tables.py")
    ap.add_argument("--only", default="")
    args = ap.parse_args(argv)
    props = torch.cuda.get_device_properties(0)
    copy = bench.copy_bandwidth(torch)
    print(f"device: {props.name}; copy {copy:.0f} GB/s")
    print(f"{'shape':<28}{'whole us':>10}{'half us':>10}{'half/whole':>11}{'% copy':>14}{'% of mul_':>14}{'bits':>6}")
    for whole, half in pairs(set(filter(None, args.only.split(",")))):
        row = []
        for s in (whole, half):
            inputs = bench.rotation(s, torch, props.L2_cache_size)
            ms = bench.time_call(bench.cudit_call(s), inputs, torch)
            bufs = [torch.randn(bench.bytes_moved(s) // 4, device="cuda", dtype=torch.bfloat16) for _ in inputs]
            mul = bench.time_call(lambda b: b.mul_(1.0), bufs, torch)
            del inputs, bufs
            torch.cuda.empty_cache()
            row.append((ms, 100 * bench.bytes_moved(s) / ms / 1e6 / copy, 100 * mul / ms))
        (w, wc, wm), (h, hc, hm) = row
        print(f"{whole.name:<28}{w * 1e3:>10.1f}{h * 1e3:>10.1f}{h / w:>11.3f}{wc:>7.1f}->{hc:<6.1f}"
              f"{wm:>7.1f}->{hm:<6.1f}{'same' if same_bits(half, torch) else 'DIFF':>6}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
