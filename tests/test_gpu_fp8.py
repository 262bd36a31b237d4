"""fp8 output on the GPU (issue #11): every value of Q, K and (packed) V against the float64
reference quantised the same way, in fresh random data with saturating and zero rows; the
output poisoned beforehand, every byte outside the written region checked bit for bit; the
amax outputs against the reference's max |y|."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from cudit.reference import FP8_FORMATS, qk_norm_rope_ref, quantize_fp8
from gpu_cases import Case, _layouts, _tables, _to, _weights, plans_launched_by

pytestmark = pytest.mark.gpu

# The kernel's fp32 y against float64, |y - y64| <= REL |y| + ABS (the rotation's cancellation
# leaves small values an absolute error): far inside an fp8 step.
REL, ABS = 2e-5, 2e-6


@dataclasses.dataclass(frozen=True)
class F8:
    case: Case
    fmt: str = "float8_e4m3fn"
    scale: str = "value"       # value / tensor / head
    amax: str = "tensor"       # "" / tensor / head
    big: float = 1.0           # scales times this (and the format's range over e4m3fn's): > 100 saturates many
    nan: bool = False          # a NaN in token 1's first Q head: its head (its row, full-dim) NaN

    def __str__(self):
        return f"{self.case.name}-{self.fmt[6:]}-{self.scale}-{self.amax or 'noamax'}" + ("-sat" if self.big > 1 else "") \
            + ("-nan" if self.nan else "")


def _scales(f: F8, rng, heads, torch):
    """The call's scale arguments and their values as [3] arrays of per-head factors (Q, K, V)."""
    args, values = {}, []
    big = f.big if f.big == 1 else f.big * FP8_FORMATS[f.fmt][2] / FP8_FORMATS["float8_e4m3fn"][2]
    for role, h in zip(("q_scale", "k_scale", "v_scale"), heads):
        if h == 0:
            values.append(None)
            continue
        if f.scale == "value":
            s = float(rng.uniform(0.5, 4.0)) * big
            args[role] = s
            values.append(np.full(h, s))
        else:
            v = rng.uniform(0.5, 4.0, h if f.scale == "head" else 1) * big
            args[role] = torch.from_numpy(v.astype(np.float32)).cuda()
            values.append(np.broadcast_to(v.astype(np.float32).astype(np.float64), (h,)))
    return args, values


def _expected_bounds(y, s, fmt):
    """The fp8 values a correct kernel may write for float64 y: the quantisation of anything
    within the kernel's fp32 error of y, times s (one step apart where y * s sits on a rounding
    boundary)."""
    slack = REL * np.abs(y) + ABS
    lo = quantize_fp8(y - slack, s, fmt)
    hi = quantize_fp8(y + slack, s, fmt)
    return np.minimum(lo, hi), np.maximum(lo, hi)


def run_fp8(f: F8):
    import torch

    import cudit

    c = f.case
    rng = np.random.default_rng(abs(hash(str(f))) % 2**32)
    lay = _layouts(c)
    hq, hk, hv = c.heads
    hv = 0 if c.split else hv
    data = _to(rng.standard_normal(lay.numel) * 2.0, c.dtype)
    x = lay.make_view(data)
    for t in x if c.split else (x,):   # token 0 all zeros: its output must be exact zeros
        (t[0] if t.dim() == 2 else t[0, 0]).zero_()
    if f.nan:
        q = x[0] if c.split else x
        q[(1, 3) if q.dim() == 2 else ((0, 1, 3) if q.dim() == 3 else (0, 1, 0, 3))] = float("nan")
    original = data.clone()
    qw, kw = _weights(c, rng, hq), _weights(c, rng, hk)
    qa = ka = None
    if c.n_txt:
        qa, ka = _weights(c, rng, hq), _weights(c, rng, hk)
    cos, sin = _tables(c, rng)
    scale_args, scale_values = _scales(f, rng, (hq, hk, hv), torch)
    amax = {}
    if f.amax:
        for role, h in zip(("q_amax", "k_amax", "v_amax"), (hq, hk, hv)):
            if h:
                amax[role] = torch.zeros(h if f.amax == "head" else 1, device="cuda")
    out_lay = _layouts(dataclasses.replace(c, pad=c.pad + 16))
    buf = torch.full((out_lay.numel,), 0xFF, dtype=torch.uint8, device="cuda")   # NaN in both formats
    poison = buf.clone()
    out = out_lay.make_view(buf.view(getattr(torch, f.fmt)))
    heads = (hq, hk) if c.split else c.heads
    cudit.qk_norm_rope(x, qw, kw, cos, sin, num_heads=heads if (c.ndim != 4 or not c.split) else None, eps=c.eps,
                       interleave=c.rope != "half", q_add_weight=qa, k_add_weight=ka, num_txt_tokens=c.n_txt,
                       out=out, **scale_args, **amax)
    torch.cuda.synchronize()
    assert torch.equal(data.view(torch.uint8), original.view(torch.uint8)), "input changed"

    h = lambda t: None if t is None else t.double().cpu().numpy()  # noqa: E731
    host_x = lay.make_view(original.double().cpu())
    np_x = tuple(t.numpy() for t in host_x) if c.split else host_x.numpy()
    ref = qk_norm_rope_ref(np_x, h(qw), h(kw), h(cos), h(sin), num_heads=heads if c.ndim != 4 or not c.split else None,
                           eps=c.eps, interleave=c.rope != "half", q_add_weight=h(qa), k_add_weight=h(ka),
                           num_txt_tokens=c.n_txt)
    sides = _sides(c, ref, np_x, (hq, hk, hv))
    got_all = buf.view(getattr(torch, f.fmt)).double().cpu()
    got_view = out_lay.make_view(got_all)
    got_sides = _sides(c, tuple(t.numpy() for t in got_view) if c.split else got_view.numpy(), None, (hq, hk, hv))
    for name, y, g, s in zip("QKV", sides, got_sides, scale_values):
        if y is None:
            continue
        lo, hi = _expected_bounds(y, s[:, None], f.fmt)
        ok = ((g >= lo) & (g <= hi)) | (np.isnan(g) & np.isnan(lo))
        assert np.array_equal(np.isnan(g), np.isnan(lo)), f"{name}: NaN where the reference has none, or lost"
        assert ok.all(), (f"{name}: {int((~ok).sum())} of {g.size} fp8 values off; e.g. got {g[~ok][:4]}, "
                          f"expected {lo[~ok][:4]}..{hi[~ok][:4]}")
        top = FP8_FORMATS[f.fmt][2]
        if f.big > 1:
            # Values the scale takes past the range come out as its end. The fixed cases are sized
            # to reach it; a random case's data may not (the bounds above hold either way).
            over = np.abs(y * s[:, None]) > top
            assert (np.abs(g[over]) == top).all(), f"{name}: a value past the range is not saturated"
            assert over.any() or c.name.startswith("random"), f"{name}: the case saturates nothing"
        if name != "V":
            assert (g == 0).any(), f"{name}: the zero token is not zero"
    # Every byte outside Q, K (and V) as poisoned.
    mask = torch.zeros(out_lay.numel, dtype=torch.bool)
    out_lay.mark(mask)
    if hv:
        _mark_v(c, out_lay, mask)
    assert torch.equal(buf.cpu()[~mask], poison.cpu()[~mask]), "bytes outside the output's region changed"
    assert int(mask.sum()) == sum(y.size for y in sides if y is not None)
    for (role, a), y in zip(sorted(amax.items(), key=lambda kv: "qkv".index(kv[0][0])), sides):
        want = np.abs(y).max(axis=(0, 2)) if f.amax == "head" else np.abs(y).max(keepdims=True)[0, 0]
        np.testing.assert_allclose(a.cpu().numpy(), want.reshape(-1), rtol=REL, err_msg=role)


def _sides(c: Case, ref, np_x, heads):
    """[T, H, D] float64 arrays of Q, K and V (None without V): V is the input itself."""
    hq, hk, hv = heads
    if c.split:
        q, k = (np.asarray(t).reshape(c.B * c.S, -1, c.D) for t in ref)
        return q, k, None
    a = np.asarray(ref).reshape(c.B * c.S, -1, c.D)
    v = None
    if hv:
        src = np.asarray(np_x if np_x is not None else ref).reshape(c.B * c.S, -1, c.D)
        v = src[:, hq + hk:]
    return a[:, :hq], a[:, hq:hq + hk], v


def _mark_v(c: Case, lay, mask):
    """Mark V's elements of a packed layout's buffer."""
    import torch

    hq, hk, hv = c.heads
    flat = torch.zeros(lay.numel, dtype=torch.bool)
    view = lay.make_view(flat)
    if c.ndim == 4:
        view[:, :, hq + hk:].fill_(True)
    else:
        view[..., (hq + hk) * c.D:].fill_(True)
    mask |= flat


def cases():
    out = []
    for norm, rope in (("head", "interleaved"), ("full", "interleaved"), ("head", "half"), ("full", "half"),
                       ("none", "interleaved"), ("head", "none")):
        out.append(F8(Case(f"{norm}-{rope}", norm=norm, rope=rope, B=2, S=13)))
    for fmt in FP8_FORMATS:
        for scale in ("value", "tensor", "head"):
            for amax in ("", "tensor", "head"):
                out.append(F8(Case("wan-like", norm="full", heads=(12, 12, 12), S=40), fmt, scale, amax))
                out.append(F8(Case("flux-like", norm="head", heads=(24, 24, 24), S=21, n_txt=5), fmt, scale, amax))
        out.append(F8(Case("saturating", heads=(4, 4, 4), S=9), fmt, "head", "head", big=200.0))
        for norm in ("head", "full"):
            out.append(F8(Case(f"nan-{norm}", norm=norm, heads=(4, 4, 4), S=5), fmt, "tensor", "head", nan=True))
    for name, c in (("split", Case(split=True, S=11)), ("split-gqa", Case(split=True, heads=(8, 2, 2), norm="full")),
                    ("packed-gqa", Case(heads=(8, 2, 2), norm="head")), ("f16", Case(dtype="f16", norm="full")),
                    ("v-more-than-k", Case(heads=(8, 2, 8), norm="full")), ("no-v", Case(heads=(4, 4, 0))),
                    ("v-heads-loop", Case(table_dtype="f16", heads=(6, 3, 9))),
                    ("d96", Case(D=96, heads=(6, 6, 6))), ("d64-half", Case(D=64, rope="half")),
                    ("ndim2-pad", Case(ndim=2, pad=24, S=7)), ("ndim4", Case(ndim=4, B=2, S=5)),
                    ("perhead-table", Case(table="perhead", rope="half", heads=(8, 8, 8))),
                    ("half-head-table", Case(table="perhead", rope="half", half_table=True, heads=(8, 8, 8))),
                    ("x16-table-loop", Case(table_dtype="f16", heads=(6, 6, 6))),
                    ("many-heads-loop", Case(norm="full", heads=(48, 48, 48), S=5)),
                    ("d256", Case(D=256, heads=(4, 4, 4), norm="full")),
                    # more heads than a block gathers in shared memory: the rest go straight to global atomics
                    ("amax-heads-past-block", Case(D=64, heads=(136, 8, 136), norm="head", S=3))):
        out.append(F8(dataclasses.replace(c, name=name), scale="head", amax="head"))
    for amax in ("tensor", "head"):   # many blocks raise one amax each
        out.append(F8(Case("many-blocks", norm="full", heads=(12, 12, 12), S=1500), amax=amax))
    return out


def random_cases(n=24, seed=11):
    r = random.Random(seed)
    out = []
    for i in range(n):
        split = r.random() < 0.3
        heads = r.choice([(4, 4, 4), (12, 12, 12), (8, 2, 2), (3, 5, 5), (24, 24, 0)])
        c = Case(f"random{i}", dtype=r.choice(["bf16", "f16"]), split=split, ndim=r.choice([2, 3, 4]),
                 B=r.choice([1, 2]), S=r.randint(1, 40), heads=heads, D=r.choice([64, 96, 128, 256]),
                 norm=r.choice(["head", "full", "none"]), rope=r.choice(["interleaved", "half"]),
                 table=r.choice(["shared", "perhead"]), table_dtype=r.choice(["f32", "bf16"]),
                 n_txt=r.choice([0, 0, 1]), pad=r.choice([0, 16]))
        if c.rope == "half" and c.D == 96:
            c = dataclasses.replace(c, rope="interleaved")
        if c.table == "perhead" and heads[0] != heads[1]:   # per-head tables need Hq == Hk
            c = dataclasses.replace(c, table="shared")
        if c.table_dtype == "bf16" and c.dtype == "f16":
            c = dataclasses.replace(c, table_dtype="f16")
        out.append(F8(c, r.choice(list(FP8_FORMATS)), r.choice(["value", "tensor", "head"]),
                      r.choice(["", "tensor", "head"]), r.choice([1.0, 1.0, 150.0])))
    return out


@pytest.mark.parametrize("f", cases() + random_cases(), ids=str)
def test_fp8_output(f):
    run_fp8(f)


# fp8 rows where every block holds all its heads and rows: the variants built with only those rows
# (cudit/_variants.py ALL_HEADS_PATHS, _f8_all and _f8a_all), each table class, V quantised, text
# weights, split outputs, fp16 and full-dim amaxes; where a head lane lacks a head, or a per-head
# row tracks an amax, the general fp8 variant.
ALL_HEADS_FP8 = [
    (F8(Case("all-heads-f8-full", heads=(40, 40, 40), norm="full", B=2, S=24), amax=""), True),
    (F8(Case("all-heads-f8-full-bf16-table", heads=(12, 12, 12), norm="full", table_dtype="bf16", S=30),
        "float8_e5m2", "head", ""), True),
    (F8(Case("all-heads-f8-head-text", heads=(24, 24, 24), n_txt=7, B=2, S=32), scale="tensor", amax=""), True),
    (F8(Case("all-heads-f8-head-split-f16", heads=(48, 48, 48), dtype="f16", split=True, S=37), amax="",
        big=200.0), True),
    (F8(Case("all-heads-f8-half-perhead", heads=(32, 32, 32), norm="full", rope="half", table="perhead",
             table_rows="T", table_dtype="bf16", S=20), amax=""), True),
    (F8(Case("all-heads-f8-half-shared-f16", heads=(12, 12, 12), norm="full", rope="half", dtype="f16",
             B=2, S=33), scale="head", amax=""), True),
    (F8(Case("all-heads-f8-half-head-table-ltx2", heads=(32, 32, 32), norm="full", rope="half", half_table=True,
             table="perhead", table_rows="T", table_dtype="bf16", S=20), amax="tensor"), True),
    (F8(Case("all-heads-f8-lane-short", heads=(10, 10, 10), norm="full", S=32), amax=""), False),
    (F8(Case("all-heads-f8-amax-per-head-norm", heads=(24, 24, 24), B=2, S=32), amax="head"), False),
    (F8(Case("all-heads-f8-amax-full-f16", heads=(40, 40, 40), norm="full", dtype="f16", S=24), amax="tensor"), True),
    (F8(Case("all-heads-f8-amax-half", heads=(12, 12, 12), norm="full", rope="half", B=2, S=33), amax="head"), True),
    (F8(Case("all-heads-f8-amax-lane-short", heads=(10, 10, 10), norm="full", S=32), amax="tensor"), False),
]


@pytest.mark.parametrize("f,alone", ALL_HEADS_FP8, ids=str)
def test_fp8_rows_of_all_heads_alone(f, alone, full_size_geometry):
    (plan,) = plans_launched_by(run_fp8, f)
    assert plan.config.variant.all_heads == alone and plan.config.variant.out, plan.kernel


def _public_result(qkv, qw, kw, cos, sin, fmt, heads=4):
    """The public function's fp8 output and Q amax for the frameworks' tests to match."""
    import torch

    import cudit

    out = torch.empty(qkv.shape, dtype=getattr(torch, fmt), device="cuda")
    amax = torch.zeros(heads, device="cuda")
    cudit.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=heads, out=out, q_scale=torch.full((1,), 2.0, device="cuda"),
                       k_scale=3.0, v_scale=0.5, q_amax=amax)
    return out.view(torch.uint8), amax


def test_torch_operator_eager_and_compiled_match_the_public_function():
    import torch

    import cudit.torch as ct
    from gpu_cases import small_inputs

    qkv, qw, kw, cos, sin = small_inputs(torch)
    want, want_amax = _public_result(qkv, qw, kw, cos, sin, "float8_e4m3fn")

    def step(x, amax):
        return ct.qk_norm_rope(x, qw, kw, cos, sin, num_heads=4, inplace=False, out_dtype=torch.float8_e4m3fn,
                               q_scale=torch.full((1,), 2.0, device="cuda"), k_scale=3.0, v_scale=0.5, q_amax=amax)

    for fn in (step, torch.compile(step, fullgraph=True)):
        amax = torch.zeros(4, device="cuda")
        got = fn(qkv, amax)
        assert got.dtype == torch.float8_e4m3fn and got.shape == qkv.shape
        assert torch.equal(got.view(torch.uint8), want) and torch.equal(amax, want_amax)
    q, k = ct.qk_norm_rope((qkv[..., :512], qkv[..., 512:1024]), qw, kw, cos, sin, num_heads=4, inplace=False,
                           out_dtype=torch.float8_e5m2)
    assert q.dtype == k.dtype == torch.float8_e5m2


def test_cupy_writes_a_uint8_array_named_as_fp8():
    cupy = pytest.importorskip("cupy")
    import torch

    import cudit
    from gpu_cases import small_inputs

    qkv, qw, kw, cos, sin = small_inputs(torch)
    want, want_amax = _public_result(qkv, qw, kw, cos, sin, "float8_e5m2")
    cp = lambda t: cupy.from_dlpack(t)   # noqa: E731
    out = cupy.empty(qkv.shape, dtype=cupy.uint8)
    amax = cupy.zeros(4, dtype=cupy.float32)
    cudit.qk_norm_rope(cp(qkv), cp(qw), cp(kw), cp(cos), cp(sin), num_heads=4, out=out, out_dtype="float8_e5m2",
                       q_scale=cupy.full((1,), 2.0, dtype=cupy.float32), k_scale=3.0, v_scale=0.5, q_amax=amax)
    cupy.cuda.get_current_stream().synchronize()
    assert torch.equal(torch.from_dlpack(out), want) and torch.equal(torch.from_dlpack(amax), want_amax)


def test_jax_returns_fp8_arrays_and_amaxes_under_jit():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    import torch

    import cudit.jax
    from gpu_cases import small_inputs

    qkv, qw, kw, cos, sin = small_inputs(torch)
    want, want_amax = _public_result(qkv, qw, kw, cos, sin, "float8_e4m3fn")
    j = lambda t: jax.dlpack.from_dlpack(t)   # noqa: E731

    @jax.jit
    def f(x, qw, kw, cos, sin, scale):
        return cudit.jax.qk_norm_rope(x, qw, kw, cos, sin, num_heads=4, out_dtype=jnp.float8_e4m3fn, q_scale=scale,
                                      k_scale=3.0, v_scale=0.5, amax="head")

    out, amaxes = f(j(qkv), j(qw), j(kw), j(cos), j(sin), jnp.full((1,), 2.0, jnp.float32))
    assert out.dtype == jnp.float8_e4m3fn and len(amaxes) == 3
    got = torch.from_numpy(np.asarray(jax.lax.bitcast_convert_type(out, jnp.uint8))).cuda()
    assert torch.equal(got, want)
    np.testing.assert_array_equal(np.asarray(amaxes[0]), want_amax.cpu().numpy())
