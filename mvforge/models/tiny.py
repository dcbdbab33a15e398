"""Tiny random Stable Diffusion and multi-view pipeline directories for tests, demos and benchmarks, offline.

``make_tiny_sd`` writes a real diffusers SD layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) saved
with ``save_pretrained``, so it loads through the same ``from_pretrained`` path as SD 2.1 base (docs/design.md
§6). The tokenizer is the converter's real CLIP BPE tokenizer (``mvforge.models.convert.clip_tokenizer``, built
from the merges file open_clip ships; no download).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mvforge.errors import UserError
from mvforge.fsutil import atomic_write_text
from mvforge.models.convert import clip_tokenizer

VARIANTS = ("tiny", "world")
"""``tiny``: the smallest SD-shaped model (tests, benchmarks). ``world``: the same UNet and text encoder with a
lighter autoencoder (16/32 channels, no mid-block attention: faster per step, ~4x fewer
parameters; docs/benchmarks.md), for models trained from scratch on the demo world at 32 px, whose VAE is
fitted first (`mvtrain fit-vae`, docs/demo.md)."""
ATTENTION_HEADS = 8
"""Attention heads of every attention layer of the tiny UNets by default: 8, of 4 channels at the 32-channel
levels and of 8 at the 64-channel mid block (the reference tests compare against it). With one head
(``attention_heads=1``, `make demo`) the UNet's forward and backward run faster on a CPU, by how much depends on
the CPU's kernels: the 4-view self-attention over 1,024 tokens is most of the 8-head step (docs/benchmarks.md)."""


def _tiny_parts(
    seed: int, prediction_type: str, variant: str = "tiny", attention_heads: int = ATTENTION_HEADS
) -> dict:
    """Random tiny SD parts: UNet (latents 16 x 16, attention at the first level), VAE (x2), CLIP text model
    (2 layers, width 32), the real CLIP tokenizer, SD's training schedule. ``variant``: see ``VARIANTS``;
    ``attention_heads``: see ``ATTENTION_HEADS``. Raises UserError for an unknown variant or a head count that
    does not divide 32."""
    check_options(variant, attention_heads)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    world = variant == "world"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        # diffusers reads ``attention_head_dim`` as the number of heads (its legacy name; SD 2.1's 5/10/20/20
        # are heads of 64 channels each).
        attention_head_dim=attention_heads,
        norm_num_groups=32,
    )
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


def check_options(variant: str, attention_heads: int) -> None:
    """UserError (one line) for an unknown ``variant`` or a head count that does not divide 32."""
    if variant not in VARIANTS:
        raise UserError(f"unknown tiny model variant {variant!r}; use one of {', '.join(VARIANTS)}")
    if attention_heads < 1 or 32 % attention_heads:
        raise UserError(
            f"attention heads {attention_heads}: use 1, 2, 4, 8, 16 or 32 (a divisor of the UNet's 32 and 64 "
            "channels)"
        )


RECIPE = "mvforge-tiny.json"
"""Written into every tiny model directory: the arguments that made it (seed, prediction_type, variant,
attention_heads, multiview), so a rerun over a finished directory can tell whether it is the model asked for."""


def recipe_difference(out: str | Path, **asked) -> str | None:
    """How the finished tiny model in ``out`` differs from the one ``asked`` for (``make_tiny_sd``'s arguments
    and ``multiview``), as "--attention-heads 1, not 8"; "" when it is the same; None when ``out`` holds no
    finished model. A directory from before ``RECIPE`` is compared on what its configs show (camera
    embedding, head count, prediction type)."""
    out = Path(out)
    if not (out / "model_index.json").is_file():
        return None
    recipe_file = out / RECIPE

    def read(path: Path) -> dict:
        try:
            doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError):
            doc = None
        if not isinstance(doc, dict):
            raise UserError(f"{path} is unreadable; remove {out} to rebuild it")
        return doc

    if recipe_file.is_file():
        made = read(recipe_file)
    else:
        unet, sched = read(out / "unet" / "config.json"), read(out / "scheduler" / "scheduler_config.json")
        vae = read(out / "vae" / "config.json")
        made = {
            "multiview": unet.get("class_embed_type") is not None,
            "attention_heads": unet.get("attention_head_dim"),  # diffusers' name for the head count
            "prediction_type": sched.get("prediction_type"),
            # the world variant's lighter autoencoder (``_tiny_parts``)
            "variant": {16: "world", 32: "tiny"}.get((vae.get("block_out_channels") or [None])[0]),
        }
    for key, value in asked.items():
        if key in made and made[key] is not None and made[key] != value:
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                return f"{flag} is {str(made[key]).lower()} there, not {str(value).lower()}"
            return f"{flag} {made[key]} there, not {value}"
    return ""


def _write_recipe(out: Path, recipe: dict) -> None:
    atomic_write_text(out / RECIPE, json.dumps(recipe, indent=1) + "\n")


def _check_new(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; pass a new directory to --out (or remove it to rebuild)")


def _save(pipe, out: Path, recipe: dict) -> Path:
    """save_pretrained into a sibling temp dir with ``RECIPE``, then rename: the directory is complete or
    absent."""
    tmp = out.with_name(out.name + ".tmp-tiny")
    pipe.save_pretrained(tmp)
    _write_recipe(tmp, recipe)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def make_tiny_sd(
    out: str | Path,
    seed: int = 0,
    prediction_type: str = "epsilon",
    variant: str = "tiny",
    attention_heads: int = ATTENTION_HEADS,
) -> Path:
    """Write a tiny random SD directory to ``out`` (must not exist or be empty); returns it. ``variant``: see
    ``VARIANTS``; ``attention_heads``: see ``ATTENTION_HEADS``."""
    from diffusers import StableDiffusionPipeline

    out = Path(out)
    _check_new(out)
    pipe = StableDiffusionPipeline(
        **_tiny_parts(seed, prediction_type, variant, attention_heads),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    recipe = {"seed": seed, "prediction_type": prediction_type, "variant": variant}
    return _save(pipe, out, recipe | {"attention_heads": attention_heads, "multiview": False})


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
    MultiViewDiffusion(unet=unet, **parts).save_pretrained(out)
    recipe = {"seed": seed, "prediction_type": prediction_type, "variant": "tiny"}
    # Written after the model: a directory without it still loads (recipe_difference reads its configs).
    _write_recipe(out, recipe | {"attention_heads": ATTENTION_HEADS, "multiview": True})
    return out
