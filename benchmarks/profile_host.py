"""Where the host time of one warm qk_norm_rope call goes (torch inputs, small shape, GPU needed)."""
import cProfile
import pstats
import time

import torch

from cudit import bench

s = bench.Shape("small", 4, 128, 256, norm="head")
inp = bench.make_inputs(s, torch)
run = bench.cudit_call(s)
for _ in range(200):
    run(inp)
torch.cuda.synchronize()
n = 10000
t = time.perf_counter()
for _ in range(n):
    run(inp)
print(f"cudit.qk_norm_rope (bench.cudit_call): {(time.perf_counter() - t) / n * 1e6:.1f} us per call")
cProfile.run("for _ in range(2000): run(inp)", "/tmp/prof")
pstats.Stats("/tmp/prof").sort_stats("tottime").print_stats(14)
torch.cuda.synchronize()
