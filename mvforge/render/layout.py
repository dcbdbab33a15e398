"""The on-disk layout of a render directory (design §2.1): the contract read by filter and shard.

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
renders/.render.lock                     held by the running driver (one driver per directory)
```
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from mvforge.errors import UserError

UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
FAILED_DIR = "failed"
MANIFEST = "manifest.jsonl"
CONFIG = "config.toml"
CAMERAS = "cameras.json"
META = "meta.json"
CONVENTION = "mvforge/blender-c2w-opengl-zup"

# Failure reason codes (design §2.1). Every object ends as exactly one ok meta.json or one failure record.
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
        return np.asarray([v["c2w"] for v in self.cameras["views"]], dtype=np.float32)

    @property
    def caption(self) -> str:
        return self.meta.get("caption") or self.meta.get("name") or ""


def iter_uids(root: str | Path) -> Iterator[str]:
    """Uids of the ok objects in a render directory, sorted (a stable order for downstream plans)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"render directory {root} does not exist; run `mvdata render --out {root}` first")
    uids = []
    for meta in root.glob(f"*/*/{META}"):
        prefix = meta.parent.parent.name
        if prefix == FAILED_DIR or ".tmp" in meta.parent.name:
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
        if ".tmp" in p.name:
            continue
        yield json.loads(p.read_text(encoding="utf-8"))


def cameras_record(views, resolution: int, passes: dict | None = None, framing: str | None = None) -> dict:
    """The cameras.json document for ``views`` (``mvforge.cameras.View``) rendered at ``resolution``².

    ``framing``: ``OrbitSampling.framing`` the distances were drawn with ("mvdream" | "fit", issue 11); None
    (synthetic renders) leaves the key out. The filter's border gate reads it.
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
