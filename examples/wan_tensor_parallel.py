"""WAN-14B's QK norm + RoPE on several GPUs, checked against one GPU.

    torchrun --nproc-per-node 2 examples/wan_tensor_parallel.py       # NCCL_NVLS_ENABLE=0 where shared

Tensor parallelism: the Q/K/V projection is split by columns, so each rank holds 40 / world
heads of every token; WAN's norm runs over all 40 heads, so the ranks exchange each token's
sums of squares (cudit.torch.qk_norm_rope(..., tp_group=...)). Sequence parallelism (Ulysses,
before the all-to-all): each rank holds all heads of a token range and reads the RoPE table
from its offset. Every rank compares its part with cudit on one GPU over the whole tensors.
"""
import os

import torch
import torch.distributed as dist

import cudit.torch

DIM, HEADS, D, TOKENS = 5120, 40, 128, 4680   # WAN-14B; 480p's 32,760 tokens / 7 to keep it quick


def wan_inputs(device):
    """One token batch, the fused QKV projection and the norm weights, alike on every rank."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, TOKENS, DIM, device=device, generator=g, dtype=torch.bfloat16)
    w_qkv = torch.randn(3 * DIM, DIM, device=device, generator=g, dtype=torch.bfloat16) / DIM**0.5
    q_w, k_w = (torch.rand(DIM, device=device, generator=g) + 0.5 for _ in range(2))
    angle = torch.arange(TOKENS, device=device)[:, None] * torch.logspace(0, -4, D // 2, device=device)
    cos = angle.cos().repeat_interleave(2, -1)          # [S, D], pairs (2i, 2i+1)
    sin = angle.sin().repeat_interleave(2, -1)
    return x, w_qkv, q_w, k_w, cos, sin


def max_ulps(got, want):
    """Worst |got - want| in bf16 ulps at each element's rotation-pair magnitude."""
    w = want.double()
    pair = torch.hypot(w[..., 0::2], w[..., 1::2]).repeat_interleave(2, -1).clamp_min(2.0**-14)
    return float(((got.double() - w).abs() / torch.exp2(torch.floor(torch.log2(pair)) - 7)).max())


def main():
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", rank))
    x, w_qkv, q_w, k_w, cos, sin = wan_inputs("cuda")
    qkv = x @ w_qkv.T                                    # [1, S, 3 * 40 * 128]: Q, K, V heads
    whole = cudit.torch.qk_norm_rope(qkv, q_w, k_w, cos, sin, num_heads=HEADS, inplace=False)

    # Tensor parallelism: this rank's heads (what a column-parallel projection gives), its weight slices.
    h = HEADS // world
    cols = torch.arange(3 * DIM, device="cuda").view(3, HEADS, D)[:, rank * h:(rank + 1) * h].reshape(-1)
    local = qkv[..., cols]   # [1, S, 3 * h * 128]: x @ w_qkv[cols].T, bit for bit as one GPU's projection
    mine = slice(rank * h * D, (rank + 1) * h * D)
    out = cudit.torch.qk_norm_rope(local, q_w[mine], k_w[mine], cos, sin, num_heads=h, tp_group=dist.group.WORLD,
                                   inplace=False)
    want = whole.view(1, TOKENS, 3, HEADS, D)[:, :, :, rank * h:(rank + 1) * h]
    got = out.view(1, TOKENS, 3, h, D)
    tp = max_ulps(got[:, :, :2], want[:, :, :2])

    # Sequence parallelism: this rank's tokens, all heads, the table from its offset.
    s = TOKENS // world
    part = cudit.torch.qk_norm_rope(qkv[:, rank * s:(rank + 1) * s], q_w, k_w, cos, sin, num_heads=HEADS,
                                    rope_offset=rank * s, inplace=False)
    sp_equal = torch.equal(part, whole[:, rank * s:(rank + 1) * s])

    print(f"rank {rank}/{world}: tensor parallel ({h} heads) worst {tp:.2f} ulp of one GPU; "
          f"sequence parallel (tokens {rank * s}-{(rank + 1) * s - 1}) bit-equal: {sp_equal}")
    assert tp <= 1 and sp_equal
    dist.barrier()
    if rank == 0:
        print("ok")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
