"""The backward (#12) on the GPU against the float64 reference gradient: every forward mode it
covers, on random data, with the input's gradient written into a NaN-poisoned strided buffer
(every byte outside Q and K, V's included, must stay poison) and the weights' gradients into
poisoned arrays; the same bits on a second run; then the torch autograd wiring."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from cudit.reference import qk_norm_rope_ref_vjp
from gpu_cases import RTOL, Case, _layouts, _tables, _to, _weights, torch_dtype

pytestmark = pytest.mark.gpu

WEIGHT_GRADS = ("dq_weight", "dk_weight", "dq_add_weight", "dk_add_weight")


def _offset_tables(c: Case, rng):
    """[rope_offset + S, D] tables: this call reads rows rope_offset.. on."""
    return [_to(fn(rng.uniform(-math.pi, math.pi, (c.rope_offset + c.S, c.D))), c.table_dtype)
            for fn in (np.cos, np.sin)]


def run_backward(c: Case, check_repeat: bool = True) -> float:
    """One backward case against qk_norm_rope_ref_vjp; returns the worst error / tolerance."""
    import torch

    import cudit

    rng = np.random.default_rng(abs(hash(("bwd", c))) % 2**32)
    lay = _layouts(c)
    hq, hk, _ = c.heads
    data = _to(rng.standard_normal(lay.numel) * 2.0, c.dtype)
    grad = _to(rng.standard_normal(lay.numel), c.dtype)
    x, dout = lay.make_view(data), lay.make_view(grad)
    before = (data.clone(), grad.clone())
    qw, kw = _weights(c, rng, hq), _weights(c, rng, hk)
    qa = ka = None
    if c.n_txt:
        qa, ka = _weights(c, rng, hq), _weights(c, rng, hk)
    cos, sin = _offset_tables(c, rng) if c.rope_offset is not None and c.rope != "none" else _tables(c, rng)
    heads = (hq, hk) if c.split else c.heads
    kwargs = dict(num_heads=heads if (c.ndim != 4 or not c.split) else None, eps=c.eps, interleave=c.rope != "half",
                  q_add_weight=qa, k_add_weight=ka, num_txt_tokens=c.n_txt, seq_len=c.S if c.seq_len_arg else None,
                  rope_offset=c.rope_offset)

    out_lay = _layouts(replace(c, pad=c.pad + 8))   # the input's gradient has strides of its own
    weights = dict(zip(WEIGHT_GRADS, (qw, kw, qa, ka)))

    def run():
        buf = torch.empty(out_lay.numel, dtype=torch_dtype(c.dtype), device="cuda")
        buf.view(torch.uint8).fill_(0xFF)            # NaN in every float dtype
        dws = {r: torch.full_like(w, float("nan")) for r, w in weights.items() if w is not None}
        ret = cudit.qk_norm_rope_backward(x, dout, qw, kw, cos, sin, dqkv=out_lay.make_view(buf), **dws, **kwargs)
        torch.cuda.synchronize()
        assert ret is not None
        return buf, dws

    buf, dws = run()
    for b, a in zip(before, (data, grad)):
        assert torch.equal(b.view(torch.uint8), a.view(torch.uint8)), "an input changed"

    h = lambda t: None if t is None else t.double().cpu().numpy()  # noqa: E731
    np_view = lambda flat, l: (tuple(t.numpy() for t in l.make_view(flat)) if c.split   # noqa: E731
                               else l.make_view(flat).numpy())
    ref_dx, *ref_dw = qk_norm_rope_ref_vjp(np_view(data.double().cpu(), lay), np_view(grad.double().cpu(), lay),
                                           h(qw), h(kw), h(cos), h(sin), **{k: h(v) if k.endswith("weight") else v
                                                                            for k, v in kwargs.items()})
    expected = torch.full((out_lay.numel,), float("nan"), dtype=torch.float64)
    ev = out_lay.make_view(expected)
    for t, r in zip(ev if c.split else (ev,), ref_dx if c.split else (ref_dx,)):
        t.copy_(torch.from_numpy(np.ascontiguousarray(r)))
    mask = torch.zeros(out_lay.numel, dtype=torch.bool)
    out_lay.mark(mask)
    bits = torch.int32 if c.dtype == "f32" else torch.int16
    poison = torch.full((out_lay.numel,), -1, dtype=bits)
    assert torch.equal(buf.cpu().view(bits)[~mask], poison[~mask]), "bytes outside Q/K of the gradient changed"
    got, e = buf.double().cpu()[mask], expected[mask]
    assert torch.isfinite(got).all(), f"{int((~torch.isfinite(got)).sum())} unwritten or non-finite elements"
    # Two output ulps of each value, plus fp32 rounding of the terms dx subtracts (scale: the largest).
    tol = 4 * RTOL[c.dtype] * e.abs() + 1e-6 * float(e.abs().max())
    worst = float(((got - e).abs() / tol).max())
    assert worst <= 1.0, f"dx: worst err/tol {worst:.3g}"

    for role, r in zip(WEIGHT_GRADS, ref_dw):
        if r is None:
            assert role not in dws
            continue
        g = dws[role].double().cpu().numpy()
        rel = max(1e-3, 2 * RTOL[c.w_dtype])   # bf16 weights: the weight's own rounding
        tol_w = rel * np.abs(r) + 1e-4 * np.abs(r).max() + 1e-30   # (all text tokens: a weight's gradient is 0)
        w_worst = float(np.max(np.abs(g - r) / tol_w))
        assert w_worst <= 1.0, f"{role}: worst err/tol {w_worst:.3g}"
        worst = max(worst, w_worst)

    if check_repeat:   # deterministic: the same bits again
        buf2, dws2 = run()
        assert torch.equal(buf2.view(torch.uint8), buf.view(torch.uint8))
        for role in dws:
            assert torch.equal(dws2[role].view(torch.uint8), dws[role].view(torch.uint8)), role
    return worst


def cases() -> list:
    base = Case(S=37, B=2)
    out = []
    for dt in ("bf16", "f16", "f32"):
        for norm in ("head", "full", "none"):
            for rope in ("interleaved", "half", "none"):
                if norm == rope == "none":
                    continue
                out.append(replace(base, name=f"{dt}-{norm}-{rope}", dtype=dt, norm=norm, rope=rope))
    named = [
        dict(name="split", split=True), dict(name="split-gqa", split=True, heads=(8, 2, 2)),
        dict(name="packed-gqa-full", heads=(8, 2, 2), norm="full", table="shared"),
        dict(name="split-4d", split=True, ndim=4), dict(name="packed-4d", ndim=4),
        dict(name="packed-2d-seq", ndim=2, seq_len_arg=True), dict(name="split-bshd5", split=True, bshd5=True, ndim=4),
        dict(name="strided", pad=24), dict(name="strided-split-full", split=True, pad=40, norm="full"),
        dict(name="perhead-table", table="perhead"), dict(name="table-3d", table_form="3d"),
        dict(name="table-4d-perhead", table_form="4d", table="perhead"), dict(name="table-T", table_rows="T"),
        dict(name="table-bf16", table_dtype="bf16"), dict(name="table-f16-data-bf16", table_dtype="f16"),
        dict(name="table-strided", table_pad=8),
        dict(name="weights-bf16", w_dtype="bf16"), dict(name="weights-f16", w_dtype="f16", dtype="f16"),
        dict(name="dual", n_txt=5), dict(name="dual-full", n_txt=5, norm="full"),
        dict(name="dual-all-text", n_txt=37), dict(name="dual-split-half", n_txt=3, split=True, rope="half"),
        # more row groups than the GPU holds at once: the streams share the grid by rows
        dict(name="dual-grid-shared", n_txt=700, S=6000, B=1, heads=(2, 2, 2)),
        dict(name="dual-grid-shared-full", n_txt=1, S=6000, B=1, heads=(2, 2, 0), norm="full"),
        dict(name="rope-offset", rope_offset=11), dict(name="eps0", eps=0.0),
        dict(name="d64", D=64), dict(name="d96", D=96), dict(name="d96-full-half", D=96, norm="full", rope="half"),
        dict(name="d256", D=256), dict(name="d256-f32", D=256, dtype="f32"), dict(name="d80-half", D=80, rope="half"),
        dict(name="d32-f32", D=32, dtype="f32"), dict(name="one-head", heads=(1, 1, 1)),
        dict(name="one-head-full", heads=(1, 1, 0), norm="full"),
        dict(name="wan-like-full", heads=(40, 40, 40), norm="full", S=9),
        dict(name="many-heads-full", heads=(64, 64, 0), norm="full", S=5),
        dict(name="many-heads-head", heads=(130, 2, 0), norm="head", S=5),
        dict(name="many-heads-f32-half", heads=(64, 64, 0), norm="full", rope="half", dtype="f32", S=3),
        dict(name="long", S=2049, B=1, heads=(2, 2, 2)),
        # rows a block takes in turn: the staged form's next row in flight while one is worked
        dict(name="long-full", S=1500, B=1, heads=(12, 12, 0), norm="full", split=True),
        # rotate_half tables of half heads (LTX-2's split RoPE): shared and per head, each norm kind,
        # the staged full-dim rows, a 16-bit table and fp32 data
        dict(name="half-table-head", rope="half", half_table=True),
        dict(name="half-table-perhead-full", rope="half", half_table=True, table="perhead", norm="full"),
        dict(name="half-table-none-bf16", rope="half", half_table=True, norm="none", table_dtype="bf16"),
        dict(name="half-table-long-full", rope="half", half_table=True, S=1500, B=1, heads=(12, 12, 0), norm="full",
             split=True),
        dict(name="half-table-f32-perhead", rope="half", half_table=True, dtype="f32", table="perhead",
             table_rows="T"),
    ]
    out += [replace(base, **kw) for kw in named]
    return out


def random_cases(n: int, seed: int = 12) -> list:
    rng = np.random.default_rng(seed)
    pick = lambda xs: xs[int(rng.integers(len(xs)))]   # noqa: E731
    out = []
    for i in range(n):
        split = bool(rng.integers(2))
        ndim = pick((2, 3, 4))
        hq = int(pick((1, 2, 3, 5, 12, 24)))
        hk = pick((hq, max(1, hq // 2) if hq % 2 == 0 else hq))
        norm = pick(("head", "full", "none"))
        rope = pick(("interleaved", "half", "none") if norm != "none" else ("interleaved", "half"))
        dtype = pick(("bf16", "f16", "f32"))
        d = int(pick((32, 64, 96, 128, 160, 256)))
        table = pick(("shared", "perhead")) if hq == hk and rope != "none" else "shared"
        s = int(rng.integers(1, 40))
        c = Case(name=f"random-{i}", dtype=dtype, split=split, ndim=ndim, B=int(rng.integers(1, 4)), S=s,
                 heads=(hq, hk, int(pick((0, hk)))), D=d, norm=norm, rope=rope, table=table,
                 table_form=pick(("2d", "3d", "4d")), table_rows=pick(("S", "T")),
                 table_dtype=pick(("f32", dtype if dtype != "f32" else "bf16")), w_dtype=pick(("f32", dtype)),
                 n_txt=int(rng.integers(0, s + 1)) if rng.integers(3) == 0 else 0,
                 seq_len_arg=ndim == 2 and bool(rng.integers(2)), pad=int(pick((0, 0, 8, 24))),
                 bshd5=split and ndim == 4 and hq == hk and bool(rng.integers(2)),
                 eps=float(pick((1e-6, 1e-5, 0.0))))
        if c.bshd5:
            c = replace(c, pad=0)
        out.append(c)
    return out


@pytest.mark.parametrize("case", cases(), ids=str)
def test_backward_mode(case):
    run_backward(case)


@pytest.mark.parametrize("case", random_cases(120), ids=str)
def test_backward_random(case):
    run_backward(case, check_repeat=False)


@pytest.fixture
def held_full_dim():
    """Full-dim rows with x and dy held in registers, as where the staged form does not fit."""
    from cudit import _launch

    before = _launch.set_tuning(_launch.device_state(0).tuning.with_knobs(backward_stages=()))
    yield
    _launch.set_tuning(before)


@pytest.mark.parametrize("case", [c for c in cases() + random_cases(120) if c.norm == "full"], ids=str)
def test_backward_full_dim_held(case, held_full_dim):
    run_backward(case)


# ------------------------------------------------------------------ torch autograd


def _torch_forward(x, qw, kw, cos, sin, heads):
    """The same forward in plain torch ([B, S, (Hq+Hk+Hv)*D] packed, per-head norm, interleaved)."""
    import torch

    b, s, w = x.shape
    hq, hk, hv = heads
    d = w // (hq + hk + hv)
    x4 = x.view(b, s, hq + hk + hv, d).float()

    def side(t, wt):
        t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * wt.float()
        a, c = t[..., 0::2], t[..., 1::2]
        cs, sn = cos.float()[None, :, None], sin.float()[None, :, None]
        return torch.stack((a * cs[..., 0::2] - c * sn[..., 0::2], c * cs[..., 1::2] + a * sn[..., 1::2]),
                           -1).flatten(-2)

    q, k, v = x4[:, :, :hq], x4[:, :, hq:hq + hk], x4[:, :, hq + hk:]
    return torch.cat((side(q, qw), side(k, kw), v), 2).view(b, s, w).to(x.dtype)


def _inputs(dtype, requires_grad=True, B=2, S=33, H=4, D=64):
    import torch

    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(B, S, 3 * H * D, device="cuda", generator=g).to(dtype).requires_grad_(requires_grad)
    qw = (torch.rand(D, device="cuda", generator=g) + 0.5).requires_grad_(requires_grad)
    kw = (torch.rand(D, device="cuda", generator=g) + 0.5).requires_grad_(requires_grad)
    ang = torch.rand(S, D // 2, device="cuda", generator=g) * 6.2831853
    return x, qw, kw, torch.cos(ang).repeat_interleave(2, -1), torch.sin(ang).repeat_interleave(2, -1)


def test_torch_autograd_matches_plain_torch():
    import torch

    import cudit.torch

    x, qw, kw, cos, sin = _inputs(torch.float32)
    dy = torch.randn_like(x)
    out = cudit.torch.qk_norm_rope(x, qw, kw, cos, sin, num_heads=4, inplace=False)
    got = torch.autograd.grad(out, (x, qw, kw), dy)
    want = torch.autograd.grad(_torch_forward(x, qw, kw, cos, sin, (4, 4, 4)), (x, qw, kw), dy)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_torch_gradcheck_fp32():
    import torch

    import cudit.torch

    x, qw, kw, cos, sin = _inputs(torch.float32, B=1, S=5, H=2, D=32)
    f = lambda x, qw, kw: cudit.torch.qk_norm_rope(x, qw, kw, cos, sin, num_heads=2, inplace=False)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, qw, kw), eps=1e-2, atol=2e-2, rtol=2e-2, nondet_tol=0.0)


def test_torch_split_gradients_and_an_unused_weight():
    import torch

    import cudit.torch

    x, qw, kw, cos, sin = _inputs(torch.bfloat16)
    q, k = x[..., :256].detach().requires_grad_(), x[..., 256:512].detach().requires_grad_()
    kw.requires_grad_(False)
    q2, k2 = cudit.torch.qk_norm_rope((q, k), qw, kw, cos, sin, num_heads=4, inplace=False)
    (q2.float().square().sum() + k2.float().sum()).backward()   # k2's gradient: an expanded scalar
    assert q.grad is not None and k.grad is not None and qw.grad is not None and kw.grad is None
    ref = qk_norm_rope_ref_vjp((q.detach().double().cpu().numpy(), k.detach().double().cpu().numpy()),
                               ((2 * q2.detach().double()).cpu().numpy(), np.ones(k.shape)),
                               qw.detach().double().cpu().numpy(), kw.double().cpu().numpy(),
                               cos.double().cpu().numpy(), sin.double().cpu().numpy(), num_heads=(4, 4))
    (rq, rk), rqw = ref[0], ref[1]
    for g, r in ((q.grad, rq), (k.grad, rk)):
        e = torch.from_numpy(r)
        torch.testing.assert_close(g.double().cpu(), e, rtol=2**-6, atol=1e-3 * float(e.abs().max()))
    torch.testing.assert_close(qw.grad.double().cpu(), torch.from_numpy(rqw), rtol=2e-2, atol=1e-2)


def test_torch_opcheck_with_autograd():
    import torch

    import cudit.torch  # noqa: F401

    x, qw, kw, cos, sin = _inputs(torch.float32, B=1, S=8)
    torch.library.opcheck(torch.ops.cudit.qk_norm_rope.default, (x, qw, kw, cos, sin, [4]))
    q, k = x[..., :256].detach().clone().requires_grad_(), x[..., 256:512].detach().clone().requires_grad_()
    torch.library.opcheck(torch.ops.cudit.qk_norm_rope_split.default, (q, k, qw, kw, cos, sin, [4, 4]))


def test_torch_compile_training_graph_keeps_the_op():
    import torch

    import cudit.torch

    x, qw, kw, cos, sin = _inputs(torch.bfloat16)

    def step(x, qw, kw):
        return cudit.torch.qk_norm_rope(x, qw, kw, cos, sin, num_heads=4, inplace=False).float().square().mean()

    eager = torch.autograd.grad(step(x, qw, kw), (x, qw, kw))
    compiled = torch.compile(step, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = torch.autograd.grad(compiled(x, qw, kw), (x, qw, kw))
    for g, e in zip(got, eager):
        assert torch.equal(g, e)   # the same kernels, the same bits


def test_torch_in_place_in_training_raises():
    import torch

    import cudit
    import cudit.torch

    x, qw, kw, cos, sin = _inputs(torch.bfloat16)
    with pytest.raises(cudit.PlanError, match="qkv: expected a tensor autograd does not track.*inplace=False"):
        cudit.torch.qk_norm_rope(x, qw, kw, cos, sin, num_heads=4)
    with pytest.raises(cudit.PlanError, match="norm: expected 'rms'"):
        cudit.torch.qk_norm_rope(x, qw, kw, cos, sin, num_heads=4, inplace=False, norm="layer")


# ------------------------------------------------------------------ JAX custom_vjp


def _jax_inputs(split: bool):
    import jax.numpy as jnp

    rng = np.random.default_rng(5)
    h, d, s = 2, 32, 6
    x = jnp.asarray(rng.standard_normal((1, s, 3 * h * d)), jnp.float32)
    w = [jnp.asarray(rng.uniform(0.5, 1.5, d), jnp.float32) for _ in range(2)]
    ang = rng.uniform(-math.pi, math.pi, (s, d // 2))
    cos, sin = (jnp.asarray(np.repeat(f(ang), 2, -1), jnp.float32) for f in (np.cos, np.sin))
    qkv = (x[..., :h * d], x[..., h * d:2 * h * d]) if split else x
    return qkv, w, cos, sin, h


@pytest.mark.parametrize("split", [False, True])
def test_jax_check_grads_and_the_reference(split):
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp
    from jax.test_util import check_grads

    import cudit.jax

    qkv, (qw, kw), cos, sin, h = _jax_inputs(split)
    heads = (h, h) if split else (h, h, h)

    def f(qkv, qw, kw):
        out = cudit.jax.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=heads)
        return out

    check_grads(f, (qkv, qw, kw), order=1, modes=("rev",), eps=1e-2, atol=2e-2, rtol=2e-2)
    out, vjp = jax.vjp(jax.jit(f), qkv, qw, kw)
    dout = jax.tree_util.tree_map(lambda t: jnp.cos(jnp.arange(t.size, dtype=jnp.float32)).reshape(t.shape), out)
    dx, dqw, dkw = vjp(dout)
    as_np = lambda t: tuple(np.asarray(a, np.float64) for a in t) if split else np.asarray(t, np.float64)  # noqa: E731
    ref = qk_norm_rope_ref_vjp(as_np(qkv), as_np(dout), np.asarray(qw), np.asarray(kw), np.asarray(cos),
                               np.asarray(sin), num_heads=heads)
    for g, r in zip(jax.tree_util.tree_leaves((dx, dqw, dkw)), jax.tree_util.tree_leaves((ref[0], ref[1], ref[2]))):
        np.testing.assert_allclose(np.asarray(g), r, rtol=1e-4, atol=1e-4 * float(np.abs(r).max()))
