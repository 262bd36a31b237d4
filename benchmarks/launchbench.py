"""Launch-side benchmarks (needs torch): host overhead per call, launch-bound shapes against
an empty kernel, and a 40-call chain with and without programmatic dependent launch.

    python benchmarks/launchbench.py [--json FILE]        (also run at the end of benchmarks/bench.py)

Host overhead: a Python loop of 10,000 calls on a small shape, wall time per call (the GPU
runs behind: every path here is asynchronous). Device times: CUDA graphs of back-to-back
launches replayed and timed with events, median of many replays.
"""
from __future__ import annotations

import argparse
import json
import time

import bench  # benchmarks/, beside this script
from cudit import _launch, _modules

SMALL = bench.Shape("FLUX-like 256 tok", 24, 128, 256, norm="head")
LAUNCH_BOUND = [bench.Shape(f"WAN-1.3B {n} tok", 12, 128, n) for n in (256, 512, 1024)] + \
               [bench.Shape(f"FLUX.1 {n} tok", 24, 128, n, norm="head") for n in (256, 512, 1024)]
CHAIN = 40


def _per_call_us(fn, calls: int, torch) -> float:
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    us = (time.perf_counter() - t) / calls * 1e6
    torch.cuda.synchronize()
    return us


def _empty_kernel(torch):
    st = _launch.device_state(torch.cuda.current_device())
    return _modules.load_kernel(st.image, "cudit_empty")


def host_overhead(torch, calls: int = 10000) -> dict:
    """Microseconds of host time per call, each path on the same small shape."""
    from cuda.bindings import driver
    from cuda.core import LaunchConfig, Stream, launch

    import cudit
    import cudit.torch as ct

    qkv, qw, kw, cos, sin, _ = bench.make_inputs(SMALL, torch)
    h = SMALL.heads
    stream = Stream.from_handle(torch.cuda.current_stream().cuda_stream)
    kernel = _empty_kernel(torch)
    cfg = LaunchConfig(grid=1, block=32)
    raw_cfg = _launch.launch_config(1, (32, 1), 0, pdl=False)
    raw_cfg.hStream = driver.CUstream(torch.cuda.current_stream().cuda_stream)
    handle = kernel.handle
    return {
        "cuda.core launch (empty kernel)": _per_call_us(lambda: launch(stream, cfg, kernel), calls, torch),
        "cuLaunchKernelEx (empty kernel)": _per_call_us(
            lambda: driver.cuLaunchKernelEx(raw_cfg, handle, 0, 0), calls, torch),
        "cudit.qk_norm_rope": _per_call_us(lambda: cudit.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=h),
                                           calls, torch),
        "torch.ops.cudit.qk_norm_rope_": _per_call_us(
            lambda: torch.ops.cudit.qk_norm_rope_(qkv, qw, kw, cos, sin, [h]), calls, torch),
        "cudit.torch.qk_norm_rope": _per_call_us(
            lambda: ct.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=h), calls, torch),
    }


def _graph_us(launch_one, torch, per_graph: int = 100) -> float:
    """Device microseconds per launch: a graph of per_graph launches, replayed and timed."""
    return bench.time_call(lambda _: launch_one(), [None], torch, warmup=3, per_graph=per_graph) * 1e3


def _empty_launcher(torch):
    from cuda.core import LaunchConfig, Stream, launch

    kernel = _empty_kernel(torch)
    cfg = LaunchConfig(grid=1, block=32)
    return lambda: launch(Stream.from_handle(torch.cuda.current_stream().cuda_stream), cfg, kernel)


def launch_bound(torch) -> list:
    """Small shapes: device time per kernel against an empty kernel's (launched without PDL), with
    cudit's launches PDL off (`cudit_us`: no overlap with the kernel before) and, as cudit launches
    by default on sm_90+, on (`cudit_us_pdl`: the previous call in the graph is a cudit call too)."""
    saved = _launch.PDL
    try:
        empty = _graph_us(_empty_launcher(torch), torch)
        rows = []
        for s in LAUNCH_BOUND:
            inp = bench.make_inputs(s, torch)
            run = bench.cudit_call(s)
            row = {"shape": s.name, "bytes": bench.bytes_moved(s), "empty_us": empty}
            for pdl, key in ((False, "cudit_us"), (True, "cudit_us_pdl")):
                _launch.PDL = pdl
                row[key] = _graph_us(lambda: run(inp), torch)
            row["over_empty_us"] = row["cudit_us"] - empty
            row["over_empty_us_pdl"] = row["cudit_us_pdl"] - empty
            rows.append(row)
        return rows
    finally:
        _launch.PDL = saved


def pdl_chain(torch) -> dict:
    """CHAIN back-to-back calls on a small shape, each reading the previous one's output."""
    s = bench.Shape("chain", 24, 128, 1024, norm="head")
    qkv, qw, kw, cos, sin, _ = bench.make_inputs(s, torch)
    bufs = [qkv, qkv.clone()]
    import cudit

    def chain():
        for i in range(CHAIN):
            cudit.qk_norm_rope(bufs[i % 2], qw, kw, cos, sin, num_heads=s.heads, out=bufs[(i + 1) % 2])

    out = {"shape": f"{s.name}: {s.tokens} tokens, {s.heads} heads x {s.d}, per-head", "calls": CHAIN}
    saved = _launch.PDL
    try:
        for pdl in (False, True):
            _launch.PDL = pdl
            out[f"graph_us_pdl_{'on' if pdl else 'off'}"] = _graph_us(chain, torch, per_graph=1) / CHAIN
            out[f"stream_us_pdl_{'on' if pdl else 'off'}"] = bench._median_event_ms(
                lambda i: chain(), 20, torch) * 1e3 / CHAIN
    finally:
        _launch.PDL = saved
    return out


def report(result: dict) -> str:
    lines = ["host overhead per call (Python loop of 10,000 calls, small shape):"]
    lines += [f"  {k:<36}{v:>7.1f} us" for k, v in result["host_overhead"].items()]
    lines.append("launch-bound shapes (graph replay; empty kernel "
                 f"{result['launch_bound'][0]['empty_us']:.2f} us), PDL off | on:")
    lines += [f"  {r['shape']:<22}{r['cudit_us']:>7.2f} us  (+{r['over_empty_us']:.2f} over empty)"
              f"  | {r['cudit_us_pdl']:>6.2f} us  (+{r['over_empty_us_pdl']:.2f})" for r in result["launch_bound"]]
    c = result["pdl_chain"]
    lines.append(f"PDL chain of {c['calls']} dependent calls ({c['shape']}), us per call:")
    lines.append(f"  graph replay: off {c['graph_us_pdl_off']:.2f}  on {c['graph_us_pdl_on']:.2f}"
                 f"   stream launches: off {c['stream_us_pdl_off']:.2f}  on {c['stream_us_pdl_on']:.2f}")
    return "\n".join(lines)


def run_all(torch) -> dict:
    return {"device": torch.cuda.get_device_properties(0).name, "host_overhead": host_overhead(torch),
            "launch_bound": launch_bound(torch), "pdl_chain": pdl_chain(torch)}


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(prog="python benchmarks/launchbench.py")
    ap.add_argument("--json", default="cudit-launch.json")
    args = ap.parse_args(argv)
    result = run_all(torch)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"device: {result['device']}")
    print(report(result))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
