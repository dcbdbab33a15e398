"""CPU slots (``limits.pin_cpus``, design §4): disjoint CPUs per Blender child, freed when the holder dies."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from mvforge.render import cpus

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux CPU affinity")


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    # A directory of the test's own: real renders on this machine must not see (or hold) the test's locks.
    monkeypatch.setattr(cpus, "lock_dir", lambda: tmp_path / "locks")
    return tmp_path / "locks"


def test_slots_are_disjoint_and_released(lock_dir):
    allowed = sorted(os.sched_getaffinity(0))
    held = [cpus.acquire(1) for _ in allowed]
    assert sorted(c for slot in held for c in slot.cpus) == allowed  # every CPU once
    assert cpus.acquire(1) is None  # all taken: the caller runs unpinned
    held[0].release()
    again = cpus.acquire(1)
    assert again is not None and again.cpus == held[0].cpus
    for slot in [again, *held[1:]]:
        slot.release()
    assert cpus.acquire(len(allowed) + 1) is None and cpus.acquire(0) is None


def test_a_dead_holder_frees_its_cpus(lock_dir):
    n = len(os.sched_getaffinity(0))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from mvforge.render import cpus
                cpus.lock_dir = lambda: Path({str(lock_dir)!r})
                slot = cpus.acquire({n})
                print(slot.cpus, flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip().startswith("[")
        assert cpus.acquire(1) is None  # the other process holds every CPU
    finally:
        holder.kill()
        holder.wait()
    slot = cpus.acquire(n)  # killed without releasing: the kernel dropped its locks
    assert slot is not None
    slot.release()


def test_one_lock_directory_per_node_whatever_the_tmpdir_or_user(tmp_path, monkeypatch):
    monkeypatch.delenv("MVFORGE_CPU_LOCKS", raising=False)
    first = cpus.lock_dir()
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # SLURM gives every job its own TMPDIR
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.setenv("LOGNAME", "someone-else")
    assert cpus.lock_dir() == first
    # A lock directory replaced by a symlink is not followed: the render runs unpinned.
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "locks"
    link.symlink_to(target)
    monkeypatch.setenv("MVFORGE_CPU_LOCKS", str(link))
    assert cpus.acquire(1) is None and not list(target.iterdir())
