"""Atomic-write helpers shared by every stage (mvforge/fsutil.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from mvforge.fsutil import remove_dead_tmp, tmp_path


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def _own_tmp(out):
    path = tmp_path(out)
    assert path.name == f"{out.name}.tmp-{os.getpid()}"
    return path


def test_remove_dead_tmp_removes_a_killed_writers_copies_and_keeps_live_ones(tmp_path):
    out = tmp_path / "pipe"
    dead = _dead_pid()
    killed_dir = tmp_path / f"pipe.tmp-{dead}"
    (killed_dir / "unet").mkdir(parents=True)
    (killed_dir / "unet" / "weights.bin").write_bytes(b"x" * 1000)
    killed_file = tmp_path / f"pipe.tmp-{dead}-part.json"
    killed_file.write_text("{")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            alive = tmp_path / f"pipe.tmp-{live.pid}"
            alive.mkdir()
            mine = _own_tmp(out)
            mine.mkdir()
            untagged = tmp_path / "pipe.tmp-notapid"
            untagged.mkdir()
            other = tmp_path / f"pipes.tmp-{dead}"  # another output's leftover
            other.mkdir()
            removed = remove_dead_tmp(out)
            assert sorted(removed) == sorted([killed_dir, killed_file])
            assert not killed_dir.exists() and not killed_file.exists()
            assert alive.is_dir() and mine.is_dir() and untagged.is_dir() and other.is_dir()
            assert remove_dead_tmp(out) == []
        finally:
            live.kill()
