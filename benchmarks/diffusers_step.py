"""One denoising step of a diffusers transformer at real dimensions (a few layers of random
weights, no hub), stock attention processors against cudit.diffusers', eager and compiled.

    PYTHONPATH=. python benchmarks/diffusers_step.py [--models wan-1.3b,wan-14b-720p,flux.1] [--layers 2] [--modes eager,compiled]

Per model: the step's median device time each way (events, warm-up, 10 runs), the speed-up,
and the QK norm + RoPE step inside the block: cudit's kernels from the profiler, the stock
step as cudit's plus the time the swap saved (everything else in the step is the same work).
"""
import argparse
import statistics
import sys

import torch

import cudit.diffusers as cd


def _wan(layers, heads, ffn_dim, height, width, label):
    """A WAN transformer of the given size; 81 frames (21 latent) at height x width pixels / 8."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=128, in_channels=16,
                                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=ffn_dim, num_layers=layers,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
    inputs = dict(hidden_states=torch.randn(1, 16, 21, height, width), timestep=torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 512, 4096))
    return model, inputs, label


def wan_13b(layers):
    return _wan(layers, 12, 8960, 60, 104, "WAN-1.3B 480p (32,760 tokens)")


def wan_14b_720p(layers):
    return _wan(layers, 40, 13824, 90, 160, "WAN-14B 720p (75,600 tokens)")


def flux_1(layers):
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=layers, num_single_layers=layers,
                                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                   pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    img_ids = torch.zeros(4096, 3)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(4096) // 64, torch.arange(4096) % 64
    inputs = dict(hidden_states=torch.randn(1, 4096, 64), encoder_hidden_states=torch.randn(1, 512, 4096),
                  pooled_projections=torch.randn(1, 768), timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                  img_ids=img_ids, txt_ids=torch.zeros(512, 3))
    return model, inputs, "FLUX.1 1024 px (4,096 + 512 tokens)"


MODELS = {"wan-1.3b": wan_13b, "wan-14b-720p": wan_14b_720p, "flux.1": flux_1}


def median_ms(fn, reps=10, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def cudit_kernel_ms(step) -> float:
    """Device time of cudit's kernels in one step (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(e.device_time_total for e in prof.key_averages() if "qknr" in e.key) / 1e3


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="wan-1.3b,flux.1")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--modes", default="eager,compiled")
    args = ap.parse_args(argv)
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; {args.layers} layers of each kind, bf16")
    rows = []
    for key in args.models.split(","):
        model, inputs, label = MODELS[key](args.layers)
        model = model.to("cuda", torch.bfloat16).eval()
        inputs = {k: v.to("cuda", torch.bfloat16 if v.is_floating_point() else v.dtype) for k, v in inputs.items()}

        def step(m=model):
            with torch.no_grad():
                return m(**inputs, return_dict=False)[0]

        compiled = torch.compile(model, fullgraph=True)
        modes = {"eager": step, "compiled": lambda: step(compiled)}
        for mode in args.modes.split(","):
            fn = modes[mode]
            cd.disable(model)
            torch._dynamo.reset()
            stock = median_ms(fn)
            report = cd.enable(model)
            torch._dynamo.reset()
            ours = median_ms(fn)
            kernel = cudit_kernel_ms(fn)
            swapped = sum(s.swapped for s in report)
            rows.append((label, mode, stock, ours, kernel, stock - ours + kernel, swapped))
            print(f"{label:<38} {mode:<9} stock {stock:8.2f} ms  cudit {ours:8.2f} ms  x{stock / ours:5.3f}  "
                  f"norm+rope: cudit {kernel * 1e3:7.1f} us, stock ~{(stock - ours + kernel) * 1e3:7.1f} us "
                  f"({swapped} modules)", flush=True)
        del model
        torch.cuda.empty_cache()
    print("\n| model | mode | stock step ms | cudit step ms | speed-up | QK norm+RoPE, cudit us | same, stock us (derived) |")
    print("|---|---|---|---|---|---|---|")
    for label, mode, stock, ours, kernel, stock_step, _ in rows:
        print(f"| {label} | {mode} | {stock:.2f} | {ours:.2f} | {stock / ours:.3f}x | {kernel * 1e3:.0f} | {stock_step * 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
