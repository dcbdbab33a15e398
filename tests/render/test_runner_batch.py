"""One Blender process renders a batch of objects in turn (design §4): no state leaks from one object into the
next, and every per-object guarantee of the runner holds inside a batch.

Real renders (32 px, 2 views, 2-4 samples, 1 thread, no denoiser: OpenImageDenoise may move a pixel by 1/255
between runs) through the real serve-mode worker; the worker's fault injection makes objects hang or die.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from mvforge.cameras import OrbitSampling
from mvforge.formats import renders as layout
from mvforge.render.config import CyclesConfig, LimitsConfig, PassesConfig, RenderConfig
from mvforge.render.plan import SourceObject, hdri_pool, plan_job
from mvforge.render.runner import log_path, run_objects
from mvforge.render.worker import FAULT_ENV
from tests.render.procs import live_processes

DATA = Path(__file__).resolve().parents[1] / "data" / "glb"
# Passes on: depth and normals come from the compositor, whose node tree must not survive into the next object.
CFG = RenderConfig(
    resolution=32,
    cameras=OrbitSampling(views=2),
    cycles=CyclesConfig(samples=4, threads=1, denoise=False),
    passes=PassesConfig(depth=True, normal=True),
)


def _job(uid: str, path: Path, cfg: RenderConfig = CFG) -> dict:
    obj = SourceObject(uid=uid, kind="local", ext=path.suffix[1:], path=str(path))
    return plan_job(obj, cfg, hdri_pool(None))


def _files(out: Path, uid: str) -> dict[str, bytes]:
    d = layout.object_dir(out, uid)
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != layout.META}


def _meta(out: Path, uid: str) -> dict:
    return json.loads((layout.object_dir(out, uid) / layout.META).read_text())


def test_an_object_rendered_after_another_in_one_process_is_byte_identical_to_it_alone(tmp_path):
    # A: textured, several meshes and materials, another HDRI and camera orbit; B: another textured object.
    a, b = _job("truck", DATA / "CesiumMilkTruck.glb"), _job("box", DATA / "BoxTextured.glb")
    assert a["hdri"]["name"] != b["hdri"]["name"] or a["hdri"]["rotation_deg"] != b["hdri"]["rotation_deg"]
    together, alone = tmp_path / "together", tmp_path / "alone"
    recs = run_objects([a, b], together, LimitsConfig(timeout_s=120))
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert run_objects([b], alone, LimitsConfig(timeout_s=120))[0]["status"] == "ok"

    got, want = _files(together, "box"), _files(alone, "box")
    assert sorted(got) == [
        "000.depth.png", "000.normal.png", "000.png", "001.depth.png", "001.normal.png", "001.png",
        "cameras.json",
    ]  # fmt: skip
    assert got == want  # RGBA, depth, normals and cameras byte for byte
    m_together, m_alone = _meta(together, "box"), _meta(alone, "box")
    for key in ("normalization", "stats", "cycles", "hdri", "seed"):
        assert m_together[key] == m_alone[key], key
    # Which process rendered what is recorded, and each object's log holds its own part of the process.
    assert m_together["process"]["position"] == 2 and m_together["process"]["reused"] is True
    assert _meta(together, "truck")["process"] == {**m_together["process"], "position": 1, "reused": False}
    assert m_alone["process"]["position"] == 1
    assert "object 1 of Blender process" in log_path(together, "truck").read_text()
    box_log = log_path(together, "box").read_text()
    assert "object 2 of Blender process" in box_log and "object 1 of" not in box_log


def test_a_hang_a_crash_and_a_bad_file_in_one_batch_cost_only_themselves(tmp_path):
    tag = uuid.uuid4().hex[:8]
    hang, crash = f"hang_{tag}", f"crash_{tag}"
    bad = tmp_path / "bad.glb"
    bad.write_bytes(b"glTF but not really")
    cfg = RenderConfig(
        resolution=32,
        cameras=OrbitSampling(views=2),
        cycles=CyclesConfig(samples=2, threads=1, denoise=False),
    )
    monkey = DATA / "monkey.glb"
    names = ["a", hang, "b", crash, "c", "bad", "d"]
    jobs = [_job(n, bad if n == "bad" else monkey, cfg) for n in names]
    marker = f"{FAULT_ENV}={hang}=hang,{crash}=sigkill"
    # retries=0: the crash still gets its one fresh-process attempt, because it first died in a reused process.
    limits = LimitsConfig(timeout_s=15.0, retries=0)  # as test_driver: a loaded machine still starts Blender
    recs = run_objects(jobs, tmp_path, limits, env={FAULT_ENV: f"{hang}=hang,{crash}=sigkill"})

    got = {r["uid"]: r["reason"] or r["status"] for r in recs}
    assert got == {
        "a": "ok",
        hang: "timeout",
        "b": "ok",
        crash: "crashed",
        "c": "ok",
        "bad": "import_error",
        "d": "ok",
    }
    assert [r["uid"] for r in recs] == names
    for r in recs:  # exactly one terminal record each, and the manifest line agrees with it
        assert layout.status(tmp_path, r["uid"]) == r["status"], r["uid"]
    attempts = {r["uid"]: r["attempts"] for r in recs}
    assert attempts[hang] == 1 and attempts[crash] == 2 and attempts["bad"] == 1
    # Positions: a killed or dead process is replaced by a fresh one for the rest of the batch; a classified
    # failure (bad file) keeps the process.
    position = {u: _meta(tmp_path, u)["process"]["position"] for u in ("a", "b", "c", "d")}
    assert position == {"a": 1, "b": 1, "c": 1, "d": 3}
    assert _meta(tmp_path, "c")["process"]["pid"] == _meta(tmp_path, "d")["process"]["pid"]
    assert len({_meta(tmp_path, u)["process"]["pid"] for u in ("a", "b", "c")}) == 3
    crash_log = log_path(tmp_path, crash).read_text()
    assert crash_log.count("=== mvforge: attempt") == 2
    assert "reused Blender process" in crash_log and "new Blender process" in crash_log
    failure = json.loads(layout.failure_path(tmp_path, hang).read_text())
    assert "15 s limit" in failure["message"] and "attempt 1" in failure["log_tail"]
    # No process of any of them is left: the hung worker's grandchild was in its group.
    assert not _marked(marker)
    assert not list(tmp_path.glob("*/*.tmp-*"))


def _marked(marker: str) -> list[int]:
    return list(live_processes(marker))
