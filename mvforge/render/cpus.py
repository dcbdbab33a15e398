"""CPU slots: each Blender child of a node renders on CPUs of its own (issue 12, `limits.pin_cpus`).

Why: Cycles under `threads = 1` keeps a second thread busy while one renders (Blender's TBB pool is sized from
the CPUs the process may use, and its idle worker spins): measured on a 2-vCPU VM, one `threads = 1` render
kept 2 threads busy for the speed of one; pinned to one CPU it kept 1 busy at the same speed. Two unpinned
`threads = 1` processes side by side each took 6.6-6.8 s per object, two pinned to CPUs 0 and 1 took 4.1-4.3 s
(1.6x; docs/bench/render_speed.md). So a Blender child is pinned to ``threads`` CPUs that no other mvforge
render on the node holds.

How: one lock file per CPU under ``$TMPDIR/mvforge-cpus-<user>/``; a process holds ``fcntl.flock`` on the
CPUs it renders on for as long as its Blender child lives. The kernel drops the locks when the holder dies
(a killed Ray worker frees its CPUs), and concurrent runs on one node share the CPUs without knowing of each
other. When fewer than ``threads`` CPUs are free (more workers x threads than cores) the child is not pinned:
the behaviour before this module.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import tempfile
from pathlib import Path


def lock_dir() -> Path:
    """Where the per-CPU lock files live (one directory per OS user, so users never block each other's files)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Path(tempfile.gettempdir()) / f"mvforge-cpus-{user}"


class CpuSlot:
    """``threads`` CPUs held for one Blender child; :meth:`release` (or the holder's death) frees them."""

    def __init__(self, cpus: list[int], fds: list[int]):
        self.cpus = cpus
        """CPU ids (as ``os.sched_setaffinity`` takes them), ascending."""
        self._fds = fds

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing the descriptor drops its flock
        self._fds = []


def acquire(threads: int) -> CpuSlot | None:
    """``threads`` CPUs of this process's allowed set that no other holder has, or None when there are not that
    many free (or the platform has no CPU affinity). Never blocks."""
    if threads < 1 or not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if threads > len(allowed):
        return None
    directory = lock_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    cpus: list[int] = []
    fds: list[int] = []
    for cpu in allowed:
        try:
            fd = os.open(directory / f"cpu-{cpu}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held by another render
            continue
        cpus.append(cpu)
        fds.append(fd)
        if len(cpus) == threads:
            return CpuSlot(cpus, fds)
    CpuSlot(cpus, fds).release()
    return None
