"""Typed configuration of `mvtrain sds` (TOML + ``--set``; CLI flags write here).

Every component owns a small frozen dataclass. The defaults are the official MVDream SDS settings: the values of
bytedance/MVDream-threestudio's ``configs/mvdream-sd21-shading.yaml`` and, where the yaml sets nothing, the class
defaults of the code it runs (docs/design.md §10, whose table in §10.9 gives every setting, its source file and
mvforge's value). A field's docstring says "official" with the file the value comes from; "mvforge" marks our own
value (a CPU-friendly memory knob, or a setting the official code does not have). ``configs/sds-mvdream.toml``
spells the official preset out.
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
"""The official SDS negative prompt (mvdream-sd21-shading.yaml ``prompt_processor.negative_prompt``)."""


@dataclass(frozen=True)
class FieldConfig:
    """Hash-grid density/albedo field (threestudio ``implicit-volume`` as MVDream configures it;
    docs/design.md §10.4).

    "official" values: mvdream-sd21-shading.yaml ``system.geometry`` and the class defaults of
    ``threestudio/models/geometry/implicit_volume.py`` (MLP width and depth)."""

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
    """Width of the hidden layer of the density and albedo MLPs (official: 64, implicit_volume.py). The MLPs
    have no biases, as threestudio's ``VanillaMLP`` (``threestudio/models/networks.py``: ``bias=False``)."""
    mlp_layers: int = 1
    """Hidden layers of each MLP (official: 1, implicit_volume.py)."""
    blob_density: float = 10.0
    """Blob density bias at the centre: raw density += blob_density * (1 - |x| / blob_std) (official: 10)."""
    blob_std: float = 0.5
    """Radius scale of the blob bias (official: 0.5)."""
    normals: Literal["analytic", "finite_difference"] = "analytic"
    """Normals as -grad(density) by autograd (official ``normal_type: analytic`` in the shading yaml) or by
    central differences (mvforge: no double backward). Computed only when a step needs them (lit shading or the
    orientation loss); the no-shading yaml computes none (``normal_type: null``)."""
    finite_difference_eps: float = 1e-2
    """Step of the central differences, in field units (mvforge; used when normals = finite_difference)."""
    backend: Literal["auto", "torch", "tcnn"] = "auto"
    """Hash-grid implementation: pure PyTorch, tiny-cuda-nn, or auto (tcnn when importable on CUDA, else torch).
    The summary records which one ran."""


@dataclass(frozen=True)
class RendererConfig:
    """Volume renderer: stratified samples inside the bounding sphere, occupancy-grid skipping, per-sample
    pruning, ray chunks (threestudio ``nerf-volume-renderer`` over nerfacc; docs/design.md §10.5)."""

    samples_per_ray: int = 64
    """Stratified samples between the ray's entry and exit of the bounding sphere. Memory knob: activations
    grow linearly with it (official nerfacc sampler: step-based, up to 512 per ray; mvforge's default is 64
    for CPU; the preset raises it)."""
    ray_chunk: int = 4096
    """Rays evaluated together; memory per chunk is fixed by ray_chunk x samples_per_ray (mvforge knob). With
    the pure-PyTorch grid and analytic normals a chunk needs about 20 KB per sample at the official grid size
    (figure: docs/benchmarks.md)."""
    checkpoint_chunks: bool = True
    """With gradients and more than one chunk per render, keep only each chunk's outputs and recompute the chunk
    in the backward, so memory stays that of one chunk at any resolution (about one more field forward per
    step). False keeps every chunk's graph: faster, but memory grows with the render size (mvforge knob)."""
    occupancy_resolution: int = 32
    """Cells per side of the occupancy grid over the bounding box (official nerfacc: 32 per level)."""
    occupancy_update_every: int = 16
    """Steps between occupancy-grid updates (official nerfacc: 16)."""
    occupancy_threshold: float = 0.01
    """A cell is occupied when its decayed max density * step size exceeds min(this, the mean over the cells)
    (official: nerfacc's occ_thre 0.01)."""
    occupancy_decay: float = 0.95
    """Exponential decay of the running max density per update (official: nerfacc's ema_decay 0.95)."""
    occupancy_warmup_steps: int = 256
    """Until this step every update evaluates all cells (nerfacc's warm-up); afterwards a random quarter of the
    cells plus up to as many occupied ones (official: nerfacc 256)."""
    prune_samples: bool = True
    """Per-sample pruning before the differentiable pass, as the official renderer asks nerfacc for it
    (``nerf_volume_renderer.py``: ``grid_prune`` and ``prune_alpha_threshold`` true, alpha_thre 0.01; nerfacc
    0.5.2 ``OccGridEstimator.sampling``): the density of the occupied-cell samples is evaluated without gradients
    and a sample is dropped when its alpha is below min(prune_alpha_threshold, the grid's mean occupancy) or the
    transmittance in front of it is below ``prune_transmittance``. The field is then evaluated, with gradients
    and normals, only on the samples left, and they alone are composited (official)."""
    prune_alpha_threshold: float = 0.01
    """Alpha below which a sample is dropped, capped by the grid's mean occupancy (official: 0.01)."""
    prune_transmittance: float = 1e-4
    """Transmittance below which the samples behind are dropped (official: nerfacc's early_stop_eps 1e-4)."""


@dataclass(frozen=True)
class MaterialConfig:
    """Diffuse material with a random point light (threestudio ``diffuse-with-point-light-material``,
    ``threestudio/models/materials/diffuse_with_point_light_material.py``; docs/design.md §10.3).

    After the warm-up each step is albedo with probability 1 - diffuse_prob, else textureless with probability
    textureless_prob, else lit albedo: 25 % / 37.5 % / 37.5 % at the official values."""

    ambient_only_steps: int = 5000
    """Steps of albedo-only shading before lighting starts (official: 5000, mvdream-sd21-shading.yaml)."""
    diffuse_prob: float = 0.75
    """After the warm-up, probability of a lit step (textureless or lit albedo) rather than an albedo one
    (official: the class default 0.75, which the yaml keeps). 0 never lights (the no-shading preset)."""
    textureless_prob: float = 0.5
    """Of the lit steps, the share shading a white albedo (official: 0.5, mvdream-sd21-shading.yaml)."""
    ambient_light: float = 1.0
    """Ambient light intensity when soft shading is off (official: 1.0 in mvdream-sd21-shading.yaml; the class
    default is 0.1). With soft shading on, training ignores it: 1.0 / 0.0 make a lit evaluation render equal the
    albedo, as the official evaluation renders are."""
    diffuse_light: float = 0.0
    """Diffuse light intensity when soft shading is off (official: 0.0 in the yaml; the class default is 0.9)."""
    soft_shading: bool = True
    """Per lit step draw diffuse ~ U[0, 1] and ambient = 1 - diffuse (official: true, mvdream-sd21-shading.yaml)."""


@dataclass(frozen=True)
class BackgroundConfig:
    """A small MLP of the view direction (threestudio ``neural-environment-map-background``)."""

    hidden: int = 32
    """Hidden width of the MLP (mvforge; official: 2 hidden layers of 16 without biases, on a degree-3
    spherical-harmonics encoding; neural_environment_map_background.py)."""
    n_frequencies: int = 4
    """Sinusoidal frequencies of the direction encoding (mvforge)."""
    random_color_prob: float = 0.5
    """Probability that a step replaces the background by one uniform random colour (official: 0.5)."""
    color: tuple[float, float, float] | None = None
    """One fixed RGB in [0, 1] for every step, snapshot and preview instead of the MLP and the random colours
    (mvforge, not official): for a prior trained on one known background, such as the demo world's grey
    (docs/demo.md), where any learned background colour is a place to paint the object instead of the field.
    None (default): the MLP with ``random_color_prob``."""

    def __post_init__(self):
        if self.color is not None and (len(self.color) != 3 or not all(0.0 <= c <= 1.0 for c in self.color)):
            raise UserError(
                f"background.color {list(self.color)}: give three values in [0, 1], e.g. [0.5, 0.5, 0.5]"
            )


@dataclass(frozen=True)
class CameraConfig:
    """Random multi-view cameras (``threestudio/data/random_multiview.py`` with the ranges of
    mvdream-sd21-shading.yaml ``data`` and the defaults of ``threestudio/data/uncond.py``; docs/design.md §3,
    §10.2)."""

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
    """Elevation bounds: per batch a coin picks uniform in degrees or the sphere branch (official: [0, 30])."""
    elevation_sampling: Literal["official", "sphere_uniform"] = "official"
    """The sphere branch: "official" reproduces random_multiview.py's asin(2 * U[(lo + 90) / 180, (hi + 90) / 180]
    - 1), which reaches only 19.47 deg for [0, 30]; "sphere_uniform" (mvforge) is area-uniform over the whole
    range, asin(U[sin lo, sin hi])."""
    fov_range_deg: tuple[float, float] = (15.0, 60.0)
    """Vertical = horizontal fov bounds (official)."""
    distance_range: tuple[float, float] = (0.8, 1.0)
    """Camera distance bounds as multiples of 1/tan(fov/2) (official ``relative_radius``)."""
    light_distance_range: tuple[float, float] = (0.8, 1.5)
    """Point-light distance bounds, one distance per group (official: uncond.py default)."""
    light_position_perturb: float = 1.0
    """Std of the Gaussian (one per group) added to each view's camera position before normalising it to that
    view's light direction (``light_sample_strategy: dreamfusion``; official: uncond.py default 1.0)."""


@dataclass(frozen=True)
class GuidanceConfig:
    """Multi-view score distillation with x0 reconstruction (mvdream-sd21-shading.yaml ``guidance`` and
    ``threestudio/models/guidance/multiview_diffusion_guidance.py``; docs/design.md §10.6)."""

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
    x0_ddim_steps: int = 0
    """0 (official): x0 is the one-step prediction at t. N > 0: x0 is the end of a DDIM run (eta 0, CFG at every
    step, no std rescale) down the N-step grid from the largest grid timestep <= t, which replaces t (mvforge,
    not official; docs/sds.md). For a weak prior whose one-step x0 at large t is a blur of everything it
    learned (the demo world, docs/demo.md); costs up to N UNet calls a step."""
    half_precision: Literal["auto", "fp16", "fp32"] = "auto"
    """Frozen weights in fp16 on CUDA, fp32 on CPU (mvforge). The official guidance declares
    ``half_precision_weights: true`` but never reads it: its model keeps fp32 weights and runs under
    Lightning's 16-bit autocast (``precision: 16-mixed``), so its matrix products are fp16 as well."""

    def __post_init__(self):
        _at_least("guidance.x0_ddim_steps", self.x0_ddim_steps, 0)


@dataclass(frozen=True)
class LossConfig:
    """Loss weights; ramps are linear from the first value to the second over ``ramp_steps`` (``system.loss`` of
    mvdream-sd21-shading.yaml; docs/design.md §10.7)."""

    lambda_sds: float = 1.0
    """Weight of the SDS (x0 reconstruction) loss (official: 1)."""
    lambda_orient: tuple[float, float] = (10.0, 1000.0)
    """Orientation loss weight, ramped (official shading yaml: [0, 10., 1000., 5000], 10 -> 1000 over 5000 steps;
    the no-shading yaml: 0). At 0 the loop computes no normals for it."""
    orient_ramp_steps: int = 5000
    """Steps of the orientation ramp (official: 5000)."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with one learning rate per parameter group (mvdream-sd21-shading.yaml ``system.optimizer``, built by
    ``threestudio/systems/utils.py`` ``parse_optimizer`` as ``torch.optim.AdamW(params, **args)``;
    docs/design.md §10.7)."""

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
    weight_decay: float = 0.01
    """AdamW weight decay on every group (official: the yaml sets none, so torch's AdamW default 0.01 applies)."""


@dataclass(frozen=True)
class ExportConfig:
    """Mesh and turntable written at the end of a run (docs/design.md §10.8).

    The mesh follows threestudio's README export recipe for finer meshes (``isosurface_method=mc-cpu``,
    ``isosurface_resolution=256``: marching cubes on the CPU), not its class default (marching tetrahedra at
    128, ``threestudio/models/geometry/base.py``); the outlier removal is that class's. The turntable and the
    snapshots use the official evaluation camera (mvdream-sd21-shading.yaml ``eval_camera_distance`` 3.0,
    ``eval_fovy_deg`` 40; uncond.py ``eval_elevation_deg`` 15)."""

    mc_resolution: int = 256
    """Marching-cubes grid cells per side over the bounding box (threestudio README's recipe: 256)."""
    iso_level: float = 25.0
    """Density level of the surface (official: implicit_volume.py ``isosurface_threshold`` 25)."""
    outlier_faces_fraction: float = 0.01
    """Drop connected components with fewer faces than this fraction of the largest component's (official:
    geometry/base.py ``isosurface_remove_outliers`` true, ``isosurface_outlier_n_faces_threshold`` 0.01 in
    ``Mesh.remove_outlier``); 0 keeps every component."""
    keep_largest_component: bool = False
    """Keep only the connected component with the most faces (mvforge; stricter than the official removal)."""
    turntable_frames: int = 60
    """Frames of the turntable (one full azimuth turn; the official test video has 120, uncond.py)."""
    turntable_resolution: int = 256
    """Side of the turntable frames in pixels (the official test renders are 512, uncond.py)."""
    turntable_fps: int = 20
    """Frames per second of the GIF and MP4."""
    turntable_elevation_deg: float = 15.0
    """Camera elevation of the turntable and snapshots (official: uncond.py ``eval_elevation_deg`` 15)."""
    turntable_fov_deg: float = 40.0
    """Fov of the turntable and snapshot camera (official: ``eval_fovy_deg`` 40)."""
    turntable_distance: float = 3.0
    """Distance of the turntable and snapshot camera from the origin (official: ``eval_camera_distance`` 3.0)."""
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
        if not (math.isfinite(self.turntable_distance) and self.turntable_distance > 0):
            raise UserError(
                f"export_mesh.turntable_distance {self.turntable_distance}: use a positive distance"
            )
        if not 0 <= self.outlier_faces_fraction <= 1:
            raise UserError(
                f"export_mesh.outlier_faces_fraction {self.outlier_faces_fraction}: use a value in [0, 1]"
            )


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"{name} {value}: use a value >= {low} (--set {name}=...)")


@dataclass(frozen=True)
class SDSConfig:
    """One text-to-3D run (MVDream §3.3; docs/design.md §2.6); outputs go to the run directory ``out``."""

    prompt: str = ""
    """The text prompt."""
    model: str = ""
    """The frozen multi-view model: an `mvtrain fit` run or checkpoint dir, or a converted pipeline dir."""
    out: str = "sds"
    """The run directory: the run writes into it (an existing run is resumed; docs/cli.md, "output"). With
    `mvtrain sds --prompts` the batch's directory, holding one run directory per prompt, out/<prompt-slug>/."""
    seed: int = 0
    """Seeds the field's initialisation and every per-step draw (cameras, t, noise, backgrounds, shading, ray
    jitter, occupancy updates): each is a function of (seed, step, stream), so resume replays it exactly."""
    max_steps: int = 10000
    """Optimisation steps (official: 10000, mvdream-sd21-shading.yaml ``trainer.max_steps``)."""
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
