"""Frameworks, streams, errors that must leave every array untouched, and 64-bit offsets."""
import os

import numpy as np
import pytest

from gpu_cases import Case, run_case, small_inputs as _inputs

pytestmark = pytest.mark.gpu


def test_torch_and_cupy_give_identical_bytes():
    import cupy
    import torch

    import cudit

    qkv, qw, kw, cos, sin = _inputs(torch)
    a = qkv.clone()
    cudit.qk_norm_rope(a, qw, kw, cos, sin, num_heads=4)
    b = cupy.from_dlpack(qkv.clone())
    cudit.qk_norm_rope(b, *(cupy.from_dlpack(t) for t in (qw, kw, cos, sin)), num_heads=4)
    cupy.cuda.get_current_stream().synchronize()
    torch.cuda.synchronize()
    assert not torch.equal(a, qkv)
    assert torch.equal(a.view(torch.int16), torch.from_dlpack(b).view(torch.int16))


def test_cupy_case_against_reference():
    import cudit

    run_case(Case("cupy-full-dual", norm="full", n_txt=3, B=2, S=9), cudit.qk_norm_rope, backend="cupy")
    run_case(Case("cupy-split-out", split=True, out=True, S=9), cudit.qk_norm_rope, backend="cupy")


def test_stream_arguments_and_current_stream():
    import cupy
    import torch

    import cudit

    qkv, qw, kw, cos, sin = _inputs(torch)
    want = qkv.clone()
    cudit.qk_norm_rope(want, qw, kw, cos, sin, num_heads=4)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    for stream in (s, s.cuda_stream, cupy.cuda.ExternalStream(s.cuda_stream)):
        x = qkv.clone()
        torch.cuda.synchronize()
        cudit.qk_norm_rope(x, qw, kw, cos, sin, num_heads=4, stream=stream)
        s.synchronize()
        assert torch.equal(x, want), type(stream)
    x = qkv.clone()
    torch.cuda.synchronize()
    with torch.cuda.stream(s):          # default: the framework's current stream
        cudit.qk_norm_rope(x, qw, kw, cos, sin, num_heads=4)
    s.synchronize()
    assert torch.equal(x, want)


def test_jax_needs_out_and_writes_it():
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    jax = pytest.importorskip("jax")

    import cudit
    from cudit.reference import qk_norm_rope_ref

    rng = np.random.default_rng(3)
    S, H, D = 17, 4, 128
    x = rng.standard_normal((1, S, 3 * H * D)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, D).astype(np.float32)
    ang = rng.uniform(-3, 3, (S, D)).astype(np.float32)
    dev = jax.devices("gpu")[0]
    jx, jw, jc, js = (jax.device_put(a, dev) for a in (x, w, np.cos(ang), np.sin(ang)))
    with pytest.raises(cudit.PlanError, match="pass out= for JAX"):
        cudit.qk_norm_rope(jx, jw, jw, jc, js, num_heads=H)
    out = jax.device_put(np.full_like(x, np.nan), dev)
    jax.block_until_ready(out)
    cudit.qk_norm_rope(jx, jw, jw, jc, js, num_heads=H, out=out)
    from cuda.core import Device

    Device(0).sync()
    got = np.asarray(out)
    ref = qk_norm_rope_ref(x, w, w, np.cos(ang), np.sin(ang), num_heads=H)
    assert np.all(np.isnan(got[..., 2 * H * D:]))          # V of out is never written
    np.testing.assert_allclose(got[..., :2 * H * D], ref[..., :2 * H * D], rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(jx), x)        # the input is untouched


BAD = {
    "cos rows do not divide T": lambda t, a: dict(cos=a["cos"][:5], sin=a["sin"][:5]),
    "weight length": lambda t, a: dict(q_weight=a["qw"][:100]),
    "num_txt_tokens > S": lambda t, a: dict(num_txt_tokens=999, q_add_weight=a["qw"], k_add_weight=a["kw"]),
    "mixed cos/sin dtypes": lambda t, a: dict(sin=a["sin"].to(t.bfloat16)),
    "host weight": lambda t, a: dict(k_weight=a["kw"].cpu()),
    "misaligned view": lambda t, a: dict(qkv=t.empty(2 * 33 * 1536 + 8, dtype=t.bfloat16, device="cuda")[1:1 + 2 * 33 * 1536].view(2, 33, 1536)),
    "odd head_dim": lambda t, a: dict(num_heads=(4, 4, 4), qkv=a["qkv"][..., :3 * 4 * 127].contiguous()),
    "odd rotary_dim": lambda t, a: dict(rotary_dim=63),
    "rotary_dim over head_dim": lambda t, a: dict(rotary_dim=130),
    "float positions": lambda t, a: dict(positions=t.zeros(2, 33, device="cuda")),
    "axes_dim not summing to D": lambda t, a: dict(cos=None, sin=None, rope=_rope3d((1, 3, 11), (44, 42, 40))),
    "grid not matching the tokens": lambda t, a: dict(cos=None, sin=None, rope=_rope3d((1, 4, 8), (44, 42, 42))),
}


def _rope3d(grid, axes):
    import cudit

    return cudit.Rope3D(grid, axes)


@pytest.mark.parametrize("what", list(BAD))
def test_bad_input_raises_before_launch_and_writes_nothing(what):
    import torch

    import cudit

    qkv, qw, kw, cos, sin = _inputs(torch)
    arrays = dict(qkv=qkv, qw=qw, kw=kw, cos=cos, sin=sin)
    args = dict(qkv=qkv, q_weight=qw, k_weight=kw, cos=cos, sin=sin, num_heads=4)
    args.update(BAD[what](torch, arrays))
    before = {k: v.clone() for k, v in arrays.items()}
    with pytest.raises((cudit.PlanError, TypeError, ValueError)) as info:
        cudit.qk_norm_rope(**args)
    torch.cuda.synchronize()
    assert ":" in str(info.value)
    for k, v in arrays.items():
        assert torch.equal(v, before[k]), k


def test_offsets_beyond_2_31_elements():
    """WAN-14B-like packed input with more than 2^31 elements: check the last and first tokens."""
    import torch

    import cudit
    from cudit.reference import qk_norm_rope_ref

    H, D = 40, 128
    W = 3 * H * D
    T = 2**31 // W + 4096                       # ~144k tokens, 2.2e9 elements, 4.4 GB bf16
    qkv = torch.empty(1, T, W, device="cuda", dtype=torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(7)
    qkv.normal_(generator=g)
    assert qkv.numel() > 2**31
    w = torch.rand(H * D, device="cuda", generator=g) + 0.5
    ang = torch.rand(T, D, device="cuda", generator=g) * 6.2831853
    cos, sin = torch.cos(ang), torch.sin(ang)
    ends = [slice(0, 16), slice(T - 64, T)]
    before = [qkv[:, e].double().cpu().numpy() for e in ends]
    cudit.qk_norm_rope(qkv, w, w, cos, sin, num_heads=H)
    torch.cuda.synchronize()
    wn = w.double().cpu().numpy()
    for e, x in zip(ends, before):
        ref = qk_norm_rope_ref(x, wn, wn, cos[e].double().cpu().numpy(), sin[e].double().cpu().numpy(),
                               num_heads=H)
        got = qkv[:, e].double().cpu().numpy()
        assert np.all(np.abs(got - ref) <= 1e-5 + 2.0**-8 * np.abs(ref)), e
        np.testing.assert_array_equal(got[..., 2 * H * D:], x[..., 2 * H * D:])


def _source_inputs(torch, S=24, H=4, D=128):
    """qkv, weights, a [max_pos, 64] table with position ids, and a Rope3D over 2 x 3 x 4 cells."""
    import cudit

    qkv, qw, kw, _, _ = _inputs(torch, S=S, H=H, D=D)
    g = torch.Generator(device="cuda").manual_seed(1)
    ang = torch.rand(40, 64, device="cuda", generator=g) * 6.2831853
    pos = torch.randint(0, 40, (qkv.shape[0], S), device="cuda", generator=g)
    rope = cudit.Rope3D((2, 3, 4), (44, 42, 42), theta=(10000.0, 10000.0, 256.0))
    return qkv, qw, kw, ang.cos(), ang.sin(), pos, rope


def test_rope_sources_through_torch_ops_compile_and_opcheck():
    import torch

    import cudit
    import cudit.torch as ct

    qkv, qw, kw, cos, sin, pos, rope = _source_inputs(torch)
    for extra in (dict(cos=cos, sin=sin, positions=pos), dict(rope=rope)):
        want = qkv.clone()
        cudit.qk_norm_rope(want, qw, kw, num_heads=4, **extra)
        got = ct.qk_norm_rope(qkv, qw, kw, num_heads=4, inplace=False, **extra)
        compiled = torch.compile(lambda x: ct.qk_norm_rope(x, qw, kw, num_heads=4, inplace=False, **extra),
                                 fullgraph=True)
        torch.cuda.synchronize()
        assert not torch.equal(want, qkv)
        assert torch.equal(got, want) and torch.equal(compiled(qkv), want)
    rest = (qw, kw, cos, sin, [4], 1e-6, True, None, None, 0, None, None, None, None, None, None, None, None, "rms")
    torch.library.opcheck(torch.ops.cudit.qk_norm_rope, (qkv, *rest, pos, 64, None))
    grid = (qw, kw, None, None, *rest[4:])
    torch.library.opcheck(torch.ops.cudit.qk_norm_rope_, (qkv.clone(), *grid, None, None, list(rope.fields())))


def test_rope_sources_through_jax_jit_and_cupy():
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    jax = pytest.importorskip("jax")
    import cupy
    import torch

    import cudit
    import cudit.jax as cj

    qkv, qw, kw, cos, sin, pos, rope = _source_inputs(torch)
    for extra in (dict(cos=cos, sin=sin, positions=pos.to(torch.int32)), dict(rope=rope)):
        want = qkv.clone()
        cudit.qk_norm_rope(want, qw, kw, num_heads=4, **extra)
        torch.cuda.synchronize()
        as_jax = {k: jax.dlpack.from_dlpack(v) if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
        x, jqw, jkw = (jax.dlpack.from_dlpack(t) for t in (qkv, qw, kw))
        run = jax.jit(lambda a: cj.qk_norm_rope(a, jqw, jkw, num_heads=4, **as_jax))
        assert torch.equal(torch.from_dlpack(run(x)), want)
        as_cupy = {k: cupy.from_dlpack(v) if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
        c = cupy.from_dlpack(qkv.clone())
        cudit.qk_norm_rope(c, cupy.from_dlpack(qw), cupy.from_dlpack(kw), num_heads=4, **as_cupy)
        cupy.cuda.get_current_stream().synchronize()
        assert torch.equal(torch.from_dlpack(c), want)
