"""Stable Diffusion-shaped models with random weights for the benchmarks (timings do not depend on weights).

One place for the architectures the benchmarks build: ``TINY`` (SD's layout at small widths) and ``SD21`` (SD 2.1
base: UNet 865 M, VAE 84 M, OpenCLIP ViT-H text tower with the 23 layers SD 2.1 uses). Imported by the bench
scripts, which run as ``python bench/bench_x.py`` (so this folder is on ``sys.path``).
"""

from __future__ import annotations

import torch

TINY = dict(
    unet=dict(block_out_channels=(32, 64, 128, 128), attention_head_dim=8, cross_attention_dim=64),
    vae=(32, 64, 64, 64),
    text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
)
SD21 = dict(
    unet=dict(
        block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
    ),
    vae=(128, 256, 512, 512),
    text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16),
)
ARCH = {"tiny": TINY, "sd21": SD21}


def unet_kwargs(arch: dict, sample_size: int) -> dict:
    """``UNet2DConditionModel`` keyword arguments: 4 levels, attention at the upper 3, 2 resnets per level."""
    return dict(
        sample_size=sample_size,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        **arch["unet"],
    )


def build(arch: dict, resolution: int):
    """(plain SD UNet, VAE, CLIP text encoder, tokenizer, DDPM noise scheduler), seeded, for ``resolution`` px."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from mvforge.models.convert import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_kwargs(arch, resolution // 8))
    vae = AutoencoderKL(
        block_out_channels=arch["vae"],
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=resolution,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=arch["text"]["hidden_size"],
            **arch["text"],
        )
    )
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    return unet, vae, text, clip_tokenizer(), sched
