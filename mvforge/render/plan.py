"""Per-object render plans: pure Python, seeded by (run seed, uid), so a re-render reproduces everything.

The driver plans; the Blender child process only executes the plan. Cameras, HDRI choice (or the lamp rig),
rotation and strength are decided here, which keeps them testable without Blender and identical across resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvforge.cameras import sample_orbits
from mvforge.config import to_dict
from mvforge.errors import UserError
from mvforge.render.config import RenderConfig

HDRI_SUFFIXES = (".exr", ".hdr")

# The sun-lamp rig of ``lighting.kind = "lamps"`` (objaverse-xl's studio light): (name, azimuth_deg,
# elevation_deg, energy), the direction the light comes FROM in the orbit convention of docs/design.md §3
# (azimuth 0 = -Y, 90 = +X) before the per-object rig rotation; energy is a sun's irradiance in W/m² before
# the per-object strength. A classic three-point set-up plus a weak light from below, so no face of an object
# is left black; the key at 2.5 keeps a white diffuse face facing it (2.5/π + fill + ambient ≈ 0.9 linear)
# below clipping in the Standard transform.
LAMP_RIG = (
    ("key", 45.0, 45.0, 2.5),
    ("fill", -60.0, 15.0, 1.2),
    ("rim", 180.0, 35.0, 1.8),
    ("bottom", 0.0, -90.0, 0.6),
)

# Formats and the bpy 5 importer that reads each (docs/design.md §6); anything else is unsupported_format.
FORMATS = {
    "glb": "gltf",
    "gltf": "gltf",
    "obj": "obj",
    "fbx": "fbx",
    "ply": "ply",
    "stl": "stl",
    "usd": "usd",
    "usda": "usd",
    "usdc": "usd",
    "usdz": "usd",
    "abc": "alembic",
    "blend": "blend",
}


@dataclass(frozen=True)
class SourceObject:
    """One object to render, as a source lists it (before any download)."""

    uid: str
    kind: str
    """demo | local | objaverse"""
    ext: str
    """Lower-case file extension without the dot (glb, obj, ...)."""
    path: str | None = None
    """Local file, or where a download lands in the cache."""
    url: str | None = None
    """Where to download from (Objaverse); None for local files."""
    sha256: str | None = None
    """Expected sha256 of the downloaded file, when the source publishes one."""
    caption: str = ""
    name: str = ""
    tags: tuple[str, ...] = ()


SHARED_CAMERAS_KEY = "*shared-cameras*"
"""The key the run's camera stream is seeded with under ``shared_cameras`` (never a valid uid: uids are
file-name safe and hold no ``*``)."""


def object_seed(run_seed: int, uid: str) -> int:
    """A 63-bit seed from (run seed, uid): independent of the order or the machine objects are rendered on."""
    digest = hashlib.sha256(f"{run_seed}:{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def default_hdri_dir() -> Path:
    """The CC0 studio-light HDRIs shipped inside the bpy wheel (found without importing bpy)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("bpy is not installed; run `make install` (or pip install bpy==5.0.1)")
    root = Path(next(iter(spec.submodule_search_locations)))
    hits = sorted(root.glob("*/datafiles/studiolights/world"))
    if not hits:
        raise UserError(
            f"no HDRIs found in the bpy wheel at {root}; pass --hdri-dir DIR with .exr/.hdr files"
        )
    return hits[0]


def hdri_pool(hdri_dir: Path | None) -> list[Path]:
    """Sorted HDRI files of ``hdri_dir`` (default: bpy's); an empty pool is a user error."""
    directory = Path(hdri_dir) if hdri_dir is not None else default_hdri_dir()
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise UserError(f"HDRI directory {directory} {what}; pass --hdri-dir DIR with .exr/.hdr files")
    pool = sorted(p for p in directory.iterdir() if p.suffix.lower() in HDRI_SUFFIXES)
    if not pool:
        raise UserError(f"HDRI directory {directory} holds no .exr or .hdr file; add some or drop --hdri-dir")
    return pool


def plan_job(obj: SourceObject, cfg: RenderConfig, pool: list[Path]) -> dict:
    """The JSON-able job the Blender worker executes for ``obj`` (input path filled in after download).

    ``pool``: the run's HDRI files (:func:`hdri_pool`); not read, and may be empty, under ``lighting.kind =
    "lamps"``. Raises UserError for an empty pool under ``hdri``.
    """
    seed = object_seed(cfg.seed, obj.uid)
    rng = np.random.default_rng(seed)
    if cfg.shared_cameras:
        # One camera stream for the whole run; the light still draws from the object's own stream.
        views = sample_orbits(
            np.random.default_rng(object_seed(cfg.seed, SHARED_CAMERAS_KEY)), cfg.cameras, orbits=cfg.orbits
        )
    else:
        views = sample_orbits(rng, cfg.cameras, orbits=cfg.orbits)
    light = _plan_lamps(rng, cfg) if cfg.lighting.kind == "lamps" else {"hdri": _plan_hdri(rng, cfg, pool)}
    return {
        "uid": obj.uid,
        "source": dataclasses.asdict(obj) | {"tags": list(obj.tags)},
        "importer": FORMATS.get(obj.ext),
        "input_path": obj.path,
        "seed": seed,
        "resolution": cfg.resolution,
        "framing": cfg.cameras.framing,
        # vars(): View is flat, and dataclasses.asdict's recursion cost more than the cameras
        # (the driver's dry run at 10⁶ objects).
        "views": [vars(v) | {"c2w": v.c2w.tolist()} for v in views],
        **light,
        **_settings(cfg),
    }


def _plan_hdri(rng: np.random.Generator, cfg: RenderConfig, pool: list[Path]) -> dict:
    """One map of ``pool``, its rotation about Z and its strength (the draws in this order since format 1), and
    how its exposure is set (``lighting.exposure``; no draw)."""
    if not pool:
        raise UserError(
            "lighting.kind = 'hdri' needs at least one HDRI; pass --hdri-dir DIR with .exr/.hdr files"
        )
    hdri = pool[int(rng.integers(len(pool)))]
    rotation = float(rng.uniform(0.0, 360.0)) if cfg.lighting.rotation_random else 0.0
    strength = float(rng.uniform(cfg.lighting.strength_min, cfg.lighting.strength_max))
    out = {
        "path": str(hdri),
        "name": hdri.stem,
        "rotation_deg": rotation,
        "strength": strength,
        "visible_to_camera": cfg.lighting.visible_to_camera,
        "exposure": cfg.lighting.exposure,
    }
    if cfg.lighting.exposure == "normalized":
        # The map's mean radiance is measured in the Blender child (reading the map needs bpy).
        out["exposure_target"] = cfg.lighting.exposure_target
    return out


def _plan_lamps(rng: np.random.Generator, cfg: RenderConfig) -> dict:
    """The job's ``lamps``: ``LAMP_RIG`` turned about Z by one per-object rotation, energies times one strength.

    Each lamp: name, azimuth_deg in [0, 360), elevation_deg in [-90, 90], energy (W/m²). ``hdri`` is None.
    """
    rotation = float(rng.uniform(0.0, 360.0)) if cfg.lighting.rotation_random else 0.0
    strength = float(rng.uniform(cfg.lighting.strength_min, cfg.lighting.strength_max))
    lights = [
        {
            "name": name,
            "azimuth_deg": (azimuth + rotation) % 360.0,
            "elevation_deg": elevation,
            "energy": energy * strength,
        }
        for name, azimuth, elevation, energy in LAMP_RIG
    ]
    return {
        "hdri": None,
        "lamps": {
            "rotation_deg": rotation,
            "strength": strength,
            "ambient": cfg.lighting.ambient,
            "lights": lights,
        },
    }


def _settings(cfg: RenderConfig) -> dict:
    """The parts of a job that are the same for every object of a run: converted once per config, copied
    per job (converting them per object was a third of planning 10⁶ objects)."""
    return {key: dict(value) for key, value in _settings_of(cfg).items()}


@functools.lru_cache(maxsize=8)
def _settings_of(cfg: RenderConfig) -> dict:
    return {
        "cycles": to_dict(cfg.cycles),
        "passes": to_dict(cfg.passes),
        "limits": {
            "max_faces": cfg.limits.max_faces,
            "max_evaluated_faces": cfg.limits.max_evaluated_faces,
        },
        "materials": to_dict(cfg.materials),
    }
