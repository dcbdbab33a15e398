"""Typed configuration of multi-view sampling (`mvtrain sample`; TOML + ``--set``; CLI flags write here).

Defaults are the official MVDream inference script's (docs/design.md §10.10, bytedance/MVDream
scripts/t2i.py): DDIM 50 steps, eta 0, CFG 10, empty negative prompt, the ", 3d asset" suffix, 4 views at
elevation 15 from azimuth 90, seed 23, 256 px (the side is the model's own, as in diffusers: 256 for
MVDream's). ``AUTHORS_DEFAULTS`` lists them so the CLI help can say which are the authors'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SchedulerName = Literal["ddim", "dpm++", "euler", "euler-a", "pndm"]


@dataclass(frozen=True)
class SampleConfig:
    """Multi-view sampling: V views of each prompt with classifier-free guidance."""

    scheduler: SchedulerName = "ddim"
    """Sampling scheduler (diffusers): ddim (the authors'), dpm++ (DPM-Solver++ 2M), euler, euler-a, pndm."""
    steps: int = 50
    """Denoising steps."""
    eta: float = 0.0
    """DDIM eta (0: deterministic DDIM); ignored by the other schedulers."""
    guidance_scale: float = 10.0
    """Classifier-free guidance scale (1 disables guidance). The official script overrides its function's 7.5."""
    guidance_rescale: float = 0.0
    """diffusers' per-image std rescale of the guided noise (0 = off, as the authors)."""
    negative_prompt: str = ""
    """Text of the unconditional branch of CFG."""
    prompt_suffix: str = ", 3d asset"
    """Appended to every prompt (the captions MVDream was trained on end with it)."""
    num_views: int = 4
    """Views V; cameras at 360/V azimuth steps from ``azimuth_start_deg``."""
    elevation_deg: float = 15.0
    """Camera elevation of every view."""
    azimuth_start_deg: float = 90.0
    """Azimuth of view 0 (90 = +X, docs/design.md §3)."""
    resolution: int = 0
    """Image side in pixels, a multiple of 8 (the VAE's downsampling); 0: the model's native side, its UNet's
    sample size x the VAE factor, as diffusers' pipelines do (256 for MVDream's, which the authors sample at)."""
    seed: int = 23
    """Seeds the initial noise (and euler-a's per-step noise)."""
    use_ema: bool = True
    """With an `mvtrain fit` checkpoint: sample with unet_ema/ when it has one."""
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    """Weights and activations dtype; fp16 and bf16 need a CUDA device."""


AUTHORS_DEFAULTS = (
    "scheduler",
    "steps",
    "eta",
    "guidance_scale",
    "negative_prompt",
    "prompt_suffix",
    "num_views",
    "elevation_deg",
    "azimuth_start_deg",
    "seed",
)
"""Fields whose default is the official inference script's (docs/design.md §10.10)."""
