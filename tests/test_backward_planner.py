"""The backward's planner on the CPU: what it launches for a call, and every bad input named
before anything runs."""
import ctypes
import dataclasses

import pytest

from cudit import PlanError
from cudit._backward import plan_backward
from cudit._params import BWD_POINTERS, BwdParams, bwd_pointer
from cudit._planner import Request
from cudit._tuning import DeviceSpec, Tuning
from cudit._variants import BACKWARD_BOUNDS, BACKWARD_BY_NAME
from fakes import arr

H100 = DeviceSpec(arch=(9, 0))
D = 128


def packed(heads=(4, 4, 4), s=64, dtype="bf16", **kw):
    qkv = arr((2, s, sum(heads) * D), dtype)
    return Request(qkv=qkv, num_heads=heads, **kw), qkv


def weights(n=D, dtype="f32"):
    return arr((n,), dtype, ptr=0x7F1000000000)


def table(rows=64, width=D):
    return arr((rows, width), "f32", ptr=0x7F2000000000)


def plan(req, dout=None, dx=None, grads=None):
    dout = dout if dout is not None else req.qkv
    return plan_backward(req, dout, dx if dx is not None else dout, grads or {}, H100, Tuning())


def params(seg) -> BwdParams:
    return BwdParams.from_buffer_copy(seg.template)


def test_alike_sides_share_one_launch_q_first():
    req, x = packed(q_weight=weights(), k_weight=weights(), cos=table(), sin=table())
    p = plan(req, grads={"dq_weight": weights()})
    (seg,) = p.segments
    assert seg.sides == 2 and seg.grads == ("dq_weight", None)
    assert seg.variant.norm == "head" and seg.variant.rope == "interleaved"
    prm = params(seg)
    assert prm.heads == 4 and prm.chunks * prm.th * seg.variant.items >= 4
    assert seg.slots[bwd_pointer("x", 0)] == ("qkv", 0)
    assert seg.slots[bwd_pointer("x", 1)] == ("qkv", 4 * D * 2)   # K starts after Q's heads
    assert (seg.slots[bwd_pointer("w", 0)], seg.slots[bwd_pointer("w", 1)]) == (("q_weight", 0), ("k_weight", 0))


def test_sides_unlike_under_gqa_take_a_launch_each():
    req, x = packed(heads=(8, 2, 2), q_weight=weights(), k_weight=weights(), cos=table(), sin=table())
    p = plan(req, grads={"dq_weight": weights(), "dk_weight": weights()})
    assert [(s.sides, s.grads) for s in p.segments] == [(1, ("dq_weight",)), (1, ("dk_weight",))]
    k = p.segments[1]
    assert params(k).heads == 2 and k.slots[bwd_pointer("x", 0)] == ("qkv", 8 * D * 2)   # K's fields at side 0
    assert k.slots[bwd_pointer("w", 0)] == ("k_weight", 0) and k.slots[bwd_pointer("x", 1)] is None


def test_sides_with_weights_of_other_dtypes_take_a_launch_each():
    req, x = packed(q_weight=weights(), k_weight=weights(dtype="bf16"))
    assert [s.sides for s in plan(req).segments] == [1, 1]


def test_the_workspace_holds_every_launchs_partial_sums_at_once():
    # one reduction follows every launch, so the partial sums of all of them live side by side
    req, x = packed(heads=(8, 2, 2), q_weight=weights(), k_weight=weights(), cos=table(), sin=table())
    both = plan(req, grads={"dq_weight": weights(), "dk_weight": weights()})
    widths = [s.width for s in both.segments]
    assert both.workspace_floats([3, 5]) == 3 * widths[0] + 5 * widths[1]
    assert plan(req, grads={"dk_weight": weights()}).workspace_floats([3, 5]) == 5 * widths[1]
    assert plan(req).workspace_floats([3, 5]) == 0


def test_dual_stream_is_one_launch_split_at_the_text_tokens():
    req, x = packed(q_weight=weights(), k_weight=weights(), q_add_weight=weights(), k_add_weight=weights(),
                    num_txt_tokens=5)
    p = plan(req, grads={r: weights() for r in ("dq_weight", "dk_weight", "dq_add_weight", "dk_add_weight")})
    (seg,) = p.segments
    prm = params(seg)
    assert (list(prm.s_begin), list(prm.rows)) == ([0, 5], [2 * 5, 2 * 59]) and seg.rows == (10, 118)
    assert [prm.span[i].d for i in (0, 1)] == [5, 59]
    for i, side in enumerate("qk"):
        assert (seg.slots[bwd_pointer("w", i, 0)], seg.slots[bwd_pointer("w", i, 1)]) == \
            ((f"{side}_add_weight", 0), (f"{side}_weight", 0))
    assert seg.grads == ("dq_add_weight", "dq_weight", "dk_add_weight", "dk_weight")


def test_one_stream_leaves_the_second_empty():
    req, x = packed(q_weight=weights(), k_weight=weights())
    seg = plan(req).segments[0]
    assert seg.rows == (2 * 64,) and list(params(seg).rows) == [128, 0]
    assert len(seg.slots) == BWD_POINTERS and seg.slots[bwd_pointer("w", 0)] == ("q_weight", 0)
    assert seg.slots[bwd_pointer("w", 0, 1)] is None and seg.slots[bwd_pointer("w", 1, 1)] is None


@pytest.mark.parametrize("rows,grid,want", [((10, 118), 1000, (10, 118)),   # every row group its block
                                            ((100, 900), 100, (10, 90)),    # the grid shared by rows
                                            ((1, 999), 100, (1, 100)),      # a stream with rows keeps a block
                                            ((64, 0), 10, (10, 0))])        # every token text
def test_streams_share_the_grid_by_rows(rows, grid, want):
    from cudit._backward import Segment

    seg = Segment(None, (32, 1), rows, b"", (), (None,) * len(rows), None, 0)
    assert seg.stream_grids(grid) == want


def test_two_sides_share_the_grid_side_major():
    from cudit._backward import Segment

    seg = Segment(None, (32, 1), (100, 900), b"", (), (None,) * 4, None, 0, sides=2)
    grids = seg.stream_grids(200)
    assert grids == (10, 90, 10, 90)
    assert seg.side_splits(grids) == (100, (10, 10))   # Q's blocks, and each side's first stream's
    one = Segment(None, (32, 1), (64,), b"", (), (None,) * 2, None, 0, sides=2)
    assert one.side_splits(one.stream_grids(1000)) == (64, (64, 64))


@pytest.mark.parametrize("heads,norm", [((40, 40, 40), "full"), ((130, 2, 0), "head"), ((1, 1, 1), "head"),
                                        ((88, 88, 0), "full")])
def test_every_head_is_covered_within_the_bound(heads, norm):
    n = D if norm == "head" else heads[0] * D
    req, x = packed(heads=heads, q_weight=weights(n), k_weight=weights(n if norm == "head" else heads[1] * D))
    for seg, h in zip(plan(req).segments, heads):
        prm = params(seg)
        team, rows = seg.block
        assert team * rows <= BACKWARD_BOUNDS[seg.variant.shape]
        assert team * rows * seg.variant.smem_per_thread + 512 <= 48 * 1024   # with the kernel's static scratch
        assert prm.chunks * prm.th * seg.variant.items >= h
        assert norm == "head" or prm.chunks == 1


H200 = DeviceSpec(arch=(9, 0), max_smem_per_block=227 * 1024)


def full_dim(heads):
    return packed(heads=heads, q_weight=weights(heads[0] * D), k_weight=weights(heads[1] * D))[0]


def test_full_dim_rows_are_staged_where_the_shared_memory_holds_them():
    req = full_dim((40, 40, 0))
    for seg in plan_backward(req, req.qkv, req.qkv, {}, H200, Tuning()).segments:
        team, rows = seg.block
        assert seg.variant.stages == 2 and team * rows <= seg.variant.bound()
        assert team * rows * seg.variant.smem_per_thread <= 227 * 1024 - 1024
        assert params(seg).th * seg.variant.items >= 40
    # the same rows with the register-held form where the tuning asks for it
    held = plan_backward(req, req.qkv, req.qkv, {}, H200, Tuning(backward_stages=()))
    assert {seg.variant.stages for seg in held.segments} == {0}


@pytest.mark.parametrize("heads,items", [(12, 3), (40, 4), (24, 4)])
def test_full_dim_rows_leave_the_fewest_head_slots_idle(heads, items):
    # 16 lanes a head: an odd count of head lanes is no whole warp, so 12 heads at four a
    # thread would take 4 lanes (16 slots), at three 4 lanes (12 slots)
    req = full_dim((heads, heads, 0))
    for seg in plan_backward(req, req.qkv, req.qkv, {}, H200, Tuning()).segments:
        prm = params(seg)
        assert (seg.variant.items, prm.th * seg.variant.items >= heads) == (items, True)
        assert seg.block[0] % 32 == 0


def test_full_dim_rows_too_wide_to_stage_are_held_in_registers():
    req = full_dim((60, 60, 0))   # 48 KB a block: staged rows of up to 30 heads
    for seg in plan(req).segments:
        assert seg.variant.stages == 0 and params(seg).th * seg.variant.items >= 60
        assert seg.block[0] * seg.block[1] <= seg.variant.bound()


def test_per_head_rows_are_not_staged_and_a_table_asking_it_is_refused():
    req, x = packed(q_weight=weights(), k_weight=weights())
    assert {s.variant.stages for s in plan_backward(req, x, x, {}, H200, Tuning()).segments} == {0}
    with pytest.raises(PlanError, match=r"^tuning: expected backward_stages for the norms built staged"):
        plan_backward(req, x, x, {}, H200, Tuning(backward_stages=(("head", 2),)))


def test_full_dim_rows_too_wide_to_hold_are_refused_by_name():
    req, x = packed(heads=(400, 400, 0), q_weight=weights(400 * D), k_weight=weights(400 * D))
    with pytest.raises(PlanError, match=r"^num_heads: expected at most \d+ heads of 128 values"):
        plan(req)


@pytest.mark.parametrize("kw,arg", [
    (dict(norm_type="layer"), "norm"), (dict(rope3d=object()), "rope"), (dict(sumsq=arr((2, 64, 2), "f32")), "sumsq"),
])
def test_modes_without_a_backward_are_named(kw, arg):
    req, x = packed(q_weight=weights(), k_weight=weights(), **kw)
    with pytest.raises(PlanError, match=rf"^{arg}: expected .*no backward yet"):
        plan(req)


def test_partial_rotary_is_named():
    req, x = packed(q_weight=weights(), k_weight=weights(), cos=table(width=64), sin=table(width=64))
    with pytest.raises(PlanError, match=r"^rotary_dim: .*no backward yet"):
        plan(req)


@pytest.mark.parametrize("make,match", [
    (lambda x: dict(dout=arr(x.shape, "f16")), r"^dout: expected shape .* and dtype bf16"),
    (lambda x: dict(dx=arr(x.shape, readonly=True)), r"^dqkv: expected a writable array"),
    (lambda x: dict(dout=arr(x.shape, strides=(x.shape[1] * x.shape[2], x.shape[2], 2))),
     r"^dout: expected a contiguous last axis"),
    (lambda x: dict(grads={"dq_weight": weights(64)}), r"^dq_weight: expected shape \(128,\)"),
    (lambda x: dict(grads={"dq_add_weight": weights()}), r"^dq_add_weight: expected None without q_add_weight"),
    (lambda x: dict(dout=(x, x)), r"^dout: expected one array"),
    (lambda x: dict(dout=arr(x.shape, ptr=x.ptr + 2)), r"^dout: expected a data pointer aligned to 16"),
    (lambda x: dict(dout=arr(x.shape, device=1)), r"arrays are on different devices"),
])
def test_bad_gradients_are_named(make, match):
    req, x = packed(q_weight=weights(), k_weight=weights())
    with pytest.raises(PlanError, match=match):
        plan(req, **make(x))


def test_split_gradients_take_their_own_names():
    q, k = arr((2, 64, 4 * D)), arr((2, 64, 2 * D), ptr=0x7F3000000000)
    req = Request(qkv=(q, k), num_heads=(4, 2), q_weight=weights(), k_weight=weights())
    p = plan(req, dout=(q, k), dx=(q, k))
    assert [params(s).heads for s in p.segments] == [4, 2]
    with pytest.raises(PlanError, match=r"^dout_k: expected shape"):
        plan(req, dout=(q, q), dx=(q, k))


def test_the_struct_is_the_headers_size():
    assert ctypes.sizeof(BwdParams) % 8 == 0


def test_the_entry_point_names_bad_input_without_a_gpu():
    import numpy as np

    import cudit

    x = np.zeros((1, 8, 3 * 2 * 64), np.float32)
    w = np.ones(64, np.float32)
    with pytest.raises(PlanError, match=r"^qkv: expected a GPU array, got a host"):
        cudit.qk_norm_rope_backward(x, x.copy(), w, w, num_heads=2)
    with pytest.raises(PlanError, match=r"^dout: expected a \(q, k\) pair"):
        cudit.qk_norm_rope_backward((x, x), x, w, w, num_heads=2)
    with pytest.raises(PlanError, match=r"^dout: expected shape"):
        cudit.qk_norm_rope_backward(x, x[..., :64], w, w, num_heads=2)


@pytest.mark.parametrize("cos_shape,rope_kw,shared", [((64, D), {}, True), ((2, 64, 4, D), {}, False),
                                                      ((64, D), {"interleave": False}, False)])
def test_a_table_shared_by_every_head_takes_the_variant_that_holds_it(cos_shape, rope_kw, shared):
    cos = arr(cos_shape, "f32", ptr=0x7F2000000000)
    req, x = packed(q_weight=weights(), k_weight=weights(), cos=cos, sin=cos, **rope_kw)
    assert {s.variant.shared_table for s in plan(req).segments} == {shared}


@pytest.mark.parametrize("heads_axis", [1, 4])
def test_half_head_tables_take_the_half_table_twins(heads_axis):
    half = arr((1, 64, heads_axis, D // 2), "f32", ptr=0x7F2000000000)
    req, x = packed(q_weight=weights(), k_weight=weights(), cos=half, sin=half, interleave=False)
    twins = [s.variant for s in plan(req).segments]
    assert all(v.half_table and v.name in BACKWARD_BY_NAME for v in twins)
    whole = arr((1, 64, heads_axis, D), "f32", ptr=0x7F2000000000)
    req, x = packed(q_weight=weights(), k_weight=weights(), cos=whole, sin=whole, interleave=False)
    assert [s.variant for s in plan(req).segments] == [dataclasses.replace(v, half_table=False) for v in twins]


def test_plans_keep_to_the_least_bound_of_any_architecture():
    from cudit._variants import ARCHS, BACKWARD_ARCH_BOUNDS, backward_variants

    for v in backward_variants():
        assert v.bound() == min(v.bound(a) for a in ARCHS) <= BACKWARD_BOUNDS[v.shape]
    spilled = [v for v in backward_variants() if any((a, v.dtype) + v.shape in BACKWARD_ARCH_BOUNDS for a in ARCHS)]
    assert spilled and all(v.bound() < BACKWARD_BOUNDS[v.shape] for v in spilled)
    req, x = packed(heads=(24, 24, 0), q_weight=weights(24 * D), k_weight=weights(24 * D))
    for seg in plan(req).segments:
        assert seg.block[0] * seg.block[1] <= seg.variant.bound()


def _occupancy(regs_per_sm=65536, regs=96, smem_per_sm=228 * 1024):
    """A fake kernel whose blocks are limited by registers and shared memory, as a GPU's are."""
    def blocks(threads, smem):
        return min(regs_per_sm // (regs * threads), smem_per_sm // max(smem, 1), 32, 2048 // threads)
    from types import SimpleNamespace
    return SimpleNamespace(occupancy=SimpleNamespace(max_active_blocks_per_multiprocessor=blocks))


def test_full_dim_blocks_take_the_fewest_rows_that_keep_the_most_threads_resident():
    from cudit._launch import _fewest_rows_filling

    # 64-thread rows at 96 registers: one row a block fits ten blocks (640 threads); four rows, two (512)
    assert _fewest_rows_filling(_occupancy(), 64, 8, 4 * 32) == (64, 1)
    # 16-thread rows: blocks are whole warps, so at least two rows
    assert _fewest_rows_filling(_occupancy(), 16, 16, 4 * 8) == (16, 2)
    # shared memory the limit: the fewest rows of the most resident threads
    team, rows = _fewest_rows_filling(_occupancy(regs=32, smem_per_sm=64 * 1024), 32, 16, 4 * 256)
    assert (team, rows) == (32, 1)


@pytest.mark.parametrize("block", [64, 128, 256])
def test_per_head_blocks_follow_the_tuning_table(block):
    req, x = packed(heads=(24, 24, 0), q_weight=weights(), k_weight=weights(), cos=table(), sin=table())
    p = plan_backward(req, req.qkv, req.qkv, {}, H100, Tuning().with_knobs(backward_block=block))
    for seg in p.segments:
        team, rows = seg.block
        assert team * rows <= max(block, team) and team * (rows + 1) > block


def test_one_reduction_takes_every_stream_of_a_call_in_blocks_of_its_own():
    from cudit._backward import REDUCE_LANES, reduce_launch
    from cudit._params import REDUCE_STREAMS, ReduceParams

    streams = [(0x1000, 0x2000, 3, 130, "bf16"), (0x3000, 0x4000, 5, 130, "bf16"), (0x5000, 0x6000, 7, 64, "f32")]
    blocks, blob = reduce_launch(streams)
    p = ReduceParams.from_buffer_copy(blob)
    firsts = list(p.first)[:p.streams + 1]
    assert p.streams == 3 and firsts[-1] == blocks
    for i, (part, out, slots, width, _) in enumerate(streams):
        n = firsts[i + 1] - firsts[i]   # each stream's blocks cover its width, 32 values a block
        assert n * REDUCE_LANES >= width > (n - 1) * REDUCE_LANES
        assert (p.part[i], p.out[i], p.slots[i], p.width[i]) == (part, out, slots, width)
    assert p.out_dtype[0] != p.out_dtype[2]
    with pytest.raises(ValueError):
        reduce_launch(streams * 2)
    assert len(streams * 2) > REDUCE_STREAMS
