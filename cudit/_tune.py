"""python -m cudit tune: measure a tuning table for the attached card and save it where the
runtime finds it (needs PyTorch to allocate and time).

Coordinate descent from the card's current table: each field in turn takes the candidate
value that runs one shape of each kind fastest (geometric mean of time over the floor), if it
beats the value in force by more than the noise.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from . import _launch, _tuning
from ._selfcheck import Shape, copy_bandwidth, input_sets, time_us

# One shape of each kind the planner tells apart, at production sizes.
SHAPES = [
    Shape("WAN-1.3B", 12, 128, 32760),
    Shape("WAN-14B", 40, 128, 32760),
    Shape("LTX-2-video", 32, 128, 13500, rope="half", table="perhead-bf16"),
    Shape("FLUX.1", 24, 128, 4608, norm="head", n_txt=512),
    Shape("HunyuanVideo", 24, 128, 118800, norm="head"),
    Shape("Cosmos", 32, 128, 28000, norm="head", rope="half", kv_heads=8),
    Shape("Lumina-2", 24, 96, 4096, norm="head", kv_heads=8),
]
# Fields and their candidates; "block_targets/<kind>" sets one kind's block target, and
# "row_iters/<kind>" its (most row groups a block, grid size in groups below which one).
CANDIDATES = {
    **{f"block_targets/{key}": (96, 128, 192, 256, 384) for key in ("full/1", "full/2", "head/1", "head/2", "head/3")},
    # (most row groups a block, grid size in groups below which one): long-lived blocks pay a
    # row's setup less often, short-lived ones end the grid in finer waves
    **{f"row_iters/{key}": ((1, 0), (2, 0), (4, 0), (2, 49152), (4, 49152), (8, 49152)) for key in ("full/1", "head/1")},
    "ahead_waves_in_row": (0.0, 0.25, 0.5, 1.0),
    "ahead_waves_after_row": (0.5, 1.25, 2.0),
    "ahead_waves_three_vector": (0.5, 0.875, 1.25),
    "ahead_waves_head_tables": (0.0, 0.25, 0.5),
    "one_row_blocks_up_to": (0, 16 * 1024, 64 * 1024),
}
NOISE = 0.005   # a candidate must be this much faster to replace the value in force


def score(tuning, sets: dict, torch) -> float:
    """Geometric mean over the shapes of time / floor (lower is better)."""
    _launch.set_tuning(tuning)
    return math.exp(sum(math.log(time_us(s, torch) / floor) for s, floor in sets.values()) / len(sets))


def value_of(tuning, field: str):
    if "/" in field:   # "<per-kind field>/<kind>"
        name, kind = field.split("/", 1)
        return dict(getattr(tuning, name))[kind]
    return getattr(tuning, field)


def with_value(tuning, field: str, value):
    if "/" in field:
        return tuning.with_kind(*field.split("/", 1), value)
    return tuning.with_knobs(**{field: value})


def tune(torch, log=print) -> _tuning.Tuning:
    st = _launch.device_state(0)
    props = torch.cuda.get_device_properties(0)
    copy = copy_bandwidth(torch)
    sets = {sh.name: (input_sets(sh, torch, props.L2_cache_size), sh.bytes / copy / 1e3) for sh in SHAPES}
    best = st.tuning
    best_score = score(best, sets, torch)
    log(f"{props.name}: copy {copy:.0f} GB/s; start from {best.name}: {1 / best_score:.1%} of copy (geomean)")
    for field, values in CANDIDATES.items():
        for value in values:
            if value_of(best, field) == value:
                continue
            trial = with_value(best, field, value)
            s = score(trial, sets, torch)
            log(f"  {field} = {value}: {1 / s:.1%}")
            if s < best_score * (1 - NOISE):
                best, best_score = trial, s
        log(f"{field}: {value_of(best, field)}")
    _launch.set_tuning(None)
    return best.with_knobs(name=f"{props.name}, measured by python -m cudit tune ({1 / best_score:.1%} of copy, geomean)")


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cudit tune", description=__doc__)
    ap.add_argument("--out", type=Path, default=None, help="the table's path (default: the user's table folder)")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("cudit tune: it allocates and times with PyTorch: pip install torch")
        return 1
    table = tune(torch)
    path = args.out or _tuning.user_dir() / f"{_tuning.device_key(_launch.device_state(0).spec)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table.to_json(), indent=1) + "\n")
    print(f"wrote {path}")
    return 0
