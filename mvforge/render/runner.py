"""Run objects' renders in Blender child processes that this module owns (docs/design.md §4).

Why a child process: a long-lived bpy process leaks 10-50 MB per imported object, bpy is one per process, and
a crash or hang in an importer must cost one object, not the run. A child renders a small batch of objects in
turn (``limits.objects_per_process``, docs/design.md §4: the process start and ``import bpy`` are paid once
per batch, the scene is reset to factory settings between objects). The child
(``python -m mvforge.render.worker --serve FD``) gets:
- its own process group (``start_new_session``), so a timeout kills Blender *and* anything it spawned;
- ``PR_SET_PDEATHSIG=SIGKILL``, so when the Ray worker that owns it dies (Ray only kills direct children of a
  worker, and not at all when the worker itself crashed) the kernel kills Blender too;
- per object: a wall-clock timeout (from the job's hand-over; from the process start for its first object) and a
  resident-memory cap over the whole group, polled from /proc;
- per object: stdout and stderr in ``<out>/logs/<uid>.log`` (the worker re-points its descriptors per job).

Outcome → record, per object: ok → the staging dir gets meta.json (written last) and is renamed onto the object
dir; a classified failure → the reason in result.json; a process that died → retried ``limits.retries`` times
in a fresh process, then ``crashed``; timeout / memory cap → ``timeout`` / ``memory_limit`` (not retried: they
would trip again). A process that dies or is killed ends only the object it was rendering: the rest of the
batch goes on in a fresh process, and a crash or memory cap in a process that had rendered other objects first
gets one more attempt in a fresh process (it may be their leftovers), so no object fails because of a
neighbour. Every failure is one atomic ``failed/<uid>.json`` with the log tail.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import select
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
from mvforge.render import cpus
from mvforge.render.config import LimitsConfig
from mvforge.render.worker import RESULT

JOB = "job.json"
LOGS_DIR = "logs"
LOG_TAIL_LINES = 40
POLL_S = 0.1
"""How often the child's reply and exit are checked."""
MEMORY_POLL_S = 0.5
"""How often the group's resident memory is summed (a /proc scan; cheap, but not free)."""
TERM_GRACE_S = 3.0
"""Seconds between SIGTERM and SIGKILL of a group being stopped: Blender exits at once on SIGTERM."""
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Attempt:
    """How one object's render in a child process ended."""

    kind: str
    """ok | failed (classified by the worker) | crashed | timeout | memory_limit"""
    returncode: int | None
    """The process's exit status when it ended with this attempt; None when it lives on for the next object."""
    result: dict | None
    seconds: float
    """From the job's hand-over (from the process start for a process's first object) to its reply or kill."""
    peak_rss_bytes: int
    pid: int = 0
    """The Blender process."""
    position: int = 1
    """This object's place in its process: 1 = first (a fresh process), 2 = rendered after one other, ..."""
    cpus: list[int] | None = None
    """The CPUs the process was pinned to (``limits.pin_cpus``); None when it was not."""


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
    """Render ``job`` (from plan.plan_job, ``input_path`` local) into ``out`` in a fresh child process; return
    its manifest record. ``env``: extra environment variables for the child. ``extra_meta``: merged into
    meta.json (the download). Exactly one terminal record results: ``<object dir>/meta.json`` or
    ``failed/<uid>.json``."""
    return run_objects([job], out, limits, env=env, extra_meta=[extra_meta or {}])[0]


def run_objects(
    jobs: list[dict],
    out: str | os.PathLike,
    limits: LimitsConfig,
    *,
    env: dict[str, str] | None = None,
    extra_meta: list[dict] | None = None,
) -> list[dict]:
    """Render ``jobs`` in turn in one reused child process (a fresh one after any that died or was killed);
    return their manifest records in order (docs/design.md §4, Batches).

    Each object gets what :func:`run_object` gives one: its own timeout, memory cap, log, staging dir, retries
    and exactly one terminal record, written as soon as it finishes (so a kill of this process loses at most the
    object in progress). ``extra_meta``: one dict per job, merged into its meta.json.
    """
    out = Path(out)
    extras = extra_meta or [{} for _ in jobs]
    if len(extras) != len(jobs):
        raise ValueError(f"{len(jobs)} jobs but {len(extras)} extra_meta dicts")
    records = []
    # The live process, kept where the finally below sees it even when _render_in raises half-way.
    state: dict[str, BlenderProcess | None] = {"child": None}
    try:
        for job, extra in zip(jobs, extras, strict=True):
            records.append(_render_in(state, job, out, limits, env, extra))
    finally:
        if state["child"] is not None:
            state["child"].close()
    return records


def _render_in(state: dict, job: dict, out: Path, limits: LimitsConfig, env, extra: dict) -> dict:
    """One object through ``state["child"]`` (or fresh processes, left in ``state`` for the next object); return
    its manifest record."""
    uid = layout.check_uid(job["uid"])
    log = log_path(out, uid)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("", encoding="utf-8")
    start = time.monotonic()
    budget = limits.retries + 1
    second_chance = False
    n = 0
    while True:
        n += 1
        staging = staging_dir(out, uid)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        atomic_write_json(staging / JOB, job)
        reused = state["child"] is not None
        with open(log, "a", encoding="utf-8") as f:
            f.write(
                f"=== mvforge: attempt {n} (up to {budget}), Ray worker pid {os.getpid()}, "
                f"{'reused' if reused else 'new'} Blender process ===\n"
            )
        if state["child"] is None:
            pin = int((job.get("cycles") or {}).get("threads", 1)) if limits.pin_cpus else None
            state["child"] = BlenderProcess(log, env, threads=pin)
        attempt = state["child"].render(uid, staging / JOB, staging, log, limits)
        if attempt.returncode is not None:
            state["child"] = None  # it died or was killed: the next attempt or object gets a fresh one
        if attempt.kind != "ok" and disk_full(out):
            # The machine's fault, not the object's: no failure record (a rerun renders it), no retry that
            # would fail the same way; the driver stops with one line (docs/reliability.md).
            shutil.rmtree(staging, ignore_errors=True)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))
        if attempt.kind in ("crashed", "memory_limit") and attempt.position > 1 and not second_chance:
            # The process had rendered other objects first: what they left (memory, a broken state) may be the
            # cause, so this object gets a fresh process before it is judged.
            second_chance = True
            budget += 1
            continue
        if attempt.kind == "crashed" and n < budget:
            continue
        break
    seconds = time.monotonic() - start
    if attempt.kind == "ok":
        meta = _meta(job, attempt, n, seconds, extra)
        finalize_ok(out, uid, staging, meta)
        rec = {
            "uid": uid,
            "status": "ok",
            "reason": None,
            "attempts": n,
            "seconds": round(seconds, 3),
            "render_seconds": attempt.result.get("timings", {}).get("render_s") if attempt.result else None,
            "views": len(job["views"]),
            "peak_rss_mb": round(attempt.peak_rss_bytes / 2**20, 1),
            # Rendered with broken texture nodes removed (materials.missing_textures = "strip";
            # docs/design.md §2.1).
            "stripped_textures": int(
                ((attempt.result or {}).get("stats") or {}).get("stripped_textures") or 0
            ),
        }
        return rec
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


DISK_FULL_BYTES = 1 << 20
"""Free space under which a failed render is put down to the disk: Blender's image writer reports a full disk
as a truncated PNG or a dead process, never as ENOSPC."""


def disk_full(out: Path) -> bool:
    """True when the file system of ``out`` has less than :data:`DISK_FULL_BYTES` free for this user."""
    try:
        st = os.statvfs(out)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < DISK_FULL_BYTES


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
    result = attempt.result or {}
    if result.get("status") == "error":
        # An exception inside Blender (the worker wrote it before ending; its traceback is in the log).
        return (
            "crashed",
            f"render raised {result.get('message')} (last of {attempts} attempt(s); traceback in the log)",
        )
    return "crashed", f"render process died ({how}) on each of {attempts} attempt(s)"


# --- the child process ----------------------------------------------------------------------------------


@functools.cache
def _prctl():
    """libc's ``prctl``, looked up in the parent: between fork and exec the child of a multithreaded process
    (a Ray worker) must not take locks such as the dynamic loader's, so the child only makes the call."""
    return ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent(cpus: list[int] | None = None):
    """A preexec_fn that makes the kernel SIGKILL the child when its parent dies (PR_SET_PDEATHSIG) and, with
    ``cpus``, pins it to those CPUs before Blender starts any thread (``mvforge.render.cpus``).

    The "parent" of PR_SET_PDEATHSIG is the *thread* that forked: run_objects forks, waits and closes its
    processes in the same thread, killing each group before it returns, so a thread ending early cannot kill a live render by mistake.
    A parent that died between fork and prctl is caught by comparing getppid with the pid seen before fork.
    """
    prctl, parent = _prctl(), os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
        if cpus:
            try:
                os.sched_setaffinity(0, cpus)
            except OSError:
                pass  # CPUs taken away since they were locked (a cgroup change): run unpinned rather than fail

    return arm


class BlenderProcess:
    """One Blender child in serve mode (``mvforge.render.worker --serve``), rendering the jobs it is handed in
    turn; the whole group is dead when :meth:`render` returns an attempt with a ``returncode`` and after
    :meth:`close`."""

    def __init__(self, log: Path, env: dict[str, str] | None = None, threads: int | None = None):
        """``threads``: pin the child to that many CPUs no other render on the node holds (``limits.pin_cpus``;
        None = not pinned); ``self.cpus`` is what it got (None when not pinned)."""
        child_env = dict(os.environ)
        child_env.update(env or {})
        self.slot = cpus.acquire(threads) if threads else None
        self.cpus = self.slot.cpus if self.slot is not None else None
        # Replies come on a pipe of their own: stdout and stderr are the objects' logs.
        read_fd, write_fd = os.pipe()
        cmd = [sys.executable, "-m", "mvforge.render.worker", "--serve", str(write_fd)]
        try:
            with open(log, "ab") as logf:
                self.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=child_env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(self.cpus),
                    pass_fds=(write_fd,),
                )
        except BaseException:
            os.close(read_fd)
            if self.slot is not None:
                self.slot.release()
            raise
        finally:
            os.close(write_fd)
        self.pgid = self.proc.pid  # start_new_session: the child leads its own group
        self.started = time.monotonic()
        self.served = 0
        self._reply = read_fd
        self._buffer = b""

    def render(self, uid: str, job_path: Path, staging: Path, log: Path, limits: LimitsConfig) -> Attempt:
        """Hand one job over and wait for its reply under the object's timeout and the memory cap."""
        self.served += 1
        position = self.served
        start = self.started if position == 1 else time.monotonic()
        deadline = start + limits.timeout_s
        cap = limits.memory_gb * 2**30
        peak = 0
        next_mem = time.monotonic()
        kind = None
        reply = None
        line = json.dumps({"uid": uid, "job": str(job_path), "staging": str(staging), "log": str(log)})
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            kind = "crashed"  # it died between two objects
        try:
            while kind is None:
                reply, eof = self._read_reply(POLL_S)
                if reply is not None:
                    break
                if eof or _exited(self.proc, 0):
                    reply, _ = self._read_reply(0)  # a reply written just before it ended still counts
                    if reply is None:
                        kind = "crashed"
                    break
                now = time.monotonic()
                if now >= deadline:
                    kind = "timeout"
                    stop_group(self.pgid, self.proc, TERM_GRACE_S)
                    break
                if now >= next_mem:
                    next_mem = now + MEMORY_POLL_S
                    rss = group_rss_bytes(self.pgid)
                    peak = max(peak, rss)
                    if rss > cap:
                        kind = "memory_limit"
                        stop_group(self.pgid, self.proc, TERM_GRACE_S)
                        break
        except BaseException:
            self.close(kill=True)
            raise
        seconds = time.monotonic() - start
        peak = max(peak, group_rss_bytes(self.pgid)) if kind is None else peak
        result = _read_result(staging)
        if kind is None:
            status = (reply or {}).get("status")
            if status in ("ok", "failed") and result and result.get("status") == status:
                kind = status
            else:
                kind = "crashed"  # a reply without its result.json: nothing to trust in this process
        returncode = None
        if kind not in ("ok", "failed") or _exited(self.proc, 0):
            # Killed, crashed, or ended right after its reply: the next object needs a fresh process.
            returncode = self.close(kill=True)
        return Attempt(kind, returncode, result, seconds, peak, self.proc.pid, position, self.cpus)

    def _read_reply(self, timeout_s: float) -> tuple[dict | None, bool]:
        """(the next reply line, parsed; None if none within ``timeout_s``) and whether the pipe hit its end."""
        eof = False
        if b"\n" not in self._buffer:
            ready, _, _ = select.select([self._reply], [], [], timeout_s)
            if ready:
                chunk = os.read(self._reply, 65536)
                eof = not chunk
                self._buffer += chunk
        if b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                return json.loads(line), False
            except ValueError:
                return {}, False
        return None, eof

    def close(self, kill: bool = False) -> int | None:
        """End the process: after the last job it exits by itself at the end of stdin (given the SIGTERM grace);
        then, whatever happened, SIGKILL the group so nothing of it outlives the batch. Returns its exit status.

        The leader is reaped only after this killpg: until then its pid, which is the group id, cannot be
        reused by an unrelated process group that the signal would hit.
        """
        if self._reply is None:
            return self.proc.returncode
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if not kill:
            _exited(self.proc, TERM_GRACE_S)
        _killpg(self.pgid, signal.SIGKILL)
        self.proc.wait()
        os.close(self._reply)
        self._reply = None
        if self.slot is not None:
            self.slot.release()  # only now: nothing of the group runs on its CPUs any more
        return self.proc.returncode


def stop_group(pgid: int, proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the group, give the leader ``grace_s`` to exit, then SIGKILL the group (leader left unreaped)."""
    _killpg(pgid, signal.SIGTERM)
    _exited(proc, grace_s)
    _killpg(pgid, signal.SIGKILL)


def _exited(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the child to exit WITHOUT reaping it (waitid WNOWAIT): see BlenderProcess.close."""
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
        # Size and mtime as hashed: a resume re-hashes the file only when they changed (hashing
        # every finished object's file on every resume was the driver's slowest step at 10⁵ objects).
        source["size"], source["mtime_ns"] = st.st_size, st.st_mtime_ns
    source.update(extra.get("source", {}))
    job_source = job.get("source") or {}
    timings = dict(result.get("timings") or {})
    timings.update(extra.get("timings", {}))
    # The Blender process's time for this object: from its start for a process's first object (process start and
    # `import bpy` included), from the hand-over for the others (docs/design.md §4).
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
        hdri=(
            {k: v for k, v in job["hdri"].items() if k != "path"} | (result.get("hdri") or {})
            if job.get("hdri")
            else None
        ),
        lamps=job.get("lamps"),
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
        process={
            "pid": attempt.pid,
            "position": attempt.position,
            "reused": attempt.position > 1,
            "cpus": attempt.cpus,
        },
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
