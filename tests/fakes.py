"""Made-up array descriptions for CPU tests of the planner, and the kernels' block rules read
from a plan."""
from cudit._arrays import ArrayInfo, contiguous_strides

BASE = 0x7F0000000000


def arr(shape, dtype="bf16", strides=None, ptr=BASE, device=0, readonly=False, framework="torch"):
    shape = tuple(shape)
    return ArrayInfo(ptr=ptr, shape=shape, strides=tuple(strides) if strides else contiguous_strides(shape),
                     dtype=dtype, device_id=device, readonly=readonly, framework=framework)


def blocks_holding_all_heads(plan) -> tuple:
    """(blocks, blocks not) of a plan whose K rows are Q's (no narrower GQA teams) that hold all K
    heads of each row they take, by the kernel's rule (kernels/qk_norm_rope.cu every_head_held)."""
    from cudit._params import Params

    c, p = plan.config, Params.from_buffer_copy(plan.template)
    k = c.variant.heads_per_thread
    tokens, rows = p.total_rows // 2, c.block // c.team
    held = k > 0 and c.lanes_d == c.tj and all(p.side[s].heads == k * c.th for s in (0, 1))
    last_rows = [(sb + 1) * rows - 1 + (p.iters - 1) * p.step for sb in range(c.grid // 2)]
    taken = sum(held and last < tokens for last in last_rows)
    return taken, len(last_rows) - taken
