"""ctypes mirror of kernels/qk_norm_rope_params.h (checked against the C layout by the tests)."""
from __future__ import annotations

import ctypes

i64 = ctypes.c_int64
u32 = ctypes.c_uint32
ptr = ctypes.c_void_p


class FastDiv(ctypes.Structure):
    _fields_ = [("d", u32), ("m", u32), ("s", u32)]


def fast_div(d: int) -> FastDiv:
    """Magic numbers for n // d == (umulhi(n, m) + n) >> s, exact for all 32-bit n."""
    if not 1 <= d < 2**32:
        raise ValueError(f"divisor out of range: {d}")
    s = (d - 1).bit_length()
    m = ((1 << 32) * ((1 << s) - d)) // d + 1
    return FastDiv(d, m, s)


class SideParams(ctypes.Structure):
    _fields_ = [
        ("in_sb", i64), ("in_ss", i64), ("in_hs", i64),
        ("out_sb", i64), ("out_ss", i64), ("out_hs", i64),
        ("heads", ctypes.c_int), ("w_dtype", ctypes.c_int), ("b_dtype", ctypes.c_int), ("inv_n", ctypes.c_float),
    ]


# the pointer block at the start of Params: in[2], out[2], w[2], w_txt[2], b[2], b_txt[2], cos, sin, stats, pos,
# v_in, v_out, scale[3], amax[3]
POINTERS = 24
MAX_PAIRS = 128   # Params.freq: D / 2 for the largest head_dim
MAX_RANKS = 8     # Params.xchg: ranks of one exchange
XCHG_HEADER = 16   # 64-bit words before an exchange buffer's rows


class Params(ctypes.Structure):
    _fields_ = [
        ("in_", ptr * 2), ("out", ptr * 2), ("w", ptr * 2), ("w_txt", ptr * 2), ("b", ptr * 2), ("b_txt", ptr * 2),
        ("cos", ptr), ("sin", ptr), ("stats", ptr), ("pos", ptr),
        ("v_in", ptr), ("v_out", ptr), ("scale", ptr * 3), ("amax", ptr * 3),
        ("side", SideParams * 2), ("v", SideParams),
        ("cos_rb", i64), ("cos_rs", i64), ("cos_hs", i64),
        ("sin_rb", i64), ("sin_rs", i64), ("sin_hs", i64),
        ("tab_rows", FastDiv), ("tab_inner", FastDiv), ("seq", FastDiv), ("lanes", FastDiv),
        ("num_txt", u32),
        ("total_rows", u32), ("team", u32), ("tj", u32), ("tj_shift", u32), ("th", u32), ("iters", u32),
        ("ahead", u32),
        ("head_dim", ctypes.c_int), ("lanes_d", ctypes.c_int), ("eps", ctypes.c_float), ("tab_dtype", ctypes.c_int),
        ("pos_sb", i64), ("pos_ss", i64), ("pos_wide", ctypes.c_int), ("max_pos", u32), ("rotary_dim", ctypes.c_int),
        ("grid_hw", FastDiv), ("grid_w", FastDiv),
        ("grid_first", u32), ("grid_count", u32), ("grid_shift", u32), ("band1", u32), ("band2", u32),
        ("grid_origin", ctypes.c_float * 3), ("grid_scale", ctypes.c_float * 3), ("txt_pos", ctypes.c_float * 3),
        ("scale_val", ctypes.c_float * 3), ("scale_hs", ctypes.c_int * 3), ("amax_hs", ctypes.c_int * 3),
        ("out_kind", ctypes.c_int), ("qk_grid", u32),
        ("sides", FastDiv), ("k_ratio", u32), ("k_shift", u32), ("k_th", u32), ("step", u32),
        ("v_cols", u32), ("v_col_blocks", u32), ("v_groups", u32), ("v_lanes", FastDiv),
        ("xchg", ctypes.c_uint64 * MAX_RANKS), ("xchg_rank", u32), ("xchg_ranks", u32), ("xchg_rows", u32),
        ("freq", ctypes.c_float * MAX_PAIRS),
    ]


class BwdParams(ctypes.Structure):
    """kernels/qk_norm_rope_params.h BwdParams: one or both sides' rows of the backward, each in one or
    two weight streams."""
    _fields_ = [
        ("x", ptr * 2), ("dy", ptr * 2), ("dx", ptr * 2), ("w", (ptr * 2) * 2), ("cos", ptr), ("sin", ptr),
        ("part", ptr),
        ("x_sb", i64 * 2), ("x_ss", i64 * 2), ("x_hs", i64 * 2), ("dy_sb", i64 * 2), ("dy_ss", i64 * 2),
        ("dy_hs", i64 * 2), ("dx_sb", i64 * 2), ("dx_ss", i64 * 2), ("dx_hs", i64 * 2),
        ("cos_rb", i64), ("cos_rs", i64), ("cos_hs", i64), ("sin_rb", i64), ("sin_rs", i64), ("sin_hs", i64),
        ("tab_rows", FastDiv), ("tab_inner", FastDiv), ("span", FastDiv * 2),
        ("s_begin", u32 * 2), ("rows", u32 * 2), ("split", u32 * 2), ("side_blocks", u32), ("seq", u32),
        ("heads", ctypes.c_int), ("tj", ctypes.c_int), ("th", ctypes.c_int), ("chunks", ctypes.c_int),
        ("lanes_d", ctypes.c_int),
        ("head_dim", ctypes.c_int), ("width", ctypes.c_int), ("w_dtype", ctypes.c_int), ("tab_dtype", ctypes.c_int),
        ("inv_n", ctypes.c_float), ("eps", ctypes.c_float),
    ]


def bwd_pointer(field: str, side: int = 0, stream: int = 0) -> int:
    """The index of one of BwdParams' pointers, which lead the struct 8 bytes each (its byte offset
    over 8): x, dy, dx by side, w by side and stream, cos, sin, part."""
    return getattr(BwdParams, field).offset // 8 + (2 * side + stream if field == "w" else side)


BWD_POINTERS = bwd_pointer("part") + 1


REDUCE_STREAMS = 4   # weight streams one reduction launch takes: two a side, both sides


class ReduceParams(ctypes.Structure):
    _fields_ = [("part", ptr * REDUCE_STREAMS), ("out", ptr * REDUCE_STREAMS), ("slots", ctypes.c_int * REDUCE_STREAMS),
                ("width", ctypes.c_int * REDUCE_STREAMS), ("out_dtype", ctypes.c_int * REDUCE_STREAMS),
                ("first", ctypes.c_int * (REDUCE_STREAMS + 1)), ("streams", ctypes.c_int)]
