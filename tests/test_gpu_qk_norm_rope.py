"""Every mode of docs/api.md on the GPU against the float64 reference (torch arrays)."""
import math

import numpy as np
import pytest

from fakes import blocks_holding_all_heads
from gpu_cases import Case, plans_launched_by, run_case, tuned


def cases():
    out = []
    add = out.append
    # layouts: packed / split, 2-D / 3-D / 4-D, contiguous and strided views, odd B and S
    for split in (False, True):
        for ndim in (2, 3, 4):
            for pad in (0, 24):
                add(Case(f"layout-{'split' if split else 'packed'}-{ndim}d-pad{pad}", split=split, ndim=ndim,
                         pad=pad, B=3 if ndim != 2 else 1, S=17))
    add(Case("split-bshd-of-bs3hd", split=True, ndim=4, bshd5=True, B=2, S=9))
    add(Case("packed-2d-batch-seq_len", ndim=2, B=3, S=11, seq_len_arg=True, n_txt=4))
    # norm kinds x rope modes
    for norm in ("head", "full", "none"):
        for rope in ("interleaved", "half", "none"):
            if norm == rope == "none":
                continue
            add(Case(f"norm-{norm}-rope-{rope}", norm=norm, rope=rope, B=2, S=13))
    # GQA / MQA, both norm kinds, packed and split
    for heads in ((8, 2, 2), (8, 1, 1), (2, 6, 6)):
        for norm in ("head", "full"):
            for split in (False, True):
                add(Case(f"gqa-{heads}-{norm}-{'split' if split else 'packed'}", heads=heads, norm=norm,
                         split=split, S=21, rope="half"))
    # K of fewer heads in narrower teams, more K tokens a block (per-head and no norm)
    for heads in ((24, 8, 8), (28, 4, 4), (16, 1, 1)):
        for norm in ("head", "none"):
            for rope in ("interleaved", "half"):
                add(Case(f"gqa-narrow-k-{heads}-{norm}-{rope}", heads=heads, norm=norm, rope=rope, B=2, S=37))
    add(Case("gqa-d96-three-vectors", heads=(24, 8, 8), D=96, B=2, S=37))   # K keeps Q's teams
    # full-dim head counts: register path, bigger blocks, and the looping path
    for h in (40, 64, 128, 256):
        add(Case(f"full-{h}heads", heads=(h, h, h), norm="full", S=5))
    add(Case("full-128heads-f32-loop", heads=(128, 128, 128), norm="full", dtype="f32", S=3))
    # full-dim rows of three heads a thread: 6 heads of D=256, GQA 10 / 5
    add(Case("k3-6heads-d256", heads=(6, 6, 6), D=256, norm="full", S=5))
    add(Case("k3-gqa-10-5-split", split=True, heads=(10, 5, 5), norm="full", S=9))
    # teams of 48 lanes (three 16-lane segments, rows straddling warps): 12 heads x 4, both norms
    add(Case("team48-12heads-full", heads=(12, 12, 12), norm="full", B=2, S=7))
    add(Case("team48-12heads-head", heads=(12, 12, 12), norm="head", B=2, S=7))
    add(Case("team48-12heads-full-half", heads=(12, 12, 12), norm="full", rope="half", S=7))
    # full-dim rotate_half with one table for all heads (the _st variants): each activation and
    # table dtype, [S, D] and [T, D] rows, dual-stream
    for dt, tdt in (("bf16", "f32"), ("f16", "bf16"), ("f32", "f16")):
        add(Case(f"full-half-shared-{dt}-table-{tdt}", norm="full", rope="half", dtype=dt, table_dtype=tdt, B=2,
                 S=11))
    add(Case("full-half-shared-T-rows", norm="full", rope="half", table_rows="T", B=2, S=9))
    add(Case("dual-full-half", norm="full", rope="half", n_txt=5, B=2, S=19))
    # full-dim rows with lanes along D not a power of two (D = 96: 12 lanes, fp32 24, rotate_half 6)
    add(Case("full-d96-16heads", heads=(16, 16, 16), D=96, norm="full", B=2, S=7))
    add(Case("full-d96-16heads-f32", heads=(16, 16, 16), D=96, norm="full", dtype="f32", S=7))
    add(Case("full-d96-16heads-half", heads=(16, 16, 16), D=96, norm="full", rope="half", S=7))
    add(Case("full-d96-gqa-16-4-split", split=True, heads=(16, 4, 4), D=96, norm="full", S=9))
    add(Case("full-d96-128heads-f32-loop", heads=(128, 128, 0), D=96, norm="full", dtype="f32", S=3))
    # per-head fp32 heads over 128 values: two or three vectors a lane, a head's lanes inside one warp
    for d in (160, 192, 256):
        add(Case(f"head-f32-d{d}-several-vectors", D=d, dtype="f32", S=9))
    # per-head rows of three vectors a lane (D / VEC three times a power of two): each K, no
    # rope, per-head tables, dual-stream, fp32 and fp16
    add(Case("head-d96-three-vectors-one-head", heads=(1, 1, 1), D=96, S=9))
    add(Case("head-d96-three-vectors-many-heads-loop", heads=(400, 400, 0), D=96, S=2))
    add(Case("head-d96-three-vectors-norm-only", D=96, rope="none", S=9))
    add(Case("head-d96-three-vectors-perhead-table", D=96, table="perhead", table_dtype="bf16", B=2, S=7))
    add(Case("head-d96-three-vectors-dual", D=96, heads=(24, 24, 24), n_txt=5, B=2, S=19))
    add(Case("head-f32-d48-three-vectors", D=48, dtype="f32", S=9))
    add(Case("head-f16-d192-three-vectors", D=192, dtype="f16", w_dtype="bf16", S=9))
    add(Case("head-f32-d256-norm-only", D=256, dtype="f32", rope="none", S=9))
    add(Case("head-f32-d256-one-head", heads=(1, 1, 1), D=256, dtype="f32", table_dtype="bf16", S=9))
    add(Case("head-f32-d224-many-heads-loop", heads=(200, 200, 0), D=224, dtype="f32", S=2))
    add(Case("full-96heads-d256-f32-loop", heads=(96, 96, 0), D=256, norm="full", dtype="f32", S=3))
    # dual-stream with both norm kinds
    for norm in ("head", "full"):
        add(Case(f"dual-{norm}", norm=norm, n_txt=5, B=2, S=19))
        add(Case(f"dual-{norm}-all-text", norm=norm, n_txt=19, B=1, S=19))
    # cos/sin: dtype x form x shared/per-head x rows
    for tdt in ("f32", "bf16", "f16"):
        for form in ("2d", "3d", "4d"):
            for table in ("shared", "perhead"):
                for rows in ("S", "T"):
                    add(Case(f"table-{tdt}-{form}-{table}-{rows}", table_dtype=tdt, table_form=form, table=table,
                             table_rows=rows, B=2, S=7, rope="half" if table == "perhead" else "interleaved"))
    add(Case("table-strided-rows", table_pad=32, B=2, S=9))
    add(Case("table-strided-rows-bf16-perhead", table_pad=16, table="perhead", table_dtype="bf16", S=9))
    # activation x weight dtypes
    for dt in ("bf16", "f16", "f32"):
        for wdt in ("bf16", "f16", "f32"):
            add(Case(f"dtype-{dt}-w{wdt}", dtype=dt, w_dtype=wdt, B=2, S=9, norm="full" if wdt == "bf16" else "head"))
    # head_dim: every multiple of 16 from 32 to 256, both rope modes; fp32 on a few
    for d in range(32, 257, 16):
        for rope in ("interleaved", "half"):
            add(Case(f"d{d}-{rope}", D=d, rope=rope, S=9))
        add(Case(f"d{d}-full-f16", D=d, norm="full", dtype="f16", S=5))
    for d in (32, 96, 256):
        add(Case(f"d{d}-f32", D=d, dtype="f32", rope="half", S=9))
    # out-of-place, packed and split, strided
    for split in (False, True):
        for norm in ("head", "full"):
            add(Case(f"out-{'split' if split else 'packed'}-{norm}", split=split, norm=norm, out=True, B=2, S=11,
                     pad=8))
    add(Case("out-f32-4d", out=True, ndim=4, dtype="f32", S=9))
    add(Case("eps-large", eps=0.5, S=9))
    # LayerNorm: both norm kinds x rope modes, dtypes, no bias, dual-stream, the several-vector
    # and looping variants, split and out-of-place
    for norm in ("head", "full"):
        for rope in ("interleaved", "half", "none"):
            add(Case(f"layer-{norm}-rope-{rope}", layer=True, norm=norm, rope=rope, B=2, S=13))
        add(Case(f"layer-{norm}-dual", layer=True, norm=norm, n_txt=5, B=2, S=19))
        add(Case(f"layer-{norm}-no-bias", layer=True, bias=False, norm=norm, S=9))
        add(Case(f"layer-{norm}-split-out-f16", layer=True, norm=norm, split=True, out=True, dtype="f16", S=11))
    add(Case("layer-head-d96-three-vectors", layer=True, D=96, S=9))
    add(Case("layer-head-f32-d256-two-vectors", layer=True, D=256, dtype="f32", S=9))
    add(Case("layer-head-many-heads-loop", layer=True, heads=(200, 200, 0), D=224, dtype="f32", S=2))
    add(Case("layer-full-128heads-loop", layer=True, heads=(128, 128, 128), norm="full", dtype="f32", S=3))
    add(Case("layer-full-d96-16heads", layer=True, heads=(16, 16, 16), D=96, norm="full", B=2, S=7))
    add(Case("layer-gqa-full", layer=True, heads=(8, 2, 2), norm="full", split=True, rope="half", S=21))
    add(Case("layer-perhead-table", layer=True, table="perhead", table_dtype="bf16", rope="half", S=9))
    # Position ids (clamped where out of range) and partial rotary: both rope modes and norm kinds,
    # id dtypes and shapes, table dtypes, widths cutting a vector (20) or not
    for rope, widths in (("interleaved", (128, 64, 20)), ("half", (128, 64, 32))):
        for norm in ("head", "full"):
            for width in widths:
                add(Case(f"positions-{rope}-{norm}-r{width}", rope=rope, norm=norm, positions="int64", rotary=width,
                         B=2, S=13))
    add(Case("positions-int32-2d-bf16-table", positions="int32", pos_2d=True, table_dtype="bf16", B=2, S=9))
    add(Case("positions-f16-table-f16", positions="int32", dtype="f16", table_dtype="f16", rope="half", S=9))
    add(Case("positions-f32-half-r24", positions="int64", dtype="f32", rope="half", rotary=24, S=9))
    add(Case("positions-d96-three-vectors-r40", positions="int64", D=96, rotary=40, S=9))
    add(Case("positions-loop-many-heads", positions="int64", heads=(200, 200, 0), D=224, dtype="f32", rotary=100, S=2))
    add(Case("positions-dual-split-out", positions="int64", n_txt=4, split=True, out=True, norm="full", S=11))
    add(Case("positions-layer", positions="int64", layer=True, rotary=64, rope="half", S=9))
    for rope in ("interleaved", "half"):
        add(Case(f"partial-table-{rope}", rotary=64, rope=rope, B=2, S=9))
        add(Case(f"partial-table-T-rows-{rope}-full", rotary=32, rope=rope, norm="full", table_rows="T", B=2, S=7))
    # 3-D RoPE computed in the kernel: both rope modes and norm kinds, dtypes, text before and
    # after the grid, sequence shards, LayerNorm, split and out-of-place
    for rope in ("interleaved", "half"):
        for norm in ("head", "full", "none"):
            add(Case(f"grid-{rope}-{norm}", grid=(3, 4, 5), S=60, rope=rope, norm=norm, B=2))
    for dt in ("f16", "f32"):
        add(Case(f"grid-{dt}", grid=(2, 5, 6), S=60, dtype=dt))
    add(Case("grid-text-first-dual", grid=(1, 6, 8), grid_text=7, n_txt=7, S=55, heads=(24, 24, 24)))
    add(Case("grid-text-last", grid=(2, 4, 4), grid_text=5, text_last=True, S=37))
    add(Case("grid-shard", grid=(4, 6, 6), rope_offset=61, S=50, norm="full", heads=(12, 12, 12)))
    add(Case("grid-d64-layer", grid=(2, 3, 5), D=64, layer=True, S=30, heads=(48, 48, 48)))
    add(Case("grid-d96-three-vectors", grid=(2, 3, 3), D=96, S=18))
    add(Case("grid-split-out-4d", grid=(2, 3, 4), split=True, ndim=4, out=True, S=24, axes=(16, 56, 56)))
    add(Case("grid-loop-many-heads", grid=(1, 2, 3), heads=(200, 200, 0), D=224, dtype="f32", S=6))
    return out


# The models of docs/models.md at their real head layouts; token counts cut for the float64 reference.
MODELS = [
    Case("WAN2.1-1.3B", heads=(12, 12, 12), norm="full", table_form="4d", B=2, S=257),
    Case("WAN2.1-5B", heads=(24, 24, 24), norm="full", table_form="4d", B=2, S=129),
    Case("WAN2.1-14B", heads=(40, 40, 40), norm="full", table_form="4d", B=2, S=101),
    Case("WAN2.1-1.3B-rotate-half", heads=(12, 12, 12), norm="full", rope="half", table_form="4d", B=2, S=257),
    Case("LTX-2-video", heads=(32, 32, 32), norm="full", rope="half", table="perhead", table_rows="T",
         table_dtype="bf16", B=1, S=151),
    Case("LTX-2-video-f32-table", heads=(32, 32, 32), norm="full", rope="half", table="perhead", table_rows="T",
         B=1, S=77),
    Case("LTX-2-audio", heads=(32, 32, 32), D=64, norm="full", rope="half", table="perhead", table_rows="T",
         B=1, S=129),
    Case("FLUX.1", heads=(24, 24, 24), n_txt=64, B=1, S=64 + 193),
    Case("FLUX.2-CFG", heads=(48, 48, 48), n_txt=32, B=2, S=32 + 97),
    Case("HunyuanVideo", heads=(24, 24, 24), B=1, S=301),
    Case("Cosmos-GQA", split=True, ndim=4, heads=(32, 8, 8), rope="half", B=1, S=181),
    Case("Cosmos-GQA-packed", heads=(32, 8, 8), rope="half", B=2, S=97),
    Case("Lumina-Image-2", heads=(24, 8, 8), D=96, B=1, S=257),
    Case("CogVideoX-5B", heads=(48, 48, 48), D=64, layer=True, B=1, S=226 + 101),
    Case("WAN2.1-14B-rope3d", heads=(40, 40, 40), norm="full", grid=(3, 6, 8), B=2, S=144),
    Case("HunyuanVideo-rope3d", heads=(24, 24, 24), grid=(3, 8, 10), axes=(16, 56, 56), grid_text=13,
         text_last=True, B=1, S=253),
    Case("FLUX.1-rope3d", heads=(24, 24, 24), n_txt=64, grid=(1, 12, 16), axes=(16, 56, 56), grid_text=64, B=1,
         S=64 + 192),
    Case("Cosmos-GQA-rope3d", split=True, ndim=4, heads=(32, 8, 8), rope="half", grid=(3, 6, 10), B=1, S=180),
]

CASES = cases()


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=str)
def test_mode(case, full_size_geometry):
    import cudit

    run_case(case, cudit.qk_norm_rope)


@pytest.mark.gpu
@pytest.mark.parametrize("case", MODELS, ids=str)
def test_model(case, full_size_geometry):
    import cudit

    run_case(case, cudit.qk_norm_rope)


@pytest.mark.gpu
@pytest.mark.parametrize("case", MODELS, ids=str)
def test_model_launch_bound_geometry(case):
    import cudit

    run_case(case, cudit.qk_norm_rope)


def launched_plans(case) -> list:
    """Run a case on fresh launchers; the plans they were built for."""
    import cudit

    return plans_launched_by(run_case, case, cudit.qk_norm_rope)


@pytest.fixture
def rows_ahead():
    """A distance of a twentieth of a wave: these short grids then have rows ahead to request."""
    restore = tuned(small_grid_threads=0, one_row_blocks_up_to=0, ahead_waves_in_row=0.05,
                    ahead_waves_after_row=0.05, ahead_waves_three_vector=0.05, ahead_waves_head_tables=0.05)
    yield
    restore()


@pytest.mark.gpu
@pytest.mark.parametrize("case", MODELS, ids=str)
def test_model_asking_l2_for_rows_ahead(case, rows_ahead):
    from cudit import _launch
    from cudit._params import Params

    launched_plans(case)
    assert [Params.from_buffer_copy(x.template).ahead > 0 for x in _launch._LAUNCHERS.values()] == [True]


@pytest.fixture
def several_groups():
    """Three row groups a block: the next-group requests run, and no rows ahead are asked for."""
    restore = tuned(small_grid_threads=0, one_row_blocks_up_to=0, fixed_row_iters=3, full_grid=1)
    yield
    restore()


@pytest.mark.gpu
@pytest.mark.parametrize("case", MODELS, ids=str)
def test_model_several_row_groups_a_block(case, several_groups):
    from cudit import _launch
    from cudit._params import Params

    (plan,) = launched_plans(case)
    assert Params.from_buffer_copy(plan.template).iters == 3
    assert [Params.from_buffer_copy(x.template).ahead for x in _launch._LAUNCHERS.values()] == [0]


def test_case_names_are_unique():
    names = [c.name for c in CASES + MODELS + RANDOM_SOURCES + [c for c, _ in EVERY_PATH_CASES + SPECIAL_CASES]]
    assert len(names) == len(set(names))


def random_source_cases(n: int, seed: int = 7) -> list:
    """Position ids, partial rotary and 3-D RoPE combined at random with every layout, norm kind
    and type, dtype, dual-stream mode and out=."""
    rng = np.random.default_rng(seed)
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    out = []
    for i in range(n):
        dtype, rope, norm = pick(("bf16", "f16", "f32")), pick(("interleaved", "half")), pick(("head", "full"))
        d = pick((64, 96, 128, 256)) if rope == "interleaved" or norm == "full" else pick((64, 128, 256))
        split, ndim = bool(rng.integers(2)), pick((2, 3, 4))
        hq = pick((1, 2, 5, 12, 24))
        heads = (hq, hq if rng.integers(2) else max(1, hq // 2), 0 if split else hq)
        b, s = pick((1, 2)), int(rng.integers(4, 40))
        vec = 16 // (4 if dtype == "f32" else 2)
        kw = dict(dtype=dtype, rope=rope, norm=norm, D=d, split=split, ndim=ndim, heads=heads, B=b, S=s,
                  out=bool(rng.integers(2)), layer=bool(rng.integers(4) == 0), n_txt=int(rng.integers(0, 3)),
                  pad=pick((0, 0, 8)), seq_len_arg=ndim == 2 and b > 1)
        source = pick(("positions", "partial", "grid"))
        if source == "grid":
            grid = (int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(1, 6)))
            text = int(rng.integers(0, 4))
            kw.update(grid=grid, grid_text=text, text_last=bool(rng.integers(2)), S=grid[0] * grid[1] * grid[2] + text)
        else:
            table = pick(("f32", "bf16", "f16"))
            aligned = 4 if "f32" in (table, dtype) else 8    # table rows stay 16-byte aligned (vector loads)
            step = math.lcm(2 * vec if rope == "half" else 2, aligned)
            kw.update(rotary=int(rng.integers(1, d // step + 1)) * step, table_dtype=table)
            if source == "positions":
                kw.update(positions=pick(("int32", "int64")), pos_2d=bool(rng.integers(2)))
        if kw["n_txt"] > kw["S"]:
            kw["n_txt"] = 0
        out.append(Case(f"random-{source}-{i}", **kw))
    return out


RANDOM_SOURCES = random_source_cases(240)


@pytest.mark.gpu
@pytest.mark.parametrize("case", RANDOM_SOURCES, ids=str)
def test_random_rope_source(case):
    import cudit

    run_case(case, cudit.qk_norm_rope)


def every_path_blocks(plan) -> tuple:
    """(blocks that take the all-heads-held path, blocks that do not); (0, 0) for a variant
    without that path."""
    return blocks_holding_all_heads(plan) if plan.config.variant.every_path else (0, 0)


# The variants that carry the all-heads-held path (cudit/_variants.py EVERY_HEAD_PATHS): shapes
# whose blocks all take it, whose head lanes are short of K heads (the other path only), and, at
# three row groups a block, whose last blocks lack rows (both paths in one launch).
EVERY_PATH_CASES = [
    (Case("every-head-k4-all", heads=(24, 24, 24), B=2, S=64), "all"),
    (Case("every-head-k4-heads-short", heads=(23, 23, 23), S=40), "none"),
    (Case("every-full-k4-grid", heads=(40, 40, 40), norm="full", grid=(3, 6, 8), B=2, S=144), "all"),
    (Case("every-head-k4-last-short", heads=(24, 24, 24), n_txt=7, B=1, S=61), "some"),
    (Case("every-head-k4-f16-table", heads=(48, 48, 48), dtype="f16", table_dtype="f16", S=37), "some"),
    (Case("every-full-k3-d256", heads=(6, 6, 6), D=256, norm="full", B=2, S=31), "some"),
    (Case("every-full-k4-positions", heads=(12, 12, 12), norm="full", rotary=128, positions="int64",
          pos_2d=True, B=2, S=29), "some"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case,taken", EVERY_PATH_CASES, ids=str)
def test_all_heads_held_path(case, taken, full_size_geometry):
    restore = tuned(small_grid_threads=0, one_row_blocks_up_to=0, fixed_row_iters=3, full_grid=1) \
        if taken == "some" else lambda: None
    try:
        (plan,) = launched_plans(case)
    finally:
        restore()
    yes, no = every_path_blocks(plan)
    assert {"all": yes > 0 and no == 0, "some": yes > 0 and no > 0, "none": yes == 0 and no > 0}[taken], (yes, no)


def launched_plan_in_row_groups(case, row_iters):
    """The one plan a case launches, its blocks taking row_iters row groups where given."""
    restore = tuned(fixed_row_iters=row_iters, full_grid=1) if row_iters else lambda: None
    try:
        (plan,) = launched_plans(case)
    finally:
        restore()
    return plan


# Rows where every block holds all its heads and rows: the variants built with only those rows
# (cudit/_variants.py ALL_HEADS_PATHS: full-dim four heads a thread, per-head four with a shared
# table, full-dim rotate_half two), each table class, a block of several rows, several row groups
# a block, text weights and split outputs. And where a block lacks a row or a head lane a head,
# the general variant. run_case checks them all.
ALL_HEADS_CASES = [
    (Case("all-heads-f16", heads=(40, 40, 40), norm="full", dtype="f16", B=2, S=24), None, True),
    (Case("all-heads-f16-table", heads=(12, 12, 12), norm="full", dtype="f16", table_dtype="f16", B=2, S=30),
     None, True),
    (Case("all-heads-row-groups", heads=(12, 12, 12), norm="full", B=2, S=36), 3, True),
    (Case("all-heads-split-text", heads=(24, 24, 24), norm="full", split=True, out=True, n_txt=5, S=40),
     None, True),
    (Case("all-heads-last-row-short", heads=(12, 12, 12), norm="full", dtype="f16", B=1, S=35), 3, False),
    (Case("all-heads-lane-short", heads=(10, 10, 10), norm="full", S=32), None, False),
    (Case("all-heads-head-text", heads=(24, 24, 24), n_txt=7, B=2, S=32), None, True),
    (Case("all-heads-head-f16-table", heads=(48, 48, 48), dtype="f16", table_dtype="f16", S=37), None, True),
    (Case("all-heads-head-row-groups", heads=(24, 24, 24), split=True, B=2, S=30), 3, True),
    (Case("all-heads-head-lane-short", heads=(23, 23, 23), S=40), None, False),
    (Case("all-heads-half-shared", heads=(12, 12, 12), norm="full", rope="half", B=2, S=33), None, True),
    (Case("all-heads-half-perhead-bf16", heads=(32, 32, 32), norm="full", rope="half", table="perhead",
          table_rows="T", table_dtype="bf16", S=20), None, True),
    (Case("all-heads-half-f16", heads=(40, 40, 40), norm="full", rope="half", dtype="f16", table_dtype="f16",
          out=True, S=29), None, True),
    (Case("all-heads-half-last-row-short", heads=(12, 12, 12), norm="full", rope="half", S=31), 3, False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case,row_iters,alone", ALL_HEADS_CASES, ids=str)
def test_rows_of_all_heads_alone(case, row_iters, alone, full_size_geometry):
    plan = launched_plan_in_row_groups(case, row_iters)
    assert plan.config.variant.all_heads == alone, plan.kernel
    yes, no = blocks_holding_all_heads(plan)
    assert no == 0 if alone else no > 0, (yes, no)


# LayerNorm rows of all heads held with a shared slice read once a row (cudit/_variants.py
# LAYER_ONCE_PATHS): each table class, without a bias, text weights and split outputs, row groups;
# where a head lane lacks a head or the table is per head, the general LayerNorm form. run_case
# checks them against the reference.
LAYER_ONCE_CASES = [
    (Case("layer-once-cogvideox", heads=(48, 48, 48), D=64, layer=True, B=2, S=40), None, True),
    (Case("layer-once-bf16-table-no-bias", heads=(24, 24, 24), layer=True, bias=False, table_dtype="bf16", S=38),
     None, True),
    (Case("layer-once-f16-text-split", heads=(24, 24, 24), D=64, layer=True, dtype="f16", table_dtype="f16",
          split=True, out=True, n_txt=5, B=2, S=30), None, True),
    (Case("layer-once-row-groups", heads=(48, 48, 48), D=64, layer=True, B=2, S=36), 3, True),
    (Case("layer-once-lane-short", heads=(47, 47, 47), D=64, layer=True, S=40), None, False),
    (Case("layer-once-perhead-table", heads=(48, 48, 48), D=64, layer=True, table="perhead", table_rows="T", S=40),
     None, False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case,row_iters,once", LAYER_ONCE_CASES, ids=str)
def test_layer_norm_rows_read_a_shared_slice_once(case, row_iters, once, full_size_geometry):
    plan = launched_plan_in_row_groups(case, row_iters)
    v = plan.config.variant
    assert v.layer and v.layer_once == once, plan.kernel


# rotate_half rows of two heads a thread whose variants read a shared table slice once a row
# (cudit/_variants.py ONCE_TABLE_PATHS): each table dtype, and a per-head table, whose rows read
# their own slices head by head in the same variant. run_case checks them against the reference.
ONCE_TABLE_CASES = [
    # eleven heads: a head lane short, so not the all-heads form (its fp32 slice is read where used)
    Case("once-full-half-shared", heads=(11, 11, 11), norm="full", rope="half", B=2, S=33),
    Case("once-head-half-shared", heads=(24, 24, 24), rope="half", n_txt=5, B=2, S=41),
    Case("once-full-half-f16-table", heads=(40, 40, 40), norm="full", rope="half", dtype="f16", table_dtype="f16",
         S=29),
    Case("once-head-half-perhead-table", heads=(24, 24, 24), rope="half", table="perhead", table_rows="T", B=2,
         S=17),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", ONCE_TABLE_CASES, ids=str)
def test_table_read_once_a_row(case, full_size_geometry):
    (plan,) = launched_plans(case)
    assert plan.config.variant.once_table, plan.kernel


# rotate_half tables of half heads ([Bc, S, Hc, D/2], LTX-2's split RoPE): one entry serves values
# i and i + D/2 in every form that reads a table: norms, table kinds and dtypes, activation
# dtypes, layouts, head dims, the looping rows, the all-heads forms and the slices read once a row.
def _half(name, **kw):
    return Case(f"half-table-{name}", rope="half", half_table=True, **kw)


HALF_TABLE_CASES = [
    (_half("head-shared", B=2, S=13), None),
    (_half("head-perhead-bf16-T-rows", table="perhead", table_rows="T", table_dtype="bf16", B=2, S=11), None),
    (_half("full-shared", norm="full", B=2, S=13), None),
    (_half("none-perhead", norm="none", table="perhead", B=2, S=9), None),
    (_half("f16-f16-table", dtype="f16", table_dtype="f16", S=9), None),
    (_half("f32-f16-table-full", dtype="f32", table_dtype="f16", norm="full", S=9), None),
    (_half("split-out-strided", split=True, out=True, pad=8, table_pad=16, S=11), None),
    (_half("dual-full", norm="full", n_txt=5, B=2, S=19), None),
    (_half("layer-head", layer=True, S=9), None),
    (_half("gqa-shared-split", split=True, heads=(8, 2, 2), norm="full", S=21), None),
    (_half("d96-full", heads=(16, 16, 16), D=96, norm="full", S=7), None),
    (_half("d256-f32", D=256, dtype="f32", S=9), None),
    (_half("loop-many-heads", heads=(200, 200, 0), D=224, dtype="f32", S=2), None),
    (_half("loop-x16-table", heads=(200, 200, 0), D=224, table_dtype="f16", S=2), None),
    (_half("ltx2-video", heads=(32, 32, 32), norm="full", table="perhead", table_rows="T", table_dtype="bf16",
           S=151), None),
    (_half("ltx2-audio", heads=(32, 32, 32), D=64, norm="full", table="perhead", table_rows="T", S=129), None),
    (_half("all-heads-shared", heads=(12, 12, 12), norm="full", B=2, S=33), "all_heads"),
    (_half("all-heads-perhead-bf16", heads=(32, 32, 32), norm="full", table="perhead", table_rows="T",
           table_dtype="bf16", S=20), "all_heads"),
    (_half("all-heads-f16", heads=(40, 40, 40), norm="full", dtype="f16", table_dtype="f16", out=True, S=29),
     "all_heads"),
    (_half("once-full-shared", heads=(11, 11, 11), norm="full", B=2, S=33), "once_table"),
    (_half("once-head-shared-text", heads=(24, 24, 24), n_txt=5, B=2, S=41), "once_table"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case,form", HALF_TABLE_CASES, ids=str)
def test_half_head_tables(case, form, full_size_geometry):
    (plan,) = launched_plans(case)   # run_case checks each against the reference
    assert plan.config.variant.half_table, plan.kernel
    assert not form or getattr(plan.config.variant, form), plan.kernel


# Planted inf, NaN and fp16's extremes (gpu_cases.SPECIAL_VALUES) through each conversion path:
# the heads a thread the plan must take, where the variant matters; RMS and LayerNorm rows.
SPECIAL_CASES = [
    (Case("specials-f16-full-k4", heads=(40, 40, 40), norm="full", dtype="f16", specials=True, B=2, S=24), 4),
    (Case("specials-f16-full-k4-f16-table", heads=(24, 24, 24), norm="full", dtype="f16", table_dtype="f16",
          specials=True, B=2, S=24), 4),
    (Case("specials-f16-full-k4-norm-only", heads=(24, 24, 24), norm="full", rope="none", dtype="f16",
          specials=True, S=40), 4),
    (Case("specials-f16-full-k4-grid", heads=(40, 40, 40), norm="full", dtype="f16", grid=(2, 4, 6), specials=True,
          B=2, S=48), 4),
    (Case("specials-f16-full-k3-d256", heads=(6, 6, 6), D=256, norm="full", dtype="f16", specials=True, B=2, S=24), 3),
    (Case("specials-f16-full-k3-positions", heads=(6, 6, 6), D=256, norm="full", dtype="f16", rotary=256,
          positions="int32", specials=True, B=2, S=24), 3),
    (Case("specials-f16-full-layer", heads=(40, 40, 40), norm="full", layer=True, dtype="f16", specials=True, S=24),
     None),
    (Case("specials-bf16-head-layer", heads=(48, 48, 48), D=64, layer=True, specials=True, B=2, S=24), None),
    (Case("specials-f16-head", heads=(24, 24, 24), dtype="f16", specials=True, B=2, S=24), None),
    (Case("specials-bf16-full-k4", heads=(40, 40, 40), norm="full", specials=True, B=2, S=24), 4),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case,heads_per_thread", SPECIAL_CASES, ids=str)
def test_special_values(case, heads_per_thread, full_size_geometry):
    (plan,) = launched_plans(case)
    if heads_per_thread:
        assert plan.config.variant.heads_per_thread == heads_per_thread, plan.kernel
