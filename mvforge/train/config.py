"""Typed configuration of `mvtrain fit` (TOML + ``--set``; CLI flags write here). Sampling: mvforge/models/config.py.

Every field validates itself in ``__post_init__`` (a ``UserError`` naming the field, docs/design.md §5). Which
values are the paper's: ``configs/`` presets say so (the paper's fine-tune: SD 2.1 base, 256 px, 4 views, lr
1e-4 after warm-up, global batch 1,024 objects, 30% 2D steps; docs/design.md §2.4-§2.5, §10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mvforge.errors import UserError
from mvforge.shards.config import LoaderConfig

LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")
"""Names passed to ``diffusers.optimization.get_scheduler`` (the ones offered and tested)."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW on the UNet (the VAE and text encoder stay frozen, paper §3.3)."""

    lr: float = 1e-4
    """Peak learning rate of the UNet (the paper's: 1e-4)."""
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant_with_warmup"
    """LR schedule by name, built by ``diffusers.optimization.get_scheduler`` over ``max_steps``."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``lr`` over this many optimizer steps (ignored by ``constant``)."""
    camera_lr_mult: float = 1.0
    """LR multiplier of the new camera MLP (``class_embedding``), which starts from scratch (docs/design.md
    §6)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip_norm: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    use_8bit_adam: bool = False
    """bitsandbytes' AdamW8bit (GPU only; needs ``pip install bitsandbytes``)."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise UserError(f"optim.lr must be > 0 (got {self.lr}); set e.g. optim.lr=1e-4")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise UserError(
                f"optim.lr_scheduler {self.lr_scheduler!r} is unknown; use one of {', '.join(LR_SCHEDULERS)}"
            )
        if self.warmup_steps < 0:
            raise UserError(f"optim.warmup_steps must be >= 0 (got {self.warmup_steps})")
        if not self.camera_lr_mult > 0:
            raise UserError(f"optim.camera_lr_mult must be > 0 (got {self.camera_lr_mult}); set it to 1")
        if self.grad_clip_norm < 0:
            raise UserError(f"optim.grad_clip_norm must be >= 0 (got {self.grad_clip_norm}); 0 disables")


@dataclass(frozen=True)
class ValidationConfig:
    """Sample grids on rank 0 every ``every`` steps (docs/design.md §2.5): 3D prompts as 4-view grids and 2D
    prompts as single camera-less images (to catch forgetting of the 2D ability), with the EMA weights and a
    fixed seed."""

    every: int = 0
    """Validate every this many optimizer steps (0 disables) and at the last step."""
    prompts: tuple[str, ...] = ("a wooden chair", "a red teapot")
    """3D prompts (the caption suffix is added, as in training); sampled as ``num_views`` views."""
    prompts_2d: tuple[str, ...] = ("a photo of a dog on a beach",)
    """2D prompts sampled without cameras (one view)."""
    steps: int = 20
    """DDIM steps per sample."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale."""
    resolution: int = 0
    """Image side (0: the training resolution)."""
    seed: int = 23
    """Initial-noise seed, the same at every validation (comparable strips); also seeds the loss batches."""
    loss_batches: int = 0
    """Batches of the shards' 3D val split (views held out by `mvdata shard --val-views`, or whole objects by
    ``--val-fraction``) whose mean diffusion loss is logged as ``val/loss`` at each validation: the same
    samples, views, timesteps and noise every time, so the curve compares across steps (keep it fixed for a
    run). More batches than the split holds go round it again. 0: none; > 0 needs ``every`` > 0."""

    def __post_init__(self) -> None:
        check_validation_sampling(self.every, self.steps, self.resolution)
        if self.loss_batches < 0:
            raise UserError(f"validation.loss_batches must be >= 0 (got {self.loss_batches}); 0 disables it")
        if self.loss_batches and not self.every:
            # The loss is computed at each validation: with none it would be dropped without a word.
            raise UserError(
                f"validation.loss_batches={self.loss_batches} needs validation.every > 0 (the loss is computed at "
                "each validation); pass --validate-every N, or --set validation.loss_batches=0"
            )
        if self.every > 0 and not (self.prompts or self.prompts_2d or self.loss_batches):
            raise UserError(
                "validation.prompts is empty; give at least one prompt, set validation.loss_batches, or set "
                "validation.every=0"
            )


def check_validation_sampling(every: int, steps: int, resolution: int) -> None:
    """The checks fit's and DreamBooth's validation settings share (UserError naming the field)."""
    if every < 0:
        raise UserError(f"validation.every must be >= 0 (got {every}); 0 disables validation")
    if steps < 1:
        raise UserError(f"validation.steps must be >= 1 (got {steps})")
    if resolution < 0 or resolution % 8:
        # 0 = the training resolution; otherwise the VAE's factor of 8, as `mvtrain sample` requires.
        raise UserError(f"validation.resolution must be 0 or a multiple of 8 (got {resolution})")


@dataclass(frozen=True)
class FitConfig:
    """One training run (docs/design.md §2.5)."""

    pretrained: str = ""
    """A diffusers Stable Diffusion directory (SD 2.1 base for real runs; `mvtrain make-tiny-sd` for tests)."""
    shards: str = ""
    """3D shard directory (with index.json) written by `mvdata shard`."""
    shards_2d: str | None = None
    """Optional img2dataset-style 2D shards (tar path or brace pattern); mixed in at 1 - loader.p_3d."""
    out: str = "runs/mvdream"
    """Run directory: checkpoints/, metrics.csv, tensorboard/, validation/, config.toml."""
    max_steps: int = 1000
    """Optimizer steps to train (global; resume continues up to it)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step. Effective (global) batch = loader.batch_size x grad_accum_steps x
    workers objects (the paper's 1,024 objects x 4 views is reachable on any number of GPUs). All micro-batches
    of one step take the same 3D/2D branch (the branch is a function of the optimizer step)."""
    seed: int = 0
    """Seeds model noise, timesteps and caption dropout; each micro-step's randomness is a function of
    (seed, step, micro, rank), so resume replays it exactly."""
    caption_dropout: float = 0.1
    """Probability of training a sample with the empty caption, so classifier-free guidance works at
    sampling time (paper §3.3 trains with CFG). The ", 3d asset" suffix of 3D captions is loader.caption_suffix."""
    ema_decay: float = 0.9999
    """Maximum decay of the EMA of the UNet weights (diffusers' ``EMAModel``), saved in unet_ema/ in diffusers
    format (0 disables EMA)."""
    ema_warmup: bool = True
    """EMA warm-up: decay 1 - (1 + step)^-2/3 (diffusers' ``use_ema_warmup``), capped at ``ema_decay``."""
    snr_gamma: float = 0.0
    """Min-SNR-γ loss weighting (Hang et al. 2023; 5 is their value; 0 disables: plain MSE)."""
    noise_offset: float = 0.0
    """Noise offset: adds ``noise_offset`` x N(0, 1) per sample and channel to the noise (0 disables)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """bf16 autocast, or fp16 autocast with a gradient scaler (CUDA only). The trained UNet keeps fp32 master
    weights; the frozen VAE and text encoder run in the compute dtype."""
    allow_tf32: bool = True
    """TF32 matmuls on Ampere and newer GPUs."""
    gradient_checkpointing: bool = False
    """Recompute the UNet's activations in backward: less memory, more compute, the same gradients."""
    max_nonfinite_steps: int = 5
    """A step whose loss or gradients are NaN/inf is skipped and counted; this many in a row stop the run."""
    checkpoint_every: int = 500
    """Write a checkpoint every this many steps (and at the last step, and on SIGTERM)."""
    multiview_attention: bool = True
    """False trains the paper's §5.1 ablation with per-image self-attention (no view sees another); recorded in
    the UNet's config, so sampling, SDS and eval use the model as it was trained (docs/benchmarks.md)."""
    camera_embedding: bool = True
    """False trains the paper's §5.1 ablation without the camera embedding; recorded like
    ``multiview_attention``."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept on disk."""
    log_every: int = 10
    """Append a metrics.csv row and TensorBoard scalars every this many steps."""
    tensorboard: bool = True
    """Write TensorBoard event files to ``out/tensorboard`` next to metrics.csv."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the in-process loop runs (Ray workers use the device Ray Train gives them)."""
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    """The streaming loader (batch size, views, resolution, p_3d, caption suffix, ...). VAE latents are not
    cached: every object gets a new random background per step, which would need many latents per object."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimizer and LR schedule."""
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    """Validation grids."""

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise UserError(f"max_steps must be >= 1 (got {self.max_steps})")
        if self.grad_accum_steps < 1:
            raise UserError(
                f"grad_accum_steps must be >= 1 (got {self.grad_accum_steps}); 1 disables accumulation"
            )
        if not 0 <= self.caption_dropout < 1:
            raise UserError(f"caption_dropout must be in [0, 1) (got {self.caption_dropout}); e.g. 0.1")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"ema_decay must be in [0, 1) (got {self.ema_decay}); 0 disables EMA")
        if self.snr_gamma < 0 or self.noise_offset < 0:
            raise UserError("snr_gamma and noise_offset must be >= 0 (0 disables them)")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise UserError(f"mixed_precision {self.mixed_precision!r}: use no, bf16 or fp16")
        if self.mixed_precision == "fp16" and self.device == "cpu":
            raise UserError("mixed_precision fp16 needs a CUDA device; use mixed_precision=bf16 or no on CPU")
        if self.max_nonfinite_steps < 1:
            raise UserError(f"max_nonfinite_steps must be >= 1 (got {self.max_nonfinite_steps})")
        for name in ("checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1 (got {getattr(self, name)})")
