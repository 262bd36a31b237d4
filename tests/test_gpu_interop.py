"""Fitting into frameworks: the torch operators and torch.compile, CUDA graphs (torch, CuPy,
cuda.core), warm calls that only launch, PDL, JAX under jit, mixed frameworks."""
import os
import time

import numpy as np
import pytest

from gpu_cases import small_inputs

pytestmark = pytest.mark.gpu

H, D = 4, 128


def _inputs(torch, **kw):
    return small_inputs(torch, H=H, D=D, **kw)


def _reference(torch, qkv, qw, kw, cos, sin):
    from cudit.reference import qk_norm_rope_ref

    host = lambda t: t.double().cpu().numpy()  # noqa: E731
    return qk_norm_rope_ref(host(qkv), host(qw), host(kw), host(cos), host(sin), num_heads=H)


def _assert_close(torch, got, ref):
    got = got.double().cpu().numpy()
    assert np.all(np.abs(got - ref) <= 1e-5 + 2.0**-8 * np.abs(ref))


def _direct(torch, qkv, *rest):
    import cudit

    x = qkv.clone()
    cudit.qk_norm_rope(x, *rest, num_heads=H)
    torch.cuda.synchronize()
    return x


# ------------------------------------------------------------------------- torch operators


def test_torch_ops_match_direct_call_and_pass_opcheck():
    import torch

    import cudit.torch as ct

    qkv, qw, kw, cos, sin = _inputs(torch)
    want = _direct(torch, qkv, qw, kw, cos, sin)
    x = qkv.clone()
    assert ct.qk_norm_rope(x, qw, kw, cos, sin, num_heads=H) is x
    y = ct.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=H, inplace=False)
    torch.cuda.synchronize()
    assert torch.equal(x, want) and torch.equal(y, want)      # V copied by the functional form
    q, k = (qkv[..., :H * D].clone(), qkv[..., H * D:2 * H * D].clone())
    q2, k2 = ct.qk_norm_rope((q, k), qw, kw, cos, sin, num_heads=H, inplace=False)
    ct.qk_norm_rope((q, k), qw, kw, cos, sin, num_heads=H)
    torch.cuda.synchronize()
    assert torch.equal(q2, want[..., :H * D]) and torch.equal(k2, want[..., H * D:2 * H * D])
    assert torch.equal(q, q2) and torch.equal(k, k2)

    rest = (qw, kw, cos, sin, [H], 1e-6, True, None, None, 0, None)
    split_rest = (qw, kw, cos, sin, [H, H], 1e-6, True, None, None, 0, None)
    ops = torch.ops.cudit
    torch.library.opcheck(ops.qk_norm_rope, (qkv, *rest))
    torch.library.opcheck(ops.qk_norm_rope_, (qkv.clone(), *rest))
    torch.library.opcheck(ops.qk_norm_rope_split, (q.clone(), k.clone(), *split_rest))
    torch.library.opcheck(ops.qk_norm_rope_split_, (q.clone(), k.clone(), *split_rest))


def test_tensor_parallel_torch_ops_pass_opcheck():
    import torch

    import cudit.torch as ct

    qkv, _, _, cos, sin = _inputs(torch)
    fw = torch.rand(H * D, device="cuda") + 0.5
    sums = ct.qk_sumsq(qkv, num_heads=H)
    q, k = qkv[..., :H * D].clone(), qkv[..., H * D:2 * H * D].clone()
    torch.cuda.synchronize()
    assert torch.equal(ct.qk_sumsq((q, k), num_heads=H), sums)
    # Given all of the heads' sums, the second phase is the one-GPU full-dim norm (the sums may
    # be added in another order: the last bit of the scale).
    given = ct.qk_norm_rope(qkv, fw, fw, cos, sin, num_heads=H, sumsq=sums, norm_width=H * D, inplace=False)
    whole = ct.qk_norm_rope(qkv, fw, fw, cos, sin, num_heads=H, inplace=False)
    torch.cuda.synchronize()
    torch.testing.assert_close(given, whole, rtol=2.0**-7, atol=1e-5)
    ops = torch.ops.cudit
    torch.library.opcheck(ops.qk_sumsq, (qkv, [H], None))
    torch.library.opcheck(ops.qk_sumsq_split, (q, k, [H, H], None))
    rest = (fw, fw, cos, sin, [H], 1e-6, True, None, None, 0, None, sums, [H * D], None)
    torch.library.opcheck(ops.qk_norm_rope, (qkv, *rest))
    torch.library.opcheck(ops.qk_norm_rope_, (qkv.clone(), *rest))


class WanStyleAttention:
    """A WAN-style self-attention block: packed QKV projection, cudit, SDPA, output projection."""

    def __init__(self, torch, dim=H * D, seed=1):
        g = torch.Generator(device="cuda").manual_seed(seed)
        mk = lambda *s: (torch.randn(*s, device="cuda", generator=g) / s[-1] ** 0.5).to(torch.bfloat16)  # noqa: E731
        self.w_qkv, self.w_o = mk(3 * dim, dim), mk(dim, dim)
        self.norm_q = torch.rand(dim, device="cuda", generator=g) + 0.5
        self.norm_k = torch.rand(dim, device="cuda", generator=g) + 0.5

    def __call__(self, x, cos, sin):
        import torch.nn.functional as F

        import cudit.torch as ct

        b, s, _ = x.shape
        qkv = F.linear(x, self.w_qkv)
        ct.qk_norm_rope(qkv, self.norm_q, self.norm_k, cos, sin, num_heads=H)   # in place
        q, k, v = (t.view(b, s, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=-1))
        o = F.scaled_dot_product_attention(q, k, v)
        return F.linear(o.transpose(1, 2).reshape(b, s, H * D), self.w_o)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_torch_compile_fullgraph_block_equals_eager(mode):
    import torch

    torch._dynamo.reset()
    block = WanStyleAttention(torch)
    _, _, _, cos, sin = _inputs(torch)
    compiled = torch.compile(block.__call__, fullgraph=True, mode=mode)
    g = torch.Generator(device="cuda").manual_seed(5)
    for _ in range(3):                     # reduce-overhead: warm-up, record, replay
        x = torch.randn(2, 33, H * D, device="cuda", generator=g).to(torch.bfloat16)
        want = block(x, cos, sin)
        got = compiled(x, cos, sin).clone()
        torch.cuda.synchronize()
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    # The op itself is opaque to the compiler: its outputs are the eager bytes.
    import cudit.torch as ct

    qkv, qw, kw, _, _ = _inputs(torch, seed=9)
    fn = torch.compile(lambda t: ct.qk_norm_rope(t, qw, kw, cos, sin, num_heads=H, inplace=False),
                       fullgraph=True, mode=mode)
    for _ in range(3):
        got = fn(qkv).clone()
    assert torch.equal(got, _direct(torch, qkv, qw, kw, cos, sin))


# ---------------------------------------------------------------------------- CUDA graphs


def test_torch_graph_capture_and_replay_on_new_data():
    import torch

    import cudit

    qkv, qw, kw, cos, sin = _inputs(torch)
    static = qkv.clone()
    cudit.qk_norm_rope(static.clone(), qw, kw, cos, sin, num_heads=H)   # warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cudit.qk_norm_rope(static, qw, kw, cos, sin, num_heads=H)
    for seed in (11, 12):
        fresh = _inputs(torch, seed=seed)[0]
        static.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static, _direct(torch, fresh, qw, kw, cos, sin))


def test_cupy_graph_capture_and_replay_on_new_data():
    import cupy
    import torch

    import cudit

    qkv, qw, kw, cos, sin = _inputs(torch)
    cp = lambda t: cupy.from_dlpack(t)  # noqa: E731
    static = cupy.array(cp(qkv))
    args = [cp(t) for t in (qw, kw, cos, sin)]
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        cudit.qk_norm_rope(static.copy(), *args, num_heads=H)            # warm-up
        stream.begin_capture()
        cudit.qk_norm_rope(static, *args, num_heads=H)
        graph = stream.end_capture()
    for seed in (21, 22):
        fresh = _inputs(torch, seed=seed)[0]
        static[...] = cp(fresh)
        graph.launch(stream)
        stream.synchronize()
        assert torch.equal(torch.from_dlpack(static), _direct(torch, fresh, qw, kw, cos, sin))


def test_cuda_core_graph_builder_capture_and_replay():
    import torch
    from cuda.core import Device

    import cudit

    dev = Device(0)
    dev.set_current()
    stream = dev.create_stream()
    qkv, qw, kw, cos, sin = _inputs(torch)
    static = qkv.clone()
    torch.cuda.synchronize()
    cudit.qk_norm_rope(static.clone(), qw, kw, cos, sin, num_heads=H, stream=stream)   # warm-up
    builder = stream.create_graph_builder().begin_building()
    try:
        cudit.qk_norm_rope(static, qw, kw, cos, sin, num_heads=H, stream=builder)
    finally:
        builder.end_building()   # a failed capture must not leave the process capturing
    graph = builder.complete()
    stream.sync()
    fresh = _inputs(torch, seed=31)[0]
    static.copy_(fresh)
    torch.cuda.synchronize()
    graph.launch(stream)
    stream.sync()
    assert torch.equal(static, _direct(torch, fresh, qw, kw, cos, sin))


# ------------------------------------------------------------------ warm calls only launch


@pytest.fixture
def driver_calls(monkeypatch):
    """Names of the cuda.bindings driver functions cudit calls (patched before it binds them)."""
    from cuda.bindings import driver

    from cudit import _launch, _planner, api

    seen = []
    for name in dir(driver):
        fn = getattr(driver, name)
        if name.startswith("cu") and callable(fn) and not isinstance(fn, type):
            def wrap(*a, _fn=fn, _name=name, **k):
                seen.append(_name)
                return _fn(*a, **k)
            monkeypatch.setattr(driver, name, wrap)
    for clear in (_launch._LAUNCHERS.clear, api.clear_warm, _planner.clear_cache):
        clear()
    yield seen
    for clear in (_launch._LAUNCHERS.clear, api.clear_warm, _planner.clear_cache):
        clear()


@pytest.mark.parametrize("framework", ["torch", "cupy"])
def test_warm_call_makes_no_allocation_load_attribute_change_or_sync(framework, driver_calls):
    import cupy
    import torch

    import cudit

    arrays = _inputs(torch)
    if framework == "cupy":
        arrays = tuple(cupy.from_dlpack(t) for t in arrays)
    qkv, qw, kw, cos, sin = arrays
    cudit.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=H)             # warm-up
    torch.cuda.synchronize()
    driver_calls.clear()
    torch_allocs = torch.cuda.memory_stats()["allocation.all.allocated"]
    cupy_bytes = cupy.get_default_memory_pool().total_bytes()
    torch.cuda._sleep(2_000_000_000)                 # ~1 s of GPU work ahead of the calls
    t = time.perf_counter()
    for _ in range(20):
        cudit.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=H)
    host_s = time.perf_counter() - t
    torch.cuda.synchronize()
    assert set(driver_calls) == {"cuCtxGetCurrent", "cuLaunchKernelEx"}, sorted(set(driver_calls))
    assert driver_calls.count("cuLaunchKernelEx") == 20
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == torch_allocs
    assert cupy.get_default_memory_pool().total_bytes() == cupy_bytes
    assert host_s < 0.2, f"20 calls took {host_s:.3f} s behind 1 s of queued GPU work: a host sync?"


def test_warm_path_binds_new_pointers_and_rechecks_alignment():
    import torch

    import cudit

    qkv, qw, kw, cos, sin = _inputs(torch)
    a, b = _inputs(torch, seed=41)[0], _inputs(torch, seed=42)[0]
    want_a, want_b = _direct(torch, a, qw, kw, cos, sin), _direct(torch, b, qw, kw, cos, sin)
    cudit.qk_norm_rope(a, qw, kw, cos, sin, num_heads=H)
    cudit.qk_norm_rope(b, qw, kw, cos, sin, num_heads=H)    # same signature, other pointers
    torch.cuda.synchronize()
    assert torch.equal(a, want_a) and torch.equal(b, want_b)
    flat = torch.empty(qkv.numel() + 8, dtype=qkv.dtype, device="cuda")
    odd = flat[1:1 + qkv.numel()].view(qkv.shape)           # 2-byte aligned: must still raise
    with pytest.raises(cudit.PlanError, match="aligned"):
        cudit.qk_norm_rope(odd, qw, kw, cos, sin, num_heads=H)


def test_torch_op_warm_call_only_launches(driver_calls):
    import torch

    import cudit.torch as ct

    qkv, qw, kw, cos, sin = _inputs(torch)
    ct.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=H)
    torch.cuda.synchronize()
    driver_calls.clear()
    ct.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=H)
    torch.cuda.synchronize()
    assert sorted(driver_calls) == ["cuCtxGetCurrent", "cuLaunchKernelEx"]


# ------------------------------------------------------------------------------------ PDL


def test_pdl_attribute_on_sm90_and_a_dependent_chain_stays_exact(monkeypatch):
    """40 back-to-back calls where each reads the previous one's output, PDL on and off."""
    import torch

    import cudit
    from cudit import _launch

    qkv, qw, kw, cos, sin = _inputs(torch, S=64)
    results = {}
    for pdl in (False, True):
        monkeypatch.setattr(_launch, "PDL", pdl)
        bufs = [qkv.clone(), torch.full_like(qkv, float("nan"))]
        for i in range(40):   # kernels only, back to back (V is neither read nor written)
            cudit.qk_norm_rope(bufs[i % 2], qw, kw, cos, sin, num_heads=H, out=bufs[(i + 1) % 2])
        torch.cuda.synchronize()
        results[pdl] = bufs[0][..., :2 * H * D]
        launchers = [v for k, v in _launch._LAUNCHERS.items() if k[2] == pdl]
        want_attrs = 1 if pdl and _launch.device_state(0).spec.arch >= (9, 0) else 0
        assert launchers and all(v.config(0).numAttrs == want_attrs for v in launchers)
    x = qkv.clone()
    for _ in range(40):
        x = _direct(torch, x, qw, kw, cos, sin)
    x = x[..., :2 * H * D]
    assert torch.equal(results[False], x) and torch.equal(results[True], x)


# ---------------------------------------------------------------------- JAX, mixed, streams


def test_jax_under_jit_on_xla_stream():
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    import cudit.jax as cj
    from cudit.reference import qk_norm_rope_ref

    rng = np.random.default_rng(5)
    S = 40
    x = rng.standard_normal((2, S, 3 * H * D)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, D).astype(np.float32)
    ang = rng.uniform(-3, 3, (S, D)).astype(np.float32)
    c, s = np.cos(ang), np.sin(ang)

    @jax.jit
    def step(qkv, w, c, s):
        y = cj.qk_norm_rope(qkv * 2.0, w, w, c, s, num_heads=H)    # an XLA op before and after
        q2, k2 = cj.qk_norm_rope((y[..., :H * D], y[..., H * D:2 * H * D]), None, None, c, s, num_heads=H)
        return jnp.concatenate([q2, k2], -1) + 0.0, y

    ref1 = qk_norm_rope_ref(2.0 * x, w, w, c, s, num_heads=H)
    ref2 = qk_norm_rope_ref((ref1[..., :H * D], ref1[..., H * D:2 * H * D]), None, None, c, s, num_heads=H)
    for _ in range(2):
        qk, y = step(*(jnp.asarray(a) for a in (x, w, c, s)))
        np.testing.assert_allclose(np.asarray(y)[..., :2 * H * D], ref1[..., :2 * H * D], rtol=2e-5, atol=2e-5)
        np.testing.assert_array_equal(np.asarray(y)[..., 2 * H * D:], 2.0 * x[..., 2 * H * D:])
        np.testing.assert_allclose(np.asarray(qk), np.concatenate(ref2, -1), rtol=5e-5, atol=5e-5)


def test_mixed_torch_input_cupy_output():
    import cupy
    import torch

    import cudit

    qkv, qw, kw, cos, sin = _inputs(torch, dtype=torch.float16)
    want = _direct(torch, qkv, qw, kw, cos, sin)
    out = cupy.full(tuple(qkv.shape), cupy.nan, dtype=cupy.float16)
    cudit.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=H, out=out)
    cupy.cuda.get_current_stream().synchronize()
    torch.cuda.synchronize()
    got = torch.from_dlpack(out)
    assert torch.equal(got[..., :2 * H * D], want[..., :2 * H * D])
    assert torch.isnan(got[..., 2 * H * D:]).all()


def test_parameters_that_require_grad_are_read_without_grad_mode_and_refused_with_it():
    """Model weights are usually nn.Parameters with requires_grad set, even at inference; with grad
    mode on autograd would record the call, and the generic in-place call records no gradient: it
    raises instead (#12; training goes through cudit.torch's functional operators)."""
    import torch

    import cudit

    qkv, qw, kw, cos, sin = _inputs(torch)
    want = _direct(torch, qkv, qw, kw, cos, sin)
    pq, pk = torch.nn.Parameter(qw.clone()), torch.nn.Parameter(kw.clone())
    for mode in (torch.no_grad, torch.inference_mode):
        for _ in range(2):                    # the full path, then the warm one
            x = qkv.clone()
            with mode():
                cudit.qk_norm_rope(x, pq, pk, cos, sin, num_heads=H)
            torch.cuda.synchronize()
            assert torch.equal(x, want)
    for _ in range(2):                        # warm signature, grad mode on: still refused, nothing written
        x = qkv.clone()
        with pytest.raises(cudit.PlanError, match="q_weight: expected a tensor autograd does not track"):
            cudit.qk_norm_rope(x, pq, pk, cos, sin, num_heads=H)
        assert torch.equal(x, qkv)


# ------------------------------------------------------------------ contexts and threads


def test_another_current_context_stays_current_and_the_launch_lands_in_cudits():
    """A caller (another library, another device) may leave its own context current."""
    import torch
    from cuda.bindings import driver

    import cudit

    qkv, qw, kw, cos, sin = _inputs(torch)
    want = _direct(torch, qkv, qw, kw, cos, sin)
    xs = [qkv.clone() for _ in range(2)]
    out = torch.full_like(qkv, float("nan"))    # out of place: another signature, the full path
    torch.cuda.synchronize()
    primary = driver.cuCtxGetCurrent()[1]
    try:
        err, other = driver.cuCtxCreate(None, 0, driver.CUdevice(0))
    except TypeError:   # cuda.bindings 12: cuCtxCreate(flags, dev)
        err, other = driver.cuCtxCreate(0, driver.CUdevice(0))
    assert err == driver.CUresult.CUDA_SUCCESS
    try:
        for x in xs:                            # the warm path (first call above), twice
            cudit.qk_norm_rope(x, qw, kw, cos, sin, num_heads=H)
        cudit.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=H, out=out)
        assert int(driver.cuCtxGetCurrent()[1]) == int(other)
    finally:
        driver.cuCtxDestroy(other)
        driver.cuCtxSetCurrent(primary)
    torch.cuda.synchronize()
    assert all(torch.equal(x, want) for x in xs)
    assert torch.equal(out[..., :2 * H * D], want[..., :2 * H * D])


def test_threads_share_plans_and_each_launches_on_its_own_stream():
    import threading

    import torch

    import cudit

    qkv, qw, kw, cos, sin = _inputs(torch)
    cudit.qk_norm_rope(qkv.clone(), qw, kw, cos, sin, num_heads=H)    # one plan for all threads
    fresh = [_inputs(torch, seed=60 + i)[0] for i in range(4)]
    want = [_direct(torch, f, qw, kw, cos, sin) for f in fresh]
    got, errors = [None] * 4, []

    def worker(i):
        try:
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                x = torch.empty_like(fresh[i])
                for _ in range(20):
                    torch.cuda._sleep(100_000)       # the copy lands late: a launch elsewhere reads early
                    x.copy_(fresh[i])
                    cudit.qk_norm_rope(x, qw, kw, cos, sin, num_heads=H)
                stream.synchronize()
                got[i] = x
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(torch.equal(g, w) for g, w in zip(got, want))
