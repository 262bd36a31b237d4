"""What the planner knows of a GPU (DeviceSpec) and the launch choices tuned for it (Tuning).

A Tuning is data: a JSON table per card, shipped under cudit/tuning/ or written by
`python -m cudit tune` into the user's table folder, which wins. A card with no table gets
the analytic default, whose sizes follow the device's SM count and resident threads.
docs/dev/perf-notes.md has the measurements behind each number.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "tuning"


@dataclass(frozen=True)
class DeviceSpec:
    arch: tuple                         # (major, minor)
    sms: int = 132
    l2_bytes: int = 50 * 2**20
    bandwidth: float = 3.35e12          # bytes/s of device memory (clock x bus width x 2)
    threads_per_sm: int = 2048
    regs_per_sm: int = 65536
    max_threads_per_block: int = 1024
    max_regs_per_block: int = 65536
    max_smem_per_block: int = 48 * 1024  # with opt-in
    name: str = ""


@dataclass(frozen=True)
class Tuning:
    # Threads a block when several rows share one, by "norm/vectors an item holds"; per-head
    # items of several vectors hold 96 registers: smaller blocks keep more warps resident.
    block_targets: tuple = (("head/1", 256), ("head/2", 192), ("head/3", 192), ("full/1", 256), ("full/2", 256),
                            ("none/1", 256), ("none/2", 256), ("sumsq/1", 256))
    # Row groups a block takes in turn, by (norm, vectors the rope needs): (most, grid size in
    # groups below which a block takes one). Blocks of one group ask L2 for rows ahead instead.
    # "sumsq": tensor parallelism's sums of squares (reads only); "-grid": 3-D RoPE computed in the
    # kernel, which reads no table.
    row_iters: tuple = (("full/1", (2, 48 * 1024)), ("full/2", (1, 0)), ("head/1", (1, 0)), ("none/1", (4, 0)),
                        ("head/2", (8, 0)), ("none/2", (8, 0)), ("sumsq/1", (1, 0)), ("full-grid/1", (1, 0)),
                        ("full-grid/2", (1, 0)), ("head-grid/1", (1, 0)), ("head-grid/2", (1, 0)),
                        ("none-grid/1", (1, 0)), ("none-grid/2", (1, 0)))
    full_grid: int = 1024               # row groups a block take only once the grid keeps this many blocks
    # Rows ahead, in waves of resident blocks: asked after a row's loads, after its stores, and by
    # three-vector items (which request the next vector's constants early).
    ahead_waves_in_row: float = 0.5
    ahead_waves_after_row: float = 1.25
    ahead_waves_three_vector: float = 0.875
    # Rows whose cos/sin are per head (LTX-2): their tables double what crosses L2, which rows
    # asked ahead then compete with (perf-notes v38).
    ahead_waves_head_tables: float = 0.5
    small_grid_threads: int = 128 * 1024  # launch-bound grids up to this many threads take K = 2
    one_row_blocks_up_to: int = 16 * 1024  # grids of at most this many rows give each row a block
    # The backward's threads a block for rows with no block-wide sum (per head, no norm): full-dim
    # rows take the fewest rows that keep the most threads resident (perf-notes v20).
    backward_block: int = 256
    # The backward's heads a thread holds (sweeps; None: the planner's choice).
    backward_items: int | None = None
    # The backward's x and dy by norm: staged through shared memory (2), or held in registers (0,
    # the norms not listed).
    backward_stages: tuple = (("full", 2),)
    # Knobs for sweeps (the benchmark's options): force heads a thread, or row groups a block.
    heads_per_thread: int | None = None
    fixed_row_iters: int | None = None
    name: str = "analytic default"

    def row_iters_for(self, norm: str, rope_parts: int) -> tuple:
        return self._entry("row_iters", f"{norm}/{rope_parts}")

    def block_target_for(self, norm: str, parts: int) -> int:
        return self._entry("block_targets", f"{norm}/{parts}")

    def backward_stages_for(self, norm: str) -> int:
        return dict(self.backward_stages).get(norm, 0)

    def _entry(self, field: str, kind: str):
        """A kind's entry; the default's where a table predates that kind."""
        found = dict(getattr(self, field)).get(kind)
        return dict(getattr(Tuning, field))[kind] if found is None else found

    def with_kind(self, field: str, kind: str, value) -> "Tuning":
        """This table with one kind's entry ("norm/parts") of a per-kind field set to value."""
        return replace(self, **{field: tuple((k, value if k == kind else v) for k, v in getattr(self, field))})

    def with_knobs(self, **knobs) -> "Tuning":
        return replace(self, **knobs)

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("heads_per_thread", "fixed_row_iters", "backward_items")}
        out["row_iters"] = {kind: f"{most} below {below}" for kind, (most, below) in self.row_iters}
        out["block_targets"] = dict(self.block_targets)
        out["backward_stages"] = dict(self.backward_stages)
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Tuning":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"tuning table: unknown fields {sorted(unknown)}")
        data = dict(data)
        if "row_iters" in data:   # "norm/parts": "most below groups"
            data["row_iters"] = tuple((k, tuple(int(x) for x in v.split(" below "))) for k, v in data["row_iters"].items())
        if "block_targets" in data:
            data["block_targets"] = tuple((k, int(v)) for k, v in data["block_targets"].items())
        if "backward_stages" in data:
            data["backward_stages"] = tuple((k, int(v)) for k, v in data["backward_stages"].items())
        return cls(**data)


def analytic(device: DeviceSpec) -> Tuning:
    """The default for a card with no table: the sizes that were tuned on a 132-SM card with
    2048 resident threads an SM, scaled by its SM count and resident threads."""
    wave = device.sms * device.threads_per_sm        # threads resident at once
    long_lived = (4, 372 * device.sms)   # grids of over ~370 row groups an SM: four each
    return Tuning().with_kind("row_iters", "full/1", long_lived).with_kind("row_iters", "head/1", long_lived).with_knobs(
        full_grid=8 * device.sms, small_grid_threads=wave // 2, one_row_blocks_up_to=128 * device.sms,
        name=f"analytic default for {device.sms} SMs")


def device_key(device: DeviceSpec) -> str:
    """A card's table file name: its name in lower case, runs of other characters as '-'."""
    return re.sub(r"[^a-z0-9]+", "-", device.name.lower()).strip("-") or "sm_%d%d" % tuple(device.arch)


def user_dir() -> Path:
    """Where `python -m cudit tune` writes tables: $CUDIT_TUNING_DIR, else ~/.cache/cudit/tuning."""
    return Path(os.environ.get("CUDIT_TUNING_DIR") or Path.home() / ".cache" / "cudit" / "tuning")


def table_path(device: DeviceSpec) -> Path | None:
    """The table this card uses: the user's, else the shipped one, else None (analytic)."""
    for folder in (user_dir(), SHIPPED):
        path = folder / f"{device_key(device)}.json"
        if path.is_file():
            return path
    return None


def tuning_for(device: DeviceSpec) -> Tuning:
    """The launch choices for a card: its table, or the analytic default."""
    path = table_path(device)
    if path is None:
        return analytic(device)
    table = Tuning.from_json(json.loads(path.read_text()))
    return replace(table, name=f"{table.name} ({path.name})")
