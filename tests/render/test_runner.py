"""The render runner: timeout, crash retry and memory cap of a real child process, and no process left behind.

Rendering is not the point here: the worker's fault injection (MVFORGE_RENDER_FAULT) makes the real worker
process hang (spawning a grandchild first) or SIGKILL itself before it imports Blender.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from mvforge.formats import renders as layout
from mvforge.render.config import LimitsConfig, RenderConfig
from mvforge.render.plan import SourceObject, hdri_pool, plan_job
from mvforge.render.runner import group_rss_bytes, run_object
from mvforge.render.worker import FAULT_ENV
from tests.render.procs import live_processes

DATA = Path(__file__).resolve().parents[1] / "data"


def _job(uid: str) -> dict:
    obj = SourceObject(uid=uid, kind="local", ext="glb", path=str(DATA / "glb" / "BoxTextured.glb"))
    cfg = RenderConfig(resolution=32)
    return plan_job(obj, cfg, hdri_pool(None))


def _marked_pids(marker: str) -> set[int]:
    """Live (non-zombie) processes whose environment carries ``marker``: the worker and its grandchild."""
    return set(live_processes(marker))


def _run_watching(job, out, limits, env, marker):
    """run_object in a thread while this thread records every marked process seen during the run."""
    seen: set[int] = set()
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(rec=run_object(job, out, limits, env=env)))
    start = time.monotonic()
    t.start()
    while t.is_alive():
        seen |= _marked_pids(marker)
        time.sleep(0.2)
    t.join()
    return box["rec"], seen, time.monotonic() - start


def test_hung_worker_is_killed_at_timeout_and_leaves_no_process(tmp_path):
    uid = f"hang_{uuid.uuid4().hex[:8]}"
    env = {FAULT_ENV: f"{uid}=hang"}
    limits = LimitsConfig(timeout_s=3.0, retries=1, memory_gb=8.0)
    rec, seen, elapsed = _run_watching(_job(uid), tmp_path, limits, env, f"{FAULT_ENV}={uid}=hang")

    # The worker and the grandchild it spawned were both alive during the run...
    assert len(seen) >= 2, seen
    # ...and neither survives it (not retried: a timeout would only trip again).
    assert not _marked_pids(f"{FAULT_ENV}={uid}=hang")
    assert rec["status"] == "failed" and rec["reason"] == "timeout" and rec["attempts"] == 1
    assert 3.0 <= elapsed < 3.0 + 3.0 + 5.0  # timeout + SIGTERM grace + slack
    assert layout.status(tmp_path, uid) == "failed"
    failure = json.loads(layout.failure_path(tmp_path, uid).read_text())
    assert failure["reason"] == "timeout" and failure["status"] == "failed"
    assert "attempt 1" in failure["log_tail"]
    assert failure["source"]["path"].endswith("BoxTextured.glb")
    # The staging dir is gone and no object dir was made.
    assert not list(tmp_path.glob(f"{uid[:2]}/*"))


def test_worker_that_dies_is_retried_then_recorded_crashed(tmp_path):
    uid = f"crash_{uuid.uuid4().hex[:8]}"
    limits = LimitsConfig(timeout_s=60.0, retries=2)
    rec = run_object(_job(uid), tmp_path, limits, env={FAULT_ENV: f"{uid}=sigkill"})
    assert rec["status"] == "failed" and rec["reason"] == "crashed" and rec["attempts"] == 3
    failure = json.loads(layout.failure_path(tmp_path, uid).read_text())
    assert "SIGKILL" in failure["message"] and failure["attempts"] == 3
    log = (tmp_path / "logs" / f"{uid}.log").read_text()
    assert log.count("=== mvforge: attempt") == 3
    assert not layout.object_dir(tmp_path, uid).exists()


def test_an_exception_inside_blender_leaves_its_traceback_in_the_failure_record(tmp_path):
    # A value bpy refuses (above its int range; the config refuses it earlier, a hand-made job does not).
    job = _job("raises")
    job["cycles"]["adaptive_min_samples"] = 2**31
    rec = run_object(job, tmp_path, LimitsConfig(timeout_s=60.0, retries=0))
    assert rec["status"] == "failed" and rec["reason"] == "crashed"
    failure = json.loads(layout.failure_path(tmp_path, "raises").read_text())
    assert (
        failure["message"].startswith("render raised ValueError: ")
        and "adaptive_min_samples" in failure["message"]
    )
    tail = failure["log_tail"]
    assert "Traceback" in tail and "adaptive_min_samples" in tail
    assert tail.count("Traceback") == 1  # printed once, whole


def test_memory_cap_kills_the_process_group(tmp_path):
    uid = f"mem_{uuid.uuid4().hex[:8]}"
    # Two Python interpreters (worker + grandchild) hold far more than 5 MB resident.
    limits = LimitsConfig(timeout_s=60.0, memory_gb=0.005, retries=3)
    rec, _, elapsed = _run_watching(
        _job(uid), tmp_path, limits, {FAULT_ENV: f"{uid}=hang"}, f"{FAULT_ENV}={uid}=hang"
    )
    assert rec["status"] == "failed" and rec["reason"] == "memory_limit" and rec["attempts"] == 1
    assert elapsed < 20
    assert rec["peak_rss_mb"] > 5
    assert not _marked_pids(f"{FAULT_ENV}={uid}=hang")


def test_group_rss_counts_this_process():
    own = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            own = int(line.split()[1]) * 1024
    assert group_rss_bytes(os.getpgid(0)) >= own * 0.9
    assert group_rss_bytes(2**22 + 12345) == 0  # no such group


@pytest.mark.parametrize("fault", ["sigkill"])
def test_no_retry_budget_means_one_attempt(tmp_path, fault):
    uid = f"once_{uuid.uuid4().hex[:8]}"
    rec = run_object(_job(uid), tmp_path, LimitsConfig(retries=0), env={FAULT_ENV: f"{uid}={fault}"})
    assert rec["attempts"] == 1 and rec["reason"] == "crashed"


def test_render_process_dies_with_its_killed_owner(tmp_path):
    """PR_SET_PDEATHSIG: when the process running the runner (a Ray worker) is SIGKILLed, Blender dies too."""
    import signal
    import subprocess
    import sys

    uid = f"owner_{uuid.uuid4().hex[:8]}"
    (tmp_path / "job.json").write_text(json.dumps(_job(uid)))
    code = (
        "import json, sys\n"
        "from mvforge.render.config import LimitsConfig\n"
        "from mvforge.render.runner import run_object\n"
        "job = json.load(open(sys.argv[1]))\n"
        "run_object(job, sys.argv[2], LimitsConfig(timeout_s=120))\n"
    )
    marker = f"{FAULT_ENV}={uid}=hang"
    env = dict(os.environ, **{FAULT_ENV: f"{uid}=hang"})
    owner = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "job.json"), str(tmp_path / "out")], env=env
    )

    def worker_pids() -> list[int]:
        found = []
        for p in _marked_pids(marker):
            try:
                if b"mvforge.render.worker" in Path(f"/proc/{p}/cmdline").read_bytes():
                    found.append(p)
            except OSError:  # exited between the listing and the read
                pass
        return found

    workers: list[int] = []
    try:
        deadline = time.monotonic() + 30
        # Up: the worker and its grandchild. Between the grandchild's fork and its exec it still shows the
        # worker's command line, so wait until exactly one process does.
        while len(_marked_pids(marker) - {owner.pid}) < 2 or len(workers := worker_pids()) != 1:
            assert time.monotonic() < deadline, f"worker processes {worker_pids()}"
            time.sleep(0.1)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        deadline = time.monotonic() + 5
        while workers[0] in _marked_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert workers[0] not in _marked_pids(marker), "the render process outlived its owner"
    finally:
        # The kernel kills only the direct child; the fault's grandchild stays in the worker's group.
        try:
            os.killpg(workers[0], signal.SIGKILL)
        except (ProcessLookupError, NameError, IndexError):
            pass
        owner.kill()


def test_terminal_records_replace_each_other_and_never_coexist(tmp_path):
    """--overwrite / --retry-failed: a new outcome replaces the old one; a leftover of a kill is cleaned."""
    from mvforge.render.driver import remove_stale_staging
    from mvforge.render.runner import finalize_ok, record_failure, staging_dir

    uid = "flip"

    def render_ok(tag: str) -> None:
        staging = staging_dir(tmp_path, uid)
        staging.mkdir(parents=True)
        (staging / "000.png").write_text(tag)
        finalize_ok(tmp_path, uid, staging, {"uid": uid, "tag": tag})

    def records() -> tuple[bool, bool]:
        return (layout.object_dir(tmp_path, uid) / layout.META).is_file(), layout.failure_path(
            tmp_path, uid
        ).is_file()

    render_ok("first")
    render_ok("second")  # an ok object rendered again replaces the old dir as a whole
    assert records() == (True, False)
    assert (layout.object_dir(tmp_path, uid) / "000.png").read_text() == "second"
    record_failure(tmp_path, uid, "timeout", "too slow", attempts=1, source=None)
    assert records() == (False, True)
    render_ok("third")
    assert records() == (True, False)
    assert sorted(p.name for p in (tmp_path / uid[:2]).iterdir()) == [uid]  # no staging or discarded dir left

    # A kill between the rename out of the way and the delete leaves a *.tmp-* dir: the next run removes it.
    doomed = layout.object_dir(tmp_path, uid).with_name(f"{uid}.tmp-999999-old")
    doomed.mkdir()
    (doomed / layout.META).write_text("{}")
    assert remove_stale_staging(tmp_path) == 1 and not doomed.exists()
    assert list(layout.iter_uids(tmp_path)) == [uid]
