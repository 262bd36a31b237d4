"""The backward pass's planner: a forward call's arrays plus the output's gradient -> the launches
of kernels/qk_norm_rope_bwd.cu (one a side, both weight streams in it) and of its weight reductions.

Pure Python like the forward planner, whose checks it reuses: bad input raises before anything
runs, with or without a GPU.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import _planner
from ._arrays import ITEMSIZE, ArrayInfo
from ._params import REDUCE_STREAMS, BwdParams, ReduceParams, fast_div
from ._planner import Request, _fail
from ._tuning import DeviceSpec, Tuning
from ._variants import (BACKWARD_BY_NAME, BACKWARD_ITEMS, DTYPE_CODES, SHARED_TABLE_ROPES, STAGED_NORMS,
                        BackwardVariant, natural_parts)

# Shared memory a block gets without opting in, less 1 KB for the kernel's own (its reduction
# scratch): the rest holds the weight sums. Staged variants opt in to the device's most.
SMEM_LIMIT = 47 * 1024
OWN_SMEM = 1024
WEIGHT_GRADS = ("dq_weight", "dk_weight", "dq_add_weight", "dk_add_weight")


@dataclass(frozen=True)
class Segment:
    """One launch of the backward kernel: one side's rows, of one weight stream or (dual-stream)
    two, each in blocks of its own."""

    variant: BackwardVariant
    block: tuple             # (team, rows a block); full-dim: the most, the launch takes the fewest that fill the GPU
    rows: tuple              # rows (tokens of this side) of each stream
    template: bytes          # BwdParams with null pointers
    slots: tuple             # BwdParams' pointers: (role, byte offset) or None
    grads: tuple             # each stream's weight gradient its blocks' partial sums add up to, or None
    grad_dtype: str | None   # their dtype
    width: int               # the weight's length

    def stream_grids(self, grid: int) -> tuple:
        """Blocks of each stream when the launch may take `grid` at once: as many as its rows
        need, at most its share of the grid by rows (one at least while it has rows)."""
        want = [-(-r // self.block[1]) for r in self.rows]
        if sum(want) <= grid:
            return tuple(want)
        return tuple(min(w, max(1, round(grid * r / sum(self.rows)))) if r else 0 for w, r in zip(want, self.rows))


@dataclass(frozen=True, eq=False)
class BackwardPlan:
    segments: tuple          # Segments in launch order; one reduction after them all adds up their gradients

    def workspace_floats(self, grids: list) -> int:
        """fp32 partial sums the segments write, one after another, for the grids the launch gives them."""
        return sum(g * s.width for g, s in zip(grids, self.segments) if any(s.grads))


def _unsupported(req: Request) -> None:
    """Modes whose backward is not built: named before anything runs."""
    for arg, given, why in (("norm", req.norm_type != "rms", "'rms' (LayerNorm has no backward yet)"),
                            ("positions", req.positions is not None, "None (position ids have no backward yet)"),
                            ("rope", req.rope3d is not None, "None (Rope3D has no backward yet)"),
                            ("sumsq", req.sumsq is not None, "None (tensor parallelism has no backward yet)")):
        if given:
            raise _fail(arg, f"{why}", "a value")


def _gradient_sides(req: Request, dout, dx, heads: tuple):
    """Sides of the output's gradient and of the input's, each checked like the input; and
    those arrays by role."""
    x = req.qkv if req.split else (req.qkv,)
    sides, by_role = [], {}
    for given, names in ((dout, ("dout_q", "dout_k") if req.split else ("dout",)),
                         (dx, ("dq", "dk") if req.split else ("dqkv",))):
        arrays = (given,) if isinstance(given, ArrayInfo) else tuple(given)
        if len(arrays) != len(names):
            raise _fail(names[0], "a (q, k) pair of arrays for split input" if req.split else "one array",
                        type(given).__name__)
        for role, a, like in zip(names, arrays, x):
            by_role[role] = a
            if a.shape != like.shape or a.dtype != like.dtype:
                raise _fail(role, f"shape {like.shape} and dtype {like.dtype} like the input", f"{a.shape}, {a.dtype}")
            _planner._check_last_contiguous(role, a)
            if given is dx and a.readonly:
                raise _fail(role, "a writable array", "a read-only one")
        if req.split:
            _, _, sq, sk = _planner._split_sides(*arrays, heads, req.seq_len, roles=names)
        else:
            _, _, sq, sk = _planner._packed_sides(names[0], arrays[0], req.num_heads, req.seq_len)
        for side, a in ((sq, arrays[0]), (sk, arrays[-1])):
            _planner._check_aligned(side.role, a.ptr + side.offset, (side.sb, side.ss, side.hs), a.itemsize, 16)
        sides.append((sq, sk))
    return sides, by_role


def _weight_grads(req: Request, grads: dict) -> None:
    for grad in WEIGHT_GRADS:
        g = grads.get(grad)
        if g is None:
            continue
        w = getattr(req, grad[1:])
        if w is None:
            raise _fail(grad, f"None without {grad[1:]}", "an array")
        if g.shape != w.shape or g.dtype != w.dtype:
            raise _fail(grad, f"shape {w.shape} and dtype {w.dtype} like {grad[1:]}", f"{g.shape}, {g.dtype}")
        if g.readonly:
            raise _fail(grad, "a writable array", "a read-only one")
        _planner._check_last_contiguous(grad, g)


def smem_budget(v: BackwardVariant, device: DeviceSpec) -> int:
    """Dynamic shared memory a block of v may take: SMEM_LIMIT, or the device's opt-in most if staged."""
    return max(SMEM_LIMIT, device.max_smem_per_block - OWN_SMEM) if v.stages else SMEM_LIMIT


def _most_threads(v: BackwardVariant, device: DeviceSpec) -> int:
    """A block's most threads: the variant's bound, and its shared memory within its budget."""
    per = v.smem_per_thread
    return min(v.bound(), smem_budget(v, device) // per if per else v.bound())


def _legal_team(tj: int, th: int) -> bool:
    """A row's team reduces by shuffles (a power of two <= 32 lanes) or over whole warps."""
    return (tj * th <= 32 and _planner._is_pow2(tj * th)) or tj * th % 32 == 0


def _geometry(lanes_d: int, d: int, heads: int, full: bool, dtype: str, rope: str, norm: str, shared: bool,
              device: DeviceSpec, tuning: Tuning):
    """(variant, tj, th, chunks): each head lane one chunk where a variant's block holds the row:
    of the tuning's stages if one fits (their values in flight without registers: perf-notes v28),
    else held in registers; of those, the fewest idle head slots (a team's head lanes come in
    whole warps), then the most heads a thread (more values in flight: perf-notes v19). Else (per
    head, no full-dim sum to hold) the most head lanes that fit, looping over chunks."""
    tj = _planner._next_pow2(lanes_d)
    stages = tuning.backward_stages_for(norm)
    if stages and norm not in STAGED_NORMS:
        raise _fail("tuning", f"backward_stages for the norms built staged ({', '.join(STAGED_NORMS)})",
                    f"{stages} for {norm!r} ({tuning.name})")
    built = [v for v in (BackwardVariant(dtype, rope, norm, i, shared, sg) for sg in dict.fromkeys((stages, 0))
                         for i in reversed(BACKWARD_ITEMS))
             if v.name in BACKWARD_BY_NAME and tuning.backward_items in (None, v.items)]
    fits = []
    for v in built:
        th = -(-heads // v.items)
        while not _legal_team(tj, th):
            th += 1
        if tj * th <= _most_threads(v, device):
            fits.append((v, tj, th, 1))
    if fits:   # of the first stages that fit: the fewest idle head slots, then the most heads a thread
        return min((f for f in fits if f[0].stages == fits[0][0].stages),
                   key=lambda f: (f[2] * f[0].items - heads, -f[0].items))
    if full:
        most = max(v.items * (_most_threads(v, device) // tj) for v in built)
        raise _fail("num_heads", f"at most {most} heads of {d} values for the backward of a full-dim norm", heads)
    v = built[0]
    th = min(_most_threads(v, device), tuning.backward_block) // tj
    while not _legal_team(tj, th):
        th -= 1
    return v, tj, th, -(-heads // (v.items * th))


def plan_backward(req: Request, dout, dx, grads: dict, device: DeviceSpec, tuning: Tuning) -> BackwardPlan:
    """Check a backward call and lay out its launches.

    req: the forward call (out ignored); dout: the output's gradient, dx: where the input's goes
    (ArrayInfo, or pairs for split input); grads: weight-gradient role -> ArrayInfo.
    """
    _unsupported(req)
    if req.split:
        tokens, d, q, k = _planner._split_sides(*req.qkv, req.num_heads, req.seq_len)
    else:
        tokens, d, q, k = _planner._packed_sides("qkv", req.qkv, req.num_heads, req.seq_len)
    ((gq, gk), (xq, xk)), gradients = _gradient_sides(req, dout, dx, (q.heads, k.heads))
    _planner._check_head_offsets(d, (gq, gk), (None, None))
    _weight_grads(req, grads)
    # Everything else as the forward checks it, with the input's gradient as its output.
    fwd = _planner.make_plan(dataclasses.replace(req, out=dx), device, tuning)
    if fwd.config.variant.source != "table":
        raise _fail("rotary_dim", f"None or head_dim {d} (partial rotary has no backward yet)", req.rotary_dim)
    norm = fwd.config.variant.norm
    rope = fwd.config.variant.rope
    dtype = fwd.config.variant.dtype
    vec = 16 // ITEMSIZE[dtype]
    cos_t = sin_t = None
    if rope != "none":
        cos_t, sin_t = _planner._rope_tables(req, d, q, k, tokens, vec, d)
    dual = bool(req.num_txt_tokens) and norm != "none"
    segments = []
    for i, (side, gy, gx) in enumerate(((q, gq, xq), (k, gk, xk))):
        name = "qk"[i]
        streams = [(0, req.num_txt_tokens, f"{name}_add_weight"), (req.num_txt_tokens, tokens.seq, f"{name}_weight")] \
            if dual else [(0, tokens.seq, f"{name}_weight")]
        segments.append(_segment(req, tokens, d, side, gy, gx, streams, norm, rope, dtype, (cos_t, sin_t), grads,
                                 device, tuning))
    _planner._check_device({**req.arrays(), **grads, **gradients})
    return BackwardPlan(tuple(segments))


def _segment(req, tokens, d, side, gy, gx, streams, norm, rope, dtype, tables, grads, device, tuning) -> Segment:
    """One side's launch; streams: (first position, end, weight role) of each weight stream."""
    vec = 16 // ITEMSIZE[dtype]
    lanes_d = d // (vec * natural_parts(rope))
    cos_t, sin_t = tables
    # One table row for every head: held a row, where that form is built.
    shared = rope in SHARED_TABLE_ROPES and cos_t.hs == 0 and sin_t.hs == 0
    variant, tj, th, chunks = _geometry(lanes_d, d, side.heads, norm == "full", dtype, rope, norm, shared, device, tuning)
    team = tj * th
    p = BwdParams()
    p.x_sb, p.x_ss, p.x_hs = side.sb, side.ss, side.hs
    p.dy_sb, p.dy_ss, p.dy_hs = gy.sb, gy.ss, gy.hs
    p.dx_sb, p.dx_ss, p.dx_hs = gx.sb, gx.ss, gx.hs
    _planner.table_fields(p, cos_t, sin_t, req.cos)
    for i, (begin, end, _) in enumerate(streams):
        p.span[i] = fast_div(max(1, end - begin))
        p.s_begin[i], p.rows[i] = begin, tokens.batch * (end - begin)
    p.seq = tokens.seq
    p.heads, p.tj, p.th, p.chunks, p.lanes_d, p.head_dim = side.heads, tj, th, chunks, lanes_d, d
    width = (side.heads * d if norm == "full" else d) if norm != "none" else 0
    p.width = width
    roles = [w_role for *_, w_role in streams]
    w = getattr(req, roles[0])
    if w is not None:
        p.w_dtype = DTYPE_CODES[w.dtype]   # the streams' weights share shape and dtype (the forward checks)
    p.inv_n = 1.0 / (width or d)
    p.eps = float(req.eps)
    wanted = tuple("d" + r if norm != "none" and grads.get("d" + r) is not None else None for r in roles)
    normed = w is not None and norm != "none"
    slots = ((side.role, side.offset), (gy.role, gy.offset), (gx.role, gx.offset),
             (roles[0], 0) if normed else None, (roles[-1], 0) if normed and len(roles) > 1 else None,
             ("cos", cos_t.offset * req.cos.itemsize) if cos_t is not None else None,
             ("sin", sin_t.offset * req.sin.itemsize) if cos_t is not None else None,
             ("workspace", 0) if any(wanted) else None)
    most = _most_threads(variant, device)
    rows_y = most if norm == "full" else min(most, tuning.backward_block)
    grad_dtype = next((grads[g].dtype for g in wanted if g), None)
    return Segment(variant, (team, max(1, rows_y // team)), tuple(p.rows[:len(streams)]), bytes(p), slots, wanted,
                   grad_dtype, width)


REDUCE_LANES = 32   # values a reduction block adds up (kernels/qk_norm_rope_bwd.cu reduce_slots)


def reduce_launch(streams: list) -> tuple:
    """(blocks, params) of the one reduction of a call's weight streams, each (partial sums'
    address, gradient's address, slots, width, gradient's dtype), in blocks of its own."""
    if not 0 < len(streams) <= REDUCE_STREAMS:
        raise ValueError(f"a reduction takes 1 to {REDUCE_STREAMS} weight streams, not {len(streams)}")
    p = ReduceParams()
    blocks = 0
    for i, (part, out, slots, width, dtype) in enumerate(streams):
        p.part[i], p.out[i], p.slots[i], p.width[i], p.out_dtype[i] = part, out, slots, width, DTYPE_CODES[dtype]
        p.first[i] = blocks
        blocks += -(-width // REDUCE_LANES)
    p.first[len(streams)], p.streams = blocks, len(streams)
    return blocks, bytes(p)
