"""Typed configuration of `mvtrain fit` (TOML + ``--set``; CLI flags write here). Sampling: mvforge/models/config.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mvforge.shards.config import LoaderConfig


@dataclass(frozen=True)
class OptimConfig:
    """AdamW on the UNet (the VAE and text encoder stay frozen, paper §3.3)."""

    lr: float = 1e-4
    """Peak learning rate."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``lr`` over this many steps, then constant."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip_norm: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""


@dataclass(frozen=True)
class FitConfig:
    """One training run (design §2.5)."""

    pretrained: str = ""
    """A diffusers Stable Diffusion directory (SD 2.1 base for real runs; `mvtrain make-tiny-sd` for tests)."""
    shards: str = ""
    """3D shard directory (with index.json) written by `mvdata shard`."""
    shards_2d: str | None = None
    """Optional img2dataset-style 2D shards (tar path or brace pattern); mixed in at 1 - loader.p_3d."""
    out: str = "runs/mvdream"
    """Run directory: checkpoints/, metrics.csv, config.toml."""
    max_steps: int = 1000
    """Optimizer steps to train (global; resume continues up to it)."""
    seed: int = 0
    """Seeds model noise, timesteps and caption dropout; each step's randomness is a function of
    (seed, step, rank), so resume replays it exactly."""
    caption_dropout: float = 0.1
    """Probability of training a sample with the empty caption, so classifier-free guidance works at
    sampling time (paper §3.3 trains with CFG)."""
    ema_decay: float = 0.9999
    """EMA of the UNet weights, kept in unet_ema/ (0 disables the EMA update)."""
    checkpoint_every: int = 500
    """Write a checkpoint every this many steps (and at the last step)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept on disk."""
    log_every: int = 10
    """Append a metrics.csv row every this many steps."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the in-process loop runs (Ray workers use the device Ray Train gives them)."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """bf16 autocast for the UNet forward on CUDA."""
    gradient_checkpointing: bool = False
    """Recompute the UNet's activations in backward: less memory, more compute, the same gradients."""
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    """The streaming loader (batch size, views, resolution, p_3d, ...)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimizer."""
