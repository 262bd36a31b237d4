"""The public entry point."""
from __future__ import annotations

from . import _launch
from ._arrays import describe
from ._planner import Request, plan


def _is_pair(x) -> bool:
    return isinstance(x, (tuple, list))


def qk_norm_rope(qkv, q_weight, k_weight, cos=None, sin=None, *, num_heads=None, eps=1e-6,
                 interleave=True, q_add_weight=None, k_add_weight=None, num_txt_tokens=0,
                 seq_len=None, out=None, stream=None):
    """RMS-normalise Q and K (per head or across heads) and apply RoPE, in one pass.

    qkv is one packed array [.., (Hq+Hk+Hv)*D] / [B, S, H, D], or a (q, k) tuple. See
    SPEC.md section 2 for every argument. Returns qkv (in place) or out.
    """
    if _is_pair(qkv) and len(qkv) != 2:
        raise ValueError(f"qkv: expected one packed array or a (q, k) pair, got {len(qkv)} arrays")
    first = qkv[0] if _is_pair(qkv) else qkv
    handle = _launch.resolve_stream(stream, first)
    dl = _launch.consumer_stream(stream, handle, first)

    def view(x):
        if x is None:
            return None
        return tuple(describe(y, dl) for y in x) if _is_pair(x) else describe(x, dl)

    req = Request(
        qkv=view(qkv), q_weight=view(q_weight), k_weight=view(k_weight), cos=view(cos), sin=view(sin),
        num_heads=tuple(num_heads) if _is_pair(num_heads) else num_heads, eps=eps,
        interleave=bool(interleave), q_add_weight=view(q_add_weight), k_add_weight=view(k_add_weight),
        num_txt_tokens=num_txt_tokens, seq_len=seq_len, out=view(out),
    )
    p = plan(req)
    arrays = req.arrays()
    device_id = next(iter(arrays.values())).device_id
    _launch.launch(device_id, p, p.bind(arrays), handle)
    return qkv if out is None else out
