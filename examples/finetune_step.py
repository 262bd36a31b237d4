"""A LoRA-style fine-tuning step on a WAN-like self-attention block, with cudit's backward
(needs a GPU and torch).

    python examples/finetune_step.py

The base projections are frozen; low-rank adapters on Q, K and V and the full-dim RMSNorm
weights train. The block normalises and rotates Q and K with cudit.torch.qk_norm_rope(...,
inplace=False), the functional form autograd records (the in-place form raises under
autograd: its input, which the backward needs, is overwritten). One step runs eagerly and
under torch.compile, and both are checked against the same block written in plain PyTorch:
the loss, every trainable gradient, and the weights after an optimiser step.
"""
import torch
import torch.nn.functional as F

import cudit.torch as ct
from wan_block_torch import DIM, EPS, HEAD_DIM, HEADS, rms_norm, rope, tables   # the plain-PyTorch block's parts

RANK = 16


class LoRALinear(torch.nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.base = torch.nn.Linear(dim_in, dim_out)
        self.base.requires_grad_(False)                  # frozen
        self.down = torch.nn.Parameter(torch.randn(RANK, dim_in) / dim_in ** 0.5)
        self.up = torch.nn.Parameter(torch.randn(dim_out, RANK) * 0.01)

    def forward(self, x):
        return self.base(x) + (x @ self.down.t()) @ self.up.t()


class WanSelfAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (LoRALinear(DIM, DIM) for _ in range(3))
        self.o = torch.nn.Linear(DIM, DIM).requires_grad_(False)
        self.norm_q = torch.nn.Parameter(torch.rand(DIM) + 0.5)   # full-dim RMSNorm weights, trained
        self.norm_k = torch.nn.Parameter(torch.rand(DIM) + 0.5)

    def forward(self, x, cos, sin, fused=True):
        b, s, _ = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        if fused:
            q, k = ct.qk_norm_rope((q, k), self.norm_q, self.norm_k, cos, sin, num_heads=HEADS, eps=EPS,
                                   inplace=False)
        else:
            q, k = (rope(rms_norm(t, w), cos, sin) for t, w in ((q, self.norm_q), (k, self.norm_k)))
        q, k, v = (t.reshape(b, s, HEADS, HEAD_DIM).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v)
        return self.o(o.transpose(1, 2).reshape(b, s, DIM))


def step(block, x, target, cos, sin, fused, forward=None):
    """One optimiser step; returns the loss and each trainable parameter's gradient."""
    opt = torch.optim.SGD([p for p in block.parameters() if p.requires_grad], lr=1e-2)
    opt.zero_grad()
    out = (block if forward is None else forward)(x, cos, sin, fused)
    loss = F.mse_loss(out.float(), target.float())
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in block.named_parameters() if p.requires_grad}
    opt.step()
    return loss.detach(), grads


def compare(name, a, b, tol):
    """Largest difference relative to the largest magnitude, for each tensor."""
    worst = 0.0
    for key in a:
        err = ((a[key].float() - b[key].float()).abs().max() / b[key].float().abs().max().clamp_min(1e-30)).item()
        worst = max(worst, err)
    print(f"{name:<34} worst relative difference {worst:.2e}")
    assert worst < tol, (name, worst)


def main():
    torch.manual_seed(0)
    x = torch.randn(2, 1024, DIM, device="cuda")
    target = torch.randn_like(x)
    cos, sin = tables(x.shape[1])
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        base = WanSelfAttention().cuda().to(dtype)
        blocks = {name: WanSelfAttention().cuda().to(dtype) for name in ("plain", "cudit", "compiled")}
        for b in blocks.values():
            b.load_state_dict(base.state_dict())
        xs, ts = x.to(dtype), target.to(dtype)
        loss_p, grads_p = step(blocks["plain"], xs, ts, cos, sin, fused=False)
        loss_c, grads_c = step(blocks["cudit"], xs, ts, cos, sin, fused=True)
        compiled = torch.compile(blocks["compiled"], fullgraph=True)
        loss_k, grads_k = step(blocks["compiled"], xs, ts, cos, sin, fused=True, forward=compiled)
        print(f"{str(dtype):<15} loss: plain {loss_p.item():.6f}, cudit {loss_c.item():.6f}, "
              f"compiled {loss_k.item():.6f}")
        compare(f"{dtype} cudit gradients vs plain", grads_c, grads_p, tol)
        compare(f"{dtype} compiled gradients vs plain", grads_k, grads_p, tol)
        params = lambda b: {n: p.detach() for n, p in b.named_parameters()}   # noqa: E731
        compare(f"{dtype} weights after the step", params(blocks["cudit"]), params(blocks["plain"]), tol)
    print("ok")


if __name__ == "__main__":
    main()
