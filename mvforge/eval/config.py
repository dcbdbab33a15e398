"""Typed configuration of `mvtrain eval` (TOML + ``--set``; CLI flags write here).

Generation settings are the shared ``SampleConfig`` (the authors' inference by default, docs/design.md §10.10)
under ``sample``; the rest says how images are prepared and scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mvforge.errors import UserError
from mvforge.models.config import SampleConfig


@dataclass(frozen=True)
class EvalConfig:
    """Generate V views per prompt, then score them against reference renders (MVDream Table 1, §5.1)."""

    sample: SampleConfig = field(default_factory=SampleConfig)
    """Generation (scheduler, steps, CFG, views, seed, resolution...). Prompt i uses seed ``sample.seed + i``."""
    max_prompts: int = 0
    """Evaluate the first N prompts only (0: all)."""
    background_rgb: tuple[int, int, int] = (255, 255, 255)
    """Background that transparent pixels (the RGBA renders) are composited on, for both sets."""
    image_size: int = 256
    """Both sets are resized (PIL bicubic) to this square side before any extractor sees them."""
    features: Literal["inception", "tiny"] = "inception"
    """FID/KID/IS features: torchvision Inception v3 from ``inception_weights``, or the tiny random projection
    (tests and demo only)."""
    inception_weights: Path | None = None
    """Local inception_v3 ImageNet weights file (torchvision's inception_v3_google-0cc3c7bd.pth)."""
    clip_model: str = "ViT-H-14"
    """open_clip model name (ignored with ``clip_pretrained = "local-dir:DIR"``)."""
    clip_pretrained: str = ""
    """Local open_clip checkpoint file or ``local-dir:DIR`` (the same conventions as `mvdata filter`)."""
    clip_model_config: Path | None = None
    """Optional open_clip JSON model config registered before loading (a custom model name)."""
    reference_split: str = "val"
    """With a shard directory as reference: the split to read (the held-out one); all shards if it has none."""
    kid_subset_size: int = 1000
    """KID subset size (lowered to the smaller set's size: then one exact subset, unbiased at any N)."""
    kid_subsets: int = 100
    """KID subsets when both sets are larger than the subset size."""
    is_splits: int = 10
    """Inception Score splits (lowered to the number of images)."""
    grid_prompts: int = 8
    """Prompts shown in grids/generated.png (and reference objects in grids/reference.png)."""

    def __post_init__(self) -> None:
        if self.max_prompts < 0:
            raise UserError(f"max_prompts {self.max_prompts}: pass 0 (all) or a positive count")
        if self.inception_weights is not None and self.features == "tiny":
            # docs/cli.md, "errors": a setting that would do nothing is refused, not ignored.
            raise UserError("inception_weights is read by features = inception only; leave it out with tiny")
        if any(not 0 <= c <= 255 for c in self.background_rgb) or len(self.background_rgb) != 3:
            raise UserError(f"background_rgb {self.background_rgb}: use three values in 0..255")
        if self.image_size < 8:
            raise UserError(f"image_size {self.image_size}: pass a side of at least 8 px (e.g. 256)")
        if self.kid_subset_size < 2 or self.kid_subsets < 1 or self.is_splits < 1:
            raise UserError("kid_subset_size >= 2, kid_subsets >= 1 and is_splits >= 1 are needed")
