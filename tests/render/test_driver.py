"""The render driver end to end on a real local Ray: a hostile mix where every object ends in one record.

Real renders (32 px, 2 views, 2 samples) for the objects that should succeed; the worker's fault injection
for the hang and the crash; a real HTTP server on 127.0.0.1 for the downloads.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import threading
import uuid
from pathlib import Path

import pytest

from mvforge.cameras import OrbitSampling
from mvforge.errors import UserError
from mvforge.formats import renders as layout
from mvforge.fsutil import read_jsonl
from mvforge.render.config import CyclesConfig, LimitsConfig, RenderConfig
from mvforge.render.driver import render
from mvforge.render.plan import SourceObject
from mvforge.render.worker import FAULT_ENV
from tests.render.procs import live_processes

DATA = Path(__file__).resolve().parents[1] / "data" / "glb"
TINY = RenderConfig(
    resolution=32,
    cameras=OrbitSampling(views=2),
    # No denoiser: this file tests records, not pixels, and its 15 s timeout must hold on a loaded machine.
    cycles=CyclesConfig(samples=2, threads=1, denoise=False),
    limits=LimitsConfig(timeout_s=15.0, retries=1),
)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from mvforge.raytools import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def glb_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(DATA / "Duck.glb", served / "Duck.glb")

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(served), **k)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _local(uid: str, path: Path, caption: str = "") -> SourceObject:
    return SourceObject(uid=uid, kind="local", ext=path.suffix[1:].lower(), path=str(path), caption=caption)


def _alive_with(marker: str) -> list[int]:
    return list(live_processes(marker))


def test_hostile_mix_ends_in_one_record_per_object(tmp_path, ray_local, glb_server, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    odd = tmp_path / "odd.xyz"
    odd.write_bytes(b"not a model")
    cache = tmp_path / "cache"
    duck_sha = hashlib.sha256((DATA / "Duck.glb").read_bytes()).hexdigest()
    sources = [
        _local("box", DATA / "BoxTextured.glb", "a textured box"),
        SourceObject(
            uid="duck_remote", kind="objaverse", ext="glb", path=str(cache / "Duck.glb"),
            url=f"{glb_server}/Duck.glb", sha256=duck_sha, caption="a duck", name="Duck", tags=("toy",),
        ),
        SourceObject(
            uid="missing_remote", kind="objaverse", ext="glb", path=str(cache / "missing.glb"),
            url=f"{glb_server}/missing.glb",
        ),
        _local(f"hang_{tag}", DATA / "monkey.glb"),
        _local(f"crash_{tag}", DATA / "monkey.glb"),
        _local("odd", odd),
    ]  # fmt: skip
    monkeypatch.setenv(FAULT_ENV, f"hang_{tag}=hang,crash_{tag}=sigkill")
    out = tmp_path / "renders"
    summary = render(sources, out, TINY, workers=2, show_progress=False)

    expected = {
        "box": "ok",
        "duck_remote": "ok",
        "missing_remote": "download_failed",
        f"hang_{tag}": "timeout",
        f"crash_{tag}": "crashed",
        "odd": "unsupported_format",
    }
    got = {}
    for s in sources:
        ok = (layout.object_dir(out, s.uid) / layout.META).is_file()
        failed = layout.failure_path(out, s.uid).is_file()
        assert ok != failed, s.uid  # exactly one terminal record
        got[s.uid] = "ok" if ok else json.loads(layout.failure_path(out, s.uid).read_text())["reason"]
    assert got == expected
    manifest = read_jsonl(out / layout.MANIFEST)
    assert sorted(r["uid"] for r in manifest) == sorted(expected)
    assert {r["uid"]: r["reason"] or "ok" for r in manifest} == expected
    assert summary.counts == {"ok": 2, "failed": 4} and summary.skipped == 0
    assert summary.reasons == {"download_failed": 1, "timeout": 1, "crashed": 1, "unsupported_format": 1}
    assert summary.views == 4 and summary.seconds_per_view > 0

    # The ok objects are complete: 2 RGBA views, cameras, meta with provenance; the download is in the cache.
    for uid in ("box", "duck_remote"):
        d = layout.object_dir(out, uid)
        assert sorted(p.name for p in d.iterdir()) == ["000.png", "001.png", "cameras.json", "meta.json"]
        meta = json.loads((d / "meta.json").read_text())
        assert meta["views"] == 2 and meta["engine"] == "CYCLES" and meta["samples"] == 2
        assert meta["resolution"] == 32 and meta["versions"]["blender"].startswith("5.0")
        assert meta["source"]["sha256"] and meta["hdri"]["name"]
    meta = json.loads((layout.object_dir(out, "duck_remote") / "meta.json").read_text())
    assert meta["source"]["sha256"] == duck_sha and meta["tags"] == ["toy"] and meta["caption"] == "a duck"
    assert (cache / "Duck.glb").read_bytes() == (DATA / "Duck.glb").read_bytes()
    assert (out / layout.CONFIG).is_file()
    assert not list(out.glob("*/*.tmp-*")) and not list(out.glob("failed/*.tmp-*"))
    assert not _alive_with(f"hang_{tag}=hang")  # no worker nor grandchild left behind

    # Re-running the finished run renders nothing and touches nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if p.name != "config.toml"}
    again = render(sources, out, TINY, workers=2, show_progress=False)
    assert again.skipped == 6 and again.counts == {}
    assert len(read_jsonl(out / layout.MANIFEST)) == 6
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    # --retry-failed re-runs only the failures; without the faults the two monkeys now render.
    monkeypatch.delenv(FAULT_ENV)
    retried = render(
        [s for s in sources if s.uid != "missing_remote"], out, TINY, workers=2, retry_failed=True,
        show_progress=False,
    )  # fmt: skip
    assert retried.skipped == 2 and retried.counts == {"ok": 2, "failed": 1}
    assert layout.status(out, f"hang_{tag}") == "ok" and not layout.failure_path(out, f"hang_{tag}").exists()
    # Still one manifest line per object, each with the object's current outcome.
    now = {**expected, f"hang_{tag}": "ok", f"crash_{tag}": "ok"}
    assert sorted(r["uid"] for r in read_jsonl(out / layout.MANIFEST)) == sorted(now)
    assert {r["uid"]: r["reason"] or "ok" for r in read_jsonl(out / layout.MANIFEST)} == now


def test_changed_render_settings_are_refused(tmp_path):
    out = tmp_path / "renders"
    out.mkdir()
    from mvforge.config import to_toml

    (out / layout.CONFIG).write_text(to_toml(TINY))
    box = [_local("box", DATA / "BoxTextured.glb")]
    from dataclasses import replace

    with pytest.raises(UserError, match="resolution was 32, now 64.*--overwrite"):
        render(box, out, replace(TINY, resolution=64), show_progress=False)
    # Speed and safety settings may change between a run and its resume.
    faster = replace(TINY, cycles=replace(TINY.cycles, threads=2), limits=LimitsConfig(timeout_s=5))
    from mvforge.render.driver import _check_config

    _check_config(out, faster, overwrite=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"workers": 0}, "--workers"),
        ({"gpus_per_worker": -1}, "--gpus-per-worker"),
        ({"gpus_per_worker": float("nan")}, "--gpus-per-worker"),
    ],
)
def test_bad_options_are_user_errors(tmp_path, kwargs, match):
    with pytest.raises(UserError, match=match):
        render([_local("box", DATA / "BoxTextured.glb")], tmp_path, TINY, show_progress=False, **kwargs)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        render([_local("gone", tmp_path / "gone.glb")], tmp_path / "out", TINY, show_progress=False)


def test_manifest_is_repaired_to_one_line_per_finished_object(tmp_path):
    """Duplicates, a torn last line, a missing line and a line of an object about to be re-rendered."""
    import json as _json

    from mvforge.fsutil import atomic_write_json
    from mvforge.render import runner
    from mvforge.render.driver import _prepare_manifest

    out = tmp_path
    objs = [_local(u, DATA / "Duck.glb") for u in ("a", "b", "c", "d", "e")]
    for uid in ("a", "b", "c"):
        meta = {"uid": uid, "views": 2, "peak_rss_mb": 300.0, "stats": {"stripped_textures": 1}}
        atomic_write_json(layout.object_dir(out, uid) / layout.META, meta)
    atomic_write_json(layout.failure_path(out, "d"), {"uid": "d", "reason": "timeout"})
    # when c finished and when d failed (their terminal records' mtimes): a recovered line's time
    os.utime(layout.object_dir(out, "c") / layout.META, ns=(1_700_000_000_250_000_000,) * 2)
    os.utime(layout.failure_path(out, "d"), ns=(1_700_000_100_500_000_000,) * 2)
    lines = [
        {"uid": "a", "status": "failed", "reason": "crashed"},  # failed before, ok after --retry-failed
        {"uid": "a", "status": "ok", "reason": None},
        {"uid": "b", "status": "ok", "reason": None},
        {"uid": "zz_other_run", "status": "ok", "reason": None},  # not in these sources: kept as is
        {"uid": "d", "status": "ok", "reason": None},  # disagrees with d's failure record
    ]
    text = "".join(_json.dumps(r, sort_keys=True) + "\n" for r in lines) + '{"uid": "c", "sta'
    (out / layout.MANIFEST).write_text(text)
    states = {o.uid: layout.status(out, o.uid) for o in objs}

    _prepare_manifest(out, states, rerun={"b", "e"})
    got = read_jsonl(out / layout.MANIFEST)
    assert [r["uid"] for r in got] == ["a", "zz_other_run", "c", "d"]
    assert got[0]["status"] == "ok" and got[2]["recovered"]
    # a recovered line carries what a live one does (design §2: the manifest records stripped_textures)
    assert (got[2]["views"], got[2]["peak_rss_mb"], got[2]["stripped_textures"]) == (2, 300.0, 1)
    assert got[3]["status"] == "failed" and got[3]["reason"] == "timeout" and got[3]["recovered"]
    # a failure record keeps no timings: unknown (null), never an invented 0
    assert (got[3]["seconds"], got[3]["peak_rss_mb"]) == (None, None)
    # every field of a live line, time included (the driver appends a live line with its time)
    live = set(runner.fail(tmp_path / "live", "x", "timeout", "m", attempts=1, source=None)) | {"time"}
    assert set(got[3]) == live | {"recovered"} and set(got[2]) == live | {"stripped_textures", "recovered"}
    assert (got[2]["time"], got[3]["time"]) == (1_700_000_000.25, 1_700_000_100.5)
    assert (out / layout.MANIFEST).read_text().endswith("}\n")  # the torn line is gone

    # Nothing to change: the file is left alone.
    before = (out / layout.MANIFEST).stat().st_mtime_ns
    _prepare_manifest(out, states, rerun={"b", "e"})
    assert (out / layout.MANIFEST).stat().st_mtime_ns == before


def test_a_second_driver_on_the_same_directory_is_refused(tmp_path):
    from mvforge.rundir import exclusive

    out = tmp_path / "renders"
    out.mkdir()
    with exclusive(out, "mvdata render"):
        with pytest.raises(UserError, match=r"`mvdata render` \(pid \d+ on .*\) is writing"):
            render([_local("box", DATA / "BoxTextured.glb")], out, TINY, show_progress=False)
    with exclusive(out, "mvdata render"):  # released when the holder is done
        pass


def test_task_errors_name_the_cause_not_rays_banner():
    import ray.exceptions

    from mvforge.render.driver import _task_error

    err = ray.exceptions.RayTaskError("render_task", "Traceback ...", OSError(28, "No space left on device"))
    assert _task_error(err) == "the render task raised OSError: [Errno 28] No space left on device"
    assert _task_error(ray.exceptions.WorkerCrashedError()).startswith(
        "the Ray task died: WorkerCrashedError"
    )


# --- design §2.1 Sources: uid reuse, case collisions, --overwrite on a subset (refused before any render) ---


def _finished(out: Path, uid: str, path: Path) -> None:
    from mvforge.fsutil import atomic_write_json

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    atomic_write_json(
        layout.object_dir(out, uid) / layout.META, {"uid": uid, "source": {"path": str(path), "sha256": sha}}
    )


def test_a_finished_uid_reused_for_another_file_is_refused(tmp_path):
    out = tmp_path / "renders"
    _finished(out, "box", DATA / "Duck.glb")
    with pytest.raises(UserError, match="uid box was rendered from another file.*Duck.glb.*own uid"):
        render([_local("box", DATA / "BoxTextured.glb")], out, TINY, show_progress=False)
    # The same file again is a plain resume: skipped, nothing rendered.
    again = render([_local("box", DATA / "Duck.glb")], out, TINY, show_progress=False)
    assert again.skipped == 1 and again.counts == {}


def test_uids_equal_ignoring_case_are_refused_or_disambiguated(tmp_path):
    from mvforge.render.sources import resolve_sources

    with pytest.raises(UserError, match="Chair and chair differ only in case"):
        render(
            [_local("Chair", DATA / "Duck.glb"), _local("chair", DATA / "monkey.glb")],
            tmp_path / "out",
            TINY,
            show_progress=False,
        )
    # Uids derived from file names are disambiguated instead (whatever this filesystem is).
    for sub, name in (("a", "Chair.glb"), ("b", "chair.glb")):
        (tmp_path / sub).mkdir()
        shutil.copy(DATA / "Duck.glb", tmp_path / sub / name)
    uids = sorted(o.uid for o in resolve_sources([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert len({u.casefold() for u in uids}) == 2 and uids[0] == "Chair" and uids[1].startswith("chair-")


def test_overwrite_with_new_settings_on_a_subset_is_refused(tmp_path):
    from dataclasses import replace

    from mvforge.config import to_toml

    out = tmp_path / "renders"
    out.mkdir()
    (out / layout.CONFIG).write_text(to_toml(TINY))
    _finished(out, "other", DATA / "Duck.glb")
    box = [_local("box", DATA / "BoxTextured.glb")]
    with pytest.raises(UserError, match="1 other finished object.*other.*old ones"):
        render(box, out, replace(TINY, resolution=64), overwrite=True, show_progress=False)


# --- design §4: objects go to the Ray tasks in batches (one Blender start per batch) ------------------------


def test_batches_shrink_towards_the_end_of_the_run():
    from mvforge.render.driver import batches

    def sizes(n, workers, per_process):
        got = batches(list(range(n)), workers, per_process)
        assert [x for batch in got for x in batch] == list(range(n))  # every object once, in order
        return [len(b) for b in got]

    assert sizes(100, 2, 8)[:9] == [8] * 9 and sizes(100, 2, 8)[-4:] == [1, 1, 1, 1]
    assert sizes(8, 2, 8) == [2, 2, 1, 1, 1, 1]
    assert sizes(1, 4, 8) == [1]
    assert sizes(100, 4, 1) == [1] * 100  # objects_per_process = 1: one process per object, as before


def test_a_ray_worker_dying_mid_batch_fails_no_neighbour(tmp_path, ray_local):
    """The Ray worker running a batch dies after its first object finished: that object keeps its record, the
    others go again one per task, and only the object that kills its worker alone is recorded crashed."""
    from dataclasses import replace

    def dying_task(objs, jobs, out, cfg, env):  # pickled by value into the Ray worker

        from tests.fixtures.synthetic import stub_render_task

        if any(o.uid == "poison" for o in objs):
            if objs[0].uid != "poison":
                stub_render_task(objs[:1], jobs[:1], out, cfg, env)  # the first object finishes...
            os._exit(1)  # ...then the worker dies
        return stub_render_task(objs, jobs, out, cfg, env)

    uids = ("a", "poison", "b", "c", "d", "e")  # batches [a, poison, b], [c, d], [e] (driver.batches)
    sources = [_local(u, DATA / "Duck.glb") for u in uids]
    cfg = replace(TINY, limits=replace(TINY.limits, objects_per_process=4))
    out = tmp_path / "renders"
    summary = render(sources, out, cfg, workers=1, show_progress=False, task=dying_task)

    assert summary.counts == {"ok": 5, "failed": 1} and summary.reasons == {"crashed": 1}
    assert {u: layout.status(out, u) for u in uids} == {u: "failed" if u == "poison" else "ok" for u in uids}
    lines = {r["uid"]: r for r in read_jsonl(out / layout.MANIFEST)}
    assert sorted(lines) == sorted(uids)
    assert lines["a"]["recovered"] and lines["a"]["views"] == 2  # written by the task that then died
    # b never started in the dead batch: it went again in a task of its own.
    assert (
        "recovered" not in lines["b"]
        and lines["b"]["status"] == "ok"
        and lines["poison"]["reason"] == "crashed"
    )
    assert "the Ray task died" in json.loads(layout.failure_path(out, "poison").read_text())["message"]
