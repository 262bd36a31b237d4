"""cudit inside JAX programs, jit included: the kernel runs on XLA's own stream.

    import cudit.jax
    q2, k2 = cudit.jax.qk_norm_rope((q, k), qw, kw, cos, sin)          # under jax.jit too
    qkv2 = cudit.jax.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=24)

JAX arrays are immutable, so this is the functional form: it returns new arrays (for a packed
qkv, V carries over unchanged). It goes through jax.experimental.buffer_callback: the
outputs alias the inputs (XLA donates or copies them), and cudit then works in place on the
output buffers, on the stream XLA hands the callback. No autodiff rule: inference only.

Tensor parallelism inside shard_map: qk_norm_rope(..., tp_axis="tp") sums squares over this
device's heads, psums them over the named mesh axis and normalises by the total.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.buffer_callback import buffer_callback

from . import api

_OPTIONAL = ("q_weight", "k_weight", "q_add_weight", "k_add_weight", "cos", "sin", "sumsq", "positions", "q_bias",
             "k_bias", "q_add_bias", "k_add_bias")


def qk_norm_rope(qkv, q_weight, k_weight, cos=None, sin=None, *, num_heads=None, eps=1e-6,
                 interleave=True, q_add_weight=None, k_add_weight=None, num_txt_tokens=0,
                 seq_len=None, sumsq=None, norm_width=None, rope_offset=None, tp_axis=None, norm="rms",
                 q_bias=None, k_bias=None, q_add_bias=None, k_add_bias=None, positions=None, rotary_dim=None,
                 rope=None):
    """cudit.qk_norm_rope as a JAX function (jit included): the same arguments minus out= and
    stream=; returns new arrays (docs/api.md).

    tp_axis: inside shard_map, the mesh axis the heads are split over: the sums of squares
    are psum-med over it; norm_width defaults to the weights' lengths times the axis size.
    """
    if tp_axis is not None:
        sumsq = jax.lax.psum(qk_sumsq(qkv, num_heads=num_heads, seq_len=seq_len), tp_axis)
        if norm_width is None:
            size = _axis_size(tp_axis)
            norm_width = (q_weight.shape[0] * size, k_weight.shape[0] * size)
    split = isinstance(qkv, (tuple, list))
    data = list(qkv) if split else [qkv]
    given = {name: x for name, x in zip(_OPTIONAL, (q_weight, k_weight, q_add_weight, k_add_weight, cos, sin, sumsq,
                                                    positions, q_bias, k_bias, q_add_bias, k_add_bias)) if x is not None}
    names = tuple(given)

    def run(ctx, outs, *ins):
        # outs alias the data inputs: they already hold Q and K, and cudit works on them in place.
        extra = dict(zip(names, ins[len(data):]))
        target = tuple(outs) if split else outs[0]
        api.qk_norm_rope(target, extra.get("q_weight"), extra.get("k_weight"), extra.get("cos"), extra.get("sin"),
                         num_heads=num_heads, eps=eps, interleave=interleave,
                         q_add_weight=extra.get("q_add_weight"), k_add_weight=extra.get("k_add_weight"),
                         num_txt_tokens=num_txt_tokens, seq_len=seq_len, stream=int(ctx.stream),
                         sumsq=extra.get("sumsq"), norm_width=norm_width, rope_offset=rope_offset, norm=norm,
                         positions=extra.get("positions"), rotary_dim=rotary_dim, rope=rope,
                         **{b: extra.get(b) for b in _OPTIONAL[-4:]})

    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in data]
    call = buffer_callback(run, shapes, input_output_aliases={i: i for i in range(len(data))})
    result = call(*data, *given.values())
    return tuple(result) if split else result[0]


def qk_sumsq(qkv, *, num_heads=None, seq_len=None):
    """cudit.qk_sumsq as a JAX function: a new float32 array, [T, 2] for 2-D data, else [B, S, 2]."""
    split = isinstance(qkv, (tuple, list))
    data = list(qkv) if split else [qkv]
    shape = api.sumsq_shape(data[0].shape)

    def run(ctx, outs, *ins):
        api.qk_sumsq(tuple(ins) if split else ins[0], outs[0], num_heads=num_heads, seq_len=seq_len,
                     stream=int(ctx.stream))

    return buffer_callback(run, [jax.ShapeDtypeStruct(shape, jnp.float32)])(*data)[0]


def _axis_size(name) -> int:
    size = getattr(jax.lax, "axis_size", None)
    return int(size(name) if size is not None else jax.lax.psum(1, name))
