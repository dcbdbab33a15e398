"""Tiny random Stable Diffusion and multi-view pipeline directories for tests, demos and benchmarks, offline.

``make_tiny_sd`` writes a real diffusers SD layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) saved
with ``save_pretrained``, so it loads through the same ``from_pretrained`` path as SD 2.1 base (docs/design.md
§6). The tokenizer is a real CLIP BPE tokenizer rebuilt from the merges file open_clip ships (no download).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

from mvforge.errors import UserError


def clip_tokenizer():
    """The CLIP BPE tokenizer (49408 tokens, 77 positions) from open_clip's bundled merges file.

    CLIP's vocab: the 256 byte-level characters, the same with ``</w>``, the joined merges, then the
    start/end tokens (the construction in CLIP's and open_clip's SimpleTokenizer). It pads with id 0 ("!"), as
    open_clip's ``tokenize`` and SD 2.x's tokenizer do: SD's cross-attention reads all 77 positions, so padding
    with ``<|endoftext|>`` (49407, HF CLIP's default) would change a real SD 2.x model's conditioning.
    """
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    merges_file = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(merges_file.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=77)
    # Set after construction: a pad_token passed to the constructor becomes an added special token, and "!" in
    # a prompt would then be split off as id 0 instead of merged by BPE ("!!" is one token for open_clip).
    tok.pad_token = "!"  # id 0
    return tok


VARIANTS = ("tiny", "world")
"""``tiny``: the smallest SD-shaped model (tests, benchmarks). ``world``: the same UNet and text encoder with a
lighter autoencoder (16/32 channels, no mid-block attention: faster per step, ~4x fewer parameters;
docs/benchmarks.md) for models trained from scratch on the demo world at 32 px, whose VAE is fitted first
(`mvtrain fit-vae`, docs/demo.md)."""


def _tiny_parts(seed: int, prediction_type: str, variant: str = "tiny") -> dict:
    """Random tiny SD parts: UNet (latents 16 x 16, attention at the first level), VAE (x2), CLIP text model
    (2 layers, width 32), the real CLIP tokenizer, SD's training schedule. ``variant``: see ``VARIANTS``."""
    if variant not in VARIANTS:
        raise UserError(f"unknown tiny model variant {variant!r}; use one of {', '.join(VARIANTS)}")
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    world = variant == "world"
    vae = AutoencoderKL(
        block_out_channels=(16, 32) if world else (32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8 if world else 32,
        sample_size=32,
        mid_block_add_attention=not world,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=32,
        )
    )
    # SD's training schedule (scaled_linear 0.00085..0.012 over 1000 steps), as in SD 2.1 base.
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )
    return dict(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet, scheduler=scheduler
    )


def _check_new(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; pass a new directory to --out (or remove it to rebuild)")


def _save(pipe, out: Path) -> Path:
    """save_pretrained into a sibling temp dir, then rename: the directory is complete or absent."""
    tmp = out.with_name(out.name + ".tmp-tiny")
    pipe.save_pretrained(tmp)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def make_tiny_sd(
    out: str | Path, seed: int = 0, prediction_type: str = "epsilon", variant: str = "tiny"
) -> Path:
    """Write a tiny random SD directory to ``out`` (must not exist or be empty); returns it. ``variant``: see
    ``VARIANTS``."""
    from diffusers import StableDiffusionPipeline

    out = Path(out)
    _check_new(out)
    pipe = StableDiffusionPipeline(
        **_tiny_parts(seed, prediction_type, variant),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _save(pipe, out)


def make_tiny_mv_pipeline(out: str | Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Write a tiny random multi-view pipeline directory (``MVDreamPipeline`` layout: model_index.json, unet/
    with the camera projection class embedding, vae/, text_encoder/, tokenizer/, scheduler/) to ``out``; load
    it with ``MultiViewDiffusion.from_pretrained(out)``. Unlike a fresh fine-tune, the camera MLP's last layer
    is random too (std 0.1), so the cameras change the output in tests."""
    from mvforge.models.model import multiview_from_sd
    from mvforge.models.pipeline import MultiViewDiffusion

    out = Path(out)
    _check_new(out)
    parts = _tiny_parts(seed, prediction_type)
    unet = multiview_from_sd(parts.pop("unet"))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in unet.class_embedding.linear_2.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return MultiViewDiffusion(unet=unet, **parts).save_pretrained(out)
