"""Where the host time of a warm call goes (torch inputs, small shape, GPU needed).

    python benchmarks/host_breakdown.py [--ab PACKAGE ...]

Each row: the median over 7 rounds of a loop of 10,000 calls, in us per call. --ab names
another copy of cudit (benchmarks/ab_package.py writes one from a commit): its public call
and torch op are timed in the same rounds, alternating, so process-to-process drift cancels.
"""
import argparse
import statistics
import time

import torch
from cuda.bindings import driver

import cudit
import cudit.torch  # noqa: F401
import bench  # benchmarks/, beside this script
import launchbench
from cudit import _launch, api

import ab_package  # benchmarks/, beside this script


def rounds(fns: dict, n=10000, k=7) -> dict:
    """Median us per call of each fn, rounds interleaved across fns."""
    times = {name: [] for name in fns}
    for _ in range(k):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t) / n * 1e6)
            torch.cuda.synchronize()
    return {name: statistics.median(v) for name, v in times.items()}


def calls(pkg, inp, heads):
    """The public call and the torch op of one copy of cudit."""
    qkv, qw, kw, cos, sin, _ = inp
    op = getattr(torch.ops, pkg.__name__).qk_norm_rope_.default
    hl = [heads]
    return {f"{pkg.__name__}.qk_norm_rope": lambda: pkg.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=heads),
            f"torch.ops.{pkg.__name__}.qk_norm_rope_": lambda: op(qkv, qw, kw, cos, sin, hl)}


def stages(inp, heads):
    qkv, qw, kw, cos, sin, _ = inp
    objs = (qkv, None, None, None, qw, kw, None, None, cos, sin) + (None,) * 12
    options = (heads, 1e-6, True, 0, None, None, None, "", "rms", None, None) + api.NO_FP8
    keys_of = cudit._arrays._ADAPTERS[torch.Tensor][1]
    keys, ptrs = keys_of(objs)
    key = tuple(keys + [options, _launch.PDL])
    launch, bind = api._WARM[key]
    launcher = next(v for v in _launch._LAUNCHERS.values() if v.launch is launch)
    ptrs.append(0)
    block = bind(ptrs)
    handle = _launch.CURRENT_STREAM["torch"](0)
    empty = launchbench._empty_kernel(torch).handle
    ecfg = _launch.launch_config(1, (32, 1), 0, pdl=False)
    ecfg.hStream = driver.CUstream(handle)
    cfg, kern, argv = launcher.config(handle), launcher.kernel, launcher._tls.args[1]
    return {
        "keys of 5 tensors": lambda: keys_of(objs),
        "warm lookup (last entry)": lambda: api._LAST[0] == keys + [options, _launch.PDL],
        "bind pointers": lambda: bind(ptrs),
        "cuCtxGetCurrent (bindings) + int": lambda: int(driver.cuCtxGetCurrent()[1]),
        "cuLaunchKernelEx, empty kernel": lambda: driver.cuLaunchKernelEx(ecfg, empty, 0, 0),
        "cuLaunchKernelEx, cudit kernel": lambda: driver.cuLaunchKernelEx(cfg, kern, argv, 0),
        "launch (pack, context, cuLaunchKernelEx)": lambda: launch(block, handle),
        "api.run": lambda: api.run(False, objs, options, None),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ab", action="append", default=[],
                    help="another copy of cudit to time alongside, e.g. cudit_old (repeatable)")
    args = ap.parse_args()
    s = bench.Shape("small", 24, 128, 256, norm="head")
    inp = bench.make_inputs(s, torch)
    fns = calls(cudit, inp, s.heads)
    for name in args.ab:
        fns.update(calls(ab_package.import_package(name), inp, s.heads))
    for fn in fns.values():
        fn()
    fns.update(stages(inp, s.heads))
    for name, us in rounds(fns).items():
        print(f"{name:<44}{us:7.2f} us", flush=True)


if __name__ == "__main__":
    main()
