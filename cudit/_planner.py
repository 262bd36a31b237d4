"""The launch planner: arrays' shapes, dtypes and strides -> variant, grid, block, parameters.

Pure Python: no GPU, no CUDA import. Everything here raises before any launch, so bad input
never writes a byte. A plan depends on the request's signature (shapes, strides, dtypes,
pointer alignment, options), the device's description and the tuning table, and is cached
on them; only pointers are bound per call.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from . import _variants
from ._arrays import ITEMSIZE, ArrayInfo, contiguous_strides
from ._errors import PlanError
from ._params import MAX_RANKS, POINTERS, XCHG_HEADER, Params, fast_div
from ._rope3d import Rope3D
from ._tuning import DeviceSpec, Tuning
from ._variants import ACT_DTYPES, DTYPE_CODES, MAX_K, Variant, natural_parts, table_class

HEAD_DIM_MIN, HEAD_DIM_MAX, HEAD_DIM_STEP = 32, 256, 16
MAX_GRID_X = 2**31 - 1
K_ROWS_AS_Q = 16   # Params.k_shift past any team (blockDim.x <= 1024): K's rows are Q's


@dataclass(frozen=True)
class Request:
    """One call of qk_norm_rope, as arrays' descriptions plus options."""

    qkv: object                      # ArrayInfo (packed) or (ArrayInfo, ArrayInfo) (split)
    q_weight: ArrayInfo | None = None
    k_weight: ArrayInfo | None = None
    cos: ArrayInfo | None = None
    sin: ArrayInfo | None = None
    num_heads: object = None
    eps: float = 1e-6
    interleave: bool = True
    q_add_weight: ArrayInfo | None = None
    k_add_weight: ArrayInfo | None = None
    num_txt_tokens: int = 0
    seq_len: int | None = None
    out: object = None               # None (in place), ArrayInfo, or (ArrayInfo, ArrayInfo)
    # Tensor parallelism (full-dim norm over heads on several GPUs): sumsq is the [T, 2] fp32
    # buffer of Q's and K's sums of squares; stats says whether this call writes it ("sumsq":
    # no other output) or normalises by it ("given", all-reduced, over norm_width values), or
    # whether the kernel trades the sums with the other ranks itself ("exchange", through the
    # buffers of `exchange`, an Exchange).
    sumsq: ArrayInfo | None = None
    stats: str = ""
    exchange: object = None
    norm_width: object = None        # int, or (Q's, K's)
    rope_offset: int | None = None   # sequence parallelism: the table's sequence row of token 0
    # LayerNorm ("layer": mean subtracted, then weight and bias) instead of RMSNorm ("rms")
    norm_type: str = "rms"
    q_bias: ArrayInfo | None = None
    k_bias: ArrayInfo | None = None
    q_add_bias: ArrayInfo | None = None
    k_add_bias: ArrayInfo | None = None
    # Other rope sources: position ids ([T] or [B, S] ints: each token's table row), the values of
    # a head that rotate (partial rotary: the table's width), or 3-D RoPE computed in the kernel
    # (a Rope3D, no table).
    positions: ArrayInfo | None = None
    rotary_dim: int | None = None
    rope3d: object = None
    # fp8 output (out in float8_e4m3fn / float8_e5m2, or uint8 named by out_dtype): each side's
    # scale, an fp32 array of one value or one a head, else a number (scale_values, Q, K, V; None:
    # 1), and the arrays raised to max |y| (one value or one a head). Packed input's V is
    # quantised into the fp8 out too.
    out_dtype: str | None = None
    scale_values: tuple = (None, None, None)
    q_scale: ArrayInfo | None = None
    k_scale: ArrayInfo | None = None
    v_scale: ArrayInfo | None = None
    q_amax: ArrayInfo | None = None
    k_amax: ArrayInfo | None = None
    v_amax: ArrayInfo | None = None

    @property
    def split(self) -> bool:
        return not isinstance(self.qkv, ArrayInfo)   # ArrayInfo is itself a tuple

    def arrays(self) -> dict:
        """role -> ArrayInfo of every array given."""
        roles = {}
        if self.split:
            roles["q"], roles["k"] = self.qkv
        else:
            roles["qkv"] = self.qkv
        if self.out is not None and not isinstance(self.out, ArrayInfo):
            roles.update((r, a) for r, a in zip(("q_out", "k_out"), self.out) if a is not None)
        elif self.out is not None:
            roles["out"] = self.out
        for name in ("q_weight", "k_weight", "q_add_weight", "k_add_weight", "cos", "sin", "sumsq", "positions") + \
                BIASES + SCALES + AMAXES:
            if getattr(self, name) is not None:
                roles[name] = getattr(self, name)
        return roles


@dataclass(frozen=True)
class LaunchConfig:
    """How one request runs: its variant and the thread layout and pacing chosen for a device."""

    variant: Variant
    lanes_d: int             # items along the head dim
    tj: int                  # lanes along the head dim (lanes_d, or the next power of two)
    th: int                  # lanes along the heads
    block: int               # threads a block: rows a block x team
    iters: int               # row groups a block takes in turn
    grid: int                # blocks of Q and K rows
    ahead_waves: float       # rows asked ahead, in waves of resident blocks (0: none)
    v_blocks: int = 0        # fp8 output: blocks after them that quantise V
    k_ratio: int = 1         # a K block's tokens for a Q block's (K's narrower rows under GQA)
    k_th: int = 0            # K's lanes along the heads (th where K's rows are Q's)

    @property
    def sides(self) -> int:
        """Blocks a period: k_ratio of Q rows, then one of K rows."""
        return self.k_ratio + 1

    def tokens_per_wave(self, resident: int) -> float:
        """Tokens each side advances while `resident` blocks run (Params.ahead's unit)."""
        return resident * self.k_ratio / self.sides * (self.block // self.team)

    @property
    def team(self) -> int:
        return self.tj * self.th


@dataclass(frozen=True, eq=False)   # identity hash: plans are cached and used as keys
class Plan:
    config: LaunchConfig
    template: bytes      # Params with null pointers
    slots: tuple         # the Params pointer block: (role, byte offset in that array) or None
    smem: int = 0

    @property
    def kernel(self) -> str:
        return self.config.variant.name

    def addresses(self, arrays: dict) -> list:
        """The pointer block's values for arrays role -> ArrayInfo (0 where unused)."""
        return [0 if s is None else arrays[s[0]].ptr + s[1] for s in self.slots]


# ---------------------------------------------------------------------------- checks


def _fail(arg: str, expected: str, got) -> PlanError:
    return PlanError(f"{arg}: expected {expected}, got {got}")


def _check_device(arrays: dict) -> int:
    devices = {}
    for role, a in arrays.items():
        if a.device_id < 0:
            raise _fail(role, "a GPU array", f"a host (CPU) array of shape {a.shape}")
        devices.setdefault(a.device_id, role)
    if len(devices) > 1:
        raise PlanError("arrays are on different devices: " +
                        ", ".join(f"{r} on GPU {d}" for d, r in devices.items()))
    return next(iter(devices))


def _check_dtype(role: str, a: ArrayInfo, allowed=ACT_DTYPES) -> None:
    if a.dtype not in allowed:
        raise _fail(role, "dtype " + " / ".join(allowed), a.dtype)


def _check_last_contiguous(role: str, a: ArrayInfo) -> None:
    if a.ndim == 0:
        raise _fail(role, "an array with at least one axis", "a scalar")
    if a.shape[-1] > 1 and a.strides[-1] != 1:
        raise _fail(role, "a contiguous last axis (stride 1)", f"stride {a.strides[-1]}")


def _stride(a: ArrayInfo, axis: int) -> int:
    """Stride of an axis, 0 where the axis has one element (its stride never matters)."""
    return 0 if a.shape[axis] == 1 else a.strides[axis]


def _check_aligned(role: str, residue: int, strides, itemsize: int, align: int) -> None:
    if residue % align:
        raise _fail(role, f"a data pointer aligned to {align} bytes for the vector path",
                    f"an address {residue % align} bytes past a multiple of {align}")
    for s in strides:
        if (s * itemsize) % align:
            raise _fail(role, f"strides that are multiples of {align} bytes for the vector path",
                        f"a stride of {s} elements")


# ------------------------------------------------------------------ layouts of Q and K


@dataclass(frozen=True)
class Side:
    role: str          # array the side lives in
    offset: int        # bytes from that array's pointer to head 0 of token 0
    sb: int            # element strides: batch, sequence, head
    ss: int
    hs: int
    heads: int


@dataclass(frozen=True)
class Tokens:
    batch: int
    seq: int

    @property
    def count(self) -> int:
        return self.batch * self.seq


def _token_axes(role: str, a: ArrayInfo, seq_len) -> tuple:
    """(Tokens, sb, ss) of a 2-D [T, W], 3-D [B, S, W] or 4-D [B, S, H, D] array."""
    if a.ndim == 2:
        t = a.shape[0]
        s = t if seq_len is None else seq_len
        if s <= 0 or t % s:
            raise _fail("seq_len", f"a positive divisor of the {t} tokens of {role}", seq_len)
        tokens = Tokens(t // s, s)
        st = _stride(a, 0)
        return tokens, st * s, st
    if a.ndim in (3, 4):
        b, s = a.shape[0], a.shape[1]
        if seq_len is not None and seq_len != s:
            raise _fail("seq_len", f"None or the sequence length {s} of {role}", seq_len)
        return Tokens(b, s), _stride(a, 0), _stride(a, 1)
    raise _fail(role, "a 2-D, 3-D or 4-D array", f"{a.ndim}-D shape {a.shape}")


def _head_dim(role: str, width: int, heads: int) -> int:
    if heads <= 0:
        raise _fail("num_heads", "positive head counts", heads)
    if width % heads:
        raise _fail(role, f"a last-axis width divisible by its {heads} heads", width)
    return width // heads


def _check_head_dim(d: int) -> None:
    if d % 2:
        raise _fail("head_dim", "an even head_dim", d)
    if not (HEAD_DIM_MIN <= d <= HEAD_DIM_MAX) or d % HEAD_DIM_STEP:
        raise _fail("head_dim", f"a multiple of {HEAD_DIM_STEP} from {HEAD_DIM_MIN} to {HEAD_DIM_MAX}", d)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _ints(arg: str, value, n: int) -> tuple:
    """value as a tuple of n ints (an int means the same for all)."""
    if _is_int(value):
        return (value,) * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(_is_int(h) for h in value):
        return tuple(value)
    raise _fail(arg, f"an int or a tuple of {n} ints", value)


def _int_heads(num_heads, n: int):
    """num_heads as a tuple of n ints (an int means the same count for all)."""
    return _ints("num_heads", num_heads, n)


def _packed_sides(role: str, a: ArrayInfo, num_heads, seq_len):
    if num_heads is None:
        raise _fail("num_heads", "an int H or (Hq, Hk, Hv) for a packed qkv", None)
    hq, hk, hv = _int_heads(num_heads, 3)
    if min(hq, hk) <= 0 or hv < 0:
        raise _fail("num_heads", "positive Q and K head counts", num_heads)
    tokens, sb, ss = _token_axes(role, a, seq_len)
    if a.ndim == 4:
        if a.shape[2] != hq + hk + hv:
            raise _fail(role, f"{hq}+{hk}+{hv} heads on axis 2", a.shape[2])
        d, hs = a.shape[3], _stride(a, 2)
    else:
        d = _head_dim(role, a.shape[-1], hq + hk + hv)
        hs = d
    q = Side(role, 0, sb, ss, hs, hq)
    k = Side(role, hq * hs * a.itemsize, sb, ss, hs, hk)
    return tokens, d, q, k


def _split_side(role: str, a: ArrayInfo, heads, seq_len):
    tokens, sb, ss = _token_axes(role, a, seq_len)
    if a.ndim == 4:
        if heads is not None and heads != a.shape[2]:
            raise _fail("num_heads", f"{a.shape[2]} heads for {role} (axis 2 of its shape)", heads)
        return tokens, a.shape[3], Side(role, 0, sb, ss, _stride(a, 2), a.shape[2])
    if heads is None:
        raise _fail("num_heads", f"an int or (Hq, Hk) for a {a.ndim}-D {role}", None)
    d = _head_dim(role, a.shape[-1], heads)
    return tokens, d, Side(role, 0, sb, ss, d, heads)


def _split_sides(q: ArrayInfo, k: ArrayInfo, num_heads, seq_len, roles=("q", "k")):
    hq = hk = None
    if num_heads is not None:
        hq, hk = _int_heads(num_heads, 2)
    tq, dq, sq = _split_side(roles[0], q, hq, seq_len)
    tk, dk, sk = _split_side(roles[1], k, hk, seq_len)
    if tq != tk:
        raise _fail(roles[1], f"the token layout of {roles[0]} ({tq.batch} x {tq.seq})", f"{tk.batch} x {tk.seq}")
    if dq != dk:
        raise _fail(roles[1], f"the head_dim of {roles[0]} ({dq})", dk)
    return tq, dq, sq, sk


def _out_sides(req: Request, tokens: Tokens, d: int, q: Side, k: Side, arrays: dict):
    """Sides of the output (the input's own sides in place)."""
    if req.stats == "sumsq":
        if req.out is not None:
            raise _fail("out", "None: qk_sumsq writes only sumsq", type(req.out).__name__)
        return q, k   # never written
    if req.out is None:
        for role in ("qkv",) if not req.split else ("q", "k"):
            a = arrays[role]
            if a.readonly or a.framework == "jax":
                raise _fail(role, "a writable array for in-place use (pass out= for JAX arrays)",
                            f"a read-only {a.framework or 'array'}")
        return q, k
    if req.split == isinstance(req.out, ArrayInfo) or (req.split and None in req.out):
        raise _fail("out", "a (q_out, k_out) tuple for split input" if req.split
                    else "one array for packed input", type(req.out).__name__)
    pairs = (("q_out", "q"), ("k_out", "k")) if req.split else (("out", "qkv"),)
    for o_role, i_role in pairs:
        o, i = arrays[o_role], arrays[i_role]
        if o.shape != i.shape or (o.dtype != i.dtype and out_format(req, o) is None):
            raise _fail(o_role, f"shape {i.shape} and dtype {i.dtype} like {i_role}, or an fp8 dtype",
                        f"shape {o.shape}, dtype {o.dtype}")
        if o.readonly:
            raise _fail(o_role, "a writable array", "a read-only one")
        _check_last_contiguous(o_role, o)
    if req.split:
        _, _, oq, ok = _split_sides(arrays["q_out"], arrays["k_out"], (q.heads, k.heads), req.seq_len,
                                    roles=("q_out", "k_out"))
    else:
        _, _, oq, ok = _packed_sides("out", arrays["out"], req.num_heads, req.seq_len)
    return oq, ok


# ------------------------------------------------------------------------ fp8 output

FP8_KINDS = {"float8_e4m3fn": 0, "float8_e5m2": 1}   # kernels' Fp8Kind
SCALES = ("q_scale", "k_scale", "v_scale")
AMAXES = ("q_amax", "k_amax", "v_amax")
V_TOKENS = 8   # tokens a thread of V's blocks quantises (two batches of four loads in flight)


def out_format(req: Request, o: ArrayInfo) -> str | None:
    """The fp8 format an output array holds (its dtype, or out_dtype for a uint8 view), else None."""
    if req.out_dtype is not None:
        if req.out_dtype not in FP8_KINDS:
            raise _fail("out_dtype", " or ".join(map(repr, FP8_KINDS)) + " (a uint8 out read as fp8)", req.out_dtype)
        return req.out_dtype if o.dtype in ("uint8", req.out_dtype) else None
    return o.dtype if o.dtype in FP8_KINDS else None


@dataclass(frozen=True)
class Quant:
    """An fp8 output's format and where V goes (V's input and output sides, or None)."""

    kind: str
    v_in: Side | None
    v_out: Side | None


def _quant(req: Request, arrays: dict, data: ArrayInfo, q: Side, k: Side, ok: Side, layer: bool,
           source: str) -> Quant | None:
    """The fp8 output of a call, its scales and amaxes checked; None for an output like the input."""
    outs = [arrays[r] for r in ("out", "q_out", "k_out") if r in arrays]
    kinds = {out_format(req, o) for o in outs}
    if not outs or kinds == {None}:
        given = [r for r in SCALES + AMAXES if getattr(req, r) is not None] + \
            [r for r, v in zip(SCALES, req.scale_values) if v is not None] + (["out_dtype"] if req.out_dtype else [])
        if given:
            raise _fail(given[0], "None unless out is fp8 (float8_e4m3fn / float8_e5m2)", "a value")
        return None
    if len(kinds) > 1:
        raise _fail("k_out", "the fp8 dtype of q_out", " and ".join(sorted(map(str, kinds))))
    kind = kinds.pop()
    if data.dtype not in _variants.FP8_IN_DTYPES:
        raise _fail("out", f"the input's dtype ({data.dtype}): fp8 output takes bf16 or fp16 input", kind)
    if layer or req.stats or source != "table":
        arg = "norm" if layer else (_tp_arg(req) if req.stats else ("rope" if source == "grid" else "positions"))
        raise _fail(arg, "the default (fp8 output is built for RMSNorm with cos/sin tables by token)", "given")
    hv = 0 if req.split else _int_heads(req.num_heads, 3)[2]
    if not hv and (req.v_scale is not None or req.v_amax is not None or req.scale_values[2] is not None):
        raise _fail("v_amax" if req.v_amax is not None else "v_scale",
                    "None: V is quantised only from packed input with V heads", "a value")
    for role, value in zip(SCALES, req.scale_values):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _fail(role, "a number or an fp32 GPU array", type(value).__name__)
    _check_quant_arrays(req, (q.heads, k.heads, hv))
    if not hv:
        return Quant(kind, None, None)
    v_in = Side(k.role, k.offset + k.heads * k.hs * data.itemsize, k.sb, k.ss, k.hs, hv)
    v_out = Side(ok.role, ok.offset + ok.heads * ok.hs, ok.sb, ok.ss, ok.hs, hv)   # one byte a value
    return Quant(kind, v_in, v_out)


def _out_variant(req: Request, quant: Quant | None) -> str:
    """The variants' output form for a call: fp8 tracking the amax only where one is asked for."""
    if quant is None:
        return ""
    return _variants.FP8_AMAX_OUT if any(getattr(req, r) is not None for r in AMAXES) else _variants.FP8_OUT


def _check_quant_arrays(req: Request, heads: tuple) -> None:
    """Scales and amaxes: fp32, contiguous, one value or one a head of their side (Q, K, V)."""
    for role, n in zip(SCALES + AMAXES, heads + heads):
        a = getattr(req, role)
        if a is None:
            continue
        _check_dtype(role, a, ("f32",))
        size = math.prod(a.shape)
        if a.ndim > 1 or size not in (1, n):
            raise _fail(role, f"an fp32 array of 1 value or {n} (one a head)", f"shape {a.shape}")
        if a.ndim == 1 and size > 1 and a.strides[0] != 1:
            raise _fail(role, "a contiguous array", f"stride {a.strides[0]}")
        if role in AMAXES and a.readonly:
            raise _fail(role, "a writable array", "a read-only one")


def _quant_params(p: Params, req: Request, quant: Quant | None, cfg: LaunchConfig, tokens: Tokens, d: int,
                  vec: int) -> None:
    """The fp8 fields: format, scales, amaxes' head strides, and V's blocks."""
    if quant is None:
        return
    p.out_kind = FP8_KINDS[quant.kind]
    for i, (scale, amax, value) in enumerate(zip(SCALES, AMAXES, req.scale_values)):
        p.scale_val[i] = 1.0 if value is None else float(value)
        for field, role in (("scale_hs", scale), ("amax_hs", amax)):
            a = getattr(req, role)
            getattr(p, field)[i] = int(a is not None and a.ndim == 1 and a.shape[0] > 1)
    if quant.v_in is None:
        return
    v_in, v_out = quant.v_in, quant.v_out
    p.v.in_sb, p.v.in_ss, p.v.in_hs = v_in.sb, v_in.ss, v_in.hs
    p.v.out_sb, p.v.out_ss, p.v.out_hs = v_out.sb, v_out.ss, v_out.hs
    p.v.heads = v_in.heads
    p.v_cols = v_in.heads * (d // vec)
    p.v_lanes = fast_div(d // vec)
    p.v_col_blocks = -(-p.v_cols // cfg.block)
    p.v_groups = -(-tokens.count // V_TOKENS)


HEAD_OFFSET_MAX = 2**31 - 1   # the kernels offset heads within a row in 32-bit elements


def _check_head_offsets(d: int, sides, tables) -> None:
    for side in sides:
        if (side.heads - 1) * abs(side.hs) + d > HEAD_OFFSET_MAX:
            raise _fail(side.role, f"heads within {HEAD_OFFSET_MAX} elements of each other",
                        f"a head stride of {side.hs} elements over {side.heads} heads")
    for role, t in zip(("cos", "sin"), tables):
        if t is not None and (sides[0].heads - 1) * abs(t.hs) + d > HEAD_OFFSET_MAX:
            raise _fail(role, f"heads within {HEAD_OFFSET_MAX} elements of each other",
                        f"a head stride of {t.hs} elements")


# ------------------------------------------------------------------------ norm weights


def _norm_kind(req: Request, d: int, q: Side, k: Side) -> str:
    if req.stats == "sumsq":
        return "full"
    if req.stats in ("given", "exchange"):
        for role, side in (("q_weight", q), ("k_weight", k)):
            w = getattr(req, role)
            if w is None or w.ndim != 1 or w.shape[0] != side.heads * d:
                raise _fail(role, f"this rank's full-dim weight, 1-D of length {side.heads}x{d}, with {_tp_arg(req)}",
                            None if w is None else f"shape {w.shape}")
        return "full"
    if req.q_weight is None and req.k_weight is None:
        return "none"
    if req.q_weight is None or req.k_weight is None:
        missing = "q_weight" if req.q_weight is None else "k_weight"
        raise _fail(missing, "a weight like the other side's (Q and K use the same norm kind)", None)
    kinds = []
    for role, side in (("q_weight", q), ("k_weight", k)):
        w = getattr(req, role)
        n = w.shape[0] if w.ndim == 1 else None
        # With one head, per-head and full-dim are the same computation: either kind fits.
        fits = {kind for kind, length in (("head", d), ("full", side.heads * d)) if n == length}
        if not fits:
            raise _fail(role, f"a 1-D weight of length {d} (per-head) or {side.heads * d} (full-dim)",
                        f"shape {w.shape}")
        kinds.append(fits)
    both = kinds[0] & kinds[1]
    if not both:
        raise _fail("k_weight", f"the same norm kind as q_weight ({min(kinds[0])}-dim)", f"{min(kinds[1])}-dim")
    return "head" if "head" in both else "full"


BIASES = ("q_bias", "k_bias", "q_add_bias", "k_add_bias")   # beside the weights of the same position


def _check_weights(req: Request, vec: int) -> None:
    for role in ("q_weight", "k_weight", "q_add_weight", "k_add_weight") + BIASES:
        w = getattr(req, role)
        if w is None:
            continue
        _check_dtype(role, w)
        if w.ndim != 1:
            raise _fail(role, "a 1-D weight", f"shape {w.shape}")
        _check_last_contiguous(role, w)
        _check_aligned(role, w.ptr, (), w.itemsize, min(16, vec * w.itemsize))
    for main, add in (("q_weight", "q_add_weight"), ("k_weight", "k_add_weight")):
        m, a = getattr(req, main), getattr(req, add)
        if m is None or a is None:
            continue
        if a.shape != m.shape or a.dtype != m.dtype:
            raise _fail(add, f"shape {m.shape} and dtype {m.dtype} like {main}", f"{a.shape}, {a.dtype}")
    for bias, weight in zip(BIASES, ("q_weight", "k_weight", "q_add_weight", "k_add_weight")):
        b, w = getattr(req, bias), getattr(req, weight)
        if b is not None and (w is None or b.shape != w.shape):
            raise _fail(bias, f"a bias shaped like {weight}" + ("" if w is None else f" {w.shape}"),
                        f"shape {b.shape}")


NORM_TYPES = ("rms", "layer")


def _check_norm_type(req: Request, norm: str, dual: bool) -> bool:
    """True for LayerNorm; its biases checked against the call."""
    if req.norm_type not in NORM_TYPES:
        raise _fail("norm", " or ".join(map(repr, NORM_TYPES)), req.norm_type)
    biases = [r for r in BIASES if getattr(req, r) is not None]
    if req.norm_type == "rms":
        if biases:
            raise _fail(biases[0], "None with norm='rms' (a bias belongs to LayerNorm: norm='layer')", "a bias")
        return False
    if norm == "none":
        raise _fail("norm", "'rms' without weights ('layer' takes q_weight and k_weight)", req.norm_type)
    if req.stats:
        raise _fail("norm", f"'rms' with {_tp_arg(req)} (tensor parallelism is for RMSNorm)", req.norm_type)
    if req.q_bias is None and (req.q_add_bias is not None or req.k_add_bias is not None):
        raise _fail("q_add_bias" if req.q_add_bias is not None else "k_add_bias",
                    "None without q_bias and k_bias", "a text-stream bias")
    if (req.q_bias is None) != (req.k_bias is None):
        raise _fail("k_bias" if req.k_bias is None else "q_bias", "biases for Q and K together, or neither", None)
    if dual and req.q_bias is not None and (req.q_add_bias is None or req.k_add_bias is None):
        missing = "q_add_bias" if req.q_add_bias is None else "k_add_bias"
        raise _fail(missing, f"the text-stream bias for num_txt_tokens={req.num_txt_tokens}", None)
    return True


def _check_dual_stream(req: Request, tokens: Tokens, norm: str) -> bool:
    """True when the text tokens use their own weights."""
    n = req.num_txt_tokens
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n > tokens.seq:
        raise _fail("num_txt_tokens", f"an int from 0 to the sequence length {tokens.seq}", n)
    if n == 0 or norm == "none":
        return False
    missing = [r for r in ("q_add_weight", "k_add_weight") if getattr(req, r) is None]
    if missing:
        raise _fail(missing[0], f"the text-stream weight for num_txt_tokens={n}", None)
    return True


# ------------------------------------------------------------ tensor parallelism


STATS_KINDS = ("", "sumsq", "given", "exchange")


@dataclass(frozen=True)
class Exchange:
    """Tensor parallelism in one pass: every rank's exchange buffer, in rank order, as device
    addresses this GPU can read and write (symmetric memory, or peer access), this rank's place
    among them, and the tokens a buffer has room for. Each buffer holds
    exchange_words(tokens, ranks) 64-bit words, zeroed on every rank before any rank's first
    call; the calls that share buffers run in the same order on every rank, on one stream each."""

    buffers: tuple
    rank: int
    tokens: int

    @property
    def ranks(self) -> int:
        return len(self.buffers)


def exchange_words(tokens: int, ranks: int) -> int:
    """64-bit words of one rank's exchange buffer: a header, then two turns of each rank's two
    rows (Q's and K's) a token."""
    return XCHG_HEADER + 2 * ranks * 2 * tokens


def _tp_arg(req: Request) -> str:
    """The argument that made a call tensor-parallel, for errors."""
    return "exchange" if req.stats == "exchange" else "sumsq"


def _check_exchange(ex, tokens: Tokens) -> None:
    if not isinstance(ex, Exchange):
        raise _fail("exchange", "a cudit.Exchange", type(ex).__name__)
    if not (isinstance(ex.buffers, tuple) and 2 <= ex.ranks <= MAX_RANKS
            and all(isinstance(b, int) and b > 0 and b % 8 == 0 for b in ex.buffers)):
        raise _fail("exchange", f"2 to {MAX_RANKS} buffers, each a device address aligned to 8 bytes",
                    f"{ex.buffers!r:.80}")
    if not (isinstance(ex.rank, int) and 0 <= ex.rank < ex.ranks):
        raise _fail("exchange", f"a rank from 0 to {ex.ranks - 1}", ex.rank)
    if not (isinstance(ex.tokens, int) and tokens.count <= ex.tokens):
        raise _fail("exchange", f"buffers with room for at least the call's {tokens.count} tokens",
                    f"room for {ex.tokens}")
    if exchange_words(ex.tokens, ex.ranks) >= 2**32:   # the kernel indexes a buffer's words in 32 bits
        most = (2**32 - XCHG_HEADER) // (4 * ex.ranks) - 1
        raise _fail("exchange", f"buffers of fewer than 2^32 words: room for at most {most} tokens at {ex.ranks} ranks",
                    f"room for {ex.tokens}")


def _check_stats(req: Request, tokens: Tokens, d: int, q: Side, k: Side) -> tuple | None:
    """The sums-of-squares buffer of a tensor-parallel call; for "given" and "exchange", the
    norm widths."""
    if req.stats not in STATS_KINDS:
        raise _fail("stats", " / ".join(map(repr, STATS_KINDS)), req.stats)
    if not req.stats:
        if req.norm_width is not None:
            raise _fail("norm_width", "None unless sumsq or exchange is given (tensor parallelism)", req.norm_width)
        return None
    if req.stats == "exchange":
        if req.sumsq is not None:
            raise _fail("sumsq", "None with exchange (the kernel trades the sums itself)", "an array")
        _check_exchange(req.exchange, tokens)
    else:
        _check_sums(req, tokens)
    return None if req.stats == "sumsq" else _norm_widths(req, d, q, k)


def _check_sums(req: Request, tokens: Tokens) -> None:
    a = req.sumsq
    shapes = ((tokens.count, 2), (tokens.batch, tokens.seq, 2))
    if a is None:
        raise _fail("sumsq", f"a float32 array of shape {shapes[0]} or {shapes[1]}", None)
    _check_dtype("sumsq", a, ("f32",))
    if a.shape not in shapes:
        raise _fail("sumsq", f"shape {shapes[0]} or {shapes[1]}: Q's and K's sums for each token", f"shape {a.shape}")
    if any(n > 1 and st != c for n, st, c in zip(a.shape, a.strides, contiguous_strides(a.shape))):
        raise _fail("sumsq", "a contiguous array", f"strides {a.strides}")
    if req.stats == "sumsq" and a.readonly:
        raise _fail("sumsq", "a writable array", "a read-only one")


def _norm_widths(req: Request, d: int, q: Side, k: Side) -> tuple:
    if req.norm_width is None:
        raise _fail("norm_width", "the values a token's norm runs over on all ranks together: an int, or (Q's, K's)",
                    None)
    widths = _ints("norm_width", req.norm_width, 2)
    for width, side in zip(widths, (q, k)):
        if width < side.heads * d or width % d:
            raise _fail("norm_width", f"multiples of head_dim {d} of at least this rank's {side.heads}x{d} values",
                        req.norm_width)
    return widths


# --------------------------------------------------------------------------- cos / sin


@dataclass(frozen=True)
class Table:
    rows: int       # R
    inner: int      # rows of the inner row axis
    rb: int         # element strides: outer row, inner row, head
    rs: int
    hs: int
    offset: int = 0  # elements from the array's pointer to the first row read
    half: bool = False   # rotate_half: the table holds half a head, one entry for values i and i + D/2


def _table_layout(role: str, t: ArrayInfo, d: int, q: Side, k: Side, tokens: Tokens, start, rotary: int,
                  by_position: bool, interleave: bool) -> Table:
    if _holds_half_heads(t, d):
        if interleave or by_position or rotary < d:
            why = "interleave=True" if interleave else "position ids" if by_position else f"rotary_dim {rotary}"
            raise _fail(role, f"a last axis of head_dim {d} with {why} (half-head tables are for rotate_half "
                              "tables by token)", f"shape {t.shape}")
        return dataclasses.replace(_full_table_layout(role, t, d // 2, q, k, tokens, start), half=True)
    if rotary < d or by_position:   # one [rows, rotary_dim] table for all heads
        if t.ndim != 2 or t.shape[1] != rotary:
            why = "position ids" if by_position else f"rotary_dim {rotary} < head_dim {d}"
            raise _fail(role, f"a 2-D [rows, {rotary}] table with {why}", f"shape {t.shape}")
        if by_position:
            if not 0 < t.shape[0] < 2**31:
                raise _fail(role, "from 1 to 2^31 - 1 rows for position ids", f"shape {t.shape}")
            return Table(t.shape[0], t.shape[0], 0, _stride(t, 0), 0)
        return _full_table_layout(role, t, rotary, q, k, tokens, start)   # rows by token, as a [rows, D] table's
    return _full_table_layout(role, t, d, q, k, tokens, start)


def _holds_half_heads(t: ArrayInfo, d: int) -> bool:
    """A 4-D [B, S, H, D/2] table: rotate_half's entries for values i and i + D/2 are one (LTX-2's split
    RoPE); 2-D and 3-D tables hold whole heads, or rotary_dim values."""
    return t.ndim == 4 and t.shape[3] * 2 == d


def _full_table_layout(role: str, t: ArrayInfo, d: int, q: Side, k: Side, tokens: Tokens, start) -> Table:
    def heads_stride(width_heads: int, hs: int) -> int:
        if width_heads == 1:
            return 0
        if width_heads != q.heads:
            raise _fail(role, f"a last axis of {d} (shared) or {q.heads}x{d} (one table per head)",
                        f"shape {t.shape}")
        if q.heads != k.heads:
            raise _fail(role, f"a table shared by all heads: per-head tables need Hq == Hk, "
                              f"here {q.heads} != {k.heads}", f"shape {t.shape}")
        return hs

    if t.ndim in (2, 3):
        width = t.shape[-1]
        if width % d:
            raise _fail(role, f"a last axis of {d} or {q.heads}x{d}", f"shape {t.shape}")
        hs = heads_stride(width // d, d)
        if t.ndim == 2:
            outer, inner, rb, rs = 1, t.shape[0], 0, _stride(t, 0)
        else:
            outer, inner, rb, rs = t.shape[0], t.shape[1], _stride(t, 0), _stride(t, 1)
    elif t.ndim == 4:
        if t.shape[3] != d:
            raise _fail(role, f"a last axis of head_dim {d}, or {d // 2} (half a head, rotate_half)",
                        f"shape {t.shape}")
        hs = heads_stride(t.shape[2], _stride(t, 2))
        outer, inner, rb, rs = t.shape[0], t.shape[1], _stride(t, 0), _stride(t, 1)
    else:
        raise _fail(role, "a 2-D [R, D], 3-D [B, S, D] or 4-D [B, S, H, D] table", f"shape {t.shape}")
    offset = 0
    if start is not None:   # the sequence rows [start, start + S) of a longer table, as a slice would
        if inner < start + tokens.seq:
            raise _fail(role, f"at least rope_offset + S = {start} + {tokens.seq} rows along its sequence axis",
                        f"shape {t.shape}")
        inner, offset = tokens.seq, start * rs
    rows = outer * inner
    if rows == 0 or tokens.count % rows:
        raise _fail(role, f"a row count that equals or divides the {tokens.count} tokens", rows)
    return Table(rows, inner, rb, rs, hs, offset)


def _rope_offset(req: Request):
    start = req.rope_offset
    if start is not None and not (_is_int(start) and start >= 0):
        raise _fail("rope_offset", "None or a non-negative int", start)
    if start is not None and req.cos is None and req.rope3d is None:
        raise _fail("rope_offset", "None without cos/sin or rope", start)
    if start is not None and req.positions is not None:
        raise _fail("rope_offset", "None with positions (the ids say each token's row)", start)
    return start


def _rotary_dim(req: Request, d: int, vec: int) -> int:
    """The values of a head that rotate: rotary_dim, else a 2-D table's width where it is narrower
    than head_dim, else all of them."""
    r, t = req.rotary_dim, req.cos
    if r is None:
        r = t.shape[-1] if t is not None and t.ndim == 2 and 0 < t.shape[-1] < d else d
    if not (_is_int(r) and 2 <= r <= d and r % 2 == 0):
        raise _fail("rotary_dim", f"None or an even int from 2 to head_dim {d}", r)
    if r < d and t is None:
        raise _fail("rotary_dim", "None without cos/sin", r)
    if r < d and not req.interleave and r % (2 * vec):
        raise _fail("rotary_dim", f"a multiple of {2 * vec} for rotate_half (interleave=False) with "
                                  f"{16 // vec}-byte values", r)
    return r


def _rope_tables(req: Request, d: int, q: Side, k: Side, tokens: Tokens, vec: int, rotary: int):
    start = _rope_offset(req)
    if req.cos is None and req.sin is None:
        if req.positions is not None:
            raise _fail("positions", "None without cos/sin (the table its ids index)", "an array")
        return None, None
    if req.rope3d is not None:
        raise _fail("rope", "None with cos/sin (a Rope3D replaces the table)", req.rope3d)
    if req.cos is None or req.sin is None:
        raise _fail("cos" if req.cos is None else "sin", "cos and sin given together", None)
    c, s = req.cos, req.sin
    _check_dtype("cos", c)
    if s.dtype != c.dtype:
        raise _fail("sin", f"the dtype of cos ({c.dtype})", s.dtype)
    if s.shape != c.shape:
        raise _fail("sin", f"the shape of cos {c.shape}", s.shape)
    tables = []
    for role, t in (("cos", c), ("sin", s)):
        _check_last_contiguous(role, t)
        lay = _table_layout(role, t, d, q, k, tokens, start, rotary, req.positions is not None, req.interleave)
        _check_aligned(role, t.ptr + lay.offset * t.itemsize, (lay.rb, lay.rs, lay.hs), t.itemsize,
                       min(16, vec * t.itemsize))
        tables.append(lay)
    return tables[0], tables[1]


@dataclass(frozen=True)
class PositionIds:
    sb: int        # element strides: batch, sequence
    ss: int
    wide: bool     # int64


def _positions(req: Request, tokens: Tokens):
    a = req.positions
    if a is None:
        return None
    _check_dtype("positions", a, ("int32", "int64"))
    if a.shape == (tokens.count,):
        st = _stride(a, 0)
        return PositionIds(st * tokens.seq, st, a.dtype == "int64")
    if a.shape == (tokens.batch, tokens.seq):
        return PositionIds(_stride(a, 0), _stride(a, 1), a.dtype == "int64")
    raise _fail("positions", f"shape ({tokens.count},) or ({tokens.batch}, {tokens.seq}): one id a token",
                f"shape {a.shape}")


@dataclass(frozen=True)
class GridPlace:
    first: int     # sequence index of the grid's first cell
    shift: int     # rope_offset: the sequence index of this call's token 0
    bands: tuple   # pairs turning with frames, and with frames or height
    rope: Rope3D


def _grid(req: Request, d: int, tokens: Tokens) -> GridPlace | None:
    r = req.rope3d
    if r is None:
        return None
    if not isinstance(r, Rope3D):
        raise _fail("rope", "None or a cudit.Rope3D", type(r).__name__)
    if req.rotary_dim not in (None, d):
        raise _fail("rotary_dim", f"None or head_dim {d} with rope (its axes_dim cover the head)", req.rotary_dim)
    if sum(r.axes_dim) != d:
        raise _fail("rope", f"axes_dim summing to head_dim {d}", f"axes_dim {r.axes_dim}")
    start = req.rope_offset or 0
    if (start + tokens.seq > r.sequence_length) if req.rope_offset is not None else tokens.seq != r.sequence_length:
        raise _fail("rope", f"a grid whose {r.cells} cells and {r.text_tokens} text tokens hold "
                            f"{'rope_offset + ' if start else ''}S = {start + tokens.seq} tokens",
                    f"grid {r.grid} (sequence length {r.sequence_length})")
    if r.largest_angle() >= MAX_ANGLE:
        raise _fail("rope", f"angles below {MAX_ANGLE:g} radians (positions x frequencies)", r)
    band1 = r.axes_dim[0] // 2
    return GridPlace(r.text_tokens if r.text_first else 0, start, (band1, band1 + r.axes_dim[1] // 2), r)


MAX_ANGLE = 1e5   # the kernels' range reduction is exact below this (kernels/qk_norm_rope.cu rope_sincos)


# -------------------------------------------------------------------------- the plan


def _array_key(x):
    if isinstance(x, ArrayInfo):
        return (x.shape, x.strides, x.dtype, x.device_id, x.readonly, x.framework, x.ptr & 15)
    if isinstance(x, tuple):
        return tuple(_array_key(y) for y in x)
    return x


def signature(req: Request) -> tuple:
    """Hashable key: everything a plan depends on; pointers only through their alignment."""
    return tuple(_array_key(getattr(req, f)) for f in _FIELDS)


_FIELDS = tuple(Request.__dataclass_fields__)
_CACHE: dict = {}
_CACHE_LIMIT = 4096


def plan(req: Request, device: DeviceSpec, tuning: Tuning) -> Plan:
    """The launch for this request on this device, cached per signature."""
    key = (signature(req), device, tuning)
    p = _CACHE.get(key)
    if p is None:
        p = make_plan(req, device, tuning)
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[key] = p
    return p


def clear_cache() -> None:
    _CACHE.clear()


# ------------------------------------------------------------------- thread layout


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class Geometry:
    heads_per_thread: int   # K (0: the looping variant)
    tj: int                 # lanes along the head dim
    th: int                 # lanes along the heads
    block: int

    @property
    def team(self) -> int:
        return self.tj * self.th


def item_parts(rope: str, norm: str, lanes_one: int) -> int:
    """Vectors an item holds, from the rope mode, the norm kind and D / VEC.

    A per-head row reduces over its head's lanes with shuffles in a power of two of them: where
    D / VEC is three times a power of two (D = 96) three vectors a lane fill them all; fp32 heads
    over 128 values take two. rotate_half items are two vectors (d pairs with d + D/2).
    """
    if norm == "head" and rope != "half" and lanes_one % 3 == 0 and _is_pow2(lanes_one // 3):
        return 3
    return 2 if norm == "head" and lanes_one > 32 else natural_parts(rope)


def default_heads_per_thread(heads: int, parts: int, forced: int | None = None) -> int:
    """K: heads a thread holds in registers (0: the looping variant)."""
    k = forced if forced is not None else (1 if heads == 1 else (2 if heads <= 4 else 4))
    return min(k, MAX_K[parts]) if k > 0 else 0


def _team_ok(team: int) -> bool:
    """A team reduces with shuffles when it is a power of two inside a warp, else in 16- or
    32-lane segments through shared memory (kernels/qk_norm_rope.cu team_sum)."""
    return (team <= 32 and _is_pow2(team)) or team % 16 == 0


def _head_lanes(tj: int, th: int) -> int:
    """The fewest head lanes from th up that make a legal team of tj-lane heads."""
    while not _team_ok(tj * th):
        th += 1
    return th


def _rows_per_block(team: int, target: int, bound: int) -> int | None:
    """The most rows of `team` threads under the block target that fill whole warps, else the
    fewest that do within the variant's bound; None if none fits. The kernels' shuffles name all
    32 lanes of a warp, so a block holds whole warps."""
    whole = [r for r in range(1, bound // team + 1) if r * team % 32 == 0]
    under = [r for r in whole if r * team <= target]
    return under[-1] if under else (whole[0] if whole else None)


def geometry(lanes_d: int, heads: int, parts: int = 1, k: int | None = None, per_head: bool = False,
             block_target: int = 256, layer: bool = False, source: str = "table", out: str = "") -> Geometry:
    """Threads for rows of `heads` heads of lanes_d items (of `parts` vectors) each.

    Rows take the K, and full-dim rows the lanes along D (all lanes_d, or the next power of
    two), that leave the fewest item slots (tj x th x K) idle, the larger K and the power of two
    on a tie: full-dim rows choose from K = 4 and 3, per-head rows from 4 and 2. Per-head rows
    keep a power of two <= 32 lanes along D (their reduction is a shuffle over a head's lanes).
    Blocks hold the most whole warps of rows under the block target.
    """
    ks = ((4, 2) if per_head else (4, 3)) if k is None and parts == 1 and heads > 4 else (k,)
    pow2 = _next_pow2(lanes_d)
    tjs = (pow2,) if per_head or pow2 == lanes_d else (pow2, lanes_d)   # the power of two first: it wins ties
    return min((_geometry(tj, heads, parts, kk, block_target, (layer, source, out)) for kk in ks for tj in tjs),
               key=_idle_slots_key)


def _geometry(tj: int, heads: int, parts: int, k, block_target: int, kind: tuple) -> Geometry:
    """kind: (layer, source, out) of the variants, whose least bound the block keeps to."""
    k = default_heads_per_thread(heads, parts) if k is None else k
    if k > 0:
        th = _head_lanes(tj, -(-heads // k))
        rows = _rows_per_block(tj * th, block_target, _variants.planner_bound(parts, k, *kind))
        if rows is not None:
            return Geometry(k, tj, th, rows * tj * th)
    bound = _variants.planner_bound(parts, 0, *kind)
    th = max(1, min(512, bound) // tj)
    while not (_team_ok(tj * th) and tj * th % 32 == 0):
        th -= 1
    return Geometry(0, tj, th, tj * th)


SUMMED_HEADS = 8   # heads a lane of the sums kernel loops over, at least, where a row has them


def _summing_geometry(lanes_d: int, heads: int, block_target: int) -> Geometry:
    """The sums of squares hold nothing for a second pass: a row's team is at most a warp (or
    the lanes along D, where they are more), each lane looping over several heads, summed by
    shuffles alone. Few heads take fewer head lanes, so that a lane still has loads to overlap."""
    tj = _next_pow2(lanes_d)
    th = 1
    while tj * th * 2 <= 32 and heads // (th * 2) >= SUMMED_HEADS:
        th *= 2
    team = tj * th
    rows = min(max(1, block_target // team, 32 // team), _variants.planner_bound(1, 0) // team)
    return Geometry(0, tj, th, rows * team)


def _idle_slots_key(g: Geometry):
    # The looping variant (K = 0: too many heads for registers) only when no K fits.
    return g.team * g.heads_per_thread if g.heads_per_thread else float("inf")


@dataclass(frozen=True)
class Work:
    """What the launch must cover, as the planner's checks leave it."""

    dtype: str
    rope: str
    norm: str
    table: str | None        # cos/sin dtype
    shared_table: bool       # one cos/sin slice for all heads
    head_dim: int
    heads: int               # the larger of Hq and Hk
    rows: int                # 2 x tokens: a row is one side of one token
    stats: str = ""          # tensor parallelism's sums of squares (STATS_KINDS)
    layer: bool = False      # LayerNorm
    source: str = "table"    # where the rotation comes from (_variants.ROPE_SOURCES)
    out: str = ""            # _variants.OUT_CODES: fp8 output, with or without the amax
    k_heads: int = 0         # K's heads where fewer than `heads` (GQA), else 0
    q_heads: int = 0         # Q's heads where fewer than K's, else 0
    half_table: bool = False  # rotate_half tables of half heads


def launch_config(w: Work, device: DeviceSpec, tuning: Tuning) -> LaunchConfig:
    """The variant and thread layout for some work on a device, under a tuning table."""
    vec = 16 // ITEMSIZE[w.dtype]
    parts = item_parts(w.rope, w.norm, w.head_dim // vec)
    lanes_d = w.head_dim // (vec * parts)
    per_head = w.norm != "full"
    kind = "sumsq" if w.stats == "sumsq" else w.norm   # the tuning tables' kind of row
    target = tuning.block_target_for(kind, parts)
    shared_k = _shared_table_k(w.rope, w.norm) if w.shared_table and w.source == "table" else None
    table = table_class(w.table, w.dtype, w.source)
    forced = 0 if table == "x16" and w.source == "table" else tuning.heads_per_thread   # rare table pairings: the looping variant
    if forced is None and w.norm == "full" and w.heads == 1:
        forced = 2   # one head a rank under tensor parallelism: full-dim variants hold two
    forced = None if forced is None else default_heads_per_thread(w.heads, parts, forced)
    if w.stats == "sumsq":
        geo = _summing_geometry(lanes_d, w.heads, target)
    else:
        geo = geometry(lanes_d, w.heads, parts, k=forced, per_head=per_head, block_target=target, layer=w.layer,
                       source=w.source, out=w.out)
    # Full-dim rows keep one head split whatever the token count, so that a sequence shard sums a
    # token's heads in the order the whole sequence does (bit-equal shards).
    if forced is None and per_head and geo.heads_per_thread > 2:
        # Launch-bound grids: a thread's chain of loads sets the time, and two heads a thread win.
        small = geometry(lanes_d, w.heads, parts, k=2, per_head=per_head, block_target=target, layer=w.layer,
                         source=w.source, out=w.out)
        if w.rows * small.team <= tuning.small_grid_threads:
            geo = small
    one_row = w.rows <= tuning.one_row_blocks_up_to and geo.team % 32 == 0
    if one_row:   # small grids: every row its own block, so the last wave splits finer
        geo = dataclasses.replace(geo, block=geo.team)
    rows_per_block = geo.block // geo.team
    k_ratio, k_th = _k_side(geo, w, parts)
    sides, tokens = k_ratio + 1, w.rows // 2   # a period of blocks: k_ratio of Q's, one of K's
    groups = -(-tokens * sides // (rows_per_block * k_ratio))   # blocks of one row group
    paced = f"{kind}-grid" if w.source == "grid" else kind   # no table read: paced on their own
    most, single_below = tuning.row_iters_for(paced, natural_parts(w.rope))
    if one_row or w.stats == "exchange":   # exchange: blocks take tokens in order, whatever each rank's plan
        most = 1
    if tuning.fixed_row_iters is not None:
        most, single_below = tuning.fixed_row_iters, 0
    iters = 1 if groups < single_below else max(1, min(most, groups // tuning.full_grid))
    grid = sides * -(-tokens // (rows_per_block * k_ratio * iters))   # whole periods of blocks
    if grid > MAX_GRID_X:
        raise PlanError(f"qkv: {w.rows} rows need {grid} blocks, over the grid limit")
    k = geo.heads_per_thread
    head_tables = w.source == "table" and w.table is not None and not w.shared_table
    waves = _ahead_waves(iters, w.norm, parts, tuning, head_tables)
    variant = Variant(
        w.dtype, w.rope, w.norm, k, parts, table, shared_table=k == shared_k and not (w.stats or w.layer),
        stats=w.stats, layer=w.layer, source=w.source, out=w.out, half_table=w.half_table)
    if k_ratio == 1 and all_heads_held(w, geo, lanes_d, tokens, rows_per_block * iters):
        # LayerNorm rows have a shared-slice form only there (_variants.LAYER_ONCE_PATHS)
        shared = variant.shared_table or (w.layer and k == shared_k)
        variant = _variants.BY_NAME.get(dataclasses.replace(variant, all_heads=True, shared_table=shared).name, variant)
    return LaunchConfig(variant, lanes_d, geo.tj, geo.th, geo.block, iters, grid, waves, k_ratio=k_ratio, k_th=k_th)


def all_heads_held(w: Work, geo: Geometry, lanes_d: int, tokens: int, rows: int) -> bool:
    """Whether every block of a launch whose sides share one geometry holds whole rows: each lane
    along D a vector, each head lane K heads of both sides, and each of its `rows` rows (rows a
    block x row groups) a token. Such launches may take the variant built with only those rows
    (kernels/qk_norm_rope.cu EVERY_ONLY), which checks none of it."""
    k = geo.heads_per_thread
    heads = {w.q_heads or w.heads, w.k_heads or w.heads}
    return k > 0 and lanes_d == geo.tj and heads == {k * geo.th} and tokens % rows == 0


def _k_side(geo: Geometry, w: Work, parts: int) -> tuple:
    """(k_ratio, k_th): a K side of fewer heads (GQA) takes as many heads a thread in teams of
    fewer head lanes, k_ratio of them in a Q team's threads, where such a team is a power of two
    that divides Q's (a shift and a mask place a thread). Full-dim rows (their sums span the
    block's team), the looping variant and three-vector items keep Q's teams
    (kernels/qk_norm_rope.cu narrow_k)."""
    k = geo.heads_per_thread
    if not w.k_heads or w.norm == "full" or k == 0 or parts == 3:
        return 1, geo.th
    th = _head_lanes(geo.tj, -(-w.k_heads // k))
    team = geo.tj * th
    return (geo.team // team, th) if _is_pow2(team) and geo.team % team == 0 else (1, geo.th)


def _shared_table_k(rope: str, norm: str):
    """The K of the variant built for a table slice shared by all heads (_st), if any."""
    return next((k for r, n, k in _variants.SHARED_TABLE_BOUNDS if (r, n) == (rope, norm)), None)


def _ahead_waves(iters: int, norm: str, parts: int, tuning: Tuning, head_tables: bool = False) -> float:
    """Params.ahead in waves of resident blocks (0: none): grids of one row group a block."""
    if iters != 1:
        return 0.0
    if parts == 3:
        return tuning.ahead_waves_three_vector
    if head_tables:
        return tuning.ahead_waves_head_tables
    return tuning.ahead_waves_in_row if norm == "full" or parts > 1 else tuning.ahead_waves_after_row


def _slot(field: str, side: int = 0) -> int:
    """Index in the pointer block of a pointer field (side 0 = Q, 1 = K)."""
    return getattr(Params, field).offset // 8 + side


def make_plan(req: Request, device: DeviceSpec, tuning: Tuning) -> Plan:
    """Validate a request and choose its launch. Pointers in req matter only modulo 16."""
    arrays = req.arrays()
    for role in ("q", "k", "qkv"):
        if role in arrays:
            _check_dtype(role, arrays[role])
            _check_last_contiguous(role, arrays[role])
    if req.split:
        q_arr, k_arr = req.qkv
        if q_arr.dtype != k_arr.dtype:
            raise _fail("k", f"the dtype of q ({q_arr.dtype})", k_arr.dtype)
        tokens, d, q, k = _split_sides(q_arr, k_arr, req.num_heads, req.seq_len)
    else:
        tokens, d, q, k = _packed_sides("qkv", req.qkv, req.num_heads, req.seq_len)
    _check_head_dim(d)
    data = arrays["q" if req.split else "qkv"]
    vec = 16 // data.itemsize
    oq, ok = _out_sides(req, tokens, d, q, k, arrays)
    for side in (q, k, oq, ok):
        size = arrays[side.role].itemsize   # an fp8 output's vectors are VEC bytes
        _check_aligned(side.role, arrays[side.role].ptr + side.offset, (side.sb, side.ss, side.hs), size, vec * size)

    norm = _norm_kind(req, d, q, k)
    _check_weights(req, vec)
    dual = _check_dual_stream(req, tokens, norm)
    widths = _check_stats(req, tokens, d, q, k)
    layer = _check_norm_type(req, norm, dual)
    rotary = _rotary_dim(req, d, vec)
    cos_t, sin_t = _rope_tables(req, d, q, k, tokens, vec, rotary)
    _check_head_offsets(d, (q, k, oq, ok), (cos_t, sin_t))
    pos = _positions(req, tokens)
    grid = _grid(req, d, tokens)
    source = "grid" if grid else ("pos" if pos or rotary < d else "table")
    if source != "table" and req.stats:
        raise _fail("rope" if grid else ("positions" if pos else "rotary_dim"),
                    f"None with {_tp_arg(req)} (tensor parallelism takes full cos/sin tables by token)", "given")
    rope = "none" if cos_t is None and grid is None else ("interleaved" if req.interleave else "half")
    if req.stats == "sumsq" and (req.q_weight is not None or req.k_weight is not None or rope != "none"):
        raise PlanError("qk_sumsq: takes no weights or cos/sin")
    if norm == "none" and rope == "none":
        raise PlanError("q_weight/k_weight and cos/sin are all None: there is nothing to compute")
    quant = _quant(req, arrays, data, q, k, ok, layer, source)
    if not (isinstance(req.eps, (int, float)) and req.eps >= 0):
        raise _fail("eps", "a non-negative float", req.eps)
    _check_device(arrays)   # last: host arrays of a bad shape or dtype get the precise error first
    if 2 * tokens.count >= 2**32:
        raise PlanError(f"qkv: {tokens.count} tokens exceed the 2^31-token limit")

    shared = cos_t is not None and cos_t.hs == 0 and sin_t.hs == 0
    work = Work(data.dtype, rope, norm, req.cos.dtype if cos_t else None, shared, d, max(q.heads, k.heads),
                2 * tokens.count, req.stats, layer, source, _out_variant(req, quant),
                k.heads if k.heads < q.heads else 0, q.heads if q.heads < k.heads else 0,
                cos_t is not None and cos_t.half)
    cfg = launch_config(work, device, tuning)
    if quant and quant.v_in:
        cfg = dataclasses.replace(cfg, v_blocks=-(-quant.v_in.heads * (d // vec) // cfg.block) * -(-tokens.count // V_TOKENS))
        if cfg.grid + cfg.v_blocks > MAX_GRID_X:
            raise PlanError(f"qkv: {tokens.count} tokens need {cfg.grid + cfg.v_blocks} blocks, over the grid limit")
    widths = widths or tuple((side.heads if norm == "full" else 1) * d for side in (q, k))
    prm = _params(req, cfg, tokens, d, q, k, oq, ok, widths, dual, cos_t, sin_t)
    _source_params(prm, rotary, pos, cos_t, grid)
    _quant_params(prm, req, quant, cfg, tokens, d, vec)
    if source == "table" and not (dual or req.stats or (quant and quant.v_in)):
        _batch_major(prm, tokens, cos_t, sin_t)
    if req.stats == "exchange":
        _exchange_params(prm, req.exchange)
    return Plan(cfg, bytes(prm), _slots(req, dual, cos_t, sin_t, q, k, oq, ok, quant))


def _batch_major(p: Params, tokens: Tokens, cos_t: Table | None, sin_t: Table | None) -> None:
    """Rows in position-major order (row r: position r // B of batch element r % B) where the batch
    shares one cos/sin row a position: its B reads of a row then come together and hit the cache,
    not DRAM again a batch element later. The kernel's (b, s) arithmetic runs with the roles of the
    two axes swapped: seq is B, and the strides trade places."""
    if tokens.batch == 1 or cos_t is None or not cos_t.inner == sin_t.inner == cos_t.rows == tokens.seq:
        return
    for sp in p.side:
        sp.in_sb, sp.in_ss, sp.out_sb, sp.out_ss = sp.in_ss, sp.in_sb, sp.out_ss, sp.out_sb
    p.seq = fast_div(tokens.batch)
    p.tab_rows, p.tab_inner = fast_div(tokens.count), fast_div(tokens.batch)   # row r: outer r // B, inner r % B
    p.cos_rb, p.cos_rs, p.sin_rb, p.sin_rs = cos_t.rs, 0, sin_t.rs, 0


def _exchange_params(p: Params, ex: Exchange) -> None:
    p.xchg[:ex.ranks] = ex.buffers
    p.xchg_rank, p.xchg_ranks, p.xchg_rows = ex.rank, ex.ranks, 2 * ex.tokens


def _source_params(p: Params, rotary: int, pos: PositionIds | None, cos_t: Table | None, grid: GridPlace | None):
    """The fields of the position-id and grid sources."""
    p.rotary_dim = rotary
    if pos is not None:
        p.pos_sb, p.pos_ss, p.pos_wide, p.max_pos = pos.sb, pos.ss, int(pos.wide), cos_t.rows
    p.grid_hw = p.grid_w = fast_div(1)
    if grid is None:
        return
    r = grid.rope
    f, h, w = r.grid
    p.grid_hw, p.grid_w = fast_div(h * w), fast_div(w)
    p.grid_first, p.grid_count, p.grid_shift = grid.first, r.cells, grid.shift
    p.band1, p.band2 = grid.bands
    p.grid_origin[:] = [float(o) for o in r.offset]
    p.grid_scale[:] = [float(x) for x in r.scale]
    p.txt_pos[:] = [float(t) for t in r.text_pos]
    freq = r.frequencies()
    p.freq[:len(freq)] = freq


def _params(req, cfg: LaunchConfig, tokens, d, q, k, oq, ok, widths, dual, cos_t, sin_t) -> Params:
    """The kernel's parameters, pointers left null (the launch fills them in)."""
    p = Params()
    for i, (side, out) in enumerate(((q, oq), (k, ok))):
        sp = p.side[i]
        sp.in_sb, sp.in_ss, sp.in_hs = side.sb, side.ss, side.hs
        sp.out_sb, sp.out_ss, sp.out_hs = out.sb, out.ss, out.hs
        sp.heads = side.heads
        sp.inv_n = 1.0 / widths[i]
        weight, bias = getattr(req, "qk"[i] + "_weight"), getattr(req, "qk"[i] + "_bias")
        if weight is not None:
            sp.w_dtype = DTYPE_CODES[weight.dtype]
        if bias is not None:
            sp.b_dtype = DTYPE_CODES[bias.dtype]
    table_fields(p, cos_t, sin_t, req.cos)
    p.seq = fast_div(tokens.seq)
    p.num_txt = req.num_txt_tokens if dual else 0
    p.total_rows = 2 * tokens.count
    p.team, p.tj, p.th, p.iters = cfg.team, cfg.tj, cfg.th, cfg.iters
    p.tj_shift = cfg.tj.bit_length() - 1 if _is_pow2(cfg.tj) else 0
    p.lanes = fast_div(cfg.tj)
    p.head_dim = d
    p.lanes_d = cfg.lanes_d
    p.eps = float(req.eps)
    p.qk_grid = cfg.grid
    p.sides, p.k_ratio, p.k_th = fast_div(cfg.sides), cfg.k_ratio, cfg.k_th
    p.k_shift = (cfg.tj * cfg.k_th).bit_length() - 1 if cfg.k_ratio > 1 else K_ROWS_AS_Q
    p.step = cfg.grid // cfg.sides * cfg.k_ratio * (cfg.block // cfg.team)
    return p


def table_fields(p, cos_t: Table | None, sin_t: Table | None, cos: ArrayInfo | None) -> None:
    """The cos/sin fields Params and BwdParams share: strides, row counts, dtype."""
    if cos_t is None:
        p.tab_rows = p.tab_inner = fast_div(1)
        return
    p.cos_rb, p.cos_rs, p.cos_hs = cos_t.rb, cos_t.rs, cos_t.hs
    p.sin_rb, p.sin_rs, p.sin_hs = sin_t.rb, sin_t.rs, sin_t.hs
    p.tab_rows, p.tab_inner = fast_div(cos_t.rows), fast_div(cos_t.inner)
    p.tab_dtype = DTYPE_CODES[cos.dtype]


def _slots(req, dual: bool, cos_t, sin_t, q, k, oq, ok, quant: Quant | None = None) -> tuple:
    """Where each pointer of the Params pointer block comes from: (role, byte offset) or None."""
    slots = [None] * POINTERS
    for i, (side, out) in enumerate(((q, oq), (k, ok))):
        slots[_slot("in_", i)] = (side.role, side.offset)
        slots[_slot("out", i)] = (out.role, out.offset)
        w_role = "qk"[i] + "_weight"
        if getattr(req, w_role) is not None:
            slots[_slot("w", i)] = (w_role, 0)
            slots[_slot("w_txt", i)] = ("qk"[i] + "_add_weight" if dual else w_role, 0)
        b_role = "qk"[i] + "_bias"
        if getattr(req, b_role) is not None:
            slots[_slot("b", i)] = (b_role, 0)
            slots[_slot("b_txt", i)] = ("qk"[i] + "_add_bias" if dual else b_role, 0)
    if cos_t is not None:
        slots[_slot("cos")] = ("cos", cos_t.offset * req.cos.itemsize)
        slots[_slot("sin")] = ("sin", sin_t.offset * req.sin.itemsize)
    if req.stats in ("sumsq", "given"):
        slots[_slot("stats")] = ("sumsq", 0)
    if req.positions is not None:
        slots[_slot("pos")] = ("positions", 0)
    if quant and quant.v_in:
        slots[_slot("v_in")] = (quant.v_in.role, quant.v_in.offset)
        slots[_slot("v_out")] = (quant.v_out.role, quant.v_out.offset)
    for i, (scale, amax) in enumerate(zip(SCALES, AMAXES)):
        for field, role in (("scale", scale), ("amax", amax)):
            if getattr(req, role) is not None:
                slots[_slot(field, i)] = (role, 0)
    return tuple(slots)


def check_fits(p: Plan, device: DeviceSpec, kernel_meta: dict) -> None:
    """Raise if a plan exceeds the device's or the compiled kernel's limits."""
    check_block_fits(p.kernel, p.config.block, p.smem, device, kernel_meta)


def check_block_fits(kernel: str, block: int, smem: int, device: DeviceSpec, kernel_meta: dict) -> None:
    """Raise if a block of `block` threads and `smem` dynamic bytes exceeds the device's or the
    compiled kernel's limits."""
    regs = kernel_meta["registers"]
    problems = []
    if block > device.max_threads_per_block:
        problems.append(f"{block} threads > {device.max_threads_per_block} per block")
    if block > kernel_meta["max_threads"]:
        problems.append(f"{block} threads > the kernel's bound of {kernel_meta['max_threads']}")
    if regs * block > device.max_regs_per_block:
        problems.append(f"{regs} registers x {block} threads > {device.max_regs_per_block}")
    smem = kernel_meta.get("static_smem", 0) + smem
    if smem > device.max_smem_per_block:
        problems.append(f"{smem} bytes of shared memory > {device.max_smem_per_block}")
    if problems:
        raise PlanError(f"{kernel} does not fit sm_{device.arch[0]}{device.arch[1]}: " + "; ".join(problems))
