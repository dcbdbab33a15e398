"""Write a render directory in the exact §2.1 layout from procedural images, without Blender.

For tests and benchmarks of the stages downstream of rendering (filter, shard, loader), where real Cycles
renders would only cost time. Each object is a coloured ellipse whose place in the image follows the camera's
azimuth, so views differ and a test can tell them apart.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mvforge.cameras import OrbitSampling, sample_orbits
from mvforge.formats import renders as layout
from mvforge.fsutil import atomic_write_bytes, atomic_write_json


def synthetic_view(
    rgb: tuple[int, int, int], azimuth_deg: float, resolution: int, kind: str = "ok"
) -> Image.Image:
    """One RGBA view. ``kind``: ok | empty (nothing drawn) | border (cut by the image border) | tiny | uniform,
    or the pixel faults the filter's safety net catches (docs/design.md §2.2): magenta (a missing texture,
    shaded) | dark | bright | faint (alpha 40)."""
    img = Image.new("RGBA", (resolution, resolution), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    r = resolution
    if kind == "empty":
        return img
    if kind == "uniform":
        return Image.new("RGBA", (r, r), (*rgb, 255))
    if kind == "tiny":
        c = r // 2
        draw.rectangle([c - 1, c - 1, c + 1, c + 1], fill=(*rgb, 255))
        return img
    if kind == "border":
        draw.ellipse([-r // 2, r // 4, r // 2, 3 * r // 4], fill=(*rgb, 255))
        return img
    faults = {"magenta": (230, 20, 225), "dark": (4, 3, 2), "bright": (255, 255, 255), "faint": rgb}
    if kind in faults:
        alpha = 40 if kind == "faint" else 255
        draw.ellipse([r * 0.25, r * 0.2, r * 0.75, r * 0.8], fill=(*faults[kind], alpha))
        if kind == "magenta":  # shaded like a lit render: the lower half in shadow, same hue
            px = np.asarray(img).copy()
            px[r // 2 :, :, :3] //= 2
            img = Image.fromarray(px, "RGBA")
        return img
    shift = 0.2 * r * math.sin(math.radians(azimuth_deg))
    box = [r * 0.25 + shift, r * 0.2, r * 0.75 + shift, r * 0.8]
    draw.ellipse(
        box, fill=(*rgb, 255), outline=(255 - rgb[0], 255 - rgb[1], 255 - rgb[2], 200), width=max(1, r // 32)
    )
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_synthetic_object(
    root: str | Path,
    uid: str,
    caption: str,
    *,
    views: int = 8,
    resolution: int = 32,
    seed: int = 0,
    rgb: tuple[int, int, int] | None = None,
    kind: str = "ok",
    orbits: int = 1,
    framing: str | None = None,
    stripped_textures: int = 0,
) -> Path:
    """Write one finished object (views, cameras.json, then meta.json last) and return its directory.

    ``framing`` goes into cameras.json and ``stripped_textures`` into meta.json ``stats`` (the filter reads
    both)."""
    layout.check_uid(uid)
    rng = np.random.default_rng([seed, *uid.encode()])
    rgb = rgb or tuple(int(x) for x in rng.integers(40, 220, size=3))
    cams = sample_orbits(rng, OrbitSampling(views=views), orbits=orbits)
    out = layout.object_dir(root, uid)
    for v in cams:
        atomic_write_bytes(
            out / layout.view_name(v.index), png_bytes(synthetic_view(rgb, v.azimuth_deg, resolution, kind))
        )
    atomic_write_json(out / layout.CAMERAS, layout.cameras_record(cams, resolution, framing=framing))
    meta = layout.RenderMeta(
        uid=uid,
        source={"kind": "synthetic", "path": None, "sha256": None},
        caption=caption,
        name=caption,
        normalization={"scale": 1.0, "offset": [0.0, 0.0, 0.0]},
        stats={
            "faces": 0,
            "vertices": 0,
            "materials": 0,
            "animations": 0,
            "missing_textures": stripped_textures,
            "stripped_textures": stripped_textures,
        },
        seed=seed,
        engine="synthetic",
        samples=0,
        resolution=resolution,
        views=len(cams),
        orbits=orbits,
    )
    atomic_write_json(out / layout.META, meta.to_dict())
    return out


def write_synthetic_render_dir(
    root: str | Path, n_objects: int, *, views: int = 8, resolution: int = 32, seed: int = 0
) -> list[str]:
    """A render directory of ``n_objects`` synthetic objects ``obj-0000``...; returns their uids."""
    uids = []
    for i in range(n_objects):
        uid = f"obj-{i:04d}"
        write_synthetic_object(
            root, uid, f"synthetic object number {i}", views=views, resolution=resolution, seed=seed
        )
        uids.append(uid)
    return uids


def stub_render_task(objs: list, jobs: list[dict], out: str, cfg, env: dict[str, str]) -> list[dict]:
    """A render task that renders nothing: the driver's dry run at 10⁵-10⁶ objects (cost of the
    driver alone; docs/benchmarks.md).

    Same signature and contract as ``mvforge.render.driver.render_task`` (a batch of objects): it writes each
    object's one terminal record (a meta.json-only object directory, through the runner's atomic finalize) and
    returns their manifest lines, so planning, resume scans, the manifest and Ray task submission are exercised
    at full scale while Cycles costs nothing. ``objs``: SourceObjects; ``cfg``: the RenderConfig (unused).
    """
    from mvforge.render import runner

    out_path = Path(out)
    records = []
    for obj, job in zip(objs, jobs, strict=True):
        uid = layout.check_uid(obj.uid)
        staging = runner.staging_dir(out_path, uid)
        staging.mkdir(parents=True, exist_ok=True)
        meta = layout.RenderMeta(
            uid=uid,
            source={"kind": "stub", "path": obj.path, "sha256": obj.sha256},
            seed=job["seed"],
            engine="stub",
            samples=0,
            resolution=job["resolution"],
            views=len(job["views"]),
        )
        runner.finalize_ok(out_path, uid, staging, meta.to_dict())
        records.append(
            {
                "uid": uid,
                "status": "ok",
                "reason": None,
                "attempts": 1,
                "seconds": 0.0,
                "render_seconds": 0.0,
                "views": len(job["views"]),
                "peak_rss_mb": 0.0,
            }
        )
    return records
