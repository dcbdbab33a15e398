"""Resolve the SOURCE arguments of `mvdata render` into SourceObjects with unique, dot-free uids.

Sources, any mix:
- ``demo``: the embedded demo objects (mvforge.assets).
- a directory (searched recursively for the extensions of ``plan.FORMATS``), a glob (its matches with those
  extensions), or single files. A single file with an unknown extension still becomes an object: it is
  recorded as ``unsupported_format``, so one odd file never stops a run. Only regular files (or links to them)
  are objects: a named pipe, socket, device or broken link given as SOURCE is a UserError naming what it is;
  inside a directory or matched by a glob it is skipped, counted, and reported in one warning line on stderr
  (found with stat, never opened: opening a FIFO blocks until something writes to it).
- ``objaverse``: Objaverse 1.0, selected with ``--uids FILE`` / ``--lvis CATEGORY`` / ``--limit N``, read from
  the metadata files of the ``objaverse`` package, in the package's own layout but under a configurable cache
  directory (the package hard-codes ~/.objaverse). The objects themselves are downloaded later, inside the
  render task on the node that renders.

Local uids come from the file stem with everything outside [A-Za-z0-9_-] replaced (a uid is a path component
and a webdataset key, which must not contain a dot: docs/design.md §2.3); two files with the same stem are
told apart by a short hash of their path, so the uids do not depend on the order of the arguments.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from mvforge.errors import UserError
from mvforge.formats.renders import check_uid
from mvforge.render.plan import FORMATS, SourceObject

# The Hugging Face dataset the objaverse package downloads from (objaverse/__init__.py, v0.1.7).
OBJAVERSE_URL = "https://huggingface.co/datasets/allenai/objaverse/resolve/main"
OBJAVERSE_URL_ENV = "MVFORGE_OBJAVERSE_URL"
CACHE_ENV = "MVFORGE_CACHE"
# objaverse 0.1.7 keeps everything under BASE_PATH/hf-objaverse-v1; the same sub-layout is used here, so
# MVFORGE_CACHE=~/.objaverse reuses a cache that the package itself filled.
OBJAVERSE_SUBDIR = "hf-objaverse-v1"
OBJECT_PATHS = "object-paths.json.gz"
LVIS = "lvis-annotations.json.gz"
MAX_UID_STEM = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class ObjaverseSelection:
    """Which Objaverse 1.0 objects the ``objaverse`` source stands for."""

    uids_file: Path | None = None
    """A text file with one Objaverse uid per line (``#`` comments and blank lines ignored)."""
    lvis: str | None = None
    """An LVIS category (e.g. ``chair``): only its objects; combined with ``uids_file`` as an intersection."""
    limit: int | None = None
    """Keep the first N of the sorted selection."""


def cache_dir(configured: Path | None = None) -> Path:
    """The download cache: the configured dir, else $MVFORGE_CACHE, else ~/.cache/mvforge."""
    if configured is not None:
        return Path(configured).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mvforge"


def objaverse_url(configured: str | None = None) -> str:
    return (configured or os.environ.get(OBJAVERSE_URL_ENV) or OBJAVERSE_URL).rstrip("/")


def resolve_sources(
    args: list[str] | tuple[str, ...],
    *,
    captions: Path | None = None,
    objaverse: ObjaverseSelection | None = None,
    cache: Path | None = None,
    base_url: str | None = None,
    download_timeout_s: float = 120.0,
    download_retries: int = 3,
) -> list[SourceObject]:
    """All objects named by ``args``, deduplicated, with unique uids, in a stable order."""
    if not args:
        raise UserError("no SOURCE given; pass demo, objaverse, a directory, a glob or 3D files")
    objaverse = objaverse or ObjaverseSelection()
    if (objaverse.uids_file or objaverse.lvis or objaverse.limit is not None) and "objaverse" not in args:
        raise UserError("--uids, --lvis and --limit select Objaverse objects; add the source `objaverse`")
    local: list[Path] = []
    skipped: list[tuple[Path, str]] = []  # entries of directories and globs that are not regular files
    found: list[SourceObject] = []
    for arg in args:
        if arg == "demo":
            found.extend(_demo_objects())
        elif arg == "objaverse":
            found.extend(
                objaverse_objects(
                    objaverse,
                    cache=cache_dir(cache),
                    base_url=objaverse_url(base_url),
                    timeout_s=download_timeout_s,
                    retries=download_retries,
                )
            )
        else:
            local.extend(_expand_local(arg, skipped))
    found.extend(_local_objects(local))
    objects = _dedupe(found)
    rows = read_captions(captions) if captions is not None else []
    objects, named = _captions_by_path(objects, rows)
    objects = _unique_uids(objects, keep=named)
    objects = _captions_by_uid(objects, rows)
    for obj in objects:
        check_uid(obj.uid)
    if skipped:
        from mvforge.progress import console

        first, kind = skipped[0]
        what = (
            "entry that is not a regular file" if len(skipped) == 1 else "entries that are not regular files"
        )
        console.print(
            f"warning: skipped {len(skipped)} {what} (first: {first}, {kind}); 3D sources must be regular files",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return objects


# --- local files -----------------------------------------------------------------------------------------


def _expand_local(arg: str, skipped: list[tuple[Path, str]]) -> list[Path]:
    """The 3D files ``arg`` names; entries of a directory or glob that are not regular files are appended to
    ``skipped`` as (path, what it is) instead."""
    path = Path(arg).expanduser()
    if path.is_dir():
        files = _regular_3d_files(sorted(path.rglob("*")), skipped)
        if not files:
            known = ", ".join(sorted(FORMATS))
            raise UserError(f"directory {path} holds no 3D file ({known}); point SOURCE at one that does")
        return files
    if path.is_file():
        return [path]
    kind = _not_regular(path)
    if kind is not None:
        raise UserError(f"source {arg!r} exists but is {kind}; pass a regular 3D file, a directory or a glob")
    if _GLOB_CHARS & set(arg):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(arg), recursive=True))
        # Like a directory, a pattern keeps only 3D files: `models/*` must not turn every .mtl and texture
        # next to an OBJ into an unsupported_format record.
        files = _regular_3d_files(files, skipped)
        if not files:
            raise UserError(f"glob {arg!r} matches no 3D file; quote it and check the pattern")
        return files
    raise UserError(
        f"source {arg!r} is neither demo, objaverse, an existing file or directory, nor a glob; fix the path"
    )


def _regular_3d_files(paths: list[Path], skipped: list[tuple[Path, str]]) -> list[Path]:
    files = []
    for p in paths:
        if p.is_file():
            if _ext(p) in FORMATS:
                files.append(p)
        elif (kind := _not_regular(p)) is not None:
            skipped.append((p, kind))
    return files


def _not_regular(path: Path) -> str | None:
    """What ``path`` is when it exists (or is a link) but is neither a regular file nor a directory, e.g. "a named
    pipe (FIFO)"; None otherwise. Uses stat only: opening a FIFO would block until a writer comes."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if path.is_symlink() else None
    except OSError as e:  # a link loop, a directory without search permission
        return f"unreadable ({e.strerror})"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kinds = [
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    return next((name for test, name in kinds if test(mode)), "a special file")


def _ext(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def _local_objects(paths: list[Path]) -> list[SourceObject]:
    out = []
    for p in paths:
        p = p.resolve()
        out.append(
            SourceObject(
                uid=safe_uid(p.stem),
                kind="local",
                ext=_ext(p),
                path=str(p),
                caption=readable_name(p.stem),
                name=p.name,
            )
        )
    return out


def safe_uid(stem: str) -> str:
    """A uid from a file stem: runs of characters outside [A-Za-z0-9_-] become one '_'."""
    uid = _UNSAFE.sub("_", stem).strip("_")[:MAX_UID_STEM]
    return uid or "object"


def readable_name(stem: str) -> str:
    """``CesiumMilkTruck`` / ``office_chair-02`` → ``cesium milk truck`` / ``office chair 02``."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", stem)
    text = re.sub(r"[_\-.\s]+", " ", text)
    return text.strip().lower()


def _demo_objects() -> list[SourceObject]:
    try:
        from mvforge.assets import list_demo_objects
    except ImportError:
        raise UserError(
            "the demo objects are not available in this install (mvforge.assets.list_demo_objects is "
            "missing); reinstall mvforge or render files/objaverse instead"
        ) from None
    out = []
    for d in list_demo_objects():
        path = Path(d.path)
        out.append(
            SourceObject(
                uid=d.uid,
                kind="demo",
                ext=_ext(path),
                path=str(path),
                caption=d.caption,
                name=d.uid,
            )
        )
    return out


def _dedupe(objects: list[SourceObject]) -> list[SourceObject]:
    """The same file or URL named twice (a dir and a glob over it) is one object."""
    seen: set[tuple] = set()
    out = []
    for obj in objects:
        key = (obj.url,) if obj.url else (obj.path,)
        if key in seen:
            continue
        seen.add(key)
        out.append(obj)
    return out


def _unique_uids(objects: list[SourceObject], keep: set[int]) -> list[SourceObject]:
    """Resolve uid collisions by giving some objects a ``-<8 hex>`` suffix from their path or URL.

    Uids collide when they are equal ignoring case: an object directory is named by its uid, and on a
    case-insensitive filesystem (macOS, Windows) ``Chair`` and ``chair`` would share one (docs/design.md
    §2.1). Uids given by someone (demo and Objaverse uids, sidecar rows: the indices in ``keep``) never
    change; two of them colliding is a user error. Among uids derived from file stems, the first path in sort
    order keeps the plain stem, so uids do not depend on the order of the arguments.
    """
    groups: dict[str, list[int]] = {}
    for i, obj in enumerate(objects):
        groups.setdefault(obj.uid.casefold(), []).append(i)
    out = list(objects)
    for idx in groups.values():
        if len(idx) == 1:
            continue
        given = [i for i in idx if i in keep or objects[i].kind != "local"]
        if len(given) > 1:
            a, b = (objects[i].url or objects[i].path for i in given[:2])
            ua, ub = (objects[i].uid for i in given[:2])
            same = (
                f"uid {ua} is given to both" if ua == ub else f"uids {ua} and {ub} (equal ignoring case) name"
            )
            raise UserError(f"{same} {a} and {b}; give each its own uid in --captions")
        derived = sorted(
            (i for i in idx if i not in given), key=lambda i: objects[i].url or objects[i].path or ""
        )
        for i in derived[0 if given else 1 :]:
            where = objects[i].url or objects[i].path or ""
            short = hashlib.sha1(where.encode()).hexdigest()[:8]
            out[i] = replace(objects[i], uid=f"{objects[i].uid[:MAX_UID_STEM]}-{short}")
    return out


# --- caption sidecar ------------------------------------------------------------------------------------


def read_captions(path: Path) -> list[dict]:
    """Rows ``{uid, path, caption}`` of a CSV (with a header) or JSONL sidecar; uid or path may be empty."""
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise UserError(f"captions file {path} {what}; pass a CSV or JSONL file to --captions")
    rows: list[dict] = []
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets save CSV with a byte-order mark
    except UnicodeDecodeError as e:
        raise UserError(
            f"captions file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8"
        ) from None
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{n} is not a JSON object; write one object per line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{n} is not a JSON object; write one object per line")
            rows.append(row)
    elif path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if reader.fieldnames is None or "caption" not in reader.fieldnames:
            raise UserError(f"{path} needs a header row with a caption column and a uid or path column")
        rows = list(reader)
    else:
        raise UserError(f"captions file {path} must end in .csv, .tsv or .jsonl")
    out = []
    for n, row in enumerate(rows, 1):
        uid = str(row.get("uid") or "").strip()
        rel = str(row.get("path") or "").strip()
        # A short CSV row reads its missing cells as None: a missing caption, not the caption "None".
        if row.get("caption") is None or not (uid or rel):
            raise UserError(f"{path} row {n} needs a caption and a uid or a path")
        full = ""
        if rel:
            p = Path(rel).expanduser()
            full = str((p if p.is_absolute() else path.parent / p).resolve())
        out.append({"uid": uid, "path": full, "caption": str(row["caption"])})
    return out


def _captions_by_path(objects: list[SourceObject], rows: list[dict]) -> tuple[list[SourceObject], set[int]]:
    """Captions of rows that name a local file, and their uid when the row gives one; returns the objects and
    the indices whose uid a row gave (those never change in _unique_uids)."""
    by_path = {row["path"]: row for row in rows if row["path"]}
    out, named = [], set()
    for i, obj in enumerate(objects):
        row = by_path.get(obj.path or "") if obj.kind != "objaverse" else None
        if row is None:
            out.append(obj)
            continue
        if row["uid"]:
            named.add(i)
        out.append(replace(obj, uid=check_uid(row["uid"]) if row["uid"] else obj.uid, caption=row["caption"]))
    return out, named


def _captions_by_uid(objects: list[SourceObject], rows: list[dict]) -> list[SourceObject]:
    """Captions of rows that name only a uid: applied to the final uids, after collisions were resolved."""
    by_uid = {row["uid"]: row for row in rows if row["uid"] and not row["path"]}
    return [replace(o, caption=by_uid[o.uid]["caption"]) if o.uid in by_uid else o for o in objects]


# --- Objaverse 1.0 --------------------------------------------------------------------------------------


def objaverse_objects(
    selection: ObjaverseSelection,
    *,
    cache: Path,
    base_url: str,
    timeout_s: float = 120.0,
    retries: int = 3,
) -> list[SourceObject]:
    """SourceObjects for the selected Objaverse 1.0 uids; metadata files are fetched into ``cache`` once.

    Each object's ``path`` is where its GLB lands in the cache (the package's layout) and ``url`` where it is
    downloaded from; the download itself happens in the render task.
    """
    root = cache / OBJAVERSE_SUBDIR
    paths = _load_gz_json(_metadata(root, OBJECT_PATHS, base_url, timeout_s, retries))
    if selection.limit is not None and selection.limit < 1:
        raise UserError(f"--limit must be at least 1, got {selection.limit}")
    wanted: list[str] | None = None
    if selection.uids_file is not None:
        wanted = _read_uid_list(Path(selection.uids_file))
        unknown = [u for u in wanted if u not in paths]
        if unknown:
            raise UserError(
                f"{len(unknown)} uid(s) from {selection.uids_file} are not in Objaverse 1.0 "
                f"(first: {unknown[0]}); remove them from the file"
            )
    if selection.lvis is not None:
        lvis = _load_gz_json(_metadata(root, LVIS, base_url, timeout_s, retries))
        if selection.lvis not in lvis:
            close = sorted(c for c in lvis if selection.lvis.lower() in c.lower())[:5]
            hint = f" (similar: {', '.join(close)})" if close else ""
            raise UserError(f"LVIS category {selection.lvis!r} does not exist{hint}; check the spelling")
        members = set(lvis[selection.lvis])
        wanted = [u for u in wanted if u in members] if wanted is not None else sorted(members)
    if wanted is None:
        wanted = sorted(paths)
    if selection.limit is not None:
        wanted = wanted[: selection.limit]
    annotations = _annotations(root, [paths[u] for u in wanted], base_url, timeout_s, retries)
    out = []
    for uid in wanted:
        rel = paths[uid]
        ann = annotations.get(uid, {})
        name = str(ann.get("name") or "").strip()
        tags = tuple(str(t.get("name", t) if isinstance(t, dict) else t) for t in ann.get("tags") or ())
        caption = ", ".join(filter(None, [name, *tags]))  # "Red Chair, chair, furniture"
        out.append(
            SourceObject(
                uid=uid,
                kind="objaverse",
                ext=_ext(Path(rel)),
                path=str(root / rel),
                url=f"{base_url}/{rel}",
                sha256=ann.get("sha256"),
                caption=caption,
                name=name,
                tags=tags,
            )
        )
    return out


def _read_uid_list(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"uid list {path} does not exist; pass a text file with one uid per line to --uids")
    uids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            uids.append(line.removesuffix(".glb"))
    if not uids:
        raise UserError(f"uid list {path} is empty; put one Objaverse uid per line")
    return list(dict.fromkeys(uids))


def _metadata(root: Path, rel: str, base_url: str, timeout_s: float, retries: int) -> Path:
    """A metadata file from the cache, downloaded on first use (so later runs work offline)."""
    from mvforge.render.download import DownloadError, fetch

    dest = root / rel
    try:
        fetch(f"{base_url}/{rel}", dest, timeout_s=timeout_s, retries=retries)
    except DownloadError as e:
        raise UserError(
            f"cannot get Objaverse metadata {rel} ({e}); check the network, or fill the cache {root.parent} "
            f"(--cache-dir / {CACHE_ENV})"
        ) from None
    return dest


def _load_gz_json(path: Path) -> dict:
    try:
        with gzip.open(path, "rb") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError, EOFError) as e:
        raise UserError(
            f"Objaverse metadata {path} is unreadable ({e}); delete it so it is fetched again"
        ) from None


def _annotations(
    root: Path, object_paths: list[str], base_url: str, timeout_s: float, retries: int
) -> dict[str, dict]:
    """Per-uid annotations (name, tags, ...) from the metadata/<dir>.json.gz files of the selected objects."""
    # object paths look like glbs/000-023/<uid>.glb; the annotations are split by that middle directory.
    dirs = sorted({p.split("/")[1] for p in object_paths if p.count("/") >= 2})
    out: dict[str, dict] = {}
    for d in dirs:
        out.update(_load_gz_json(_metadata(root, f"metadata/{d}.json.gz", base_url, timeout_s, retries)))
    return out
