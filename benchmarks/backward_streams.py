"""The backward's cost of a second weight stream: FLUX.1 dual-stream (four launches and four
reductions) against the same tensors with one stream (two and two), beside HunyuanVideo and WAN-14B.

    PYTHONPATH=. python benchmarks/backward_streams.py [REPEATS]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backward_bench  # noqa: E402  (benchmarks/, beside this script)
from bench import Shape, copy_bandwidth  # noqa: E402

SHAPES = (Shape("FLUX.1", 24, 128, 4608, norm="head", n_txt=512, split=True),
          Shape("FLUX.1-1stream", 24, 128, 4608, norm="head", split=True),
          Shape("HunyuanVideo", 24, 128, 118800, norm="head", split=True),
          Shape("WAN-14B", 40, 128, 32760, split=True))


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
