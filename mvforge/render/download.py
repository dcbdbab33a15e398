"""HTTP(S) downloads of source objects, run inside the render task on the node that renders (docs/design.md
§4).

One object = one file: fetched with a socket timeout and a bounded number of retries with exponential
backoff, streamed into ``<dest>.tmp-<pid>`` while hashing, checked against the expected sha256 when the
source publishes one, then renamed onto ``dest``. A file already in the cache (with the right hash) is reused,
so a run works offline once its objects are cached. Any failure becomes a DownloadError, which the render
task records as the reason code ``download_failed`` instead of failing the run.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mvforge.fsutil import tmp_path

CHUNK_BYTES = 1 << 20
USER_AGENT = "mvforge-render"
# HTTP statuses worth retrying: the server is busy or briefly broken. Every other 4xx (404, 403, ...) is
# permanent, and retrying it only delays the failure record.
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(Exception):
    """A download that failed for good (after its retries); the object is recorded as download_failed."""

    reason = "download_failed"


@dataclass(frozen=True)
class Fetched:
    """What a download produced, for the object's meta.json."""

    path: Path
    sha256: str
    bytes: int
    cached: bool
    """True when the file was already in the cache and nothing was transferred."""
    attempts: int
    seconds: float


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    timeout_s: float = 120.0,
    retries: int = 3,
    backoff_s: float = 0.5,
) -> Fetched:
    """Download ``url`` to ``dest`` (atomically), or reuse ``dest`` when it is cached and matches ``sha256``.

    ``timeout_s`` bounds every socket operation (connect, each read): a server that stalls fails the attempt,
    while a large file that keeps flowing is never cut off. ``retries`` extra attempts follow transient
    failures (timeouts, connection errors, 5xx, a hash mismatch), waiting ``backoff_s`` x 2^k between them.
    """
    dest = Path(dest)
    start = time.monotonic()
    if dest.is_file():
        got = sha256_file(dest)
        if sha256 is None or got == sha256.lower():
            return Fetched(dest, got, dest.stat().st_size, True, 0, time.monotonic() - start)
        dest.unlink()  # a stale or corrupted cache entry: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    attempts = 0
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        attempts += 1
        try:
            got, size = _fetch_once(url, dest, timeout_s)
        except _Permanent as e:
            raise DownloadError(f"{url}: {e}") from None
        except (OSError, http.client.HTTPException) as e:
            errors.append(_describe(e))
            continue
        if sha256 is not None and got != sha256.lower():
            tmp_path(dest).unlink(missing_ok=True)
            errors.append(f"sha256 mismatch (expected {sha256.lower()}, got {got})")
            continue
        os.replace(tmp_path(dest), dest)
        return Fetched(dest, got, size, False, attempts, time.monotonic() - start)
    raise DownloadError(f"{url}: {attempts} attempts failed; last: {errors[-1]}")


class _Permanent(Exception):
    """An HTTP answer that another attempt will not change (404, 403, ...)."""


def _fetch_once(url: str, dest: Path, timeout_s: float) -> tuple[str, int]:
    """One attempt: stream ``url`` into dest's temporary sibling; return (sha256, bytes)."""
    tmp = tmp_path(dest)
    digest = hashlib.sha256()
    size = 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response, open(tmp, "wb") as f:
            expected = response.headers.get("Content-Length")
            while block := response.read(CHUNK_BYTES):
                digest.update(block)
                f.write(block)
                size += len(block)
            if expected is not None and int(expected) != size:
                raise OSError(f"truncated body: {size} of {expected} bytes")
            f.flush()
            os.fsync(f.fileno())
    except urllib.error.HTTPError as e:
        tmp.unlink(missing_ok=True)
        if e.code in RETRY_STATUS:
            raise OSError(f"HTTP {e.code} {e.reason}") from None
        raise _Permanent(f"HTTP {e.code} {e.reason}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return f"{type(e.reason).__name__}: {e.reason}"
    return f"{type(e).__name__}: {e}"
