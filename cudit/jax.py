"""cudit inside JAX programs, jit included: the kernel runs on XLA's own stream.

    import cudit.jax
    q2, k2 = cudit.jax.qk_norm_rope((q, k), qw, kw, cos, sin)          # under jax.jit too
    qkv2 = cudit.jax.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=24)

JAX arrays are immutable, so this is the functional form: it returns new arrays (for a packed
qkv, V carries over unchanged). It goes through jax.experimental.buffer_callback: the
outputs alias the inputs (XLA donates or copies them), and cudit then works in place on the
output buffers, on the stream XLA hands the callback.

Gradients: jax.grad / jax.vjp go through a custom_vjp whose backward is cudit's backward kernel
(the input's and the norm weights' gradients; cos and sin get zeros). Modes with no backward
(LayerNorm, position ids, partial rotary, Rope3D, tensor parallelism) have no rule: JAX raises
when asked to differentiate them.

Tensor parallelism inside shard_map: qk_norm_rope(..., tp_axis="tp") sums squares over this
device's heads, psums them over the named mesh axis and normalises by the total.
"""
from __future__ import annotations

import functools

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
                 rope=None, out_dtype=None, q_scale=None, k_scale=None, v_scale=None, amax=None):
    """cudit.qk_norm_rope as a JAX function (jit included): the same arguments minus out= and
    stream=; returns new arrays (docs/api.md).

    tp_axis: inside shard_map, the mesh axis the heads are split over: the sums of squares
    are psum-med over it; norm_width defaults to the weights' lengths times the axis size.

    out_dtype: jnp.float8_e4m3fn or jnp.float8_e5m2: fp8 results (packed: V quantised too), by
    q_scale / k_scale / v_scale (numbers, or float32 arrays of one value or one a head). amax:
    None, "tensor" or "head": also return (out, amaxes), the float32 max |y| of each side (Q, K,
    and V for packed input), one value or one a head. No gradient.
    """
    if out_dtype is not None:
        api.check_fp8_options(dict(sumsq=sumsq, norm_width=norm_width, tp_axis=tp_axis, q_bias=q_bias, k_bias=k_bias,
                                   q_add_bias=q_add_bias, k_add_bias=k_add_bias, positions=positions,
                                   rotary_dim=rotary_dim, rope=rope, norm=None if norm == "rms" else norm))
        return _fp8(qkv, q_weight, k_weight, cos, sin, out_dtype, (q_scale, k_scale, v_scale), amax,
                    dict(num_heads=num_heads, eps=eps, interleave=interleave, q_add_weight=q_add_weight,
                         k_add_weight=k_add_weight, num_txt_tokens=num_txt_tokens, seq_len=seq_len,
                         rope_offset=rope_offset))
    if tp_axis is None and sumsq is None and norm == "rms" and positions is None and rotary_dim is None and rope is None:
        static = (num_heads if not isinstance(num_heads, list) else tuple(num_heads), eps, interleave, num_txt_tokens,
                  seq_len, rope_offset)
        return _differentiable(static, isinstance(qkv, (tuple, list)))(
            tuple(qkv) if isinstance(qkv, (tuple, list)) else qkv, q_weight, k_weight, q_add_weight, k_add_weight,
            cos, sin)
    return _forward(qkv, q_weight, k_weight, cos, sin, num_heads=num_heads, eps=eps, interleave=interleave,
                    q_add_weight=q_add_weight, k_add_weight=k_add_weight, num_txt_tokens=num_txt_tokens,
                    seq_len=seq_len, sumsq=sumsq, norm_width=norm_width, rope_offset=rope_offset, tp_axis=tp_axis,
                    norm=norm, q_bias=q_bias, k_bias=k_bias, q_add_bias=q_add_bias, k_add_bias=k_add_bias,
                    positions=positions, rotary_dim=rotary_dim, rope=rope)


def _forward(qkv, q_weight, k_weight, cos, sin, *, num_heads, eps, interleave, q_add_weight, k_add_weight,
             num_txt_tokens, seq_len, sumsq, norm_width, rope_offset, tp_axis, norm, q_bias, k_bias, q_add_bias,
             k_add_bias, positions, rotary_dim, rope):
    """The forward through a buffer callback (no autodiff rule of its own)."""
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


@functools.lru_cache(maxsize=256)
def _differentiable(static: tuple, split: bool):
    """f(qkv, q_weight, k_weight, q_add_weight, k_add_weight, cos, sin) with cudit's backward as its
    VJP, for one set of static options."""
    num_heads, eps, interleave, num_txt_tokens, seq_len, rope_offset = static
    options = dict(num_heads=num_heads, eps=eps, interleave=interleave, num_txt_tokens=num_txt_tokens,
                   seq_len=seq_len, rope_offset=rope_offset)

    def forward(qkv, qw, kw, qa, ka, cos, sin):
        return _forward(qkv, qw, kw, cos, sin, q_add_weight=qa, k_add_weight=ka, sumsq=None, norm_width=None,
                        tp_axis=None, norm="rms", q_bias=None, k_bias=None, q_add_bias=None, k_add_bias=None,
                        positions=None, rotary_dim=None, rope=None, **options)

    f = jax.custom_vjp(forward)
    f.defvjp(lambda *args: (forward(*args), args), lambda res, dout: _backward(res, dout, split, options))
    return f


def _backward(res, dout, split: bool, options: dict):
    """Cotangents of (qkv, q_weight, k_weight, q_add_weight, k_add_weight, cos, sin)."""
    qkv, qw, kw, qa, ka, cos, sin = res
    data = list(qkv) if split else [qkv]
    grads = list(dout) if split else [dout]
    weights = {name: w for name, w in zip(("dq_weight", "dk_weight", "dq_add_weight", "dk_add_weight"),
                                          (qw, kw, qa, ka)) if w is not None}
    tables = [t for t in (cos, sin) if t is not None]

    def run(ctx, outs, *ins):
        # outs[:n] alias dout: the input's gradient is written over it (V's part is dout's own).
        n = len(data)
        given = dict(zip(weights, ins[2 * n:2 * n + len(weights)]))   # gradient's name -> its weight
        api.qk_norm_rope_backward(tuple(ins[n:2 * n]) if split else ins[n], tuple(outs[:n]) if split else outs[0],
                                  given.get("dq_weight"), given.get("dk_weight"),
                                  *(ins[2 * n + len(weights):] or (None, None)),
                                  q_add_weight=given.get("dq_add_weight"), k_add_weight=given.get("dk_add_weight"),
                                  stream=int(ctx.stream), **dict(zip(weights, outs[n:])), **options)

    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in data] + \
        [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights.values()]
    call = buffer_callback(run, shapes, input_output_aliases={i: i for i in range(len(data))})
    out = call(*grads, *data, *weights.values(), *tables)
    dx = tuple(out[:len(data)]) if split else out[0]
    dws = dict(zip(weights, out[len(data):]))
    zeros = lambda t: None if t is None else jnp.zeros_like(t)   # noqa: E731  (cos and sin: not learned)
    return (dx, dws.get("dq_weight"), dws.get("dk_weight"), dws.get("dq_add_weight"), dws.get("dk_add_weight"),
            zeros(cos), zeros(sin))


def _fp8(qkv, q_weight, k_weight, cos, sin, out_dtype, scales, amax, options):
    """fp8 output through a buffer callback: cudit writes uint8 buffers named as the fp8 dtype
    (DLPack readers may not know fp8 codes), reinterpreted as that dtype afterwards."""
    if amax not in (None, "tensor", "head"):
        raise api.PlanError(f"amax: expected None, 'tensor' or 'head', got {amax!r}")
    fmt = jnp.dtype(out_dtype).name
    split = isinstance(qkv, (tuple, list))
    data = list(qkv) if split else [qkv]
    heads = _side_heads(data, options["num_heads"], split)
    arrays = {name: x for name, x in zip(("q_weight", "k_weight", "cos", "sin", "q_add_weight", "k_add_weight"),
                                         (q_weight, k_weight, cos, sin, options.pop("q_add_weight"),
                                          options.pop("k_add_weight"))) if x is not None}
    arrays.update((r, x) for r, x in zip(("q_scale", "k_scale", "v_scale"), scales)
                  if x is not None and not isinstance(x, (int, float)))
    values = {r: x for r, x in zip(("q_scale", "k_scale", "v_scale"), scales) if isinstance(x, (int, float))}
    amaxes = [jnp.zeros(h if amax == "head" else 1, jnp.float32) for h in heads if h] if amax else []
    names = tuple(arrays)

    def run(ctx, outs, *ins):
        n = len(data)
        given = dict(zip(names, ins[n:n + len(names)]))
        api.qk_norm_rope(tuple(ins[:n]) if split else ins[0], given.pop("q_weight", None), given.pop("k_weight", None),
                         given.pop("cos", None), given.pop("sin", None), out=tuple(outs[:n]) if split else outs[0],
                         out_dtype=fmt, stream=int(ctx.stream), **given, **values, **options,
                         **dict(zip(("q_amax", "k_amax", "v_amax"), outs[n:])))

    shapes = [jax.ShapeDtypeStruct(x.shape, jnp.uint8) for x in data] + \
        [jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in amaxes]
    first = len(data) + len(names)   # the zeroed amaxes are updated in place
    call = buffer_callback(run, shapes, input_output_aliases={first + i: len(data) + i for i in range(len(amaxes))})
    result = call(*data, *arrays.values(), *amaxes)
    out = [jax.lax.bitcast_convert_type(r, out_dtype) for r in result[:len(data)]]
    out = tuple(out) if split else out[0]
    return (out, tuple(result[len(data):])) if amax else out


def _side_heads(data, num_heads, split: bool) -> tuple:
    """(Hq, Hk, Hv) of a call (Hv 0 for split input), for the per-head amax shapes."""
    if split and data[0].ndim == 4:
        return data[0].shape[2], data[1].shape[2], 0
    if isinstance(num_heads, int):
        return (num_heads, num_heads, 0 if split else num_heads)
    heads = tuple(num_heads)
    return heads + (0,) if split else heads


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
