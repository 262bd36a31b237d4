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
from ._params import BWD_POINTERS, REDUCE_STREAMS, BwdParams, ReduceParams, bwd_pointer, fast_div
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
    """One launch of the backward kernel: one side's rows, or both sides' where their rows are
    alike, each of one weight stream or (dual-stream) two, each stream of a side in blocks of its own."""

    variant: BackwardVariant
    block: tuple             # (team, rows a block); full-dim: the most, the launch takes the fewest that fill the GPU
    rows: tuple              # rows (tokens of a side) of each stream, the same for each side
    template: bytes          # BwdParams with null pointers
    slots: tuple             # BwdParams' pointers: (role, byte offset) or None
    grads: tuple             # for each side, each stream: the weight gradient its blocks' partial sums add up to, or None
    grad_dtype: str | None   # their dtype
    width: int               # the weight's length
    sides: int = 1           # sides in the launch: Q's blocks, then K's

    def stream_grids(self, grid: int) -> tuple:
        """Blocks of each side's streams (side-major) when the launch may take `grid` at once: as
        many as its rows need, at most its share of the grid by rows (one at least while it has rows)."""
        rows = self.rows * self.sides
        want = [-(-r // self.block[1]) for r in rows]
        if sum(want) <= grid:
            return tuple(want)
        return tuple(min(w, max(1, round(grid * r / sum(rows)))) if r else 0 for w, r in zip(want, rows))

    def side_splits(self, grids: tuple) -> tuple:
        """(blocks of the first side, each side's blocks of its first stream) for BwdParams."""
        n = len(self.rows)
        return sum(grids[:n]), tuple(grids[i * n] for i in range(self.sides))


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
              half: bool, device: DeviceSpec, tuning: Tuning):
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
    built = [v for v in (BackwardVariant(dtype, rope, norm, i, shared, sg, half) for sg in dict.fromkeys((stages, 0))
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
    lanes_d = d // (vec * natural_parts(rope))
    # One table row for every head: held a row, where that form is built.
    shared = rope in SHARED_TABLE_ROPES and cos_t.hs == 0 and sin_t.hs == 0
    half = cos_t is not None and cos_t.half
    sides = [_Side(name, side, gy, gx, _geometry(lanes_d, d, side.heads, norm == "full", dtype, rope, norm, shared,
                                                 half, device, tuning), getattr(req, f"{name}_weight"))
             for name, side, gy, gx in (("q", q, gq, xq), ("k", k, gk, xk))]
    # Both sides in one launch where their rows are alike (not under GQA): one ramp and one tail.
    groups = [sides] if _alike(*sides) else [[s] for s in sides]
    segments = tuple(_segment(req, tokens, d, lanes_d, group, dual, norm, (cos_t, sin_t), grads, device, tuning)
                     for group in groups)
    _planner._check_device({**req.arrays(), **grads, **gradients})
    return BackwardPlan(segments)


@dataclass(frozen=True)
class _Side:
    name: str                # "q" or "k"
    x: object                # _planner side views of the input, the output's gradient and the input's
    dy: object
    dx: object
    geometry: tuple          # _geometry's (variant, tj, th, chunks)
    weight: ArrayInfo | None


def _alike(a: _Side, b: _Side) -> bool:
    """Whether two sides share a launch: the same heads, geometry and weight dtype (BwdParams' shared fields)."""
    dtypes = [None if s.weight is None else s.weight.dtype for s in (a, b)]
    return a.x.heads == b.x.heads and a.geometry == b.geometry and dtypes[0] == dtypes[1]


def _segment(req, tokens, d, lanes_d, group: list, dual: bool, norm: str, tables, grads, device, tuning) -> Segment:
    """One launch of a group's sides (one, or Q and K alike)."""
    cos_t, sin_t = tables
    variant, tj, th, chunks = group[0].geometry
    heads = group[0].x.heads
    p = BwdParams()
    slots = [None] * BWD_POINTERS
    wanted = []
    for i, s in enumerate(group):
        p.x_sb[i], p.x_ss[i], p.x_hs[i] = s.x.sb, s.x.ss, s.x.hs
        p.dy_sb[i], p.dy_ss[i], p.dy_hs[i] = s.dy.sb, s.dy.ss, s.dy.hs
        p.dx_sb[i], p.dx_ss[i], p.dx_hs[i] = s.dx.sb, s.dx.ss, s.dx.hs
        for field, view in (("x", s.x), ("dy", s.dy), ("dx", s.dx)):
            slots[bwd_pointer(field, i)] = (view.role, view.offset)
        roles = [f"{s.name}_add_weight", f"{s.name}_weight"] if dual else [f"{s.name}_weight"]
        normed = getattr(req, roles[0]) is not None and norm != "none"
        for j, role in enumerate(roles):
            if normed:
                slots[bwd_pointer("w", i, j)] = (role, 0)
            wanted.append("d" + role if normed and grads.get("d" + role) is not None else None)
    _planner.table_fields(p, cos_t, sin_t, req.cos)
    if cos_t is not None:
        slots[bwd_pointer("cos")] = ("cos", cos_t.offset * req.cos.itemsize)
        slots[bwd_pointer("sin")] = ("sin", sin_t.offset * req.sin.itemsize)
    if any(wanted):
        slots[bwd_pointer("part")] = ("workspace", 0)
    streams = [(0, req.num_txt_tokens), (req.num_txt_tokens, tokens.seq)] if dual else [(0, tokens.seq)]
    for i, (begin, end) in enumerate(streams):
        p.span[i] = fast_div(max(1, end - begin))
        p.s_begin[i], p.rows[i] = begin, tokens.batch * (end - begin)
    p.seq = tokens.seq
    p.heads, p.tj, p.th, p.chunks, p.lanes_d, p.head_dim = heads, tj, th, chunks, lanes_d, d
    width = (heads * d if norm == "full" else d) if norm != "none" else 0
    p.width = width
    if group[0].weight is not None:
        p.w_dtype = DTYPE_CODES[group[0].weight.dtype]   # a side's streams share shape and dtype (the forward checks)
    p.inv_n = 1.0 / (width or d)
    p.eps = float(req.eps)
    most = _most_threads(variant, device)
    team = tj * th
    rows_y = most if norm == "full" else min(most, tuning.backward_block)
    grad_dtype = next((grads[g].dtype for g in wanted if g), None)
    return Segment(variant, (team, max(1, rows_y // team)), tuple(p.rows[:len(streams)]), bytes(p), tuple(slots),
                   tuple(wanted), grad_dtype, width, len(group))


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
