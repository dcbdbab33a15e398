"""CPU slots: each Blender child of a node renders on CPUs of its own (`limits.pin_cpus`, docs/design.md §4).

Why: Cycles under `threads = 1` keeps a second thread busy while one renders (Blender's TBB pool is sized from
the CPUs the process may use, and its idle worker spins): one `threads = 1` render keeps 2 threads busy for
the speed of one; pinned to one CPU it keeps 1 busy at the same speed, and two pinned renders side by side run
markedly faster than two unpinned (figures: docs/benchmarks.md, docs/bench/render_speed.md). So a Blender
child is pinned to ``threads`` CPUs that no other mvforge render on the node holds.

How: one lock file per CPU in ONE directory per node, whoever runs the render (``lock_dir``: /dev/shm, else
/tmp; ``MVFORGE_CPU_LOCKS`` overrides): renders with different TMPDIRs or users would otherwise
not see each other's locks and stack on the same CPUs. A process holds ``fcntl.flock`` on the CPUs it renders
on for as long as its Blender child lives; the kernel drops the locks when the holder dies (a killed Ray worker
frees its CPUs), and concurrent runs on one node share the CPUs without knowing of each other. Lock files are
opened read-only (flock needs no write access), never through a symlink. When fewer than ``threads`` CPUs are
free (more workers x threads than cores), or the directory is unusable, the child is not pinned: the behaviour
before this module.
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from pathlib import Path


def lock_dir() -> Path:
    """The node-wide directory of the per-CPU lock files: ``$MVFORGE_CPU_LOCKS``, else /dev/shm/mvforge-cpus
    (tmpfs: node-local and empty after a reboot), else /tmp/mvforge-cpus. Deliberately not per
    user or per TMPDIR (every render on the node must see every lock)."""
    override = os.environ.get("MVFORGE_CPU_LOCKS")
    if override:
        return Path(override)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        base = shm
    else:  # /tmp itself, not $TMPDIR (which differs between jobs on one node, e.g. under SLURM)
        base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())
    return base / "mvforge-cpus"


def _usable(directory: Path) -> bool:
    """Create the shared directory (sticky and world-writable, as /tmp) or accept it if it is a real directory."""
    try:
        directory.mkdir(mode=0o1777, parents=True, exist_ok=True)
        st = os.lstat(directory)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False  # a symlink or a file in its place: run unpinned rather than follow it
    shared = "MVFORGE_CPU_LOCKS" not in os.environ  # a directory the user named keeps its own permissions
    if shared and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != 0o1777:
        try:
            os.chmod(directory, 0o1777)  # mkdir's mode is cut by the umask; other users must create files too
        except OSError:
            pass
    return True


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
    if not _usable(directory):
        return None
    cpus: list[int] = []
    fds: list[int] = []
    for cpu in allowed:
        try:
            # Read-only is enough for flock, so a lock file another user created serves this one too.
            fd = os.open(
                directory / f"cpu-{cpu}.lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644
            )
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
