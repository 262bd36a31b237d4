"""What the planner knows of a GPU (DeviceSpec) and the launch choices tuned for it (Tuning).

Pure data: the launcher reads a DeviceSpec off the device, CPU tests write one by hand. The
numbers in a Tuning are measured choices, not limits; docs/dev/perf-notes.md has the
measurements behind each.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


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
    # Threads a block when several rows share one; per-head two-vector items (96 registers) less.
    block_target: int = 256
    block_target_parts_per_head: int = 192
    # Row groups a block takes in turn, by (norm, vectors the rope needs): (most, grid size in
    # groups below which a block takes one). Blocks of one group ask L2 for rows ahead instead.
    row_iters: tuple = ((("full", 1), (2, 48 * 1024)), (("full", 2), (1, 0)), (("head", 1), (1, 0)),
                        (("none", 1), (4, 0)), (("head", 2), (8, 0)), (("none", 2), (8, 0)))
    full_grid: int = 1024               # row groups a block take only once the grid keeps this many blocks
    # Rows ahead, in waves of resident blocks: asked after a row's loads, after its stores, and by
    # three-vector items (which request the next vector's constants early).
    ahead_waves_in_row: float = 0.5
    ahead_waves_after_row: float = 1.25
    ahead_waves_three_vector: float = 0.875
    small_grid_threads: int = 128 * 1024  # launch-bound grids up to this many threads take K = 2
    one_row_blocks_up_to: int = 16 * 1024  # grids of at most this many rows give each row a block
    # Knobs for sweeps (the benchmark's options): force heads a thread, or row groups a block.
    heads_per_thread: int | None = None
    fixed_row_iters: int | None = None
    name: str = "H100 (hand-tuned)"

    def row_iters_for(self, norm: str, rope_parts: int) -> tuple:
        return dict(self.row_iters)[(norm, rope_parts)]

    def with_knobs(self, **knobs) -> "Tuning":
        return replace(self, **knobs)


H100 = Tuning()


def tuning_for(device: DeviceSpec) -> Tuning:
    """The table for a device: today the one tuned on the H100 serves every card."""
    return H100
