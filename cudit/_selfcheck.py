"""The main job on a GPU: device and cubin, a check against the float64 reference, two timings."""
from __future__ import annotations

import statistics
from typing import NamedTuple

import numpy as np

from . import _launch
from .reference import qk_norm_rope_ref


class Shape(NamedTuple):
    name: str
    heads: int
    d: int
    tokens: int
    batch: int = 1
    norm: str = "full"
    n_txt: int = 0
    rope: str = "interleaved"
    kv_heads: int = 0          # GQA: K and V heads (0: as many as Q)
    table: str = "shared-f32"  # [S, D] fp32, or "perhead-bf16": [T, H*D] bf16 (LTX-2)

    @property
    def hk(self) -> int:
        return self.kv_heads or self.heads

    @property
    def bytes(self) -> int:
        """The floor's bytes: Q and K read and written once (bf16), the table and weights aside."""
        return 2 * self.batch * self.tokens * (self.heads + self.hk) * self.d * 2


# WAN-1.3B and FLUX.1-like shapes, cut for the float64 check, and at their real sizes for timing.
CHECKS = [Shape("WAN-1.3B (full-dim, interleaved)", 12, 128, 4096, batch=2),
          Shape("FLUX.1 (per-head, dual-stream)", 24, 128, 512 + 1024, norm="head", n_txt=512)]
TIMED = [Shape("WAN-1.3B 480p", 12, 128, 32760), Shape("FLUX.1 1024px", 24, 128, 4608, norm="head", n_txt=512)]


def inputs(shape: Shape, torch, seed=0):
    """Fresh random bf16 packed QKV, fp32 weights (text ones too) and fp32 cos/sin."""
    h, hk, d, s, b = shape.heads, shape.hk, shape.d, shape.tokens, shape.batch
    g = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(b, s, (h + 2 * hk) * d, device="cuda", generator=g).to(torch.bfloat16)
    lengths = (d, d) if shape.norm == "head" else (h * d, hk * d)
    w = [torch.rand(lengths[i % 2], device="cuda", generator=g) + 0.5 for i in range(4 if shape.n_txt else 2)]
    per_head = shape.table == "perhead-bf16"
    ang = torch.rand(b * s if per_head else s, h * d if per_head else d, device="cuda", generator=g) * 6.2831853
    cos, sin = torch.cos(ang), torch.sin(ang)
    if per_head:
        cos, sin = cos.bfloat16(), sin.bfloat16()
    kw = dict(num_heads=(h, hk, hk), num_txt_tokens=shape.n_txt, interleave=shape.rope == "interleaved")
    if shape.n_txt:
        kw.update(q_add_weight=w[2], k_add_weight=w[3])
    return qkv, w[0], w[1], cos, sin, kw


def check(shape, torch) -> float:
    """Worst |out - ref| / (2^-8 |ref| + 1e-5) of one bf16 call on fresh random data."""
    import cudit

    qkv, qw, kw, cos, sin, opts = inputs(shape, torch, seed=1)
    host = lambda t: t.double().cpu().numpy()  # noqa: E731
    ref = qk_norm_rope_ref(host(qkv), host(qw), host(kw), host(cos), host(sin),
                           **{k: host(v) if hasattr(v, "cpu") else v for k, v in opts.items()})
    cudit.qk_norm_rope(qkv, qw, kw, cos, sin, **opts)
    torch.cuda.synchronize()
    got = host(qkv)
    if not np.isfinite(got).all():
        return float("inf")
    return float((np.abs(got - ref) / (2.0**-8 * np.abs(ref) + 1e-5)).max())


def median_us(fn, n_sets: int, torch, calls: int = 20, reps: int = 7) -> float:
    """Median device time a call of fn(i), i rotating over the input sets: events around batches
    of calls queued back to back, after a warm-up."""
    for i in range(2 * calls):
        fn(i % n_sets)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(calls):
            fn(i % n_sets)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def input_sets(shape: Shape, torch, l2_bytes: int) -> list:
    """Enough input sets that rotating through them overflows L2 twice over (at most 8)."""
    return [inputs(shape, torch, seed=i) for i in range(max(1, min(8, -(-2 * l2_bytes // shape.bytes))))]


def time_us(sets: list, torch) -> float:
    import cudit

    return median_us(lambda i: cudit.qk_norm_rope(*sets[i][:5], **sets[i][5]), len(sets), torch)


def timing(shape: Shape, torch, copy_gbs: float, l2_bytes: int) -> str:
    us = time_us(input_sets(shape, torch, l2_bytes), torch)
    gbs = shape.bytes / us / 1e3
    return f"time:   {shape.name:<36} {us:8.1f} us  {gbs:6.0f} GB/s  {100 * gbs / copy_gbs:5.1f}% of copy"


def copy_bandwidth(torch, nbytes: int = 1 << 30) -> float:
    src = torch.empty(nbytes // 2, dtype=torch.int16, device="cuda").random_()
    dst = torch.empty_like(src)
    return 2 * nbytes / median_us(lambda i: dst.copy_(src), 1, torch, calls=5) / 1e3


def main() -> int:
    try:
        import torch
    except ImportError:
        print("cudit: the self-check allocates its arrays with PyTorch: pip install torch")
        return 1
    import cudit

    st = _launch.device_state(0)
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, sm_{st.spec.arch[0]}{st.spec.arch[1]}, driver {_launch.driver_version()}")
    print(f"image:  {st.image.kind} {st.image.arch} ({st.image.file}); cudit {cudit.__version__}; "
          f"tuning: {st.tuning.name}")
    ok = True
    for shape in CHECKS:
        worst = check(shape, torch)
        passed = worst <= 1.0
        ok &= passed
        print(f"check:  {shape.name:<36} worst err/tol {worst:.3f}  {'ok' if passed else 'FAILED'}")
    copy_gbs = copy_bandwidth(torch)
    print(f"copy:   {copy_gbs:.0f} GB/s (device-to-device, read + write)")
    for shape in TIMED:
        print(timing(shape, torch, copy_gbs, props.L2_cache_size))
    return 0 if ok else 1
