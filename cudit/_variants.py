"""Every kernel variant cudit builds, and the launch bound each is compiled with.

One table for the build (build_cubins.py loads this file by path) and the runtime (the planner
picks a Variant, the launcher looks it up by its name). No imports beyond the standard
library: the build runs it before anything is installed. Why each bound is what it is, with
the measurements: docs/dev/perf-notes.md.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")
PTX_ARCH = "compute_80"   # the oldest virtual arch: the driver JITs it for GPUs newer than every cubin
PTX_SOURCE = "sm_80"      # the shipped PTX is this cubin's front-end output, its launch bounds included
FAMILY = "qk_norm_rope"

ACT_DTYPES = ("bf16", "f16", "f32")
# Codes shared with kernels/cudit_common.cuh (DTypeCode) and qk_norm_rope_params.h (RopeMode).
DTYPE_CODES = {"f32": 0, "f16": 1, "bf16": 2}
ROPE_CODES = {"none": 0, "interleaved": 1, "half": 2}
NORM_CODES = {"none": 0, "head": 1, "full": 2}
# Tensor-parallel full-dim rows (StatsMode): "sumsq" writes each row's sum of squares over the
# local heads and no output; "given" normalises by all-reduced sums; "exchange" trades the local
# sums with the other ranks in the same pass (Params.xchg). Suffixes of their variants.
STATS_CODES = {"": 0, "sumsq": 1, "given": 2, "exchange": 3}
# Where the rotation comes from (RopeSource): cos/sin rows by token; the same tables, or rows
# picked by position ids, rotating only the table's width (partial rotary); or 3-D RoPE angles
# computed from each token's place on a video grid (no table). Suffixes of the last two.
ROPE_SOURCES = {"table": 0, "pos": 1, "grid": 2}
TABLE_SHARED, TABLE_ONCE, TABLE_HALF = 1, 2, 4   # kernels/qk_norm_rope.cu TableKind flags
EVERY_NONE, EVERY_TOO, EVERY_ONLY = 0, 1, 2   # kernels/qk_norm_rope.cu EveryPath
POS_TABLES = ("f32", "x16")
# fp8 output (float8_e4m3fn or float8_e5m2, told apart at launch) from 16-bit activations, V
# quantised in the same launch: two copies of every plain variant of these dtypes, with scales
# (suffix _f8) and also tracking the amax of |y| (_f8a, whose slots a head take registers).
FP8_OUT = "f8"
FP8_AMAX_OUT = "f8a"
OUT_CODES = {"": 0, FP8_OUT: 1, FP8_AMAX_OUT: 2}   # kernels/qk_norm_rope_params.h OutKind
FP8_IN_DTYPES = ("bf16", "f16")
# Their bounds where the base variant's spilled (a scale a head held), by (vectors, norm, K), where
# the amax's slots spilled beyond that, and where fp16's conversions spilled beyond both.
FP8_MAX_THREADS = {(1, "none", 2): 768, (1, "none", 1): 768, (2, "head", 2): 512, (3, "head", 0): 512,
                   (1, "full", 4): 896, (1, "full", 3): 768, (2, "full", 2): 640, (3, "head", 1): 768}
FP8_AMAX_MAX_THREADS = {(1, "full", 4): 768, (1, "head", 4): 768}
FP8_F16_MAX_THREADS = {(1, "full", 4): 640}
# Targets without an fp8 conversion instruction (sm_80, sm_86 and the compute_80 PTX) call the
# emulated conversion (kernels/qk_norm_rope.cu fp8x2): the bound where the call's registers spilled.
FP8_CALL_ARCHS = ("sm_80", "sm_86", "")
FP8_CALL_MAX_THREADS = {(1, "full", 4): 640, (1, "none", 4): 640, (3, "head", 1): 512, (1, "head", 4): 768}
C_TYPES = {"f32": "float", "f16": "__half", "bf16": "__nv_bfloat16"}
# cos/sin storage: fp32, the activations' own 16-bit type, or (x16) 16 bits whose kind is a
# launch parameter, for the pairings no model uses (a bf16 table with f16 data, say): those get
# only the looping variants, correct but not tuned.
TABLE_CLASSES = {**C_TYPES, "x16": "cudit::Bits16"}

# Heads a thread holds in registers (0: a loop over heads), and the most by vectors an item holds:
# rotate_half items (two vectors) hold at most two heads, three-vector items one.
HEADS_PER_THREAD = (1, 2, 3, 4, 0)
MAX_K = {1: 4, 2: 2, 3: 1}

# Launch bound (threads a block) by (vectors an item holds, heads a thread): the largest for
# which no architecture spills; the bound caps registers at 65536 / threads.
MAX_THREADS = {(1, 1): 1024, (1, 2): 768, (1, 3): 512, (1, 4): 512, (1, 0): 768,
               (2, 1): 512, (2, 2): 512, (2, 0): 512, (3, 1): 640, (3, 0): 640}
# Tighter bounds (more threads resident) where the variant fits them, by (vectors, norm, K).
MAX_THREADS_BY_NORM = {(1, "full", 4): 768, (1, "full", 3): 768, (1, "full", 2): 768, (1, "none", 4): 768,
                       (1, "none", 2): 1024, (1, "head", 1): 768, (1, "head", 4): 768, (2, "head", 2): 640,
                       (3, "head", 1): 896}
# By (dtype, vectors, norm, K), where one activation dtype fits another bound: fp32 per-head rows of
# four heads keep their table in registers; bf16 full-dim rows fit 64 registers (fp16's spill there).
MAX_THREADS_BY_DTYPE = {("f32", 1, "head", 4): 512, ("bf16", 1, "full", 4): 1024, ("bf16", 1, "full", 3): 1024}
# Tensor-parallel full-dim variants (STATS_CODES) hold the sums' exchange as well: at most this bound.
STATS_MAX_THREADS = 768
# Architectures whose ptxas spills a variant at the common bound get a looser one, by (arch,
# vectors, norm, K).
ARCH_MAX_THREADS = {("sm_100", 1, "full", 4): 512, ("sm_100", 1, "full", 3): 640, ("sm_100", 1, "full", 2): 640,
                    ("sm_100", 1, "head", 4): 640,
                    ("sm_120", 1, "full", 4): 512, ("sm_120", 1, "full", 3): 640, ("sm_120", 1, "full", 2): 640,
                    ("sm_120", 2, "head", 2): 512, ("sm_100", 3, "head", 0): 512, ("sm_120", 3, "head", 0): 512,
                    ("sm_86", 3, "head", 1): 640, ("sm_89", 3, "head", 1): 640,
                    ("sm_80", 3, "head", 0): 384, ("sm_86", 3, "head", 0): 384, ("sm_89", 3, "head", 0): 384}
# Variants built a second time for one [S, D] cos/sin slice shared by all heads (suffix _st),
# by (rope, norm, K): their bound, and per architecture where that one spilled.
SHARED_TABLE_BOUNDS = {("half", "full", 2): 896, ("interleaved", "head", 4): 896}
SHARED_TABLE_ARCH_BOUNDS = {("sm_80", "half", "full", 2): 640, ("sm_100", "half", "full", 2): 512,
                            ("sm_120", "half", "full", 2): 512}
# LayerNorm variants hold a mean a head and add a bias: at the RMS bounds most spill. By (vectors
# an item, norm, K) where a higher bound fits on every architecture; LAYER_MAX_THREADS otherwise.
LAYER_MAX_THREADS = 512
LAYER_BOUNDS = {(1, "head", 4): 768}
LAYER_ARCH_BOUNDS = {("sm_120", 1, "head", 4): 640, ("sm_86", 1, "head", 4): 640, ("sm_89", 1, "head", 4): 640}
# Position-id variants read partial table vectors value by value: at the table bounds those of
# several vectors an item and the LayerNorm ones spill. By (source, LayerNorm[, vectors an item]).
SOURCE_MAX_THREADS = {("pos", False, 2): 512, ("pos", False, 3): 512, ("pos", True): 384}
# Variants that also carry rows without per-head predicates, taken by blocks whose every head
# lane holds all K heads (kernels/qk_norm_rope.cu every_head_held), by (rope, norm, K, source,
# shared table): plain RMS forms of natural width. Elsewhere the second path spilled or measured
# slower (perf-notes v31). Their bound by (arch, dtype, table class, norm, K) where the path spilled.
EVERY_HEAD_PATHS = {("interleaved", "head", 4, "table", True), ("interleaved", "full", 3, "table", False),
                    ("interleaved", "full", 4, "grid", False), ("interleaved", "full", 4, "pos", False)}
EVERY_ARCH_BOUNDS = {("sm_90", "bf16", "f32", "head", 4): 768, ("sm_90", "f16", "f32", "head", 4): 768,
                     ("sm_90", "bf16", "x16", "full", 4): 768,
                     ("sm_120", "bf16", "f32", "head", 4): 640, ("sm_120", "f16", "f32", "head", 4): 640,
                     ("sm_120", "bf16", "bf16", "head", 4): 704, ("sm_120", "f16", "f16", "head", 4): 704}
# Variants built a second time with that path alone (suffix _all), which the planner picks where
# every block qualifies (_planner.all_heads_held): where both paths in one kernel spilled or the
# general rows' registers cost warps (perf-notes v31, v37). By (rope, norm, K, source, shared
# table), for these activation dtypes. Their bounds, the largest with no spill, one a target in
# ARCHS order, by (dtype, table class, rope, norm, K, shared table).
ALL_HEADS_PATHS = {("interleaved", "full", 4, "table", False), ("interleaved", "head", 4, "table", True),
                   ("half", "full", 2, "table", False), ("half", "full", 2, "table", True)}
ALL_HEADS_DTYPES = ("bf16", "f16")
ALL_HEADS_BOUNDS = {
    ("bf16", "f32", "interleaved", "full", 4, False): (1024, 1024, 1024, 1024, 640, 768),
    ("bf16", "bf16", "interleaved", "full", 4, False): (1024, 1024, 1024, 1024, 768, 896),
    ("f16", "f32", "interleaved", "full", 4, False): (1024, 1024, 1024, 1024, 640, 768),
    ("f16", "f16", "interleaved", "full", 4, False): (1024, 1024, 1024, 1024, 768, 896),
    ("bf16", "f32", "interleaved", "head", 4, True): (1024, 1024, 1024, 896, 768, 640),
    ("bf16", "bf16", "interleaved", "head", 4, True): (1024, 1024, 1024, 896, 768, 704),
    ("f16", "f32", "interleaved", "head", 4, True): (1024, 1024, 1024, 896, 768, 640),
    ("f16", "f16", "interleaved", "head", 4, True): (1024, 1024, 1024, 896, 768, 704),
    ("bf16", "f32", "half", "full", 2, False): (640, 640, 640, 640, 512, 512),
    ("bf16", "bf16", "half", "full", 2, False): (896, 896, 896, 896, 640, 640),
    ("bf16", "f32", "half", "full", 2, True): (896, 896, 896, 896, 640, 640),
    ("bf16", "bf16", "half", "full", 2, True): (896, 896, 896, 896, 768, 640),
    ("f16", "f32", "half", "full", 2, False): (640, 640, 640, 640, 512, 512),
    ("f16", "f16", "half", "full", 2, False): (768, 768, 768, 768, 640, 640),
    ("f16", "f32", "half", "full", 2, True): (896, 896, 896, 896, 640, 640),
    ("f16", "f16", "half", "full", 2, True): (768, 896, 896, 768, 768, 640),
}
# Their fp8 output forms (suffix _f8_all, and _f8a_all tracking the amax; issue #11), whose rows
# are issue-bound (perf-notes v40), with bounds by output and then the same key. The amax forms of
# full-dim paths only: per head, the amax slots' registers cost FLUX.1 more than the predicates.
ALL_HEADS_AMAX_NORMS = ("full",)
ALL_HEADS_FP8_BOUNDS = {
    ("bf16", "f32", "interleaved", "full", 4, False): (768, 768, 896, 896, 640, 768),
    ("bf16", "bf16", "interleaved", "full", 4, False): (896, 896, 1024, 1024, 640, 640),
    ("f16", "f32", "interleaved", "full", 4, False): (768, 768, 768, 768, 640, 768),
    ("f16", "f16", "interleaved", "full", 4, False): (896, 896, 896, 896, 640, 640),
    ("bf16", "f32", "interleaved", "head", 4, True): (896, 896, 768, 768, 640, 640),
    ("bf16", "bf16", "interleaved", "head", 4, True): (1024, 1024, 768, 768, 640, 640),
    ("f16", "f32", "interleaved", "head", 4, True): (896, 896, 768, 768, 640, 640),
    ("f16", "f16", "interleaved", "head", 4, True): (1024, 1024, 768, 768, 640, 640),
    ("bf16", "f32", "half", "full", 2, False): (640, 640, 640, 640, 512, 512),
    ("bf16", "bf16", "half", "full", 2, False): (768, 768, 896, 896, 640, 512),
    ("bf16", "f32", "half", "full", 2, True): (896, 896, 896, 896, 640, 640),
    ("bf16", "bf16", "half", "full", 2, True): (896, 896, 768, 768, 640, 640),
    ("f16", "f32", "half", "full", 2, False): (640, 640, 640, 640, 512, 512),
    ("f16", "f16", "half", "full", 2, False): (768, 768, 768, 768, 640, 512),
    ("f16", "f32", "half", "full", 2, True): (768, 768, 896, 896, 640, 640),
    ("f16", "f16", "half", "full", 2, True): (896, 896, 896, 896, 640, 640),
}
ALL_HEADS_FP8_AMAX_BOUNDS = {
    ("bf16", "f32", "interleaved", "full", 4, False): (768, 768, 896, 768, 640, 640),
    ("bf16", "bf16", "interleaved", "full", 4, False): (896, 896, 1024, 896, 640, 768),
    ("f16", "f32", "interleaved", "full", 4, False): (768, 768, 896, 768, 640, 640),
    ("f16", "f16", "interleaved", "full", 4, False): (896, 896, 1024, 896, 640, 768),
    ("bf16", "f32", "half", "full", 2, False): (640, 640, 640, 640, 512, 512),
    ("bf16", "bf16", "half", "full", 2, False): (768, 768, 896, 768, 640, 640),
    ("bf16", "f32", "half", "full", 2, True): (896, 896, 896, 768, 640, 640),
    ("bf16", "bf16", "half", "full", 2, True): (896, 896, 896, 768, 640, 640),
    ("f16", "f32", "half", "full", 2, False): (512, 512, 640, 640, 512, 512),
    ("f16", "f16", "half", "full", 2, False): (768, 768, 768, 768, 640, 640),
    ("f16", "f32", "half", "full", 2, True): (896, 896, 896, 768, 640, 640),
    ("f16", "f16", "half", "full", 2, True): (896, 896, 768, 768, 640, 640),
}
ALL_HEADS_OUT_BOUNDS = {"": ALL_HEADS_BOUNDS, FP8_OUT: ALL_HEADS_FP8_BOUNDS, FP8_AMAX_OUT: ALL_HEADS_FP8_AMAX_BOUNDS}
# Variants that read a shared cos/sin slice once a row, after the sums, and hold it over the
# thread's heads (TableKind TABLE_ONCE), where reading it again for each head kept L1's data pipe
# busiest (perf-notes v32), by (rope, norm, K, shared table): plain RMS forms of natural width.
# Their bound by (arch, dtype, table class, norm) where the held slice spilled.
ONCE_TABLE_PATHS = {("half", "full", 2, True), ("half", "head", 2, False)}
# Rows of all heads held whose fp32 slice, held once a row, held their warps down: read where used,
# they fit more threads (ALL_HEADS_BOUNDS; perf-notes v38). By (table class, rope, norm, K).
ALL_HEADS_TABLE_AT_USE = {("f32", "half", "full", 2)}
# LayerNorm rows of all heads held with a shared slice, read once a row and held over the thread's
# heads (suffix _st_ln_all): the general LayerNorm form reads it once a head, and L1 was its busiest
# unit (perf-notes v39). By (rope, norm, K); their bounds by (dtype, table class), one a target in
# ARCHS order.
LAYER_ONCE_PATHS = {("interleaved", "head", 4)}
LAYER_ONCE_BOUNDS = {(dtype, table): (768, 768, 768, 768, 640, 640) for dtype in ALL_HEADS_DTYPES
                     for table in ("f32", dtype)}
ONCE_ARCH_BOUNDS = {(a, dtype, "f32", "full"): 640 for a in ("sm_86", "sm_89", "sm_90") for dtype in ("bf16", "f16")}
ONCE_ARCH_BOUNDS.update({(a, "f16", "f16", "full"): 768 for a in ("sm_86", "sm_89", "sm_90")})
# Per-head rows whose items hold more vectors than the rope needs: vectors -> (activation
# dtypes, most heads a thread). Two: fp32 heads over 128 values; three: D / VEC three times a
# power of two (D = 96), so a head's lanes stay a power of two inside a warp.
EXTRA_PARTS = {2: (("f32",), 2), 3: (("f32", "f16", "bf16"), 1)}


def natural_parts(rope: str) -> int:
    """Vectors an item holds unless a per-head row needs more: rotate_half pairs d with d + D/2."""
    return 2 if rope == "half" else 1


def table_class(table: str | None, dtype: str, source: str = "table") -> str | None:
    """The compiled cos/sin storage for a table dtype beside activations of another."""
    if table is None or source == "grid":
        return None
    return table if table == "f32" or (table == dtype and source == "table") else "x16"


def table_classes(dtype: str) -> tuple:
    """Fast table classes for an activation dtype: fp32, and the activations' own 16-bit type."""
    return ("f32",) if dtype == "f32" else ("f32", dtype)


@dataclass(frozen=True)
class Variant:
    dtype: str                   # activations: bf16 / f16 / f32
    rope: str                    # none / interleaved / half
    norm: str                    # none / head / full
    heads_per_thread: int        # K (0: loops over heads)
    parts: int                   # vectors an item holds
    table: str | None = "f32"    # cos/sin class (TABLE_CLASSES); None without rope
    shared_table: bool = False   # one slice for all heads (cos_hs == sin_hs == 0)
    stats: str = ""              # STATS_CODES: full-dim rows' sums of squares, for tensor parallelism
    layer: bool = False          # LayerNorm (mean subtracted, bias added) instead of RMSNorm
    source: str = "table"        # ROPE_SOURCES
    out: str = ""                # OUT_CODES: the activations' dtype, or fp8 (with the amax tracked)
    all_heads: bool = False      # only rows of all heads held (ALL_HEADS_PATHS)
    half_table: bool = False     # rotate_half tables of half heads (a twin of every rotate_half variant by table)

    @property
    def name(self) -> str:
        suffix = (f"_p{self.parts}" if self.parts != natural_parts(self.rope) else "") + \
            ("_st" if self.shared_table else "") + (f"_{self.stats}" if self.stats else "") + \
            ("_ln" if self.layer else "") + ("" if self.source == "table" else f"_{self.source}") + \
            (f"_{self.out}" if self.out else "") + ("_all" if self.all_heads else "") + \
            ("_ht" if self.half_table else "")
        table = f"_{self.table}" if self.table else ""
        return f"qknr_{self.dtype}_{self.rope}{table}_{self.norm}_k{self.heads_per_thread}{suffix}"

    @property
    def once_table(self) -> bool:
        """Whether it reads a shared table slice once a row and holds it over its heads."""
        if self.layer_once:
            return True
        key = (self.rope, self.norm, self.heads_per_thread, self.shared_table)
        at_use = self.all_heads and (self.table, *key[:3]) in ALL_HEADS_TABLE_AT_USE
        return self.plain and self.source == "table" and key in ONCE_TABLE_PATHS and not at_use

    @property
    def layer_once(self) -> bool:
        """A LayerNorm form of all heads held whose shared slice is read once a row (LAYER_ONCE_PATHS)."""
        return self.layer and self.shared_table and self.all_heads

    @property
    def plain(self) -> bool:
        """RMS rows of natural width, written in the activations' dtype, with no sums exchanged."""
        return not (self.layer or self.out or self.stats) and self.parts == natural_parts(self.rope)

    @property
    def every_path(self) -> bool:
        """Whether it carries the rows of all heads held without per-head predicates."""
        key = (self.rope, self.norm, self.heads_per_thread, self.source, self.shared_table)
        return self.all_heads or (self.plain and key in EVERY_HEAD_PATHS)

    @property
    def every_code(self) -> int:
        """kernels/qk_norm_rope.cu EveryPath."""
        return EVERY_ONLY if self.all_heads else (EVERY_TOO if self.every_path else EVERY_NONE)

    def bound(self, arch: str = "") -> int:
        """The launch bound this variant is compiled with for an architecture ('': with no per-arch override)."""
        if self.all_heads:   # a bound a target (ALL_HEADS_OUT_BOUNDS, LAYER_ONCE_BOUNDS)
            bounds = LAYER_ONCE_BOUNDS[(self.dtype, self.table)] if self.layer_once else ALL_HEADS_OUT_BOUNDS[self.out][
                (self.dtype, self.table, self.rope, self.norm, self.heads_per_thread, self.shared_table)]
            return bounds[ARCHS.index(arch)] if arch else min(bounds)
        bound = self._rms_bound(arch)
        shape = (self.parts, self.norm, self.heads_per_thread)
        if self.stats:
            bound = min(bound, STATS_MAX_THREADS)
        if self.layer:
            bound = min(bound, LAYER_ARCH_BOUNDS.get((arch, *shape), LAYER_BOUNDS.get(shape, LAYER_MAX_THREADS)))
        if self.out:
            bound = min(bound, FP8_MAX_THREADS.get(shape, bound))
            if self.out == FP8_AMAX_OUT:
                bound = min(bound, FP8_AMAX_MAX_THREADS.get(shape, bound))
            if self.dtype == "f16":
                bound = min(bound, FP8_F16_MAX_THREADS.get(shape, bound))
            if arch in FP8_CALL_ARCHS:
                bound = min(bound, FP8_CALL_MAX_THREADS.get(shape, bound))
        if self.every_path:
            key = (arch, self.dtype, self.table, self.norm, self.heads_per_thread)
            bound = min(bound, EVERY_ARCH_BOUNDS.get(key, bound))
        if self.once_table:
            bound = min(bound, ONCE_ARCH_BOUNDS.get((arch, self.dtype, self.table, self.norm), bound))
        key = (self.source, self.layer)
        return min(bound, SOURCE_MAX_THREADS.get(key + (self.parts,), SOURCE_MAX_THREADS.get(key, bound)))

    def _rms_bound(self, arch: str) -> int:
        key = (self.rope, self.norm, self.heads_per_thread)
        if self.shared_table:
            return SHARED_TABLE_ARCH_BOUNDS.get((arch, *key), SHARED_TABLE_BOUNDS[key])
        shape = (self.parts, self.norm, self.heads_per_thread)
        if (arch, *shape) in ARCH_MAX_THREADS:
            return ARCH_MAX_THREADS[(arch, *shape)]
        return MAX_THREADS_BY_DTYPE.get((self.dtype, *shape),
                                        MAX_THREADS_BY_NORM.get(shape, MAX_THREADS[(self.parts, self.heads_per_thread)]))

    @property
    def table_kind(self) -> int:
        """kernels/qk_norm_rope.cu TableKind: its flags."""
        return TABLE_SHARED * self.shared_table | TABLE_ONCE * self.once_table | TABLE_HALF * self.half_table

    def instantiation(self, arch: str = "") -> str:
        """The line kernels/qk_norm_rope.cu expands into this variant (CUDIT_QKNR)."""
        args = (self.name, C_TYPES[self.dtype], TABLE_CLASSES[self.table or "f32"], ROPE_CODES[self.rope],
                NORM_CODES[self.norm], self.heads_per_thread, self.parts, self.table_kind,
                STATS_CODES[self.stats], int(self.layer), ROPE_SOURCES[self.source], OUT_CODES[self.out],
                self.every_code, self.bound(arch))
        return f"CUDIT_QKNR({', '.join(str(a) for a in args)})"


def _built(dtype: str, rope: str, norm: str, k: int) -> bool:
    if rope == "none" and norm == "none":
        return False   # nothing to do: the planner rejects it
    if norm == "full" and k == 1:
        return False   # one head: the planner runs full-dim as per-head, the same computation
    if k > MAX_K[natural_parts(rope)]:
        return False
    return k != 3 or norm == "full"   # three heads a thread: full-dim rows only


def _all_heads_form(v: Variant) -> bool:
    """Whether v is built a second time with the rows of all heads held alone: plain or fp8 rows
    of ALL_HEADS_PATHS (amax-tracking ones of ALL_HEADS_AMAX_NORMS)."""
    plain = dataclasses.replace(v, out="").plain and (v.out != FP8_AMAX_OUT or v.norm in ALL_HEADS_AMAX_NORMS)
    key = (v.rope, v.norm, v.heads_per_thread, v.source, v.shared_table)
    return plain and v.dtype in ALL_HEADS_DTYPES and key in ALL_HEADS_PATHS


@functools.lru_cache(maxsize=None)
def all_variants() -> tuple:
    """Every kernel the runtime may launch."""
    out = []
    for dt, rope, norm, k in itertools.product(ACT_DTYPES, ROPE_CODES, NORM_CODES, HEADS_PER_THREAD):
        if not _built(dt, rope, norm, k):
            continue
        parts = natural_parts(rope)
        tables = (None,) if rope == "none" else table_classes(dt) + (("x16",) if k == 0 else ())
        for table in tables:
            base = Variant(dt, rope, norm, k, parts, table)
            out.append(base)
            if norm == "full":   # the sums kernel loops over heads (k0): it holds nothing for a second pass
                out += [Variant(dt, rope, norm, k, parts, table, stats=s) for s in ("sumsq", "given", "exchange")
                        if s != "sumsq" or (rope == "none" and k == 0)]
            if (rope, norm, k) in SHARED_TABLE_BOUNDS:
                out.append(Variant(dt, rope, norm, k, parts, table, shared_table=True))
            if norm == "head" and rope != "half":
                out += [Variant(dt, rope, norm, k, more, table) for more, (dts, most) in EXTRA_PARTS.items()
                        if dt in dts and k <= most]
    # The other rope sources: a copy of every plain rotating variant's shape, for position ids
    # with fp32 tables and 16-bit ones of either kind (read where used, so the run-time kind
    # costs little), and for the grid with none (no shared-table or tensor-parallel forms).
    shapes = [v for v in out if v.rope != "none" and v.table == "f32" and not (v.shared_table or v.stats)]
    out += [dataclasses.replace(v, source="pos", table=t) for v in shapes for t in POS_TABLES]
    out += [dataclasses.replace(v, source="grid", table=None) for v in shapes]
    # LayerNorm: a copy of every plain normalising variant, of each source.
    out += [dataclasses.replace(v, layer=True) for v in list(out)
            if v.norm != "none" and not (v.shared_table or v.stats)]
    out += [dataclasses.replace(v, out=o) for v in list(out) for o in (FP8_OUT, FP8_AMAX_OUT)
            if v.dtype in FP8_IN_DTYPES and v.source == "table" and not (v.layer or v.stats)]
    out += [dataclasses.replace(v, all_heads=True) for v in list(out) if _all_heads_form(v)]
    out += [dataclasses.replace(v, shared_table=True, all_heads=True) for v in list(out)
            if v.layer and v.dtype in ALL_HEADS_DTYPES and v.source == "table"
            and (v.rope, v.norm, v.heads_per_thread) in LAYER_ONCE_PATHS]
    out += [dataclasses.replace(v, half_table=True) for v in list(out) if has_half_twin(v)]
    return tuple(out)


def has_half_twin(v) -> bool:
    """Whether a variant (forward or backward) is built again for tables of half heads: rotate_half
    rows by table."""
    return v.rope == "half" and getattr(v, "source", "table") == "table"


BY_NAME = {v.name: v for v in all_variants()}


# The backward (kernels/qk_norm_rope_bwd.cu): heads a thread holds between its two halves, and
# the launch bound by (values of x a thread takes a row, vectors an item, stages): the most
# threads (the fewest registers, the most warps an SM) whose registers hold them with no spill.
# Staged variants hold no x or dy but their full-dim weights and sums; their shared memory, not
# their registers, often limits the threads an SM.
BACKWARD_ITEMS = (1, 2, 3, 4)
BACKWARD_STAGES = (0, 2)   # x and dy held in registers (0), or staged through shared memory (2)
STAGED_NORMS = ("full",)   # the norms built staged: per-head rows lost by it (perf-notes v28)
BACKWARD_BOUNDS = {(4, 1, 0): 768, (8, 1, 0): 768, (16, 1, 0): 640, (32, 1, 0): 576, (8, 2, 0): 640, (16, 2, 0): 512,
                   (32, 2, 0): 384,
                   (4, 1, 2): 896, (8, 1, 2): 896, (12, 1, 2): 768, (16, 1, 2): 768, (24, 1, 2): 512,
                   (32, 1, 2): 512, (8, 2, 2): 896, (16, 2, 2): 512, (32, 2, 2): 384}
# (arch, dtype, held, parts, stages) whose variants spilled at that bound: the bound they fit.
BACKWARD_ARCH_BOUNDS = {("sm_80", "bf16", 32, 1, 0): 512, ("sm_80", "f16", 32, 1, 0): 512,
                        ("sm_86", "f16", 32, 1, 0): 512, ("sm_89", "f16", 32, 1, 0): 512,
                        ("sm_90", "f16", 32, 1, 0): 512, ("sm_80", "f32", 16, 1, 0): 512,
                        ("sm_86", "f32", 16, 1, 0): 512, ("sm_89", "f32", 16, 1, 0): 512,
                        ("sm_90", "f32", 16, 1, 0): 512, ("sm_80", "f32", 8, 1, 0): 640,
                        ("sm_86", "f32", 8, 1, 0): 640, ("sm_89", "f32", 8, 1, 0): 640, ("sm_90", "f32", 8, 1, 0): 640,
                        ("sm_90", "f32", 16, 1, 2): 640}
# Rope modes with a shared-table form (the token's table row held a row): rotate_half would hold
# two table vectors an item, whose registers cost more than the reads save (perf-notes v20).
SHARED_TABLE_ROPES = ("interleaved",)
BACKWARD_REDUCE = "qknr_bwd_reduce"   # its second pass: the weight gradient's partial sums added


@dataclass(frozen=True)
class BackwardVariant:
    dtype: str
    rope: str
    norm: str
    items: int                   # heads a thread holds
    shared_table: bool = False   # one cos/sin row for every head, read once a row and held
    stages: int = 0              # 2: x and dy staged through shared memory, the next row's in flight
    half_table: bool = False     # as Variant's

    @property
    def name(self) -> str:
        return (f"qknr_bwd_{self.dtype}_{self.rope}_{self.norm}_i{self.items}" + ("_st" if self.shared_table else "")
                + (f"_s{self.stages}" if self.stages else "") + ("_ht" if self.half_table else ""))

    @property
    def vec(self) -> int:
        return 16 // (4 if self.dtype == "f32" else 2)

    @property
    def held(self) -> int:
        """Values of x (and as many of dy) a thread holds: items x vectors an item x values a vector."""
        return self.items * natural_parts(self.rope) * self.vec

    @property
    def sums(self) -> int:
        """Weight-gradient sums a thread keeps (in shared memory): a value a head it holds for
        full-dim rows, one head's worth for per-head rows (its heads share the weight)."""
        return 0 if self.norm == "none" else (self.items if self.norm == "full" else 1) * natural_parts(self.rope) * self.vec

    @property
    def smem_per_thread(self) -> int:
        """Dynamic shared memory a thread takes: its weight sums (staged full-dim rows: their
        first half's dz, the sums written over it all at the end), and its staged x and dy."""
        return 4 * self.sums + self.stages * 2 * 16 * self.items * natural_parts(self.rope)

    @property
    def shape(self) -> tuple:
        return self.held, natural_parts(self.rope), self.stages

    def bound(self, arch: str = "") -> int:
        """The launch bound on one architecture; with none, the least on any (what plans keep to)."""
        if not arch:
            return min(self.bound(a) for a in ARCHS)
        return BACKWARD_ARCH_BOUNDS.get((arch, self.dtype) + self.shape, BACKWARD_BOUNDS[self.shape])

    def instantiation(self, arch: str = "") -> str:
        args = (self.name, C_TYPES[self.dtype], ROPE_CODES[self.rope], NORM_CODES[self.norm], self.items,
                str(self.shared_table).lower(), self.stages, str(self.half_table).lower(), self.bound(arch))
        return f"CUDIT_QKNR_BWD({', '.join(str(a) for a in args)})"


@functools.lru_cache(maxsize=None)
def backward_variants() -> tuple:
    out = [v for v in (BackwardVariant(dt, rope, norm, items, st, sg) for dt, rope, norm, items, st, sg in
                       itertools.product(ACT_DTYPES, ROPE_CODES, NORM_CODES, BACKWARD_ITEMS, (False, True),
                                         BACKWARD_STAGES))
           if not (v.rope == "none" and v.norm == "none") and v.shape in BACKWARD_BOUNDS
           and (not v.shared_table or v.rope in SHARED_TABLE_ROPES) and (not v.stages or v.norm in STAGED_NORMS)]
    return tuple(out + [dataclasses.replace(v, half_table=True) for v in out if has_half_twin(v)])


BACKWARD_BY_NAME = {v.name: v for v in backward_variants()}
EXTRA_KERNELS = ("cudit_empty", BACKWARD_REDUCE)   # outside the tables: the empty-launch baseline, the reduction
KERNEL_NAMES = frozenset(BY_NAME) | frozenset(BACKWARD_BY_NAME) | frozenset(EXTRA_KERNELS)   # every kernel a cubin holds


@functools.lru_cache(maxsize=None)
def planner_bound(parts: int, k: int, layer: bool = False, source: str = "table", out: str = "") -> int:
    """Most threads a block of (parts, K) may have: the least bound any such variant (RMS or
    LayerNorm, of one rope source and output) has on any architecture, so that every plan fits
    every variant it may pick."""
    key = (parts, k, layer, source, out)
    return min(v.bound(arch) for v in all_variants() if (v.parts, v.heads_per_thread, v.layer, v.source, v.out) == key
               for arch in ARCHS)


def instantiation_source(arch: str = "") -> str:
    """The translation unit the build compiles for one architecture: every variant at its bound."""
    return "\n".join([f'#include "{FAMILY}.cu"', f'#include "{FAMILY}_bwd.cu"'] +
                     [v.instantiation(arch) for v in all_variants() + backward_variants()]) + "\n"
