"""The one-pass tensor-parallel kernel on one GPU, with the other ranks' sums already in place:
what it costs when no rank waits, beside the two-phase kernels and the one-GPU kernel on the
same heads (WAN-14B at TP=2 by default: 20 heads a rank).

    python3 benchmarks/exchange_alone.py [--tokens 32760] [--heads 20] [--ranks 2]

Each timed call is preceded (outside its events) by writing the other ranks' words for its
epoch into this rank's buffer; buffers of data rotate so L2 holds none of them.
"""
import argparse
import statistics
import sys

import torch

import bench  # benchmarks/, beside this script
import cudit
from cudit._params import XCHG_HEADER

D = 128


def words(sums, epoch):
    """[T, 2] fp32 sums -> their exchange words for an epoch (int64 [2T])."""
    bits = sums.reshape(-1).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return bits | (epoch << 32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=32760)
    ap.add_argument("--heads", type=int, default=20, help="this rank's heads")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--reps", type=int, default=40)
    args = ap.parse_args(argv)
    T, h, R = args.tokens, args.heads, args.ranks
    g = torch.Generator(device="cuda").manual_seed(0)
    n_bufs = 6
    data = [torch.randn(1, T, 3 * h * D, device="cuda", generator=g).bfloat16() for _ in range(n_bufs)]
    qw, kw = (torch.rand(h * D, device="cuda", generator=g) + 0.5 for _ in range(2))
    ang = torch.rand(T, D, device="cuda", generator=g) * 6.28
    cos, sin = ang.cos(), ang.sin()
    heads = (h, h, h)
    width = h * D * R
    sums = [cudit.qk_sumsq(x, torch.empty(T, 2, device="cuda"), num_heads=heads) for x in data]
    bufs = [torch.zeros(cudit.exchange_bytes(T, R) // 8, dtype=torch.int64, device="cuda") for _ in range(R)]
    me = R - 1
    ex = cudit.Exchange(tuple(b.data_ptr() for b in bufs), me, T)
    rows = 2 * T

    def place(epoch, i):
        """The other ranks' words of call `epoch`: as if they had sent this data's sums."""
        base = XCHG_HEADER + (epoch & 1) * R * rows
        w = words(sums[i], epoch)
        for r in range(R - 1):
            bufs[me][base + r * rows:base + (r + 1) * rows] = w

    def timed(fn, prep=None, reps=args.reps):
        times = []
        for i in range(reps + 5):
            if prep:
                prep(i)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn(i)
            b.record()
            times.append((a, b))
        torch.cuda.synchronize()
        return statistics.median(a.elapsed_time(b) for a, b in times[5:]) * 1e3

    copy = bench.copy_bandwidth(torch)
    qk = T * 2 * h * D * 2
    floor_apply = (2 * qk + 2 * T * D * 4 + 2 * h * D * 4) / copy / 1e3   # us
    floor_sums = qk / copy / 1e3
    total = sum(sums[0] for _ in range(R))
    calls = iter(range(1, 10**9))
    rows_out = {
        "sums kernel (qk_sumsq)": (timed(lambda i: cudit.qk_sumsq(data[i % n_bufs], sums[i % n_bufs],
                                                                  num_heads=heads)), floor_sums),
        "apply kernel (sumsq=)": (timed(lambda i: cudit.qk_norm_rope(data[i % n_bufs], qw, kw, cos, sin,
                                                                     num_heads=heads, sumsq=total,
                                                                     norm_width=width)), floor_apply),
        "one pass (exchange=), others' sums in place": (
            timed(lambda i: cudit.qk_norm_rope(data[i % n_bufs], qw, kw, cos, sin, num_heads=heads, exchange=ex,
                                               norm_width=width),
                  prep=lambda i: place(next(calls), i % n_bufs)), floor_apply),
        f"one GPU, these {h} heads (full-dim)": (timed(lambda i: cudit.qk_norm_rope(
            data[i % n_bufs], qw, kw, cos, sin, num_heads=heads)), floor_apply),
    }
    # the words sums[i] were placed for are from data[i]: the results equal the two-phase ones
    print(f"{torch.cuda.get_device_name()}; copy {copy:.0f} GB/s; {T} tokens, {h} heads a rank of {R}, bf16")
    print("| kernel | us | floor us | % of copy |\n|---|---|---|---|")
    for key, (us, fl) in rows_out.items():
        print(f"| {key} | {us:.1f} | {fl:.1f} | {100 * fl / us:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
