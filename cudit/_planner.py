"""The launch planner: arrays' shapes, dtypes and strides -> kernel, grid, block, parameters.

Pure Python: no GPU, no CUDA import. Everything here raises before any launch, so bad
input never writes a byte. Plans are cached per signature (shapes, strides, dtypes,
pointer alignment, options); only pointers are bound per call.
"""
from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

from ._arrays import ArrayInfo
from ._errors import PlanError
from ._params import DTYPE_CODES, POINTERS, Params, fast_div

ACT_DTYPES = ("bf16", "f16", "f32")
HEAD_DIM_MIN, HEAD_DIM_MAX, HEAD_DIM_STEP = 32, 256, 16
# Block-size bound by (vectors per item, heads per thread): the smallest bound build_cubins.py
# gives any norm kind of that shape on any architecture, so every plan fits every variant
# (tests/test_fit.py): full-dim K = 2 is 640 on sm_100 / sm_120 (build_cubins.py ARCH_MAX_THREADS).
VARIANT_MAX_THREADS = {(1, 1): 768, (1, 2): 640, (1, 3): 512, (1, 4): 512, (1, 0): 768,
                       (2, 1): 512, (2, 2): 512, (2, 0): 512, (3, 1): 640, (3, 0): 512}
BLOCK_TARGET = 256      # threads per block when several rows share a block
# Per-head variants of two vectors an item hold 96 registers (build_cubins.py): blocks of at
# most 192 threads keep 18-20 warps an SM resident (3 x 192, 5 x 128) where 256 keep 16 (v7:
# Cosmos, 128-thread teams, 79.2 -> 90.9% of copy one row a block).
BLOCK_TARGET_PARTS_PER_HEAD = 192
# (rope, norm) -> the K of the variant built a second time for a cos/sin slice shared by all
# heads (build_cubins.py SHARED_TABLE_BOUNDS, name suffix _st): full-dim rotate_half rows read
# it vector by vector after the reduction, at 80 registers (124 otherwise), and fill whole warps
# of blocks. H100 (docs/perf-notes.md v9): WAN-1.3B-other-rope 83.0 -> 89.2% of copy (92.9 with
# one row group a block, 97.4 with rows ahead too). Per-head tables (LTX-2) keep the general
# variant: at 80 registers they lost 9-18 points.
SHARED_TABLE_VARIANTS = {("half", "full"): 2}
# Variants also built without the rows-ahead code (build_cubins.py NO_AHEAD_VARIANTS, suffix _na),
# taken by plans of several row groups a block, which never ask for rows ahead, by (rope, norm,
# heads a thread). The unused code cost per-head rotate_half rows of eight groups a block: H100
# (docs/perf-notes.md v10) Cosmos 90.1 -> 91.9% of copy without it.
NO_AHEAD_VARIANTS = {("half", "head", 2)}
# Tuning knob (the benchmark's --heads-per-thread): force K instead of the rule in
# default_heads_per_thread.
HEADS_PER_THREAD_OVERRIDE = None
# Row groups a block processes in turn, prefetching the next into L2, once the grid would still
# have FULL_GRID blocks (about a full wave of the largest GPUs); smaller launches give every
# group its own block. By (norm, 2 for rotate_half rows else 1): (most groups a block takes,
# grid size in groups below which a block takes one). From H100 sweeps (docs/perf-notes.md v5):
# full-dim rows end in a block-wide barrier and up to ~33k groups ran best one group a block (WAN-1.3B,
# WAN-5B, D96, FLUX.1 full-dim: +1 to +13 points) but lost 4-5 points that way from ~65k on
# (WAN-14B); per-head rotate_half rows, with only two heads a thread, want the longest pipeline.
# Since blocks of one group ask L2 for rows a later wave takes (AHEAD_WAVES_*, v9), per-head
# one-vector and full-dim two-vector rows take one group a block at every size: HunyuanVideo
# 96.0 -> 99.8% of copy, LTX-2 94.9 -> 100.1, WAN-14B-other-rope 93.0 -> 96.2, WAN-14B-other-norm
# even (it lost 6 points that way in v8, before the rows ahead); full-dim one-vector rows take 2
# from 48k groups (against 4: WAN-14B 94.2 -> 95.2, -720p 95.5 -> 96.2, -CFG2 94.3 -> 94.9,
# HunyuanVideo-other-norm 96.1 -> 98.4; at one with rows ahead WAN-14B lost, 93.3, and
# HunyuanVideo-other-norm gained, 100.5) and per-head rotate_half rows 8 (Cosmos 90.1 -> 87.3
# at one, HunyuanVideo-other-rope 95.1 -> 97.5).
ROW_ITERS_BY = {("full", 1): (2, 48 * 1024), ("full", 2): (1, 0), ("head", 1): (1, 0), ("none", 1): (4, 0),
                ("head", 2): (8, 0), ("none", 2): (8, 0)}
# Grids whose blocks take one row group: each thread also asks L2 for the row this many waves
# of resident blocks ahead, so a later block's loads find their data there (kernels/qk_norm_rope.cu
# row_ahead; the launcher turns waves into rows for its GPU). Full-dim and two-vector rows ask
# after their loads, per-head one-vector rows after their stores: a wave further. H100 sweeps
# (docs/perf-notes.md v9): waves 0.25 / 0.5 / 1 took WAN-1.3B 95.9 -> 97.6 / 98.0 / 96.0% of
# copy, FLUX.1-other-rope 86.1 -> 90.8 / 92.0 / 91.1; after the stores 1 / 1.25 / 1.5 / 2 took
# FLUX.1 87.0 -> 90.4 / 90.8 / 89.9 / 85.9, FLUX.2 88.0 -> 92.4 / 93.3 / 92.8 / 89.8.
AHEAD_WAVES_IN_ROW = 0.5
AHEAD_WAVES_AFTER_ROW = 1.25
# Three-vector rows (per-head D = 96), since they request the next vector's constants before
# finishing a vector (v11): 0.5 / 0.625 / 0.75 / 0.875 / 1 waves took Lumina-2 88.4 / 88.8 / 89.2 /
# 89.4 / 89.0% of copy (FLUX.1-other-norm, full-dim, 89.3 / 89.4 / 89.2 / 88.5 / 87.1: it keeps 0.5).
AHEAD_WAVES_THREE_VECTOR = 0.875
ROW_ITERS = None    # tuning knob (the benchmark's --row-iters): one value for every plan
FULL_GRID = 1024
# Launch-bound grids: when two heads a thread still make no more threads than about one wave of
# the largest GPUs (~132-148 SMs x 768-1024 resident threads), a thread's chain of loads, not
# the bytes, sets the time, and K = 2 beats 3 and 4 (H100, docs/perf-notes.md v8: WAN-1.3B at
# 256 tokens 4.07 -> 3.43 us, 512 tokens 4.69 -> 3.99; FLUX.1 at 256 tokens 4.63 -> 3.88; at
# 1024 and 512 tokens, over this size, K = 2 lost).
SMALL_GRID_THREADS = 128 * 1024
# Grids of at most this many rows in whole-warp teams give every row its own block and one row
# group, so the last wave splits finer (H100, docs/perf-notes.md v8: FLUX.1, 9216 rows, 84.8 ->
# 86.8% of copy; Lumina-2, 8192 rows, 68.7 -> 71.0%; rotate_half FLUX.1 84.3 -> 86.4%;
# HunyuanVideo, 237600 rows, lost 0.6 points that way, WAN-1.3B at 1024 tokens in teams of 48
# 2.4 us, and rotate_half FLUX.1 with its eight row groups a block kept 10 points).
ONE_ROW_BLOCKS_UP_TO = 16 * 1024
MAX_GRID_X = 2**31 - 1


@dataclass(frozen=True)
class DeviceLimits:
    arch: tuple                       # (major, minor)
    max_threads_per_block: int = 1024
    max_smem_per_block: int = 48 * 1024   # opt-in maximum, bytes
    max_regs_per_block: int = 65536


# Per-block shared memory an opt-in kernel may use, by architecture (bytes).
SMEM_LIMITS = {(8, 0): 163 * 1024, (8, 6): 99 * 1024, (8, 9): 99 * 1024, (9, 0): 227 * 1024,
               (10, 0): 227 * 1024, (12, 0): 99 * 1024}


def limits_for_arch(arch: tuple) -> DeviceLimits:
    return DeviceLimits(arch=tuple(arch), max_smem_per_block=SMEM_LIMITS.get(tuple(arch), 48 * 1024))


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
            roles["q_out"], roles["k_out"] = self.out
        elif self.out is not None:
            roles["out"] = self.out
        for name in ("q_weight", "k_weight", "q_add_weight", "k_add_weight", "cos", "sin"):
            if getattr(self, name) is not None:
                roles[name] = getattr(self, name)
        return roles


@dataclass(frozen=True, eq=False)   # identity hash: plans are cached and used as keys
class Plan:
    kernel: str
    grid: int
    block: int
    smem: int
    team: int
    norm: str            # "head", "full" or "none"
    rope: str            # "interleaved", "half" or "none"
    template: bytes      # Params with null pointers
    slots: tuple         # the Params pointer block: (role, byte offset in that array) or None
    ahead_waves: float = 0.0   # Params.ahead in waves of resident blocks (the launcher knows the GPU)

    def addresses(self, arrays: dict) -> list:
        """The pointer block's values for arrays role -> ArrayInfo (0 where unused)."""
        return [0 if s is None else arrays[s[0]].ptr + s[1] for s in self.slots]

    def bind(self, arrays: dict) -> bytearray:
        """The kernel's parameter bytes with this call's pointers filled in."""
        buf = bytearray(self.template)
        POINTER_BLOCK.pack_into(buf, 0, *self.addresses(arrays))
        return buf


def _slot(field: str, side: int = 0) -> int:
    """Index in the pointer block of a pointer field (side 0 = Q, 1 = K)."""
    return getattr(Params, field).offset // 8 + side


POINTER_BLOCK = struct.Struct(f"<{POINTERS}Q")


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


def _int_heads(num_heads, n: int):
    """num_heads as a tuple of n ints (an int means the same count for all)."""
    if isinstance(num_heads, bool):
        raise _fail("num_heads", f"an int or a tuple of {n} ints", num_heads)
    if isinstance(num_heads, int):
        return (num_heads,) * n
    if isinstance(num_heads, (tuple, list)) and len(num_heads) == n and all(
            isinstance(h, int) and not isinstance(h, bool) for h in num_heads):
        return tuple(num_heads)
    raise _fail("num_heads", f"an int or a tuple of {n} ints", num_heads)


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
    if req.out is None:
        for role in ("qkv",) if not req.split else ("q", "k"):
            a = arrays[role]
            if a.readonly or a.framework == "jax":
                raise _fail(role, "a writable array for in-place use (pass out= for JAX arrays)",
                            f"a read-only {a.framework or 'array'}")
        return q, k
    if req.split == isinstance(req.out, ArrayInfo):
        raise _fail("out", "a (q_out, k_out) tuple for split input" if req.split
                    else "one array for packed input", type(req.out).__name__)
    pairs = (("q_out", "q"), ("k_out", "k")) if req.split else (("out", "qkv"),)
    for o_role, i_role in pairs:
        o, i = arrays[o_role], arrays[i_role]
        if o.shape != i.shape or o.dtype != i.dtype:
            raise _fail(o_role, f"shape {i.shape} and dtype {i.dtype} like {i_role}",
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


# ------------------------------------------------------------------------ norm weights


def _norm_kind(req: Request, d: int, q: Side, k: Side) -> str:
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


def _check_weights(req: Request, vec: int) -> None:
    for role in ("q_weight", "k_weight", "q_add_weight", "k_add_weight"):
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


# --------------------------------------------------------------------------- cos / sin


@dataclass(frozen=True)
class Table:
    rows: int       # R
    inner: int      # rows of the inner row axis
    rb: int         # element strides: outer row, inner row, head
    rs: int
    hs: int


def _table_layout(role: str, t: ArrayInfo, d: int, q: Side, k: Side, tokens: Tokens) -> Table:
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
            raise _fail(role, f"a last axis of head_dim {d}", f"shape {t.shape}")
        hs = heads_stride(t.shape[2], _stride(t, 2))
        outer, inner, rb, rs = t.shape[0], t.shape[1], _stride(t, 0), _stride(t, 1)
    else:
        raise _fail(role, "a 2-D [R, D], 3-D [B, S, D] or 4-D [B, S, H, D] table", f"shape {t.shape}")
    rows = outer * inner
    if rows == 0 or tokens.count % rows:
        raise _fail(role, f"a row count that equals or divides the {tokens.count} tokens", rows)
    return Table(rows, inner, rb, rs, hs)


def _rope_tables(req: Request, d: int, q: Side, k: Side, tokens: Tokens, vec: int):
    if req.cos is None and req.sin is None:
        return None, None
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
        lay = _table_layout(role, t, d, q, k, tokens)
        _check_aligned(role, t.ptr, (lay.rb, lay.rs, lay.hs), t.itemsize, min(16, vec * t.itemsize))
        tables.append(lay)
    return tables[0], tables[1]


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


def plan(req: Request) -> Plan:
    """The launch for this request, cached per signature (shapes, strides, dtypes, alignment)."""
    key = signature(req)
    p = _CACHE.get(key)
    if p is None:
        p = make_plan(req)
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[key] = p
    return p


def clear_cache() -> None:
    _CACHE.clear()


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class Geometry:
    heads_per_thread: int   # K (0: the looping variant)
    tj: int                 # lanes along the head dim
    th: int                 # lanes along the heads
    block: int

    @property
    def team(self) -> int:
        return self.tj * self.th


# Most heads a thread holds, by vectors per item. rotate_half items are two vectors: at K = 4
# their variants needed ~144 registers (one 256-thread block per SM) and K = 2 measured 8-18
# points better on every rotate_half shape (docs/perf-notes.md v5), so K = 4 is not built.
# Three-vector items hold one head: Lumina-2 82.2% of copy against 79.7% at K = 2 (v9); finished
# vector by vector, 87.2% against 82.8 (v10).
MAX_K = {1: 4, 2: 2, 3: 1}


def natural_parts(rope: str) -> int:
    """Vectors an item holds unless a per-head row needs more: rotate_half pairs d with d + D/2."""
    return 2 if rope == "half" else 1


def item_parts(rope: str, norm: str, lanes_one: int) -> int:
    """Vectors an item holds, from the rope mode, the norm kind and D / VEC.

    rotate_half pairs d with d + D/2: two. A per-head row reduces over its head's lanes with
    warp shuffles in a power of two of them: where D / VEC is three times a power of two (D = 96:
    12 vectors) three vectors a lane fill them all (4 lanes, not 12 of 16); otherwise fp32 heads
    over 128 values (more than 32 vectors) take two. Full-dim rows reduce over the whole team.
    """
    if norm == "head" and rope != "half" and lanes_one % 3 == 0 and _is_pow2(lanes_one // 3):
        return 3
    return 2 if norm == "head" and lanes_one > 32 else natural_parts(rope)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def default_heads_per_thread(heads: int, parts: int = 1) -> int:
    """K: heads a thread holds in registers (0: the looping variant)."""
    k = HEADS_PER_THREAD_OVERRIDE
    if k is None:
        k = 1 if heads == 1 else (2 if heads <= 4 else 4)
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


def _rows_per_block(team: int, cap: int, whole_warps: bool) -> int:
    """Most rows of `team` threads under cap; with whole_warps, the most that fill whole warps.

    Teams of 48 on an H100 (session 4, docs/perf-notes.md v8): one-vector rows (~80 registers)
    fit four blocks of 192 an SM against three of 240, and 4 rows took WAN-1.3B 92.5 -> 95.3%
    of copy; two-vector rows (~124 registers) fit two blocks of either size, and 5 rows took
    WAN-1.3B-other-rope 78.3 -> 83.1%.
    """
    most = max(1, cap // team)
    whole = [r for r in range(most, 0, -1) if r * team % 32 == 0]
    return whole[0] if whole and whole_warps else most


def geometry(lanes_d: int, heads: int, parts: int = 1, k: int | None = None, per_head: bool = False,
             block_target: int = BLOCK_TARGET, whole_warps: bool | None = None) -> Geometry:
    """Threads for rows of `heads` heads of lanes_d items (of `parts` vectors) each.

    Rows take the K, and full-dim rows the lanes along D (all lanes_d, or the next power of
    two), that leave the fewest item slots (tj x th x K) idle, the larger K and the power of two
    on a tie. Full-dim rows choose from K = 4 and 3, per-head rows from K = 4 and 2 (per-head
    K = 3 measured worse, v6). Teams are a power of two inside a warp or whole 16-lane segments,
    so 12 heads fill 3 head lanes x 4 (a team of 48): WAN-1.3B on an H100 95.3% of copy, against
    91.0 at 4 x 3 and 88.5 at 4 lanes x 4 with one idle (docs/perf-notes.md v6, v8). Per-head
    rows keep a power of two <= 32 lanes along D (their reduction is a shuffle over a head's lanes).
    Blocks hold whole warps of rows where the variant is light on registers (whole_warps;
    default: one-vector items), else the most rows under the block target (_rows_per_block).
    """
    whole_warps = parts == 1 if whole_warps is None else whole_warps
    auto_k = k is None and HEADS_PER_THREAD_OVERRIDE is None
    ks = ((4, 2) if per_head else (4, 3)) if auto_k and parts == 1 and heads > 4 else (k,)
    pow2 = _next_pow2(lanes_d)
    tjs = (pow2,) if per_head or pow2 == lanes_d else (pow2, lanes_d)   # the power of two first: it wins ties
    return min((_geometry(tj, heads, parts, kk, block_target, whole_warps) for kk in ks for tj in tjs),
               key=_idle_slots_key)


def _geometry(tj: int, heads: int, parts: int, k, block_target: int, whole_warps: bool) -> Geometry:
    k = default_heads_per_thread(heads, parts) if k is None else k
    if k > 0:
        th = _head_lanes(tj, -(-heads // k))
        bound = VARIANT_MAX_THREADS[(parts, k)]
        if tj * th <= bound:
            rows = _rows_per_block(tj * th, min(block_target, bound), whole_warps)
            return Geometry(k, tj, th, rows * tj * th)
    bound = VARIANT_MAX_THREADS[(parts, 0)]
    th = max(1, min(512, bound) // tj)
    while not _team_ok(tj * th):
        th -= 1
    return Geometry(0, tj, th, tj * th)


def _launch_geometry(lanes_d: int, heads: int, parts: int, per_head: bool, block_target: int,
                     total_rows: int, whole_warps: bool) -> Geometry:
    """geometry(), with two heads a thread for launch-bound grids (SMALL_GRID_THREADS) and one
    row a block for small ones (ONE_ROW_BLOCKS_UP_TO)."""
    geo = geometry(lanes_d, heads, parts, per_head=per_head, block_target=block_target, whole_warps=whole_warps)
    if HEADS_PER_THREAD_OVERRIDE is None and geo.heads_per_thread > 2:
        small = geometry(lanes_d, heads, parts, k=2, per_head=per_head, block_target=block_target,
                         whole_warps=whole_warps)
        if total_rows * small.team <= SMALL_GRID_THREADS:
            geo = small
    if _one_row_blocks(total_rows, geo.team):
        geo = dataclasses.replace(geo, block=geo.team)
    return geo


def _one_row_blocks(total_rows: int, team: int) -> bool:
    return total_rows <= ONE_ROW_BLOCKS_UP_TO and team % 32 == 0


def _idle_slots_key(g: Geometry):
    # The looping variant (K = 0: too many heads for registers) only when no K fits.
    return g.team * g.heads_per_thread if g.heads_per_thread else float("inf")


def kernel_name(dtype: str, rope: str, table_dtype, norm: str, k: int, parts: int, shared_table: bool = False,
                ahead: bool = True) -> str:
    """As build_cubins.py names the variant; parts other than the rope's own get a suffix, and
    so do the flavour for a table shared by the heads and the one without rows-ahead code."""
    table = f"_{table_dtype}" if rope != "none" else ""
    suffix = (f"_p{parts}" if parts != natural_parts(rope) else "") + ("_st" if shared_table else "") + \
        ("" if ahead else "_na")
    return f"qknr_{dtype}_{rope}{table}_{norm}_k{k}{suffix}"


def make_plan(req: Request) -> Plan:
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
    dtype = arrays["q" if req.split else "qkv"].dtype
    itemsize = arrays["q" if req.split else "qkv"].itemsize
    vec = 16 // itemsize
    oq, ok = _out_sides(req, tokens, d, q, k, arrays)
    for side in (q, k, oq, ok):
        _check_aligned(side.role, arrays[side.role].ptr + side.offset, (side.sb, side.ss, side.hs),
                       itemsize, 16)

    norm = _norm_kind(req, d, q, k)
    _check_weights(req, vec)
    dual = _check_dual_stream(req, tokens, norm)
    cos_t, sin_t = _rope_tables(req, d, q, k, tokens, vec)
    rope = "none" if cos_t is None else ("interleaved" if req.interleave else "half")
    if norm == "none" and rope == "none":
        raise PlanError("q_weight/k_weight and cos/sin are all None: there is nothing to compute")
    if not (isinstance(req.eps, (int, float)) and req.eps >= 0):
        raise _fail("eps", "a non-negative float", req.eps)
    _check_device(arrays)   # last: host arrays of a bad shape or dtype get the precise error first

    parts = item_parts(rope, norm, d // vec)
    lanes_d = d // (vec * parts)
    target = BLOCK_TARGET_PARTS_PER_HEAD if parts > 1 and norm == "head" else BLOCK_TARGET
    total_rows = 2 * tokens.count
    shared_table = cos_t is not None and cos_t.hs == 0 and sin_t.hs == 0 and (rope, norm) in SHARED_TABLE_VARIANTS
    geo = _launch_geometry(lanes_d, max(q.heads, k.heads), parts, norm != "full", target, total_rows,
                           whole_warps=parts == 1 or shared_table)
    shared_table = shared_table and geo.heads_per_thread == SHARED_TABLE_VARIANTS[(rope, norm)]
    if total_rows >= 2**32:
        raise PlanError(f"qkv: {tokens.count} tokens exceed the 2^31-token limit")
    rows_per_block = geo.block // geo.team
    groups = -(-total_rows // rows_per_block)
    most, single_below = ROW_ITERS_BY[(norm, natural_parts(rope))]
    if _one_row_blocks(total_rows, geo.team):
        most = 1
    if ROW_ITERS is not None:
        most, single_below = ROW_ITERS, 0
    iters = 1 if groups < single_below else max(1, min(most, groups // FULL_GRID))
    grid = -(-total_rows // (rows_per_block * iters))
    if grid > MAX_GRID_X:
        raise PlanError(f"qkv: {total_rows} rows need {grid} blocks, over the grid limit")

    p = Params()
    slots = [None] * POINTERS
    for i, (side, out) in enumerate(((q, oq), (k, ok))):
        sp = p.side[i]
        sp.in_sb, sp.in_ss, sp.in_hs = side.sb, side.ss, side.hs
        sp.out_sb, sp.out_ss, sp.out_hs = out.sb, out.ss, out.hs
        sp.heads = side.heads
        sp.inv_n = 1.0 / ((side.heads if norm == "full" else 1) * d)
        slots[_slot("in_", i)] = (side.role, side.offset)
        slots[_slot("out", i)] = (out.role, out.offset)
        if norm != "none":
            w_role = ("q" if i == 0 else "k") + "_weight"
            sp.w_dtype = DTYPE_CODES[getattr(req, w_role).dtype]
            add_role = ("q" if i == 0 else "k") + "_add_weight"
            slots[_slot("w", i)] = (w_role, 0)
            slots[_slot("w_txt", i)] = (add_role if dual else w_role, 0)
    if cos_t is not None:
        p.cos_rb, p.cos_rs, p.cos_hs = cos_t.rb, cos_t.rs, cos_t.hs
        p.sin_rb, p.sin_rs, p.sin_hs = sin_t.rb, sin_t.rs, sin_t.hs
        p.tab_rows, p.tab_inner = fast_div(cos_t.rows), fast_div(cos_t.inner)
        slots[_slot("cos")] = ("cos", 0)
        slots[_slot("sin")] = ("sin", 0)
    else:
        p.tab_rows = p.tab_inner = fast_div(1)
    p.seq = fast_div(tokens.seq)
    p.num_txt = req.num_txt_tokens if dual else 0
    p.total_rows = total_rows
    p.team, p.tj, p.th, p.iters = geo.team, geo.tj, geo.th, iters
    p.lanes = fast_div(geo.tj)
    p.head_dim = d
    p.lanes_d = lanes_d
    p.eps = float(req.eps)
    waves = ahead_waves(iters, norm, parts)
    ahead_code = waves > 0 or (rope, norm, geo.heads_per_thread) not in NO_AHEAD_VARIANTS
    name = kernel_name(dtype, rope, req.cos.dtype if cos_t else None, norm, geo.heads_per_thread, parts,
                       shared_table, ahead_code)
    return Plan(kernel=name, grid=grid, block=geo.block, smem=0, team=geo.team, norm=norm, rope=rope,
                template=bytes(p), slots=tuple(slots), ahead_waves=waves)


def ahead_waves(iters: int, norm: str, parts: int) -> float:
    """Params.ahead in waves of resident blocks (0: none): grids of one row group a block."""
    if iters != 1:
        return 0.0
    if parts == 3:
        return AHEAD_WAVES_THREE_VECTOR
    return AHEAD_WAVES_IN_ROW if norm == "full" or parts > 1 else AHEAD_WAVES_AFTER_ROW


def check_fits(p: Plan, limits: DeviceLimits, kernel_meta: dict) -> None:
    """Raise if a plan exceeds the device's or the compiled kernel's limits."""
    regs = kernel_meta["registers"]
    problems = []
    if p.block > limits.max_threads_per_block:
        problems.append(f"{p.block} threads > {limits.max_threads_per_block} per block")
    if p.block > kernel_meta["max_threads"]:
        problems.append(f"{p.block} threads > the kernel's bound of {kernel_meta['max_threads']}")
    if regs * p.block > limits.max_regs_per_block:
        problems.append(f"{regs} registers x {p.block} threads > {limits.max_regs_per_block}")
    smem = kernel_meta.get("static_smem", 0) + p.smem
    if smem > limits.max_smem_per_block:
        problems.append(f"{smem} bytes of shared memory > {limits.max_smem_per_block}")
    if problems:
        raise PlanError(f"{p.kernel} does not fit sm_{limits.arch[0]}{limits.arch[1]}: " + "; ".join(problems))


