"""The public entry point."""
from __future__ import annotations

import math

from . import _launch
from ._arrays import _ADAPTERS, adapter, contiguous_strides, describe, is_array, on_host
from ._errors import PlanError, driver_module
from ._backward import WEIGHT_GRADS, plan_backward
from ._planner import AMAXES, SCALES, Exchange, Request, exchange_words, plan
from ._tuning import DeviceSpec, tuning_for

# A call's arrays in a fixed order, each named by its role (packed, split): the planner's
# names, which its errors use. Packed calls leave "k" empty, and "k_out" unless out is a pair.
_WEIGHTS_TABLES = ("q_weight", "k_weight", "q_add_weight", "k_add_weight", "cos", "sin", "sumsq", "q_bias", "k_bias",
                   "q_add_bias", "k_add_bias", "positions") + SCALES + AMAXES
ROLES = (("qkv", "k", "out", "k_out") + _WEIGHTS_TABLES, ("q", "k", "q_out", "k_out") + _WEIGHTS_TABLES)
_UNUSED = len(ROLES[0])   # index of a constant 0 appended to a call's pointers


_PAIR = (tuple, list)


def qk_norm_rope(qkv, q_weight, k_weight, cos=None, sin=None, *, num_heads=None, eps=1e-6,
                 interleave=True, q_add_weight=None, k_add_weight=None, num_txt_tokens=0,
                 seq_len=None, out=None, stream=None, sumsq=None, norm_width=None, rope_offset=None, norm="rms",
                 q_bias=None, k_bias=None, q_add_bias=None, k_add_bias=None, positions=None, rotary_dim=None,
                 rope=None, q_scale=None, k_scale=None, v_scale=None, q_amax=None, k_amax=None, v_amax=None,
                 out_dtype=None, exchange=None):
    """RMS-normalise Q and K (per head or across heads), then apply RoPE, in one pass on the GPU.

    For each token, on Q and on K: ``y = x * rsqrt(mean(x^2) + eps) * w`` (the mean over one head,
    or over all heads for full-dim weights), then ``out = y * cos + rotate(y) * sin``; fp32 math,
    one rounding to the output dtype. V is never touched. With norm="layer", LayerNorm instead:
    ``y = (x - mean(x)) * rsqrt(var(x) + eps) * w + b``.

    Args:
        qkv: packed ``[T, (Hq+Hk+Hv)*D]``, ``[B, S, (Hq+Hk+Hv)*D]`` or ``[B, S, Hq+Hk+Hv, D]``;
            or a ``(q, k)`` pair of ``[T, H*D]``, ``[B, S, H*D]`` or ``[B, S, H, D]`` arrays.
            bf16, fp16 or fp32 GPU arrays (DLPack or CUDA Array Interface); last axis contiguous.
        q_weight, k_weight: 1-D norm weights of length D (per-head norm) or H*D (full-dim norm);
            both None for RoPE only.
        cos, sin: the RoPE table, ``[R, D]``, ``[R, Hq*D]`` (one table per head),
            ``[Bc, S, D]``, ``[Bc, S, 1, D]`` or ``[Bc, S, Hq, D]``; token t reads row t mod R, so
            R must divide the token count. Pair-duplicated (``[c0, c0, c1, c1, ...]``) for
            interleave=True, half-duplicated (``[c0..c(D/2-1)] * 2``) for interleave=False.
            Both None for the norm only.
        num_heads: packed: H or (Hq, Hk, Hv), required. Split: H or (Hq, Hk), required unless
            q and k are 4-D.
        eps: added to the mean square inside the root.
        interleave: True rotates pairs (2i, 2i+1); False rotates (i, i + D/2) (rotate_half).
        q_add_weight, k_add_weight: norm weights of the first num_txt_tokens tokens of every
            batch element (dual-stream models: FLUX, Qwen-Image).
        num_txt_tokens: how many leading tokens of each batch element use the add weights.
        seq_len: S, for 2-D input that holds several batch elements.
        out: None for in place; else an array (packed) or a (q_out, k_out) pair like the input.
            Required for JAX arrays, which are immutable.
        stream: None for the current stream of the input's framework; else an int handle or a
            stream object (``__cuda_stream__``, torch, CuPy, cuda.core). Never synchronises.
        sumsq, norm_width: tensor parallelism (heads split over GPUs, full-dim norm): the
            all-reduced ``[T, 2]`` float32 sums of squares that ``qk_sumsq`` wrote on each
            rank, and how many values a token's Q and K norms run over on all ranks together
            (an int, or ``(Q's, K's)``). The weights are then this rank's slices, of length
            ``H_local * D``.
        exchange: tensor parallelism in one pass (instead of sumsq): a ``cudit.Exchange`` of
            every rank's exchange buffer; the kernel sends this rank's sums of squares to the
            other ranks and waits for theirs, so Q and K are read once. Every rank must make the
            same calls in the same order (docs/parallel.md). With norm_width as for sumsq.
        rope_offset: sequence parallelism: token s of this call reads the table's sequence row
            ``rope_offset + s`` (row of a 2-D table, axis 1 of a 3-D or 4-D one), as if the
            table were sliced ``[rope_offset : rope_offset + S]``; None keeps the broadcast rule.
        norm: "rms" (RMSNorm) or "layer" (LayerNorm: the mean subtracted, then the weight and
            the bias; the weights are required, the biases optional).
        q_bias, k_bias, q_add_bias, k_add_bias: LayerNorm biases, shaped like the weights of the
            same names (the add ones for the text tokens of dual-stream calls).
        positions: int32 or int64 position ids, ``[T]`` or ``[B, S]``: token t reads row
            ``positions[t]`` of a 2-D ``[max_pos, rotary_dim]`` cos/sin table. Ids outside
            ``[0, max_pos)`` are clamped to the nearest row.
        rotary_dim: partial rotary: only the first rotary_dim values of each head rotate, the rest
            are normalised and written unrotated. None: the width of a 2-D table narrower than
            head_dim, else head_dim. Even; for interleave=False a multiple of 16 (fp32: 8) values.
        rope: a ``cudit.Rope3D``: 3-D RoPE angles computed in the kernel from each token's place
            on a video grid, instead of cos/sin tables (which must then be None).
        q_scale, k_scale, v_scale: fp8 output (out of dtype float8_e4m3fn or float8_e5m2, from
            bf16 / fp16 input): each value is written as ``saturate(round(y * scale))``, rounded
            once from fp32, saturated to the format's largest finite value, NaN kept. A number
            (part of the launch's plan), or an fp32 GPU array of 1 value (read by the kernel: a
            graph replays with new scales) or of one value a head. None: 1. A packed input's V
            is quantised into the fp8 out in the same launch, by v_scale.
        q_amax, k_amax, v_amax: fp32 GPU arrays of 1 value or one a head, raised to the largest
            ``|y|`` (before the scale) of their side or head: zero them before the call (delayed
            scaling: the next step's scale from this step's amax).
        out_dtype: "float8_e4m3fn" or "float8_e5m2" for an out given as a uint8 array (CuPy has
            no fp8 dtype).

    Returns:
        qkv (in place) or out.

    Raises:
        PlanError: bad input, named by argument, before anything is launched (needs no GPU);
            also a torch tensor that requires grad while grad mode is on (this call records no
            gradient: train through cudit.torch.qk_norm_rope(..., inplace=False), docs/training.md).
        CudaUnavailableError: cuda-bindings, the NVIDIA driver or a GPU is missing.
        NoImageError: the GPU can run none of the shipped kernels.

    Full reference with examples: docs/api.md; model recipes: docs/models.md.
    """
    # A warm call spends about as long in this module as in the driver's launch: keep it lean.
    split = isinstance(qkv, _PAIR)
    if split:
        if len(qkv) != 2 or qkv[0] is None or qkv[1] is None:
            raise PlanError(f"qkv: expected one packed array or a (q, k) pair of arrays, got {qkv!r:.80}")
        q, k = qkv
    else:
        q, k = qkv, None
    o, k_out = out if isinstance(out, _PAIR) and len(out) == 2 else (out, None)
    if isinstance(num_heads, _PAIR):
        num_heads = tuple(num_heads)
    if isinstance(norm_width, _PAIR):
        norm_width = tuple(norm_width)
    values = NO_FP8[1]
    if not (q_scale is None and k_scale is None and v_scale is None):   # numbers are options, arrays arrays
        values = tuple(x if isinstance(x, (int, float)) else None for x in (q_scale, k_scale, v_scale))
        q_scale, k_scale, v_scale = (None if v is not None else x for x, v in zip((q_scale, k_scale, v_scale), values))
    run(split, (q, k, o, k_out, q_weight, k_weight, q_add_weight, k_add_weight, cos, sin, sumsq, q_bias, k_bias,
                q_add_bias, k_add_bias, positions, q_scale, k_scale, v_scale, q_amax, k_amax, v_amax),
        (num_heads, eps, interleave, num_txt_tokens, seq_len, norm_width, rope_offset,
         tp_stats(sumsq, exchange), norm, rotary_dim, rope, out_dtype, values), stream)
    return qkv if out is None else out


def tp_stats(sumsq, exchange):
    """The options' stats for a call: "" (one GPU), "given" (sumsq) or the Exchange itself."""
    if exchange is None:
        return "" if sumsq is None else "given"
    if not isinstance(exchange, Exchange):
        raise PlanError(f"exchange: expected a cudit.Exchange, got {type(exchange).__name__}")
    return exchange


def exchange_bytes(tokens: int, ranks: int) -> int:
    """Bytes of one rank's exchange buffer (``cudit.Exchange``) for up to ``tokens`` tokens."""
    return 8 * exchange_words(tokens, ranks)


def qk_sumsq(qkv, sumsq, *, num_heads=None, seq_len=None, stream=None):
    """Tensor parallelism's first phase: each token's float32 sums of squares of Q and of K over
    this rank's heads, into ``sumsq`` (``[T, 2]`` or ``[B, S, 2]``, contiguous float32; Q's
    sum first). All-reduce it over the ranks, then pass it to ``qk_norm_rope(...,
    sumsq=sumsq, norm_width=...)``. Reads Q and K once; writes nothing else.

    qkv, num_heads, seq_len, stream: as for qk_norm_rope. Returns sumsq.
    """
    split = isinstance(qkv, _PAIR)
    if split and (len(qkv) != 2 or qkv[0] is None or qkv[1] is None):
        raise PlanError(f"qkv: expected one packed array or a (q, k) pair of arrays, got {qkv!r:.80}")
    q, k = qkv if split else (qkv, None)
    if isinstance(num_heads, _PAIR):
        num_heads = tuple(num_heads)
    run(split, (q, k) + (None,) * 8 + (sumsq,) + (None,) * 11,
        (num_heads, 1e-6, True, 0, seq_len, None, None, "sumsq", "rms", None, None) + NO_FP8, stream)
    return sumsq


def sumsq_shape(shape) -> tuple:
    """qk_sumsq's output for data of this shape: [T, 2] for 2-D data, [B, S, 2] for 3-D and 4-D."""
    return (*shape[:-1], 2) if len(shape) <= 3 else (*shape[:2], 2)


NO_FP8 = (None, (None, None, None))   # the options' (out_dtype, scale values) of a call without fp8 output


def run(split: bool, objs: tuple, options: tuple, stream) -> None:
    """Launch for arrays in ROLES[split] order and (num_heads, eps, interleave, num_txt_tokens,
    seq_len, norm_width, rope_offset, stats, norm type, rotary_dim, Rope3D, out_dtype, scale values)."""
    first = type(objs[0])
    framework, keys_of = _ADAPTERS.get(first) or adapter(first)
    try:
        got = keys_of(objs) if keys_of is not None else None
    except (RuntimeError, AttributeError):
        got = None
    if got is not None:
        keys, ptrs = got
        device = keys[0][3]
        handle = _launch.CURRENT_STREAM[framework](device) if device >= 0 else None
        # Another stream needs the exporters' stream handshake (the full path does it).
        if handle is not None and (stream is None or _launch.resolve_stream(stream, objs[0]) == handle):
            keys.append(options)
            keys.append(_launch.PDL)
            last_keys, entry = _LAST
            if last_keys != keys:
                entry = _warm_entry(keys)
            if entry is None:
                _remember(tuple(keys), _plan_and_launch(split, objs, options, stream))
            else:
                ptrs.append(0)   # _UNUSED
                entry[0](entry[1](ptrs), handle)
            return
    _plan_and_launch(split, objs, options, stream)


# Warm calls: (array keys.., options, PDL) -> (launch function, pointer-block binder). Filled
# by the first call of a signature, which takes the full path (exporters, planner, checks).
# The last hit is kept aside, its keys as a list: a model's layers repeat one signature, and
# comparing the lists costs less than building the tuple and hashing it.
_WARM: dict = {}
_LAST: tuple = (None, None)


def clear_warm() -> None:
    """Forget every warm entry (tests; tuning knobs that change plans)."""
    global _LAST
    _WARM.clear()
    _LAST = (None, None)


def _warm_entry(keys: list):
    global _LAST
    try:
        entry = _WARM.get(tuple(keys))
    except TypeError:   # an unhashable option: the full path names it
        return None
    if entry is not None:
        _LAST = (keys, entry)
    return entry


def _remember(key: tuple, entry) -> None:
    try:
        hash(key)
    except TypeError:
        return
    if len(_WARM) > 4096:
        _WARM.clear()
    _WARM[key] = entry


def _request(split: bool, objs, options, view) -> Request:
    """The planner's Request, each array given through view(role, obj)."""
    v = {role: None if x is None else view(role, x) for role, x in zip(ROLES[split], objs)}
    num_heads, eps, interleave, num_txt_tokens, seq_len, norm_width, rope_offset, stats, norm_type, rotary_dim, rope3d, \
        out_dtype, scale_values = options
    exchange = stats if isinstance(stats, Exchange) else None
    if exchange is not None:
        stats = "exchange"
    if split:
        qkv, out = (v["q"], v["k"]), (v["q_out"], v["k_out"])
        out = None if out == (None, None) else out
    else:
        qkv, out = v["qkv"], v["out"] if v["k_out"] is None else (v["out"], v["k_out"])
    return Request(qkv=qkv, q_weight=v["q_weight"], k_weight=v["k_weight"], cos=v["cos"], sin=v["sin"],
                   num_heads=num_heads, eps=eps, interleave=bool(interleave), q_add_weight=v["q_add_weight"],
                   k_add_weight=v["k_add_weight"], num_txt_tokens=num_txt_tokens, seq_len=seq_len, out=out,
                   sumsq=v["sumsq"], stats=stats, exchange=exchange, norm_width=norm_width, rope_offset=rope_offset,
                   norm_type=norm_type,
                   q_bias=v["q_bias"], k_bias=v["k_bias"], q_add_bias=v["q_add_bias"], k_add_bias=v["k_add_bias"],
                   positions=v["positions"], rotary_dim=rotary_dim, rope3d=rope3d, out_dtype=out_dtype,
                   scale_values=tuple(scale_values), **{r: v[r] for r in SCALES + AMAXES})


def check_fp8_options(options: dict) -> None:
    """The frameworks' fp8 forms take RMSNorm with cos/sin tables by token: any other option,
    given (not None), raises PlanError naming it."""
    for name, value in options.items():
        if value is not None:
            raise PlanError(f"{name}: expected the default with out_dtype (fp8 output is built for RMSNorm with "
                            f"cos/sin tables by token), got {value!r:.60}")


_NO_DEVICE = DeviceSpec(arch=(0, 0))   # for requests that fail before a device matters


def _plan_and_launch(split: bool, objs, options, stream):
    """The full path: views through the exporters, the planner's checks, launch."""
    if any(x is not None and (on_host(x) or not is_array(x)) for x in objs):
        # Nothing to launch: the planner names the argument, with no stream, driver or GPU asked.
        plan(_request(split, objs, options, lambda role, x: describe(x, -1, role)), _NO_DEVICE, tuning_for(_NO_DEVICE))
        raise PlanError("an argument is not a GPU array")   # plan() names it first
    driver_module()
    first = objs[0]
    handle = _launch.resolve_stream(stream, first)
    capturing = _launch.is_capturing(handle)
    req = _request(split, objs, options, lambda role, x: describe(
        x, _launch.consumer_stream(stream, handle, first, x, capturing), role))
    device_id = (req.qkv[0] if split else req.qkv).device_id
    st = _launch.device_state(device_id) if device_id >= 0 else None
    p = plan(req, st.spec if st else _NO_DEVICE, st.tuning if st else tuning_for(_NO_DEVICE))
    arrays = req.arrays()
    launcher = _launch.launcher(device_id, p)
    launcher.launch(p.addresses(arrays), handle)
    index = {role: i for i, role in enumerate(ROLES[split])}
    return launcher.launch, _binder([(_UNUSED, 0) if s is None else (index[s[0]], s[1]) for s in p.slots])


def _binder(slots):
    """Call pointers (at _POSITIONS, then 0) -> the plan's pointer block, for (index, byte
    offset) slots. One compiled expression: a warm call builds one tuple, with no loop (K in a
    packed row is the array's pointer plus an offset)."""
    terms = ", ".join(f"p[{i}] + {add}" if add else f"p[{i}]" for i, add in slots)
    return eval(f"lambda p: ({terms},)", {})   # only ints from the plan: nothing of the caller


def qk_norm_rope_backward(qkv, dout, q_weight, k_weight, cos=None, sin=None, *, num_heads=None, eps=1e-6,
                          interleave=True, q_add_weight=None, k_add_weight=None, num_txt_tokens=0, seq_len=None,
                          rope_offset=None, dqkv=None, dq_weight=None, dk_weight=None, dq_add_weight=None,
                          dk_add_weight=None, workspace=None, stream=None):
    """Gradients of qk_norm_rope: from the output's gradient `dout`, the input's (into dqkv) and
    the norm weights' (into the dq_weight, ... arrays given).

    qkv, q_weight, ..., rope_offset: the forward call's arguments, its input unchanged (so a
    training forward writes its result to out=, not in place). dout: the output's gradient,
    shaped like qkv (a (dq_out, dk_out) pair for split input). dqkv: where the input's gradient
    goes, like qkv; None writes it over dout. Only Q's and K's parts are written: V's gradient
    is V's part of dout. dq_weight, dk_weight, dq_add_weight, dk_add_weight: arrays shaped like
    the weights, for the weights' gradients (sums over every token, fp32 in a fixed order:
    the same bits every run); None skips one. cos and sin get no gradient.
    workspace: fp32 partial sums of the weight gradients: None allocates them on the stream, an
    array (uint8 or any dtype) of enough bytes is used as is, or a callable nbytes -> array.
    Modes with no backward (LayerNorm, position ids, Rope3D, partial rotary, tensor
    parallelism) raise PlanError naming the argument.

    Returns dqkv (dout where it was None).
    """
    split = isinstance(qkv, _PAIR)
    q, k = (qkv[0], qkv[1]) if split else (qkv, None)
    dx = dout if dqkv is None else dqkv
    for role, given in (("qkv", qkv), ("dout", dout), ("dqkv", dx)):
        if split != isinstance(given, _PAIR) or (split and len(given) != 2):
            raise PlanError(f"{role}: expected " + ("a (q, k) pair of arrays like qkv" if split else "one array")
                            + f", got {type(given).__name__}")
    if isinstance(num_heads, _PAIR):
        num_heads = tuple(num_heads)
    grads = dict(zip(WEIGHT_GRADS, (dq_weight, dk_weight, dq_add_weight, dk_add_weight)))
    named = {"dout": dout, "dqkv": dx} if not split else \
        {"dout_q": dout[0], "dout_k": dout[1], "dq": dx[0], "dk": dx[1]}
    named.update((r, g) for r, g in grads.items() if g is not None)
    forward = (q, k, None, None, q_weight, k_weight, q_add_weight, k_add_weight, cos, sin) + (None,) * 12
    options = (num_heads, eps, interleave, num_txt_tokens, seq_len, None, rope_offset, "", "rms", None, None) + NO_FP8
    everything = [x for x in forward if x is not None] + list(named.values())
    if any(on_host(x) or not is_array(x) for x in everything):
        view = lambda role, x: describe(x, -1, role)   # noqa: E731  (named errors, no driver)
        _plan_backward(split, forward, options, named, view, _NO_DEVICE)
        raise PlanError("an argument is not a GPU array")
    driver_module()
    handle = _launch.resolve_stream(stream, q)
    capturing = _launch.is_capturing(handle)
    view = lambda role, x: describe(x, _launch.consumer_stream(stream, handle, q, x, capturing), role)  # noqa: E731
    device_id = describe(q, -1, "q" if split else "qkv").device_id
    st = _launch.device_state(device_id)
    plan_, views = _plan_backward(split, forward, options, named, view, st.spec, st.tuning)
    launcher = _launch.backward_launcher(device_id, plan_)
    pointers = {role: a.ptr for role, a in views.items()}
    buffer = None
    work = 0
    if launcher.workspace_bytes:
        work, buffer = _workspace(workspace, launcher.workspace_bytes, device_id, handle)
    try:
        launcher.launch(pointers, work, handle)
    finally:
        if buffer is not None:
            buffer.close(_stream_object(handle))
    return dx


def _plan_backward(split, forward, options, named, view, device, tuning=None):
    req = _request(split, forward, options, view)
    views = {role: view(role, x) for role, x in named.items()}
    views.update(req.arrays())
    dout = (views["dout_q"], views["dout_k"]) if split else views["dout"]
    dx = (views["dq"], views["dk"]) if split else views["dqkv"]
    grads = {r: views[r] for r in WEIGHT_GRADS if r in views}
    return plan_backward(req, dout, dx, grads, device, tuning or tuning_for(device)), views


def _workspace(workspace, nbytes: int, device_id: int, handle: int):
    """(address, buffer to free after the launch or None) of at least nbytes of device memory."""
    if workspace is None:
        from cuda.core import Device

        buf = Device(device_id).allocate(nbytes, stream=_stream_object(handle))
        return int(buf.handle), buf
    if callable(workspace):
        workspace = workspace(nbytes)
    a = describe(workspace, -1, "workspace")
    if a.device_id != device_id or a.itemsize * math.prod(a.shape) < nbytes or a.ptr % 16 or \
            any(n > 1 and st != c for n, st, c in zip(a.shape, a.strides, contiguous_strides(a.shape))):
        raise PlanError(f"workspace: expected a contiguous, 16-byte aligned array of at least {nbytes} bytes on GPU "
                        f"{device_id}, got shape {a.shape} of {a.dtype} on device {a.device_id}")
    return a.ptr, None


def _stream_object(handle: int):
    from cuda.core import Stream

    return Stream.from_handle(handle)
