"""The shard format (docs/design.md §2.3): member names, the index document and readers; the writer is in
``mvforge.shards.schema``. Pure Python at import time (numpy and webdataset are imported by the readers).

A sample with key ``<uid>`` holds, in sorted member order:
``<uid>.000.png`` ... (original PNG bytes, never re-encoded), ``<uid>.cameras.npy`` ((V, 4, 4) float32 c2w in
view order), ``<uid>.json`` ({"uid", "views": cameras.json views, "resolution", "convention", "meta"}) and
``<uid>.txt`` (the caption). Keys contain no dot because webdataset splits a member name at its first dot.
``meta`` is :func:`public_meta` of the render's meta.json: what a dataset user needs, nothing of the machine
or folder it was rendered in, so shards can be published and the same renders give the same bytes anywhere.

```
shards/train-000000.tar ...     the samples (deterministic GNU tars)
shards/<name>.stats.json        per-shard marker, written after the tar is renamed into place
shards/README.md                the dataset card (Hub YAML header: configs naming the tars, so
                                `datasets.load_dataset(dir)` reads the tars only; docs/ecosystem.md)
shards/index.json               written LAST: per shard name/split/nsamples/bytes/sha256, totals, the config
```
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

from mvforge.errors import UserError
from mvforge.formats import renders

INDEX = "index.json"
STATS_SUFFIX = ".stats.json"
CAMERAS_EXT = "cameras.npy"
JSON_EXT = "json"
TXT_EXT = "txt"
SPLITS = ("train", "val")
FORMAT = "mvforge-shards-v1"
"""The ``format`` name in index.json (unchanged since the first release: the tar layout has not changed)."""
FORMAT_VERSION = 2
"""Version of index.json (key ``format_version``); readers refuse any other version."""


PUBLIC_META_KEYS = (
    "uid", "caption", "name", "tags", "normalization", "stats", "hdri", "lamps", "seed", "engine", "samples",
    "resolution", "views", "orbits", "cycles", "versions", "format_version", "status",
)  # fmt: skip
"""meta.json keys a shard sample keeps: the object, how it was normalised and lit, the render settings. Left
out: timings, attempts, peak memory, device, the Blender process (pid, CPUs) and the source's local path,
size and mtime (machine-local, and they differ between two renders of the same object)."""

PUBLIC_SOURCE_KEYS = ("kind", "ext", "url", "sha256", "bytes")


def public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The part of a render's meta.json that goes into a shard sample (``PUBLIC_META_KEYS``). ``source`` keeps
    its kind, extension, URL, sha256 and byte count, plus ``file``: the input's file name without its folder;
    ``hdri`` loses any map path. Never mutates ``meta``."""
    out = {k: meta[k] for k in PUBLIC_META_KEYS if k in meta}
    source = meta.get("source") or {}
    public = {k: source[k] for k in PUBLIC_SOURCE_KEYS if source.get(k) is not None}
    where = source.get("path") or source.get("url")
    if where:
        public["file"] = str(where).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    out["source"] = public
    if isinstance(out.get("hdri"), dict):
        out["hdri"] = {k: v for k, v in out["hdri"].items() if k != "path"}
    return out


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def stats_name(shard: str) -> str:
    return f"{shard}{STATS_SUFFIX}"


def png_ext(view_index: int) -> str:
    return renders.view_name(view_index)  # "000.png"


def split_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member name, split at the first dot as webdataset does."""
    key, _, ext = name.partition(".")
    return key, ext


def load_npy(data: bytes):
    """An ndarray from ``.npy`` bytes (pickles refused)."""
    import numpy as np

    return np.load(io.BytesIO(data), allow_pickle=False)


class ShardReader:
    """A read-only file wrapper for a shard: its repr is the shard's URL (the tar reader's errors print the file
    object: "unexpected end of data @ <url>", not an object address), and with ``hash=True`` it keeps the
    sha256 and byte count of what is read through it, so one read both decodes and checksums a shard."""

    def __init__(self, raw, url: str, hash: bool = True):
        self.raw, self.url = raw, url
        self.sha = hashlib.sha256() if hash else None
        self.nbytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if self.sha is not None:
            self.sha.update(data)
        self.nbytes += len(data)
        return data

    def drain(self) -> str:
        """Read what the tar reader left (end-of-archive padding, or the rest after a parse error) and return
        the hex sha256 of the whole file (``hash=True`` only)."""
        while self.read(1 << 20):
            pass
        return self.sha.hexdigest()

    def __repr__(self) -> str:
        return self.url


def iter_raw_samples(fileobj, url: str = "") -> Iterator[dict]:
    """Samples {"__key__", "__url__", ext: bytes, ...} of a tar stream, grouped by key with webdataset's own
    rules (its tar iterator and grouper; the url is only a label)."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    files = ({**f, "__url__": url} for f in tar_file_iterator(fileobj))
    yield from group_by_keys(files)


def read_shard(url: str, storage_options: dict | None = None) -> Iterator[dict]:
    """:func:`iter_raw_samples` of the shard at ``url`` (a local path or an fsspec URL), for the readers that
    need a whole shard (fit's val check, eval's reference). Raises UserError naming the shard and `mvdata verify`
    when it cannot be opened or parsed (missing, truncated, overwritten)."""
    import fsspec

    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            yield from iter_raw_samples(ShardReader(f, url, hash=False), url)
    except Exception as e:  # tarfile's ReadError, EOFError, fsspec's FileNotFoundError, an I/O error
        root = url.rsplit("/", 1)[0]
        raise UserError(
            f"shard {url} is unreadable ({type(e).__name__}: {e}); run `mvdata verify {root}`, delete it and "
            "rerun `mvdata shard` with the same --out to rewrite it"
        ) from None


def view_exts(sample: dict) -> list[str]:
    """PNG view extensions ("000.png", ...) of a raw 3D sample, sorted."""
    return sorted(k for k in sample if k.endswith(".png") and k[:3].isdigit() and k.count(".") == 1)


def parse_index(data: bytes | str, where: str = INDEX, strict: bool = True) -> dict[str, Any]:
    """The index document from index.json bytes.

    Raises UserError when it is not JSON, not an mvforge index of this ``FORMAT_VERSION`` (``strict``; a
    report reads hand-made ones too), or newer than this mvforge reads.
    """
    try:
        doc = json.loads(data)
    except ValueError:
        raise UserError(
            f"{where} is not valid JSON; delete it and re-run `mvdata shard` with the same --out"
        ) from None
    if not isinstance(doc, dict) or (strict and doc.get("format") != FORMAT):
        raise UserError(
            f"{where} is not an mvforge shard index (format {FORMAT!r}); pass an `mvdata shard` output"
        )
    version = doc.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise UserError(
            f"{where} has format_version {version} (this mvforge reads {FORMAT_VERSION}); upgrade mvforge"
        )
    if strict and version != FORMAT_VERSION:
        raise UserError(
            f"{where} has format_version {version!r}, not {FORMAT_VERSION}; re-run `mvdata shard` into a new --out"
        )
    return doc


def read_index(fs, root: str) -> dict[str, Any] | None:
    """The index document of the shard directory ``root`` on fsspec ``fs``; None when there is none yet (the
    shard run has not finished: index.json is written last)."""
    from mvforge.fsutil import read_bytes_or_none

    data = read_bytes_or_none(fs, f"{root}/{INDEX}")
    return None if data is None else parse_index(data, f"{root}/{INDEX}")
