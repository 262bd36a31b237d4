"""Tensor and sequence parallelism on the GPUs of one host (two, or four where there are), through
each framework's collectives: torch.distributed (NCCL, eager and torch.compile), JAX (psum in
shard_map) and CuPy (NCCL). Every rank checks its result against the one-GPU call on the whole
tensors."""
import socket

import numpy as np
import pytest

from parallel_cases import head_groups, rank_heads, rank_slice, wan_like, within_one_ulp

pytestmark = [pytest.mark.gpu, pytest.mark.multi_gpu]
D = 128


def _world() -> int:
    """Ranks: four where the host has them (TP=4), else two."""
    from conftest import gpu_count

    return 4 if gpu_count() >= 4 else 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_rank(got, whole, heads, group, what):
    """A rank's packed [B, S, 3h*D] result against its heads of the one-GPU result."""
    import torch

    h = len(group)
    got, want = got.unflatten(-1, (3, h, D)), rank_heads(whole, heads, group)
    worst, over = within_one_ulp(got[:, :, :2], want[:, :, :2], "bf16")
    assert over == 0, f"{what}: {over} Q/K elements over 1 ulp of one GPU (worst {worst:.2f})"
    assert torch.equal(got[:, :, 2], want[:, :, 2]), f"{what}: V changed"


def _torch_rank(rank, world, port):
    import torch
    import torch.distributed as dist

    import cudit.torch

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            device_id=torch.device("cuda", rank))
    group = dist.group.WORLD
    try:
        # WAN-1.3B and WAN-14B; the last, with more tokens than the exchange buffers have room for,
        # replaces them.
        for heads, S in ((12, 300), (40, 300), (40, 700)):
            qkv, qw, kw, cos, sin = wan_like(heads, "bf16", B=1, S=S, seed=heads + S)   # alike on every rank
            whole = cudit.torch.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=heads, inplace=False)
            mine = head_groups(heads, world)[rank]
            local, lq, lk = rank_slice(qkv, qw, kw, heads, mine)
            h = (len(mine),) * 3

            def step(x, collective="auto"):
                return cudit.torch.qk_norm_rope(x, lq, lk, cos, sin, num_heads=h, inplace=False, tp_group=group,
                                                collective=collective)

            # two phases over a one-shot all-reduce (where torch has symmetric memory) or NCCL; one pass
            for collective in ("auto", "nccl", "exchange"):
                results = [step(local, collective) for _ in range(6)]   # back to back: buffers reused
                for got in results:
                    _check_rank(got, whole, heads, mine, f"rank {rank} eager {collective}, {heads} heads")
            compiled = torch.compile(step, fullgraph=True)
            for collective in ("auto", "exchange"):
                _check_rank(compiled(local, collective), whole, heads, mine,
                            f"rank {rank} compiled {collective}, {heads} heads")
            if S == 300:
                _check_graph_replays(lambda x: step(x, "exchange"), (qkv, qw, kw, cos, sin), local, whole, heads, mine,
                                     rank)
            # Sequence parallelism: this rank's half of the tokens, with the table's offset.
            s = qkv.shape[1] // world
            seq = cudit.torch.qk_norm_rope(qkv[:, rank * s:(rank + 1) * s], qw, kw, cos, sin, num_heads=heads,
                                           inplace=False, rope_offset=rank * s)
            assert torch.equal(seq.view(torch.int16), whole[:, rank * s:(rank + 1) * s].view(torch.int16))
    finally:
        dist.destroy_process_group()


def _check_graph_replays(step, case, local, whole, heads, mine, rank):
    """The one pass inside a CUDA graph: replays alternate two inputs, so a sum left over from
    an earlier call shows (each call's epoch lives on the GPU, not in the graph)."""
    import torch

    import cudit.torch

    qkv, qw, kw, cos, sin = case
    other = torch.randn(qkv.shape, generator=torch.Generator().manual_seed(7)).to(qkv)   # alike on every rank
    other_whole = cudit.torch.qk_norm_rope(other, qw, kw, cos, sin, num_heads=heads, inplace=False)
    other_local = rank_slice(other, qw, kw, heads, mine)[0]
    static = local.clone()
    step(static)   # the buffers exist before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(static)
    for i in range(4):
        data, want = (local, whole) if i % 2 else (other_local, other_whole)
        static.copy_(data)
        graph.replay()
        _check_rank(out, want, heads, mine, f"rank {rank} graph replay {i}, {heads} heads")


def test_torch_distributed_nccl_eager_and_compiled():
    import torch.multiprocessing as mp

    mp.spawn(_torch_rank, args=(_world(), _free_port()), nprocs=_world())


def _shard_map(fn, mesh, in_specs, out_specs):
    import jax

    smap = getattr(jax, "shard_map", None)
    if smap is None:
        from jax.experimental.shard_map import shard_map as smap
    for off in ({"check_vma": False}, {"check_rep": False}):
        try:
            return smap(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **off)
        except TypeError:
            continue
    raise RuntimeError("shard_map takes neither check_vma nor check_rep")


def test_jax_psum_in_shard_map():
    import jax
    import jax.numpy as jnp
    import torch
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    import cudit.jax

    heads = 12
    qkv, qw, kw, cos, sin = wan_like(heads, "bf16", B=1, S=300, seed=3, device="cpu")
    j = lambda t: jnp.asarray(t.float().numpy()).astype(jnp.bfloat16 if t.dtype == torch.bfloat16 else jnp.float32)  # noqa: E731
    x, jqw, jkw, jcos, jsin = map(j, (qkv, qw, kw, cos, sin))
    whole = cudit.jax.qk_norm_rope(x, jqw, jkw, jcos, jsin, num_heads=heads)
    world = _world()
    h = heads // world
    mesh = Mesh(np.array(jax.devices()[:world]), ("tp",))

    def rank_step(x5, wq, wk, c, s):   # x5: this device's heads, [B, S, 3, h, D]
        local = x5.reshape(*x5.shape[:2], -1)
        out = cudit.jax.qk_norm_rope(local, wq.reshape(-1), wk.reshape(-1), c, s, num_heads=(h, h, h), tp_axis="tp")
        return out.reshape(x5.shape)

    heads_axis = P(None, None, None, "tp")
    step = jax.jit(_shard_map(rank_step, mesh, (heads_axis, P("tp"), P("tp"), P(), P()), heads_axis))
    got = step(x.reshape(1, 300, 3, heads, D), jqw.reshape(heads, D), jkw.reshape(heads, D), jcos, jsin)
    got = torch.from_numpy(np.asarray(got.astype(jnp.float32)))
    want = torch.from_numpy(np.asarray(whole.astype(jnp.float32))).reshape(1, 300, 3, heads, D)
    worst, over = within_one_ulp(got[:, :, :2], want[:, :, :2], "bf16")
    assert over == 0, f"{over} Q/K elements over 1 ulp of one GPU (worst {worst:.2f})"
    assert torch.equal(got[:, :, 2], want[:, :, 2])


def _cupy_rank(rank, world, uid):
    import cupy
    import torch
    from cupy.cuda import nccl

    import cudit
    import cudit.cupy

    torch.cuda.set_device(rank)
    cupy.cuda.Device(rank).use()
    comm = nccl.NcclCommunicator(world, uid, rank)
    heads = 40
    qkv, qw, kw, cos, sin = wan_like(heads, "bf16", B=1, S=300, seed=5)
    whole = cudit.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=heads, out=torch.empty_like(qkv))
    mine = head_groups(heads, world)[rank]
    local, lq, lk = rank_slice(qkv, qw, kw, heads, mine)
    h = (len(mine),) * 3
    c = cupy.from_dlpack
    out = cupy.empty_like(c(local))
    torch.cuda.synchronize()   # CuPy's stream next
    cudit.cupy.qk_norm_rope(c(local), c(lq), c(lk), c(cos), c(sin), num_heads=h, tp_comm=comm, out=out)
    cupy.cuda.get_current_stream().synchronize()
    _check_rank(torch.from_dlpack(out), whole, heads, mine, f"cupy rank {rank}")


def test_cupy_nccl():
    cupy = pytest.importorskip("cupy")
    from cupy.cuda import nccl

    if not nccl.available:
        pytest.skip("CuPy was built without NCCL")
    import torch.multiprocessing as mp

    mp.spawn(_cupy_rank, args=(_world(), nccl.get_unique_id()), nprocs=_world())
