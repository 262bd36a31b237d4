"""cudit.Rope3D: 3-D rotary embedding over a video latent grid, computed inside the kernel.

Pure Python (the planner imports it, no GPU): the value describes the rotation; the kernel
builds every angle from it in fp32, exactly as `angles` does here.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass


def _f32(x: float) -> float:
    """x rounded to float32."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _triple(name: str, value, kind) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,) * 3
    if not (isinstance(value, (tuple, list)) and len(value) == 3
            and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"Rope3D {name}: expected three {'ints' if kind is int else 'numbers'}, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class Rope3D:
    """Rotary embedding of a (frames, height, width) latent grid, computed in the kernel: no table.

    Each head splits into three bands of ``axes_dim`` values (in order: frames, height, width;
    together head_dim). Pair i of band a turns by ``position_a * theta_a ** (-2 i / axes_dim[a])``
    radians, where position_a is ``(cell index along axis a + offset[a]) * scale[a]``. The
    pairs are (2i, 2i+1) with interleave=True and (i, i + head_dim/2) with interleave=False,
    as for tables.

    Tokens are the grid's cells in (f, h, w) order. ``text_tokens`` more tokens sit before the
    grid (``text_first=True``, FLUX-style joint attention) or after it, all at ``text_pos``
    ((0, 0, 0): not rotated). With rope_offset (sequence parallelism), this call's token s is
    sequence token rope_offset + s.

    Args:
        grid: (F, H, W) cells, after patching.
        axes_dim: values of a head per axis; even, summing to head_dim.
        theta: the base, one for all axes or one per axis.
        offset: the position of the grid's first cell along each axis.
        scale: positions are multiplied by this along each axis (Cosmos: base_fps / fps for frames).
        text_tokens, text_first, text_pos: the tokens outside the grid.

    Model recipes: docs/models.md.
    """

    grid: tuple
    axes_dim: tuple
    theta: float | tuple = 10000.0
    offset: tuple = (0, 0, 0)
    text_tokens: int = 0
    text_first: bool = True
    text_pos: tuple = (0, 0, 0)
    scale: tuple = (1.0, 1.0, 1.0)

    def __post_init__(self):
        grid = _triple("grid", self.grid, int)
        axes = _triple("axes_dim", self.axes_dim, int)
        theta = _triple("theta", self.theta, (int, float))
        if min(grid) < 1:
            raise ValueError(f"Rope3D grid: expected positive cell counts, got {grid}")
        if any(a < 0 or a % 2 for a in axes) or sum(axes) == 0:
            raise ValueError(f"Rope3D axes_dim: expected even, non-negative values, got {axes}")
        if min(theta) <= 0:
            raise ValueError(f"Rope3D theta: expected positive bases, got {theta}")
        if not (isinstance(self.text_tokens, int) and self.text_tokens >= 0):
            raise ValueError(f"Rope3D text_tokens: expected an int >= 0, got {self.text_tokens!r}")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "axes_dim", axes)
        object.__setattr__(self, "theta", tuple(float(t) for t in theta))
        object.__setattr__(self, "offset", _triple("offset", self.offset, (int, float)))
        object.__setattr__(self, "text_pos", _triple("text_pos", self.text_pos, (int, float)))
        object.__setattr__(self, "scale", _triple("scale", self.scale, (int, float)))
        object.__setattr__(self, "text_first", bool(self.text_first))

    def fields(self) -> tuple:
        """The value as 20 numbers (a torch operator's float[] argument); from_fields inverts it."""
        return (*self.grid, *self.axes_dim, *self.theta, *self.offset, self.text_tokens, float(self.text_first),
                *self.text_pos, *self.scale)

    @classmethod
    def from_fields(cls, v) -> "Rope3D":
        v = [float(x) for x in v]
        ints = [int(x) for x in v[:6]]
        return cls(tuple(ints[:3]), tuple(ints[3:6]), tuple(v[6:9]), tuple(v[9:12]), int(v[12]), bool(v[13]),
                   tuple(v[14:17]), tuple(v[17:20]))

    @property
    def cells(self) -> int:
        f, h, w = self.grid
        return f * h * w

    @property
    def sequence_length(self) -> int:
        return self.cells + self.text_tokens

    def frequencies(self) -> list:
        """Each pair's angular frequency, frames' band first, as the kernel uses it (float32)."""
        return [_f32(theta ** (-2.0 * i / n)) for n, theta in zip(self.axes_dim, self.theta) for i in range(n // 2)]

    def positions(self, start: int, count: int) -> list:
        """(f, h, w) positions (float32) of sequence tokens start .. start + count - 1."""
        f_, h_, w_ = self.grid
        first = self.text_tokens if self.text_first else 0
        out = []
        for g in range(start, start + count):
            cell = g - first
            if 0 <= cell < self.cells:
                f, rest = divmod(cell, h_ * w_)
                h, w = divmod(rest, w_)
                out.append(tuple(_f32(_f32(float(i) + _f32(o)) * _f32(x))
                                 for i, o, x in zip((f, h, w), self.offset, self.scale)))
            else:
                out.append(tuple(_f32(t) for t in self.text_pos))
        return out

    def largest_angle(self) -> float:
        """A bound on |angle| over the sequence: the far corner cell's, and the text's."""
        top = [(abs(o) + n - 1) * abs(x) for o, n, x in zip(self.offset, self.grid, self.scale)]
        if self.text_tokens:
            top = [max(t, abs(p)) for t, p in zip(top, self.text_pos)]
        freq = self.frequencies()
        bands, i = [], 0
        for n in self.axes_dim:
            bands.append(max(freq[i:i + n // 2], default=0.0))
            i += n // 2
        return max(t * f for t, f in zip(top, bands))
