"""The backward's cost of a second weight stream: FLUX.1 dual-stream (a launch a side taking both
streams, and four reductions) against the same tensors with one stream (two launches, two
reductions), beside HunyuanVideo and WAN-14B.

    PYTHONPATH=. python benchmarks/backward_streams.py [REPEATS]
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backward_bench  # noqa: E402  (benchmarks/, beside this script)
from bench import copy_bandwidth  # noqa: E402

_BY_NAME = {s.name: s for s in backward_bench.SHAPES}
SHAPES = (_BY_NAME["FLUX.1"], dataclasses.replace(_BY_NAME["FLUX.1"], name="FLUX.1-1stream", n_txt=0),
          _BY_NAME["HunyuanVideo"], _BY_NAME["WAN-14B"])


def main(repeats: int) -> int:
    import torch

    copy = copy_bandwidth(torch)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    print(torch.cuda.get_device_properties(0).name, f"copy {copy:.0f} GB/s")
    for _ in range(repeats):
        for s in SHAPES:
            r = backward_bench.measure(s, torch, l2, steps=False)
            gbs = backward_bench.backward_bytes(s) / r["backward_ms"] / 1e6
            print(f"{s.name:<16} {r['backward_ms'] * 1e3:8.1f} us {100 * gbs / copy:6.1f}% copy  "
                  f"mul_ {r['mul_ms'] * 1e3:7.1f} us", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1))
