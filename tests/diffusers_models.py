"""Tiny random-weight diffusers transformers and their inputs, built here: no hub download."""
import torch


def wan(dtype=torch.float32, device="cpu", layers=2, heads=2, head_dim=32, seed=0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
                                  in_channels=4, out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=layers,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)
    model = _cast(model, device, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    inputs = dict(hidden_states=torch.randn(1, 4, 2, 8, 8, generator=g), timestep=torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 16, 32, generator=g))
    return model, _to(inputs, device, dtype)


def flux(dtype=torch.float32, device="cpu", heads=2, head_dim=32, seed=0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                   attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=32,
                                   pooled_projection_dim=32, guidance_embeds=False,
                                   axes_dims_rope=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8))
    model = _cast(model, device, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    img_ids = torch.zeros(16, 3)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(16) // 4, torch.arange(16) % 4
    inputs = dict(hidden_states=torch.randn(1, 16, 16, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                  pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                  img_ids=img_ids, txt_ids=torch.zeros(8, 3))
    return model, _to(inputs, device, dtype)


def flux2(dtype=torch.float32, device="cpu", heads=2, head_dim=32, seed=0):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    model = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                    attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=32,
                                    timestep_guidance_channels=32, axes_dims_rope=(head_dim // 4,) * 4,
                                    guidance_embeds=False)
    model = _cast(model, device, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    img_ids = torch.zeros(16, 4)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(16) // 4, torch.arange(16) % 4
    txt_ids = torch.zeros(8, 4)
    txt_ids[:, 3] = torch.arange(8)
    inputs = dict(hidden_states=torch.randn(1, 16, 16, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                  timestep=torch.tensor([0.5]), img_ids=img_ids, txt_ids=txt_ids)
    return model, _to(inputs, device, dtype)


def cosmos(dtype=torch.float32, device="cpu", heads=2, head_dim=32, seed=0):
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(seed)
    model = CosmosTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=heads, attention_head_dim=head_dim,
                                     num_layers=2, mlp_ratio=2.0, text_embed_dim=32, adaln_lora_dim=8, max_size=(4, 16, 16),
                                     patch_size=(1, 2, 2), rope_scale=(1.0, 1.0, 1.0), concat_padding_mask=False,
                                     extra_pos_embed_type=None)
    model = _cast(model, device, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    inputs = dict(hidden_states=torch.randn(1, 4, 2, 8, 8, generator=g), timestep=torch.tensor([0.5]),
                  encoder_hidden_states=torch.randn(1, 8, 32, generator=g), fps=24)
    return model, _to(inputs, device, dtype)


def ltx_video(dtype=torch.float32, device="cpu", heads=2, head_dim=32, seed=0):
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    model = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=heads,
                                       attention_head_dim=head_dim, cross_attention_dim=heads * head_dim, num_layers=2,
                                       caption_channels=32)
    model = _cast(model, device, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    inputs = dict(hidden_states=torch.randn(1, 2 * 4 * 4, 8, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                  timestep=torch.tensor([500]), encoder_attention_mask=torch.ones(1, 8), num_frames=2, height=4, width=4)
    return model, _to(inputs, device, dtype)


def ltx2(dtype=torch.float32, device="cpu", heads=2, head_dim=32, seed=0, affine=False, gated=False,
         rope_type="interleaved"):
    from diffusers import LTX2VideoTransformer3DModel

    torch.manual_seed(seed)
    model = LTX2VideoTransformer3DModel(in_channels=8, out_channels=8, num_attention_heads=heads, attention_head_dim=head_dim,
                                        cross_attention_dim=64, audio_in_channels=8, audio_out_channels=8,
                                        audio_num_attention_heads=heads, audio_attention_head_dim=head_dim,
                                        audio_cross_attention_dim=64, num_layers=1, caption_channels=32,
                                        norm_elementwise_affine=affine, gated_attn=gated, audio_gated_attn=gated,
                                        rope_type=rope_type)
    model = _cast(model, device, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    inputs = dict(hidden_states=torch.randn(1, 2 * 4 * 4, 8, generator=g), audio_hidden_states=torch.randn(1, 5, 8, generator=g),
                  encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                  audio_encoder_hidden_states=torch.randn(1, 8, 32, generator=g), timestep=torch.tensor([500]),
                  num_frames=2, height=4, width=4, audio_num_frames=5)
    return model, _to(inputs, device, dtype)


def ltx2_gated(dtype=torch.float32, device="cpu", **kw):
    """LTX-2 with norm weights and per-head gates (the LTX-2.3 settings)."""
    return ltx2(dtype, device, affine=True, gated=True, **kw)


def ltx2_split(dtype=torch.float32, device="cpu", **kw):
    """LTX-2 with its checkpoints' split RoPE: per-head tables of half a head."""
    return ltx2(dtype, device, affine=True, rope_type="split", **kw)


def hunyuan_video(dtype=torch.float32, device="cpu", heads=2, head_dim=32, seed=0):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=heads,
                                           attention_head_dim=head_dim, num_layers=1, num_single_layers=1,
                                           num_refiner_layers=1, patch_size=2, text_embed_dim=32,
                                           pooled_projection_dim=32,
                                           rope_axes_dim=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8))
    model = _cast(model, device, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    inputs = dict(hidden_states=torch.randn(1, 4, 2, 8, 8, generator=g), timestep=torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                  encoder_attention_mask=torch.ones(1, 8, dtype=torch.int64),
                  pooled_projections=torch.randn(1, 32, generator=g), guidance=torch.tensor([3500.0]))
    return model, _to(inputs, device, dtype)


def lumina2(dtype=torch.float32, device="cpu", heads=2, head_dim=32, seed=0):
    from diffusers import Lumina2Transformer2DModel

    torch.manual_seed(seed)
    model = Lumina2Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, hidden_size=heads * head_dim,
                                      num_layers=1, num_refiner_layers=1, num_attention_heads=heads, num_kv_heads=heads // 2,
                                      multiple_of=16, axes_dim_rope=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8),
                                      axes_lens=(32, 16, 16), cap_feat_dim=32)
    model = _cast(model, device, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.ones(1, 8, dtype=torch.bool)
    mask[:, 6:] = False   # padded caption tokens
    inputs = dict(hidden_states=torch.randn(1, 4, 8, 8, generator=g), timestep=torch.tensor([0.5]),
                  encoder_hidden_states=torch.randn(1, 8, 32, generator=g), encoder_attention_mask=mask)
    return model, _to(inputs, device, dtype)


def qwen_image(dtype=torch.float32, device="cpu", heads=2, head_dim=32, seed=0):
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    model = QwenImageTransformer2DModel(patch_size=1, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=32,
                                        axes_dims_rope=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8))
    model = _cast(model, device, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    inputs = dict(hidden_states=torch.randn(1, 16, 16, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                  encoder_hidden_states_mask=torch.ones(1, 8), timestep=torch.tensor([0.5]), img_shapes=[(1, 4, 4)])
    return model, _to(inputs, device, dtype)


def _cast(model, device, dtype):
    """As from_pretrained(torch_dtype=dtype) leaves a model: the modules it names kept in fp32.
    Norm weights made random first (they start at ones, which would hide a swapped weight)."""
    with torch.no_grad():
        for module in model.modules():
            if type(module).__name__ == "RMSNorm" and getattr(module, "weight", None) is not None:   # torch's, diffusers'
                module.weight.uniform_(0.5, 1.5)
    model = model.to(device=device, dtype=dtype).eval()
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        if keep & set(name.split(".")):
            module.float()
    return model


def _to(inputs, device, dtype):
    """Float inputs in the model's dtype (ids and timesteps too: diffusers casts them as it needs)."""
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) if torch.is_tensor(v) else v
            for k, v in inputs.items()}


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def grads(model, inputs, run=None) -> dict:
    """Every parameter's gradient of a loss on the model's output (run: the model or its compiled form)."""
    model.zero_grad()
    (model if run is None else run)(**inputs, return_dict=False)[0].square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_match(got: dict, want: dict, tol: float) -> None:
    """The same parameters, the norms' among them, each within tol of its largest gradient."""
    assert got.keys() == want.keys() and any("norm_q" in n for n in got)
    floor = 1e-6 * max(g.abs().max() for g in want.values())   # gradients that are rounding noise around 0
    for name, g in want.items():
        assert ((got[name] - g).abs().max() / g.abs().max().clamp_min(floor)).item() < tol, name
