"""fp8 output (issue #11): cudit writing Q, K and V as fp8 in one launch, against what users do
today (cudit's bf16 result, then a separate scaled cast), on the same card in the same run.

    python benchmarks/fp8_bench.py [--json PATH]

Floor: read Q, K, V once (2 bytes a value), write them once (1 byte), plus the tables and
weights, at the copy bandwidth measured here.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import Shape, bytes_moved, copy_bandwidth, cudit_call, make_inputs, time_call  # noqa: E402

SHAPES = [
    Shape("WAN-1.3B", 12, 128, 32760),
    Shape("WAN-14B", 40, 128, 32760),
    Shape("FLUX.1", 24, 128, 4608, norm="head", n_txt=512),
    Shape("HunyuanVideo", 24, 128, 118800, norm="head"),
    Shape("LTX-2-video", 32, 128, 13500, rope="half", table="perhead", table_dtype="bf16"),
]
FP8 = "float8_e4m3fn"


def fp8_bytes(s: Shape) -> int:
    """bf16 bytes_moved with Q and K written in one byte, plus V read (2) and written (1)."""
    t = s.batch * s.tokens
    qk = t * (s.heads + s.hk) * s.d
    v = t * s.hk * s.d
    return bytes_moved(s) - qk + 3 * v


def fp8_call(s: Shape, torch, amax: bool = False, cudit=None):
    """One fp8 call of shape s through `cudit` (this package, or another copy for an A/B)."""
    if cudit is None:
        import cudit

    heads = (s.heads, s.hk, s.hk)
    # amax: per-tensor amax of Q, K and V too (the amax-tracking kernels), raised call after call
    amaxes = dict(zip(("q_amax", "k_amax", "v_amax"), torch.zeros(3, 1, device="cuda"))) if amax else {}

    def run(inp):
        qkv, qw, kw, cos, sin, extra, out, scales = inp
        cudit.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=heads, interleave=s.rope == "interleaved", out=out,
                           q_scale=scales[0], k_scale=scales[1], v_scale=scales[2], **amaxes, **extra)
    return run


def with_fp8_buffers(inputs, torch):
    dt = getattr(torch, FP8)
    return [(*inp, torch.empty(inp[0].shape, dtype=dt, device="cuda"),
             [torch.full((1,), 4.0, device="cuda") for _ in range(3)]) for inp in inputs]


def measure(s: Shape, torch, cast_compiled) -> dict:
    inputs = with_fp8_buffers([make_inputs(s, torch) for _ in range(4)], torch)
    row = {"shape": s.name, "fp8_bytes": fp8_bytes(s), "bf16_bytes": bytes_moved(s)}
    row["fp8_ms"] = time_call(fp8_call(s, torch), inputs, torch)
    bf16 = cudit_call(s)
    row["bf16_ms"] = time_call(lambda a: bf16(a[:6]), inputs, torch)

    def cast(a):   # the separate cast users run today: scaled, saturated, one pass
        a[6].copy_((a[0] * a[7][0]).clamp_(-448.0, 448.0))

    row["cast_ms"] = time_call(cast, inputs, torch)
    row["cast_compiled_ms"] = time_call(lambda a: cast_compiled(a[0], a[7][0], a[6]), inputs, torch, warmup=3)
    bufs = [torch.empty(fp8_bytes(s) // 4, device="cuda", dtype=torch.bfloat16).normal_() for _ in range(4)]
    row["mul_ms"] = time_call(lambda b: b.mul_(1.0), bufs, torch)
    return row


def report(rows, copy_gbs: float, device: str) -> str:
    lines = [f"{device}; copy {copy_gbs:.0f} GB/s; fp8 = float8_e4m3fn Q, K and V in one cudit launch",
             f"{'shape':<14}{'fp8 us':>9}{'% copy':>8}{'mul_ %':>8}{'bf16 us':>9}{'+cast us':>10}{'+compiled':>11}"
             f"{'x vs +cast':>12}{'x vs +comp':>12}"]
    for r in rows:
        pct = lambda ms, b: 100 * b / (ms * 1e-3) / (copy_gbs * 1e9)   # noqa: E731
        fp8_us, plus, plus_c = r["fp8_ms"] * 1e3, (r["bf16_ms"] + r["cast_ms"]) * 1e3, \
            (r["bf16_ms"] + r["cast_compiled_ms"]) * 1e3
        lines.append(f"{r['shape']:<14}{fp8_us:>9.1f}{pct(r['fp8_ms'], r['fp8_bytes']):>8.1f}"
                     f"{pct(r['mul_ms'], r['fp8_bytes']):>8.1f}{r['bf16_ms'] * 1e3:>9.1f}{plus:>10.1f}{plus_c:>11.1f}"
                     f"{plus / fp8_us:>12.2f}{plus_c / fp8_us:>12.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="the first two shapes, shorter")
    args = ap.parse_args(argv)
    import torch

    copy_gbs = copy_bandwidth(torch)

    def cast_fn(x, scale, out):
        out.copy_((x * scale).clamp(-448.0, 448.0))

    cast_compiled = torch.compile(cast_fn)
    shapes = SHAPES[:2] if args.quick else SHAPES
    rows = [measure(replace(s), torch, cast_compiled) for s in shapes]
    print(report(rows, copy_gbs, torch.cuda.get_device_name()))
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "copy_gbs": copy_gbs, "rows": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
