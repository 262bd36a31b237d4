"""Where a backward call's time goes: each kernel's start and duration in replays of a captured
call (torch.profiler's device trace), and the call's span, for the shapes named.

    PYTHONPATH=. python benchmarks/backward_timeline.py [FLUX.1,HunyuanVideo]
"""
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backward_bench  # noqa: E402  (benchmarks/, beside this script)
from bench import make_inputs  # noqa: E402


def timeline(s, torch, replays: int = 20) -> list:
    """Per replay: [(kernel, start us from the call's first kernel, duration us)]."""
    prepare, run = backward_bench.backward_call(s, torch)
    state = prepare(make_inputs(s, torch))
    for _ in range(3):
        run(state)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(state)
    for _ in range(20):
        graph.replay()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
            torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    per_call = len(kernels) // replays
    calls = []
    for r in range(replays):
        ks = kernels[r * per_call:(r + 1) * per_call]
        t0 = ks[0].time_range.start
        calls.append([(k.name, k.time_range.start - t0, k.time_range.end - k.time_range.start) for k in ks])
    return calls


def main(names: str) -> int:
    import torch

    shapes = [s for s in backward_bench.SHAPES if s.name in names.split(",")]
    print(torch.cuda.get_device_properties(0).name)
    for s in shapes:
        calls = timeline(s, torch)
        print(f"{s.name}: median of {len(calls)} replays, us")
        for launch in zip(*calls):   # one kernel's entries over the replays
            print(f"  {launch[0][0][:60]:<60} start {statistics.median(x[1] for x in launch):7.1f}"
                  f"  dur {statistics.median(x[2] for x in launch):7.1f}")
        print(f"  span {statistics.median(max(st + d for _, st, d in c) for c in calls):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "FLUX.1,HunyuanVideo,WAN-14B"))
