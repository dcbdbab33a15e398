"""Typed configuration of `mvdata filter` (TOML + ``--set``; the CLI flags write into these fields).

The settings split in two kinds. Those that change a score (model, weights, text, views, background, the
alpha level the gate metrics use) form the *scoring key*: a filter directory holds scores of one key only,
and resume refuses to mix keys. Everything else (aggregate, thresholds, gate limits, report) is applied to
the stored scores at selection time, so changing it re-selects without re-scoring (docs/design.md §2.2).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mvforge.config import to_dict
from mvforge.errors import UserError


@dataclass(frozen=True)
class ClipModelConfig:
    """Which open_clip model scores the renders, and how it runs."""

    name: str = "ViT-B-32-quickgelu"
    """open_clip architecture (``open_clip.list_models()``). OpenAI weights need a ``-quickgelu`` variant."""
    pretrained: str = "openai"
    """Weights: an open_clip tag (downloads; needs network), a checkpoint file (.safetensors/.pt/.bin),
    or ``local-dir:DIR`` (a folder with open_clip_config.json + weights; its config defines the model)."""
    model_config_file: Path | None = None
    """Extra open_clip model config JSON registered with ``open_clip.add_model_config`` before loading, for
    architectures not built into open_clip (its file stem is the model name)."""
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    """Weights and activations dtype; fp16/bf16 only on a GPU (CPU half precision is slow and inexact)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda when the process sees a GPU (a Ray actor given num_gpus), else cpu."""
    image_batch_size: int = 64
    """Images per encode_image call (views of several objects are packed together)."""

    def __post_init__(self) -> None:
        if self.image_batch_size < 1:
            raise UserError(f"model.image_batch_size must be >= 1 (got {self.image_batch_size})")


@dataclass(frozen=True)
class TextConfig:
    """The text each object's views are compared with."""

    template: str = "a 3D model of {}"
    """Prompt template; ``{}`` is replaced by the object's text."""
    fields: tuple[str, ...] = ("caption", "name")
    """meta.json fields tried in order; the first non-empty one is the object's text."""
    include_tags: bool = False
    """Append the object's tags (meta.json ``tags``) after the text, comma-separated."""
    max_tags: int = 5
    """At most this many tags are appended (CLIP's context is 77 tokens)."""

    def __post_init__(self) -> None:
        if "{}" not in self.template:
            raise UserError(f"text template {self.template!r} has no '{{}}' for the object's text; add one")
        if not self.fields:
            raise UserError("text.fields is empty; name at least one meta.json field, e.g. caption")


@dataclass(frozen=True)
class ViewsConfig:
    """Which views are scored and how transparent pixels are filled."""

    count: int = 8
    """Views scored per object, evenly spaced over its rendered views (8 of 32 = every 4th azimuth)."""
    background_rgb: tuple[int, int, int] = (255, 255, 255)
    """RGBA renders are composited on this colour before preprocessing (white, as CLIP saw product shots)."""

    def __post_init__(self) -> None:
        if self.count < 1:
            raise UserError(f"--score-views {self.count}: score at least 1 view per object")
        if any(not 0 <= c <= 255 for c in self.background_rgb):
            raise UserError(f"views.background_rgb {self.background_rgb}: use three values in 0..255")


@dataclass(frozen=True)
class GatesConfig:
    """Quality gates computed from the renders themselves (scored views only); metrics are always stored."""

    enabled: bool = True
    """Drop objects that fail a gate; when false the gate results are still stored and reported."""
    alpha_threshold: int = 8
    """A pixel belongs to the object when its alpha (0-255) is above this."""
    empty_coverage_max: float = 0.0005
    """empty_render: every scored view has an object-pixel fraction at or below this."""
    tiny_coverage_min: float = 0.0025
    """tiny_coverage: the median object-pixel fraction over scored views is below this. Under the ``fit``
    framing the renderer frames the unit cube's circumsphere (``cameras.OrbitSampling.frame_radius``; objects
    are about 4x larger in area under ``mvdream``, so this limit is conservative there): a normalised cube
    covers ~25% of the image, a thin rod (1 x 0.03) ~0.6%; 0.25% (~160 pixels at 256²) flags objects that normalisation shrank
    (a stray far vertex), not thin ones."""
    border_pixels_max_fraction: float = 0.02
    """A view is cut by the border when more than this fraction of its outermost pixel ring is object (2% of
    the ring is ~20 pixels at 256²: antialiasing or a stray vertex touching the edge does not count)."""
    border_views_max_fraction: float = 0.5
    """cut_by_border: more than this fraction of scored views are cut. The renderer frames the unit cube's
    circumsphere inside the image (``cameras.OrbitSampling.frame_radius``), so a normalised object reaches the
    border only when normalisation failed (a ground plane, a backdrop): that shows in most views, while one
    view grazing the edge must not drop an object. Renders made with ``cameras.framing = "mvdream"`` (the paper's
    rule: the object fills the frame, corners may be cut; recorded in cameras.json) are exempt (docs/design.md
    §3)."""
    keep_stripped_textures: bool = False
    """Keep objects whose missing texture images the renderer stripped (render ``materials.missing_textures =
    "strip"``, meta.json ``stats.stripped_textures``); dropped as ``stripped_textures`` by default."""
    magenta_max_fraction: float = 0.1
    """missing_texture_color: on average over scored views more than this fraction of the object's pixels is
    magenta, Cycles' colour for an image it cannot load (the pixel safety net,
    docs/design.md §2.2). A genuinely magenta object is
    dropped too: raise this to keep such objects."""
    dark_max_fraction: float = 0.9
    """underexposed: on average more than this fraction of the object's pixels is crushed to black (every
    channel below 10 of 255): a light that never reached it, a black emissive-only material."""
    clipped_max_fraction: float = 0.6
    """overexposed: on average more than this fraction of the object's pixels is blown to white (every channel
    at 250 or more): an emitter or a far too strong light; shading detail is gone."""
    opaque_min_fraction: float = 0.3
    """faint_alpha: on average less than this fraction of the object's pixels is at least half opaque: a
    ghost of near-empty alpha (alpha-blended or zero-alpha materials) that would train as a smudge."""
    uniform_std_max: float = 0.02
    """uniform_color: the mean over views of the composited image's RGB std (0-1 scale) is below this."""


@dataclass(frozen=True)
class SelectConfig:
    """How stored scores become a selection; changing any of these re-selects without re-scoring."""

    agg: str = "mean"
    """Per-object aggregate of the per-view cosines: mean | median | max | topk:K (mean of the K best)."""
    clip_threshold: float | None = None
    """Keep objects whose aggregate cosine is >= this. Exclusive with keep_fraction."""
    keep_fraction: float | None = None
    """Keep this fraction of the scorable, gate-passing objects, best first (DataComp style); the effective
    threshold is reported, and objects tied with it are all kept (so the threshold, given back as
    clip_threshold, reproduces the selection). Exclusive with clip_threshold."""

    def __post_init__(self) -> None:
        parse_agg(self.agg)
        if self.keep_fraction is not None and not 0.0 <= self.keep_fraction <= 1.0:
            raise UserError(f"--keep-fraction {self.keep_fraction}: use a fraction in [0, 1]")


@dataclass(frozen=True)
class RunConfig:
    """Execution: Ray Data actors or in-process."""

    engine: Literal["ray", "local"] = "ray"
    """ray: Ray Data with an actor pool (a cluster with --address); local: this process, no Ray (small runs)."""
    workers: int = 1
    """Actors in the pool, each holding one model copy."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per actor (also its torch thread count)."""
    gpus_per_worker: float = 0.0
    """GPUs per actor; > 0 puts the model on cuda."""
    objects_per_batch: int = 16
    """Objects per map_batches call."""
    objects_per_part: int = 2048
    """Scored objects grouped into one parquet part (the resume journal): ~170 files for 350K objects."""
    part_flush_s: float = 120.0
    """A part is also written when this many seconds passed since the last one: a kill loses at most that."""
    read_threads: int = 4
    """Threads decoding the views of a batch inside each actor (or this process); 1 decodes serially."""

    def __post_init__(self) -> None:
        if min(self.objects_per_batch, self.workers, self.read_threads, self.objects_per_part) < 1:
            raise UserError(
                "run.objects_per_batch, run.objects_per_part, run.workers and run.read_threads must be >= 1"
            )
        if self.part_flush_s <= 0:
            raise UserError(f"run.part_flush_s must be > 0 (got {self.part_flush_s})")


@dataclass(frozen=True)
class ReportConfig:
    """report.html contents."""

    sheet_size: int = 12
    """Objects per contact sheet (kept, dropped, near-threshold)."""
    thumb_px: int = 96
    """Thumbnail edge in pixels."""
    histogram_bins: int = 40
    """Bars of the aggregate-score histogram."""


@dataclass(frozen=True)
class FilterConfig:
    """`mvdata filter`: CLIP-score and quality-gate the objects of a render directory."""

    model: ClipModelConfig = field(default_factory=ClipModelConfig)
    """The open_clip model and weights (part of the scoring key)."""
    text: TextConfig = field(default_factory=TextConfig)
    """Each object's text (part of the scoring key)."""
    views: ViewsConfig = field(default_factory=ViewsConfig)
    """Scored views and background (part of the scoring key)."""
    gates: GatesConfig = field(default_factory=GatesConfig)
    """Quality-gate limits (applied at selection time, except alpha_threshold)."""
    select: SelectConfig = field(default_factory=SelectConfig)
    """Aggregate and threshold or keep-fraction (applied at selection time)."""
    run: RunConfig = field(default_factory=RunConfig)
    """Ray Data or in-process execution."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """report.html contents."""

    def __post_init__(self) -> None:
        name, k = parse_agg(self.select.agg)
        if name == "topk" and k > self.views.count:
            raise UserError(f"--agg topk:{k} needs at least {k} scored views; raise --score-views or lower K")


def parse_agg(agg: str) -> tuple[str, int]:
    """``mean``/``median``/``max`` -> (name, 0); ``topk:K`` -> ("topk", K)."""
    if agg in ("mean", "median", "max"):
        return agg, 0
    name, sep, k = agg.partition(":")
    if name == "topk" and sep and k.isdigit() and int(k) >= 1:
        return "topk", int(k)
    raise UserError(f"bad --agg {agg!r}: use mean, median, max or topk:K with K >= 1")


def validate(cfg: FilterConfig) -> None:
    """The one rule a config cannot check on construction: a run needs exactly one selection rule (the
    default config names none, so presets stay composable). Every other check is in ``__post_init__``."""
    s = cfg.select
    if (s.clip_threshold is None) == (s.keep_fraction is None):
        raise UserError("pass exactly one of --clip-threshold X or --keep-fraction F")


def scoring_key(cfg: FilterConfig) -> dict:
    """The settings a stored score depends on; a filter directory holds scores of exactly one key."""
    m = cfg.model
    return {
        "model": m.name,
        "pretrained": m.pretrained,
        "model_config_file": str(m.model_config_file) if m.model_config_file else None,
        "precision": m.precision,
        "text": to_dict(cfg.text),
        "views": to_dict(cfg.views),
        "alpha_threshold": cfg.gates.alpha_threshold,
    }


def scoring_key_hash(key: dict) -> str:
    """A short stable digest of ``scoring_key`` (stored in scoring.json)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
