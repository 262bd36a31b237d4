"""cudit with CuPy on several GPUs: tensor parallelism through NCCL or any all-reduce.

    import cudit.cupy
    from cupy.cuda import nccl
    comm = nccl.NcclCommunicator(world, uid, rank)
    cudit.cupy.qk_norm_rope(qkv, qw_local, kw_local, cos, sin, num_heads=(h, h, h), tp_comm=comm)

Single-GPU calls need nothing from here: cudit.qk_norm_rope takes CuPy arrays as they are.
"""
from __future__ import annotations

import cupy

from . import _launch, api
from ._errors import PlanError


def qk_norm_rope(qkv, q_weight, k_weight, cos=None, sin=None, *, tp_comm, norm_width=None, num_heads=None,
                 seq_len=None, stream=None, **options):
    """cudit.qk_norm_rope with this rank's heads of a full-dim norm split over ranks.

    tp_comm: a cupy.cuda.nccl.NcclCommunicator, or a callable ``all_reduce(sums, stream)``
    that sums the float32 CuPy array in place over the ranks, in order on ``stream`` (an int
    handle). norm_width defaults to the weights' lengths times the communicator's size
    (required with a callable). Other arguments: as cudit.qk_norm_rope.
    """
    if callable(tp_comm) and norm_width is None:
        raise PlanError("norm_width: expected the width a token's norm runs over on all ranks, with a "
                        "callable tp_comm, got None")
    x = qkv[0] if isinstance(qkv, (tuple, list)) else qkv
    handle = cupy.cuda.get_current_stream().ptr if stream is None else _launch.resolve_stream(stream, x)
    sums = cupy.empty(api.sumsq_shape(x.shape), dtype=cupy.float32)
    api.qk_sumsq(qkv, sums, num_heads=num_heads, seq_len=seq_len, stream=handle)
    if callable(tp_comm):
        tp_comm(sums, handle)
    else:
        from cupy.cuda import nccl

        tp_comm.allReduce(sums.data.ptr, sums.data.ptr, sums.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, handle)
        if norm_width is None:
            norm_width = (q_weight.size * tp_comm.size(), k_weight.size * tp_comm.size())
    return api.qk_norm_rope(qkv, q_weight, k_weight, cos, sin, num_heads=num_heads, seq_len=seq_len, stream=handle,
                            sumsq=sums, norm_width=norm_width, **options)
