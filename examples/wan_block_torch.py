"""A WAN-style self-attention block using cudit under torch.compile (needs a GPU and torch).

    python examples/wan_block_torch.py

The block projects x to packed QKV, normalises Q and K across all heads (WAN's full-dim
RMSNorm) and rotates them (interleaved RoPE) with cudit in place, then runs attention.
It checks the compiled block against the same block written in plain PyTorch.
"""
import torch
import torch.nn.functional as F

import cudit.torch as ct

HEADS, HEAD_DIM, EPS = 12, 128, 1e-6
DIM = HEADS * HEAD_DIM


class WanSelfAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(DIM, 3 * DIM)
        self.o = torch.nn.Linear(DIM, DIM)
        self.norm_q = torch.nn.Parameter(torch.rand(DIM) + 0.5)   # full-dim RMSNorm weights
        self.norm_k = torch.nn.Parameter(torch.rand(DIM) + 0.5)

    def forward(self, x, cos, sin, fused=True):
        b, s, _ = x.shape
        qkv = self.qkv(x)
        if fused:
            ct.qk_norm_rope(qkv, self.norm_q, self.norm_k, cos, sin, num_heads=HEADS, eps=EPS)
            q, k, v = qkv.split(DIM, dim=-1)
        else:
            q, k, v = qkv.split(DIM, dim=-1)
            q, k = (rope(rms_norm(t, w), cos, sin) for t, w in ((q, self.norm_q), (k, self.norm_k)))
        q, k, v = (t.reshape(b, s, HEADS, HEAD_DIM).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v)
        return self.o(o.transpose(1, 2).reshape(b, s, DIM))


def rms_norm(x, w):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS) * w.float()).to(x.dtype)


def rope(x, cos, sin):
    """Interleaved RoPE with pair-duplicated [S, D] tables, as WAN builds them."""
    b, s, _ = x.shape
    xf = x.float().view(b, s, HEADS, HEAD_DIM)
    a, c = xf.unflatten(-1, (-1, 2)).unbind(-1)
    rot = torch.stack((-c, a), dim=-1).flatten(-2)
    out = xf * cos.view(1, s, 1, HEAD_DIM) + rot * sin.view(1, s, 1, HEAD_DIM)
    return out.to(x.dtype).view(b, s, DIM)


def tables(s):
    pos = torch.arange(s, device="cuda", dtype=torch.float32)[:, None]
    freq = 10000.0 ** (-torch.arange(0, HEAD_DIM, 2, device="cuda") / HEAD_DIM)
    ang = (pos * freq).repeat_interleave(2, dim=-1)          # [S, D], pairs duplicated
    return torch.cos(ang), torch.sin(ang)


def main():
    torch.manual_seed(0)
    block = WanSelfAttention().cuda().to(torch.bfloat16)
    x = torch.randn(2, 1560, DIM, device="cuda", dtype=torch.bfloat16)
    cos, sin = tables(x.shape[1])
    with torch.inference_mode():
        eager_ref = block(x, cos, sin, fused=False)
        fused = block(x, cos, sin)
        compiled = torch.compile(block, fullgraph=True)
        got = compiled(x, cos, sin)
        graphs = torch.compile(block, fullgraph=True, mode="reduce-overhead")
        for _ in range(3):
            got_graphs = graphs(x, cos, sin).clone()
    for name, y in (("eager cudit", fused), ("torch.compile", got), ("reduce-overhead", got_graphs)):
        err = (y.float() - eager_ref.float()).abs().max().item()
        print(f"{name:<16} max |diff| vs plain PyTorch block: {err:.4f}")
        assert err < 0.05, name
    same = (got.float() - fused.float()).abs().max().item()
    print(f"torch.compile vs eager cudit block: max |diff| {same:.4f} (bitwise equal: {torch.equal(got, fused)})")
    assert same < 0.02
    print("ok: fullgraph compile (no graph break) and CUDA-graph replay give the eager numbers")


if __name__ == "__main__":
    main()
