"""`mvdata shard --views-2d`: single rendered views as 2D image-text shards (img2dataset layout).

MVDream trains 30% of its steps on 2D image-text pairs without cameras (paper §3.3, LAION). A world that has no
2D data of its own (the demo world, docs/demo.md) can take its 2D pairs from its renders: each kept view
becomes one sample ``<uid>_<view>.png`` (the original RGBA bytes) + ``<uid>_<view>.txt`` (the caption without the
3D suffix), read by the loader's 2D branch like any img2dataset shard. Views listed in ``exclude_views`` (the
held-out validation views) are left out. Tars are written with the 3D writer's deterministic headers.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from mvforge.errors import UserError
from mvforge.formats import renders as layout
from mvforge.fsutil import atomic_write_bytes, atomic_write_json
from mvforge.shards import schema

RECORD = "views-2d.json"
"""What a 2D view directory holds: the render directory, the uids and the views left out."""


def train_uids(shards: str | Path) -> list[str]:
    """Uids of the train split of a shard directory, read from its tars (no decoding)."""
    from mvforge.shards.loader import resolve_shards

    uids = set()
    for url in resolve_shards(str(shards), "train")[0]:
        with tarfile.open(url.removeprefix("file://")) as tar:
            uids.update(name.split(".", 1)[0] for name in tar.getnames())
    return sorted(uids)


def _check_record(out: Path, record: dict) -> None:
    """Refuse ``out`` when its record differs from ``record`` in a key both have, naming the key."""
    marker = out / RECORD
    if not marker.is_file():
        return
    try:
        held = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        held = {}
    for key, value in record.items():
        if held.get(key) != value:
            was = held.get(key, "missing")
            shown = f"{len(was)} uids" if key == "uids" and isinstance(was, list) else was
            now = f"{len(value)} uids" if key == "uids" else value
            raise UserError(
                f"{out} holds 2D views made with other {key} ({RECORD}: {shown}, now {now}); pass another "
                "--views-2d directory"
            )


def check_view_dir(renders: str | Path, out: str | Path, exclude_views: frozenset[int] = frozenset()) -> None:
    """Refuse, before any shard is written, a 2D view directory that holds the views of another render
    directory or with other views held out (the objects are compared when the views are written)."""
    record = {"renders": str(Path(renders).resolve()), "exclude_views": sorted(exclude_views)}
    _check_record(Path(out), record)


def write_view_shards(
    renders: str | Path,
    out: str | Path,
    uids: list[str],
    exclude_views: frozenset[int] = frozenset(),
    max_count: int = 1000,
) -> list[Path]:
    """Write ``out/2d-000000.tar`` ... holding every view of ``uids`` (sorted) but ``exclude_views``, at most
    ``max_count`` samples per tar; returns the tar paths. Existing tars are rewritten (the function is pure and
    cheap, so resume is a rerun); ``out/views-2d.json`` records what they hold, and a directory that holds the
    views of other objects or another render directory is refused, so a held-out subject cannot leak into
    training through a shared ``--views-2d``. Raises UserError when no view is left or ``out`` holds other
    views."""
    renders, out = Path(renders), Path(out)
    record = {
        "renders": str(renders.resolve()),
        "uids": sorted(uids),
        "exclude_views": sorted(exclude_views),
        "max_count": max_count,
    }
    _check_record(out, record)
    samples = []
    for uid in sorted(uids):
        obj = layout.load_object(renders, uid)
        for v in obj.cameras["views"]:
            index = int(v["index"])
            if index in exclude_views:
                continue
            name = v["file"]
            png = schema.check_png(name, (obj.path / name).read_bytes())
            samples.append((f"{uid}_{index:03d}", {"png": png, schema.TXT_EXT: obj.caption.encode("utf-8")}))
    if not samples:
        raise UserError(f"no view of {renders} is left for 2D shards; hold out fewer views")
    paths = []
    for i in range(0, len(samples), max_count):
        buf = io.BytesIO()
        schema.write_samples(buf, samples[i : i + max_count])
        path = out / f"2d-{i // max_count:06d}.tar"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    atomic_write_json(out / RECORD, record)
    return paths
