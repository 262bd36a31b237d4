"""The backward (#12) on model shapes, with its baselines measured in the same run.

Rows: cudit's backward alone (dx, and the weights' gradients with their reduction) against its
floor (read x and dy, write dx; plus tables and weights), a `mul_` over the same bytes, and the
copy bandwidth; then a whole training step of the op (forward + backward through autograd)
for cudit.torch against plain PyTorch eager and torch.compile of the same forward.

    python benchmarks/backward_bench.py [--json out.json] [--shapes WAN-14B,FLUX.1]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import card_state  # noqa: E402
from bench import Shape, copy_bandwidth, eager_fn, make_inputs, time_call  # noqa: E402

SHAPES = [
    Shape("WAN-1.3B", 12, 128, 32760, split=True),
    Shape("WAN-14B", 40, 128, 32760, split=True),
    Shape("WAN-14B-packed", 40, 128, 32760),
    Shape("FLUX.1", 24, 128, 4608, norm="head", n_txt=512, split=True),
    Shape("HunyuanVideo", 24, 128, 118800, norm="head", split=True),
    Shape("LTX-2-video", 32, 128, 13500, rope="half", split=True),
    Shape("LTX-2-video-half-table", 32, 128, 13500, rope="half", split=True, half_table=True),
]


def backward_bytes(s: Shape) -> int:
    """Read x and dy, write dx (Q and K), plus one read of the table and the weights."""
    item = {"bf16": 2, "f16": 2, "f32": 4}[s.dtype]
    qk = s.batch * s.tokens * (s.heads + s.hk) * s.d * item
    table = 2 * s.tokens * s.d * 4 // (2 if s.half_table else 1)
    wlen = s.d if s.norm == "head" else (s.heads + s.hk) * s.d // 2
    return 3 * qk + table + 2 * 2 * wlen * 4 * (2 if s.n_txt else 1)


def backward_call(s: Shape, torch):
    import cudit

    heads = (s.heads, s.hk) if s.split else (s.heads, s.hk, s.hk)

    def prepare(inp):
        qkv, qw, kw, cos, sin, extra = inp
        dout = tuple(torch.randn_like(t) for t in qkv) if s.split else torch.randn_like(qkv)
        dx = tuple(torch.empty_like(t) for t in qkv) if s.split else torch.empty_like(qkv)
        grads = dict(dq_weight=torch.empty_like(qw), dk_weight=torch.empty_like(kw))
        if s.n_txt:
            grads.update(dq_add_weight=torch.empty_like(qw), dk_add_weight=torch.empty_like(kw))
        return inp, dout, dx, grads

    def run(state):
        (qkv, qw, kw, cos, sin, extra), dout, dx, grads = state
        cudit.qk_norm_rope_backward(qkv, dout, qw, kw, cos, sin, num_heads=heads, interleave=s.rope == "interleaved",
                                    dqkv=dx, workspace=lambda n: torch.empty(n, dtype=torch.uint8, device="cuda"),
                                    **extra, **grads)
    return prepare, run


def training_steps(s: Shape, torch):
    """(cudit, eager) functions of one input set: forward + backward of the op through autograd."""
    import cudit.torch

    heads = (s.heads, s.hk) if s.split else (s.heads, s.hk, s.hk)
    eager = eager_fn(s, torch)

    def leaves(inp):
        qkv, qw, kw, cos, sin, extra = inp
        qkv = tuple(t.detach().requires_grad_() for t in qkv) if s.split else qkv.detach().requires_grad_()
        weights = [w.detach().requires_grad_() for w in (qw, kw)]
        extra = {k: (v.detach().requires_grad_() if k.endswith("weight") else v) for k, v in extra.items()}
        dy = tuple(torch.randn_like(t) for t in qkv) if s.split else torch.randn_like(qkv)
        return qkv, weights, cos, sin, extra, dy

    def cudit_step(state):
        qkv, (qw, kw), cos, sin, extra, dy = state
        out = cudit.torch.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=heads, interleave=s.rope == "interleaved",
                                       inplace=False, **extra)
        outs, grads = (out, dy) if s.split else ((out,), (dy,))
        torch.autograd.backward(outs, grads)

    def eager_step(state, fn=eager):
        qkv, (qw, kw), cos, sin, extra, dy = state
        q, k = fn(qkv, qw, kw, cos, sin, **extra)
        if s.split:
            torch.autograd.backward((q.flatten(-2), k.flatten(-2)), dy)
        else:
            dq, dk, _ = dy.split((s.heads * s.d, s.hk * s.d, s.hk * s.d), dim=-1)
            torch.autograd.backward((q.flatten(-2), k.flatten(-2)), (dq, dk))

    compiled = torch.compile(eager, dynamic=False)
    return leaves, cudit_step, eager_step, lambda state: eager_step(state, compiled)


def measure(s: Shape, torch, l2_bytes: int, steps: bool = True) -> dict:
    n = max(1, min(4, -(-2 * l2_bytes // backward_bytes(s))))
    inputs = [make_inputs(s, torch) for _ in range(n)]
    prepare, run = backward_call(s, torch)
    states = [prepare(i) for i in inputs]
    row = {"shape": s.name, "bytes": backward_bytes(s)}
    with card_state.sampled(torch.cuda.current_device()) as card:   # a power-capped card reads slower (perf-notes v34)
        row["backward_ms"] = time_call(run, states, torch)
    row["card"] = card
    bufs = [torch.randn(backward_bytes(s) // 4, device="cuda", dtype=torch.bfloat16) for _ in states]
    row["mul_ms"] = time_call(lambda b: b.mul_(1.0), bufs, torch)
    del bufs, states
    if not steps:
        return row
    leaves, cudit_step, eager_step, compiled_step = training_steps(s, torch)
    sets = [leaves(i) for i in inputs]
    for name, step in (("step_cudit_ms", cudit_step), ("step_eager_ms", eager_step),
                       ("step_compile_ms", compiled_step)):
        try:
            row[name] = time_call(step, sets, torch, warmup=3)
        except RuntimeError as exc:   # capture of this autograd graph failed: time it uncaptured
            row[name + "_note"] = str(exc).splitlines()[0][:120]
            row[name] = time_call(step, sets, torch, warmup=3, graph=False)
    del sets, inputs
    torch.cuda.empty_cache()
    return row


def report(rows: list, copy_gbs: float, device: str) -> str:
    lines = [f"# {device}; copy {copy_gbs:.0f} GB/s. Backward: read x and dy, write dx (+ tables, weights).",
             f"{'shape':<18}{'bwd us':>9}{'% copy':>8}{'mul_ %':>8}{'% mul_':>8}{'SM MHz':>12}{'W max':>7}"
             f"{'step us':>10}{'eager us':>10}{'x':>6}{'compile us':>12}{'x':>6}  slowdown"]
    for r in rows:
        gbs = r["bytes"] / r["backward_ms"] / 1e6
        mul = r["bytes"] / r["mul_ms"] / 1e6
        line = (f"{r['shape']:<18}{r['backward_ms'] * 1e3:>9.1f}{100 * gbs / copy_gbs:>8.1f}"
                f"{100 * mul / copy_gbs:>8.1f}{100 * gbs / mul:>8.1f}{_clock(r.get('card', {})):>12}"
                f"{r.get('card', {}).get('power_w_max', float('nan')):>7.0f}")
        if "step_cudit_ms" in r:
            line += (f"{r['step_cudit_ms'] * 1e3:>10.1f}{r['step_eager_ms'] * 1e3:>10.1f}"
                     f"{r['step_eager_ms'] / r['step_cudit_ms']:>6.2f}{r['step_compile_ms'] * 1e3:>12.1f}"
                     f"{r['step_compile_ms'] / r['step_cudit_ms']:>6.2f}")
        lines.append(line + "  " + ", ".join(r.get("card", {}).get("slowdown", [])))
    return "\n".join(lines)


def _clock(card: dict) -> str:
    """'min-median' SM MHz of the backward's timing, or '-' where no sample was read."""
    return f"{card['sm_mhz_min']:.0f}-{card['sm_mhz_median']:.0f}" if card else "-"


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--shapes", help="comma-separated names (default: all)")
    ap.add_argument("--items", type=int, help="sweep: heads a thread holds (Tuning.backward_items)")
    ap.add_argument("--block", type=int, help="sweep: threads a block for per-head rows (Tuning.backward_block)")
    ap.add_argument("--stages", type=int, help="sweep: full-dim rows' x and dy staged (2) or held (0) (Tuning.backward_stages)")
    ap.add_argument("--no-steps", action="store_true", help="the backward alone, not the training steps")
    args = ap.parse_args(argv)
    knobs = {k: v for k, v in (("backward_items", args.items), ("backward_block", args.block),
                                ("backward_stages", None if args.stages is None else (("full", args.stages),)))
             if v is not None}
    if knobs:
        from cudit import _launch

        _launch.set_tuning(_launch.device_state(0).tuning.with_knobs(**knobs))
    shapes = [s for s in SHAPES if not args.shapes or s.name in args.shapes.split(",")]
    props = torch.cuda.get_device_properties(0)
    copy_gbs = copy_bandwidth(torch)
    rows = []
    for s in shapes:
        rows.append(measure(s, torch, props.L2_cache_size, steps=not args.no_steps))
        print(json.dumps(rows[-1]), flush=True)
    text = report(rows, copy_gbs, props.name)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": props.name, "copy_gbs": copy_gbs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
