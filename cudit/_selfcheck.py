"""The main job on a GPU: device and cubin, a check against the reference, a short timing table."""
from __future__ import annotations

import numpy as np

from . import _launch, bench
from .reference import qk_norm_rope_ref

# Shapes cut to a few thousand tokens so that the float64 check stays quick.
CHECKS = [
    bench.Shape("WAN-1.3B (full-dim, interleaved)", 12, 128, 4096, batch=2),
    bench.Shape("FLUX.1 (per-head, dual-stream)", 24, 128, 512 + 1024, norm="head", n_txt=512),
]
TIMED = [bench.Shape("WAN-1.3B 480p", 12, 128, 32760),
         bench.Shape("FLUX.1 1024px", 24, 128, 4608, norm="head", n_txt=512)]


def check(s: bench.Shape, torch) -> float:
    """Worst |out - ref| / (2^-8 |ref| + 1e-5) of one bf16 call on fresh random data."""
    qkv, qw, kw, cos, sin, extra = bench.make_inputs(s, torch)
    host = lambda t: t.double().cpu().numpy()  # noqa: E731
    ref = qk_norm_rope_ref(host(qkv), host(qw), host(kw), host(cos), host(sin), num_heads=s.heads,
                           num_txt_tokens=s.n_txt, interleave=s.rope == "interleaved",
                           **{k: host(v) for k, v in extra.items() if k != "num_txt_tokens"})
    bench.cudit_call(s)((qkv, qw, kw, cos, sin, extra))
    torch.cuda.synchronize()
    got = host(qkv)
    if not np.isfinite(got).all():
        return float("inf")
    return float((np.abs(got - ref) / (2.0**-8 * np.abs(ref) + 1e-5)).max())


def main() -> int:
    try:
        import torch
    except ImportError:
        print("cudit: the self-check allocates its arrays with PyTorch: pip install torch")
        return 1
    import cudit

    st = _launch.device_state(0)
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, sm_{st.limits.arch[0]}{st.limits.arch[1]}, driver {_launch.driver_version()}")
    print(f"image:  {st.image.kind} {st.image.arch} ({st.image.file}); cudit {cudit.__version__}")
    ok = True
    for s in CHECKS:
        worst = check(s, torch)
        passed = worst <= 1.0
        ok &= passed
        print(f"check:  {s.name:<36} worst err/tol {worst:.3f}  {'ok' if passed else 'FAILED'}")
    copy_gbs = bench.copy_bandwidth(torch)
    rows = [bench.measure(s, torch, None, props.L2_cache_size, baselines=False) for s in TIMED]
    print(bench.report(rows, copy_gbs, props.name))
    return 0 if ok else 1
