"""Typed configuration of `mvtrain sds` (TOML + ``--set``; CLI flags write here). Issue 14, design §10.

Every component owns a small frozen dataclass. The defaults are the official MVDream SDS settings
(MVDream-threestudio ``configs/mvdream-sd21-shading.yaml`` and ``multiview_diffusion_guidance.py``, design §10)
unless a field's docstring says "mvforge" — then the value is ours (a CPU-friendly memory knob, or a setting the
official code does not have). ``configs/sds-mvdream.toml`` spells the official preset out.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from mvforge.errors import UserError

NEGATIVE_PROMPT = (
    "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and unclear, cropped, "
    "lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly drawn face, deformed, dehydrated, "
    "bad proportions"
)
"""The official SDS negative prompt (MVDream-threestudio shading config, design §10)."""


@dataclass(frozen=True)
class FieldConfig:
    """Hash-grid density/albedo field (threestudio ``implicit-volume`` as MVDream configures it)."""

    radius: float = 1.0
    """Half side of the bounding box [-radius, radius]^3 the field lives in (official: 1.0)."""
    n_levels: int = 16
    """Hash-grid levels (official: 16)."""
    n_features_per_level: int = 2
    """Features per level (official: 2)."""
    log2_hashmap_size: int = 19
    """log2 of the hash-table entries per level (official: 19)."""
    base_resolution: int = 16
    """Grid resolution of the coarsest level (official: 16)."""
    max_resolution: int = 4096
    """Grid resolution of the finest level (official: 4096; per-level growth is geometric)."""
    mlp_hidden: int = 64
    """Width of the hidden layer of the density and albedo MLPs (official: 64)."""
    mlp_layers: int = 1
    """Hidden layers of each MLP (official: 1)."""
    blob_density: float = 10.0
    """Blob density bias at the centre: raw density += blob_density * (1 - |x| / blob_std) (official: 10)."""
    blob_std: float = 0.5
    """Radius scale of the blob bias (official: 0.5)."""
    normals: Literal["analytic", "finite_difference"] = "analytic"
    """Normals as -grad(density) by autograd (official) or by central differences (no double backward)."""
    finite_difference_eps: float = 1e-2
    """Step of the central differences, in field units (mvforge; used when normals = finite_difference)."""
    backend: Literal["auto", "torch", "tcnn"] = "auto"
    """Hash-grid implementation: pure PyTorch, tiny-cuda-nn, or auto (tcnn when importable on CUDA, else torch).
    The summary records which one ran."""


@dataclass(frozen=True)
class RendererConfig:
    """Volume renderer: stratified samples inside the bounding sphere, occupancy-grid skipping, ray chunks."""

    samples_per_ray: int = 64
    """Stratified samples between the ray's entry and exit of the bounding sphere. Memory knob: activations
    grow linearly with it (official nerfacc sampler: step-based, up to 512 per ray; mvforge's default is 64
    for CPU; the preset raises it)."""
    ray_chunk: int = 4096
    """Rays evaluated together; memory per chunk is fixed by ray_chunk x samples_per_ray (mvforge knob). With
    the pure-PyTorch grid and analytic normals a chunk needs about 20 KB per sample at the official grid size
    (4096 x 64 samples: ~5 GB; measured on CPU, issue 14)."""
    checkpoint_chunks: bool = True
    """With gradients and more than one chunk per render, keep only each chunk's outputs and recompute the chunk
    in the backward, so memory stays that of one chunk at any resolution (about one more field forward per
    step). False keeps every chunk's graph: faster, but memory grows with the render size (mvforge knob)."""
    occupancy_resolution: int = 32
    """Cells per side of the occupancy grid over the bounding box (official nerfacc: 32 per level)."""
    occupancy_update_every: int = 16
    """Steps between occupancy-grid updates (official nerfacc: 16)."""
    occupancy_threshold: float = 0.01
    """A cell is occupied when its decayed max density * step size gives alpha above this (official 0.01)."""
    occupancy_decay: float = 0.95
    """Exponential decay of the running max density per update (nerfacc's ema_decay 0.95)."""
    occupancy_warmup_steps: int = 256
    """Until this step every update evaluates all cells (nerfacc's warm-up); afterwards a random quarter."""


@dataclass(frozen=True)
class MaterialConfig:
    """Diffuse material with a random point light (threestudio ``diffuse-with-point-light-material``)."""

    ambient_only_steps: int = 5000
    """Steps of albedo-only shading before lighting starts (official: 5000)."""
    textureless_prob: float = 0.5
    """After the warm-up, probability of shading a white albedo (official: 0.5)."""
    albedo_prob: float = 0.0
    """After the warm-up, probability of an unlit (albedo) render instead of a lit one (mvforge; the no-shading
    preset sets 1)."""
    ambient_light: float = 0.1
    """Ambient light intensity when soft shading is off (official: 0.1)."""
    diffuse_light: float = 0.9
    """Diffuse light intensity when soft shading is off (official: 0.9)."""
    soft_shading: bool = True
    """Per step draw diffuse ~ U[0, 1] and ambient = 1 - diffuse (official: true)."""


@dataclass(frozen=True)
class BackgroundConfig:
    """A small MLP of the view direction (threestudio ``neural-environment-map-background``)."""

    hidden: int = 32
    """Hidden width of the MLP (mvforge; official: 16 with a spherical-harmonics encoding)."""
    n_frequencies: int = 4
    """Sinusoidal frequencies of the direction encoding (mvforge)."""
    random_color_prob: float = 0.5
    """Probability that a step replaces the background by one uniform random colour (official: 0.5)."""


@dataclass(frozen=True)
class CameraConfig:
    """Random multi-view cameras (MVDream-threestudio ``random_multiview.py``, design §3 and §10)."""

    n_view: int = 4
    """Views per group: one elevation, fov, distance and light; azimuths 360/n_view apart (official: 4)."""
    groups_low_res: int = 2
    """Groups (objects) per step before ``resolution_milestone`` (official: batch 8 = 2 groups of 4)."""
    groups_high_res: int = 1
    """Groups per step from ``resolution_milestone`` on (official: batch 4)."""
    resolution_low: int = 64
    """Render side in pixels before the milestone (official: 64)."""
    resolution_high: int = 256
    """Render side in pixels from the milestone on (official: 256)."""
    resolution_milestone: int = 5000
    """Step at which the render resolution switches (official: 5000)."""
    elevation_range_deg: tuple[float, float] = (0.0, 30.0)
    """Elevation bounds, half the groups uniform in degrees, half uniform on the sphere (official)."""
    fov_range_deg: tuple[float, float] = (15.0, 60.0)
    """Vertical = horizontal fov bounds (official)."""
    distance_range: tuple[float, float] = (0.8, 1.0)
    """Camera distance bounds as multiples of 1/tan(fov/2) (official ``relative_radius``)."""
    light_distance_range: tuple[float, float] = (0.8, 1.5)
    """Point-light distance bounds (official)."""
    light_position_perturb: float = 1.0
    """Std of the Gaussian added to the camera position before normalising it to the light direction
    (DreamFusion's light sampling, official)."""


@dataclass(frozen=True)
class GuidanceConfig:
    """Multi-view score distillation with x0 reconstruction (``multiview_diffusion_guidance.py``)."""

    guidance_scale: float = 50.0
    """Classifier-free guidance scale (official: 50)."""
    negative_prompt: str = NEGATIVE_PROMPT
    """Text of the unconditional branch (official negative prompt)."""
    prompt_suffix: str = ""
    """Appended to the prompt. The official SDS code adds none (MVDream's sampling script adds ", 3d asset");
    mvforge follows the SDS code and adds none."""
    recon_std_rescale: float = 0.5
    """Mix of the multi-view x0 std rescale: x0 = f * rescaled + (1 - f) * x0_cfg (official: 0.5; 0 disables)."""
    min_step_percent: tuple[float, float] = (0.98, 0.02)
    """Lower bound of t / T, annealed linearly from the first to the second value (official)."""
    max_step_percent: tuple[float, float] = (0.98, 0.50)
    """Upper bound of t / T, annealed likewise (official)."""
    anneal_steps: int = 8000
    """Steps over which both bounds anneal (official: 8000)."""
    image_size: int = 0
    """Side the renders are resized to before the VAE; 0 = the model's native resolution (256 for MVDream)."""
    half_precision: Literal["auto", "fp16", "fp32"] = "auto"
    """Frozen weights in fp16 on CUDA (official), fp32 on CPU."""


@dataclass(frozen=True)
class LossConfig:
    """Loss weights; ramps are linear from the first value to the second over ``ramp_steps``."""

    lambda_sds: float = 1.0
    """Weight of the SDS (x0 reconstruction) loss (official: 1)."""
    lambda_orient: tuple[float, float] = (10.0, 1000.0)
    """Orientation loss weight, ramped (official: 10 -> 1000 over 5000 steps)."""
    orient_ramp_steps: int = 5000
    """Steps of the orientation ramp (official: 5000)."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with one learning rate per parameter group (official)."""

    lr_grid: float = 1e-2
    """Hash-grid encoding (official: 0.01)."""
    lr_mlp: float = 1e-3
    """Density and albedo MLPs (official: 0.001)."""
    lr_background: float = 1e-3
    """Background MLP (official: 0.001)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas (official)."""
    eps: float = 1e-15
    """AdamW epsilon (official)."""
    weight_decay: float = 0.0
    """AdamW weight decay (official: 0)."""


@dataclass(frozen=True)
class ExportConfig:
    """Mesh and turntable written at the end of a run."""

    mc_resolution: int = 256
    """Marching-cubes grid cells per side over the bounding box (official isosurface: 256)."""
    iso_level: float = 25.0
    """Density level of the surface (threestudio's isosurface threshold for density fields: 25)."""
    keep_largest_component: bool = True
    """Drop floaters: keep only the connected component with the most faces."""
    turntable_frames: int = 60
    """Frames of the turntable (one full azimuth turn)."""
    turntable_resolution: int = 256
    """Side of the turntable frames in pixels."""
    turntable_fps: int = 20
    """Frames per second of the GIF and MP4."""
    turntable_elevation_deg: float = 15.0
    """Camera elevation of the turntable (MVDream's evaluation elevation)."""
    turntable_fov_deg: float = 40.0
    """Fov of the turntable camera; distance = 0.9 / tan(fov / 2), inside the training range."""
    mp4: bool = True
    """Also write turntable.mp4 (needs the pyav package)."""
    uv_texture: bool = False
    """Bake the albedo into a UV texture (xatlas atlas) instead of vertex colours: mesh.glb embeds it, mesh.obj
    gets mesh.mtl and the PNG (mvforge; needs the xatlas package)."""
    texture_resolution: int = 1024
    """Side of the baked texture in pixels (used when uv_texture is on)."""

    def __post_init__(self):
        # Checked here so a bad value fails before the run, not as a traceback after hours of optimisation.
        _at_least("export_mesh.mc_resolution", self.mc_resolution, 8)
        _at_least("export_mesh.turntable_frames", self.turntable_frames, 1)
        _at_least("export_mesh.turntable_resolution", self.turntable_resolution, 8)
        _at_least("export_mesh.turntable_fps", self.turntable_fps, 1)
        _at_least("export_mesh.texture_resolution", self.texture_resolution, 16)
        if not (math.isfinite(self.iso_level) and self.iso_level > 0):
            # Densities are >= 0 (activated), so a level <= 0 has no surface.
            raise UserError(f"export_mesh.iso_level {self.iso_level}: use a positive density such as 25")
        if not 0 < self.turntable_fov_deg < 180:
            raise UserError(
                f"export_mesh.turntable_fov_deg {self.turntable_fov_deg}: use a value in (0, 180)"
            )


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"{name} {value}: use a value >= {low} (--set {name}=...)")


@dataclass(frozen=True)
class SDSConfig:
    """One text-to-3D run (issue 14, design §2.6); outputs go to ``out``/<prompt-slug>/."""

    prompt: str = ""
    """The text prompt."""
    model: str = ""
    """The frozen multi-view model: an `mvtrain fit` run or checkpoint dir, or a converted pipeline dir."""
    out: str = "sds"
    """Parent directory; the run writes to out/<prompt-slug>/ (an existing run is resumed)."""
    seed: int = 0
    """Seeds the field's initialisation and every per-step draw (cameras, t, noise, backgrounds, shading, ray
    jitter, occupancy updates): each is a function of (seed, step, stream), so resume replays it exactly."""
    max_steps: int = 10000
    """Optimisation steps (official: 10000)."""
    checkpoint_every: int = 1000
    """Checkpoint every this many steps, plus one just before the resolution switch and one at the end."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept (the pre-switch one is always kept)."""
    snapshot_every: int = 500
    """Write snapshots/step-XXXXXX.png (4 views) every this many steps (0 disables)."""
    log_every: int = 50
    """Append a metrics.csv row and TensorBoard scalars every this many steps."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the field and the frozen model run."""
    export: bool = True
    """Write mesh.glb, mesh.obj and the turntable at the end."""
    deterministic: bool = True
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` for the run (mvforge). Without it the hash
    grid's backward (an index accumulation) sums in a thread-dependent order, and Adam with eps 1e-15 turns
    that float noise into lr-sized steps of untouched table entries: resume would not repeat a run. Costs
    speed on CUDA; benchmarks set it false."""
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    renderer: RendererConfig = dataclasses.field(default_factory=RendererConfig)
    material: MaterialConfig = dataclasses.field(default_factory=MaterialConfig)
    background: BackgroundConfig = dataclasses.field(default_factory=BackgroundConfig)
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    guidance: GuidanceConfig = dataclasses.field(default_factory=GuidanceConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    export_mesh: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def __post_init__(self):
        _at_least("max_steps", self.max_steps, 1)
        _at_least("log_every", self.log_every, 1)
        _at_least("keep_checkpoints", self.keep_checkpoints, 1)
        _at_least("checkpoint_every", self.checkpoint_every, 1)
        _at_least("snapshot_every", self.snapshot_every, 0)
