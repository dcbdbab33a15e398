"""The render directory format (docs/design.md §2.1): the contract `mvdata render` writes and filter, shard
and the report read. Pure Python (imported by every Blender child): no heavy import at module import time.

```
renders/<uid[:2]>/<uid>/000.png ...      RGBA 8-bit, straight alpha, sRGB "Standard" view transform
renders/<uid[:2]>/<uid>/000.depth.png    optional passes: 16-bit depth (scale in cameras.json), normal, albedo
renders/<uid[:2]>/<uid>/cameras.json     {"convention", "resolution", "views": [{index, file, orbit, c2w, K,
                                          fov_deg, elevation_deg, azimuth_deg, distance}], "passes"}
renders/<uid[:2]>/<uid>/meta.json        written LAST: the object is done iff it exists
renders/failed/<uid>.json                one record per failed object: status, reason, message, log_tail
renders/manifest.jsonl                   one line per finished object (ok or failed)
renders/config.toml                      the resolved config of the run
renders/logs/<uid>.log                   Blender's stdout/stderr of the object's last attempt
renders/.lock                            held by the running driver (one writer per directory, mvforge/rundir.py)
```
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mvforge.errors import UserError
from mvforge.fsutil import is_tmp

if TYPE_CHECKING:
    import numpy as np

UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
FAILED_DIR = "failed"
MANIFEST = "manifest.jsonl"
CONFIG = "config.toml"
CAMERAS = "cameras.json"
META = "meta.json"
CONVENTION = "mvforge/blender-c2w-opengl-zup"

FORMAT_VERSION = 2
"""Version of meta.json and failure records (key ``format_version``), fields as in :class:`RenderMeta` and
:class:`FailureRecord`; readers refuse any other version."""

# Failure reason codes (docs/design.md §2.1). Every object ends as exactly one ok meta.json or one failure
# record.
REASONS = (
    "download_failed",
    "unsupported_format",
    "import_error",
    "no_mesh",
    "zero_extent",
    "non_finite",
    "too_many_faces",
    "timeout",
    "crashed",
    "memory_limit",
    "empty_render",
    "missing_texture",
    # An external reference (texture, buffer, material library, linked .blend) outside the object's folder,
    # or a URL / absolute path: refused for every format, nothing outside is read (docs/render_failures.md).
    "outside_reference",
    # A file the object needs is missing: a linked .blend library, a glTF buffer, an OBJ's .mtl or a material.
    "missing_reference",
)


def is_render_dir(path: str | Path) -> bool:
    """True when ``path`` holds `mvdata render` output (a manifest, failure records or a finished object): other
    stages refuse to write into one (their config.toml and report.html would replace the render's)."""
    d = Path(path)
    return d.is_dir() and (
        (d / MANIFEST).is_file() or (d / FAILED_DIR).is_dir() or any(d.glob(f"*/*/{META}"))
    )


def check_not_render_dir(out: str | Path, stage: str) -> None:
    """UserError when a stage's ``--out`` is a render directory (the stage would overwrite
    its config.toml)."""
    if is_render_dir(out):
        raise UserError(
            f"--out {out} is a render directory; `{stage}` writes its own files there and would replace the "
            f"render's config.toml: pass another directory, e.g. {Path(out).parent / stage.split()[-1]}"
        )


def check_uid(uid: str) -> str:
    """A uid is a path component and a webdataset key: letters, digits, '_' and '-' only (no dot)."""
    if not UID_RE.match(uid):
        raise UserError(
            f"bad object uid {uid!r}: use 1-128 letters, digits, '_' or '-' (no dots, no slashes)"
        )
    return uid


def object_dir(root: str | Path, uid: str) -> Path:
    return Path(root) / uid[:2] / uid


def failure_path(root: str | Path, uid: str) -> Path:
    return Path(root) / FAILED_DIR / f"{uid}.json"


def view_name(index: int, kind: str = "") -> str:
    """File name of view ``index``: ``000.png``, or ``000.depth.png`` for a pass."""
    return f"{index:03d}.{kind}.png" if kind else f"{index:03d}.png"


def status(root: str | Path, uid: str) -> Literal["ok", "failed"] | None:
    """Terminal state of an object in a render directory, or None when it is not finished."""
    if (object_dir(root, uid) / META).is_file():
        return "ok"
    if failure_path(root, uid).is_file():
        return "failed"
    return None


@dataclass
class RenderedObject:
    """A finished (ok) object of a render directory, read lazily."""

    uid: str
    path: Path
    _cache: dict = field(default_factory=dict, repr=False)

    @cached_property
    def meta(self) -> dict:
        return json.loads((self.path / META).read_text(encoding="utf-8"))

    @cached_property
    def cameras(self) -> dict:
        return json.loads((self.path / CAMERAS).read_text(encoding="utf-8"))

    @property
    def num_views(self) -> int:
        return len(self.cameras["views"])

    def view_path(self, index: int, kind: str = "") -> Path:
        return self.path / view_name(index, kind)

    def c2w(self) -> np.ndarray:
        """(V, 4, 4) float32 camera-to-world matrices in view order."""
        import numpy as np

        return np.asarray([v["c2w"] for v in self.cameras["views"]], dtype=np.float32)

    @property
    def caption(self) -> str:
        return self.meta.get("caption") or self.meta.get("name") or ""


def iter_uids(root: str | Path) -> Iterator[str]:
    """Uids of the ok objects in a render directory, sorted (a stable order for downstream plans)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"render directory {root} does not exist; run `mvdata render SOURCE... --out {root}` first"
        )
    uids = []
    for meta in root.glob(f"*/*/{META}"):
        prefix = meta.parent.parent.name
        if prefix == FAILED_DIR or is_tmp(meta.parent):
            continue
        uids.append(meta.parent.name)
    yield from sorted(uids)


def iter_objects(root: str | Path) -> Iterator[RenderedObject]:
    for uid in iter_uids(root):
        yield RenderedObject(uid, object_dir(root, uid))


def load_object(root: str | Path, uid: str) -> RenderedObject:
    path = object_dir(root, uid)
    if not (path / META).is_file():
        raise UserError(f"object {uid} has no finished render in {root}; render it first")
    return RenderedObject(uid, path)


def iter_failures(root: str | Path) -> Iterator[dict]:
    for p in sorted((Path(root) / FAILED_DIR).glob("*.json")):
        if is_tmp(p):
            continue
        yield json.loads(p.read_text(encoding="utf-8"))


def cameras_record(views, resolution: int, passes: dict | None = None, framing: str | None = None) -> dict:
    """The cameras.json document for ``views`` (``mvforge.cameras.View``) rendered at ``resolution``².

    ``framing``: ``OrbitSampling.framing`` the distances were drawn with ("mvdream" | "fit", docs/design.md
    §3); None (synthetic renders) leaves the key out. The filter's border gate reads it.
    """
    from mvforge.cameras import intrinsics

    return {
        "convention": CONVENTION,
        **({"framing": framing} if framing else {}),
        "resolution": [resolution, resolution],
        "passes": passes or {},
        "views": [
            {
                "index": v.index,
                "file": view_name(v.index),
                "orbit": v.orbit,
                "elevation_deg": v.elevation_deg,
                "azimuth_deg": v.azimuth_deg,
                "fov_deg": v.fov_deg,
                "distance": v.distance,
                "c2w": v.c2w.tolist(),
                "K": intrinsics(v.fov_deg, resolution).tolist(),
            }
            for v in views
        ],
    }


# --- typed records ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderMeta:
    """meta.json of an ok object (docs/design.md §2.1), written last: its presence marks the object done.

    ``extra`` holds keys this version does not name (written by a newer mvforge, or stage-specific additions),
    so a read → write round trip loses nothing.
    """

    uid: str
    source: dict[str, Any]
    """kind, path/url, sha256 of the input file."""
    caption: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    normalization: dict[str, Any] | None = None
    """scale and offset that map the object into [-0.5, 0.5]^3 (docs/design.md §3)."""
    stats: dict[str, Any] | None = None
    """faces, vertices, materials, animations, missing_textures, ... as counted by the Blender adapter."""
    hdri: dict[str, Any] | None = None
    """name, rotation_deg, strength (the per-object draw), visible_to_camera of the HDRI that lit the object;
    None under lamps. ``exposure`` (``lighting.exposure``: raw | normalized), ``exposure_target`` (normalized
    only), ``mean_radiance`` (the map's solid-angle weighted mean luminance) and ``strength_applied`` (the
    Background strength Cycles used: strength, or strength x exposure_target / mean_radiance)."""
    lamps: dict[str, Any] | None = None
    """Under ``lighting.kind = "lamps"``: rotation_deg, strength, ambient and ``lights`` (name,
    azimuth_deg, elevation_deg, energy in W/m² per sun lamp); None under an HDRI."""
    seed: int | None = None
    engine: str = "CYCLES"
    samples: int | None = None
    resolution: int | None = None
    views: int = 0
    orbits: int = 1
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    attempts: int = 1
    peak_rss_mb: float | None = None
    device: str = "CPU"
    cycles: dict[str, Any] | None = None
    """The sampling settings read back from Blender (docs/design.md §2.1): samples, adaptive_threshold,
    adaptive_min_samples (the minimum Cycles used, its automatic rule resolved; None with adaptive sampling
    off), light_tree, denoiser (None when no denoiser ran, else "OPENIMAGEDENOISE"), denoising_input_passes,
    denoising_prefilter, denoising_quality, world_sampling (AUTOMATIC | MANUAL), world_map_resolution (pixels,
    MANUAL only), filter_width (pixels), max_bounces, persistent_data. None in stub renders."""
    process: dict[str, Any] | None = None
    """The Blender process that rendered the object (one process renders a batch in turn,
    docs/design.md §4): ``pid``,
    ``position`` (1 = its first object, a fresh process) and ``reused`` (position > 1). None in stub renders."""
    status: str = "ok"
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import fields

        return {**self.extra, **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RenderMeta:
        """A record from a meta.json document; raises UserError on another format version."""
        return cls(**_split_known(cls, doc, "meta.json"))


@dataclass(frozen=True)
class FailureRecord:
    """``failed/<uid>.json``: the one terminal record of an object that did not render (docs/design.md
    §2.1)."""

    uid: str
    reason: str
    """One of :data:`REASONS`."""
    message: str
    log_tail: str = ""
    attempts: int = 1
    source: dict[str, Any] | None = None
    status: str = "failed"
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown failure reason {self.reason!r}; known: {', '.join(REASONS)}")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import fields

        return {**self.extra, **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FailureRecord:
        return cls(**_split_known(cls, doc, "failure record"))


def _split_known(cls, doc: dict[str, Any], what: str) -> dict[str, Any]:
    """Constructor kwargs of ``cls`` from ``doc``: unknown keys go to ``extra``."""
    from dataclasses import fields

    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        fix = (
            "upgrade mvforge" if isinstance(version, int) and version > FORMAT_VERSION else "render it again"
        )
        raise UserError(
            f"{what} of {doc.get('uid')!r} has format_version {version!r}; this mvforge reads "
            f"{FORMAT_VERSION} only: {fix}"
        )
    names = {f.name for f in fields(cls)} - {"extra"}
    kwargs = {k: v for k, v in doc.items() if k in names}
    kwargs["extra"] = {k: v for k, v in doc.items() if k not in names}
    return kwargs


def read_meta(root: str | Path, uid: str) -> RenderMeta:
    """The typed meta.json of a finished object."""
    return RenderMeta.from_dict(load_object(root, uid).meta)


def read_failure(root: str | Path, uid: str) -> FailureRecord:
    return FailureRecord.from_dict(json.loads(failure_path(root, uid).read_text(encoding="utf-8")))
