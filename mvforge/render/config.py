"""Typed configuration of `mvdata render` (TOML + ``--set``; the CLI flags write into these fields)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mvforge.cameras import OrbitSampling
from mvforge.errors import UserError


@dataclass(frozen=True)
class CyclesConfig:
    """Cycles settings, all explicit so a render never depends on Blender's defaults (docs/design.md §6)."""

    samples: int = 16
    """Path-tracing samples per pixel. 16 with the denoiser below and a 512 world map gives lower noise than 32
    without them, in less time (figures: docs/benchmarks.md, "Figures moved from docstrings"). Renders made
    before these settings existed used 32 without denoising and an AUTOMATIC map (``render.driver`` keeps
    those values for their resume)."""
    adaptive_threshold: float = 0.01
    """Adaptive-sampling noise threshold; 0 disables adaptive sampling. A pixel stops sampling once its estimated
    error is under the threshold; Cycles checks after every 16th sample past ``adaptive_min_samples``."""
    adaptive_min_samples: int = 8
    """Samples before adaptive sampling may stop a pixel; 0 = Cycles' automatic rule, ceil(16 / threshold^0.3):
    64 at the 0.01 threshold, so the first check comes after 80 samples and adaptive sampling never stops a
    pixel of a render of 80 samples or fewer. Any value 1-14 (Cycles raises 1-3 to 4) lets a pixel stop after
    16 samples, and later at any multiple of 16 (``adaptive_first_stop``). No effect at ``samples`` <= 16 (the
    default): the same pixels, tested. Speed and noise figures: docs/benchmarks.md."""
    denoise: bool = True
    """Run Cycles' OpenImageDenoise pass (guided by albedo and normal) after sampling; meta.json
    ``cycles.denoiser`` records which denoiser ran."""
    denoise_prefilter: Literal["ACCURATE", "FAST", "NONE"] = "FAST"
    """How OpenImageDenoise treats its albedo and normal guides (Cycles' "Denoising Prefilter"): ACCURATE
    denoises them first (two more filter runs), FAST assumes them clean. FAST + BALANCED is the default:
    ACCURATE + HIGH costs several times the time per view for under 1 dB (docs/benchmarks.md)."""
    denoise_quality: Literal["HIGH", "BALANCED", "FAST"] = "BALANCED"
    """OpenImageDenoise's filter quality (Cycles' "Denoising Quality"); see ``denoise_prefilter``."""
    world_map_resolution: int = 512
    """Side of the HDRI world's importance map in pixels (Cycles world "Map Resolution", MANUAL sampling);
    0 = AUTOMATIC, where Cycles sizes it from the HDRI (1024 for the bundled 1024x512 maps). Cycles builds the
    map once per object (persistent data keeps it for the other views). 512 builds it faster than 1024 for a
    little more noise, time better spent on samples; 256 is much noisier (docs/benchmarks.md,
    docs/bench/render_speed.md)."""
    filter_width: float = 1.5
    """Pixel filter width in pixels (Cycles' Blackman-Harris "Filter Size"; 1.5 is Blender's default). Each
    sample lands within this footprint, which anti-aliases edges and textures. objaverse-xl's script uses 0.01:
    every sample at the pixel centre, no anti-aliasing noise but aliased edges (docs/bench/render_speed.md
    compares both)."""
    max_bounces: int = 4
    """Total light bounces."""
    diffuse_bounces: int = 2
    glossy_bounces: int = 2
    transmission_bounces: int = 4
    transparent_bounces: int = 8
    view_transform: Literal["Standard", "AgX", "Filmic", "Raw"] = "Standard"
    """Colour view transform; "Standard" = plain sRGB (Blender 5 defaults to AgX, so it is set explicitly)."""
    threads: int = 1
    """CPU threads per render process (Cycles); workers x threads should not exceed the node's cores."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """auto picks OPTIX > CUDA > HIP > METAL when a GPU is present, else CPU."""

    def __post_init__(self) -> None:
        checks = [
            *_finite(self, "cycles.", ("adaptive_threshold", "filter_width")),
            *[
                (
                    lo <= getattr(self, name) <= hi,
                    f"{_setting(name)} must be {lo} to {hi}, got {getattr(self, name)}{_RANGE_NOTE.get(name, '')}",
                )
                for name, (lo, hi) in _BLENDER_RANGES.items()
            ],
            (self.threads >= 1, f"--threads must be at least 1, got {self.threads}"),
            (
                self.world_map_resolution == 0 or 4 <= self.world_map_resolution <= 8192,
                "cycles.world_map_resolution must be 0 (AUTOMATIC) or 4 to 8192 pixels (Blender's range), got "
                f"{self.world_map_resolution}",
            ),
            # Cycles' own range for the filter size.
            (
                0.01 <= self.filter_width <= 10.0,
                f"cycles.filter_width must be in 0.01..10 pixels, got {self.filter_width}",
            ),
        ]
        _raise_first(checks)


# Blender's own hard ranges (bpy 5.0's RNA) for Cycles' numbers: beyond them Blender clamps silently (config.toml
# would then not describe the renders, and a resume would compare values Blender never used) or the render dies.
_BLENDER_RANGES = {
    "samples": (1, 2**24),
    "adaptive_threshold": (0.0, 1.0),
    "adaptive_min_samples": (0, 4096),
    "max_bounces": (0, 1024),
    "diffuse_bounces": (0, 1024),
    "glossy_bounces": (0, 1024),
    "transmission_bounces": (0, 1024),
    "transparent_bounces": (0, 1024),
}
_FLAG = {
    "samples": "--samples",
    "adaptive_threshold": "--adaptive-threshold",
    "adaptive_min_samples": "--adaptive-min-samples",
    "max_bounces": "--max-bounces",
}


def _setting(name: str) -> str:
    """How an error names cycles setting ``name``: its flag and its key when it has a flag (it may come from
    either), else its key."""
    return f"{_FLAG[name]} (cycles.{name})" if name in _FLAG else f"cycles.{name}"


_RANGE_NOTE = {"adaptive_threshold": " (0 = off)", "adaptive_min_samples": " (0 = Cycles' automatic rule)"}


def adaptive_min_samples_used(threshold: float, min_samples: int) -> int:
    """The minimum samples per pixel Cycles uses for an ``adaptive_threshold`` > 0 and ``adaptive_min_samples``
    (0 = automatic): Cycles' ``Integrator::get_adaptive_sampling`` rule, max(4, ceil(16 / threshold^0.3)) when
    automatic, else max(4, min_samples)."""
    if min_samples == 0:
        return max(4, math.ceil(16.0 / threshold**0.3))
    return max(4, min_samples)


# Cycles' AdaptiveSampling::adaptive_step: the convergence check runs after every 16th sample.
ADAPTIVE_STEP = 16


def adaptive_first_stop(threshold: float, min_samples: int) -> int:
    """The sample count after which Cycles first checks convergence, i.e. the fewest samples a pixel can get:
    the first multiple of 16 whose last sample index (0-based) is past the minimum used
    (``AdaptiveSampling::need_filter``). Adaptive sampling changes pixels only when this is below ``samples``."""
    used = adaptive_min_samples_used(threshold, min_samples)
    return ADAPTIVE_STEP * ((used + 1) // ADAPTIVE_STEP + 1)


@dataclass(frozen=True)
class LightingConfig:
    """The light of every object: an HDRI environment (the paper's setting, default) or a rig of sun lamps.

    Both are drawn per object from (run seed, uid): the HDRI map or nothing, a rotation about Z and a strength.
    """

    kind: Literal["hdri", "lamps"] = "hdri"
    """``hdri``: one environment map per object (docs/design.md §2.1).
    ``lamps``: four sun lamps (key, fill, rim, bottom; ``LAMP_RIG`` in mvforge.render.plan) plus a weak uniform
    ambient, the studio set-up of objaverse-xl's render script. Sun lamps are sampled without noise, so
    a view needs far fewer samples for the same PSNR (docs/bench/render_speed.md), but every object
    is lit alike, with harder shadows and no environment reflections."""
    hdri_dir: Path | None = None
    """Directory of .exr/.hdr maps; default: the 8 CC0 studio-light HDRIs shipped in the bpy wheel."""
    strength_min: float = 0.7
    strength_max: float = 1.3
    """Per object a strength is drawn uniformly from [strength_min, strength_max]: the HDRI's, or a factor on
    every lamp's energy."""
    rotation_random: bool = True
    """Rotate the map (or the whole lamp rig) about Z uniformly in [0, 360) per object."""
    visible_to_camera: bool = False
    """Show the HDRI behind the object. Off by default: the film is transparent and views are RGBA anyway."""
    ambient: float = 0.05
    """Under ``lamps``: radiance of a uniform grey world that lifts the shadows (Blender's default world is
    0.05); 0 = none. Not used under ``hdri``."""
    exposure: Literal["raw", "normalized"] = "raw"
    """Under ``hdri``: ``raw`` uses each map at its own exposure, times the drawn strength (the behaviour before
    this setting). ``normalized`` divides by the map's mean radiance (luminance over the sphere, weighted by
    solid angle; ``mvforge.render.exposure``), so the Background strength becomes strength x ``exposure_target``
    / mean radiance: every map gives the same average light and the per-object strength draw keeps its variety.
    The 8 maps in the bpy wheel differ several-fold in mean radiance and, raw, the brightest clip many of an
    object's pixels (figures in docs/bench/render_speed.md "HDRI exposure"). meta.json ``hdri`` records
    ``mean_radiance`` and the ``strength_applied`` either way (docs/design.md §2.1). ``raw`` stays the
    default: normalised cuts clipping but adds noise (it lifts dim maps), and a render default changes only
    for equal or lower noise (docs/benchmarks.md)."""
    exposure_target: float = 0.35
    """Under ``exposure = "normalized"``: the mean radiance every map is scaled to (linear, before the strength
    draw); the bundled maps' median is ~0.77. 0.35 keeps clipping near zero on the test objects with mid-grey
    mean values, where higher targets clip much more (figures: docs/benchmarks.md,
    docs/bench/render_speed.md). Not used under ``raw``."""

    def __post_init__(self) -> None:
        checks = [
            *_finite(
                self,
                "lighting.",
                ("strength_min", "strength_max", "ambient", "exposure_target"),
            ),
            (
                0 <= self.strength_min <= self.strength_max,
                "lighting.strength_min must be >= 0 and <= lighting.strength_max, got "
                f"{self.strength_min} and {self.strength_max}",
            ),
            (self.ambient >= 0, f"lighting.ambient must be 0 or more, got {self.ambient}"),
            (
                self.exposure_target > 0,
                f"lighting.exposure_target must be > 0 (a mean radiance), got {self.exposure_target}",
            ),
        ]
        _raise_first(checks)


def check_lighting_kind(lighting: LightingConfig) -> None:
    """Refuse HDRI-only settings under ``kind = "lamps"``, where they would be silently ignored; all of them in
    one line. Called once the config file, ``--set`` and the flags are merged, since a flag may
    change the kind (the CLI, and ``driver.render`` for API callers). Raises UserError."""
    if lighting.kind != "lamps":
        return
    given = [
        name
        for name, on in (
            ("--hdri-dir (lighting.hdri_dir)", lighting.hdri_dir is not None),
            ("--hdri-exposure normalized (lighting.exposure)", lighting.exposure != "raw"),
            ("--hdri-visible (lighting.visible_to_camera)", lighting.visible_to_camera),
        )
        if on
    ]
    if given:
        verb, pronoun = ("applies", "it") if len(given) == 1 else ("apply", "them")
        raise UserError(
            f"{', '.join(given)} {verb} to --lighting hdri only; remove {pronoun} from the command line or "
            "the config file, or render with --lighting hdri"
        )


@dataclass(frozen=True)
class PassesConfig:
    """Optional per-view passes beside the RGBA image."""

    depth: bool = False
    """16-bit PNG depth along the camera axis, metres = value / 65535 x depth_max (scale in cameras.json)."""
    normal: bool = False
    """World-space normals as 8-bit PNG, n * 0.5 + 0.5."""
    albedo: bool = False
    """Diffuse colour (Cycles denoising albedo) as 8-bit PNG."""


@dataclass(frozen=True)
class LimitsConfig:
    """Per-object guards; what trips one becomes a failure record, never a crashed run."""

    max_faces: int = 5_000_000
    """Unique faces (each mesh counted once however often it is instanced: what memory holds) above this are
    rejected as too_many_faces (instancing costs almost no memory; docs/design.md §2.1)."""
    max_evaluated_faces: int = 100_000_000
    """Evaluated faces (every instance counted: what Cycles traces) above this are rejected as too_many_faces;
    the failure message names which of the two caps fired."""
    timeout_s: float = 900.0
    """Wall-clock limit of one object's render, counted from the moment its Blender process gets the job (and
    from the process start for the first object of a process); on expiry the whole process group is killed
    (reason timeout)."""
    memory_gb: float = 16.0
    """Resident-memory cap of one render process group (reason memory_limit)."""
    retries: int = 1
    """Extra attempts for a process that died without a classified reason, before recording crashed."""
    pin_cpus: bool = True
    """Pin each Blender process to ``cycles.threads`` CPUs of its own on the node (Linux; lock files under
    /dev/shm/mvforge-cpus, one directory per node, freed when a process dies). Cycles under ``threads = 1``
    otherwise keeps a second, idle-spinning thread busy, which slows renders that share CPUs (docs/design.md
    §4, mvforge.render.cpus; figures: docs/benchmarks.md). When fewer CPUs are free than asked the process
    runs unpinned; meta.json ``process.cpus`` records the CPUs. False = never pin (e.g. a node shared with
    other heavy work, where the kernel should move renders between cores)."""
    objects_per_process: int = 8
    """Objects one Blender process renders in turn (one Ray task per batch of this many objects;
    docs/design.md §4). Reusing the process saves its start, ``import bpy`` and the first-import set-up per
    object, the largest part of the per-object overhead at 32 views (figures: docs/benchmarks.md); the scene
    is reset to factory settings between objects (renders byte-identical to one process per object).
    ``timeout_s`` and ``memory_gb`` still apply per object, and a process that dies or is killed costs only
    the object it was rendering: the rest of its batch goes on in a fresh process. A long-lived bpy process
    grows with every imported object (docs/design.md §4), which bounds this. 1 = one process per object."""

    def __post_init__(self) -> None:
        checks = [
            (
                1 <= self.objects_per_process <= 1000,
                # Above ~1000 the per-object bpy growth (docs/design.md §4) could reach GBs before the process
                # ends.
                f"--objects-per-process must be in 1..1000, got {self.objects_per_process}",
            ),
            (self.timeout_s > 0, f"--timeout must be positive, got {self.timeout_s}"),
            (self.memory_gb > 0, f"--memory-gb must be positive, got {self.memory_gb}"),
            (self.retries >= 0, f"--retries must be 0 or more, got {self.retries}"),
            (self.max_faces >= 1, f"--max-faces must be at least 1, got {self.max_faces}"),
            (
                self.max_evaluated_faces >= 1,
                f"limits.max_evaluated_faces must be at least 1, got {self.max_evaluated_faces}",
            ),
        ]
        _raise_first(checks)


@dataclass(frozen=True)
class MaterialsConfig:
    """What the renderer does about materials that would render wrong yet look ``ok``
    (docs/render_failures.md)."""

    missing_textures: Literal["fail", "strip"] = "fail"
    """An image texture whose file is absent or unreadable renders magenta in Cycles. ``fail``: the object
    fails with reason ``missing_texture``. ``strip``: the broken image nodes are removed so the material's base
    colour shows; meta.json ``stats.stripped_textures`` and the manifest record it, and the filter drops the
    object unless ``gates.keep_stripped_textures`` is set. The same policy covers the textures of pre-2.80 .blend
    texture slots (``missing_texture``; ``stats.legacy_textures``) and an OBJ whose .mtl or material is missing
    (``missing_reference``; ``stats.missing_materials``), both added to ``stats.stripped_textures`` under
    ``strip`` (docs/render_failures.md)."""
    vertex_colors: bool = True
    """Give meshes that carry a colour attribute but no material a material that reads it (PLY scans, OBJ
    ``v x y z r g b``), so they do not render plain grey. A mesh whose own material ignores the attribute keeps
    its material (the author chose it; the attribute may be data such as a mask); meta.json
    ``stats.vertex_colors`` counts both cases."""


@dataclass(frozen=True)
class DownloadConfig:
    """Fetching sources that are URLs (Objaverse): done inside the render task, on the node that renders."""

    cache_dir: Path | None = None
    """Where downloaded objects are kept (env MVFORGE_CACHE, default ~/.cache/mvforge)."""
    timeout_s: float = 120.0
    retries: int = 3


@dataclass(frozen=True)
class RenderConfig:
    """Everything that decides what a render looks like; saved as renders/config.toml."""

    resolution: int = 256
    """Square image side in pixels."""
    orbits: int = 1
    """Camera orbits per object, each with its own elevation, fov and distance (the paper renders 2)."""
    seed: int = 0
    """Run seed; each object's cameras and light derive from (seed, uid), so re-renders reproduce them."""
    shared_cameras: bool = False
    """Draw the cameras from the run seed alone, so every object of the run is seen from the same views (same
    elevations, fovs, distances and azimuths); the light stays per object. For data sets whose objects are
    compared view by view (a known-answer world, evaluation references: docs/demo.md). Off: cameras are seeded
    per object, as the paper's data (§4.1)."""
    cameras: OrbitSampling = field(default_factory=OrbitSampling)
    cycles: CyclesConfig = field(default_factory=CyclesConfig)
    lighting: LightingConfig = field(default_factory=LightingConfig)
    passes: PassesConfig = field(default_factory=PassesConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    materials: MaterialsConfig = field(default_factory=MaterialsConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)

    def __post_init__(self) -> None:
        checks = [
            # 65536 is Blender's own limit.
            (
                8 <= self.resolution <= 65536,
                f"--resolution must be 8 to 65536 pixels, got {self.resolution}",
            ),
            (self.orbits >= 1, f"--orbits must be at least 1, got {self.orbits}"),
        ]
        _raise_first(checks)


def _finite(cfg, prefix: str, names: tuple[str, ...]) -> list[tuple[bool, str]]:
    """(ok, message) checks that each named float field is a finite number (inf and nan pass ``>=`` tests and
    would reach Blender or numpy as an overflow or a black render)."""
    return [
        (math.isfinite(getattr(cfg, n)), f"{prefix}{n} must be a finite number, got {getattr(cfg, n)}")
        for n in names
    ]


def _raise_first(checks: list[tuple[bool, str]]) -> None:
    """Raise the message of the first failed (ok, message) check as a one-line UserError."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)
