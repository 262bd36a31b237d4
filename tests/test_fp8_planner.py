"""fp8 output's planning on made-up arrays (issue #11): the variant, V's blocks and pointers, the
scale and amax fields, and every bad argument named."""
import dataclasses
import itertools
import struct

import pytest

from cudit import _planner, _variants
from cudit._params import POINTERS, Params
from cudit._planner import PlanError, Request
from cudit._tuning import DeviceSpec, Tuning
from fakes import BASE, arr, blocks_holding_all_heads

D = 128
E4M3 = "float8_e4m3fn"


def plan(**kw):
    return _planner.make_plan(Request(**kw), DeviceSpec(arch=(9, 0)), Tuning())


def packed(heads=(4, 4, 4), s=64, dtype="bf16", ptr=BASE):
    return arr((1, s, sum(heads) * D), dtype, ptr=ptr)


def tables(s=64):
    return arr((s, D), "f32", ptr=BASE + 0x300000), arr((s, D), "f32", ptr=BASE + 0x400000)


def weights(n=D):
    return arr((n,), "f32", ptr=BASE + 0x100000), arr((n,), "f32", ptr=BASE + 0x200000)


def call(heads=(4, 4, 4), out_type=E4M3, **kw):
    """A packed call's arguments, out of dtype out_type."""
    qkv = packed(heads)
    base = dict(qkv=qkv, q_weight=weights()[0], k_weight=weights()[1], cos=tables()[0], sin=tables()[1],
                num_heads=heads, out=arr(qkv.shape, out_type, ptr=BASE + 0x800000))
    base.update(kw)
    return base


def pointers(p, req) -> list:
    block = bytearray(p.template)
    struct.pack_into(f"<{POINTERS}Q", block, 0, *p.addresses(req.arrays()))
    return block


def test_fp8_out_plans_the_fp8_variant_and_quantises_packed_v():
    p = plan(**call(scale_values=(2.0, 3.0, None)))
    v = p.config.variant
    assert v.out == "f8" and v.name.endswith("_f8") and (v.norm, v.rope) == ("head", "interleaved")
    prm = Params.from_buffer_copy(p.template)
    assert prm.out_kind == 0 and list(prm.scale_val) == [2.0, 3.0, 1.0] and prm.qk_grid == p.config.grid
    # V: 4 heads x 16 vectors of 8 values a token, every token in some group of V_TOKENS
    assert prm.v.heads == 4 and prm.v_cols == 4 * D // 8 and prm.v_lanes.d == D // 8
    assert prm.v_groups * _planner.V_TOKENS >= 64 and p.config.v_blocks == prm.v_col_blocks * prm.v_groups
    assert prm.v_col_blocks * p.config.block >= prm.v_cols
    req = Request(**call())
    blob = Params.from_buffer_copy(pointers(p, req))
    assert blob.v_in == BASE + 8 * D * 2                 # after Q's and K's 8 heads of bf16
    assert blob.v_out == BASE + 0x800000 + 8 * D         # one byte a value
    assert blob.out[1] == BASE + 0x800000 + 4 * D        # K's output: one byte a value too


def test_fp8_plans_keep_every_other_field_of_the_bf16_plan():
    fp8, bf16 = plan(**call()), plan(**call(out=None))
    a, b = Params.from_buffer_copy(fp8.template), Params.from_buffer_copy(bf16.template)
    assert (a.side[0].out_ss, a.side[0].out_hs) == (b.side[0].out_ss, b.side[0].out_hs)   # strides count values
    assert fp8.config.grid == bf16.config.grid and bf16.config.v_blocks == 0 and b.out_kind == 0


@pytest.mark.parametrize("role", ["q_amax", "k_amax", "v_amax"])
def test_any_amax_takes_the_amax_tracking_copy_of_the_same_kernel(role):
    plain = plan(**call()).config.variant
    tracking = plan(**call(**{role: arr((1,), "f32", ptr=BASE + 0xC00000)})).config.variant
    same = dataclasses.replace(plain, out="f8a", all_heads=tracking.all_heads)   # per head: no all-heads amax form
    assert (plain.out, tracking.out) == ("f8", "f8a") and tracking == same


FP8_ALL_HEADS_PLANS = list(itertools.product(
    ((12, 12, 12), (40, 40, 40), (10, 10, 10), (16, 8, 8)),   # heads: K lanes short of heads, GQA
    (4096, 35),                                                # tokens: whole blocks or not
    ("f32", "bf16"), ("full", "head"), (True, False),          # cos/sin; norm; interleaved or rotate_half
))


@pytest.mark.parametrize("heads,tokens,tab,norm,interleave", FP8_ALL_HEADS_PLANS, ids=str)
def test_fp8_plans_take_the_all_heads_form_exactly_where_every_block_holds_them(heads, tokens, tab, norm,
                                                                                interleave):
    qkv = arr((1, tokens, sum(heads) * D), "bf16")
    width = {"full": (heads[0] * D, heads[1] * D), "head": (D, D)}[norm]
    qw, kw = arr((width[0],), "f32", ptr=BASE + 0x100000), arr((width[1],), "f32", ptr=BASE + 0x200000)
    cos, sin = arr((tokens, D), tab, ptr=BASE + 0x300000), arr((tokens, D), tab, ptr=BASE + 0x400000)
    p = _planner.make_plan(Request(qkv, qw, kw, cos, sin, num_heads=heads, interleave=interleave,
                                   out=arr(qkv.shape, E4M3, ptr=BASE + 0x800000)),
                           DeviceSpec(arch=(9, 0)), Tuning(small_grid_threads=0, one_row_blocks_up_to=0, full_grid=1))
    v = p.config.variant
    yes, no = blocks_holding_all_heads(p)
    built = dataclasses.replace(v, all_heads=True).name in _variants.BY_NAME
    assert v.out == "f8" and v.all_heads == (built and p.config.k_ratio == 1 and yes > 0 and no == 0), (v.name, yes, no)


def test_scale_and_amax_arrays_set_their_head_strides_and_pointers():
    kw = call(q_scale=arr((4,), "f32", ptr=BASE + 0x900000), k_scale=arr((1,), "f32", ptr=BASE + 0xA00000),
              v_amax=arr((4,), "f32", ptr=BASE + 0xB00000), q_amax=arr((), "f32", ptr=BASE + 0xC00000))
    p = plan(**kw)
    prm = Params.from_buffer_copy(pointers(p, Request(**kw)))
    assert list(prm.scale_hs) == [1, 0, 0] and list(prm.amax_hs) == [0, 0, 1]
    assert prm.scale[0] == BASE + 0x900000 and prm.scale[1] == BASE + 0xA00000 and not prm.scale[2]
    assert prm.amax[2] == BASE + 0xB00000 and prm.amax[0] == BASE + 0xC00000 and not prm.amax[1]


def test_e5m2_and_uint8_views_named_by_out_dtype():
    assert Params.from_buffer_copy(plan(**call(out_type="float8_e5m2")).template).out_kind == 1
    assert plan(**call(out_type="uint8", out_dtype=E4M3)).config.variant.out == "f8"
    with pytest.raises(PlanError, match="^out: expected shape .* or an fp8 dtype"):
        plan(**call(out_type="uint8"))
    with pytest.raises(PlanError, match="^out_dtype: expected 'float8_e4m3fn' or 'float8_e5m2'"):
        plan(**call(out_type="uint8", out_dtype="int8"))


def test_split_fp8_has_no_v():
    q, k = arr((1, 64, 4 * D)), arr((1, 64, 4 * D), ptr=BASE + 0x10000)
    outs = (arr((1, 64, 4 * D), E4M3, ptr=BASE + 0x800000), arr((1, 64, 4 * D), E4M3, ptr=BASE + 0x900000))
    p = plan(qkv=(q, k), q_weight=weights()[0], k_weight=weights()[1], cos=tables()[0], sin=tables()[1], num_heads=4,
             out=outs)
    assert p.config.variant.out == "f8" and p.config.v_blocks == 0
    with pytest.raises(PlanError, match="^v_scale: expected None: V is quantised only from packed input"):
        plan(qkv=(q, k), q_weight=weights()[0], k_weight=weights()[1], num_heads=4, out=outs,
             scale_values=(None, None, 2.0))


@pytest.mark.parametrize("kw,message", [
    (dict(qkv=packed(dtype="f32"), out=arr((1, 64, 12 * D), E4M3)), "^out: expected the input's dtype"),
    (dict(norm_type="layer"), "^norm: expected the default"),
    (dict(scale_values=("2", None, None)), "^q_scale: expected a number or an fp32 GPU array"),
    (dict(q_scale=arr((3,), "f32")), r"^q_scale: expected an fp32 array of 1 value or 4 \(one a head\)"),
    (dict(k_scale=arr((4,), "f16")), "^k_scale: expected dtype f32"),
    (dict(v_amax=arr((4,), "f32", readonly=True)), "^v_amax: expected a writable array"),
    (dict(q_amax=arr((2, 2), "f32")), "^q_amax: expected an fp32 array of 1 value or 4"),
    (dict(heads=(4, 4, 0), v_scale=arr((1,), "f32")), "^v_scale: expected None: V is quantised only"),
])
def test_bad_fp8_arguments_are_named(kw, message):
    kw = dict(kw)
    heads = kw.pop("heads", (4, 4, 4))
    args = call(heads, **kw)
    with pytest.raises(PlanError, match=message):
        plan(**args)


def test_scales_without_fp8_out_are_refused():
    with pytest.raises(PlanError, match="^q_scale: expected None unless out is fp8"):
        plan(**call(out_type="bf16", scale_values=(2.0, None, None)))
    with pytest.raises(PlanError, match="^k_amax: expected None unless out is fp8"):
        plan(**call(out=None, k_amax=arr((1,), "f32")))


def test_fp8_output_strides_need_eight_byte_vectors():
    qkv = packed()
    bad = arr(qkv.shape, E4M3, strides=(64 * (12 * D + 4), 12 * D + 4, 1), ptr=BASE + 0x800000)
    with pytest.raises(PlanError, match="^out: expected strides that are multiples of 8 bytes"):
        plan(**call(out=bad))
    good = arr(qkv.shape, E4M3, strides=(64 * (12 * D + 8), 12 * D + 8, 1), ptr=BASE + 0x800000)
    assert plan(**call(out=good)).config.variant.out == "f8"



@pytest.mark.parametrize("heads,tokens", [((4, 4, 4), 64), ((12, 12, 12), 1000), ((24, 24, 8), 4608), ((3, 5, 1), 7)])
def test_v_blocks_cover_every_v_vector_once(heads, tokens):
    qkv = arr((1, tokens, sum(heads) * D))
    c, s = arr((tokens, D), "f32", ptr=BASE + 0x300000), arr((tokens, D), "f32", ptr=BASE + 0x400000)
    p = plan(qkv=qkv, q_weight=weights()[0], k_weight=weights()[1], cos=c, sin=s, num_heads=heads,
             out=arr(qkv.shape, E4M3, ptr=BASE + 0x800000))
    prm = Params.from_buffer_copy(p.template)
    seen = set()
    for vb in range(p.config.v_blocks):   # as the kernel's v_body walks them: (token, column)
        group, col_block = divmod(vb, prm.v_col_blocks)
        for t in range(p.config.block):
            col = col_block * p.config.block + t
            if col < prm.v_cols:
                seen.update((tok, col) for tok in range(group, tokens, prm.v_groups))
    assert len(seen) == tokens * heads[2] * D // 8 == tokens * prm.v_cols


def test_the_torch_fp8_form_refuses_what_it_does_not_build():
    torch = pytest.importorskip("torch")
    import cudit.torch as ct

    q = torch.zeros(1, 8, 3 * 2 * 64, dtype=torch.bfloat16)
    fp8 = dict(num_heads=2, out_dtype=torch.float8_e4m3fn)
    with pytest.raises(PlanError, match="^norm: expected the default with out_dtype"):
        ct.qk_norm_rope(q, None, None, None, None, inplace=False, norm="layer", **fp8)
    with pytest.raises(PlanError, match="^positions: expected the default with out_dtype"):
        ct.qk_norm_rope(q, None, None, None, None, inplace=False, positions=torch.zeros(8, dtype=torch.int32), **fp8)
    with pytest.raises(PlanError, match="^inplace: expected False with out_dtype"):
        ct.qk_norm_rope(q, None, None, None, None, **fp8)
    with pytest.raises(PlanError, match="^qkv: expected a GPU array"):   # the op's own checks: the planner's
        ct.qk_norm_rope(q, None, None, torch.ones(8, 64), torch.zeros(8, 64), inplace=False, **fp8)


def test_the_public_function_passes_numbers_as_values_and_arrays_as_arrays():
    np = pytest.importorskip("numpy")
    import cudit

    qkv = np.zeros((1, 8, 3 * 2 * 64), np.float16)
    out = np.zeros(qkv.shape, np.uint8)
    with pytest.raises(PlanError, match="^q_scale: expected None unless out is fp8"):
        cudit.qk_norm_rope(qkv, None, None, np.ones((8, 64), np.float32), np.zeros((8, 64), np.float32), num_heads=2,
                           q_scale=2.0)
    with pytest.raises(PlanError, match="^k_scale: expected dtype f32"):   # an array: checked as one
        cudit.qk_norm_rope(qkv, None, None, np.ones((8, 64), np.float32), np.zeros((8, 64), np.float32), num_heads=2,
                           out=out, out_dtype=E4M3, q_scale=2.0, k_scale=np.ones(1, np.float16))
