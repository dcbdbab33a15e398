"""Per-object render plans: pure Python, seeded by (run seed, uid), so a re-render reproduces everything.

The driver plans; the Blender child process only executes the plan. Cameras, HDRI choice, rotation and
strength are decided here, which keeps them testable without Blender and identical across resumes.
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

# Formats and the bpy 5 importer that reads each (design §6); anything else is unsupported_format.
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
        raise UserError(
            f"HDRI directory {directory} does not exist; pass --hdri-dir DIR with .exr/.hdr files"
        )
    pool = sorted(p for p in directory.iterdir() if p.suffix.lower() in HDRI_SUFFIXES)
    if not pool:
        raise UserError(f"HDRI directory {directory} holds no .exr or .hdr file; add some or drop --hdri-dir")
    return pool


def plan_job(obj: SourceObject, cfg: RenderConfig, pool: list[Path]) -> dict:
    """The JSON-able job the Blender worker executes for ``obj`` (input path filled in after download)."""
    seed = object_seed(cfg.seed, obj.uid)
    rng = np.random.default_rng(seed)
    views = sample_orbits(rng, cfg.cameras, orbits=cfg.orbits)
    hdri = pool[int(rng.integers(len(pool)))]
    rotation = float(rng.uniform(0.0, 360.0)) if cfg.lighting.rotation_random else 0.0
    strength = float(rng.uniform(cfg.lighting.strength_min, cfg.lighting.strength_max))
    return {
        "uid": obj.uid,
        "source": dataclasses.asdict(obj) | {"tags": list(obj.tags)},
        "importer": FORMATS.get(obj.ext),
        "input_path": obj.path,
        "seed": seed,
        "resolution": cfg.resolution,
        "framing": cfg.cameras.framing,
        # vars(): View is flat, and dataclasses.asdict's recursion cost more than the cameras (issue 12 dry run).
        "views": [vars(v) | {"c2w": v.c2w.tolist()} for v in views],
        "hdri": {
            "path": str(hdri),
            "name": hdri.stem,
            "rotation_deg": rotation,
            "strength": strength,
            "visible_to_camera": cfg.lighting.visible_to_camera,
        },
        **_settings(cfg),
    }


def _settings(cfg: RenderConfig) -> dict:
    """The parts of a job that are the same for every object of a run: converted once per config, copied
    per job (issue 12: converting them per object was a third of planning 10⁶ objects)."""
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
