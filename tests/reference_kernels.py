"""cudit's kernels replaced by the float64 reference (forward and gradients), for CPU tests of
the autograd wiring: what reaches which tensor, not the kernels (the GPU tests check those)."""
import numpy as np
import torch

import cudit
from cudit import reference


def _np(t):
    return None if t is None else (tuple(_np(x) for x in t) if isinstance(t, tuple) else t.detach().double().numpy())


def _forward(split, objs, options, stream):
    q, k, out_q, out_k, qw, kw, qa, ka, cos, sin = objs[:10]
    num_heads, eps, interleave, n_txt, seq_len = options[:5]
    ref = reference.qk_norm_rope_ref((_np(q), _np(k)) if split else _np(q), _np(qw), _np(kw), _np(cos), _np(sin),
                                     num_heads=num_heads, eps=eps, interleave=interleave, q_add_weight=_np(qa),
                                     k_add_weight=_np(ka), num_txt_tokens=n_txt, seq_len=seq_len)
    for dst, r in zip((out_q if out_q is not None else q, out_k if split else None), ref if split else (ref,)):
        if dst is not None:
            dst.copy_(torch.from_numpy(np.ascontiguousarray(r)))


def _backward(x, dout, qw, kw, cos=None, sin=None, *, dqkv, num_heads, eps, interleave, q_add_weight,
              k_add_weight, num_txt_tokens, seq_len, rope_offset, workspace, **grads):
    split = isinstance(x, tuple)
    dx, *dws = reference.qk_norm_rope_ref_vjp(_np(x), _np(dout), _np(qw), _np(kw), _np(cos), _np(sin),
                                              num_heads=num_heads, eps=eps, interleave=interleave,
                                              q_add_weight=_np(q_add_weight), k_add_weight=_np(k_add_weight),
                                              num_txt_tokens=num_txt_tokens, seq_len=seq_len, rope_offset=rope_offset)
    for dst, r in zip(dqkv if split else (dqkv,), dx if split else (dx,)):
        dst.copy_(torch.from_numpy(np.ascontiguousarray(r)))
    for name, r in zip(("dq_weight", "dk_weight", "dq_add_weight", "dk_add_weight"), dws):
        if grads.get(name) is not None:
            grads[name].copy_(torch.from_numpy(r))
    return dqkv


def use_reference_kernels(monkeypatch):
    monkeypatch.setattr(cudit.api, "run", _forward)
    monkeypatch.setattr(cudit.api, "qk_norm_rope_backward", _backward)
