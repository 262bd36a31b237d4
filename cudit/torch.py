"""cudit as PyTorch operators: `torch.ops.cudit.*`, traceable by torch.compile.

    import cudit.torch
    cudit.torch.qk_norm_rope(qkv, q_weight, k_weight, cos, sin, num_heads=24)   # in place
    q2, k2 = cudit.torch.qk_norm_rope((q, k), qw, kw, cos, sin, inplace=False)

Four operators, registered with torch.library.Library (define / impl: the cheapest
dispatch per call), each with a fake implementation for tracing:

    cudit::qk_norm_rope_(qkv!)         packed, in place               -> ()
    cudit::qk_norm_rope(qkv)           packed, functional             -> Tensor (V copied)
    cudit::qk_norm_rope_split_(q!, k!) separate Q and K, in place     -> ()
    cudit::qk_norm_rope_split(q, k)    separate Q and K, functional   -> (Tensor, Tensor)

They run on the current stream of PyTorch. There is no autograd formula yet: with grad mode
on, a tensor that requires grad raises cudit.PlanError naming it (eager and under
torch.compile alike), rather than letting backward() compute a wrong gradient.
"""
from __future__ import annotations

import torch

from . import api
from ._arrays import check_no_autograd

_COMMON = ("Tensor? q_weight, Tensor? k_weight, Tensor? cos, Tensor? sin, {heads}, float eps=1e-06, "
           "bool interleave=True, Tensor? q_add_weight=None, Tensor? k_add_weight=None, "
           "int num_txt_tokens=0, int? seq_len=None")
_PACKED = _COMMON.format(heads="int[] num_heads")
_SPLIT = _COMMON.format(heads="int[]? num_heads=None")

_lib = torch.library.Library("cudit", "DEF")
_lib.define(f"qk_norm_rope_(Tensor(a!) qkv, {_PACKED}) -> ()")
_lib.define(f"qk_norm_rope(Tensor qkv, {_PACKED}) -> Tensor")
_lib.define(f"qk_norm_rope_split_(Tensor(a!) q, Tensor(b!) k, {_SPLIT}) -> ()")
_lib.define(f"qk_norm_rope_split(Tensor q, Tensor k, {_SPLIT}) -> (Tensor, Tensor)")


def _heads(num_heads):
    if num_heads is None:
        return None
    return num_heads[0] if len(num_heads) == 1 else tuple(num_heads)


# The kernels call cudit's launch path directly (arrays in api.ROLES order), skipping the
# public function's argument handling. The dispatcher leaves out trailing arguments equal
# to the schema's defaults, hence the defaults here.
def _packed_(qkv, q_weight, k_weight, cos, sin, num_heads, eps=1e-6, interleave=True, q_add_weight=None,
             k_add_weight=None, num_txt_tokens=0, seq_len=None, out=None):
    api.run(False, (qkv, None, out, None, q_weight, k_weight, q_add_weight, k_add_weight, cos, sin),
            (_heads(num_heads), eps, interleave, num_txt_tokens, seq_len), None)


def _packed(qkv, q_weight, k_weight, cos, sin, num_heads, *args):
    out = torch.empty_like(qkv)
    _packed_(qkv, q_weight, k_weight, cos, sin, num_heads, *args, out=out)
    _copy_v(qkv, out, _heads(num_heads))
    return out


def _copy_v(qkv, out, num_heads):
    """The V part of a packed array, which the kernel leaves alone."""
    hq, hk, hv = (num_heads,) * 3 if isinstance(num_heads, int) else num_heads
    if hv == 0:
        return
    if qkv.dim() == 4:       # [B, S, H, D]
        out[:, :, hq + hk:].copy_(qkv[:, :, hq + hk:])
    else:                    # [.., (Hq + Hk + Hv) * D]
        qk = qkv.shape[-1] // (hq + hk + hv) * (hq + hk)
        out[..., qk:].copy_(qkv[..., qk:])


def _split_(q, k, q_weight, k_weight, cos, sin, num_heads=None, eps=1e-6, interleave=True,
            q_add_weight=None, k_add_weight=None, num_txt_tokens=0, seq_len=None, out=None):
    q_out, k_out = out if out is not None else (None, None)
    api.run(True, (q, k, q_out, k_out, q_weight, k_weight, q_add_weight, k_add_weight, cos, sin),
            (_heads(num_heads), eps, interleave, num_txt_tokens, seq_len), None)


def _split(q, k, *args):
    out = (torch.empty_like(q), torch.empty_like(k))
    _split_(q, k, *args, out=out)
    return out


# CPU too: a host tensor then fails with cudit.PlanError naming it, not a dispatcher error.
for _name, _fn in (("qk_norm_rope_", _packed_), ("qk_norm_rope", _packed),
                   ("qk_norm_rope_split_", _split_), ("qk_norm_rope_split", _split)):
    _lib.impl(_name, _fn, "CUDA")
    _lib.impl(_name, _fn, "CPU")

_TENSOR_ARGS = ("q_weight", "k_weight", "cos", "sin")   # after the data, in schema order
_ADD_ARGS = ("q_add_weight", "k_add_weight")            # schema positions 4 and 5 after num_heads


def _no_autograd(data_roles, args) -> None:
    """Tracing sees what eager sees: no tensor autograd would track (torch.compile's training graphs)."""
    n = len(data_roles)
    named = list(zip(data_roles + _TENSOR_ARGS, args[:n + 4])) + list(zip(_ADD_ARGS, args[n + 7:n + 9]))
    for role, t in named:
        check_no_autograd(role, t)


@torch.library.register_fake("cudit::qk_norm_rope_", lib=_lib)
def _packed_fake_(*args):
    _no_autograd(("qkv",), args)


@torch.library.register_fake("cudit::qk_norm_rope", lib=_lib)
def _packed_fake(*args):
    _no_autograd(("qkv",), args)
    return torch.empty_like(args[0])


@torch.library.register_fake("cudit::qk_norm_rope_split_", lib=_lib)
def _split_fake_(*args):
    _no_autograd(("q", "k"), args)


@torch.library.register_fake("cudit::qk_norm_rope_split", lib=_lib)
def _split_fake(*args):
    _no_autograd(("q", "k"), args)
    return torch.empty_like(args[0]), torch.empty_like(args[1])


def qk_norm_rope(qkv, q_weight, k_weight, cos=None, sin=None, *, num_heads=None, eps=1e-6,
                 interleave=True, q_add_weight=None, k_add_weight=None, num_txt_tokens=0,
                 seq_len=None, inplace=True):
    """cudit.qk_norm_rope through the torch operators (same arguments minus out= and stream=;
    docs/api.md).

    In place (the default) returns qkv; otherwise new tensor(s) of the same shapes.
    """
    heads = None if num_heads is None else ([num_heads] if isinstance(num_heads, int) else list(num_heads))
    rest = (q_weight, k_weight, cos, sin, heads, eps, interleave, q_add_weight, k_add_weight,
            num_txt_tokens, seq_len)
    if isinstance(qkv, (tuple, list)):
        q, k = qkv
        if not inplace:
            return _SPLIT_OP(q, k, *rest)
        _SPLIT_OP_(q, k, *rest)
        return qkv
    if heads is None:
        raise TypeError("num_heads: expected an int or (Hq, Hk, Hv) for a packed qkv, got None")
    if not inplace:
        return _PACKED_OP(qkv, *rest)
    _PACKED_OP_(qkv, *rest)
    return qkv


# The overloads themselves: looking them up through torch.ops costs about a microsecond a call.
_PACKED_OP_ = torch.ops.cudit.qk_norm_rope_.default
_PACKED_OP = torch.ops.cudit.qk_norm_rope.default
_SPLIT_OP_ = torch.ops.cudit.qk_norm_rope_split_.default
_SPLIT_OP = torch.ops.cudit.qk_norm_rope_split.default
