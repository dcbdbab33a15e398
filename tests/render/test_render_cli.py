"""`mvdata render` through the installed entry point: light --help, user errors, SIGKILL of the driver + resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvforge.formats import renders as layout
from mvforge.fsutil import read_jsonl
from tests.render.procs import live_processes

DATA = Path(__file__).resolve().parents[1] / "data" / "glb"
MVDATA = str(Path(sys.executable).with_name("mvdata"))
HEAVY = ("torch", "bpy", "ray")


@pytest.mark.parametrize("args", [["--help"], ["render", "--help"]])
def test_help_imports_no_heavy_module(args):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['mvdata', *{args!r}]\n"
        "try:\n"
        "    runpy.run_module('mvforge.cli.mvdata', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'bpy', 'ray'})\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "HEAVY=\n" in res.stdout, res.stdout[-500:]
    assert "Usage" in res.stdout


def test_help_through_the_entry_point_is_useful():
    res = subprocess.run([MVDATA, "render", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for word in (
        "objaverse",
        "--workers",
        "--retry-failed",
        "--lvis",
        "--memory-gb",
        "--objects-per-process",
        "--adaptive-threshold",
        "--view-transform",
        "--hdri-visible",
        "--no-depth",
        "--overwrite",
        "RAY_ADDRESS",
        "resume",
    ):
        assert word.lower() in res.stdout.lower(), word


@pytest.mark.parametrize(
    "args, match",
    [
        (["/no/such/model.glb"], "neither demo"),
        (["{tmp}/pipe.glb"], "pipe.glb' exists but is a named pipe (FIFO)"),
        ([str(DATA / "Duck.glb"), "--workers", "0"], "--workers must be at least 1"),
        ([str(DATA / "Duck.glb"), "--set", "cycles.sampels=3"], "unknown config key cycles.sampels"),
        ([str(DATA / "Duck.glb"), "--lvis", "chair"], "add the source `objaverse`"),
        (
            [
                "objaverse",
                "--limit",
                "1",
                "--cache-dir",
                "{tmp}/cache",
                "--objaverse-url",
                "http://127.0.0.1:9",
            ]
            + ["--set", "download.retries=0"],
            "cannot get Objaverse metadata object-paths.json.gz",
        ),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, match):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    os.mkfifo(tmp_path / "pipe.glb")  # a named pipe: never opened (it would block), refused by what it is
    res = subprocess.run(
        [MVDATA, "render", *args, "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2, res.stderr
    assert match in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def _procs_with(marker: str) -> list[str]:
    """Live processes whose environment holds ``marker`` (the driver, Ray, workers, Blender)."""
    return [f"{pid}: {cmd}" for pid, cmd in live_processes(marker).items()]


# Ray's per-node agents notice at once that their raylet died, then sometimes spend ~60 s trying to flush logs
# to the dead GCS before exiting (ray/_private/process_watcher.py; measured 2-61 s here): they go away on their
# own, only late, and run no task meanwhile.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _wait_gone(marker: str, timeout_s: float, ignore: tuple[str, ...] = ()) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p for p in _procs_with(marker) if not any(name in p for name in ignore)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"), dtype=np.int16)


def test_sigkill_driver_then_resume_equals_an_uninterrupted_run(tmp_path):
    src = tmp_path / "models"
    src.mkdir()
    for name in ("BoxTextured.glb", "Duck.glb", "monkey.glb"):
        shutil.copy(DATA / name, src / name)
    shutil.copy(DATA / "BoxTextured.glb", src / "box_copy.glb")
    uids = ["BoxTextured", "Duck", "box_copy", "monkey"]
    # Denoiser off: Cycles' path tracing with a fixed seed is bit-reproducible, OpenImageDenoise on CPU is not
    # (its parallel reductions can move a pixel by 1/255 between processes: seen once in CI, 2026-11-30), and this
    # test is about resume bookkeeping, which byte equality checks best.
    flags = ["--resolution", "32", "--views", "2", "--samples", "2", "--threads", "1", "--timeout", "120"]
    flags += ["--no-denoise"]
    marker = f"MVFORGE_TEST_RUN={uuid.uuid4().hex}"
    env = dict(os.environ, MVFORGE_TEST_RUN=marker.split("=", 1)[1])
    env.pop("RAY_ADDRESS", None)
    a, b = tmp_path / "a", tmp_path / "b"

    # 1. Start a run and SIGKILL the driver (only the driver) once the first object is done. Each object starts
    # 2 s late: one Blender process renders the 4 in turn (design §4), each in a fraction of a second at these
    # settings, faster than the driver's death reaches it.
    slow = ",".join(f"{u}=delay" for u in uids)
    driver = subprocess.Popen(
        [MVDATA, "render", str(src), "--out", str(a), *flags],
        env=dict(env, MVFORGE_RENDER_FAULT=slow),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(a.glob(f"*/*/{layout.META}")):
        assert driver.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no object finished in time"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # Ray's workers and the Blender processes die with their driver (fate sharing + PR_SET_PDEATHSIG).
    assert not _wait_gone(marker, 30, ignore=RAY_AGENTS), "processes survived the driver's SIGKILL"
    # Only now is the directory frozen: a task may finish its object between the driver's death and its own.
    done_before = {u for u in uids if layout.status(a, u) is not None}
    assert 1 <= len(done_before) < len(uids)
    before = {u: (layout.object_dir(a, u) / layout.META).stat().st_mtime_ns for u in done_before}
    logs_before = {u: (a / "logs" / f"{u}.log").stat().st_mtime_ns for u in done_before}

    # 2. The same command again: only the unfinished objects are rendered.
    lines_before = len(read_jsonl(a / layout.MANIFEST))
    res = subprocess.run([MVDATA, "render", str(src), "--out", str(a), *flags], env=env, capture_output=True)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert not _wait_gone(marker, 30, ignore=RAY_AGENTS)
    manifest = read_jsonl(a / layout.MANIFEST)
    assert sorted(r["uid"] for r in manifest) == sorted(uids)  # one line per object, none twice
    rendered_again = {r["uid"] for r in manifest[lines_before:] if not r.get("recovered")}
    assert rendered_again == set(uids) - done_before
    assert {u: (layout.object_dir(a, u) / layout.META).stat().st_mtime_ns for u in done_before} == before
    assert {u: (a / "logs" / f"{u}.log").stat().st_mtime_ns for u in done_before} == logs_before
    assert not list(a.glob("*/*.tmp-*"))

    # 3. An uninterrupted run elsewhere (2 workers: the order must not matter either) gives the same cameras
    # and the same images.
    res = subprocess.run(
        [MVDATA, "render", str(src), "--out", str(b), *flags, "--workers", "2"], env=env, capture_output=True
    )
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    for u in uids:
        da, db = layout.object_dir(a, u), layout.object_dir(b, u)
        assert (da / layout.CAMERAS).read_bytes() == (db / layout.CAMERAS).read_bytes()
        ma, mb = (json.loads((d / layout.META).read_text()) for d in (da, db))
        assert (ma["seed"], ma["hdri"], ma["normalization"]) == (mb["seed"], mb["hdri"], mb["normalization"])
        for v in range(2):
            pa, pb = da / layout.view_name(v), db / layout.view_name(v)
            # Cycles on CPU with a fixed seed renders the same pixels (no denoiser here), and the PNGs carry no
            # time stamps: the files are byte-identical (a pixel difference would show in the message).
            diff = np.abs(_pixels(pa) - _pixels(pb)).max()
            assert pa.read_bytes() == pb.read_bytes(), (u, v, f"max pixel difference {diff}")

    # 4. No worker of any of the three runs is left (Ray's agents of the killed run exit on their own).
    assert not _wait_gone(marker, 30, ignore=RAY_AGENTS)
