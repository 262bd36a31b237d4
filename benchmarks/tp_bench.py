"""Tensor-parallel full-dim QK norm + RoPE: each phase and the whole step, side by side.

    NCCL_NVLS_ENABLE=0 torchrun --nproc-per-node 2 benchmarks/tp_bench.py [--tokens 32760] [--heads 40]

Per rank (medians of device-event times; rank 0 prints): cudit's sums of squares, the [T, 2]
fp32 all-reduce (NCCL, and a one-shot all-reduce over symmetric memory where torch has it), the
apply kernel, the whole step (eager and torch.compile; two phases over either all-reduce, and in
one pass, the kernel trading the sums through symmetric memory), the unfused path (fp32 sums, all-reduce,
norm, RoPE; eager and torch.compile) and cudit on one GPU with all the heads. Floors: the
bytes each kernel must move at the copy bandwidth measured in the same run.
"""
import argparse
import json
import os
import statistics
import sys

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

import bench  # benchmarks/, beside this script
import cudit
import cudit.torch

D, EPS = 128, 1e-6


def timed(fn, reps=50, warmup=10) -> float:
    """Median ms of fn() launched back to back (collectives included, so no graphs), ranks in step."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    dist.barrier()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in zip(starts, ends))


def unfused(local, qw, kw, cos, sin, h, width, group):
    """The path without cudit: fp32 sums of squares, an all-reduce, the norm, interleaved RoPE."""
    t = local.shape[1]
    x = local.unflatten(-1, (3, h, D))
    q, k = x[:, :, 0].float(), x[:, :, 1].float()
    sums = torch.stack([q.square().sum((-2, -1)), k.square().sum((-2, -1))], -1)
    sums = funcol.wait_tensor(funcol.all_reduce(sums, "sum", group))
    out = []
    for y, w, s in ((q, qw, sums[..., 0]), (k, kw, sums[..., 1])):
        y = y * torch.rsqrt(s / width + EPS)[..., None, None] * w.view(h, D)
        pairs = y.unflatten(-1, (D // 2, 2))
        rot = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).flatten(-2)
        out.append((y * cos.view(1, t, 1, D) + rot * sin.view(1, t, 1, D)).to(local.dtype))
    return out


def one_shot(group):
    """A one-shot all-reduce over symmetric memory for a [T, 2] buffer, or None without it."""
    try:
        import torch.distributed._symmetric_memory as symm_mem

        def make(t):
            buf = symm_mem.empty((t, 2), dtype=torch.float32, device="cuda")
            symm_mem.rendezvous(buf, group.group_name)
            return buf
        return make, lambda buf: torch.ops.symm_mem.one_shot_all_reduce(buf, "sum", group.group_name)
    except Exception as exc:   # noqa: BLE001 - reported, the rest of the run goes on
        print(f"symmetric memory unavailable: {exc}", file=sys.stderr)
        return None


def sweep_sumsq(run, floor, rank):
    """The sums kernel's % of copy under the table's plan and other block targets and
    row groups a block (rank 0 prints)."""
    from cudit import _launch

    base = _launch.device_state(rank).tuning
    out = []
    for block in (128, 256, 512, 1024):
        for iters in (None, 1, 2, 4, 8):
            t = base.with_kind("block_targets", "sumsq/1", block).with_knobs(fixed_row_iters=iters)
            _launch.set_tuning(t, rank)
            out.append((block, iters, 100 * floor / timed(run)))
    _launch.set_tuning(None, rank)
    if rank == 0:
        print("sums kernel, % of copy: " + ", ".join(f"{b}/{i or 'table'} {p:.1f}" for b, i, p in out))


def kernels(key, fn, rank, steps=3):
    """Rank 0 prints the device time of each kernel over a few steps (every rank runs them)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    dist.barrier()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    if rank == 0:
        print(f"-- {key}: kernels over {steps} steps")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=70))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=32760)
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--json", default="")
    ap.add_argument("--profile", action="store_true", help="rank 0 prints the kernels of each step")
    ap.add_argument("--sweep", action="store_true", help="the sums kernel under other block sizes and row groups")
    args = ap.parse_args(argv)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", rank))
    group = dist.group.WORLD
    T, H = args.tokens, args.heads
    h, width = H // world, H * D
    g = torch.Generator(device="cuda").manual_seed(rank)
    bufs = [torch.randn(1, T, 3 * h * D, device="cuda", generator=g).bfloat16() for _ in range(2)]
    qw, kw = (torch.rand(h * D, device="cuda", generator=g) + 0.5 for _ in range(2))
    ang = torch.rand(T, D, device="cuda", generator=g) * 6.28
    cos, sin = ang.cos(), ang.sin()
    heads = (h, h, h)
    sums = torch.empty(1, T, 2, device="cuda")
    it = iter(range(10**9))
    buf = lambda: bufs[next(it) % 2]   # noqa: E731

    copy = bench.copy_bandwidth(torch)
    qk = T * 2 * h * D * 2
    floors = {"sumsq": qk / copy / 1e6, "apply": (2 * qk + 2 * T * D * 4 + 2 * h * D * 4) / copy / 1e6}   # ms

    def step(x, collective="auto"):
        return cudit.torch.qk_norm_rope(x, qw, kw, cos, sin, num_heads=heads, tp_group=group, collective=collective)

    compiled_step = torch.compile(step, fullgraph=True)
    ref = lambda x: unfused(x, qw, kw, cos, sin, h, width, group)   # noqa: E731
    compiled_ref = torch.compile(ref, fullgraph=True)
    nccl_buf = torch.ones(T, 2, device="cuda")
    rows = {
        "sumsq kernel": timed(lambda: cudit.qk_sumsq(buf(), sums, num_heads=heads)),
        "all-reduce [T,2] fp32, NCCL": timed(lambda: dist.all_reduce(nccl_buf)),
        "apply kernel": timed(lambda: cudit.qk_norm_rope(buf(), qw, kw, cos, sin, num_heads=heads, sumsq=sums,
                                                         norm_width=width)),
        "step, eager (tp_group)": timed(lambda: step(buf())),
        "step, eager, NCCL all-reduce": timed(lambda: step(buf(), "nccl")),
        "step, eager, one pass (exchange)": timed(lambda: step(buf(), "exchange")),
        "step, torch.compile": timed(lambda: compiled_step(buf())),
        "step, torch.compile, one pass (exchange)": timed(lambda: compiled_step(buf(), "exchange")),
        "unfused, eager": timed(lambda: ref(buf()), reps=20),
        "unfused, torch.compile": timed(lambda: compiled_ref(buf())),
    }
    symm = one_shot(group)
    if symm is not None:
        try:
            sbuf = symm[0](T)
            sbuf.fill_(1.0)
            rows["all-reduce [T,2] fp32, one-shot symmetric memory"] = timed(lambda: symm[1](sbuf))
        except Exception as exc:   # noqa: BLE001
            print(f"one-shot all-reduce failed: {exc}", file=sys.stderr)
    full = [torch.randn(1, T, 3 * H * D, device="cuda", generator=g).bfloat16() for _ in range(2)]
    fw = [torch.rand(H * D, device="cuda", generator=g) + 0.5 for _ in range(2)]
    rows[f"one GPU, all {H} heads"] = timed(lambda: cudit.qk_norm_rope(full[next(it) % 2], *fw, cos, sin,
                                                                          num_heads=H))
    if args.sweep:
        sweep_sumsq(lambda: cudit.qk_sumsq(buf(), sums, num_heads=heads), floors["sumsq"], rank)
    if args.profile:
        for key, fn in (("step, eager", lambda: step(buf())), ("step, torch.compile", lambda: compiled_step(buf())),
                        ("unfused, torch.compile", lambda: compiled_ref(buf()))):
            kernels(key, fn, rank)
    if rank == 0:
        allreduce = rows["all-reduce [T,2] fp32, NCCL"]
        budget = 1.15 * (floors["sumsq"] + floors["apply"]) + allreduce
        name = torch.cuda.get_device_name()
        print(f"{name} x{world}; copy {copy:.0f} GB/s; {T} tokens, {H} heads, TP={world} ({h} a rank), bf16")
        print("| phase | us | floor us | % of copy |\n|---|---|---|---|")
        for key, ms in rows.items():
            fl = floors.get(key.split()[0]) if key.endswith("kernel") else None
            pct = f"{100 * fl / ms:.1f}" if fl else ""
            print(f"| {key} | {ms * 1e3:.1f} | {'' if fl is None else f'{fl * 1e3:.1f}'} | {pct} |")
        print(f"\nstep target (1.15 x floors + NCCL all-reduce): {budget * 1e3:.1f} us; "
              f"step eager / target {rows['step, eager (tp_group)'] / budget:.2f}; "
              f"one pass at {100 * floors['apply'] / rows['step, eager, one pass (exchange)']:.1f}% of copy; "
              f"compiled unfused / compiled step {rows['unfused, torch.compile'] / rows['step, torch.compile']:.2f}x, "
              f"/ one pass {rows['unfused, torch.compile'] / rows['step, eager, one pass (exchange)']:.2f}x")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": name, "world": world, "copy_gbs": copy, "tokens": T, "heads": H,
                           "floors_ms": floors, "rows_ms": rows}, f, indent=1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
