"""Every launch the planner can produce fits the limits of each shipped architecture.

The per-arch tox envs set CUDIT_ARCH to check one architecture; otherwise all are checked.
"""
import itertools

import pytest

from cudit import _modules
from cudit._planner import Request, check_fits, limits_for_arch, make_plan
from conftest import wanted_arch
from fakes import BASE, arr

HEADS = (1, 2, 5, 12, 24, 40, 48, 64, 128, 256)
HEAD_DIMS = tuple(range(32, 257, 16))


def all_plans():
    dtypes = ("bf16", "f16", "f32")
    # 16 tokens: launch-bound grids (two heads a thread); 65536: every other variant.
    # Tables [S, D] shared by the heads, or [S, H*D] per head (variants differ: _st).
    for dtype, tdtype, d, h, norm, rope, tokens, per_head in itertools.product(
            dtypes, dtypes, HEAD_DIMS, HEADS, ("head", "full", "none"), ("interleaved", "half", "none"),
            (16, 65536), (False, True)):
        if (norm == "none" and rope == "none") or (rope == "none" and (tdtype != "f32" or per_head)):
            continue
        wl = {"head": d, "full": h * d}.get(norm)
        w = arr((wl,), "bf16", ptr=BASE + 0x100000) if wl else None
        c = arr((tokens, h * d if per_head else d), tdtype, ptr=BASE + 0x200000) if rope != "none" else None
        yield make_plan(Request(arr((1, tokens, 3 * h * d), dtype), w, w, c, c, num_heads=h,
                                interleave=rope == "interleaved"))


def archs():
    want = wanted_arch()
    names = list(_modules.manifest()["archs"])
    return [a for a in names if want is None or _modules.arch_tuple(a) == want]


@pytest.mark.parametrize("arch", archs())
def test_every_planned_launch_fits(arch):
    man = _modules.manifest()
    limits = limits_for_arch(_modules.arch_tuple(arch))
    kernels = man["archs"][arch]["kernels"]
    image = _modules.Image("cubin", arch, man["archs"][arch]["file"])
    seen = set()
    for p in all_plans():
        check_fits(p, limits, _modules.kernel_meta(man, image, p.kernel))   # incl. the launch bound
        seen.add(p.kernel)
    # the enumeration reaches both the register and the looping variants
    assert seen == set(man["variants"]) and set(man["variants"]) <= set(kernels)


def test_per_arch_env_checks_a_shipped_arch():
    assert archs(), f"CUDIT_ARCH names no shipped arch ({list(_modules.manifest()['archs'])})"
