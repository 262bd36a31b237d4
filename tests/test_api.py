"""The warm-call path of cudit.qk_norm_rope, on the CPU: made-up arrays of a made-up
framework that cudit reads directly, and a recording launcher instead of the GPU."""
from types import SimpleNamespace

import pytest

from cudit import _arrays, _launch, _planner, api
from cudit._params import Params
from cudit._planner import Request, make_plan
from cudit._tuning import DeviceSpec, Tuning
from fakes import BASE, arr

D = 128
DEVICE = DeviceSpec(arch=(9, 0))


class FakeArray:
    """An array cudit reads directly (like a torch tensor): its ArrayInfo is all there is."""

    __cuda_array_interface__ = {}   # what marks it as an array to cudit; describe() is faked

    def __init__(self, info):
        self.info = info


FakeArray.__module__ = "fake"       # its framework, for cudit's stream lookup


def _key(a):
    i = a.info
    return i.ptr, (i.shape, i.strides, i.dtype, i.device_id, i.ptr & 15)


@pytest.fixture
def gpu(monkeypatch):
    """Launches and views recorded: {"launches": [(pointers, stream)], "kernels": [name], "views": count}."""
    seen = {"launches": [], "kernels": [], "views": 0}

    def view(obj, stream_ptr, role):
        seen["views"] += 1
        return obj.info

    monkeypatch.setitem(_arrays._ADAPTERS, FakeArray, ("fake", _arrays.per_object(_key, FakeArray)))
    monkeypatch.setattr(api, "describe", view)
    def launcher(device, p):
        def launch(ptrs, s):
            seen["launches"].append((tuple(ptrs), s))
            seen["kernels"].append(p.kernel)
        return SimpleNamespace(launch=launch)

    monkeypatch.setattr(_launch, "launcher", launcher)
    monkeypatch.setitem(_launch.CURRENT_STREAM, "fake", lambda device: 77)
    monkeypatch.setattr(_launch, "is_capturing", lambda handle: False)
    monkeypatch.setattr(api, "driver_module", lambda: None)
    monkeypatch.setattr(_launch, "device_state", lambda device: SimpleNamespace(spec=DEVICE, tuning=Tuning()))
    api.clear_warm()
    _planner.clear_cache()
    yield seen
    api.clear_warm()


def _call(base, **kw):
    qkv = arr((2, 64, 3 * 4 * D), ptr=base)
    qw, kw_ = arr((D,), "f32", ptr=base + 0x100000), arr((D,), "f32", ptr=base + 0x100400)
    cos, sin = arr((64, D), "f32", ptr=base + 0x200000), arr((64, D), "f32", ptr=base + 0x300000)
    wrap = [FakeArray(a) for a in (qkv, qw, kw_, cos, sin)]
    api.qk_norm_rope(*wrap, num_heads=4, **kw)
    return Request(qkv, qw, kw_, cos, sin, num_heads=4, interleave=kw.get("interleave", True))


def test_launcher_turns_waves_ahead_into_tokens_for_its_gpu():
    qw, kw = arr((12 * 128,), "bf16", ptr=BASE + 0x100000), arr((12 * 128,), "bf16", ptr=BASE + 0x200000)
    c = arr((1024, 128), "f32", ptr=BASE + 0x300000)
    p = make_plan(Request(arr((1, 1024, 3 * 12 * 128)), qw, kw, c, c, num_heads=12), DEVICE, Tuning())
    cfg = p.config
    assert cfg.ahead_waves > 0 and cfg.variant.norm == "full"
    kernel = SimpleNamespace(occupancy=SimpleNamespace(max_active_blocks_per_multiprocessor=lambda block, smem: 3))
    tokens = Params.from_buffer_copy(_launch.with_ahead(p, kernel, 132)).ahead
    # a wave of 3 x 132 blocks covers that many rows, half of them each side's tokens
    assert tokens == int(cfg.ahead_waves * 3 * 132 * (cfg.block // cfg.team) / 2) > 0
    assert Params.from_buffer_copy(p.template).ahead == 0     # the plan itself stays device-free


@pytest.mark.parametrize("stream", [None, 77])
def test_warm_call_binds_the_pointers_the_full_path_would(gpu, stream):
    _call(BASE, stream=stream)
    assert gpu["views"] == 5
    req = _call(BASE + 0x10000000, stream=stream)          # same signature, other pointers
    assert gpu["views"] == 5                               # no exporter, no planner this time
    p = make_plan(req, DEVICE, Tuning())
    want = p.addresses(req.arrays())
    assert gpu["launches"][1] == (tuple(want), 77)
    assert want[1] == BASE + 0x10000000 + 4 * D * 2        # K follows Q in the packed row
    assert len(api._WARM) == 1


def test_alternating_signatures_each_bind_their_own_plan(gpu):
    _call(BASE)
    _call(BASE, interleave=False)
    for i, interleave in enumerate((True, False, True, False)):
        req = _call(BASE + (i + 1) * 0x10000000, interleave=interleave)
        p = make_plan(req, DEVICE, Tuning())
        assert gpu["launches"][-1] == (tuple(p.addresses(req.arrays())), 77) and gpu["kernels"][-1] == p.kernel
    assert gpu["views"] == 10 and len(api._WARM) == 2


def test_another_stream_or_options_take_the_full_path(gpu):
    _call(BASE)
    _call(BASE, stream=5)                   # not the framework's current stream: handshake
    assert gpu["views"] == 10 and len(api._WARM) == 1
    _call(BASE, eps=1e-5)                   # other options: another entry
    _call(BASE + 0x1000, eps=1e-5)
    assert gpu["views"] == 15 and len(api._WARM) == 2


def test_misaligned_pointer_raises_on_the_full_path(gpu):
    with pytest.raises(_planner.PlanError, match="aligned"):
        _call(BASE + 2)
    assert not api._WARM
