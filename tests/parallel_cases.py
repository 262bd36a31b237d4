"""Inputs split as tensor- and sequence-parallel ranks hold them, and the checks on their
results: shared by the single-GPU emulation (test_gpu_parallel.py) and the multi-GPU tests."""
from __future__ import annotations

import numpy as np

from gpu_cases import torch_dtype

MANTISSA = {"bf16": 7, "f16": 10, "f32": 23}


def head_groups(heads: int, ranks: int) -> list:
    """The heads of each rank: contiguous, as even as they go (10 over 4: 3, 3, 2, 2)."""
    return [g.tolist() for g in np.array_split(np.arange(heads), ranks)]


def wan_like(heads: int, dtype: str, B=1, S=200, D=128, seed=0, device="cuda"):
    """A packed [B, S, 3H*D] qkv, full-dim weights and a 4-D [1, S, 1, D] interleaved table."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    qkv = (torch.randn(B, S, 3 * heads * D, generator=g) * 2).to(device=device, dtype=torch_dtype(dtype))
    qw = (torch.rand(heads * D, generator=g) + 0.5).to(device)
    kw = (torch.rand(heads * D, generator=g) + 0.5).to(device)
    angle = torch.arange(S)[:, None] * torch.rand(D // 2, generator=g)[None]
    cos = angle.cos().repeat_interleave(2, -1).reshape(1, S, 1, D).to(device)
    sin = angle.sin().repeat_interleave(2, -1).reshape(1, S, 1, D).to(device)
    return qkv, qw, kw, cos, sin


def rank_slice(qkv, qw, kw, heads: int, group: list, D=128):
    """What one tensor-parallel rank holds: its Q, K and V heads packed [B, S, 3h*D] (a copy, as
    a column-parallel projection would produce), and its slices of the full-dim weights."""
    x = qkv.unflatten(-1, (3, heads, D))[:, :, :, group[0]:group[-1] + 1]
    cols = slice(group[0] * D, (group[-1] + 1) * D)
    return x.flatten(-3).contiguous(), qw[cols], kw[cols]


def rank_heads(full, heads: int, group: list, D=128):
    """A rank's Q, K and V heads of a packed [B, S, 3H*D] result, as [B, S, 3, h, D]."""
    return full.unflatten(-1, (3, heads, D))[:, :, :, group[0]:group[-1] + 1]


def within_one_ulp(got, want, dtype: str, half=False) -> tuple:
    """(worst |got - want| in ulps of the output dtype, count over 1). The ulp is taken at the
    magnitude of each element's rotation pair (2i, 2i+1), or (i, i+D/2) with half=True: a
    rotation keeps the pair's norm, and one element of it may cancel to near zero, where a
    last-bit change of the norm's scale is many of its own ulps."""
    import torch

    g, w = got.double(), want.double()
    assert torch.isfinite(g).all(), "non-finite outputs (unwritten?)"
    if half:
        a, b = w.chunk(2, dim=-1)
        pair = torch.cat([torch.hypot(a, b)] * 2, dim=-1)
    else:
        pair = torch.hypot(w[..., 0::2], w[..., 1::2]).repeat_interleave(2, dim=-1)
    exp = torch.floor(torch.log2(pair.clamp_min(2.0**-14)))
    ulps = (g - w).abs() / torch.exp2(exp - MANTISSA[dtype])
    return float(ulps.max()), int((ulps > 1).sum())
