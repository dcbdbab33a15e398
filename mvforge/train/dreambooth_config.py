"""Typed configuration of `mvtrain dreambooth` (MVDreamBooth, paper §3.4 / §5.3; docs/dreambooth.md).

Every field validates itself in ``__post_init__`` (a ``UserError`` naming the field). The preset
``configs/dreambooth-mvdream.toml`` carries the values reported secondhand for the paper's run (docs/design.md
§10.11: ~600 steps, lr 2e-6, weight decay 0.01, batch 4, λ = 1), marked as such there.

The fields the shared step pieces of train/loop.py read (``caption_dropout``, ``noise_offset``, ``snr_gamma``,
``mixed_precision``, ``allow_tf32``, ``gradient_checkpointing``, ``optim``, ``max_steps``, ``keep_checkpoints``)
have the names and meaning of ``FitConfig``'s, so ``micro_batch_inputs`` / ``micro_batch_loss`` /
``make_optimizer`` / ``optimizer_step`` / ``save_checkpoint`` run unchanged on a DreamBooth config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mvforge.errors import UserError
from mvforge.train.config import OptimConfig, check_validation_sampling

BACKGROUNDS = ("keep", "grey")
"""``keep``: the photo as it is; ``grey``: the subject (alpha channel or mask) composited on grey 0.5, the
background of MVDream's training renders (docs/design.md §2.4: objects on grey)."""


def _dreambooth_optim() -> OptimConfig:
    # Reported secondhand (docs/design.md §10.11): lr 2e-6, weight decay 0.01, constant LR.
    return OptimConfig(lr=2e-6, lr_scheduler="constant", weight_decay=0.01)


@dataclass(frozen=True)
class DreamBoothValidationConfig:
    """Validation grids every ``every`` steps: V views of the subject prompt and of the class prompt (the class
    prompt shows language drift: after fine-tuning, "a dog" should still be any dog, not the subject)."""

    every: int = 0
    """Sample every this many steps and at the last step (0 disables)."""
    steps: int = 20
    """DDIM steps per sample."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale."""
    num_views: int = 4
    """Views per grid (the multi-view ability the fine-tune must keep)."""
    resolution: int = 0
    """Image side in px (0: the training resolution)."""
    seed: int = 23
    """Initial-noise seed, the same at every validation (comparable grids)."""

    def __post_init__(self) -> None:
        check_validation_sampling(self.every, self.steps, self.resolution)
        if self.num_views < 1:
            raise UserError(f"validation.num_views must be >= 1 (got {self.num_views}); the model's is 4")


@dataclass(frozen=True)
class DreamBoothConfig:
    """One MVDreamBooth fine-tune (docs/dreambooth.md). Trained: the UNet; frozen: the VAE, the text encoder
    and (by default) the camera MLP. Training runs in the 2D mode (per-image attention, no camera, paper
    §3.4)."""

    pretrained: str = ""
    """The multi-view model to fine-tune (CLI ``--model``): a pipeline directory, an ``mvtrain fit``
    checkpoint or run directory. A checkpoint of this run records the directory of the frozen parts here."""
    images: str = ""
    """Directory of subject photos (jpg/png/webp, any size; EXIF orientation honoured)."""
    prompt: str = ""
    """The subject prompt with its identifier, e.g. "a photo of xjq dog" (see the CLI help on "sks")."""
    out: str = "runs/dreambooth"
    """Run directory: checkpoints/, pipeline/, metrics.csv, tensorboard/, validation/, config.toml; an existing
    one resumes."""
    masks: str | None = None
    """Optional directory of masks named like the photos (``<stem>.png``, white = subject) for background grey."""
    background: Literal["keep", "grey"] = "grey"
    """``grey``: the subject on grey 0.5 (needs an alpha channel or a mask; a photo with neither is kept as is);
    ``keep``: photos unchanged."""
    resolution: int = 256
    """Training image side in px (photos are centre-cropped and resized to it); the model's is 256."""
    batch_size: int = 4
    """Subject photos per step (drawn with replacement when there are fewer)."""
    max_steps: int = 600
    """Optimizer steps (resume continues up to it)."""
    preservation_lambda: float = 1.0
    """λ of the parameter-preservation loss λ·‖θ − θ0‖₁ / N_θ (paper §3.4). At λ = 1 with SD 2.1's
    N_θ ≈ 8.7e8 its per-parameter gradient is ~1e-9, which Adam all but ignores (docs/dreambooth.md)."""
    train_camera: bool = False
    """Also train the camera MLP. In the 2D mode its loss gradient is zero, so it would only feel AdamW's weight
    decay and the preservation term; off (the default) keeps it bit-identical to the base model's."""
    trained: Literal["all", "cross_attention_kv"] = "all"
    """Which UNet weights the fine-tune moves: ``all`` (MVDreamBooth, paper §3.4) or ``cross_attention_kv``, the
    text cross-attention's key and value projections only (Custom Diffusion, Kumari et al. 2023)."""
    class_prompt: str = ""
    """The class prompt without the identifier ("a photo of a dog"): validation grids, and prior preservation."""
    class_images: str | None = None
    """Prior preservation (diffusers' DreamBooth, off by default): a directory of class images trained with
    ``class_prompt`` at weight ``prior_loss_weight`` each step. An image with a ``<stem>.txt`` beside it is
    trained with that caption instead (a rehearsal of many captions, e.g. a trained world's own renders). Class
    images with an alpha channel are composited on ``background`` like the photos."""
    prior_loss_weight: float = 1.0
    """Weight of the class images' loss."""
    seed: int = 0
    """Seeds photo draws, timesteps, noise and VAE samples of every step (a function of seed and step)."""
    caption_dropout: float = 0.0
    """Probability of the empty caption per image (0: DreamBooth trains the subject prompt only)."""
    snr_gamma: float = 0.0
    """Min-SNR-γ weighting (0: plain MSE), as in ``FitConfig``."""
    noise_offset: float = 0.0
    """Noise offset (0 disables), as in ``FitConfig``."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """bf16 / fp16 autocast (fp16: CUDA, with a gradient scaler); fp32 master weights."""
    allow_tf32: bool = True
    """TF32 matmuls on Ampere and newer GPUs."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (less memory)."""
    checkpoint_every: int = 100
    """Checkpoint every this many steps (and at the last step)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept."""
    log_every: int = 10
    """metrics.csv row every this many steps."""
    save_pipeline: bool = True
    """At the end also write ``out/pipeline/`` (a full pipeline directory, ~5 GB for SD 2.1); off: only the
    UNet checkpoint, which names its base for the frozen parts (saves the VAE and text encoder per subject)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where it runs."""
    optim: OptimConfig = field(default_factory=_dreambooth_optim)
    """AdamW and LR schedule (``train/config.py``); the camera group is empty unless ``train_camera``."""
    validation: DreamBoothValidationConfig = field(default_factory=DreamBoothValidationConfig)
    """Validation grids."""

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise UserError(f"background {self.background!r}: use one of {', '.join(BACKGROUNDS)}")
        if self.resolution < 8 or self.resolution % 8:
            raise UserError(f"resolution must be a multiple of 8 (got {self.resolution}); the model's is 256")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.max_steps < 1:
            raise UserError(f"max_steps must be >= 1 (got {self.max_steps})")
        if self.preservation_lambda < 0:
            raise UserError(
                f"preservation_lambda must be >= 0 (got {self.preservation_lambda}); 0 disables it"
            )
        if self.class_images and not self.class_prompt:
            raise UserError("class_images needs class_prompt; pass --class-prompt 'a photo of a dog'")
        if self.prior_loss_weight < 0:
            raise UserError(f"prior_loss_weight must be >= 0 (got {self.prior_loss_weight})")
        if not 0 <= self.caption_dropout < 1:
            raise UserError(f"caption_dropout must be in [0, 1) (got {self.caption_dropout})")
        if self.snr_gamma < 0 or self.noise_offset < 0:
            raise UserError("snr_gamma and noise_offset must be >= 0 (0 disables them)")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise UserError(f"mixed_precision {self.mixed_precision!r}: use no, bf16 or fp16")
        if self.mixed_precision == "fp16" and self.device == "cpu":
            raise UserError("mixed_precision fp16 needs a CUDA device; use mixed_precision=bf16 or no on CPU")
        for name in ("checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1 (got {getattr(self, name)})")
