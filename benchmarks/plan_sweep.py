"""Time shapes of benchmarks/bench.py under several plans (block targets, row groups a block, and
optionally heads a thread at the table's block target):

    python benchmarks/plan_sweep.py WAN-14B-rope3d,WAN-14B [1,2]
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import bench  # noqa: E402
from cudit import _launch, _planner, api  # noqa: E402
from cudit._arrays import ITEMSIZE  # noqa: E402

props = torch.cuda.get_device_properties(0)
copy = bench.copy_bandwidth(torch)
shapes = {s.name: s for s in bench.production_shapes()}
base = _launch.device_state(0).tuning
heads = [int(k) for k in sys.argv[2].split(",")] if len(sys.argv) > 2 else []
rows = []
for name in sys.argv[1].split(","):
    s = shapes[name]
    vec = 16 // ITEMSIZE[s.dtype]
    kind = f"{'full' if s.norm == 'full' else 'head'}/{_planner.item_parts(s.rope, s.norm, s.d // vec)}"
    inputs = bench.rotation(s, torch, props.L2_cache_size)
    combos = [(None, None, None)] * 3 + [(None, t, it) for t in (96, 128, 160, 192, 256, 320) for it in (None, 1, 2, 4, 8)]
    combos += [(k, None, it) for k in heads for it in (None, 1, 2)]
    for k, target, iters in combos:
        if True:
            t = base.with_knobs(heads_per_thread=k, fixed_row_iters=iters)
            if target:
                t = t.with_kind("block_targets", kind, target)
            _launch.set_tuning(t)
            api.clear_warm(); _planner.clear_cache()
            try:
                ms = bench.time_call(bench.cudit_call(s), inputs, torch)
            except Exception as e:
                print(name, k, target, "ERR", e); continue
            pct = 100 * bench.bytes_moved(s) / ms / 1e6 / copy
            rows.append((name, k, target, iters, ms * 1e3, pct))
            print(f"{name:<22} K={k} target={target} iters={iters} {ms*1e3:8.1f} us {pct:6.1f}%", flush=True)
    _launch.set_tuning(base)
    del inputs
print(f"copy {copy:.0f} GB/s on {props.name}")
best = {}
for r in rows:
    if r[0] not in best or r[4] < best[r[0]][4]:
        best[r[0]] = r
for r in best.values():
    print("best", r)
