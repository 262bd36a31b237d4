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


def _rms_norm(x, w, w_txt, n_txt, full: bool, eps: float):
    """x [B, S, H, D]; w of length D (per-head) or H*D (full-dim)."""
    b, s, h, d = x.shape
    axes = (2, 3) if full else (3,)
    r = 1.0 / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps)
    shape = (h, d) if full else (d,)
    weight = np.broadcast_to(_f64(w).reshape(shape), (b, s, h, d)).copy()
    if n_txt and w_txt is not None:
        weight[:, :n_txt] = _f64(w_txt).reshape(shape)
    return x * r * weight


def _table_rows(t: np.ndarray, d: int) -> np.ndarray:
    """Any accepted cos/sin form -> [R, Hc, D] (Hc = 1 or Hq)."""
    t = _f64(t)
    if t.ndim == 4:
        return t.reshape(t.shape[0] * t.shape[1], t.shape[2], d)
    if t.ndim == 3:
        t = t.reshape(t.shape[0] * t.shape[1], t.shape[2])
    return t.reshape(t.shape[0], t.shape[1] // d, d)


def _token_tables(cos, sin, b: int, s: int, d: int):
    """cos and sin rows of every token (token t reads row t mod R), [B, S, Hc, D]."""
    rows_c, rows_s = _table_rows(cos, d), _table_rows(sin, d)
    idx = np.arange(b * s) % rows_c.shape[0]
    return (rows_c[idx].reshape(b, s, rows_c.shape[1], d), rows_s[idx].reshape(b, s, rows_s.shape[1], d))


def _rope(x, cos, sin, interleave: bool):
    """x [B, S, H, D]; cos/sin already expanded to broadcast against x."""
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


def _side(x, w, w_add, cos, sin, *, n_txt, eps, interleave):
    b, s, h, d = x.shape
    if w is not None:
        full = np.asarray(w).size == h * d and h > 1
        x = _rms_norm(x, w, w_add, n_txt, full, eps)
    if cos is not None:
        x = _rope(x, *_token_tables(cos, sin, b, s, d), interleave)
    return x


def qk_norm_rope_ref(qkv, q_weight, k_weight, cos=None, sin=None, *, num_heads=None, eps=1e-6,
                     interleave=True, q_add_weight=None, k_add_weight=None, num_txt_tokens=0,
                     seq_len=None):
    """float64 result: an array shaped like qkv (V copied unchanged), or a (q, k) tuple."""
    common = dict(n_txt=num_txt_tokens, eps=eps, interleave=interleave)
    if isinstance(qkv, (tuple, list)):
        q, k = (_f64(a) for a in qkv)
        hs = _heads(num_heads, 2) or (None, None)
        q4 = _to_bshd(q, hs[0], seq_len)
        k4 = _to_bshd(k, hs[1], seq_len)
        qo = _side(q4, q_weight, q_add_weight, cos, sin, **common)
        ko = _side(k4, k_weight, k_add_weight, cos, sin, **common)
        return qo.reshape(q.shape), ko.reshape(k.shape)
    x = _f64(qkv)
    hq, hk, hv = _heads(num_heads, 3)
    x4 = _to_bshd(x, hq + hk + hv, seq_len)
    out = x4.copy()
    out[:, :, :hq] = _side(x4[:, :, :hq], q_weight, q_add_weight, cos, sin, **common)
    out[:, :, hq:hq + hk] = _side(x4[:, :, hq:hq + hk], k_weight, k_add_weight, cos, sin, **common)
    return out.reshape(x.shape)


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


def _side_vjp(x, dy, w, w_add, cos, sin, *, n_txt, eps, interleave):
    """(dx, dw, dw_add) of one side: x, dy [B, S, H, D]; the weights' gradients shaped as the
    weights (None without them; dw_add None unless the text tokens have their own)."""
    b, s, h, d = x.shape
    dz = dy
    if cos is not None:
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
                         interleave=True, q_add_weight=None, k_add_weight=None, num_txt_tokens=0, seq_len=None):
    """float64 gradients of sum(dout * qk_norm_rope_ref(...)): (d_qkv, d_q_weight, d_k_weight,
    d_q_add_weight, d_k_add_weight). d_qkv is shaped like qkv (a (dq, dk) tuple for split input;
    V's gradient passes through); a weight's gradient is None where the weight is. cos and sin
    get none: they are inputs of the rotation, not learned."""
    common = dict(n_txt=num_txt_tokens, eps=eps, interleave=interleave)
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
