"""The launch planner on made-up arrays: geometry, parameters, caching and every bad input."""
import dataclasses
import itertools
import re
import struct

import numpy as np
import pytest

from cudit import _planner, _variants
from cudit._params import POINTERS, Params, fast_div
from cudit._planner import Geometry, PlanError, Request, geometry, plan
from cudit._tuning import DeviceSpec, Tuning
from cudit._variants import MAX_K
from fakes import BASE, arr, blocks_holding_all_heads

D = 128
DEVICE = DeviceSpec(arch=(9, 0))
TUNING = Tuning()


def make_plan(req, tuning=TUNING):
    return _planner.make_plan(req, DEVICE, tuning)


def cfg(p):
    return p.config


def bind(p, req) -> Params:
    """The parameters a launch of p would pass for req's arrays."""
    block = bytearray(p.template)
    struct.pack_into(f"<{POINTERS}Q", block, 0, *p.addresses(req.arrays()))   # as the launcher writes it
    return Params.from_buffer_copy(block)


def packed(b=2, s=64, h=4, d=D, dtype="bf16", **kw):
    return arr((b, s, 3 * h * d), dtype, **kw)


def weights(n, dtype="f32"):
    return arr((n,), dtype, ptr=BASE + 0x100000), arr((n,), dtype, ptr=BASE + 0x200000)


def table(shape, dtype="f32", **kw):
    return arr(shape, dtype, ptr=BASE + 0x300000, **kw), arr(shape, dtype, ptr=BASE + 0x400000, **kw)


def params(p) -> Params:
    return Params.from_buffer_copy(p.template)


def token_rows(prm, side=0) -> set:
    """(input, output, cos, sin) element offsets of every row of a side, and whether it takes the
    text weights, as the kernel's locate_row and table_rows compute them from the row's index."""
    sp, out = prm.side[side], set()
    for r in range(prm.total_rows // 2):
        b, s = divmod(r, prm.seq.d)
        tb, ts = divmod(r % prm.tab_rows.d, prm.tab_inner.d)
        out.add((b * sp.in_sb + s * sp.in_ss, b * sp.out_sb + s * sp.out_ss, tb * prm.cos_rb + ts * prm.cos_rs,
                 tb * prm.sin_rb + ts * prm.sin_rs, s < prm.num_txt))
    return out


def expected_rows(batch, seq, sb, ss, table_row, txt=0) -> set:
    """Token (b, s) at b * sb + s * ss in place, paired with cos/sin at table_row(b, s)."""
    return {(b * sb + s * ss, b * sb + s * ss, table_row(b, s), table_row(b, s), s < txt)
            for b in range(batch) for s in range(seq)}


def covers(p, total_rows, heads):
    """A plan's layout covers every row and head once: the invariants every launch keeps."""
    c, prm = cfg(p), params(p)
    k = c.variant.heads_per_thread
    assert c.team == c.tj * c.th == prm.team and c.block % c.team == 0
    assert (k == 0 or c.th * k >= heads) and c.tj >= c.lanes_d == prm.lanes_d
    rows_per_block = c.block // c.team
    assert c.grid * rows_per_block * c.iters >= total_rows > (c.grid - 1) * rows_per_block * c.iters
    assert prm.total_rows == total_rows and prm.iters == c.iters


@pytest.mark.parametrize("heads,tokens,norm", [(4, 8192, "head"), (24, 4096, "head"), (24, 16384, "head"),
                                               (12, 1024, "full"), (40, 32760, "full"), (12, 32760, "full")])
def test_plans_cover_every_row_and_head(heads, tokens, norm):
    qw, kw = weights(D if norm == "head" else heads * D)
    c, s = table((tokens, D))
    p = make_plan(Request(packed(b=1, s=tokens, h=heads), qw, kw, c, s, num_heads=heads))
    covers(p, 2 * tokens, heads)
    v = cfg(p).variant
    assert (v.dtype, v.rope, v.norm, v.table) == ("bf16", "interleaved", norm, "f32")
    prm = params(p)
    assert prm.side[0].heads == heads and prm.tab_rows.d == tokens and prm.seq.d == tokens


def test_small_grids_give_each_row_a_block_per_the_tuning():
    qw, kw = weights(D)
    c, s = table((4096, D))
    req = Request(packed(b=1, s=4096, h=24), qw, kw, c, s, num_heads=24)    # 8192 rows
    small = make_plan(req, Tuning(one_row_blocks_up_to=8192))
    assert cfg(small).block == cfg(small).team and cfg(small).iters == 1
    big = make_plan(req, Tuning(one_row_blocks_up_to=8191))
    assert cfg(big).block > cfg(big).team and cfg(big).block % 32 == 0     # whole warps of rows


def test_row_groups_a_block_follow_the_tuning():
    qw, kw = weights(4 * D)
    req = Request(arr((1, 65536, 12 * D)), qw, kw, num_heads=4)
    assert cfg(make_plan(req, Tuning(fixed_row_iters=1))).iters == 1
    three = make_plan(req, Tuning(fixed_row_iters=3))
    assert cfg(three).iters == 3
    covers(three, 2 * 65536, 4)
    # a grid under the table's threshold gives every row group its own block
    rows = ("full/1", (4, 10**9)), ("head/1", (1, 0)), ("none/1", (4, 0))
    assert cfg(make_plan(req, Tuning(row_iters=rows))).iters == 1
    assert cfg(make_plan(req, Tuning(row_iters=((rows[0][0], (4, 0)),), full_grid=1))).iters == 4


@pytest.mark.parametrize("heads,dtype", [(40, "bf16"), (128, "bf16"), (12, "f16"), (96, "f32"), (256, "f32")])
def test_full_dim_rows(heads, dtype):
    qw, kw = weights(heads * D)
    p = make_plan(Request(packed(s=4096, h=heads, dtype=dtype), qw, kw, num_heads=heads))
    covers(p, 2 * 2 * 4096, heads)
    prm = params(p)
    assert cfg(p).variant.norm == "full"
    assert prm.side[1].heads == heads and abs(prm.side[1].inv_n * heads * D - 1) < 1e-7
    assert prm.lanes_d == D * {"bf16": 2, "f16": 2, "f32": 4}[dtype] // 16


def test_launch_bound_grids_take_two_heads_a_thread_per_the_tuning():
    qw, kw = weights(D)
    c, s = table((256, D))
    req = Request(packed(b=1, s=256, h=24), qw, kw, c, s, num_heads=24)
    assert cfg(make_plan(req, Tuning(small_grid_threads=0))).variant.heads_per_thread == 4
    assert cfg(make_plan(req, Tuning(small_grid_threads=10**9))).variant.heads_per_thread == 2
    assert cfg(make_plan(req, Tuning(heads_per_thread=1))).variant.heads_per_thread == 1   # the sweep knob


ALL_HEADS_PLANS = list(itertools.product(
    ((12, 12), (40, 40), (10, 10), (16, 8), (8, 16)),   # Q's and K's heads: K lanes short of heads, GQA
    ((1, 4096), (2, 36), (1, 35)),                        # batch, tokens: whole blocks or not
    ("bf16", "f16", "f32"), ("f32", "own", None),         # activations; cos/sin (own: the activations' dtype)
    (None, 3),                                            # row groups a block: the tuning's, or three
    ("full", "head"), (True, False),                      # norm; interleaved or rotate_half
))


@pytest.mark.parametrize("heads,tokens,dtype,tab,row_iters,norm,interleave", ALL_HEADS_PLANS, ids=str)
def test_variants_of_all_heads_alone_exactly_where_every_block_holds_them(heads, tokens, dtype, tab, row_iters, norm,
                                                                          interleave):
    (hq, hk), (b, s) = heads, tokens
    width = {"full": (hq * D, hk * D), "head": (D, D)}[norm]
    qw, kw = arr((width[0],), "f32", ptr=BASE + 0x100000), arr((width[1],), "f32", ptr=BASE + 0x200000)
    rope = table((s, D), dtype if tab == "own" else tab) if tab else (None, None)
    req = Request(arr((b, s, (hq + 2 * hk) * D), dtype), qw, kw, *rope, num_heads=(hq, hk, hk), interleave=interleave)
    p = make_plan(req, Tuning(small_grid_threads=0, one_row_blocks_up_to=0, fixed_row_iters=row_iters, full_grid=1))
    v = cfg(p).variant
    yes, no = blocks_holding_all_heads(p)
    alone = dataclasses.replace(v, all_heads=True).name in _variants.BY_NAME or v.all_heads
    assert v.all_heads == (alone and cfg(p).k_ratio == 1 and yes > 0 and no == 0), (v.name, yes, no)


def test_full_dim_rows_split_heads_alike_for_any_token_count():
    # A token's heads are summed in the order of the head split: sequence shards must match.
    qw, kw = weights(12 * D)
    c, s = table((256, D))
    ks = {cfg(make_plan(Request(packed(b=1, s=n, h=12), qw, kw, c, s, num_heads=12, rope_offset=0),
                        Tuning(small_grid_threads=10**9))).variant.heads_per_thread for n in (1, 16, 256)}
    assert len(ks) == 1


def test_geometry_rounds_teams_to_aligned_lanes():
    assert geometry(12, 16) == Geometry(4, 12, 4, 192)   # full-dim D=96 bf16: all 12 lanes, 3 segments of 16
    assert geometry(12, 16, per_head=True) == Geometry(4, 16, 4, 256)   # per-head: a power of two along D
    assert geometry(6, 24) == Geometry(3, 6, 8, 192)     # 6 x 8 x 3 slots for 24 heads x 6 lanes: none idle
    assert geometry(16, 12) == Geometry(4, 16, 3, 192)   # 48 threads: 4 rows make whole warps
    assert geometry(8, 12, parts=2) == Geometry(2, 8, 6, 192)   # 48 threads: 4 rows, not 5 (a part of a warp)
    assert geometry(8, 3).team == 16             # 8 x 2 (3 heads, 2 a thread), a power of two
    assert geometry(8, 1) == Geometry(1, 8, 1, 256)
    assert geometry(8, 40, parts=2) == Geometry(2, 8, 20, 160)   # rotate_half: 2 heads a thread (MAX_K)
    g = geometry(32, 200)                        # fp32 D=256, 200 heads: too many for registers
    assert g.heads_per_thread == 0 and g.team == 512


def test_pointers_bind_per_call_and_k_follows_q():
    qw, kw = weights(D)
    req = Request(arr((2, 64, 7 * D)), qw, kw, num_heads=(3, 2, 2))  # GQA
    p = make_plan(req)
    prm = bind(p, req)
    assert prm.in_[0] == BASE and prm.in_[1] == BASE + 3 * D * 2
    assert prm.out[0] == prm.in_[0]  # in place
    assert prm.w[0] == BASE + 0x100000 and prm.w_txt[0] == prm.w[0]


def test_plans_are_cached_per_signature_not_per_pointer():
    qw, kw = weights(D)
    a = plan(Request(packed(), qw, kw, num_heads=4), DEVICE, TUNING)
    b = plan(Request(packed(ptr=BASE + 4096), qw, kw, num_heads=4), DEVICE, TUNING)
    c = plan(Request(packed(s=65), qw, kw, num_heads=4), DEVICE, TUNING)
    d = plan(Request(packed(), qw, kw, num_heads=4), DEVICE, Tuning().with_kind("block_targets", "head/1", 128))
    assert a is b and a is not c and a is not d


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
    assert prm.side[0].in_hs == D and prm.cos_hs == 0
    assert token_rows(prm) == expected_rows(b, s, strides[0], strides[1], lambda _, t: t * D)


def test_per_head_tables_and_batch_tables():
    qw, kw = weights(D)
    c, s = table((2 * 64, 4 * D))              # LTX-2: [T, H*D]
    prm = params(make_plan(Request(packed(), qw, kw, c, s, num_heads=4, interleave=False)))
    assert prm.cos_hs == D and prm.tab_rows.d == 128 and prm.cos_rs == 4 * D
    c, s = table((2, 64, 4, D))                # [B, S, H, D]
    prm = params(make_plan(Request(packed(), qw, kw, c, s, num_heads=4)))
    assert prm.cos_hs == D and prm.tab_rows.d == 128 and prm.tab_inner.d == 64 and prm.cos_rb == 64 * 4 * D


@pytest.mark.parametrize("norm", ["head", "full"])
def test_half_head_tables_take_the_half_table_twin(norm):
    n = D if norm == "head" else 4 * D
    qw, kw = weights(n)
    c, s = table((1, 64, 4, D // 2))           # LTX-2's split RoPE: [B, S, H, D/2]
    p = make_plan(Request(packed(), qw, kw, c, s, num_heads=4, interleave=False))
    prm = params(p)
    assert p.config.variant.half_table and p.kernel.endswith("_ht") and p.kernel in _variants.BY_NAME
    assert prm.cos_hs == D // 2 and 4 * D // 2 in (prm.cos_rb, prm.cos_rs)
    c, s = table((1, 64, 1, D // 2))           # one half-head row for all heads
    p = make_plan(Request(packed(), qw, kw, c, s, num_heads=4, interleave=False))
    assert p.config.variant.half_table and params(p).cos_hs == 0 and D // 2 in (params(p).cos_rb, params(p).cos_rs)
    whole = dataclasses.replace(p.config.variant, half_table=False)
    c, s = table((1, 64, 1, D))                # whole heads: the same variant without the twin's flag
    assert make_plan(Request(packed(), qw, kw, c, s, num_heads=4, interleave=False)).config.variant == whole


def test_half_head_tables_are_for_rotate_half_tables_by_token():
    half = dict(cos=arr((1, 64, 4, D // 2), "f32"), sin=arr((1, 64, 4, D // 2), "f32"))
    bad(r"cos: expected a last axis of head_dim 128 with interleave=True \(half-head tables", **half)
    bad(r"cos: expected a last axis of head_dim 128 with rotary_dim 64", interleave=False, rotary_dim=64, **half)
    bad(r"cos: expected a last axis of head_dim 128, or 64 \(half a head, rotate_half\), got shape",
        cos=arr((1, 64, 4, 48), "f32"), sin=arr((1, 64, 4, 48), "f32"), interleave=False)


def test_dual_stream_points_text_rows_at_add_weights():
    qw, kw = weights(D)
    qa, ka = arr((D,), "f32", ptr=BASE + 0x500000), arr((D,), "f32", ptr=BASE + 0x600000)
    req = Request(packed(), qw, kw, num_heads=4, q_add_weight=qa, k_add_weight=ka, num_txt_tokens=7)
    prm = bind(make_plan(req), req)
    assert prm.num_txt == 7 and prm.w_txt[0] == BASE + 0x500000 and prm.w_txt[1] == BASE + 0x600000


def test_a_batch_sharing_one_table_reads_each_table_row_in_consecutive_rows():
    # CFG-style batches: batch element 1's copy of a position follows element 0's, so that the
    # second read of the table row comes from cache; every token keeps its data and table row.
    qw, kw = weights(D)
    c, s = table((64, D))
    prm = params(make_plan(Request(packed(), qw, kw, c, s, num_heads=4)))
    rows = [divmod(r % prm.tab_rows.d, prm.tab_inner.d) for r in range(128)]
    table_rows = [tb * prm.cos_rb + ts * prm.cos_rs for tb, ts in rows]
    assert table_rows[0::2] == table_rows[1::2]
    width = 3 * 4 * D
    assert token_rows(prm) == expected_rows(2, 64, 64 * width, width, lambda _, t: t * D)


@pytest.mark.parametrize("case", ["per-batch table", "text tokens", "one element", "position ids"])
def test_tokens_keep_their_data_table_rows_and_text_weights(case):
    qw, kw = weights(D)
    width, b = 3 * 4 * D, 1 if case == "one element" else 2
    c, s = table((2, 64, D) if case == "per-batch table" else (64, D))
    extra = dict(q_add_weight=qw, k_add_weight=kw, num_txt_tokens=7) if case == "text tokens" else {}
    if case == "position ids":
        extra = dict(positions=arr((2, 64), "int32", ptr=BASE + 0x800000))
    prm = params(make_plan(Request(packed(b=b), qw, kw, c, s, num_heads=4, **extra)))
    if case == "position ids":   # rows are read by id: only the data's places matter here
        assert {r[0] for r in token_rows(prm)} == {bb * 64 * width + t * width for bb in range(2) for t in range(64)}
        return
    row = (lambda bb, t: bb * 64 * D + t * D) if case == "per-batch table" else (lambda _, t: t * D)
    assert token_rows(prm) == expected_rows(b, 64, 64 * width, width, row, 7 if extra else 0)


def test_out_of_place_has_its_own_strides():
    qw, kw = weights(D)
    x = packed()
    o = arr(x.shape, strides=(64 * 2000, 2000, 1), ptr=BASE + 0x1000000)
    req = Request(x, qw, kw, num_heads=4, out=o)
    prm = bind(make_plan(req), req)
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


def test_head_stride_beyond_32_bit_offsets():
    # [B, S, H, D] views whose heads lie 2^30 elements apart: 4 heads span more than 2^31
    far = 2**30
    q = arr((2, 64, 4, D), strides=(64 * 8 * far, 8 * far, far, 1))
    k = arr((2, 64, 4, D), strides=(64 * 8 * far, 8 * far, far, 1), ptr=BASE + 2 * far)
    bad(r"q: expected heads within 2147483647 elements of each other, got a head stride of 1073741824",
        qkv=(q, k), num_heads=None)
    near = 2**29
    q = arr((2, 64, 4, D), strides=(64 * 8 * near, 8 * near, near, 1))
    k = arr((2, 64, 4, D), strides=(64 * 8 * near, 8 * near, near, 1), ptr=BASE + 2 * near)
    qw, kw = weights(D)
    c, s = table((64, D))
    assert params(make_plan(Request((q, k), qw, kw, c, s))).side[0].in_hs == near


def test_width_does_not_match_num_heads():
    bad(r"qkv: expected a last-axis width divisible by its 15 heads", num_heads=5)
    bad(r"num_heads: expected an int or a tuple of 3 ints", num_heads=(4, 4))


def test_weight_length_and_norm_kinds():
    bad(r"q_weight: expected a 1-D weight of length 128 \(per-head\) or 512", q_weight=arr((100,), "f32"))
    bad(r"k_weight: expected the same norm kind as q_weight", k_weight=arr((4 * D,), "f32"))
    bad(r"k_weight: expected a weight like", k_weight=None)


def test_cos_shapes_that_fit_no_rule_and_rows_that_do_not_divide():
    bad(r"cos: expected a last axis of 128", cos=arr((64, 130), "f32"), sin=arr((64, 130), "f32"))
    bad(r"cos: expected a 2-D \[rows, 64\] table with rotary_dim 64", cos=arr((2, 64, 64), "f32"),
        sin=arr((2, 64, 64), "f32"), rotary_dim=64)
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
    assert cfg(p).variant.norm == "full"
    p = make_plan(Request(arr((1, 16, 10 * D)), arr((D,), "f32"), w_k, num_heads=(8, 1, 1)))
    assert cfg(p).variant.norm == "head"


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


def test_blocks_hold_whole_warps():
    # The kernels' shuffles name all 32 lanes of a warp (kernels/cudit_common.cuh team_sum_warp).
    for lanes in range(1, 33):
        for heads in (1, 3, 5, 7, 12, 24, 25, 40, 63, 200):
            for parts, per_head, k, target in itertools.product((1, 2, 3), (False, True), (None, 0, 1, 2, 4),
                                                                (32, 96, 128, 256)):
                if k is not None and k > MAX_K[parts]:
                    continue
                g = geometry(lanes, heads, parts, k=k, per_head=per_head, block_target=target)
                assert g.block % 32 == 0 and g.block % g.team == 0, (lanes, heads, parts, per_head, k, target, g)


def kernel_items(c, prm, heads):
    """The (side, token, head, lane j) items the kernel's blocks visit, as kernels/qk_norm_rope.cu
    maps blocks and threads to them (qk_norm_rope_body, side_lane, team_lane, process_row)."""
    tokens, rows_q = prm.total_rows // 2, c.block // c.team
    k = c.variant.heads_per_thread or 1
    b, t = np.meshgrid(np.arange(c.grid), np.arange(c.block), indexing="ij")
    period, at = b // prm.sides.d, b % prm.sides.d
    side = (at == prm.sides.d - 1).astype(int)
    sb = np.where(side == 1, period, period * (prm.sides.d - 1) + at)
    tx, ty = t % prm.team, t // prm.team
    lane = np.where(side == 1, tx & ((1 << prm.k_shift) - 1), tx)
    row = np.where(side == 1, ty * prm.k_ratio + (tx >> prm.k_shift), ty)
    rows = np.where(side == 1, rows_q * prm.k_ratio, rows_q)
    th = np.where(side == 1, prm.k_th, prm.th)
    j, hl = lane % prm.tj, lane // prm.tj
    seen = []
    for i in range(prm.iters):
        tok = sb * rows + row + i * prm.step
        for kk in range(k):
            h = hl + kk * th
            ok = (tok < tokens) & (j < prm.lanes_d) & (h < np.array(heads)[side])
            # one index an item: K's after all of Q's
            seen.append(((tok * np.array(heads)[side] + h) * prm.lanes_d + j + side * tokens * heads[0] * prm.lanes_d)[ok])
    return np.concatenate(seen)


def visits_each_item_once(c, prm, heads):
    tokens = prm.total_rows // 2
    visits = np.bincount(kernel_items(c, prm, heads), minlength=tokens * sum(heads) * prm.lanes_d)
    assert visits.min() == visits.max() == 1, "an item visited twice or never"
    per_block = c.iters * (c.block // c.team) * c.k_ratio
    assert (c.grid // c.sides - 1) * per_block < tokens, "a period of blocks without a K token"


@pytest.mark.parametrize("tuning", [Tuning(), Tuning().with_knobs(fixed_row_iters=3)])
def test_grids_visit_every_item_once(tuning):
    # Q and K (GQA: K of fewer heads, in narrower teams, more tokens a block) through the kernel's
    # own mapping of blocks and threads.
    for tokens, (hq, hk), norm, rope in itertools.product(
            (1, 7, 64, 1000, 4097), ((3, 3), (24, 24), (40, 40), (32, 8), (24, 8), (28, 4), (16, 1)),
            ("head", "full", "none"), ("interleaved", "half", "none")):
        if norm == "none" and rope == "none":
            continue
        ws = (None, None) if norm == "none" else (arr((D if norm == "head" else hq * D,), "f32", ptr=BASE + 0x100000),
                                                  arr((D if norm == "head" else hk * D,), "f32", ptr=BASE + 0x200000))
        cs = (None, None) if rope == "none" else table((tokens, D))
        req = Request(arr((1, tokens, (hq + 2 * hk) * D)), *ws, *cs, num_heads=(hq, hk, hk),
                      interleave=rope == "interleaved")
        p = make_plan(req, tuning)
        visits_each_item_once(cfg(p), params(p), (hq, hk))


def test_gqa_k_blocks_take_more_tokens_in_narrower_teams():
    # Cosmos-like: 32 Q heads, 8 K heads, per-head rotate_half: K's teams are a quarter of Q's.
    w = _planner.Work("bf16", "half", "head", "f32", True, 128, 32, 2 * 28000, k_heads=8)
    c = _planner.launch_config(w, DEVICE, TUNING)
    assert c.k_ratio > 1 and c.tj * c.k_th * c.k_ratio == c.team and c.k_th * c.variant.heads_per_thread >= 8
    same = _planner.launch_config(dataclasses.replace(w, k_heads=0), DEVICE, TUNING)
    assert same.k_ratio == 1 and c.grid < same.grid
    full = _planner.launch_config(dataclasses.replace(w, norm="full"), DEVICE, TUNING)
    assert full.k_ratio == 1 and full.k_th == full.th   # full-dim sums span the block's team


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


@pytest.mark.parametrize("heads,norm", [(32, "head"), (24, "head"), (32, "full"), (32, None)])
def test_rotate_half_items_hold_two_vectors_and_two_heads(heads, norm):
    qw, kw = weights(D if norm == "head" else heads * D) if norm else (None, None)
    c, s = table((8192, D))
    p = make_plan(Request(packed(s=8192, h=heads), qw, kw, c, s, num_heads=heads, interleave=False))
    v = cfg(p).variant
    assert (v.rope, v.norm, v.parts, v.heads_per_thread) == ("half", norm or "none", 2, 2)
    covers(p, 2 * 2 * 8192, heads)
    if norm == "head":
        assert cfg(p).block <= TUNING.block_target_for("head", 2)


@pytest.mark.parametrize("per_head", [False, True])
def test_full_dim_rotate_half_has_its_own_variant_for_a_table_shared_by_the_heads(per_head):
    qw, kw = weights(12 * D)
    c, s = table((8192, 12 * D if per_head else D))
    p = make_plan(Request(packed(b=1, s=8192, h=12), qw, kw, c, s, num_heads=12, interleave=False))
    general = dataclasses.replace(cfg(p).variant, all_heads=False)   # 12 heads, 8192 tokens: all held
    assert general.name == "qknr_bf16_half_f32_full_k2" + ("" if per_head else "_st") and cfg(p).variant.all_heads
    assert cfg(p).variant.shared_table == (not per_head)
    if not per_head:   # the lighter variant's blocks fill whole warps
        assert cfg(p).block % 32 == 0


def test_rows_ahead_only_for_one_group_a_block_at_the_tuning_distance():
    qw, kw = weights(D)
    c, s = table((4096, D))
    one = make_plan(Request(arr((1, 4096, 12 * D)), qw, kw, c, s, num_heads=4))            # per-head, one vector
    half = make_plan(Request(arr((1, 4096, 12 * D)), qw, kw, c, s, num_heads=4, interleave=False))
    many = make_plan(Request(arr((1, 4096, 12 * D)), qw, kw, c, s, num_heads=4, interleave=False),
                     Tuning(fixed_row_iters=4, full_grid=1))
    assert (cfg(one).iters, cfg(half).iters, cfg(many).iters) == (1, 1, 4)
    assert cfg(one).ahead_waves == TUNING.ahead_waves_after_row and cfg(half).ahead_waves == TUNING.ahead_waves_in_row
    assert cfg(many).ahead_waves == 0
    # three-vector rows (D = 96) ask at their own distance
    qw, kw = weights(96)
    c, s = table((4096, 96))
    three = make_plan(Request(arr((1, 4096, 24 * 96)), qw, kw, c, s, num_heads=8))         # D = 96: three vectors
    assert three.kernel.endswith("_p3") and cfg(three).ahead_waves == TUNING.ahead_waves_three_vector
    assert cfg(make_plan(Request(arr((1, 4096, 24 * 96)), qw, kw, c, s, num_heads=8),
                         Tuning(ahead_waves_three_vector=0.25))).ahead_waves == 0.25


@pytest.mark.parametrize("rope", ["half", "interleaved"])
def test_rows_with_per_head_tables_ask_ahead_at_their_own_distance(rope):
    qw, kw = weights(4 * D)
    c, s = table((4096, 4 * D), "bf16")                     # one slice a head (LTX-2)
    knobs = Tuning(ahead_waves_head_tables=0.125, ahead_waves_in_row=0.75)
    req = Request(arr((1, 4096, 12 * D)), qw, kw, c, s, num_heads=4, interleave=rope == "interleaved")
    assert cfg(make_plan(req, knobs)).ahead_waves == 0.125
    shared = Request(arr((1, 4096, 12 * D)), qw, kw, *table((4096, D), "bf16"), num_heads=4,
                     interleave=rope == "interleaved")
    assert cfg(make_plan(shared, knobs)).ahead_waves == 0.75


@pytest.mark.parametrize("data,tdtype,fast", [("bf16", "bf16", True), ("bf16", "f32", True), ("f16", "f16", True),
                                              ("bf16", "f16", False), ("f16", "bf16", False), ("f32", "bf16", False)])
def test_tables_of_another_16_bit_type_take_the_looping_variant_and_pass_their_kind(data, tdtype, fast):
    qw, kw = weights(D)
    c, s = table((64, D), tdtype)
    p = make_plan(Request(packed(dtype=data), qw, kw, c, s, num_heads=4))
    v = cfg(p).variant
    assert v.table == (tdtype if fast else "x16") and (v.heads_per_thread != 0) == fast
    assert params(p).tab_dtype == {"f32": 0, "f16": 1, "bf16": 2}[tdtype]
    covers(p, 2 * 2 * 64, 4)


# ------------------------------------------------------------ tensor and sequence parallelism


def sums(shape=(2, 64, 2), **kw):
    return arr(shape, "f32", ptr=BASE + 0x500000, **kw)


def test_sums_of_squares_plan_writes_only_the_sums():
    req = Request(packed(h=12), num_heads=12, sumsq=sums(), stats="sumsq")
    p = make_plan(req)
    v = cfg(p).variant
    assert (v.norm, v.rope, v.stats) == ("full", "none", "sumsq") and v.name.endswith("_sumsq")
    prm = bind(p, req)
    assert prm.stats == BASE + 0x500000 and not prm.w[0] and not prm.w[1]
    covers(p, 2 * 2 * 64, 12)


@pytest.mark.parametrize("shape", [(128, 2), (2, 64, 2)])
def test_given_sums_normalise_over_the_width_of_all_ranks(shape):
    qw, kw = weights(6 * D)
    c, s = table((64, D))
    req = Request(packed(h=6), qw, kw, c, s, num_heads=6, sumsq=sums(shape), stats="given", norm_width=(12 * D, 24 * D))
    p = make_plan(req)
    prm = bind(p, req)
    assert cfg(p).variant.stats == "given" and prm.stats == BASE + 0x500000
    assert abs(prm.side[0].inv_n * 12 * D - 1) < 1e-7 and abs(prm.side[1].inv_n * 24 * D - 1) < 1e-7


def test_one_head_a_rank_is_still_a_full_dim_row():
    qw, kw = weights(D)
    req = Request(packed(h=1), qw, kw, num_heads=1, sumsq=sums(), stats="given", norm_width=8 * D)
    v = cfg(make_plan(req)).variant
    assert v.norm == "full" and v.heads_per_thread >= 2   # full-dim variants hold two heads or more


def exchange(ranks=2, rank=1, tokens=128):
    from cudit import Exchange

    return Exchange(tuple(BASE + 0x800000 + 0x100000 * r for r in range(ranks)), rank, tokens)


@pytest.mark.parametrize("ranks,rank", [(2, 0), (2, 1), (4, 3), (8, 5)])
def test_exchange_plans_the_full_dim_rows_with_every_ranks_buffer(ranks, rank):
    qw, kw = weights(6 * D)
    c, s = table((64, D))
    ex = exchange(ranks, rank, tokens=256)
    req = Request(packed(h=6), qw, kw, c, s, num_heads=6, stats="exchange", exchange=ex, norm_width=6 * D * ranks)
    p = make_plan(req)
    prm = bind(p, req)
    v = cfg(p).variant
    assert v.stats == "exchange" and v.norm == "full" and v.name.endswith("_exchange")
    assert list(prm.xchg[:ranks]) == list(ex.buffers) and not any(prm.xchg[ranks:])
    assert (prm.xchg_rank, prm.xchg_ranks, prm.xchg_rows) == (rank, ranks, 2 * 256)
    assert not prm.stats and abs(prm.side[0].inv_n * 6 * D * ranks - 1) < 1e-7
    covers(p, 2 * 2 * 64, 6)


def test_exchange_blocks_take_consecutive_tokens_whatever_the_table():
    """A rank waits for the others' rows of its tokens: with one row group a block, blocks in
    launch order take tokens in order on every rank, whatever each rank's plan."""
    qw, kw = weights(20 * D)
    c, s = table((32760, D))
    req = Request(packed(b=1, s=32760, h=20), qw, kw, c, s, num_heads=20, stats="exchange",
                  exchange=exchange(tokens=32768), norm_width=40 * D)
    many = Tuning(full_grid=1).with_kind("row_iters", "full/1", (8, 0))
    assert cfg(make_plan(req, many)).iters == 1
    assert cfg(make_plan(dataclasses.replace(req, stats="given", exchange=None, sumsq=sums((32760, 2))),
                         many)).iters == 8


@pytest.mark.parametrize("change,match", [
    (dict(exchange=None), r"^exchange: expected a cudit.Exchange, got NoneType"),
    (dict(exchange=("a",)), r"^exchange: expected a cudit.Exchange, got tuple"),
    (dict(exchange="buffers"), r"^exchange: expected a cudit.Exchange"),
    (dict(tokens=100), r"^exchange: expected buffers with room for at least the call's 128 tokens, got room for 100"),
    (dict(rank=2), r"^exchange: expected a rank from 0 to 1, got 2"),
    (dict(ranks=9, rank=0), r"^exchange: expected 2 to 8 buffers"),
    (dict(ranks=1, rank=0), r"^exchange: expected 2 to 8 buffers"),
    (dict(sumsq=True), r"^sumsq: expected None with exchange"),
    (dict(norm_width=None), r"^norm_width: expected the values a token's norm runs over"),
])
def test_exchange_errors_name_the_argument(change, match):
    qw, kw = weights(6 * D)
    kw_ = dict(ranks=change.pop("ranks", 2), rank=change.pop("rank", 1), tokens=change.pop("tokens", 128))
    fields = dict(exchange=exchange(**kw_), norm_width=12 * D)
    if change.pop("sumsq", False):
        fields["sumsq"] = sums()
    fields.update(change)
    with pytest.raises(PlanError, match=match):
        make_plan(Request(packed(h=6), qw, kw, num_heads=6, stats="exchange", **fields))


def test_exchange_buffers_must_be_aligned_device_addresses():
    from cudit import Exchange

    qw, kw = weights(6 * D)
    for buffers in ((BASE, BASE + 4), (BASE, None), (BASE, 0)):
        with pytest.raises(PlanError, match=r"^exchange: expected 2 to 8 buffers, each a device address aligned"):
            make_plan(Request(packed(h=6), qw, kw, num_heads=6, stats="exchange", exchange=Exchange(buffers, 0, 128),
                              norm_width=12 * D))


def test_sums_are_read_only_for_the_kernel_that_writes_them():
    with pytest.raises(PlanError, match="^sumsq: expected a writable array"):
        make_plan(Request(packed(h=12), num_heads=12, sumsq=sums(readonly=True), stats="sumsq"))


@pytest.mark.parametrize("ndim", [2, 3, 4])
def test_rope_offset_reads_the_table_from_that_sequence_row(ndim):
    S, rows, start = 64, 256, 80
    shape = {2: (rows, D), 3: (1, rows, D), 4: (1, rows, 1, D)}[ndim]
    c, s = table(shape)
    req = Request(packed(s=S), None, None, c, s, num_heads=4, rope_offset=start)
    prm = bind(make_plan(req), req)
    assert prm.cos == BASE + 0x300000 + start * D * 4 and prm.sin == BASE + 0x400000 + start * D * 4
    width = 3 * 4 * D   # the batch's rows repeat the same S rows
    assert token_rows(prm) == expected_rows(2, S, S * width, width, lambda _, t: t * D)


def test_sums_of_squares_take_their_own_tuning_entry():
    req = Request(packed(b=1, s=32760, h=20), num_heads=20, sumsq=sums((32760, 2)), stats="sumsq")
    four = Tuning(full_grid=1).with_kind("row_iters", "sumsq/1", (4, 0))
    assert cfg(make_plan(req, four)).iters == 4
    assert cfg(make_plan(req, four.with_kind("row_iters", "full/1", (8, 0)))).iters == 4
    older = Tuning(full_grid=1, row_iters=(("full/1", (8, 0)),))   # a table written before the kind existed
    assert cfg(make_plan(req, older)).iters == dict(Tuning.row_iters)["sumsq/1"][0]


# ------------------------------------------------------------------------------- LayerNorm


@pytest.mark.parametrize("n", [D, 12 * D])
def test_layer_norm_plans_bind_the_biases(n):
    qw, kw = weights(n)
    qb, kb = arr((n,), "bf16", ptr=BASE + 0x600000), arr((n,), "bf16", ptr=BASE + 0x700000)
    req = Request(packed(h=12), qw, kw, num_heads=12, norm_type="layer", q_bias=qb, k_bias=kb)
    p = make_plan(req)
    prm = bind(p, req)
    assert cfg(p).variant.layer and cfg(p).variant.name.endswith("_ln")
    assert (prm.b[0], prm.b[1]) == (BASE + 0x600000, BASE + 0x700000) and prm.b_txt[0] == prm.b[0]
    assert prm.side[0].b_dtype == 2   # bf16
    rms = make_plan(Request(packed(h=12), qw, kw, num_heads=12))
    assert not cfg(rms).variant.layer and not bind(rms, req).b[0]


@pytest.mark.parametrize("heads,tokens,table_shape,once", [(48, 4096, (4096, 64), True),     # CogVideoX-like
                                                            (47, 4096, (4096, 64), False),    # a head lane short
                                                            (48, 4096, (4096, 48 * 64), False),   # per-head tables
                                                            (48, 4095, (4095, 64), False)])   # a block short a row
def test_layer_norm_rows_of_all_heads_read_a_shared_slice_once_a_row(heads, tokens, table_shape, once):
    qw, kw = weights(64)
    qb, kb = arr((64,), "bf16", ptr=BASE + 0x600000), arr((64,), "bf16", ptr=BASE + 0x700000)
    req = Request(packed(b=1, s=tokens, h=heads, d=64), qw, kw, *table(table_shape), num_heads=heads,
                  norm_type="layer", q_bias=qb, k_bias=kb)
    knobs = Tuning(small_grid_threads=0, one_row_blocks_up_to=0, fixed_row_iters=2, full_grid=1)
    p = make_plan(req, knobs)
    v = cfg(p).variant
    assert v.layer and v.heads_per_thread == 4 and v.layer_once == once and v.once_table == once, v.name
    assert (bind(p, req).b[0], bind(p, req).b[1]) == (BASE + 0x600000, BASE + 0x700000)
    visits_each_item_once(cfg(p), params(p), (heads, heads))


def test_sums_blocks_stay_within_the_looping_variants_bound():
    req = Request(packed(b=1, s=4096, h=20), num_heads=20, sumsq=sums((4096, 2)), stats="sumsq")
    c = cfg(make_plan(req, Tuning().with_kind("block_targets", "sumsq/1", 4096)))
    assert c.variant.heads_per_thread == 0 and c.team <= 32 and c.block <= _variants.planner_bound(1, 0)


def grid_rope(grid=(1, 8, 8), axes=(44, 42, 42), **kw):
    import cudit

    return cudit.Rope3D(grid, axes, **kw)


def test_bad_rope_sources_name_their_argument():
    bad(r"rotary_dim: expected None or an even int from 2 to head_dim 128, got 3", rotary_dim=3)
    bad(r"rotary_dim: expected None or an even int .* got 130", rotary_dim=130)
    bad(r"rotary_dim: expected a multiple of 16 for rotate_half", interleave=False, cos=arr((64, 40), "f32"),
        sin=arr((64, 40), "f32"))
    bad(r"rotary_dim: expected None without cos/sin", rotary_dim=64, cos=None, sin=None)
    bad(r"positions: expected dtype int32 / int64, got f32", positions=arr((128,), "f32"))
    bad(r"positions: expected shape \(128,\) or \(2, 64\)", positions=arr((64,), "int32"))
    bad(r"positions: expected None without cos/sin", positions=arr((128,), "int32"), cos=None, sin=None)
    bad(r"rope_offset: expected None with positions", positions=arr((128,), "int64"), rope_offset=3)
    bad(r"rope: expected axes_dim summing to head_dim 128", cos=None, sin=None,
        rope3d=grid_rope(axes=(44, 42, 40)))
    bad(r"rope: expected a grid whose 63 cells and 0 text tokens hold S = 64 tokens", cos=None, sin=None,
        rope3d=grid_rope(grid=(1, 7, 9)))
    bad(r"rope: expected None with cos/sin", rope3d=grid_rope())
    bad(r"rope: expected None or a cudit.Rope3D", cos=None, sin=None, rope3d=(1, 8, 8))
    bad(r"rope: expected angles below", cos=None, sin=None, rope3d=grid_rope(offset=(0, 0, 200000)))
    bad(r"positions: expected None without cos/sin", cos=None, sin=None, rope3d=grid_rope(),
        positions=arr((128,), "int64"))


def test_rope_sources_pick_their_variants():
    qw, kw = weights(D)
    base = dict(qkv=packed(), q_weight=qw, k_weight=kw, num_heads=4)
    grid = make_plan(Request(**base, rope3d=grid_rope()))
    assert grid.config.variant.source == "grid" and grid.config.variant.table is None
    c, s = table((1000, 64))
    pos = make_plan(Request(**base, cos=c, sin=s, positions=arr((2, 64), "int32")))
    assert pos.config.variant.source == "pos"
    part = make_plan(Request(**base, cos=arr((64, 64), "bf16"), sin=arr((64, 64), "bf16")))
    assert (part.config.variant.source, part.config.variant.table) == ("pos", "x16")
    full = make_plan(Request(**base, cos=arr((64, D), "f32"), sin=arr((64, D), "f32")))
    assert full.config.variant.source == "table"
    for interleave in (True, False):   # RoPE alone, each rope mode
        alone = make_plan(Request(qkv=packed(), num_heads=4, rope3d=grid_rope(), interleave=interleave))
        assert (alone.config.variant.norm, alone.config.variant.source) == ("none", "grid")


def test_grid_shard_may_cover_part_of_the_sequence():
    qw, kw = weights(D)
    base = dict(qkv=packed(s=32), q_weight=qw, k_weight=kw, num_heads=4)
    make_plan(Request(**base, rope3d=grid_rope(), rope_offset=32))
    with pytest.raises(PlanError, match="rope: expected a grid"):
        make_plan(Request(**base, rope3d=grid_rope(), rope_offset=33))
