"""Atomic-write helpers shared by every stage (mvforge/fsutil.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from mvforge import fsutil
from mvforge.fsutil import remove_dead_tmp


def test_remove_dead_tmp_removes_a_killed_writers_copies_and_keeps_live_ones(tmp_path, dead_pid):
    out = tmp_path / "pipe"
    dead = dead_pid
    killed_dir = tmp_path / f"pipe.tmp-{dead}"
    (killed_dir / "unet").mkdir(parents=True)
    (killed_dir / "unet" / "weights.bin").write_bytes(b"x" * 1000)
    killed_tagged = tmp_path / f"pipe.tmp-{dead}-part"
    killed_tagged.write_text("{")
    beyond_c_int = tmp_path / "pipe.tmp-99999999999"  # no process can have it
    beyond_c_int.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            kept = [
                tmp_path / f"pipe.tmp-{live.pid}",  # a writer still running
                own := fsutil.tmp_path(out),  # this process
                tmp_path / "pipe.tmp-notapid",
                tmp_path / "pipe.tmp-\u00b2",  # a digit to str.isdigit, not a pid
                tmp_path / f"pipe.tmp-{dead}.json",  # not a name tmp_path makes
                tmp_path / f"pipes.tmp-{dead}",  # another output's leftover
            ]
            assert own.name == f"pipe.tmp-{os.getpid()}"
            for path in kept:
                path.mkdir()
            removed = remove_dead_tmp(out)
            assert sorted(removed) == sorted([killed_dir, killed_tagged, beyond_c_int])
            assert not any(p.exists() for p in removed)
            assert all(p.is_dir() for p in kept)
            assert remove_dead_tmp(out) == []
        finally:
            live.kill()


def test_remove_dead_tmp_reads_the_output_name_as_a_name_not_a_glob(tmp_path, dead_pid):
    """``--out 'm[a]'`` must not match ``ma.tmp-<pid>``, another output's (possibly live) temporary."""
    dead = dead_pid
    other = tmp_path / f"ma.tmp-{dead}"
    other.mkdir()
    (tmp_path / f"m[a].tmp-{dead}").mkdir()
    assert remove_dead_tmp(tmp_path / "m[a]") == [tmp_path / f"m[a].tmp-{dead}"]
    assert other.is_dir()
    assert remove_dead_tmp(tmp_path / "p?") == [] and other.is_dir()
    assert remove_dead_tmp(tmp_path / "no" / "such" / "dir") == []


def test_remove_dead_tmp_unlinks_a_symlink_and_keeps_its_target(tmp_path, dead_pid):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    link = tmp_path / f"pipe.tmp-{dead_pid}"
    link.symlink_to(target, target_is_directory=True)
    assert remove_dead_tmp(tmp_path / "pipe") == [link]
    assert (target / "keep.txt").read_text() == "mine"


def test_an_output_named_dot_is_the_directory_it_means(tmp_path, dead_pid, monkeypatch):
    """``--out .`` means the current directory: its temporary is the directory's sibling, and a ``.tmp-<pid>``
    entry inside it is not a leftover of it (it was deleted, then tmp_path raised on the empty name)."""
    here = tmp_path / "run"
    inside = here / f".tmp-{dead_pid}"
    inside.mkdir(parents=True)
    beside = tmp_path / f"run.tmp-{dead_pid}"
    beside.mkdir()
    monkeypatch.chdir(here)
    assert fsutil.tmp_path(".") == tmp_path / f"run.tmp-{os.getpid()}"
    assert remove_dead_tmp(".") == [beside]
    assert inside.is_dir()
    assert remove_dead_tmp("/") == []
