"""A full disk is the machine's fault, not the object's: the render stops with one line, records no failure,
leaves no temporary, and a rerun after space is freed finishes every object (docs/reliability.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mvforge.formats import renders as layout
from mvforge.rundir import environment_error_in
from tests.render.test_driver import DATA, TINY, _local

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (needs root)")


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_stops_the_render_in_one_line_and_the_rerun_finishes_every_object(small_disk):
    from mvforge.render.driver import render

    out = small_disk / "renders"
    objs = [_local(f"box{i:02d}", DATA / "BoxTextured.glb") for i in range(10)]  # ~25 KB each: 160 KB fills
    with pytest.raises(Exception) as stopped:  # noqa: B017 (the driver's UserError, or a raw ENOSPC of its own write)
        render(objs, out, TINY, workers=1, show_progress=False)
    line = str(environment_error_in(stopped.value))  # what the CLI prints after "error: "
    assert re.match(rf"^disk full writing {out}\S*; free space .* and rerun the same command$", line), line
    assert not list((out / layout.FAILED_DIR).glob("*")), "a full disk must not fail an object"

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)  # space freed
    summary = render(objs, out, TINY, workers=1, show_progress=False)
    assert summary.skipped + summary.counts["ok"] == 10 and not summary.counts.get("failed")
    assert all(layout.status(out, o.uid) == "ok" for o in objs)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no temporary left by either run


def test_a_full_disk_under_shard_is_one_line_and_the_rerun_finishes(small_disk, tmp_path):
    from mvforge.shards.verify import verify
    from tests.fixtures.synthetic import write_synthetic_render_dir

    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, 12, views=4, resolution=128)
    total = sum(p.stat().st_size for p in renders.rglob("*.png"))
    subprocess.run(["mount", "-o", f"remount,size={total // 2}", str(small_disk)], check=True)  # half fits
    out = small_disk / "shards"
    mvdata = str(Path(sys.executable).with_name("mvdata"))
    cmd = [
        mvdata,
        "shard",
        str(renders),
        "--out",
        str(out),
        "--workers",
        "0",
        "--max-count",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    last = proc.stderr.strip().splitlines()[-1]  # after the progress bar's last frame
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith(f"error: disk full writing {out}/train-"), proc.stderr

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    counts, problems = verify(str(out))
    assert counts["samples"] == 12 and not problems
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
