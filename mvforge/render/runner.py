"""Run ONE object's render in a Blender child process that this module owns (design §4).

Why a child process per object: a long-lived bpy process leaks 10-50 MB per imported object, bpy is one per
process, and a crash or hang in an importer must cost one object, not the run. The child
(``python -m mvforge.render.worker JOB.json STAGING``) gets:
- its own process group (``start_new_session``), so a timeout kills Blender *and* anything it spawned;
- ``PR_SET_PDEATHSIG=SIGKILL``, so when the Ray worker that owns it dies (Ray only kills direct children of a
  worker, and not at all when the worker itself crashed) the kernel kills Blender too;
- a wall-clock timeout and a resident-memory cap over the whole group, polled from /proc;
- stdout and stderr in ``<out>/logs/<uid>.log``.

Outcome → record: exit 0 → the staging dir gets meta.json (written last) and is renamed onto the object dir;
exit 3 → the classified reason in result.json; any other exit → retried ``limits.retries`` times, then
``crashed``; timeout / memory cap → ``timeout`` / ``memory_limit`` (not retried: they would trip again).
Every failure is one atomic ``failed/<uid>.json`` with the log tail.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from mvforge.formats import renders as layout
from mvforge.fsutil import atomic_write_json, tmp_path, versions
from mvforge.render.config import LimitsConfig
from mvforge.render.worker import EXIT_FAILED, EXIT_OK, RESULT

JOB = "job.json"
LOGS_DIR = "logs"
LOG_TAIL_LINES = 40
POLL_S = 0.1
"""How often the child's exit is checked."""
MEMORY_POLL_S = 0.5
"""How often the group's resident memory is summed (a /proc scan; cheap, but not free)."""
TERM_GRACE_S = 3.0
"""Seconds between SIGTERM and SIGKILL of a group being stopped: Blender exits at once on SIGTERM."""
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Attempt:
    """How one child process ended."""

    kind: str
    """ok | failed (classified by the worker) | crashed | timeout | memory_limit"""
    returncode: int | None
    result: dict | None
    seconds: float
    peak_rss_bytes: int


def staging_dir(out: Path, uid: str) -> Path:
    return tmp_path(layout.object_dir(out, uid))


def log_path(out: Path, uid: str) -> Path:
    return Path(out) / LOGS_DIR / f"{uid}.log"


def run_object(
    job: dict,
    out: str | os.PathLike,
    limits: LimitsConfig,
    *,
    env: dict[str, str] | None = None,
    extra_meta: dict | None = None,
) -> dict:
    """Render ``job`` (from plan.plan_job, ``input_path`` local) into ``out``; return its manifest record.

    ``env``: extra environment variables for the child. ``extra_meta``: merged into meta.json (the download).
    Exactly one terminal record results: ``<object dir>/meta.json`` or ``failed/<uid>.json``.
    """
    out = Path(out)
    uid = layout.check_uid(job["uid"])
    log = log_path(out, uid)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("", encoding="utf-8")
    start = time.monotonic()
    attempt: Attempt | None = None
    n = 0
    for n in range(1, limits.retries + 2):
        staging = staging_dir(out, uid)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        atomic_write_json(staging / JOB, job)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"=== mvforge: attempt {n} of {limits.retries + 1}, pid {os.getpid()} ===\n")
        attempt = run_child(staging / JOB, staging, log, limits, env=env)
        if attempt.kind != "crashed":
            break
    assert attempt is not None
    seconds = time.monotonic() - start
    if attempt.kind == "ok":
        meta = _meta(job, attempt, n, seconds, extra_meta or {})
        finalize_ok(out, uid, staging, meta)
        return {
            "uid": uid,
            "status": "ok",
            "reason": None,
            "attempts": n,
            "seconds": round(seconds, 3),
            "render_seconds": attempt.result.get("timings", {}).get("render_s") if attempt.result else None,
            "views": len(job["views"]),
            "peak_rss_mb": round(attempt.peak_rss_bytes / 2**20, 1),
            # Rendered with broken texture nodes removed (materials.missing_textures = "strip", issue 11).
            "stripped_textures": int(
                ((attempt.result or {}).get("stats") or {}).get("stripped_textures") or 0
            ),
        }
    shutil.rmtree(staging, ignore_errors=True)
    reason, message = _classify(attempt, limits, n)
    return fail(
        out,
        uid,
        reason,
        message,
        attempts=n,
        source=job.get("source"),
        log=log,
        seconds=seconds,
        peak_rss_bytes=attempt.peak_rss_bytes,
    )


def _classify(attempt: Attempt, limits: LimitsConfig, attempts: int) -> tuple[str, str]:
    if attempt.kind == "failed":
        result = attempt.result or {}
        reason = result.get("reason")
        if reason not in layout.REASONS:
            return "crashed", f"worker reported an unknown reason {reason!r}: {result.get('message', '')}"
        return reason, str(result.get("message", ""))
    if attempt.kind == "timeout":
        return "timeout", f"render process exceeded the {limits.timeout_s:g} s limit and was killed"
    if attempt.kind == "memory_limit":
        return (
            "memory_limit",
            f"render process group used {attempt.peak_rss_bytes / 2**30:.2f} GB, above the "
            f"{limits.memory_gb:g} GB cap, and was killed",
        )
    code = attempt.returncode
    how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    return "crashed", f"render process died ({how}) on each of {attempts} attempt(s)"


# --- the child process ----------------------------------------------------------------------------------


@functools.cache
def _prctl():
    """libc's ``prctl``, looked up in the parent: between fork and exec the child of a multithreaded process
    (a Ray worker) must not take locks such as the dynamic loader's, so the child only makes the call."""
    return ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent():
    """A preexec_fn that makes the kernel SIGKILL the child when its parent dies (PR_SET_PDEATHSIG).

    The "parent" of PR_SET_PDEATHSIG is the *thread* that forked: run_child forks and waits in the same thread
    and kills the group before it returns, so a thread ending early cannot kill a live render by mistake.
    A parent that died between fork and prctl is caught by comparing getppid with the pid seen before fork.
    """
    prctl, parent = _prctl(), os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def run_child(
    job_path: Path,
    staging: Path,
    log: Path,
    limits: LimitsConfig,
    *,
    env: dict[str, str] | None = None,
    grace_s: float = TERM_GRACE_S,
) -> Attempt:
    """Run the worker once under the timeout and memory cap; the whole group is dead when this returns."""
    child_env = dict(os.environ)
    child_env.update(env or {})
    cmd = [sys.executable, "-m", "mvforge.render.worker", str(job_path), str(staging)]
    start = time.monotonic()
    deadline = start + limits.timeout_s
    cap = limits.memory_gb * 2**30
    peak = 0
    next_mem = start
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
    pgid = proc.pid  # start_new_session: the child leads its own group
    kind = None
    try:
        while not _exited(proc, POLL_S):
            now = time.monotonic()
            if now >= deadline:
                kind = "timeout"
                stop_group(pgid, proc, grace_s)
                break
            if now >= next_mem:
                next_mem = now + MEMORY_POLL_S
                rss = group_rss_bytes(pgid)
                peak = max(peak, rss)
                if rss > cap:
                    kind = "memory_limit"
                    stop_group(pgid, proc, grace_s)
                    break
    finally:
        # Whatever happened (an exception here included), nothing of the group may outlive the attempt. The
        # leader is reaped only after this killpg: until then its pid, which is the group id, cannot be reused
        # by an unrelated process group that the signal would hit.
        _killpg(pgid, signal.SIGKILL)
        proc.wait()
    seconds = time.monotonic() - start
    result = _read_result(staging)
    if kind is None:
        if proc.returncode == EXIT_OK and result and result.get("status") == "ok":
            kind = "ok"
        elif proc.returncode == EXIT_FAILED and result and result.get("status") == "failed":
            kind = "failed"
        else:
            kind = "crashed"
    return Attempt(kind, proc.returncode, result, seconds, peak)


def stop_group(pgid: int, proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the group, give the leader ``grace_s`` to exit, then SIGKILL the group (leader left unreaped)."""
    _killpg(pgid, signal.SIGTERM)
    _exited(proc, grace_s)
    _killpg(pgid, signal.SIGKILL)


def _exited(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the child to exit WITHOUT reaping it (waitid WNOWAIT): see run_child."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # reaped behind our back (a stray os.wait()): it has exited
            return True
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(0.05, left))


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_pids(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (from /proc/<pid>/stat, field 5)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # comm (field 2) may hold spaces and parentheses: split after its closing parenthesis.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            pids.append(int(entry.name))
    return pids


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of the whole process group: Blender and anything it spawned."""
    total = 0
    for pid in group_pids(pgid):
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def _read_result(staging: Path) -> dict | None:
    try:
        return json.loads((staging / RESULT).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# --- terminal records -----------------------------------------------------------------------------------


def _meta(job: dict, attempt: Attempt, attempts: int, seconds: float, extra: dict) -> dict:
    result = attempt.result or {}
    source = dict(job.get("source") or {})
    for key in ("caption", "name", "tags"):
        source.pop(key, None)
    if source.get("path") and not source.get("sha256") and Path(source["path"]).is_file():
        from mvforge.render.download import sha256_file

        st = os.stat(source["path"])
        source["sha256"] = sha256_file(source["path"])
        # Size and mtime as hashed: a resume re-hashes the file only when they changed (issue 12: hashing
        # every finished object's file on every resume was the driver's slowest step at 10⁵ objects).
        source["size"], source["mtime_ns"] = st.st_size, st.st_mtime_ns
    source.update(extra.get("source", {}))
    job_source = job.get("source") or {}
    timings = dict(result.get("timings") or {})
    timings.update(extra.get("timings", {}))
    timings["process_s"] = round(attempt.seconds, 3)
    timings["object_s"] = round(seconds, 3)
    vers = versions("bpy", "ray")
    vers.update(result.get("versions") or {})
    if result.get("blender"):
        vers["blender"] = result["blender"]
    cycles = job.get("cycles") or {}
    return layout.RenderMeta(
        uid=job["uid"],
        source=source,
        caption=job_source.get("caption", ""),
        name=job_source.get("name", ""),
        tags=list(job_source.get("tags") or []),
        normalization=result.get("normalization"),
        stats=result.get("stats"),
        hdri={k: v for k, v in (job.get("hdri") or {}).items() if k != "path"},
        seed=job.get("seed"),
        engine="CYCLES",
        samples=cycles.get("samples"),
        resolution=job.get("resolution"),
        views=len(job.get("views") or []),
        orbits=len({v.get("orbit", 0) for v in job.get("views") or []}),
        timings=timings,
        attempts=attempts,
        peak_rss_mb=round(attempt.peak_rss_bytes / 2**20, 1),
        versions=vers,
        device=result.get("device", "CPU"),
        cycles=result.get("cycles"),
    ).to_dict()


def finalize_ok(out: Path, uid: str, staging: Path, meta: dict) -> None:
    """meta.json last into staging, then one rename makes the object visible as done.

    Order matters for "exactly one terminal record" under SIGKILL at any point: an old failure record and an
    old object dir (``--retry-failed`` / ``--overwrite``) go first, so a kill in between leaves no record
    (the object is rendered again on resume), never two.
    """
    for name in (JOB, RESULT):
        (staging / name).unlink(missing_ok=True)
    atomic_write_json(staging / layout.META, meta)
    layout.failure_path(out, uid).unlink(missing_ok=True)
    discard_object_dir(out, uid)
    os.replace(staging, layout.object_dir(out, uid))


def discard_object_dir(out: Path, uid: str) -> None:
    """Remove ``uid``'s object dir so that no reader ever sees half of it: first a rename out of the way (one
    atomic step that hides meta.json), then the slow delete. A kill in between leaves a ``*.tmp-*`` dir that
    the next run's driver deletes."""
    final = layout.object_dir(out, uid)
    if not final.exists():
        return
    doomed = tmp_path(final, "old")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(final, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def record_failure(
    out: Path,
    uid: str,
    reason: str,
    message: str,
    *,
    attempts: int,
    source: dict | None,
    log: Path | None = None,
) -> None:
    """The one failure record of ``uid`` (any previous ok render of it is removed first)."""
    record = layout.FailureRecord(  # raises ValueError on a reason code outside layout.REASONS
        uid=uid,
        reason=reason,
        message=message,
        log_tail=log_tail(log) if log is not None else "",
        attempts=attempts,
        source=source,
    )
    discard_object_dir(out, uid)
    atomic_write_json(layout.failure_path(out, uid), record.to_dict())


def fail(
    out: Path,
    uid: str,
    reason: str,
    message: str,
    *,
    attempts: int,
    source: dict | None,
    log: Path | None = None,
    seconds: float = 0.0,
    peak_rss_bytes: int = 0,
) -> dict:
    """Write ``uid``'s failure record and return its manifest line (also for failures decided outside the
    runner: unknown format, download, a Ray task that died)."""
    record_failure(out, uid, reason, message, attempts=attempts, source=source, log=log)
    return {
        "uid": uid,
        "status": "failed",
        "reason": reason,
        "attempts": attempts,
        "seconds": round(seconds, 3),
        "render_seconds": None,
        "views": 0,
        "peak_rss_mb": round(peak_rss_bytes / 2**20, 1),
    }


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return ""
