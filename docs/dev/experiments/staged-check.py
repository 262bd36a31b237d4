"""The staged full-dim backward (Tuning.backward_stages) against the register-held one: dx bit-exact,
dw within 1e-5, outputs poisoned first; layouts of every norm/rope/chunks form in bf16 (perf-notes v28)."""
import sys
import torch
sys.path[:0] = ["benchmarks", "."]
import cudit
from cudit import _launch
from bench import Shape, make_inputs
from backward_bench import backward_call

CASES = [
    Shape("full-il", 40, 128, 700, split=True),
    Shape("full-il-packed", 12, 128, 333),
    Shape("head-dual", 24, 128, 600, norm="head", n_txt=100, split=True),
    Shape("head-many", 64, 128, 300, norm="head", split=True),          # chunks > 1
    Shape("half-full", 32, 128, 500, rope="half", split=True),
    Shape("half-head", 16, 64, 400, rope="half", norm="head", split=True),
    Shape("perhead-table", 8, 128, 257, table="perhead", norm="head", split=True),
    Shape("gqa", 32, 128, 300, kv_heads=8, split=True),
    Shape("d64-full", 24, 64, 411, split=True),
]


def run(s, stages):
    _launch.set_tuning(_launch.device_state(0).tuning.with_knobs(backward_stages=(("full", stages),)))
    prepare, call = backward_call(s, torch)
    torch.manual_seed(1)
    st = prepare(make_inputs(s, torch))
    inp, dout, dx, grads = st
    for t in (list(dx) if isinstance(dx, tuple) else [dx]) + list(grads.values()):
        t.fill_(float("nan"))
    call(st)
    torch.cuda.synchronize()
    outs = (list(dx) if isinstance(dx, tuple) else [dx]) + [grads[k] for k in sorted(grads)]
    return [o.clone() for o in outs]


def bits(x):
    return x.view(torch.int32) if x.dtype == torch.float32 else x.view(torch.int16)


bad = 0
for s in CASES:
    a, b = run(s, 0), run(s, 2)
    n_dx = 2 if s.split else 1
    same = all(torch.equal(bits(x), bits(y)) for x, y in zip(a[:n_dx], b[:n_dx]))   # v28's dz kept: may be 1 ulp
    nan = s.split and any(torch.isnan(y).any().item() for y in b[:n_dx])
    rel = max(((x.double() - y.double()).abs().max() / x.double().abs().max()).item() for x, y in zip(a[n_dx:], b[n_dx:]))
    bad += (not same) or nan or not rel < 1e-5
    print(f"{s.name:<16} dx bit-exact {same} nan {nan} dw rel {rel:.1e}", flush=True)
print("STAGED CHECK", "FAIL" if bad else "OK")
