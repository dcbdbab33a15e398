"""Atomic writes and run provenance shared by every stage (docs/design.md §2: write ``X.tmp-<pid>``, then
rename)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"
"""Every temporary file or directory mvforge writes has this in its name: ``<final name>.tmp-<pid>[-tag]``."""


def tmp_path(path: str | os.PathLike, tag: str = "") -> Path:
    """The temporary sibling a writer fills before renaming it onto ``path`` (a file or a directory)."""
    path = _named(path)
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}{'-' + tag if tag else ''}")


def _named(path: str | os.PathLike) -> Path:
    """``path``, made absolute when its last part is not a name (``.``, ``..``, ``dir/..``), so that its
    siblings are those of the directory it means, not the entries of the directory it is in."""
    path = Path(path)
    return Path(os.path.abspath(path)) if path.name in ("", "..") else path


def is_tmp(name: str | os.PathLike) -> bool:
    """True for a temporary name of :func:`tmp_path` (a leftover of a killed writer, never a result)."""
    return TMP_MARK in Path(name).name


def remove_dead_tmp(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary siblings of ``path`` that :func:`tmp_path` names (``<name>.tmp-<pid>`` or
    ``<name>.tmp-<pid>-<tag>``, files or directories) whose writer process no longer runs on this host: what a
    killed writer of ``path`` left behind (a converted checkpoint's can be gigabytes). A sibling of a live
    process, this one included, or of any other form is kept; a symlink is unlinked, never followed. Returns the
    paths actually removed (one that could not be, e.g. for permissions, is left and not returned). A writer of
    the same ``path`` on another host of a shared file system is not seen: give concurrent writers different
    outputs, as every mvforge stage asks."""
    import shutil

    path = _named(path)
    if not path.name:  # the file system's root has no siblings
        return []
    prefix = f"{path.name}{TMP_MARK}"
    try:
        siblings = list(path.parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for sibling in siblings:
        if not sibling.name.startswith(prefix):  # a name compared, never a glob pattern
            continue
        pid = sibling.name[len(prefix) :].split("-", 1)[0]
        if not (pid.isascii() and pid.isdigit()) or _alive(int(pid)):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                sibling.unlink()
        if not os.path.lexists(sibling):
            removed.append(sibling)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (this process counts; so does a pid no signal can reach)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:  # beyond a C int: no process has it
        return False
    return True


def tmp_url(url: str) -> str:
    """:func:`tmp_path` for an fsspec path or URL (``s3://b/x`` → ``s3://b/x.tmp-<pid>``)."""
    return f"{url}{TMP_MARK}{os.getpid()}"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # A full disk or a signal mid-write: leave no partial temporary behind (docs/reliability.md).
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        name_failure(e, path)
        raise


def name_failure(e: BaseException, path: str | os.PathLike) -> None:
    """Give an OSError raised by a write to ``path`` its file name (a failed ``write()`` carries none), so the
    one-line error names the file."""
    if isinstance(e, OSError) and e.filename is None:
        e.filename = str(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line with a single O_APPEND write, so concurrent appenders never interleave lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines file; a torn last line (a writer killed mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def versions(*extra: str) -> dict[str, str]:
    """Versions of mvforge, Python and the named packages (only those installed), for provenance records."""
    from importlib import metadata

    from mvforge import __version__

    out = {"mvforge": __version__, "python": platform.python_version()}
    for name in extra:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# --- fsspec (local paths and object-store URLs) -----------------------------------------------------------------


def open_fs(url: str | os.PathLike, storage_options: dict | None = None):
    """(fsspec file system, path inside it) for a local directory or a URL such as s3://bucket/shards."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(url), **(storage_options or {}))
    return fs, path.rstrip("/")


def put_bytes_atomic(fs, path: str, data: bytes) -> None:
    """:func:`atomic_write_bytes` through fsspec: a temporary sibling, then a move, so readers never see part
    of a file (object stores have no rename, but a move of one object is still all-or-nothing to readers)."""
    tmp = tmp_url(path)
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    except BaseException as e:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        name_failure(e, path)
        raise


def read_bytes_or_none(fs, path: str) -> bytes | None:
    """The bytes at ``path``, None when it does not exist."""
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
