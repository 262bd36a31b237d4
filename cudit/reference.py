"""NumPy float64 reference of the whole contract (docs/api.md): the tests' oracle.

Takes host arrays of any float dtype and returns float64 results; it shares no code with the
planner so that the two check each other.
"""
from __future__ import annotations

import numpy as np


def _f64(x):
    return None if x is None else np.asarray(x).astype(np.float64)


def _heads(num_heads, n):
    if num_heads is None:
        return None
    return (num_heads,) * n if isinstance(num_heads, int) else tuple(num_heads)


def _to_bshd(x: np.ndarray, heads, seq_len):
    """[T, H*D] / [B, S, H*D] / [B, S, H, D] -> [B, S, H, D] (a copy, float64)."""
    if x.ndim == 4:
        return x.copy()
    if x.ndim == 2:
        t = x.shape[0]
        s = t if seq_len is None else seq_len
        x = x.reshape(t // s, s, x.shape[1])
    b, s, w = x.shape
    return x.reshape(b, s, heads, w // heads).copy()


def _per_token(v, v_txt, n_txt, shape, b, s, h, d):
    """A weight or bias of length D or H*D, broadcast to [B, S, H, D] (text tokens: v_txt)."""
    out = np.broadcast_to(_f64(v).reshape(shape), (b, s, h, d)).copy()
    if n_txt and v_txt is not None:
        out[:, :n_txt] = _f64(v_txt).reshape(shape)
    return out


def _rms_norm(x, w, w_txt, n_txt, full: bool, eps: float, mean_sq=None, layer=None):
    """x [B, S, H, D]; w of length D (per-head) or H*D (full-dim); mean_sq [B, S, 1, 1]: the
    full-dim mean square taken over all ranks (tensor parallelism), else x's own. layer:
    LayerNorm's (bias, text-token bias), either None: the mean is subtracted first."""
    b, s, h, d = x.shape
    axes = (2, 3) if full else (3,)
    shape = (h, d) if full else (d,)
    if layer is not None:
        x = x - np.mean(x, axis=axes, keepdims=True)
    if mean_sq is None:
        mean_sq = np.mean(x * x, axis=axes, keepdims=True)
    y = x / np.sqrt(mean_sq + eps) * _per_token(w, w_txt, n_txt, shape, b, s, h, d)
    if layer is not None and layer[0] is not None:
        y = y + _per_token(layer[0], layer[1], n_txt, shape, b, s, h, d)
    return y


def _table_rows(t: np.ndarray, d: int) -> np.ndarray:
    """Any accepted cos/sin form -> [R, Hc, D] (Hc = 1 or Hq)."""
    t = _f64(t)
    if t.ndim == 4:
        return t.reshape(t.shape[0] * t.shape[1], t.shape[2], d)
    if t.ndim == 3:
        t = t.reshape(t.shape[0] * t.shape[1], t.shape[2])
    return t.reshape(t.shape[0], t.shape[1] // d, d)


def _whole_heads(t, d: int):
    """A 4-D table of half heads [B, S, H, D/2] (rotate_half: values i and i + D/2 read one entry)
    as whole heads [B, S, H, D]; any other table as it is."""
    if t is None or np.ndim(t) != 4 or np.shape(t)[3] * 2 != d:
        return t
    t = _f64(t)
    return np.concatenate([t, t], axis=-1)


def _token_tables(cos, sin, b: int, s: int, d: int):
    """cos and sin rows of every token (token t reads row t mod R), [B, S, Hc, D]."""
    rows_c, rows_s = _table_rows(cos, d), _table_rows(sin, d)
    idx = np.arange(b * s) % rows_c.shape[0]
    return (rows_c[idx].reshape(b, s, rows_c.shape[1], d), rows_s[idx].reshape(b, s, rows_s.shape[1], d))


def _rope(x, cos, sin, interleave: bool):
    """x [B, S, H, D]; cos/sin already expanded to broadcast against x. A table narrower than D
    rotates the first values only (partial rotary), pairing i with i + width/2 for rotate_half."""
    width = cos.shape[-1]
    if width < x.shape[-1]:
        return np.concatenate([_rope(x[..., :width], cos, sin, interleave), x[..., width:]], axis=-1)
    out = np.empty_like(x)
    if interleave:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * cos[..., 0::2] - b * sin[..., 0::2]
        out[..., 1::2] = b * cos[..., 1::2] + a * sin[..., 1::2]
    else:
        h = x.shape[-1] // 2
        lo, hi = x[..., :h], x[..., h:]
        out[..., :h] = lo * cos[..., :h] - hi * sin[..., :h]
        out[..., h:] = hi * cos[..., h:] + lo * sin[..., h:]
    return out


def _sequence_rows(t, start, s):
    """The table sliced to sequence rows [start, start + s) (axis 0 of a 2-D table, else 1)."""
    t = np.asarray(t)
    return t[start:start + s] if t.ndim == 2 else t[:, start:start + s]


def _by_position(t, positions, b: int, s: int):
    """Rows positions[b, s] (clamped to the table) of a 2-D [max_pos, R] table, [B, S, 1, R]."""
    t = _f64(t)
    ids = np.clip(np.asarray(positions).astype(np.int64).reshape(b, s), 0, t.shape[0] - 1)
    return t[ids][:, :, None, :]


def grid_tables(rope, seq: int, d: int, interleave: bool, rope_offset=None):
    """A cudit.Rope3D as [S, D] cos/sin tables: the kernel's fp32 angles, cos and sin in float64."""
    pos = np.asarray(rope.positions(rope_offset or 0, seq), dtype=np.float32)          # [S, 3]
    freq = np.asarray(rope.frequencies(), dtype=np.float32)                               # [D/2]
    axis = np.repeat(np.arange(3), np.asarray(rope.axes_dim) // 2)                        # each pair's axis
    angle = (pos[:, axis] * freq[None, :]).astype(np.float64)                             # fp32 products
    dup = (lambda a: np.repeat(a, 2, axis=-1)) if interleave else (lambda a: np.concatenate([a, a], axis=-1))
    return dup(np.cos(angle)), dup(np.sin(angle))


def _side(x, w, w_add, cos, sin, *, n_txt, eps, interleave, mean_sq=None, rope_offset=None, layer=None,
          positions=None, rotary_dim=None, rope=None):
    b, s, h, d = x.shape
    if w is not None:
        full = mean_sq is not None or (np.asarray(w).size == h * d and h > 1)
        x = _rms_norm(x, w, w_add, n_txt, full, eps, mean_sq, layer)
    cos, sin = _whole_heads(cos, d), _whole_heads(sin, d)
    if rope is not None:
        cos, sin = grid_tables(rope, s, d, interleave, rope_offset)
        rope_offset = None
    if cos is None:
        return x
    if positions is not None:
        tables = _by_position(cos, positions, b, s), _by_position(sin, positions, b, s)
    else:
        if rope_offset is not None:
            cos, sin = _sequence_rows(cos, rope_offset, s), _sequence_rows(sin, rope_offset, s)
        width = np.shape(cos)[-1]
        tables = _token_tables(cos, sin, b, s, width if width < d else d)
    if rotary_dim is not None and rotary_dim < tables[0].shape[-1]:
        tables = tuple(t[..., :rotary_dim] for t in tables)
    return _rope(x, *tables, interleave)


def _mean_squares(sumsq, norm_width, b: int, s: int):
    """Tensor parallelism's all-reduced sums -> Q's and K's mean squares, each [B, S, 1, 1]."""
    if sumsq is None:
        return None, None
    sums = _f64(sumsq).reshape(b, s, 2, 1, 1)
    widths = _heads(norm_width, 2)
    return sums[:, :, 0] / widths[0], sums[:, :, 1] / widths[1]


def qk_norm_rope_ref(qkv, q_weight, k_weight, cos=None, sin=None, *, num_heads=None, eps=1e-6,
                     interleave=True, q_add_weight=None, k_add_weight=None, num_txt_tokens=0,
                     seq_len=None, sumsq=None, norm_width=None, rope_offset=None, norm="rms", q_bias=None,
                     k_bias=None, q_add_bias=None, k_add_bias=None, positions=None, rotary_dim=None, rope=None):
    """float64 result: an array shaped like qkv (V copied unchanged), or a (q, k) tuple.

    sumsq, norm_width: tensor parallelism's all-reduced sums of squares ([T, 2] or [B, S, 2])
    and the widths they cover; rope_offset: the table's sequence row of token 0; norm="layer":
    LayerNorm with the biases; positions, rotary_dim, rope (a Rope3D): the other rotation
    sources (docs/api.md)."""
    common = dict(n_txt=num_txt_tokens, eps=eps, interleave=interleave, rope_offset=rope_offset, positions=positions,
                  rotary_dim=rotary_dim, rope=rope)
    q_layer = (q_bias, q_add_bias) if norm == "layer" else None
    k_layer = (k_bias, k_add_bias) if norm == "layer" else None
    if isinstance(qkv, (tuple, list)):
        q, k = (_f64(a) for a in qkv)
        hs = _heads(num_heads, 2) or (None, None)
        q4 = _to_bshd(q, hs[0], seq_len)
        k4 = _to_bshd(k, hs[1], seq_len)
        mq, mk = _mean_squares(sumsq, norm_width, *q4.shape[:2])
        qo = _side(q4, q_weight, q_add_weight, cos, sin, mean_sq=mq, layer=q_layer, **common)
        ko = _side(k4, k_weight, k_add_weight, cos, sin, mean_sq=mk, layer=k_layer, **common)
        return qo.reshape(q.shape), ko.reshape(k.shape)
    x = _f64(qkv)
    hq, hk, hv = _heads(num_heads, 3)
    x4 = _to_bshd(x, hq + hk + hv, seq_len)
    mq, mk = _mean_squares(sumsq, norm_width, *x4.shape[:2])
    out = x4.copy()
    out[:, :, :hq] = _side(x4[:, :, :hq], q_weight, q_add_weight, cos, sin, mean_sq=mq, layer=q_layer, **common)
    out[:, :, hq:hq + hk] = _side(x4[:, :, hq:hq + hk], k_weight, k_add_weight, cos, sin, mean_sq=mk,
                                  layer=k_layer, **common)
    return out.reshape(x.shape)


def qk_sumsq_ref(qkv, *, num_heads=None, seq_len=None):
    """float64 sums of squares of each token's Q and K heads: [T, 2] for 2-D data, else [B, S, 2]."""
    if isinstance(qkv, (tuple, list)):
        hs = _heads(num_heads, 2) or (None, None)
        q4, k4 = (_to_bshd(_f64(a), h, seq_len) for a, h in zip(qkv, hs))
        shape = np.shape(qkv[0])
    else:
        hq, hk, hv = _heads(num_heads, 3)
        x4 = _to_bshd(_f64(qkv), hq + hk + hv, seq_len)
        q4, k4 = x4[:, :, :hq], x4[:, :, hq:hq + hk]
        shape = np.shape(qkv)
    sums = np.stack([np.sum(q4 * q4, axis=(2, 3)), np.sum(k4 * k4, axis=(2, 3))], axis=-1)
    return sums.reshape(-1, 2) if len(shape) == 2 else sums


# ------------------------------------------------------------------ gradients (issue #12's oracle)


def _rope_t(dy, cos, sin, interleave: bool):
    """The transpose of _rope: dz such that sum(dy * _rope(z)) == sum(dz * z) for every z."""
    dz = np.empty_like(dy)
    if interleave:
        a, b = dy[..., 0::2], dy[..., 1::2]
        dz[..., 0::2] = a * cos[..., 0::2] + b * sin[..., 1::2]
        dz[..., 1::2] = b * cos[..., 1::2] - a * sin[..., 0::2]
    else:
        h = dy.shape[-1] // 2
        lo, hi = dy[..., :h], dy[..., h:]
        dz[..., :h] = lo * cos[..., :h] + hi * sin[..., h:]
        dz[..., h:] = hi * cos[..., h:] - lo * sin[..., :h]
    return dz


def _side_vjp(x, dy, w, w_add, cos, sin, *, n_txt, eps, interleave, rope_offset=None):
    """(dx, dw, dw_add) of one side: x, dy [B, S, H, D]; the weights' gradients shaped as the
    weights (None without them; dw_add None unless the text tokens have their own)."""
    b, s, h, d = x.shape
    dz = dy
    cos, sin = _whole_heads(cos, d), _whole_heads(sin, d)
    if cos is not None:
        if rope_offset is not None:
            cos, sin = _sequence_rows(cos, rope_offset, s), _sequence_rows(sin, rope_offset, s)
        dz = _rope_t(dy, *_token_tables(cos, sin, b, s, d), interleave)
    if w is None:
        return dz, None, None
    full = np.asarray(w).size == h * d and h > 1
    axes = (2, 3) if full else (3,)
    n = h * d if full else d
    r = 1.0 / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps)
    shape = (h, d) if full else (d,)
    dual = bool(n_txt) and w_add is not None
    weight = np.broadcast_to(_f64(w).reshape(shape), (b, s, h, d)).copy()
    if dual:
        weight[:, :n_txt] = _f64(w_add).reshape(shape)
    wdz = weight * dz
    dx = r * wdz - x * r ** 3 / n * np.sum(wdz * x, axis=axes, keepdims=True)
    contrib = dz * x * r                                   # d(loss)/d(weight) per element
    sum_axes = (0, 1) if full else (0, 1, 2)
    dw = np.sum(contrib[:, n_txt:] if dual else contrib, axis=sum_axes).reshape(np.shape(w))
    dw_add = np.sum(contrib[:, :n_txt], axis=sum_axes).reshape(np.shape(w_add)) if dual else None
    return dx, dw, dw_add


def qk_norm_rope_ref_vjp(qkv, dout, q_weight, k_weight, cos=None, sin=None, *, num_heads=None, eps=1e-6,
                         interleave=True, q_add_weight=None, k_add_weight=None, num_txt_tokens=0, seq_len=None,
                         rope_offset=None):
    """float64 gradients of sum(dout * qk_norm_rope_ref(...)): (d_qkv, d_q_weight, d_k_weight,
    d_q_add_weight, d_k_add_weight). d_qkv is shaped like qkv (a (dq, dk) tuple for split input;
    V's gradient passes through); a weight's gradient is None where the weight is. cos and sin
    get none: they are inputs of the rotation, not learned."""
    common = dict(n_txt=num_txt_tokens, eps=eps, interleave=interleave, rope_offset=rope_offset)
    if isinstance(qkv, (tuple, list)):
        hs = _heads(num_heads, 2) or (None, None)
        grads = [_side_vjp(_to_bshd(_f64(a), hh, seq_len), _to_bshd(_f64(g), hh, seq_len), w, wa, cos, sin, **common)
                 for a, g, hh, w, wa in zip(qkv, dout, hs, (q_weight, k_weight), (q_add_weight, k_add_weight))]
        (dq, dqw, dqa), (dk, dkw, dka) = grads
        return (dq.reshape(np.shape(qkv[0])), dk.reshape(np.shape(qkv[1]))), dqw, dkw, dqa, dka
    hq, hk, hv = _heads(num_heads, 3)
    x4 = _to_bshd(_f64(qkv), hq + hk + hv, seq_len)
    g4 = _to_bshd(_f64(dout), hq + hk + hv, seq_len)
    dx = g4.copy()
    dq, dqw, dqa = _side_vjp(x4[:, :, :hq], g4[:, :, :hq], q_weight, q_add_weight, cos, sin, **common)
    dk, dkw, dka = _side_vjp(x4[:, :, hq:hq + hk], g4[:, :, hq:hq + hk], k_weight, k_add_weight, cos, sin, **common)
    dx[:, :, :hq], dx[:, :, hq:hq + hk] = dq, dk
    return dx.reshape(np.shape(qkv)), dqw, dkw, dqa, dka


# fp8 formats: (mantissa bits, smallest normal exponent, largest finite value).
FP8_FORMATS = {"float8_e4m3fn": (3, -6, 448.0), "float8_e5m2": (2, -14, 57344.0)}


def quantize_fp8(y, scale, fmt: str = "float8_e4m3fn"):
    """``saturate(round(y * scale))`` in an fp8 format, as float64 values: round to nearest, ties
    to even, subnormals kept, magnitudes past the largest finite value saturated to it, NaN kept.
    scale broadcasts against y (one value, or one a head along axis -2)."""
    mant, min_exp, top = FP8_FORMATS[fmt]
    v = np.asarray(y, np.float64) * np.asarray(scale, np.float64)
    a = np.abs(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        exp = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    step = np.exp2(np.maximum(exp, min_exp) - mant)   # the spacing of values near a
    q = np.minimum(np.rint(a / step) * step, top)
    return np.where(np.isnan(v), np.nan, np.copysign(q, v))
