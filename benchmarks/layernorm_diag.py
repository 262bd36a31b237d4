"""CogVideoX-5B's shape under LayerNorm and RMSNorm, and a few plans of each
(docs/results/h200/layernorm-diagnosis.txt).

    PYTHONPATH=. python benchmarks/layernorm_diag.py
"""
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import bench  # noqa: E402
from cudit import _launch  # noqa: E402


def main() -> None:
    layer = next(x for x in bench.production_shapes() if x.name == "CogVideoX-5B")
    rms = dataclasses.replace(layer, layer=False)
    copy = bench.copy_bandwidth(torch)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    table = _launch.device_state(0).tuning
    plans = {"": table, " K=2": table.with_knobs(heads_per_thread=2), " iters 4": table.with_knobs(fixed_row_iters=4),
             " block 256": table.with_kind("block_targets", "head/1", 256)}
    for plan, tuning in plans.items():
        _launch.set_tuning(tuning)
        for name, shape in (("layer", layer), ("rms", rms)):
            floor = bench.bytes_moved(shape) / copy / 1e3
            ms = bench.time_call(bench.cudit_call(shape), bench.rotation(shape, torch, l2), torch)
            print(f"{name + plan:24s} {ms * 1e3:7.1f} us  {100 * floor / (ms * 1e3):5.1f}% of copy", flush=True)
    _launch.set_tuning(None)


if __name__ == "__main__":
    main()
