"""cudit in a diffusers pipeline, in one line: attention processors whose QK norm and RoPE are
one cudit call.

    import cudit.diffusers
    report = cudit.diffusers.enable(pipe)       # a pipeline, or its transformer
    ...
    cudit.diffusers.disable(pipe)               # the stock processors again

Every other step of the stock processor (projections, attention backend, masks, output) stays
as diffusers does it. Attention modules cudit cannot serve keep their stock processor, and
`enable` logs one line a reason (logger "cudit.diffusers"); calls it cannot serve at run time
(host tensors, other dtypes) go to the stock processor too. Under autograd (fine-tuning, LoRA)
the cudit step is the functional operator, whose backward is cudit's (docs/training.md).
Supported: WAN 2.x self-attention, FLUX.1 (both block kinds), FLUX.2 (double-stream blocks),
HunyuanVideo (both block kinds), Cosmos 1.0, LTX-Video and LTX-2 self-attention, Lumina-2,
Qwen-Image.
docs/diffusers.md has the details.
"""
from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from . import torch as cudit_torch
from ._errors import PlanError
from ._planner import _check_head_dim

log = logging.getLogger("cudit.diffusers")

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
CROSS = "cross-attention (Q and K have different token counts; no RoPE)"


@dataclass(frozen=True)
class Swap:
    """What enable() did with one attention module."""

    name: str        # the module's name in the model
    cls: str         # its class
    swapped: bool    # True: a cudit processor; False: the stock one kept
    why: str         # the recipe, or why cudit cannot serve it


def _rms_eps(norm, dtype) -> float:
    """An RMSNorm's epsilon: its own, or (torch.nn.RMSNorm's None) the dtype's machine epsilon."""
    return norm.eps if norm.eps is not None else torch.finfo(dtype).eps


def _is_rms_norm(norm, weightless: bool = False) -> bool:
    """torch's RMSNorm or diffusers', with a weight (or, where allowed, none) and no bias: what
    cudit computes."""
    from diffusers.models.normalization import RMSNorm

    return (isinstance(norm, (torch.nn.RMSNorm, RMSNorm)) and (weightless or getattr(norm, "weight", None) is not None)
            and getattr(norm, "bias", None) is None)


def _norm_weight(norm, like):
    """An RMSNorm's weight; ones for a norm without one (LTX-2's default), built each call (a few
    KB) so that torch.compile sees no state."""
    if norm.weight is not None:
        return norm.weight
    width = (norm.normalized_shape if isinstance(norm, torch.nn.RMSNorm) else norm.dim)[-1]
    return torch.ones(width, dtype=like.dtype, device=like.device)


def _norm_problem(attn, names, weightless: bool = False) -> str | None:
    """Why the module's QK norms are not ones cudit computes (RMSNorm with weights, one eps)."""
    norms = [getattr(attn, n, None) for n in names]
    if not all(_is_rms_norm(n, weightless) for n in norms):
        return f"QK norms are not RMSNorm with weights ({', '.join(type(n).__name__ for n in norms)})"
    if len({n.eps for n in norms}) > 1:
        return f"QK norms with different eps ({', '.join(str(n.eps) for n in norms)})"
    return None


def _head_dim_problem(d: int) -> str | None:
    try:
        _check_head_dim(d)
    except PlanError as e:
        return str(e)
    return None


def _separate_projections(attn, hidden_states):
    """Q, K, V by the module's three projections, as the stock processors that ignore fusion do."""
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


def _projections(attn, hidden_states):
    """Q, K, V of a self-attention module, fused or not (views of one output when fused)."""
    if getattr(attn, "fused_projections", False):
        return attn.to_qkv(hidden_states).chunk(3, dim=-1)
    return _separate_projections(attn, hidden_states)


def _added_projections(attn, encoder_hidden_states):
    if getattr(attn, "fused_projections", False):
        return attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
    return (attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states),
            attn.add_v_proj(encoder_hidden_states))


def _joint(first, second):
    """Q, K, V of two token streams, one after the other along the token axis."""
    return tuple(torch.cat([a, b], dim=1) for a, b in zip(first, second))


def _text_first_out(attn, out, n_txt: int):
    """The stock double-stream ending: image tokens through to_out, text tokens through to_add_out."""
    context, out = out[:, :n_txt], out[:, n_txt:]
    return _out(attn, out.contiguous()), attn.to_add_out(context.contiguous())


class _Processor:
    """A cudit processor: the stock one kept for the calls cudit cannot serve. A subclass gives
    `problem(attn)` (None: it can serve the module), `recipe`, and `__call__` with the stock
    processor's signature."""

    _attention_backend = None
    _parallel_config = None
    recipe = ""

    def __init__(self, stock):
        self.stock = stock
        # diffusers sets these on the processors (set_attention_backend, context parallelism).
        self._attention_backend = getattr(stock, "_attention_backend", None)
        self._parallel_config = getattr(stock, "_parallel_config", None)
        self.cudit_calls = 0          # eager calls served by cudit (the tests read it)
        self._logged = set()

    def _stock_reason(self, attn, hidden_states, rotary, other: str | None = None) -> str | None:
        """Why this call goes to the stock processor (`other`: the subclass's own reason), or None."""
        if rotary is None:
            return "no rotary embedding"
        return other or self._runtime_reason(attn, hidden_states)

    @staticmethod
    def _runtime_reason(attn, hidden_states) -> str | None:
        """What of the call itself cudit cannot serve: host tensors, other dtypes."""
        if not hidden_states.is_cuda:
            return "host tensors"
        if hidden_states.dtype not in DTYPES:
            return f"dtype {hidden_states.dtype}"
        return None

    def _stock(self, why: str, attn, *args, **kwargs):
        if why not in self._logged:
            self._logged.add(why)
            log.info("cudit.diffusers: %s runs its stock processor: %s", type(attn).__name__, why)
        return self.stock(attn, *args, **kwargs)

    @staticmethod
    def _in_place(attn, q, k, norms=("norm_q", "norm_k"), **text) -> bool:
        """Whether the cudit step may overwrite Q and K: autograd records nothing of the call."""
        weights = [getattr(attn, n).weight for n in norms] + [text.get("q_add_weight"), text.get("k_add_weight")]
        return not cudit_torch._recorded((q, k), *weights)

    @staticmethod
    def _norm_rope(attn, q, k, rotary, head_dim: int, interleave: bool, norms=("norm_q", "norm_k"), **text):
        """The one cudit call: Q and K (split) with the module's norm weights and tables; in place,
        or, where autograd records it, as new tensors (the functional operator has a backward)."""
        nq, nk = (getattr(attn, n) for n in norms)
        cos, sin = rotary if rotary is not None else (None, None)
        wq, wk = (_norm_weight(n, q) for n in (nq, nk))
        inplace = _Processor._in_place(attn, q, k, norms, **text)
        return cudit_torch.qk_norm_rope((q, k), wq, wk, cos, sin,
                                        num_heads=(q.shape[-1] // head_dim, k.shape[-1] // head_dim),
                                        eps=_rms_eps(nq, q.dtype), interleave=interleave, inplace=inplace, **text)

    def _count(self):
        # Not counted while torch.compile traces: a Python int read there becomes a guard, and
        # each call would recompile.
        if not torch.compiler.is_compiling():
            self.cudit_calls += 1

    def _attend(self, q, k, v, attention_mask, head_dim: int):
        """The stock attention dispatch on [B, S, H, D] views; [B, S, H*D] out in Q's dtype."""
        self._count()
        out = dispatch_attention_fn(*(t.unflatten(-1, (-1, head_dim)) for t in (q, k, v)), attn_mask=attention_mask,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        return out.flatten(2, 3).to(q.dtype)


def _out(attn, x):
    return attn.to_out[1](attn.to_out[0](x))


def _inner_head_dim(attn) -> int:
    return attn.inner_dim // attn.heads


class WanProcessor(_Processor):
    """WanAttention self-attention."""

    recipe = "RMSNorm across heads (or per head), interleaved RoPE"

    @staticmethod
    def problem(attn) -> str | None:
        if attn.is_cross_attention or attn.add_k_proj is not None:
            return CROSS
        return _norm_problem(attn, ("norm_q", "norm_k")) or _head_dim_problem(_inner_head_dim(attn))

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 **kwargs):
        other = "encoder states or extra arguments" if encoder_hidden_states is not None or kwargs else None
        why = self._stock_reason(attn, hidden_states, rotary_emb, other)
        if why:
            return self._stock(why, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
        q, k, v = _projections(attn, hidden_states)
        d = _inner_head_dim(attn)
        q, k = self._norm_rope(attn, q, k, rotary_emb, d, interleave=True)
        return _out(attn, self._attend(q, k, v, attention_mask, d))


class FluxProcessor(_Processor):
    """FLUX.1's FluxAttention (double- and single-stream blocks), FLUX.2's double-stream blocks."""

    recipe = "per-head RMSNorm (the text tokens' own weights in double blocks), interleaved RoPE"

    @staticmethod
    def problem(attn) -> str | None:
        names = ("norm_q", "norm_k") + (("norm_added_q", "norm_added_k") if attn.added_kv_proj_dim is not None else ())
        return _norm_problem(attn, names) or _head_dim_problem(attn.head_dim)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None, **kwargs):
        joint = encoder_hidden_states is not None
        other = ("extra arguments" if kwargs else
                 "encoder states without added projections" if joint and attn.added_kv_proj_dim is None else None)
        why = self._stock_reason(attn, hidden_states, image_rotary_emb, other)
        if why:
            return self._stock(why, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                               **kwargs)
        q, k, v = _projections(attn, hidden_states)
        text = {}
        if joint:   # text tokens first, with their own norm weights
            q, k, v = _joint(_added_projections(attn, encoder_hidden_states), (q, k, v))
            text = dict(q_add_weight=attn.norm_added_q.weight, k_add_weight=attn.norm_added_k.weight,
                        num_txt_tokens=encoder_hidden_states.shape[1])
        q, k = self._norm_rope(attn, q, k, image_rotary_emb, attn.head_dim, interleave=True, **text)
        out = self._attend(q, k, v, attention_mask, attn.head_dim)
        if not joint:   # FLUX.1 single-stream blocks have no output projection here
            return _out(attn, out) if hasattr(attn, "to_out") else out
        return _text_first_out(attn, out, text["num_txt_tokens"])


class HunyuanVideoProcessor(_Processor):
    """HunyuanVideo's attention (the generic Attention class), dual- and single-stream blocks."""

    recipe = ("per-head RMSNorm; video tokens rotated (interleaved), the text tokens after them "
              "normalised only, with their own weights in dual-stream blocks")

    @staticmethod
    def problem(attn) -> str | None:
        names = ("norm_q", "norm_k") + (("norm_added_q", "norm_added_k") if attn.add_q_proj is not None else ())
        return _norm_problem(attn, names) or _head_dim_problem(_inner_head_dim(attn))

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None, **kwargs):
        why = self._stock_reason(attn, hidden_states, image_rotary_emb, "extra arguments" if kwargs else None)
        if why:
            return self._stock(why, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                               **kwargs)
        n_txt = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        added = n_txt > 0 and attn.add_q_proj is not None
        if n_txt and not added:   # single-stream blocks: text tokens after the video tokens, one projection
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        q, k, v = _separate_projections(attn, hidden_states)
        d = _inner_head_dim(attn)
        video = q.shape[1] - (0 if added else n_txt)
        parts = [self._norm_rope(attn, q[:, :video], k[:, :video], image_rotary_emb, d, interleave=True)]
        if n_txt and not added:
            parts.append(self._norm_rope(attn, q[:, video:], k[:, video:], None, d, interleave=True))
        if len(parts) == 1:
            q, k = parts[0]
        elif not self._in_place(attn, q, k):   # new tensors (autograd): joined as the stock processor joins them
            q, k = (torch.cat(t, dim=1) for t in zip(*parts))
        if added:
            eq, ek, ev = (attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states),
                          attn.add_v_proj(encoder_hidden_states))
            eq, ek = self._norm_rope(attn, eq, ek, None, d, interleave=True, norms=("norm_added_q", "norm_added_k"))
            q, k, v = _joint((q, k, v), (eq, ek, ev))
        out = self._attend(q, k, v, attention_mask, d)
        if encoder_hidden_states is not None:
            out, encoder_hidden_states = out[:, :-n_txt], out[:, -n_txt:]
            if getattr(attn, "to_out", None) is not None:
                out = _out(attn, out)
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return out, encoder_hidden_states


class _SelfAttentionProcessor(_Processor):
    """Self-attention of the generic shape: Q, K, V from the same tokens, one table, no text tokens."""

    interleave = True
    weightless_norms = False   # RMSNorms without a weight (scaled by ones) served too

    @classmethod
    def problem(cls, attn) -> str | None:
        if getattr(attn, "is_cross_attention", False):
            return CROSS
        if attn.to_k.out_features != attn.to_q.out_features:
            return "fewer K heads than Q heads"
        return (_norm_problem(attn, ("norm_q", "norm_k"), weightless=cls.weightless_norms)
                or _head_dim_problem(_inner_head_dim(attn)))

    def _attended(self, attn, hidden_states, attention_mask, rotary):
        """Attention over the tokens with cudit's QK step, before the output projection."""
        attention_mask = self._mask(attn, attention_mask, hidden_states)
        q, k, v = _separate_projections(attn, hidden_states)
        d = _inner_head_dim(attn)
        rotary, interleave = self._tables(attn, rotary)
        q, k = self._norm_rope(attn, q, k, rotary, d, interleave=interleave)
        return self._attend(q, k, v, attention_mask, d)

    def _tables(self, attn, rotary):
        """The module's (cos, sin) as cudit reads them, and whether they pair values 2i and 2i + 1."""
        return rotary, self.interleave

    def _mask(self, attn, attention_mask, hidden_states):
        return attention_mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None, **kwargs):
        other = "encoder states or extra arguments" if encoder_hidden_states is not None or kwargs else None
        why = self._stock_reason(attn, hidden_states, image_rotary_emb, other)
        if why:
            return self._stock(why, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                               **kwargs)
        return _out(attn, self._attended(attn, hidden_states, attention_mask, image_rotary_emb))


class CosmosProcessor(_SelfAttentionProcessor):
    """Cosmos self-attention (the generic Attention class with Cosmos' processor)."""

    recipe = "per-head RMSNorm, rotate_half RoPE"
    interleave = False


class LTXVideoProcessor(_SelfAttentionProcessor):
    """LTX-Video self-attention (LTXAttention)."""

    recipe = "RMSNorm across heads, interleaved RoPE from a table per head"

    def _mask(self, attn, attention_mask, hidden_states):
        if attention_mask is None:   # else shaped as the stock processor shapes it
            return None
        b, s, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, s, b)
        return attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])


class LTX2Processor(LTXVideoProcessor):
    """LTX-2's video and audio self-attention (LTX2Attention), per-head gates included."""

    recipe = "RMSNorm across heads (weights or none), interleaved or split RoPE from a table per head"
    weightless_norms = True

    def _tables(self, attn, rotary):
        if attn.rope_type != "split":
            return rotary, True
        # split RoPE: [B, H, T, D/2] views of [B, T, H, D/2] rows, one entry for values i and i + D/2:
        # cudit's 4-D half-head tables once the view is turned back (no copy).
        return tuple(t.transpose(1, 2) for t in rotary), False

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, query_rotary_emb=None,
                 key_rotary_emb=None, **kwargs):
        other = ("encoder states, rotations of their own for K, or extra arguments"
                 if encoder_hidden_states is not None or key_rotary_emb is not None or kwargs else None)
        why = self._stock_reason(attn, hidden_states, query_rotary_emb, other)
        if why:
            return self._stock(why, attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                               key_rotary_emb, **kwargs)
        gate_logits = attn.to_gate_logits(hidden_states) if attn.to_gate_logits is not None else None
        out = self._attended(attn, hidden_states, attention_mask, query_rotary_emb)
        if gate_logits is not None:   # as the stock processor: gates in (0, 2) per head
            out = (out.unflatten(2, (attn.heads, -1)) * (2.0 * torch.sigmoid(gate_logits)).unsqueeze(-1)).flatten(2, 3)
        return _out(attn, out)


def _complex_tables(*freqs):
    """cos and sin tables [..., D] (fp32) of rotations given as complex numbers [..., D/2], joined
    along the token axis: pairs (2i, 2i + 1) share an angle, interleaved RoPE. Lumina-2 and
    Qwen-Image hand their rotations over this way, so each call builds its tables (one small op,
    [S, D] floats); every other model's tables are used as they are."""
    f = freqs[0] if len(freqs) == 1 else torch.cat(freqs, dim=-2)
    ri = torch.view_as_real(f).float()
    return ri[..., 0].repeat_interleave(2, dim=-1), ri[..., 1].repeat_interleave(2, dim=-1)


def _complex_reason(freqs, tokens: tuple) -> str | None:
    """Why complex rotations [*tokens, D/2] cannot be served as they are, or None."""
    if not (torch.is_tensor(freqs) and torch.is_complex(freqs)):
        return "a rotary embedding that is not complex"
    if tuple(freqs.shape[:-1]) != tokens:
        return "a rotation table of another token count"
    return None


class Lumina2Processor(_Processor):
    """Lumina-2's attention (the generic Attention class with Lumina-2's processor), GQA included."""

    recipe = "per-head RMSNorm, interleaved RoPE from complex rotations"

    @staticmethod
    def problem(attn) -> str | None:
        return _norm_problem(attn, ("norm_q", "norm_k")) or _head_dim_problem(_inner_head_dim(attn))

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None,
                 base_sequence_length=None, **kwargs):
        b, seq, _ = hidden_states.shape
        if encoder_hidden_states is not hidden_states or kwargs:
            other = "encoder states other than the tokens themselves, or extra arguments"
        else:
            other = None if image_rotary_emb is None else _complex_reason(image_rotary_emb, (b, seq))
        why = self._stock_reason(attn, hidden_states, image_rotary_emb, other)
        if why:
            return self._stock(why, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                               base_sequence_length, **kwargs)
        q, k, v = _separate_projections(attn, hidden_states)
        d = _inner_head_dim(attn)
        q, k = self._norm_rope(attn, q, k, _complex_tables(image_rotary_emb), d, interleave=True)
        self._count()
        # The rest as Lumina-2's stock processor: proportional scale, K and V heads repeated, SDPA.
        scale = attn.scale if base_sequence_length is None else \
            math.sqrt(math.log(seq, base_sequence_length)) * attn.scale
        q, k, v = (t.unflatten(-1, (-1, d)) for t in (q, k, v))
        n_rep = attn.heads // k.shape[2]
        if n_rep >= 1:
            k, v = (t.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3) for t in (k, v))
        if attention_mask is not None:
            attention_mask = attention_mask.bool().view(b, 1, 1, -1)
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                               attn_mask=attention_mask, scale=scale)
        return _out(attn, out.transpose(1, 2).reshape(b, -1, attn.heads * d).type_as(q))


class QwenImageProcessor(_Processor):
    """Qwen-Image's double-stream attention: text and image tokens, each with their own
    projections, norms and rotations, attended jointly (text first)."""

    recipe = "per-head RMSNorm (the text tokens' own weights), interleaved RoPE from complex rotations"

    @staticmethod
    def problem(attn) -> str | None:
        return (_norm_problem(attn, ("norm_q", "norm_k", "norm_added_q", "norm_added_k"))
                or _head_dim_problem(_inner_head_dim(attn)))

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                 attention_mask=None, image_rotary_emb=None, **kwargs):
        n_txt = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        if not n_txt or attention_mask is not None or kwargs:
            other = "no text stream, an attention mask or extra arguments"
        elif image_rotary_emb is None:
            other = None
        else:
            img_f, txt_f = image_rotary_emb
            other = _complex_reason(img_f, (hidden_states.shape[1],)) or _complex_reason(txt_f, (n_txt,))
        why = self._stock_reason(attn, hidden_states, image_rotary_emb, other)
        if why:
            return self._stock(why, attn, hidden_states, encoder_hidden_states, encoder_hidden_states_mask,
                               attention_mask, image_rotary_emb, **kwargs)
        if encoder_hidden_states_mask is not None:   # as the stock processor builds the joint mask
            image_mask = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
            attention_mask = torch.cat([encoder_hidden_states_mask, image_mask], dim=1)[:, None, None, :]
        q, k, v = _joint(_added_projections(attn, encoder_hidden_states), _projections(attn, hidden_states))
        d = _inner_head_dim(attn)
        img_f, txt_f = image_rotary_emb
        q, k = self._norm_rope(attn, q, k, _complex_tables(txt_f, img_f), d, interleave=True,
                               q_add_weight=attn.norm_added_q.weight, k_add_weight=attn.norm_added_k.weight,
                               num_txt_tokens=n_txt)
        return _text_first_out(attn, self._attend(q, k, v, attention_mask, d), n_txt)


def _processor_classes() -> dict:
    """Stock processor class -> cudit processor class, for the models this diffusers has."""
    from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
    from diffusers.models.transformers.transformer_flux2 import Flux2AttnProcessor
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
    from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor
    from diffusers.models.transformers.transformer_ltx2 import LTX2AudioVideoAttnProcessor
    from diffusers.models.transformers.transformer_lumina2 import Lumina2AttnProcessor2_0
    from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    return {WanAttnProcessor: WanProcessor, FluxAttnProcessor: FluxProcessor, Flux2AttnProcessor: FluxProcessor,
            HunyuanVideoAttnProcessor2_0: HunyuanVideoProcessor, CosmosAttnProcessor2_0: CosmosProcessor,
            LTXVideoAttnProcessor: LTXVideoProcessor, Lumina2AttnProcessor2_0: Lumina2Processor,
            QwenDoubleStreamAttnProcessor2_0: QwenImageProcessor, LTX2AudioVideoAttnProcessor: LTX2Processor}


def _models(target) -> list:
    """The transformers of a pipeline (WAN 2.2 has two), or the module itself."""
    if isinstance(target, torch.nn.Module):
        return [target]
    found = [getattr(target, n) for n in ("transformer", "transformer_2") if isinstance(getattr(target, n, None), torch.nn.Module)]
    if not found:
        raise TypeError(f"cudit.diffusers: expected a diffusers pipeline or a torch.nn.Module, got {type(target).__name__}")
    return found


def _cross_attention_name(name: str) -> bool:
    """diffusers' DiTs name their cross-attention attn2 (LTX-2: audio_attn2, and audio_to_video_attn,
    video_to_audio_attn between its streams); LTX-Video's module tells it no other way."""
    last = name.rsplit(".", 1)[-1]
    return last.endswith("attn2") or last in ("audio_to_video_attn", "video_to_audio_attn")


def enable(target) -> list:
    """Swap the attention processors cudit serves; returns a Swap per attention module."""
    classes = _processor_classes()
    report = []
    for model in _models(target):
        for name, module in model.named_modules():
            current = getattr(module, "processor", None)
            if current is None or not hasattr(module, "set_processor"):
                continue
            if isinstance(current, _Processor):
                report.append(Swap(name, type(module).__name__, True, "already enabled"))
                continue
            proc_cls = classes.get(type(current))
            if proc_cls is None:
                why = f"{type(current).__name__} is not a processor cudit replaces"
            else:
                why = CROSS if _cross_attention_name(name) else proc_cls.problem(module)
            if why is None:
                module.set_processor(proc_cls(current))
            report.append(Swap(name, type(module).__name__, why is None, why or proc_cls.recipe))
    for (cls, swapped, why), n in collections.Counter((s.cls, s.swapped, s.why) for s in report).items():
        log.info("cudit.diffusers: %d x %s %s: %s", n, cls, "use cudit" if swapped else "keep the stock processor", why)
    return report


def disable(target) -> int:
    """Put the stock processors back; returns how many were swapped."""
    n = 0
    for model in _models(target):
        for module in model.modules():
            proc = getattr(module, "processor", None)
            if isinstance(proc, _Processor):
                module.set_processor(proc.stock)
                n += 1
    return n
