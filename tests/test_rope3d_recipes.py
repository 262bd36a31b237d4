"""docs/models.md's Rope3D recipes against the models' own rotary embedders (diffusers, on the
CPU): the kernel's angles (cudit.reference.grid_tables) give the tables the models build."""
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

import cudit  # noqa: E402
from cudit.reference import grid_tables  # noqa: E402

F, H, W = 3, 4, 6        # latent grid after patching
# fp32 angles against the models' float64 or fp32 ones: positions up to ~6 and frequencies <= 1
TOL = 2e-6


def latents(frames=F, height=H, width=W, patch=2):
    return torch.zeros(1, 4, frames, height * patch, width * patch)


def check(cos, sin, rope, interleave):
    d = sum(rope.axes_dim)
    want_c, want_s = (np.asarray(t, dtype=np.float64).reshape(-1, d) for t in (cos, sin))
    got_c, got_s = grid_tables(rope, rope.sequence_length, d, interleave)
    np.testing.assert_allclose(got_c, want_c, atol=TOL)
    np.testing.assert_allclose(got_s, want_s, atol=TOL)


def test_wan():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    d = 128
    cos, sin = WanRotaryPosEmbed(d, (1, 2, 2), max_seq_len=1024)(latents())
    rope = cudit.Rope3D((F, H, W), (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)), theta=10000.0)
    check(cos, sin, rope, interleave=True)


def test_hunyuan_video():
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed

    cos, sin = HunyuanVideoRotaryPosEmbed(2, 1, [16, 56, 56], 256.0)(latents())
    check(cos, sin, cudit.Rope3D((F, H, W), (16, 56, 56), theta=256.0), interleave=True)


def test_flux_text_first_at_zero():
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    text = 5
    img = torch.zeros(H, W, 3)
    img[..., 1] += torch.arange(H)[:, None]
    img[..., 2] += torch.arange(W)[None, :]
    ids = torch.cat([torch.zeros(text, 3), img.reshape(-1, 3)])
    cos, sin = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])(ids)
    check(cos, sin, cudit.Rope3D((1, H, W), (16, 56, 56), theta=10000.0, text_tokens=text), interleave=True)


@pytest.mark.parametrize("fps", [None, 16])
def test_cosmos(fps):
    from diffusers.models.transformers.transformer_cosmos import CosmosRotaryPosEmbed

    cos, sin = CosmosRotaryPosEmbed(128, max_size=(128, 240, 240), patch_size=(1, 2, 2))(latents(), fps=fps)
    rope = cudit.Rope3D((F, H, W), (44, 42, 42), theta=(10000.0 * 2.0 ** (44 / 42), 10000.0, 10000.0),
                        scale=(1.0 if fps is None else 24 / fps, 1.0, 1.0))
    check(cos, sin, rope, interleave=False)
