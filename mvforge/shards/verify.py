"""`mvdata verify`: read every shard back and check it against index.json and the format (docs/design.md
§2.3).

Checks per shard: present, size and sha256 equal index.json, the tar parses to the end, the sample count
equals nsamples, its marker exists; per sample: json, txt, cameras.npy and every view PNG the json lists are
present, every PNG decodes, cameras are finite, rigid (det +1) and equal in number to the views.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from mvforge.cameras import is_rigid
from mvforge.errors import UserError
from mvforge.formats import shards as schema
from mvforge.fsutil import open_fs
from mvforge.shards import views2d


@dataclass(frozen=True)
class Problem:
    shard: str
    sample: str
    problem: str


def check_sample(sample: dict) -> list[str]:
    """Problems of one raw 3D sample (empty when it is good)."""
    from PIL import Image

    out = []
    for ext in (schema.JSON_EXT, schema.TXT_EXT, schema.CAMERAS_EXT):
        if ext not in sample:
            out.append(f"missing member .{ext}")
    views: list = []
    if schema.JSON_EXT in sample:
        try:
            views = json.loads(sample[schema.JSON_EXT].decode("utf-8"))["views"]
        except (ValueError, KeyError, UnicodeDecodeError) as e:
            out.append(f"json unreadable ({e})")
    expected = {schema.png_ext(int(v["index"])) for v in views} if views else set(schema.view_exts(sample))
    for ext in sorted(expected):
        if ext not in sample:
            out.append(f"missing member .{ext}")
            continue
        try:
            with Image.open(io.BytesIO(sample[ext])) as im:
                im.load()
        except Exception as e:  # PIL raises many types for corrupt data
            out.append(f".{ext} does not decode ({type(e).__name__})")
    if schema.CAMERAS_EXT in sample:
        try:
            cams = schema.load_npy(sample[schema.CAMERAS_EXT])
        except Exception as e:
            out.append(f"cameras.npy unreadable ({type(e).__name__})")
        else:
            if cams.ndim != 3 or cams.shape[1:] != (4, 4):
                out.append(f"cameras.npy has shape {cams.shape}, expected (V, 4, 4)")
            elif not np.all(np.isfinite(cams)):
                out.append("cameras not finite")
            else:
                bad = [i for i, m in enumerate(cams) if not is_rigid(m)]
                if bad:
                    out.append(f"cameras not rigid at views {bad[:5]}")
                if views and len(cams) != len(views):
                    out.append(f"{len(cams)} cameras for {len(views)} views")
    return out


def verify(url: str, storage_options: dict | None = None) -> tuple[dict, list[Problem]]:
    """(counts, problems) for the shard directory at ``url``."""
    fs, root = open_fs(url, storage_options)
    fs.invalidate_cache()  # object stores: list what is there now, not a cached listing
    if fs.isfile(root):
        raise UserError(
            f"{url} is a file; pass the shard directory that holds it (the --out of `mvdata shard`)"
        )
    index = schema.read_index(fs, root)
    if index is None:
        if not fs.exists(root):
            raise UserError(f"shard directory {url} does not exist; pass the --out of `mvdata shard`")
        if fs.exists(f"{root}/{views2d.RECORD}"):
            # `mvdata shard --views-2d` tars: 2D image-text pairs without the 3D index this command checks.
            raise UserError(
                f"{url} holds the 2D views of `mvdata shard --views-2d` (img2dataset layout), not 3D shards; "
                "pass the --out of `mvdata shard`"
            )
        return {}, [Problem("index.json", "", "missing: the shard run did not finish (re-run mvdata shard)")]
    problems: list[Problem] = []
    counts = {"shards": 0, "samples": 0, "bytes": 0}
    listed = set()
    for entry in index["shards"]:
        name = entry["name"]
        listed.add(name)
        path = f"{root}/{name}"
        if not fs.exists(path):
            problems.append(Problem(name, "", "shard file missing"))
            continue
        if not fs.exists(f"{root}/{schema.stats_name(name)}"):
            problems.append(Problem(name, "", "stats marker missing"))
        counts["shards"] += 1
        n = 0
        with fs.open(path, "rb") as f:
            reader = schema.ShardReader(f, path)
            try:
                for sample in schema.iter_raw_samples(reader, path):
                    n += 1
                    for p in check_sample(sample):
                        problems.append(Problem(name, sample["__key__"], p))
            except Exception as e:  # truncated or corrupt tar: tarfile raises ReadError / EOFError
                problems.append(
                    Problem(name, "", f"tar unreadable after {n} samples ({type(e).__name__}: {e})")
                )
            digest = reader.drain()  # the whole file, also past a parse error
        counts["samples"] += n
        counts["bytes"] += reader.nbytes
        if reader.nbytes != entry["bytes"]:
            problems.append(Problem(name, "", f"size {reader.nbytes} != index {entry['bytes']}"))
        if digest != entry["sha256"]:
            problems.append(Problem(name, "", "sha256 differs from index.json"))
        if n != entry["nsamples"]:
            problems.append(Problem(name, "", f"{n} samples != index {entry['nsamples']}"))
    for p in sorted(fs.glob(f"{root}/*.tar")):
        name = p.rsplit("/", 1)[-1]
        if name not in listed:
            problems.append(Problem(name, "", "tar not listed in index.json"))
    return counts, problems
