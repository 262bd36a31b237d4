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
        rows_c, rows_s = _table_rows(cos, d), _table_rows(sin, d)
        idx = np.arange(b * s) % rows_c.shape[0]
        c = rows_c[idx].reshape(b, s, rows_c.shape[1], d)
        sn = rows_s[idx].reshape(b, s, rows_s.shape[1], d)
        x = _rope(x, c, sn, interleave)
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
