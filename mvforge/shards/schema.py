"""The shard writer's pieces: one webdataset sample per object (the format is ``mvforge.formats.shards``) and a
deterministic tar writer.

A sample with key ``<uid>`` holds, in sorted member order:
``<uid>.000.png`` ... (original PNG bytes, never re-encoded), ``<uid>.cameras.npy`` ((V, 4, 4) float32 c2w in
view order), ``<uid>.json`` ({"uid", "views": cameras.json views, "resolution", "convention", "meta": the
render's meta.json less machine-local fields, ``formats.shards.public_meta``}) and
``<uid>.txt`` (the caption). Keys contain no dot because webdataset splits a member name at its first dot.

Every tar header field that could vary between machines or runs is fixed (mtime 0, uid/gid 0, empty
owner names, mode 0o444), so the same input gives byte-identical tars (docs/design.md §8: resume ==
uninterrupted).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mvforge.formats import renders as layout
from mvforge.formats.shards import (  # noqa: F401  (the writer's names, re-exported for its callers)
    CAMERAS_EXT,
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    JSON_EXT,
    SPLITS,
    STATS_SUFFIX,
    TXT_EXT,
    iter_raw_samples,
    load_npy,
    png_ext,
    public_meta,
    shard_name,
    split_key,
    stats_name,
    view_exts,
)

# GNU format: uids may be 128 characters, past ustar's 100-character name field; GNU long-name records carry
# no timestamps, so they stay deterministic (PAX headers can carry float mtimes).
TAR_FORMAT = tarfile.GNU_FORMAT
TAR_MODE = 0o444


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class BadViewError(ValueError):
    """A view file that is not a whole PNG (wrong signature or no IEND chunk: overwritten or truncated)."""


def check_png(name: str, data: bytes) -> bytes:
    """``data`` if it starts with the PNG signature and ends with the IEND chunk, else BadViewError. A cheap
    structural check (no decode: the writer never re-encodes) that catches overwritten and truncated views."""
    if not (data.startswith(PNG_SIGNATURE) and data.endswith(PNG_IEND)):
        raise BadViewError(f"{name} is not a whole PNG (overwritten or truncated)")
    return data


class ViewSetError(ValueError):
    """A held-out view index (``ShardConfig.val_views``) that the object was not rendered with."""


def object_members(
    obj: layout.RenderedObject, keep: tuple[int, ...] = (), drop: tuple[int, ...] = ()
) -> dict[str, bytes]:
    """Extension -> bytes of one object's sample: every view, only the views ``keep`` (when given), less the
    views ``drop``. Raises FileNotFoundError when a view file is missing, BadViewError when one is not a whole
    PNG, and ViewSetError when a view of ``keep`` or ``drop`` is not among the object's."""
    cams = obj.cameras
    indices = [int(v["index"]) for v in cams["views"]]
    missing = sorted((set(keep) | set(drop)) - set(indices))
    if missing:
        raise ViewSetError(f"held-out view {missing[0]} is not among its views {indices[0]}-{indices[-1]}")
    picked = [i for i, index in enumerate(indices) if (not keep or index in keep) and index not in drop]
    views = [cams["views"][i] for i in picked]
    members: dict[str, bytes] = {}
    for v in views:
        name = v["file"]
        members[png_ext(int(v["index"]))] = check_png(name, (obj.path / name).read_bytes())
    members[CAMERAS_EXT] = npy_bytes(obj.c2w()[picked])
    doc = {
        "uid": obj.uid,
        "convention": cams.get("convention"),
        "resolution": cams.get("resolution"),
        "views": views,
        "meta": public_meta(obj.meta),
    }
    members[JSON_EXT] = json_bytes(doc)
    members[TXT_EXT] = obj.caption.encode("utf-8")
    return members


def object_size_bytes(obj_dir: Path) -> int:
    """Bytes an object adds to a shard, estimated from its files plus 1 KB of tar headers per member."""
    files = [p for p in obj_dir.iterdir() if p.is_file()]
    return sum(p.stat().st_size + 1024 for p in files)


class HashingWriter:
    """A write-only file wrapper that counts bytes and computes sha256 of what passes through."""

    def __init__(self, raw):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.nbytes += len(data)
        self.raw.write(data)
        return len(data)

    def tell(self) -> int:
        return self.nbytes


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _header(name: str, size: int) -> bytes:
    """The 512-byte GNU tar header tarfile writes for ``_tarinfo(name, size)``, built directly.

    tarfile's generic header code is the writer's largest per-member cost; names over 100 bytes (GNU long-name
    records) and sizes past 8 GB take tarfile's path. A test checks the bytes against tarfile's.
    """
    raw = name.encode("utf-8")
    if len(raw) > 100 or size >= 8**11:
        return _tarinfo(name, size).tobuf(TAR_FORMAT, "utf-8", "surrogateescape")
    head = b"".join(
        (
            raw.ljust(100, b"\0"),
            b"%07o\0" % TAR_MODE,
            b"0000000\0" * 2,  # uid, gid
            b"%011o\0" % size,
            b"00000000000\0",  # mtime 0
            b" " * 8,  # checksum placeholder, summed as spaces
            tarfile.REGTYPE,
            bytes(100),  # linkname
            tarfile.GNU_MAGIC,
            bytes(64 + 16 + 167),  # uname, gname, devmajor, devminor (NUL for regular files), prefix, pad
        )
    )
    return head[:148] + b"%06o\0" % sum(head) + head[155:]


def write_samples(fileobj, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write (key, {ext: bytes}) samples as a deterministic GNU tar to ``fileobj``; returns the sample count.

    Byte-identical to tarfile's ``addfile`` + ``close`` for the same members (tested), without its 16 KB
    copy loop and generic header code, which made the writer 3x slower than `tar cf` (bench/bench_shards.py).
    """
    n = 0
    for key, members in samples:
        for ext in sorted(members):
            data = members[ext]
            fileobj.write(_header(f"{key}.{ext}", len(data)))
            fileobj.write(data)
            fileobj.write(bytes(-len(data) % tarfile.BLOCKSIZE))
        n += 1
    # End of archive: two zero blocks, then zeros up to a whole record, as tarfile.close() writes.
    total = fileobj.tell() + 2 * tarfile.BLOCKSIZE
    fileobj.write(bytes(2 * tarfile.BLOCKSIZE + (-total % tarfile.RECORDSIZE)))
    return n
