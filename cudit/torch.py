"""cudit as PyTorch operators: `torch.ops.cudit.*`, traceable by torch.compile.

    import cudit.torch
    cudit.torch.qk_norm_rope(qkv, q_weight, k_weight, cos, sin, num_heads=24)   # in place
    q2, k2 = cudit.torch.qk_norm_rope((q, k), qw, kw, cos, sin, inplace=False)

Eleven operators, registered with torch.library.Library (define / impl: the cheapest
dispatch per call), each with a fake implementation for tracing:

    cudit::qk_norm_rope_(qkv!)         packed, in place               -> ()
    cudit::qk_norm_rope(qkv)           packed, functional             -> Tensor (V copied)
    cudit::qk_norm_rope_split_(q!, k!) separate Q and K, in place     -> ()
    cudit::qk_norm_rope_split(q, k)    separate Q and K, functional   -> (Tensor, Tensor)
    cudit::qk_norm_rope_backward(dout, qkv), cudit::qk_norm_rope_split_backward(dq, dk, q, k)
                                       the functional ones' backward  -> (dx.., d weights)
    cudit::qk_norm_rope_fp8(qkv), cudit::qk_norm_rope_split_fp8(q, k)
                                       fp8 output (and packed V), scales, amaxes -> new fp8 Tensor(s)
    cudit::qk_sumsq(qkv)               tensor parallelism's sums      -> Tensor [.., 2] float32
    cudit::qk_sumsq_split(q, k)        the same for separate Q and K  -> Tensor
    cudit::qk_sumsq_all_reduced(q, k?) the sums, all-reduced over a group -> Tensor

Tensor parallelism (heads over the ranks of a process group, full-dim norm): pass
tp_group= to qk_norm_rope. The sums go through one all-reduce: by default inside
cudit::qk_sumsq_all_reduced, a one-shot all-reduce over symmetric memory where torch supports
it on the group, else NCCL; with collective="nccl", a functional all-reduce that torch.compile
traces; with collective="exchange", none: the norm's kernel trades them with the other ranks
through symmetric memory (the exchange_group argument of the norm operators). None breaks a
graph (docs/parallel.md).

They run on the current stream of PyTorch. The functional operators have an autograd formula
(their backward: cudit::qk_norm_rope_backward and cudit::qk_norm_rope_split_backward); the
in-place ones overwrite what the backward needs, so with grad mode on a tensor that requires
grad raises cudit.PlanError naming it (eager and under torch.compile alike), as do the modes
with no backward yet on the functional ones.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.distributed._functional_collectives as funcol

from . import api
from ._arrays import check_no_autograd
from ._rope3d import Rope3D

_COMMON = ("Tensor? q_weight, Tensor? k_weight, Tensor? cos, Tensor? sin, {heads}, float eps=1e-06, "
           "bool interleave=True, Tensor? q_add_weight=None, Tensor? k_add_weight=None, "
           "int num_txt_tokens=0, int? seq_len=None, Tensor? sumsq=None, int[]? norm_width=None, "
           "int? rope_offset=None, Tensor? q_bias=None, Tensor? k_bias=None, Tensor? q_add_bias=None, "
           "Tensor? k_add_bias=None, str norm=\"rms\", Tensor? positions=None, int? rotary_dim=None, "
           "float[]? rope3d=None, str? exchange_group=None")
_PACKED = _COMMON.format(heads="int[] num_heads")
_SPLIT = _COMMON.format(heads="int[]? num_heads=None")

_lib = torch.library.Library("cudit", "DEF")
_lib.define(f"qk_norm_rope_(Tensor(a!) qkv, {_PACKED}) -> ()")
_lib.define(f"qk_norm_rope(Tensor qkv, {_PACKED}) -> Tensor")
_lib.define(f"qk_norm_rope_split_(Tensor(a!) q, Tensor(b!) k, {_SPLIT}) -> ()")
_lib.define(f"qk_norm_rope_split(Tensor q, Tensor k, {_SPLIT}) -> (Tensor, Tensor)")
_BACKWARD = ("Tensor? q_weight, Tensor? k_weight, Tensor? cos, Tensor? sin, int[]? num_heads, float eps, "
             "bool interleave, Tensor? q_add_weight, Tensor? k_add_weight, int num_txt_tokens, int? seq_len, "
             "int? rope_offset, bool[] weight_grads")
_lib.define(f"qk_norm_rope_backward(Tensor dout, Tensor qkv, {_BACKWARD}) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
_lib.define(f"qk_norm_rope_split_backward(Tensor dout_q, Tensor dout_k, Tensor q, Tensor k, {_BACKWARD}) -> "
            "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
_FP8 = ("Tensor? q_weight, Tensor? k_weight, Tensor? cos, Tensor? sin, {heads}, float eps, bool interleave, "
        "Tensor? q_add_weight, Tensor? k_add_weight, int num_txt_tokens, int? seq_len, int? rope_offset, "
        "ScalarType out_dtype, float[] scale_values, Tensor? q_scale, Tensor? k_scale, Tensor? v_scale, "
        "Tensor(a!)? q_amax, Tensor(b!)? k_amax, Tensor(c!)? v_amax")
_lib.define(f"qk_norm_rope_fp8(Tensor qkv, {_FP8.format(heads='int[] num_heads')}) -> Tensor")
_lib.define(f"qk_norm_rope_split_fp8(Tensor q, Tensor k, {_FP8.format(heads='int[]? num_heads')}) -> (Tensor, Tensor)")
_lib.define("qk_sumsq(Tensor qkv, int[] num_heads, int? seq_len=None) -> Tensor")
_lib.define("qk_sumsq_split(Tensor q, Tensor k, int[]? num_heads=None, int? seq_len=None) -> Tensor")
_lib.define("qk_sumsq_all_reduced(Tensor q, Tensor? k, int[]? num_heads, int? seq_len, str group_name) -> Tensor")


def _heads(num_heads):
    """A schema's int[] as the int or tuple cudit takes (num_heads, norm_width)."""
    if num_heads is None:
        return None
    return num_heads[0] if len(num_heads) == 1 else tuple(num_heads)


def _options(num_heads, eps, interleave, num_txt_tokens, seq_len, stats, norm_width, rope_offset, norm, rotary_dim,
             rope3d):
    return (_heads(num_heads), eps, interleave, num_txt_tokens, seq_len, _heads(norm_width), rope_offset,
            stats, norm, rotary_dim, None if rope3d is None else _rope3d(tuple(rope3d))) + api.NO_FP8


def _tp_inputs(q, k, num_heads, seq_len, sumsq, exchange_group):
    """(sumsq, the options' stats): one GPU, sums given, or over exchange_group's ranks in one
    pass (a cudit.Exchange over symmetric memory) or, where the group has none, two."""
    if exchange_group is None:
        return sumsq, "" if sumsq is None else "given"
    ex = _exchange(exchange_group, math.prod(_sums_shape(q)) // 2, q.device)
    if ex is None:
        return _all_reduced(q, k, num_heads, seq_len, exchange_group), "given"
    return None, ex


@functools.lru_cache(maxsize=64)
def _rope3d(fields: tuple) -> Rope3D:
    """A schema's float[] back into its Rope3D, once per value: warm calls skip the checks."""
    return Rope3D.from_fields(fields)


_NO_QUANT_ARRAYS = (None,) * 6   # scales and amaxes (fp8 output: the _fp8 operators)


# The kernels call cudit's launch path directly (arrays in api.ROLES order), skipping the
# public function's argument handling. The dispatcher leaves out trailing arguments equal
# to the schema's defaults, hence the defaults here.
def _packed_(qkv, q_weight, k_weight, cos, sin, num_heads, eps=1e-6, interleave=True, q_add_weight=None,
             k_add_weight=None, num_txt_tokens=0, seq_len=None, sumsq=None, norm_width=None, rope_offset=None,
             q_bias=None, k_bias=None, q_add_bias=None, k_add_bias=None, norm="rms", positions=None, rotary_dim=None,
             rope3d=None, exchange_group=None, out=None):
    sumsq, stats = _tp_inputs(qkv, None, num_heads, seq_len, sumsq, exchange_group)
    api.run(False, (qkv, None, out, None, q_weight, k_weight, q_add_weight, k_add_weight, cos, sin, sumsq, q_bias,
                    k_bias, q_add_bias, k_add_bias, positions) + _NO_QUANT_ARRAYS,
            _options(num_heads, eps, interleave, num_txt_tokens, seq_len, stats, norm_width, rope_offset, norm,
                     rotary_dim, rope3d), None)


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
            q_add_weight=None, k_add_weight=None, num_txt_tokens=0, seq_len=None, sumsq=None, norm_width=None,
            rope_offset=None, q_bias=None, k_bias=None, q_add_bias=None, k_add_bias=None, norm="rms", positions=None,
            rotary_dim=None, rope3d=None, exchange_group=None, out=None):
    q_out, k_out = out if out is not None else (None, None)
    sumsq, stats = _tp_inputs(q, k, num_heads, seq_len, sumsq, exchange_group)
    api.run(True, (q, k, q_out, k_out, q_weight, k_weight, q_add_weight, k_add_weight, cos, sin, sumsq, q_bias, k_bias,
                   q_add_bias, k_add_bias, positions) + _NO_QUANT_ARRAYS,
            _options(num_heads, eps, interleave, num_txt_tokens, seq_len, stats, norm_width, rope_offset, norm,
                     rotary_dim, rope3d), None)


def _split(q, k, *args):
    out = (torch.empty_like(q), torch.empty_like(k))
    _split_(q, k, *args, out=out)
    return out


def _sums_shape(x) -> tuple:
    return api.sumsq_shape(tuple(x.shape))


def _sumsq(qkv, num_heads, seq_len=None):
    """qkv: a tensor, or a (q, k) pair."""
    x = qkv[0] if isinstance(qkv, tuple) else qkv
    sums = torch.empty(_sums_shape(x), dtype=torch.float32, device=x.device)
    return api.qk_sumsq(qkv, sums, num_heads=_heads(num_heads), seq_len=seq_len)


def _sumsq_split(q, k, num_heads=None, seq_len=None):
    return _sumsq((q, k), num_heads, seq_len)


# ------------------------------------------------------------------ backward


def _weight_grads(weights, wanted, like):
    """A new gradient tensor for each weight whose gradient is wanted, else an empty one (a
    schema's returns cannot be None)."""
    return [w.new_empty(w.shape) if w is not None and want else like.new_empty(0) for w, want in zip(weights, wanted)]


def _backward_args(dout, x, q_weight, k_weight, cos, sin, num_heads, eps, interleave, q_add_weight, k_add_weight,
                   num_txt_tokens, seq_len, rope_offset, weight_grads, dx):
    first = x[0] if isinstance(x, tuple) else x
    grads = _weight_grads((q_weight, k_weight, q_add_weight, k_add_weight), weight_grads, first)
    given = [g if g.numel() else None for g in grads]
    api.qk_norm_rope_backward(x, dout, q_weight, k_weight, cos, sin, num_heads=_heads(num_heads), eps=eps,
                              interleave=interleave, q_add_weight=q_add_weight, k_add_weight=k_add_weight,
                              num_txt_tokens=num_txt_tokens, seq_len=seq_len, rope_offset=rope_offset, dqkv=dx,
                              dq_weight=given[0], dk_weight=given[1], dq_add_weight=given[2], dk_add_weight=given[3],
                              workspace=lambda n: torch.empty(n, dtype=torch.uint8, device=first.device))
    return grads


def _dense_last(t):
    """Autograd hands over gradients of any layout (an expanded scalar's, say); the kernel wants
    a contiguous last axis."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _packed_backward(dout, qkv, *args):
    dout = _dense_last(dout)
    dx = torch.empty_like(qkv)
    _copy_v(dout, dx, _heads(args[4]))   # V's gradient passes through
    return (dx, *_backward_args(dout, qkv, *args, dx))


def _split_backward(dout_q, dout_k, q, k, *args):
    dout = (_dense_last(dout_q), _dense_last(dout_k))
    dx = (torch.empty_like(q), torch.empty_like(k))
    return (*dx, *_backward_args(dout, (q, k), *args, dx))


def _fp8(data, out, q_weight, k_weight, cos, sin, num_heads, eps, interleave, q_add_weight, k_add_weight,
         num_txt_tokens, seq_len, rope_offset, out_dtype, scale_values, q_scale, k_scale, v_scale, q_amax, k_amax,
         v_amax):
    """fp8 output through the public function (scale_values: the numbers where no tensor is given)."""
    number = lambda t, v: t if t is not None else (None if v == 1.0 else v)   # noqa: E731  (None means 1)
    api.qk_norm_rope(data, q_weight, k_weight, cos, sin, num_heads=_heads(num_heads), eps=eps, interleave=interleave,
                     q_add_weight=q_add_weight, k_add_weight=k_add_weight, num_txt_tokens=num_txt_tokens,
                     seq_len=seq_len, rope_offset=rope_offset, out=out,
                     q_scale=number(q_scale, scale_values[0]), k_scale=number(k_scale, scale_values[1]),
                     v_scale=number(v_scale, scale_values[2]), q_amax=q_amax, k_amax=k_amax, v_amax=v_amax)
    return out


_OUT_DTYPE = 12   # the fp8 operators' out_dtype, by position after the data


def _fp8_like(x, args):
    """A new tensor shaped like x in the call's fp8 dtype (the operators' result, eager and fake)."""
    return x.new_empty(x.shape, dtype=args[_OUT_DTYPE])


def _packed_fp8(qkv, *args):
    return _fp8(qkv, _fp8_like(qkv, args), *args)


def _split_fp8(q, k, *args):
    return _fp8((q, k), (_fp8_like(q, args), _fp8_like(k, args)), *args)


# CPU too: a host tensor then fails with cudit.PlanError naming it, not a dispatcher error.
for _name, _fn in (("qk_norm_rope_", _packed_), ("qk_norm_rope", _packed),
                   ("qk_norm_rope_split_", _split_), ("qk_norm_rope_split", _split),
                   ("qk_norm_rope_backward", _packed_backward), ("qk_norm_rope_split_backward", _split_backward),
                   ("qk_sumsq", _sumsq), ("qk_sumsq_split", _sumsq_split), ("qk_norm_rope_fp8", _packed_fp8),
                   ("qk_norm_rope_split_fp8", _split_fp8)):
    _lib.impl(_name, _fn, "CUDA")
    _lib.impl(_name, _fn, "CPU")

# Tensor arguments after the data, by schema position after it (num_heads sits at 4).
_TENSOR_ARGS = ((0, "q_weight"), (1, "k_weight"), (2, "cos"), (3, "sin"), (7, "q_add_weight"),
                (8, "k_add_weight"), (11, "sumsq"), (14, "q_bias"), (15, "k_bias"), (16, "q_add_bias"),
                (17, "k_add_bias"))


# The same for the fp8 operators.
_FP8_TENSOR_ARGS = _TENSOR_ARGS[:6] + ((14, "q_scale"), (15, "k_scale"), (16, "v_scale"))


def _no_autograd(data_roles, args, tensor_args=_TENSOR_ARGS) -> None:
    """Tracing sees what eager sees: no tensor autograd would track (torch.compile's training graphs)."""
    n = len(data_roles)
    named = list(zip(data_roles, args)) + [(role, args[n + i]) for i, role in tensor_args if n + i < len(args)]
    for role, t in named:
        check_no_autograd(role, t)


@torch.library.register_fake("cudit::qk_norm_rope_", lib=_lib)
def _packed_fake_(*args):
    _no_autograd(("qkv",), args)


@torch.library.register_fake("cudit::qk_norm_rope", lib=_lib)
def _packed_fake(*args):
    return torch.empty_like(args[0])


@torch.library.register_fake("cudit::qk_norm_rope_split_", lib=_lib)
def _split_fake_(*args):
    _no_autograd(("q", "k"), args)


@torch.library.register_fake("cudit::qk_norm_rope_split", lib=_lib)
def _split_fake(*args):
    return torch.empty_like(args[0]), torch.empty_like(args[1])


def _grads_fake(args, data: int):
    """Fake weight gradients: args are a backward operator's, its weights after `data` tensors."""
    return _weight_grads((args[data], args[data + 1], args[data + 7], args[data + 8]), args[data + 12], args[data - 1])


@torch.library.register_fake("cudit::qk_norm_rope_fp8", lib=_lib)
def _packed_fp8_fake(qkv, *args):
    _no_autograd(("qkv",), (qkv, *args), _FP8_TENSOR_ARGS)
    return _fp8_like(qkv, args)


@torch.library.register_fake("cudit::qk_norm_rope_split_fp8", lib=_lib)
def _split_fp8_fake(q, k, *args):
    _no_autograd(("q", "k"), (q, k, *args), _FP8_TENSOR_ARGS)
    return _fp8_like(q, args), _fp8_like(k, args)


@torch.library.register_fake("cudit::qk_norm_rope_backward", lib=_lib)
def _packed_backward_fake(*args):
    return (torch.empty_like(args[1]), *_grads_fake(args, 2))


@torch.library.register_fake("cudit::qk_norm_rope_split_backward", lib=_lib)
def _split_backward_fake(*args):
    return (torch.empty_like(args[2]), torch.empty_like(args[3]), *_grads_fake(args, 4))


# ------------------------------------------------------------------ autograd
# The functional operators carry a backward (the in-place ones raise under autograd: their
# input, which the backward needs, is overwritten). Modes the backward lacks raise at forward.

_NO_BACKWARD = (("sumsq", "tensor parallelism (sumsq)"), ("exchange_group", "tensor parallelism (tp_group)"),
                ("positions", "position ids"), ("rotary_dim", "partial rotary (rotary_dim)"), ("rope3d", "Rope3D (rope)"))
_SAVED = ("q_weight", "k_weight", "cos", "sin", "q_add_weight", "k_add_weight")
_OPTIONS = ("num_heads", "eps", "interleave", "num_txt_tokens", "seq_len", "rope_offset")


def _setup(data: tuple, ctx, inputs, output) -> None:
    names = data + tuple(a.name for a in _PACKED_OP._schema.arguments[1:])
    given = dict(zip(names, inputs))
    if any(ctx.needs_input_grad):
        _check_has_backward(given)
    ctx.save_for_backward(*(given[n] for n in data + _SAVED))
    ctx.options = tuple(given[n] for n in _OPTIONS)
    ctx.data = len(data)


def _recorded(data, *tensors) -> bool:
    """Whether autograd records a call on these tensors (data: a tensor or a (q, k) pair)."""
    data = tuple(data) if isinstance(data, (tuple, list)) else (data,)
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in data + tensors)


def _check_has_backward(given: dict) -> None:
    from ._errors import PlanError

    if given["norm"] != "rms":
        raise PlanError(f"norm: expected 'rms' for a call autograd records: LayerNorm has no backward yet "
                        f"(call it under torch.no_grad(), or detach its inputs), got {given['norm']!r}")
    for name, what in _NO_BACKWARD:
        if given.get(name) is not None:
            raise PlanError(f"{name}: expected None for a call autograd records: {what} has no backward yet "
                            f"(call it under torch.no_grad(), or detach its inputs)")


def _backward(op, ctx, *grads):
    saved = ctx.saved_tensors
    n = ctx.data
    x, (q_weight, k_weight, cos, sin, q_add_weight, k_add_weight) = saved[:n], saved[n:]
    num_heads, eps, interleave, num_txt_tokens, seq_len, rope_offset = ctx.options
    needs = ctx.needs_input_grad   # as many as the call passed: trailing defaults are left out
    wanted = [n + i < len(needs) and needs[n + i] for i in (0, 1, 7, 8)]   # the weights' places after the data
    out = op(*grads, *x, q_weight, k_weight, cos, sin, num_heads, eps, interleave, q_add_weight, k_add_weight,
             num_txt_tokens, seq_len, rope_offset, wanted)
    dx, (dqw, dkw, dqa, dka) = out[:n], out[n:]
    keep = lambda g, want: g if want else None   # noqa: E731
    rest = [None] * max(len(needs) - n, 9)
    rest[0], rest[1], rest[7], rest[8] = (keep(g, w) for g, w in zip((dqw, dkw, dqa, dka), wanted))
    return (*(g if needs[i] else None for i, g in enumerate(dx)), *rest[:len(needs) - n])


@torch.library.register_fake("cudit::qk_sumsq", lib=_lib)
def _sumsq_fake(qkv, *args):
    return qkv.new_empty(_sums_shape(qkv), dtype=torch.float32)


@torch.library.register_fake("cudit::qk_sumsq_split", lib=_lib)
def _sumsq_split_fake(q, k, *args):
    return q.new_empty(_sums_shape(q), dtype=torch.float32)


@torch.library.register_fake("cudit::qk_sumsq_all_reduced", lib=_lib)
def _all_reduced_fake(q, k, *args):
    return q.new_empty(_sums_shape(q), dtype=torch.float32)


def _int_list(x):
    return None if x is None else ([x] if isinstance(x, int) else list(x))


def qk_norm_rope(qkv, q_weight, k_weight, cos=None, sin=None, *, num_heads=None, eps=1e-6,
                 interleave=True, q_add_weight=None, k_add_weight=None, num_txt_tokens=0,
                 seq_len=None, inplace=True, sumsq=None, norm_width=None, rope_offset=None, tp_group=None,
                 collective="auto", norm="rms", q_bias=None, k_bias=None, q_add_bias=None, k_add_bias=None,
                 positions=None, rotary_dim=None, rope=None, out_dtype=None, q_scale=None, k_scale=None,
                 v_scale=None, q_amax=None, k_amax=None, v_amax=None):
    """cudit.qk_norm_rope through the torch operators (same arguments minus out= and stream=;
    docs/api.md).

    tp_group: tensor parallelism over a torch.distributed process group (NCCL): Q and K hold
    this rank's heads, q_weight and k_weight this rank's slices of full-dim weights. The sums
    of squares are computed here and all-reduced over the group; norm_width defaults to the
    weights' lengths times the group's size (heads split evenly). collective: "auto" (two phases:
    the sums kernel, torch's one-shot all-reduce over symmetric memory where torch has it for the
    group, else NCCL, then the norm), "nccl" (two phases with a functional all-reduce, visible to
    torch.compile) or "exchange" (one pass: the kernel trades the sums with the other ranks
    through symmetric memory; two phases over NCCL where the group has none).

    out_dtype: torch.float8_e4m3fn or torch.float8_e5m2 (with inplace=False): new fp8 tensors
    (packed: V quantised too), by q_scale / k_scale / v_scale (numbers or fp32 tensors of one
    value or one a head), raising q_amax / k_amax / v_amax (zeroed fp32 tensors) to max |y|.
    No gradient: autograd must not record such a call.

    In place (the default) returns qkv; otherwise new tensor(s) of the same shapes.
    """
    heads = _int_list(num_heads)
    if out_dtype is not None:
        return _fp8_call(qkv, q_weight, k_weight, cos, sin, heads, eps, interleave, q_add_weight, k_add_weight,
                         num_txt_tokens, seq_len, rope_offset, inplace, out_dtype, (q_scale, k_scale, v_scale),
                         (q_amax, k_amax, v_amax),
                         dict(sumsq=sumsq, norm_width=norm_width, tp_group=tp_group, q_bias=q_bias, k_bias=k_bias,
                              q_add_bias=q_add_bias, k_add_bias=k_add_bias, positions=positions,
                              rotary_dim=rotary_dim, rope=rope, norm=None if norm == "rms" else norm))
    if not inplace and _recorded(qkv, q_weight, k_weight, cos, sin, q_add_weight, k_add_weight, q_bias, k_bias,
                                 q_add_bias, k_add_bias):   # fail before the forward runs, not after
        _check_has_backward(dict(norm=norm, sumsq=sumsq if tp_group is None else tp_group, positions=positions,
                                 rotary_dim=rotary_dim, rope3d=rope))
    exchange_group = None
    if tp_group is not None:
        if collective not in COLLECTIVES:
            raise ValueError(f"collective: expected one of {COLLECTIVES}, got {collective!r}")
        if collective == "exchange":
            exchange_group = tp_group.group_name
        else:
            sumsq = all_reduced_sumsq(qkv, tp_group, num_heads=num_heads, seq_len=seq_len, collective=collective)
        if norm_width is None:
            size = torch.distributed.get_world_size(tp_group)
            norm_width = (q_weight.numel() * size, k_weight.numel() * size)
    rest = (q_weight, k_weight, cos, sin, heads, eps, interleave, q_add_weight, k_add_weight,
            num_txt_tokens, seq_len, sumsq, _int_list(norm_width), rope_offset, q_bias, k_bias, q_add_bias,
            k_add_bias, norm, positions, rotary_dim, None if rope is None else list(rope.fields()), exchange_group)
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


def _fp8_call(qkv, q_weight, k_weight, cos, sin, heads, eps, interleave, q_add_weight, k_add_weight, num_txt_tokens,
              seq_len, rope_offset, inplace, out_dtype, scales, amaxes, unsupported):
    from ._errors import PlanError

    if inplace:
        raise PlanError("inplace: expected False with out_dtype (an fp8 result is a new tensor), got True")
    api.check_fp8_options(unsupported)
    values = [float(s) if isinstance(s, (int, float)) else 1.0 for s in scales]
    tensors = [None if isinstance(s, (int, float)) else s for s in scales]
    rest = (q_weight, k_weight, cos, sin, heads, eps, interleave, q_add_weight, k_add_weight, num_txt_tokens, seq_len,
            rope_offset, out_dtype, values, *tensors, *amaxes)
    if isinstance(qkv, (tuple, list)):
        return _SPLIT_FP8_OP(qkv[0], qkv[1], *rest)
    if heads is None:
        raise TypeError("num_heads: expected an int or (Hq, Hk, Hv) for a packed qkv, got None")
    return _PACKED_FP8_OP(qkv, *rest)


def qk_sumsq(qkv, *, num_heads=None, seq_len=None):
    """cudit.qk_sumsq into a new float32 tensor: [T, 2] for 2-D data, else [B, S, 2]."""
    heads = _int_list(num_heads)
    if isinstance(qkv, (tuple, list)):
        return _SUMSQ_SPLIT_OP(qkv[0], qkv[1], heads, seq_len)
    if heads is None:
        raise TypeError("num_heads: expected an int or (Hq, Hk, Hv) for a packed qkv, got None")
    return _SUMSQ_OP(qkv, heads, seq_len)


def all_reduced_sumsq(qkv, group, *, num_heads=None, seq_len=None, collective="auto"):
    """This rank's sums of squares, summed over the process group (the collective as in
    qk_norm_rope), ordered before their use on the current stream."""
    if collective not in ("auto", "nccl"):
        raise ValueError(f"collective: expected 'auto' or 'nccl', got {collective!r}")
    if collective == "auto":
        q, k = qkv if isinstance(qkv, (tuple, list)) else (qkv, None)
        return _ALL_REDUCED_OP(q, k, _int_list(num_heads), seq_len, group.group_name)
    sums = qk_sumsq(qkv, num_heads=num_heads, seq_len=seq_len)
    return funcol.wait_tensor(funcol.all_reduce(sums, "sum", group))


COLLECTIVES = ("auto", "nccl", "exchange")

# (group name, device) -> (cudit.Exchange, its buffer), or None where the group has no symmetric
# memory. A call with more tokens than a buffer has room for replaces it (on every rank alike);
# replaced buffers stay allocated, in _RETIRED: kernels in flight may still use them.
_EXCHANGES: dict = {}
_RETIRED: list = []


def _exchange(group_name, tokens, device):
    key = (group_name, device)
    got = _EXCHANGES.get(key, False)
    if got is not None and (got is False or got[0].tokens < tokens):
        if got:
            _RETIRED.append(got)
        got = _EXCHANGES[key] = _new_exchange(group_name, 1 << (tokens - 1).bit_length(), device)
    return None if got is None else got[0]


def _new_exchange(group_name, tokens, device):
    """Each rank's buffer zeroed before the rendezvous, so no peer writes one before that."""
    try:
        import torch.distributed._symmetric_memory as symm_mem

        size = torch.distributed.get_world_size(_resolve_group(group_name))
        buf = symm_mem.empty(api.exchange_bytes(tokens, size) // 8, dtype=torch.int64, device=device)
        buf.zero_()
        torch.cuda.synchronize(device)
        handle = symm_mem.rendezvous(buf, group_name)
    except (ImportError, RuntimeError, AttributeError):
        return None
    shift = buf.data_ptr() - handle.buffer_ptrs[handle.rank]
    return api.Exchange(tuple(p + shift for p in handle.buffer_ptrs), handle.rank, tokens), buf


# (group, sums shape, device) -> [two symmetric buffers, the next one's index], or None where
# symmetric memory is unavailable. Two alternate: a one-shot all-reduce starts with a barrier, so
# no rank writes a buffer a peer may still read (that peer has entered the next all-reduce).
_SYMMETRIC: dict = {}


def _all_reduced(q, k, num_heads, seq_len, group_name):
    """The sums of squares into a symmetric buffer, then a one-shot all-reduce; NCCL where the
    group has no symmetric memory."""
    key = (group_name, _sums_shape(q), q.device)
    if key not in _SYMMETRIC:
        _SYMMETRIC[key] = _symmetric_pair(group_name, key[1], q.device)
    slot = _SYMMETRIC[key]
    data = q if k is None else (q, k)
    if slot is None:
        sums = qk_sumsq(data, num_heads=num_heads, seq_len=seq_len)
        torch.distributed.all_reduce(sums, group=_resolve_group(group_name))
        return sums
    buf = slot[0][slot[1]]
    slot[1] ^= 1
    api.qk_sumsq(data, buf, num_heads=_heads(num_heads), seq_len=seq_len)
    return torch.ops.symm_mem.one_shot_all_reduce(buf, "sum", group_name)


_lib.impl("qk_sumsq_all_reduced", _all_reduced, "CUDA")


def _resolve_group(group_name):
    from torch.distributed.distributed_c10d import _resolve_process_group

    return _resolve_process_group(group_name)


def _symmetric_pair(group_name, shape, device):
    try:
        import torch.distributed._symmetric_memory as symm_mem

        bufs = [symm_mem.empty(shape, dtype=torch.float32, device=device) for _ in range(2)]
        for b in bufs:
            symm_mem.rendezvous(b, group_name)
        return [bufs, 0]
    except (ImportError, RuntimeError, AttributeError):
        return None


torch.library.register_autograd(
    "cudit::qk_norm_rope", lambda ctx, g: _backward(_PACKED_BACKWARD_OP, ctx, g),
    setup_context=lambda ctx, inputs, output: _setup(("qkv",), ctx, inputs, output), lib=_lib)
torch.library.register_autograd(
    "cudit::qk_norm_rope_split", lambda ctx, gq, gk: _backward(_SPLIT_BACKWARD_OP, ctx, gq, gk),
    setup_context=lambda ctx, inputs, output: _setup(("q", "k"), ctx, inputs, output), lib=_lib)

# The overloads themselves: looking them up through torch.ops costs about a microsecond a call.
_PACKED_OP_ = torch.ops.cudit.qk_norm_rope_.default
_PACKED_OP = torch.ops.cudit.qk_norm_rope.default
_SPLIT_OP_ = torch.ops.cudit.qk_norm_rope_split_.default
_SPLIT_OP = torch.ops.cudit.qk_norm_rope_split.default
_PACKED_FP8_OP = torch.ops.cudit.qk_norm_rope_fp8.default
_SPLIT_FP8_OP = torch.ops.cudit.qk_norm_rope_split_fp8.default
_SUMSQ_OP = torch.ops.cudit.qk_sumsq.default
_SUMSQ_SPLIT_OP = torch.ops.cudit.qk_sumsq_split.default
_ALL_REDUCED_OP = torch.ops.cudit.qk_sumsq_all_reduced.default
_PACKED_BACKWARD_OP = torch.ops.cudit.qk_norm_rope_backward.default
_SPLIT_BACKWARD_OP = torch.ops.cudit.qk_norm_rope_split_backward.default
