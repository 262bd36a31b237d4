"""cudit inside JAX programs, jit included: the kernel runs on XLA's own stream.

    import cudit.jax
    q2, k2 = cudit.jax.qk_norm_rope((q, k), qw, kw, cos, sin)          # under jax.jit too
    qkv2 = cudit.jax.qk_norm_rope(qkv, qw, kw, cos, sin, num_heads=24)

JAX arrays are immutable, so this is the functional form: it returns new arrays (for a packed
qkv, V carries over unchanged). It goes through jax.experimental.buffer_callback: the
outputs alias the inputs (XLA donates or copies them), and cudit then works in place on the
output buffers, on the stream XLA hands the callback. No autodiff rule: inference only.
"""
from __future__ import annotations

import jax
from jax.experimental.buffer_callback import buffer_callback

from .api import qk_norm_rope as _launch_qk_norm_rope

_OPTIONAL = ("q_weight", "k_weight", "q_add_weight", "k_add_weight", "cos", "sin")


def qk_norm_rope(qkv, q_weight, k_weight, cos=None, sin=None, *, num_heads=None, eps=1e-6,
                 interleave=True, q_add_weight=None, k_add_weight=None, num_txt_tokens=0,
                 seq_len=None):
    """cudit.qk_norm_rope as a JAX function (jit included): the same arguments minus out= and
    stream=; returns new arrays (docs/api.md)."""
    split = isinstance(qkv, (tuple, list))
    data = list(qkv) if split else [qkv]
    given = {name: x for name, x in zip(_OPTIONAL, (q_weight, k_weight, q_add_weight, k_add_weight,
                                                    cos, sin)) if x is not None}
    names = tuple(given)

    def run(ctx, outs, *ins):
        # outs alias the data inputs: they already hold Q and K, and cudit works on them in place.
        extra = dict(zip(names, ins[len(data):]))
        target = tuple(outs) if split else outs[0]
        _launch_qk_norm_rope(target, extra.get("q_weight"), extra.get("k_weight"), extra.get("cos"),
                             extra.get("sin"), num_heads=num_heads, eps=eps, interleave=interleave,
                             q_add_weight=extra.get("q_add_weight"), k_add_weight=extra.get("k_add_weight"),
                             num_txt_tokens=num_txt_tokens, seq_len=seq_len, stream=int(ctx.stream))

    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in data]
    call = buffer_callback(run, shapes, input_output_aliases={i: i for i in range(len(data))})
    result = call(*data, *given.values())
    return tuple(result) if split else result[0]
