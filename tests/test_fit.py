"""Every launch the planner can produce fits the limits of each shipped architecture, and the
enumeration reaches every built variant.

The per-arch tox envs set CUDIT_ARCH to check one architecture; otherwise all are checked.
"""
import itertools

import pytest

import cudit
from cudit import _modules, _variants
from cudit._planner import Request, check_fits, make_plan
from cudit._tuning import DeviceSpec, tuning_for
from conftest import wanted_arch
from fakes import BASE, arr

HEADS = (1, 2, 5, 12, 24, 40, 48, 64, 128, 256)
HEAD_DIMS = tuple(range(32, 257, 16))
# Opt-in shared memory a block may use, by architecture: the devices as the planner sees them.
SMEM = {(8, 0): 163 * 1024, (8, 6): 99 * 1024, (8, 9): 99 * 1024, (9, 0): 227 * 1024, (10, 0): 227 * 1024,
        (12, 0): 99 * 1024}


EXCHANGE = cudit.Exchange((BASE + 0x600000, BASE + 0x700000), 0, 65536)


def all_plans(device):
    dtypes = ("bf16", "f16", "f32")
    tuning = tuning_for(device)
    # 16 tokens: launch-bound grids (two heads a thread); 65536: every other variant.
    # Tables [S, D] shared by the heads, or [S, H*D] per head (variants differ: _st); rotate_half
    # tables of half heads too, [1, S, 1 or H, D/2] (the _ht twins).
    for dtype, tdtype, d, h, norm, rope, tokens, per_head, half in itertools.product(
            dtypes, dtypes, HEAD_DIMS, HEADS, ("head", "full", "none"), ("interleaved", "half", "none"),
            (16, 65536), (False, True), (False, True)):
        if (norm == "none" and rope == "none") or (rope == "none" and (tdtype != "f32" or per_head)) \
                or (half and rope != "half"):
            continue
        wl = {"head": d, "full": h * d}.get(norm)
        w = arr((wl,), "bf16", ptr=BASE + 0x100000) if wl else None
        shape = (1, tokens, h if per_head else 1, d // 2) if half else (tokens, h * d if per_head else d)
        c = arr(shape, tdtype, ptr=BASE + 0x200000) if rope != "none" else None
        qkv = arr((1, tokens, 3 * h * d), dtype)
        sources = [dict(cos=c, sin=c)]
        if rope != "none" and not (per_head or half):   # position ids into the table, and 3-D RoPE with no table
            ids = arr((1, tokens), "int32", ptr=BASE + 0x400000)
            side = int(tokens ** 0.5)
            grid = cudit.Rope3D((1, side, tokens // side), (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)))
            sources += [dict(cos=c, sin=c, positions=ids), dict(rope3d=grid)]
        if dtype in _variants.FP8_IN_DTYPES:   # fp8 output (RMS, tables by token), V of the packed input too
            out = arr(qkv.shape, "float8_e4m3fn", ptr=BASE + 0x500000)
            for amax in ({}, {"q_amax": arr((1,), "f32", ptr=BASE + 0x580000)}):   # the amax-tracking copy
                yield make_plan(Request(qkv, w, w, num_heads=h, interleave=rope == "interleaved", out=out, **amax,
                                        **sources[0]), device, tuning)
        for src in sources:
            yield make_plan(Request(qkv, w, w, num_heads=h, interleave=rope == "interleaved", **src), device, tuning)
            if w is not None:   # LayerNorm
                yield make_plan(Request(qkv, w, w, num_heads=h, interleave=rope == "interleaved", norm_type="layer",
                                        q_bias=w, k_bias=w, **src), device, tuning)
        if norm == "full":   # tensor parallelism: the given-sums and one-pass variants, and the sums themselves
            sums = arr((tokens, 2), "f32", ptr=BASE + 0x300000)
            yield make_plan(Request(qkv, w, w, c, c, num_heads=h, interleave=rope == "interleaved", sumsq=sums,
                                    stats="given", norm_width=2 * h * d), device, tuning)
            yield make_plan(Request(qkv, w, w, c, c, num_heads=h, interleave=rope == "interleaved", stats="exchange",
                                    exchange=EXCHANGE, norm_width=2 * h * d), device, tuning)
            if rope == "none":
                yield make_plan(Request(qkv, num_heads=h, sumsq=sums, stats="sumsq"), device, tuning)


def archs():
    want = wanted_arch()
    names = list(_modules.manifest()["archs"])
    return [a for a in names if want is None or _modules.arch_tuple(a) == want]


@pytest.mark.parametrize("arch", archs())
def test_every_planned_launch_fits(arch):
    man = _modules.manifest()
    device = DeviceSpec(arch=_modules.arch_tuple(arch), max_smem_per_block=SMEM[_modules.arch_tuple(arch)])
    image = _modules.Image("cubin", arch, man["archs"][arch]["file"])
    seen = set()
    for p in all_plans(device):
        check_fits(p, device, _modules.kernel_meta(man, image, p.config.variant))   # incl. the launch bound
        seen.add(p.kernel)
    # the enumeration reaches every variant, the register and the looping ones
    assert seen == set(_variants.BY_NAME) and seen <= set(man["archs"][arch]["kernels"])


def test_per_arch_env_checks_a_shipped_arch():
    assert archs(), f"CUDIT_ARCH names no shipped arch ({list(_modules.manifest()['archs'])})"
