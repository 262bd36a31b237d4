"""A whole WanPipeline call (tiny random weights, no download) with cudit's attention processors,
checked against the stock ones.

    python examples/diffusers_wan.py        # needs a GPU, diffusers and transformers

With real weights it is the same line: `cudit.diffusers.enable(pipe)` after from_pretrained().
"""
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

from diffusers_compare import stock_then_cudit   # examples/, beside this script


def tiny_pipeline(device="cuda", dtype=torch.bfloat16):
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64,
                                        in_channels=16, out_channels=16, text_dim=64, freq_dim=64, ffn_dim=256,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    # No text encoder: the prompt comes as embeddings (random here, from UMT5 in the real model).
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                       scheduler=UniPCMultistepScheduler(flow_shift=3.0))
    return pipe.to(device, dtype)


def generate(pipe):
    g = torch.Generator().manual_seed(1)
    prompt, negative = torch.randn(2, 1, 32, 64, generator=g).to("cuda", torch.bfloat16)
    return pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, height=64, width=64, num_frames=9,
                num_inference_steps=4, guidance_scale=5.0, output_type="pt",
                generator=torch.Generator().manual_seed(2)).frames


def main():
    stock_then_cudit(tiny_pipeline(), generate, "frames")


if __name__ == "__main__":
    main()
