"""What both diffusers examples do: generate with the stock processors, enable cudit, generate
again, and compare."""
import diffusers
import torch

import cudit.diffusers


def stock_then_cudit(pipe, generate, what: str) -> None:
    diffusers.utils.logging.set_verbosity_error()   # the tiny models' dtype notes
    with torch.no_grad():
        stock = generate(pipe)
        report = cudit.diffusers.enable(pipe)
        ours = generate(pipe)
    for s in report:
        print(f"{s.name:<36} {'cudit' if s.swapped else 'stock'}: {s.why}")
    diff = (ours.float() - stock.float()).abs().max().item()
    print(f"{what} {tuple(ours.shape)}: max |cudit - stock| = {diff:.4f} (pixels in [0, 1])")
    assert diff < 0.05, diff
    print("ok")
