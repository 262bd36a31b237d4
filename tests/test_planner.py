"""The launch planner on made-up arrays: geometry, parameters, caching and every bad input."""
import re

import pytest

from cudit import _planner
from cudit._params import Params, fast_div
from cudit._planner import Geometry, PlanError, Request, geometry, make_plan, plan
from fakes import BASE, arr

D = 128


def packed(b=2, s=64, h=4, d=D, dtype="bf16", **kw):
    return arr((b, s, 3 * h * d), dtype, **kw)


def weights(n, dtype="f32"):
    return arr((n,), dtype, ptr=BASE + 0x100000), arr((n,), dtype, ptr=BASE + 0x200000)


def table(shape, dtype="f32", **kw):
    return arr(shape, dtype, ptr=BASE + 0x300000, **kw), arr(shape, dtype, ptr=BASE + 0x400000, **kw)


def params(p) -> Params:
    return Params.from_buffer_copy(p.template)


def test_per_head_geometry_packs_many_heads_per_block():
    qw, kw = weights(D)
    c, s = table((8192, D))
    p = make_plan(Request(packed(s=8192), qw, kw, c, s, num_heads=4))
    # 4 heads, 2 a thread: 16 vectors along D x 2 lanes along heads = 32 threads a row
    assert (p.team, p.block, p.norm, p.rope) == (32, 256, "head", "interleaved")
    assert p.kernel == "qknr_bf16_interleaved_f32_head_k2"
    prm = params(p)
    # a row is one side of one token, 8 rows a block; under 12k groups each group has a block
    assert p.grid == 2 * 8192 * 2 // 8 and prm.iters == 1
    assert (prm.tj, prm.th, prm.lanes_d, prm.side[0].heads) == (16, 2, 16, 4)
    assert prm.tab_rows.d == 8192 and prm.seq.d == 8192 and prm.total_rows == 2 * 2 * 8192


def test_small_grids_give_each_row_a_block():
    qw, kw = weights(D)
    c, s = table((4096, D))
    flux_like = make_plan(Request(packed(b=1, s=4096, h=24), qw, kw, c, s, num_heads=24))   # 8192 rows
    assert (flux_like.team, flux_like.block, flux_like.grid) == (96, 96, 8192)
    half = make_plan(Request(packed(b=1, s=4096, h=24), qw, kw, c, s, num_heads=24, interleave=False))
    assert (half.team, half.block, params(half).iters) == (96, 96, 1)   # and one row group each
    big = make_plan(Request(packed(b=1, s=16384, h=24), qw, kw, *table((16384, D)), num_heads=24))
    assert big.block == 2 * big.team
    wan_like = make_plan(Request(packed(b=1, s=1024, h=12), *weights(12 * D), *table((1024, D)), num_heads=12))
    assert wan_like.team == 48 and wan_like.block == 192   # teams of 48 keep whole-warp blocks


def test_blocks_take_several_row_groups_only_on_big_full_dim_grids():
    most, single_below = _planner.ROW_ITERS_BY[("full", 1)]
    assert (most, single_below) == (2, 48 * 1024)
    for norm in ("head", "full"):
        qw, kw = weights(D if norm == "head" else 4 * D)
        for tokens in (4 * 9216, 4 * 16384, 4 * 65536, 8 * 1023 // 2):   # 9216 ... 65536, 1023 groups
            prm = params(make_plan(Request(arr((1, tokens, 12 * D)), qw, kw, num_heads=4)))
            groups = -(-2 * tokens // 8)
            iters = most if norm == "full" and groups >= single_below else 1   # per-head: one at every size
            assert prm.iters == iters, (norm, tokens)
            assert -(-groups // iters) * iters >= groups


@pytest.mark.parametrize("heads,dtype,k,team", [(40, "bf16", 4, 160), (128, "bf16", 4, 512),
                                                (12, "f16", 4, 48), (96, "f32", 0, 512),
                                                (256, "f32", 0, 512)])
def test_full_dim_rows(heads, dtype, k, team):
    qw, kw = weights(heads * D)
    p = make_plan(Request(packed(s=4096, h=heads, dtype=dtype), qw, kw, num_heads=heads))
    assert p.norm == "full" and p.team == team and p.kernel.endswith(f"_full_k{k}")
    prm = params(p)
    assert prm.side[1].heads == heads and abs(prm.side[1].inv_n * heads * D - 1) < 1e-7
    assert prm.tj * prm.th == team and (k == 0 or prm.th * k >= heads)
    assert prm.lanes_d == D * {"bf16": 2, "f16": 2, "f32": 4}[dtype] // 16


@pytest.mark.parametrize("heads,norm,tokens,k", [(12, "full", 256, 2), (12, "full", 512, 2), (12, "full", 1024, 4),
                                                 (24, "head", 256, 2), (24, "head", 512, 4)])
def test_launch_bound_grids_take_two_heads_a_thread(heads, norm, tokens, k):
    qw, kw = weights(D if norm == "head" else heads * D)
    c, s = table((tokens, D))
    p = make_plan(Request(packed(b=1, s=tokens, h=heads), qw, kw, c, s, num_heads=heads))
    assert p.kernel.endswith(f"_{norm}_k{k}")   # K = 2 while 2 x tokens rows of its teams fit SMALL_GRID_THREADS


def test_geometry_rounds_teams_to_aligned_lanes():
    assert geometry(12, 16) == Geometry(4, 12, 4, 192)   # full-dim D=96 bf16: all 12 lanes, 3 segments of 16
    assert geometry(12, 16, per_head=True) == Geometry(4, 16, 4, 256)   # per-head: a power of two along D
    assert geometry(6, 24) == Geometry(3, 6, 8, 192)     # 6 x 8 x 3 slots for 24 heads x 6 lanes: none idle
    assert geometry(16, 12) == Geometry(4, 16, 3, 192)   # 48 threads: 4 rows make whole warps
    assert geometry(8, 12, parts=2) == Geometry(2, 8, 6, 240)   # two-vector items: the most rows, 5
    assert geometry(8, 3).team == 16             # 8 x 2 (3 heads, 2 a thread), a power of two
    assert geometry(8, 1) == Geometry(1, 8, 1, 256)
    assert geometry(8, 40, parts=2) == Geometry(2, 8, 20, 160)   # rotate_half: 2 heads a thread (MAX_K)
    g = geometry(32, 200)                        # fp32 D=256, 200 heads: too many for registers
    assert g.heads_per_thread == 0 and g.team == 512


def test_pointers_bind_per_call_and_k_follows_q():
    qw, kw = weights(D)
    req = Request(arr((2, 64, 7 * D)), qw, kw, num_heads=(3, 2, 2))  # GQA
    p = make_plan(req)
    prm = Params.from_buffer(p.bind(req.arrays()))
    assert prm.in_[0] == BASE and prm.in_[1] == BASE + 3 * D * 2
    assert prm.out[0] == prm.in_[0]  # in place
    assert prm.w[0] == BASE + 0x100000 and prm.w_txt[0] == prm.w[0]


def test_plans_are_cached_per_signature_not_per_pointer():
    qw, kw = weights(D)
    a = plan(Request(packed(), qw, kw, num_heads=4))
    b = plan(Request(packed(ptr=BASE + 4096), qw, kw, num_heads=4))
    c = plan(Request(packed(s=65), qw, kw, num_heads=4))
    assert a is b and a is not c


def test_split_views_of_a_bshd_buffer():
    b, s, h = 2, 10, 4
    # views of a [b, s, 3, h, D] buffer
    strides = (s * 3 * h * D, 3 * h * D, h * D, D, 1)
    q = arr((b, s, h, D), strides=(strides[0], strides[1], strides[3], 1))
    k = arr((b, s, h, D), strides=(strides[0], strides[1], strides[3], 1), ptr=BASE + h * D * 2)
    qw, kw = weights(D)
    c, sn = table((1, s, 1, D))
    p = make_plan(Request((q, k), qw, kw, c, sn))
    prm = params(p)
    assert (prm.side[0].in_sb, prm.side[0].in_ss, prm.side[0].in_hs) == (strides[0], strides[1], D)
    assert prm.cos_hs == 0 and prm.tab_rows.d == s


def test_per_head_tables_and_batch_tables():
    qw, kw = weights(D)
    c, s = table((2 * 64, 4 * D))              # LTX-2: [T, H*D]
    prm = params(make_plan(Request(packed(), qw, kw, c, s, num_heads=4, interleave=False)))
    assert prm.cos_hs == D and prm.tab_rows.d == 128 and prm.cos_rs == 4 * D
    c, s = table((2, 64, 4, D))                # [B, S, H, D]
    prm = params(make_plan(Request(packed(), qw, kw, c, s, num_heads=4)))
    assert prm.cos_hs == D and prm.tab_rows.d == 128 and prm.tab_inner.d == 64 and prm.cos_rb == 64 * 4 * D


def test_dual_stream_points_text_rows_at_add_weights():
    qw, kw = weights(D)
    qa, ka = arr((D,), "f32", ptr=BASE + 0x500000), arr((D,), "f32", ptr=BASE + 0x600000)
    req = Request(packed(), qw, kw, num_heads=4, q_add_weight=qa, k_add_weight=ka, num_txt_tokens=7)
    prm = Params.from_buffer(make_plan(req).bind(req.arrays()))
    assert prm.num_txt == 7 and prm.w_txt[0] == BASE + 0x500000 and prm.w_txt[1] == BASE + 0x600000


def test_out_of_place_has_its_own_strides():
    qw, kw = weights(D)
    x = packed()
    o = arr(x.shape, strides=(64 * 2000, 2000, 1), ptr=BASE + 0x1000000)
    req = Request(x, qw, kw, num_heads=4, out=o)
    prm = Params.from_buffer(make_plan(req).bind(req.arrays()))
    assert prm.side[0].out_ss == 2000 and prm.side[0].in_ss == 3 * 4 * D
    assert prm.out[1] == BASE + 0x1000000 + 4 * D * 2


# ------------------------------------------------------------------ bad input, by name


def bad(match, **kw):
    qw, kw_ = weights(D)
    c, s = table((64, D))
    base = dict(qkv=packed(), q_weight=qw, k_weight=kw_, cos=c, sin=s, num_heads=4)
    base.update(kw)
    with pytest.raises(PlanError, match=match):
        make_plan(Request(**base))


def test_cpu_arrays():
    bad(r"qkv: expected a GPU array, got a host", qkv=packed(device=-1))


def test_arrays_on_different_devices():
    bad(r"different devices.*cos on GPU 1", cos=arr((64, D), "f32", device=1))


def test_unsupported_dtype():
    bad(r"qkv: expected dtype bf16 / f16 / f32, got float64", qkv=packed(dtype="float64"))
    bad(r"q_weight: expected dtype", q_weight=arr((D,), "int32"))


def test_mixed_cos_sin_dtypes():
    bad(r"sin: expected the dtype of cos \(f32\), got bf16", sin=arr((64, D), "bf16"))


def test_last_axis_not_contiguous():
    bad(r"qkv: expected a contiguous last axis", qkv=packed(strides=(64 * 3 * 4 * D * 2, 3 * 4 * D * 2, 2)))


def test_misaligned_pointer_and_stride():
    bad(r"qkv: expected a data pointer aligned to 16 bytes", qkv=packed(ptr=BASE + 2))
    bad(r"qkv: expected strides that are multiples of 16 bytes",
        qkv=packed(strides=(64 * 1540, 1540, 1)))


def test_width_does_not_match_num_heads():
    bad(r"qkv: expected a last-axis width divisible by its 15 heads", num_heads=5)
    bad(r"num_heads: expected an int or a tuple of 3 ints", num_heads=(4, 4))


def test_weight_length_and_norm_kinds():
    bad(r"q_weight: expected a 1-D weight of length 128 \(per-head\) or 512", q_weight=arr((100,), "f32"))
    bad(r"k_weight: expected the same norm kind as q_weight", k_weight=arr((4 * D,), "f32"))
    bad(r"k_weight: expected a weight like", k_weight=None)


def test_cos_shapes_that_fit_no_rule_and_rows_that_do_not_divide():
    bad(r"cos: expected a last axis of 128", cos=arr((64, 100), "f32"), sin=arr((64, 100), "f32"))
    bad(r"cos: expected a row count that equals or divides the 128 tokens",
        cos=arr((48, D), "f32"), sin=arr((48, D), "f32"))
    bad(r"sin: expected the shape of cos", sin=arr((32, D), "f32"))
    bad(r"cos: expected cos and sin given together", cos=None)


def test_per_head_table_needs_equal_head_counts():
    bad(r"cos: expected a table shared by all heads: per-head tables need Hq == Hk",
        num_heads=(4, 2, 2), qkv=arr((2, 64, 8 * D)),
        cos=arr((64, 4 * D), "f32"), sin=arr((64, 4 * D), "f32"))


def test_num_txt_tokens_range_and_missing_add_weights():
    bad(r"num_txt_tokens: expected an int from 0 to the sequence length 64, got 65", num_txt_tokens=65)
    bad(r"num_txt_tokens: expected .* got -1", num_txt_tokens=-1)
    bad(r"q_add_weight: expected the text-stream weight", num_txt_tokens=3)


def test_read_only_and_immutable_outputs():
    bad(r"out: expected a writable array", out=packed(readonly=True, ptr=BASE + 0x1000000))
    bad(r"qkv: expected a writable array for in-place use \(pass out= for JAX", qkv=packed(framework="jax"))


def test_head_dim_odd_or_out_of_range():
    bad(r"head_dim: expected an even head_dim, got 25", qkv=(arr((64, 2 * 25)), arr((64, 2 * 25))),
        num_heads=2, q_weight=None, k_weight=None)
    bad(r"head_dim: expected a multiple of 16 from 32 to 256, got 512",
        qkv=(arr((64, 512)), arr((64, 512))), num_heads=1, q_weight=None, k_weight=None,
        cos=arr((64, 512), "f32"), sin=arr((64, 512), "f32"))


def test_nothing_to_do():
    bad(r"there is nothing to compute", q_weight=None, k_weight=None, cos=None, sin=None)


def test_every_message_names_expected_and_given():
    with pytest.raises(PlanError) as info:
        make_plan(Request(packed(dtype="float64"), None, None, num_heads=4))
    assert re.match(r"^\w+: expected .+, got .+$", str(info.value))


def test_mqa_single_k_head_takes_the_q_norm_kind():
    w_q, w_k = arr((8 * D,), "f32", ptr=BASE + 0x100000), arr((D,), "f32", ptr=BASE + 0x200000)
    p = make_plan(Request(arr((1, 16, 10 * D)), w_q, w_k, num_heads=(8, 1, 1)))
    assert p.norm == "full"
    p = make_plan(Request(arr((1, 16, 10 * D)), arr((D,), "f32"), w_k, num_heads=(8, 1, 1)))
    assert p.norm == "head"


@pytest.mark.parametrize("d", [1, 2, 3, 7, 64, 96, 4608, 32760, 75600, 118800, 2**31 - 1, 2**32 - 1])
def test_fast_div_is_exact(d):
    import random

    f = fast_div(d)
    rnd = random.Random(d)
    ns = [0, 1, d - 1, d, d + 1, 2**32 - 1, 2**32 - d] + [rnd.randrange(2**32) for _ in range(2000)]
    for n in ns:
        if 0 <= n < 2**32:
            assert (((n * f.m) >> 32) + n) >> f.s == n // d, (n, d)


def test_in_place_needs_a_writable_array_and_jax_callback_buffers_can_be():
    qw, kw = weights(D)
    for framework, readonly in (("jax", False), ("jax-buffer", True), ("torch", True)):
        with pytest.raises(PlanError, match="writable"):
            make_plan(Request(arr((2, 64, 12 * D), readonly=readonly, framework=framework), qw, kw, num_heads=4))
    make_plan(Request(arr((2, 64, 12 * D), framework="jax-buffer"), qw, kw, num_heads=4))


def test_rows_take_the_heads_per_thread_that_leaves_fewest_slots_idle():
    assert geometry(16, 5) == Geometry(3, 16, 2, 256)                    # 2 x 3 against 2 x 4
    assert geometry(16, 10, per_head=True) == Geometry(2, 16, 5, 160)    # per-head: 5 x 2, never 3
    assert geometry(16, 24, per_head=True) == Geometry(4, 16, 6, 192)    # 6 x 4 (3 warps): K = 4 fits
    assert geometry(16, 20, per_head=True) == Geometry(4, 16, 5, 160)    # a tie (5 x 4, 10 x 2): the larger K
    assert geometry(16, 12, parts=2).heads_per_thread == 2               # rotate_half: at most 2


def test_teams_reduce_in_warps_or_16_lane_segments():
    for lanes in range(1, 33):
        for heads in (1, 2, 3, 5, 6, 12, 16, 24, 40, 48, 96, 200):
            for per_head in (False, True):
                g = geometry(lanes, heads, per_head=per_head)
                assert (g.team <= 32 and g.team & (g.team - 1) == 0) or g.team % 16 == 0, (lanes, heads, g)
                assert g.block % g.team == 0 and g.tj >= lanes
                if per_head:
                    assert g.tj & (g.tj - 1) == 0 and g.tj <= 32   # a head's lanes: aligned inside a warp


@pytest.mark.parametrize("dtype,d,norm,rope,parts", [("f32", 256, "head", "interleaved", 2),
                                                     ("f32", 160, "head", "none", 2),
                                                     ("f32", 128, "head", "interleaved", 1),
                                                     ("bf16", 256, "head", "interleaved", 1),
                                                     ("f32", 256, "full", "interleaved", 1),
                                                     ("bf16", 96, "head", "half", 2),
                                                     ("bf16", 96, "head", "interleaved", 3),
                                                     ("bf16", 48, "head", "none", 3),
                                                     ("f32", 192, "head", "interleaved", 3),
                                                     ("bf16", 96, "full", "interleaved", 1),
                                                     ("bf16", 160, "head", "interleaved", 1)])
def test_items_hold_more_vectors_where_one_a_lane_would_overflow_a_warp_or_idle_lanes(dtype, d, norm, rope, parts):
    assert _planner.item_parts(rope, norm, d * {"bf16": 2, "f32": 4}[dtype] // 16) == parts
    qw, kw = weights(d if norm == "head" else 4 * d)
    c, s = table((64, d)) if rope != "none" else (None, None)
    p = make_plan(Request(arr((1, 64, 12 * d), dtype), qw, kw, c, s, num_heads=4, interleave=rope != "half"))
    natural = 2 if rope == "half" else 1
    assert p.kernel.endswith(f"_p{parts}") == (parts != natural)
    assert params(p).lanes_d * parts * 16 == d * {"bf16": 2, "f32": 4}[dtype]


@pytest.mark.parametrize("heads,norm,block", [(32, "head", 128), (24, "head", 192), (32, "full", 256),
                                              (32, None, 256)])
def test_per_head_rotate_half_blocks_stay_at_or_under_192_threads(heads, norm, block):
    qw, kw = weights(D if norm == "head" else heads * D) if norm else (None, None)
    c, s = table((8192, D))
    p = make_plan(Request(packed(s=8192, h=heads), qw, kw, c, s, num_heads=heads, interleave=False))
    assert (p.rope, p.norm, p.team, p.block) == ("half", norm or "none", 4 * heads, block)


@pytest.mark.parametrize("per_head", [False, True])
def test_full_dim_rotate_half_has_its_own_variant_for_a_table_shared_by_the_heads(per_head):
    qw, kw = weights(12 * D)
    c, s = table((8192, 12 * D if per_head else D))
    p = make_plan(Request(packed(b=1, s=8192, h=12), qw, kw, c, s, num_heads=12, interleave=False))
    # teams of 48 (two heads a thread); the 80-register variant's blocks fill whole warps (4 rows),
    # the 124-register one's take the most rows under 256 (5)
    assert p.kernel == "qknr_bf16_half_f32_full_k2" + ("" if per_head else "_st")
    assert (p.team, p.block) == (48, 240 if per_head else 192)
    # and one row group a block (ROW_ITERS_BY)
    assert params(p).iters == 1


def test_rows_ahead_only_for_one_group_a_block_and_a_wave_further_after_the_row():
    qw, kw = weights(D)
    c, s = table((4096, D))
    one = make_plan(Request(arr((1, 4096, 12 * D)), qw, kw, c, s, num_heads=4))            # per-head, one vector
    half = make_plan(Request(arr((1, 4096, 12 * D)), qw, kw, c, s, num_heads=4, interleave=False))
    c, s = table((16 * 4096, D))
    many = make_plan(Request(arr((1, 16 * 4096, 12 * D)), qw, kw, c, s, num_heads=4, interleave=False))
    assert (params(one).iters, params(half).iters) == (1, 1) and params(many).iters > 1
    assert one.ahead_waves == _planner.AHEAD_WAVES_AFTER_ROW > half.ahead_waves == _planner.AHEAD_WAVES_IN_ROW > 0
    assert many.ahead_waves == 0
    # so blocks of several groups take the variant built without the rows-ahead code
    assert (half.kernel, many.kernel) == ("qknr_bf16_half_f32_head_k2", "qknr_bf16_half_f32_head_k2_na")
    assert not one.kernel.endswith("_na")
    # three-vector rows (D = 96) ask at their own distance
    qw, kw = weights(96)
    c, s = table((4096, 96))
    three = make_plan(Request(arr((1, 4096, 24 * 96)), qw, kw, c, s, num_heads=8))         # D = 96: three vectors
    assert three.kernel.endswith("_p3") and three.ahead_waves == _planner.AHEAD_WAVES_THREE_VECTOR > 0


def test_row_groups_per_block_follow_the_norm_and_rope_kind():
    qw, kw = weights(4 * D)
    c, s = table((8 * 4096, D))
    full = params(make_plan(Request(arr((1, 8 * 4096, 12 * D)), qw, kw, c, s, num_heads=4)))
    qw, kw = weights(D)      # 16-row blocks: twice the tokens for a grid of 8 x FULL_GRID groups
    c, s = table((16 * 4096, D))
    half = params(make_plan(Request(arr((1, 16 * 4096, 12 * D)), qw, kw, c, s, num_heads=4, interleave=False)))
    assert (full.iters, half.iters) == (1, 8)          # a mid-size full-dim grid: one group a block
    qw, kw = weights(4 * D)
    c, s = table((64 * 4096, D))
    big = params(make_plan(Request(arr((1, 64 * 4096, 12 * D)), qw, kw, c, s, num_heads=4)))
    assert big.iters == _planner.ROW_ITERS_BY[("full", 1)][0] == 2
