"""Building and checking one GPU case against the float64 reference (torch arrays).

Every array under test is a view into a flat buffer with guard elements around it, so the
check can compare the whole buffer: the Q and K elements against the reference within
tolerance, every other byte (V, padding, guards) bit for bit. Out-of-place outputs are
poisoned with NaN beforehand so an element the kernel never wrote cannot pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from cudit.reference import qk_norm_rope_ref

GUARD = 64  # elements before and after every tested view
# |out - ref| <= ATOL + RTOL * |ref|: RTOL is the output dtype's half-ulp, relative.
RTOL = {"bf16": 2.0**-8, "f16": 2.0**-11, "f32": 1e-6}
ATOL = {"bf16": 1e-5, "f16": 1e-5, "f32": 1e-6}
# Values a normal draw never gives (Case.specials), each planted at a few Q and K elements: inf
# and NaN make their rows NaN where the reference's do; fp16's largest, smallest subnormal and
# smallest normal, and -0, must come out within tolerance.
SPECIAL_VALUES = (math.inf, -math.inf, math.nan, 65504.0, -65504.0, 2.0**-24, -(2.0**-14), -0.0)


def torch_dtype(name):
    import torch

    return {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[name]


@dataclass(frozen=True)
class Case:
    name: str = ""
    dtype: str = "bf16"
    split: bool = False
    ndim: int = 3
    B: int = 1
    S: int = 33
    heads: tuple = (4, 4, 4)      # Hq, Hk, Hv (Hv unused when split)
    D: int = 128
    norm: str = "head"            # head / full / none
    rope: str = "interleaved"     # interleaved / half / none
    table: str = "shared"         # shared / perhead
    table_form: str = "2d"        # 2d / 3d / 4d
    table_rows: str = "S"         # S: one row per position, broadcast over the batch; T: one per token
    table_dtype: str = "f32"
    half_table: bool = False      # rotate_half 4-D tables of half heads [Bc, S, Hc, D/2] (LTX-2's split RoPE)
    table_pad: int = 0            # extra elements per table row (strided rows)
    w_dtype: str = "f32"
    n_txt: int = 0
    seq_len_arg: bool = False     # 2-D input with seq_len=S
    out: bool = False
    pad: int = 0                  # extra elements per token row (strided views)
    bshd5: bool = False           # split q, k as [B, S, H, D] views of a [B, S, 3, H, D] buffer
    eps: float = 1e-6
    layer: bool = False           # LayerNorm (norm="layer")
    bias: bool = True             # with LayerNorm: biases given
    rotary: int = 0               # partial rotary: a 2-D [rows, rotary] table (0: the whole head)
    positions: str = ""           # "int32" / "int64": position ids into a [max_pos, width] table,
    pos_2d: bool = False          #   [B, S] (else [T]), some out of range (clamped)
    grid: tuple = ()              # 3-D RoPE in the kernel over an (F, H, W) grid: no table
    axes: tuple = ()              #   its axes_dim (default: a WAN-like split of D)
    grid_text: int = 0            #   text tokens outside the grid, before it unless text_last
    text_last: bool = False
    rope_offset: int | None = None  # with grid: this call's tokens start at this sequence token
    specials: bool = False        # SPECIAL_VALUES planted among the random Q and K values
    seed: int = field(default=0, compare=False)

    def __str__(self):
        return self.name or repr(self)


class Guarded:
    """A flat buffer and a function that cuts the tested view(s) out of any such buffer."""

    def __init__(self, numel, make_view, region):
        self.numel = numel + 2 * GUARD
        self.make_view = lambda flat: make_view(flat[GUARD:GUARD + numel])
        self._region = region     # marks the elements that should change in an unguarded bool buffer
        self._inner = numel

    def mark(self, mask):
        self._region(mask[GUARD:GUARD + self._inner])


def _layouts(c: Case):
    """Guarded buffers for the input (and, if out=, the output) of a case."""
    hq, hk, hv = c.heads
    d = c.D
    if c.split and c.bshd5:
        assert hq == hk
        numel = c.B * c.S * 3 * hq * d

        def view(flat):
            five = flat.view(c.B, c.S, 3, hq, d)
            return five[:, :, 0], five[:, :, 1]

        def region(mask):
            q, k = view(mask)
            q.fill_(True)
            k.fill_(True)
        return Guarded(numel, view, region)
    if c.split:
        wq, wk = hq * d, hk * d
        row = wq + wk + 2 * c.pad
        numel = c.B * c.S * row

        def cut(flat, start, width, heads):
            x = flat.view(c.B, c.S, row)[..., start:start + width]
            if c.ndim == 2:
                return x.reshape(c.B * c.S, width)
            if c.ndim == 4:
                return x.unflatten(-1, (heads, d))
            return x

        def view(flat):
            return cut(flat, 0, wq, hq), cut(flat, wq + c.pad, wk, hk)

        def region(mask):
            for x in view(mask):
                x.fill_(True)
        return Guarded(numel, view, region)
    w = (hq + hk + hv) * d
    row = w + c.pad
    numel = c.B * c.S * row

    def view(flat):
        x = flat.view(c.B, c.S, row)[..., :w]
        if c.ndim == 2:
            return x.reshape(c.B * c.S, w)
        if c.ndim == 4:
            return x.unflatten(-1, (hq + hk + hv, d))
        return x

    def region(mask):
        x = mask.view(c.B, c.S, row)[..., :(hq + hk) * d]
        x.fill_(True)
    return Guarded(numel, view, region)


def _to(x, dtype, device="cuda"):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device=device, dtype=torch_dtype(dtype))


def _weights(c: Case, rng, side_heads):
    if c.norm == "none":
        return None
    n = c.D if c.norm == "head" else side_heads * c.D
    return _to(rng.uniform(0.5, 1.5, n), c.w_dtype)


def _tables(c: Case, rng):
    if c.rope == "none":
        return None, None
    hq = c.heads[0]
    hc = 1 if c.table == "shared" else hq
    bc = 1 if c.table_rows == "S" else c.B
    shape = {"2d": (bc * c.S, hc * c.D), "3d": (bc, c.S, hc * c.D), "4d": (bc, c.S, hc, c.D)}[c.table_form]
    if c.half_table:
        shape = (bc, c.S, hc, c.D // 2)
    out = []
    for fn in (np.cos, np.sin):
        full = list(shape)
        full[-1] += c.table_pad
        x = fn(rng.uniform(-math.pi, math.pi, full))
        t = _to(x, c.table_dtype)
        out.append(t[..., :shape[-1]] if c.table_pad else t)
    return out


def _rope_source(c: Case, rng):
    """Keyword arguments for the case's rotation source beyond plain tables (and its tables)."""
    import torch

    import cudit

    if c.grid:
        hw = 2 * (c.D // 6)   # WAN's split: height and width a third each, frames the rest
        axes = c.axes or (c.D - 2 * hw, hw, hw)
        rope = cudit.Rope3D(c.grid, axes, theta=(10000.0, 10000.0, 256.0), offset=(0, 1, 2),
                            text_tokens=c.grid_text, text_first=not c.text_last, text_pos=(0, 0, 0),
                            scale=(1.5, 1.0, 1.0))
        return {"rope": rope, "rope_offset": c.rope_offset}, None, None
    width = c.rotary or c.D
    rows = c.S + 7 if c.positions else (c.S if c.table_rows == "S" else c.B * c.S)
    tabs = [_to(fn(rng.uniform(-math.pi, math.pi, (rows, width))), c.table_dtype) for fn in (np.cos, np.sin)]
    extra = {}
    if c.positions:
        ids = rng.integers(-3, rows + 3, c.B * c.S)          # a few out of range: clamped
        shape = (c.B, c.S) if c.pos_2d else (c.B * c.S,)
        extra["positions"] = torch.from_numpy(ids.reshape(shape)).to(
            device="cuda", dtype=torch.int32 if c.positions == "int32" else torch.int64)
    return extra, tabs[0], tabs[1]


def _plant_specials(data, lay: Guarded, rng, each: int = 3):
    """SPECIAL_VALUES, each at `each` random Q/K elements of a case's buffer."""
    import torch

    mask = torch.zeros(lay.numel, dtype=torch.bool)
    lay.mark(mask)
    at = rng.choice(torch.nonzero(mask).flatten().numpy(), size=each * len(SPECIAL_VALUES), replace=False)
    values = torch.tensor(np.repeat(SPECIAL_VALUES, each), dtype=data.dtype)
    data[torch.from_numpy(at).to(data.device)] = values.to(data.device)


def run_case(c: Case, qk_norm_rope, backend="torch"):
    """Run one case through qk_norm_rope and check it; returns the worst error / tolerance."""
    import torch

    rng = np.random.default_rng(abs(hash(c)) % 2**32)
    lay = _layouts(c)
    hq, hk, _ = c.heads
    data = _to(rng.standard_normal(lay.numel) * 2.0, c.dtype)
    if c.specials:
        _plant_specials(data, lay, rng)
    original = data.clone()
    x = lay.make_view(data)
    qw, kw = _weights(c, rng, hq), _weights(c, rng, hk)
    qa = ka = None
    if c.n_txt:
        qa, ka = _weights(c, rng, hq), _weights(c, rng, hk)
    biases = {}
    if c.layer and c.bias:   # LayerNorm biases, shaped like the weights (centred on 0)
        biases = {role: w - 1.0 for role, w in (("q_bias", qw), ("k_bias", kw), ("q_add_bias", qa), ("k_add_bias", ka))
                  if w is not None}
    if c.rotary or c.positions or c.grid:
        source, cos, sin = _rope_source(c, rng)
    else:
        source, (cos, sin) = {}, _tables(c, rng)
    heads = (hq, hk) if c.split else c.heads
    kwargs = dict(num_heads=heads if (c.ndim != 4 or not c.split) else None, eps=c.eps,
                  interleave=c.rope != "half", q_add_weight=qa, k_add_weight=ka, num_txt_tokens=c.n_txt,
                  seq_len=c.S if c.seq_len_arg else None)
    if c.layer:
        kwargs.update(norm="layer", **biases)
    kwargs.update(source)
    out_buf = out_view = None
    if c.out:
        out_lay = _layouts(replace(c, pad=c.pad + 8))   # the output has its own strides
        out_buf = torch.empty(out_lay.numel, dtype=torch_dtype(c.dtype), device="cuda")
        out_buf.view(torch.uint8).fill_(0xFF)           # NaN in every float dtype
        poison = out_buf.clone()
        out_view = out_lay.make_view(out_buf)
    if backend == "cupy":
        import cupy

        conv = (lambda t: None if t is None else
                (tuple(cupy.from_dlpack(y) for y in t) if isinstance(t, tuple) else cupy.from_dlpack(t)))
        args = [conv(a) for a in (x, qw, kw, cos, sin)]
        kwargs.update(q_add_weight=conv(qa), k_add_weight=conv(ka), **{r: conv(b) for r, b in biases.items()})
        if "positions" in source:
            kwargs["positions"] = conv(source["positions"])
        ret = qk_norm_rope(*args, out=conv(out_view), **kwargs)
        cupy.cuda.get_current_stream().synchronize()
    else:
        ret = qk_norm_rope(x, qw, kw, cos, sin, out=out_view, **kwargs)
    torch.cuda.synchronize()
    assert ret is (out_view if c.out else x) or backend == "cupy"

    # The reference, on host copies of exactly the values the kernel read.
    host = original.double().cpu()
    host_x = lay.make_view(host)
    np_x = tuple(t.numpy() for t in host_x) if c.split else host_x.numpy()
    h = lambda t: None if t is None else t.double().cpu().numpy()  # noqa: E731
    with np.errstate(invalid="ignore", over="ignore"):     # inf * 0 of planted specials
        ref = qk_norm_rope_ref(np_x, h(qw), h(kw), h(cos), h(sin),
                               num_heads=heads if c.ndim != 4 or not c.split else None, eps=c.eps,
                               interleave=c.rope != "half", q_add_weight=h(qa), k_add_weight=h(ka),
                               num_txt_tokens=c.n_txt, seq_len=c.S if c.seq_len_arg else None,
                               norm="layer" if c.layer else "rms", **{r: h(b) for r, b in biases.items()},
                               **{r: (v.cpu().numpy() if r == "positions" else v)
                                  for r, v in source.items()})

    if c.out:
        expected = poison.double().cpu()        # NaN outside the region, as the kernel must leave it
        result, result_lay, before = out_buf, out_lay, poison
        assert torch.equal(data.view(torch.uint8), original.view(torch.uint8)), "input changed by out-of-place call"
    else:
        expected = host.clone()
        result, result_lay, before = data, lay, original
    ev = result_lay.make_view(expected)
    if c.split:
        for t, r in zip(ev, ref):
            t.copy_(torch.from_numpy(r))
    else:
        ev.copy_(torch.from_numpy(ref))
    mask = torch.zeros(result_lay.numel, dtype=torch.bool)
    result_lay.mark(mask)
    assert int(mask.sum()) > 0

    got = result.double().cpu()
    # Outside the region: bit for bit as before (V, padding, guards).
    bits = torch.int32 if c.dtype == "f32" else torch.int16
    raw_before, raw_after = before.cpu().view(bits), result.cpu().view(bits)
    outside = ~mask
    assert torch.equal(raw_after[outside], raw_before[outside]), "bytes outside Q/K changed"
    # Inside: NaN exactly where the reference is, elsewhere finite and within its tolerance.
    g, e = got[mask], expected[mask]
    nan = torch.isnan(e)
    assert torch.equal(torch.isnan(g), nan), (f"{int((torch.isnan(g) & ~nan).sum())} NaN outputs where the reference "
                                              f"has none (unwritten?), {int((nan & ~torch.isnan(g)).sum())} lost")
    g, e = g[~nan], e[~nan]
    assert torch.isfinite(g).all(), f"{int((~torch.isfinite(g)).sum())} infinite outputs"
    tol = ATOL[c.dtype] + RTOL[c.dtype] * e.abs()
    err = (g - e).abs()
    worst = float((err / tol).max())
    assert worst <= 1.0, (f"{int((err > tol).sum())} of {g.numel()} elements out of tolerance; "
                          f"max |err| {float(err.max()):.3g}, worst err/tol {worst:.3g}")
    return worst


def small_inputs(torch, dtype=None, B=2, S=33, H=4, D=128, seed=0):
    """A small packed bf16 qkv [B, S, 3*H*D] with per-head weights and an [S, D] table (torch)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    dtype = dtype or torch.bfloat16
    qkv = torch.randn(B, S, 3 * H * D, device="cuda", generator=g).to(dtype)
    qw = torch.rand(D, device="cuda", generator=g) + 0.5
    kw = torch.rand(D, device="cuda", generator=g) + 0.5
    ang = torch.rand(S, D, device="cuda", generator=g) * 6.2831853
    return qkv, qw, kw, torch.cos(ang), torch.sin(ang)


def tuned(**knobs):
    """Plan GPU 0's launches under its table with these fields changed; returns the undo."""
    from cudit import _launch

    base = _launch.device_state(0).tuning
    before = _launch.set_tuning(base.with_knobs(**knobs))
    return lambda: _launch.set_tuning(before)


def plans_launched_by(run, *args) -> list:
    """run(*args) on fresh launchers; the plans they were built for."""
    from cudit import _launch

    _launch._LAUNCHERS.clear()
    run(*args)
    return [key[1] for key in _launch._LAUNCHERS]
