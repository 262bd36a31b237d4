"""A whole FluxPipeline call (tiny random weights, no download) with cudit's attention
processors, checked against the stock ones.

    python examples/diffusers_flux.py       # needs a GPU, diffusers and transformers
"""
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from diffusers_compare import stock_then_cudit   # examples/, beside this script


def tiny_pipeline(device="cuda", dtype=torch.bfloat16):
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                         attention_head_dim=64, num_attention_heads=4, joint_attention_dim=64,
                                         pooled_projection_dim=64, guidance_embeds=False, axes_dims_rope=(16, 24, 24))
    vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        block_out_channels=[8, 8], layers_per_block=1, latent_channels=4, norm_num_groups=4,
                        scaling_factor=0.3611, shift_factor=0.1159)
    # No text encoders: the prompt comes as embeddings (from CLIP and T5 in the real model).
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    return pipe.to(device, dtype)


def generate(pipe):
    g = torch.Generator().manual_seed(1)
    prompt = torch.randn(1, 32, 64, generator=g).to("cuda", torch.bfloat16)
    pooled = torch.randn(1, 64, generator=g).to("cuda", torch.bfloat16)
    return pipe(prompt_embeds=prompt, pooled_prompt_embeds=pooled, height=64, width=64, num_inference_steps=4,
                output_type="pt", generator=torch.Generator().manual_seed(2)).images


def main():
    stock_then_cudit(tiny_pipeline(), generate, "images")


if __name__ == "__main__":
    main()
