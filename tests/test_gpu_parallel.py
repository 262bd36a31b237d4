"""Tensor- and sequence-parallel calls on one GPU: the ranks emulated in turn, checked against
the one-GPU call on the whole tensors (tests/test_multi_gpu.py runs them on several GPUs)."""
import math

import numpy as np
import pytest

from cudit.reference import qk_sumsq_ref
from parallel_cases import head_groups, rank_heads, rank_slice, torch_dtype, wan_like, within_one_ulp

D = 128
# One GPU's result and the ranks' differ by the order of the fp32 sums of squares: a last-bit
# change of the norm's scale, within one ulp of 16-bit outputs, a few of fp32 ones.
ULPS = {"bf16": 1, "f16": 1, "f32": 8}
TP = [(name, heads, ranks) for name, heads in (("wan-1.3b", 12), ("wan-14b", 40), ("uneven-10", 10))
      for ranks in (2, 4)]


def _sumsq(cudit, torch, local, h):
    sums = torch.full((*local.shape[:2], 2), math.nan, dtype=torch.float32, device="cuda")
    before = local.clone()
    assert cudit.qk_sumsq(local, sums, num_heads=(h, h, h)) is sums
    torch.cuda.synchronize()
    assert torch.equal(local.view(torch.uint8), before.view(torch.uint8)), "qk_sumsq wrote its input"
    want = qk_sumsq_ref(local.double().cpu().numpy(), num_heads=(h, h, h))
    assert np.allclose(sums.cpu().numpy(), want, rtol=1e-5, atol=0), "sums of squares off the float64 reference"
    return sums


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("name,heads,ranks", TP, ids=lambda x: str(x))
def test_tensor_parallel_ranks_match_one_gpu(name, heads, ranks, dtype):
    import torch

    import cudit

    qkv, qw, kw, cos, sin = wan_like(heads, dtype, B=2, S=97, seed=heads * ranks)
    whole = cudit.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=heads, out=torch.full_like(qkv, math.nan))
    groups = head_groups(heads, ranks)
    ranks_data = [rank_slice(qkv, qw, kw, heads, g) for g in groups]
    total = sum(_sumsq(cudit, torch, local, len(g)) for (local, _, _), g in zip(ranks_data, groups))
    for (local, lq, lk), g in zip(ranks_data, groups):
        h = len(g)
        out = torch.full_like(local, math.nan)
        cudit.qk_norm_rope(local, lq, lk, cos, sin, num_heads=(h, h, h), sumsq=total, norm_width=heads * D, out=out)
        torch.cuda.synchronize()
        got, want = out.unflatten(-1, (3, h, D)), rank_heads(whole, heads, g)
        worst, over = within_one_ulp(got[:, :, :2], want[:, :, :2], dtype)
        assert worst <= ULPS[dtype], f"{over} Q/K elements over 1 ulp of the one-GPU result (worst {worst:.2f})"
        assert torch.isnan(got[:, :, 2]).all(), "V written in an out-of-place call"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_tensor_parallel_gqa_split_with_a_width_each(dtype):
    """Cosmos-like GQA at four ranks: 32 Q and 8 K heads, separate [B, S, H, D] q and k."""
    import torch

    import cudit

    g = torch.Generator().manual_seed(7)
    hq, hk, ranks, S = 32, 8, 4, 61
    q = (torch.randn(1, S, hq, D, generator=g) * 2).to("cuda", torch_dtype(dtype))
    k = (torch.randn(1, S, hk, D, generator=g) * 2).to("cuda", torch_dtype(dtype))
    qw, kw = (torch.rand(hq * D, generator=g) + 0.5).cuda(), (torch.rand(hk * D, generator=g) + 0.5).cuda()
    cos, sin = (torch.rand(S, D, generator=g) * 2 - 1).cuda(), (torch.rand(S, D, generator=g) * 2 - 1).cuda()
    wq, wk = cudit.qk_norm_rope((q, k), qw, kw, cos, sin, interleave=False,
                                out=(torch.full_like(q, math.nan), torch.full_like(k, math.nan)))
    nq, nk = hq // ranks, hk // ranks
    shards = [(q[:, :, r * nq:(r + 1) * nq], k[:, :, r * nk:(r + 1) * nk]) for r in range(ranks)]
    sums = []
    for sq, sk in shards:
        s = torch.full((1, S, 2), math.nan, device="cuda")
        sums.append(cudit.qk_sumsq((sq, sk), s))
    total = sum(sums)
    for r, (sq, sk) in enumerate(shards):
        oq, ok = torch.full_like(sq, math.nan), torch.full_like(sk, math.nan)
        cudit.qk_norm_rope((sq, sk), qw[r * nq * D:(r + 1) * nq * D], kw[r * nk * D:(r + 1) * nk * D], cos, sin,
                           interleave=False, sumsq=total, norm_width=(hq * D, hk * D), out=(oq, ok))
        torch.cuda.synchronize()
        for got, want in ((oq, wq[:, :, r * nq:(r + 1) * nq]), (ok, wk[:, :, r * nk:(r + 1) * nk])):
            worst, over = within_one_ulp(got, want, dtype, half=True)
            assert over == 0, f"rank {r}: {over} elements over 1 ulp (worst {worst:.2f})"


def _tables(kind: str, S: int, heads: int, g):
    import torch

    if kind == "2d":
        return [(torch.rand(S, D, generator=g) * 2 - 1).cuda() for _ in range(2)]
    if kind == "4d":
        return [(torch.rand(1, S, 1, D, generator=g) * 2 - 1).cuda() for _ in range(2)]
    return [(torch.rand(S, heads * D, generator=g) * 2 - 1).to("cuda", torch.bfloat16) for _ in range(2)]


@pytest.mark.gpu
@pytest.mark.parametrize("norm,table,interleave", [("full", "4d", True), ("full", "2d", False),
                                                   ("head", "2d", True), ("head", "perhead", False)])
@pytest.mark.parametrize("ranks", [2, 3])
def test_sequence_shards_equal_the_whole_bit_for_bit(norm, table, interleave, ranks):
    import torch

    import cudit

    g = torch.Generator().manual_seed(ranks)
    heads, B, s = 12, 2, 37
    S = s * ranks
    qkv = (torch.randn(B, S, 3 * heads * D, generator=g) * 2).to("cuda", torch.bfloat16)
    n = heads * D if norm == "full" else D
    qw, kw = (torch.rand(n, generator=g) + 0.5).cuda(), (torch.rand(n, generator=g) + 0.5).cuda()
    cos, sin = _tables(table, S, heads, g)
    kw_ = dict(num_heads=heads, interleave=interleave)
    whole = cudit.qk_norm_rope(qkv.clone(), qw, kw, cos, sin, **kw_)
    sharded = qkv.clone()
    for r in range(ranks):   # each rank's token range, a view into the sequence, in place
        cudit.qk_norm_rope(sharded[:, r * s:(r + 1) * s], qw, kw, cos, sin, rope_offset=r * s, **kw_)
    out = torch.full_like(qkv[:, :s], math.nan)   # and one rank out of place: nothing left unwritten
    cudit.qk_norm_rope(qkv[:, s:2 * s], qw, kw, cos, sin, rope_offset=s, out=out, **kw_)
    torch.cuda.synchronize()
    assert torch.equal(sharded.view(torch.int16), whole.view(torch.int16))
    qk = slice(0, 2 * heads * D)
    assert torch.equal(out[..., qk].view(torch.int16), whole[:, s:2 * s, qk].view(torch.int16))


@pytest.mark.gpu
def test_tensor_parallel_per_head_table_as_a_view():
    """LTX-2-like: full-dim norm, rotate_half, one bf16 table per head; each rank passes its
    heads' columns of the table as a strided view."""
    import torch

    import cudit

    g = torch.Generator().manual_seed(11)
    heads, ranks, S = 8, 2, 45
    qkv = (torch.randn(1, S, 3 * heads * D, generator=g) * 2).to("cuda", torch.bfloat16)
    qw, kw = (torch.rand(heads * D, generator=g) + 0.5).cuda(), (torch.rand(heads * D, generator=g) + 0.5).cuda()
    cos, sin = ((torch.rand(S, heads * D, generator=g) * 2 - 1).to("cuda", torch.bfloat16) for _ in range(2))
    whole = cudit.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=heads, interleave=False,
                               out=torch.full_like(qkv, math.nan))
    groups = head_groups(heads, ranks)
    ranks_data = [rank_slice(qkv, qw, kw, heads, grp) for grp in groups]
    total = sum(_sumsq(cudit, torch, local, len(grp)) for (local, _, _), grp in zip(ranks_data, groups))
    for (local, lq, lk), grp in zip(ranks_data, groups):
        h, cols = len(grp), slice(grp[0] * D, (grp[-1] + 1) * D)
        out = torch.full_like(local, math.nan)
        cudit.qk_norm_rope(local, lq, lk, cos[:, cols], sin[:, cols], num_heads=h, interleave=False, sumsq=total,
                           norm_width=heads * D, out=out)
        torch.cuda.synchronize()
        got, want = out.unflatten(-1, (3, h, D)), rank_heads(whole, heads, grp)
        worst, over = within_one_ulp(got[:, :, :2], want[:, :, :2], "bf16", half=True)
        assert over == 0, f"{over} Q/K elements over 1 ulp of the one-GPU result (worst {worst:.2f})"


# ------------------------------------------------------------------ one pass (cudit.Exchange)
# The ranks run at once on one GPU, each on its own stream, their exchange buffers in its memory:
# a rank's kernel waits for the others' sums, so every rank's grid must be resident together
# (few tokens: a few hundred blocks in all).


def _exchange_ranks(cudit, torch, ranks: int, tokens: int):
    """Zeroed exchange buffers and each rank's cudit.Exchange over them, and a stream a rank."""
    bufs = [torch.zeros(cudit.exchange_bytes(tokens, ranks) // 8, dtype=torch.int64, device="cuda")
            for _ in range(ranks)]
    exchanges = [cudit.Exchange(tuple(b.data_ptr() for b in bufs), r, tokens) for r in range(ranks)]
    torch.cuda.synchronize()
    return bufs, exchanges, [torch.cuda.Stream() for _ in range(ranks)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("name,heads,ranks", TP, ids=lambda x: str(x))
def test_one_pass_ranks_match_one_gpu(name, heads, ranks, dtype):
    """Three calls back to back on every rank, of two inputs in turn: each rank's results as
    one GPU's, V untouched, and each buffer's count of calls advanced by three."""
    import torch

    import cudit

    cases = [wan_like(heads, dtype, B=2, S=33, seed=heads * ranks + i) for i in range(2)]
    qw, kw = cases[0][1], cases[0][2]   # one model: the weights and tables of the first
    cos, sin = cases[0][3], cases[0][4]
    wholes = [cudit.qk_norm_rope(c[0], qw, kw, cos, sin, num_heads=heads, out=torch.full_like(c[0], math.nan))
              for c in cases]
    groups = head_groups(heads, ranks)
    shards = [[rank_slice(c[0], qw, kw, heads, g) for g in groups] for c in cases]
    bufs, exchanges, streams = _exchange_ranks(cudit, torch, ranks, tokens=2 * 33)   # synchronises
    results = []
    for call in range(3):
        for r, g in enumerate(groups):
            local, lq, lk = shards[call % 2][r]
            h = len(g)
            with torch.cuda.stream(streams[r]):
                out = torch.full_like(local, math.nan)
                cudit.qk_norm_rope(local, lq, lk, cos, sin, num_heads=(h, h, h), exchange=exchanges[r],
                                   norm_width=heads * D, out=out)
            results.append((call, r, g, out))
    torch.cuda.synchronize()
    for call, r, g, out in results:
        got, want = out.unflatten(-1, (3, len(g), D)), rank_heads(wholes[call % 2], heads, g)
        worst, over = within_one_ulp(got[:, :, :2], want[:, :, :2], dtype)
        assert worst <= ULPS[dtype], f"call {call} rank {r}: {over} Q/K elements over 1 ulp (worst {worst:.2f})"
        assert torch.isnan(got[:, :, 2]).all(), "V written in an out-of-place call"
    for b in bufs:
        assert b[0].item() == 3 and b[1].item() == 0, "the count of calls or of finished blocks is off"


@pytest.mark.gpu
def test_one_pass_gqa_split_rotate_half_in_place():
    """Four ranks of 32 Q and 8 K heads as separate [B, S, H, D] views, in place, with a width
    a side: every rank's results as one GPU's."""
    import torch

    import cudit

    g = torch.Generator().manual_seed(9)
    hq, hk, ranks, S = 32, 8, 4, 41
    q = (torch.randn(1, S, hq, D, generator=g) * 2).to("cuda", torch.bfloat16)
    k = (torch.randn(1, S, hk, D, generator=g) * 2).to("cuda", torch.bfloat16)
    qw, kw = (torch.rand(hq * D, generator=g) + 0.5).cuda(), (torch.rand(hk * D, generator=g) + 0.5).cuda()
    cos, sin = (torch.rand(S, D, generator=g) * 2 - 1).cuda(), (torch.rand(S, D, generator=g) * 2 - 1).cuda()
    wq, wk = cudit.qk_norm_rope((q, k), qw, kw, cos, sin, interleave=False,
                                out=(torch.full_like(q, math.nan), torch.full_like(k, math.nan)))
    nq, nk = hq // ranks, hk // ranks
    q2, k2 = q.clone(), k.clone()
    bufs, exchanges, streams = _exchange_ranks(cudit, torch, ranks, tokens=S)
    for r in range(ranks):
        with torch.cuda.stream(streams[r]):
            cudit.qk_norm_rope((q2[:, :, r * nq:(r + 1) * nq], k2[:, :, r * nk:(r + 1) * nk]),
                               qw[r * nq * D:(r + 1) * nq * D], kw[r * nk * D:(r + 1) * nk * D], cos, sin,
                               interleave=False, exchange=exchanges[r], norm_width=(hq * D, hk * D))
    torch.cuda.synchronize()
    for got, want in ((q2, wq), (k2, wk)):
        worst, over = within_one_ulp(got, want, "bf16", half=True)
        assert over == 0, f"{over} elements over 1 ulp of one GPU (worst {worst:.2f})"
