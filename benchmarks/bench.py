"""Benchmark: cudit against copy bandwidth, torch eager and torch.compile (needs torch).

    python benchmarks/bench.py [--quick] [--json FILE] [--png FILE] [--no-compile]

Method (docs/dev/benchmark.md): device events around each call, warm-up first, the median of
many calls, inputs rotated across enough buffers to exceed L2 so every call reads DRAM;
the copy bandwidth and the baselines are measured in the same run on the same card.
Bytes moved (the floor) = Q and K read and written once, plus the cos/sin rows and the
weights read once.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Shape:
    name: str
    heads: int            # Hq = Hk = Hv unless kv_heads is set
    d: int
    tokens: int           # per batch element (S)
    batch: int = 1
    norm: str = "full"    # full / head
    rope: str = "interleaved"
    table: str = "shared"  # shared [S, D] (broadcast over the batch) or perhead [T, H*D]
    half_table: bool = False  # rotate_half tables of half heads: [1, S, 1, D/2] or [B, S, H, D/2]
    table_dtype: str = "f32"
    split: bool = False
    dtype: str = "bf16"
    kv_heads: int = 0
    n_txt: int = 0
    compile: bool = True   # also time torch.compile (each distinct layout costs a compilation)
    layer: bool = False    # LayerNorm with biases (CogVideoX) instead of RMSNorm
    source: str = "table"  # cudit's rotation: "table", "pos" (position ids into it) or "grid" (3-D RoPE, no table)
    grid: tuple = ()       # with "grid": (F, H, W), axes_dim, theta (the baselines keep the table)
    axes: tuple = ()
    theta: float = 10000.0

    @property
    def hk(self) -> int:
        return self.kv_heads or self.heads


def production_shapes(quick: bool = False) -> list:
    """SPEC section 5 model shapes with >= 4096 tokens, and the variants issue #4 asks for."""
    base = [
        Shape("WAN-1.3B", 12, 128, 32760),
        Shape("WAN-5B", 24, 128, 32760),
        Shape("WAN-14B", 40, 128, 32760),
        Shape("WAN-14B-720p", 40, 128, 75600),
        Shape("LTX-2-video", 32, 128, 13500, rope="half", table="perhead", table_dtype="bf16"),
        Shape("FLUX.1", 24, 128, 4608, norm="head", n_txt=512),
        Shape("FLUX.2", 48, 128, 4608, norm="head", n_txt=512),
        Shape("HunyuanVideo", 24, 128, 118800, norm="head"),
        Shape("Cosmos", 32, 128, 28000, norm="head", rope="half", kv_heads=8),
        Shape("Lumina-2", 24, 96, 4096, norm="head", kv_heads=8),
        Shape("CogVideoX-5B", 48, 64, 17550 + 226, norm="head", layer=True),
        # LTX-2's checkpoints (split RoPE): the same rows with its own tables, of half heads
        Shape("LTX-2-video-split", 32, 128, 13500, rope="half", table="perhead", table_dtype="bf16", half_table=True),
    ]
    if quick:
        return [base[0], base[6]]
    out = list(base)
    base = [Shape(s.name, **{**_fields(s), "compile": False}) for s in base]
    for s in base:
        if s.name in ("WAN-1.3B", "WAN-14B", "FLUX.1", "HunyuanVideo"):
            out.append(Shape(s.name + "-split", **{**_fields(s), "split": True}))
            out.append(Shape(s.name + "-other-norm", **{**_fields(s), "norm": "head" if s.norm == "full" else "full",
                                                         "n_txt": 0}))
            out.append(Shape(s.name + "-other-rope", **{**_fields(s), "rope": "half" if s.rope == "interleaved"
                                                         else "interleaved"}))
    for s in (base[0], base[2], base[5]):
        out.append(Shape(s.name + "-CFG2", **{**_fields(s), "batch": 2}))
        out.append(Shape(s.name + "-fp16", **{**_fields(s), "dtype": "f16"}))
        out.append(Shape(s.name + "-fp32", **{**_fields(s), "dtype": "f32"}))
    for d in (64, 96, 256):
        out.append(Shape(f"WAN-like-D{d}", 1536 // d, d, 32760, compile=False))
    # The same models with 3-D RoPE computed in the kernel (no table read), and by position ids
    wan, hunyuan = ((21, 30, 52), (44, 42, 42), 10000.0), ((33, 45, 80), (16, 56, 56), 256.0)
    for s, (grid, axes, theta) in ((base[0], wan), (base[2], wan), (base[7], hunyuan)):
        out.append(Shape(s.name + "-rope3d", **{**_fields(s), "source": "grid", "grid": grid, "axes": axes,
                                                "theta": theta}))
    out.append(Shape("WAN-1.3B-positions", **{**_fields(base[0]), "source": "pos"}))
    return out


def _fields(s: Shape) -> dict:
    f = asdict(s)
    f.pop("name")
    return f


def bytes_moved(s: Shape) -> int:
    item = {"bf16": 2, "f16": 2, "f32": 4}[s.dtype]
    titem = {"bf16": 2, "f16": 2, "f32": 4}[s.table_dtype]
    t = s.batch * s.tokens
    qk = t * (s.heads + s.hk) * s.d * item * 2
    rows = t if s.table == "perhead" else s.tokens
    width = (s.heads * s.d if s.table == "perhead" else s.d) // (2 if s.half_table else 1)
    tables = 0 if s.source == "grid" else 2 * rows * width * titem
    ids = 4 * t if s.source == "pos" else 0
    wlen = s.d if s.norm == "head" else (s.heads + s.hk) * s.d // 2
    weights = 2 * wlen * 4 * (2 if s.n_txt else 1) * (2 if s.layer else 1)
    return qk + tables + weights + ids


# --------------------------------------------------------------------------- inputs


def make_inputs(s: Shape, torch, device="cuda"):
    dt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
    t = s.batch * s.tokens
    w = (s.heads + s.hk + s.hk) * s.d
    g = torch.Generator(device=device).manual_seed(0)
    if s.split:
        q = torch.randn(s.batch, s.tokens, s.heads * s.d, device=device, generator=g).to(dt[s.dtype])
        k = torch.randn(s.batch, s.tokens, s.hk * s.d, device=device, generator=g).to(dt[s.dtype])
        qkv = (q, k)
    else:
        qkv = torch.randn(s.batch, s.tokens, w, device=device, generator=g).to(dt[s.dtype])
    wq_len = s.d if s.norm == "head" else s.heads * s.d
    wk_len = s.d if s.norm == "head" else s.hk * s.d
    qw = torch.rand(wq_len, device=device, generator=g) + 0.5
    kw = torch.rand(wk_len, device=device, generator=g) + 0.5
    rows, width = (t, s.heads * s.d) if s.table == "perhead" else (s.tokens, s.d)
    if s.half_table:
        width //= 2
    ang = torch.rand(rows, width, device=device, generator=g) * 6.2831853
    cos, sin = torch.cos(ang).to(dt[s.table_dtype]), torch.sin(ang).to(dt[s.table_dtype])
    if s.half_table:
        view = (s.batch, s.tokens, s.heads, s.d // 2) if s.table == "perhead" else (1, s.tokens, 1, s.d // 2)
        cos, sin = cos.view(view), sin.view(view)

    def like(t):   # from the seeded generator too: the same inputs at every call
        return torch.rand(t.shape, device=device, generator=g)

    extra = {}
    if s.n_txt:
        extra = dict(q_add_weight=like(qw) + 0.5, k_add_weight=like(kw) + 0.5, num_txt_tokens=s.n_txt)
    if s.layer:
        extra.update(norm="layer", q_bias=like(qw) - 0.5, k_bias=like(kw) - 0.5)
    return qkv, qw, kw, cos, sin, extra


def cudit_call(s: Shape, cudit=None):
    """One call of shape s through `cudit` (this package, or another copy for an A/B)."""
    if cudit is None:
        import cudit

    heads = (s.heads, s.hk) if s.split else (s.heads, s.hk, s.hk)
    source = {}
    if s.source == "grid":
        source = {"rope": cudit.Rope3D(s.grid, s.axes, theta=s.theta)}
    elif s.source == "pos":
        import torch

        source = {"positions": torch.arange(s.tokens, device="cuda", dtype=torch.int32).expand(s.batch, s.tokens)}

    def run(inp):
        qkv, qw, kw, cos, sin, extra = inp
        if s.source == "grid":
            cos = sin = None
        cudit.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=heads, interleave=s.rope == "interleaved", **extra,
                           **source)
    return run


def eager_fn(s: Shape, torch):
    """Diffusers-style unfused code: norm in fp32, back to dtype, RoPE in fp32, back to dtype."""
    eps = 1e-6

    def rms(x, w, b=None):
        xf = x.float()
        if b is not None:   # LayerNorm
            return torch.nn.functional.layer_norm(xf, xf.shape[-1:], w.float(), b.float(), eps).to(x.dtype)
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)

    def rope(x, cos, sin):
        xf = x.float()
        if s.half_table:   # the split form: one entry for values i and i + D/2
            a, b = xf.chunk(2, dim=-1)
            return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1).to(x.dtype)
        if s.rope == "interleaved":
            a, b = xf.unflatten(-1, (-1, 2)).unbind(-1)
            rot = torch.stack((-b, a), dim=-1).flatten(-2)
        else:
            a, b = xf.chunk(2, dim=-1)
            rot = torch.cat((-b, a), dim=-1)
        return (xf * cos + rot * sin).to(x.dtype)

    def side(x, w, heads, cos, sin, w_txt, bias=None):
        b, t = x.shape[0], x.shape[1]
        if s.norm == "full":
            y = rms(x, w, bias)
            if w_txt is not None:
                y = torch.cat((rms(x[:, :s.n_txt], w_txt), y[:, s.n_txt:]), dim=1)
            y = y.unflatten(-1, (heads, s.d))
        else:
            xh = x.unflatten(-1, (heads, s.d))
            y = rms(xh, w, bias)
            if w_txt is not None:
                y = torch.cat((rms(xh[:, :s.n_txt], w_txt), y[:, s.n_txt:]), dim=1)
        width = s.d // 2 if s.half_table else s.d
        if s.table == "perhead":
            c, sn = cos.view(b, t, heads, width), sin.view(b, t, heads, width)
        else:
            c, sn = cos.view(1, t, 1, width), sin.view(1, t, 1, width)
        return rope(y, c.float(), sn.float())

    def fn(qkv, qw, kw, cos, sin, q_add_weight=None, k_add_weight=None, num_txt_tokens=0, norm="rms", q_bias=None,
           k_bias=None):
        if isinstance(qkv, tuple):
            q, k = qkv
        else:
            q, k, _ = qkv.split((s.heads * s.d, s.hk * s.d, s.hk * s.d), dim=-1)
        return (side(q, qw, s.heads, cos, sin, q_add_weight, q_bias),
                side(k, kw, s.hk, cos, sin, k_add_weight, k_bias))
    return fn


# --------------------------------------------------------------------------- timing


# Replays before timing: a shape's first 50 replays ran 6-20% slower than later ones on an H200
# (docs/dev/perf-notes.md v17).
SETTLE_S = 0.3


def time_call(fn, inputs, torch, warmup=20, reps=50, graph=True, per_graph=None) -> float:
    """Median milliseconds of fn over rotating input sets, timed with device events.

    The calls are captured in a CUDA graph (per_graph of them, by default at least 8 and one
    per input set) and replayed, so host overhead between launches (measured separately,
    launchbench.host_overhead) does not count as device time.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(warmup):
            fn(inputs[i % len(inputs)])
    torch.cuda.current_stream().wait_stream(side)
    if not graph:
        return _median_event_ms(lambda i: fn(inputs[i % len(inputs)]), reps, torch)
    per_graph = per_graph or max(len(inputs), 8)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(per_graph):
            fn(inputs[i % len(inputs)])
    settle = time.perf_counter() + SETTLE_S
    while time.perf_counter() < settle:   # until the card's clocks settle under this load
        graph.replay()
        torch.cuda.synchronize()
    return _median_event_ms(lambda i: graph.replay(), reps, torch) / per_graph


def _median_event_ms(step, reps, torch) -> float:
    """Median of device-event times around step(i), i = 0 .. reps-1."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        starts[i].record()
        step(i)
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in zip(starts, ends))


def copy_bandwidth(torch, nbytes=1 << 30) -> float:
    """Device-to-device copy, GB/s counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 2, dtype=torch.int16, device="cuda").random_()
    dst = torch.empty_like(src)
    # Not in a graph: a captured copy becomes a copy-engine node, slower than the SM copy.
    ms = time_call(lambda _: dst.copy_(src), [None], torch, warmup=3, reps=20, graph=False)
    return 2 * nbytes / ms / 1e6


def rotation(s: Shape, torch, l2_bytes: int) -> list:
    """Enough input sets that rotating through them overflows L2 twice over."""
    one = bytes_moved(s) // 2
    n = max(1, min(8, math.ceil(2 * l2_bytes / max(one, 1))))
    return [make_inputs(s, torch) for _ in range(n)]


def measure(s: Shape, torch, compile_fns: dict, l2_bytes: int, baselines=True) -> dict:
    inputs = rotation(s, torch, l2_bytes)
    row = {"shape": s.name, "bytes": bytes_moved(s)}
    row["cudit_ms"] = time_call(cudit_call(s), inputs, torch)
    if baselines:
        # a plain elementwise kernel over the same bytes (half read, half written): what streaming reaches here
        bufs = [torch.randn(bytes_moved(s) // 4, device="cuda", dtype=torch.bfloat16) for _ in inputs]
        row["mul_ms"] = time_call(lambda b: b.mul_(1.0), bufs, torch)
        del bufs
        eager = eager_fn(s, torch)
        row["eager_ms"] = time_call(lambda a: eager(*a[:5], **a[5]), inputs, torch)
        key = tuple(v for k, v in asdict(s).items() if k not in ("name", "tokens", "batch"))
        if compile_fns is not None and s.compile:
            if key not in compile_fns:
                compile_fns[key] = torch.compile(eager_fn(s, torch), dynamic=False)
            comp = compile_fns[key]
            row["compile_ms"] = time_call(lambda a: comp(*a[:5], **a[5]), inputs, torch, warmup=3)
    del inputs
    torch.cuda.empty_cache()
    return row


def report(rows: list, copy_gbs: float, device: str) -> str:
    head = (f"{'shape':<26}{'cudit us':>10}{'GB/s':>8}{'% copy':>8}{'mul_ %':>8}{'% of mul_':>10}"
            f"{'eager us':>10}{'x':>6}{'compile us':>12}{'x':>6}")
    lines = [f"device: {device}; copy bandwidth {copy_gbs:.0f} GB/s", head]
    for r in rows:
        gbs = r["bytes"] / r["cudit_ms"] / 1e6
        line = f"{r['shape']:<26}{r['cudit_ms'] * 1e3:>10.1f}{gbs:>8.0f}{100 * gbs / copy_gbs:>7.1f}%"
        if "mul_ms" in r:
            line += f"{100 * r['bytes'] / r['mul_ms'] / 1e6 / copy_gbs:>7.1f}%{100 * r['mul_ms'] / r['cudit_ms']:>9.1f}%"
        for key in ("eager_ms", "compile_ms"):
            if key in r:
                line += f"{r[key] * 1e3:>{10 if key == 'eager_ms' else 12}.1f}{r[key] / r['cudit_ms']:>6.1f}"
        lines.append(line)
    return "\n".join(lines)


def plot(rows: list, copy_gbs: float, device: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["shape"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 5))
    for key, label in (("cudit_ms", "cudit"), ("mul_ms", "mul_ over the same bytes"), ("compile_ms", "torch.compile"),
                       ("eager_ms", "torch eager")):
        if any(key in r for r in rows):   # shapes without this baseline are gaps
            pct = [100 * r["bytes"] / r[key] / 1e6 / copy_gbs if key in r else np.nan for r in rows]
            ax.plot(x, pct, "o", label=label)
    ax.axhline(90, color="grey", ls="--", lw=1)
    ax.set_xticks(x, names, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("% of copy bandwidth")
    ax.set_title(f"QK RMSNorm + RoPE, {device}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def replot(json_path: str, png_path: str) -> None:
    """Draw the plot again from a saved JSON (no GPU needed)."""
    with open(json_path) as f:
        d = json.load(f)
    plot(d["rows"], d["copy_GBps"], d["device"], png_path)


def apply_knobs(heads_per_thread=None, row_iters=None, device_id=0):
    """The tuning sweep's knobs, on this process's plans for one GPU (its table otherwise)."""
    from cudit import _launch

    if heads_per_thread is not None or row_iters is not None:
        tuning = _launch.tuning_for(_launch.device_state(device_id).spec)
        _launch.set_tuning(tuning.with_knobs(heads_per_thread=heads_per_thread, fixed_row_iters=row_iters),
                           device_id)


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(prog="python benchmarks/bench.py")
    ap.add_argument("--quick", action="store_true", help="two shapes only")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--json", default="cudit-bench.json")
    ap.add_argument("--png", default="cudit-bench.png")
    ap.add_argument("--only", default="", help="comma-separated shape names")
    ap.add_argument("--heads-per-thread", type=int, choices=(0, 1, 2, 3, 4), default=None,
                    help="tuning: force the planner's heads-per-thread variant")
    ap.add_argument("--no-baselines", action="store_true", help="time cudit only")
    ap.add_argument("--row-iters", type=int, default=None, help="tuning: row groups a block takes in turn")
    args = ap.parse_args(argv)
    apply_knobs(args.heads_per_thread, args.row_iters)

    props = torch.cuda.get_device_properties(0)
    device = props.name
    copy_gbs = copy_bandwidth(torch)
    shapes = production_shapes(args.quick)
    if args.only:
        keep = set(args.only.split(","))
        shapes = [s for s in shapes if s.name in keep]
    compile_fns = None if args.no_compile else {}
    rows = []

    def save(extra=None):
        with open(args.json, "w") as f:
            json.dump({"device": device, "copy_GBps": copy_gbs, "torch": torch.__version__,
                       "timing": "median of CUDA graph replays", **(extra or {}),
                       "shapes": [asdict(s) for s in shapes[:len(rows)]], "rows": rows}, f, indent=1)

    for s in shapes:
        rows.append(measure(s, torch, compile_fns, props.L2_cache_size, baselines=not args.no_baselines))
        print(f"  {s.name}: {rows[-1]['cudit_ms'] * 1e3:.1f} us", flush=True)
        save()  # a run cut short keeps what it measured
    text = report(rows, copy_gbs, device)
    import launchbench

    launch = launchbench.run_all(torch)
    save({"launch": launch})
    try:
        plot(rows, copy_gbs, device, args.png)
    except ImportError:
        print("(matplotlib missing: no plot)")
    print(text)
    print(launchbench.report(launch))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
