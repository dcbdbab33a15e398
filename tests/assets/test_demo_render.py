"""Real Blender (bpy, Cycles) renders of three demo objects through the real worker process.

Checks what only a render can show: the GLBs import with the right up axis and handedness (glTF Y-up ->
Blender Z-up, front = -Y), keep their colours, and are counted as written (faces, materials).
"""

from __future__ import annotations

import colorsys
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from mvforge.assets import list_demo_objects
from mvforge.cameras import OrbitSampling
from mvforge.render.config import CyclesConfig, RenderConfig
from mvforge.render.plan import SourceObject, hdri_pool, plan_job

# Two views: azimuth 0 (front, camera on -Y) and 180 (back); tiny and few samples, enough for masks and hues.
CFG = RenderConfig(resolution=48, cameras=OrbitSampling(views=2), cycles=CyclesConfig(samples=4, threads=1))
UIDS = ("demo-mug", "demo-traffic-cone", "demo-potted-cactus")
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, tuple[dict, dict, Path]]:
    """uid -> (job, result, staging dir), rendered once for the module."""
    root = tmp_path_factory.mktemp("demo-render")
    objects = {o.uid: o for o in list_demo_objects()}
    pool = hdri_pool(None)
    out = {}
    for uid in UIDS:
        obj = objects[uid]
        src = SourceObject(uid=uid, kind="demo", ext="glb", path=str(obj.path), caption=obj.caption)
        job = plan_job(src, CFG, pool)
        job_path = root / f"{uid}.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        staging = root / uid
        proc = subprocess.run(
            [sys.executable, "-m", "mvforge.render.worker", str(job_path), str(staging)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert proc.returncode == 0, (
            f"{uid}: worker exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
        out[uid] = (job, json.loads((staging / "result.json").read_text(encoding="utf-8")), staging)
    return out


def _view(staging: Path, index: int) -> np.ndarray:
    return np.asarray(Image.open(staging / f"{index:03d}.png").convert("RGBA"), dtype=np.float64) / 255.0


def _hue_fractions(rgba: np.ndarray) -> dict[str, float]:
    """Fractions of the object's pixels (alpha > 0.5) that are saturated red, orange or green."""
    px = rgba[..., :3][rgba[..., 3] > 0.5]
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in px])
    sat, hue = hsv[:, 1] > 0.35, hsv[:, 0] * 360
    return {
        "red": float(np.mean(sat & ((hue < 15) | (hue > 340)))),
        "orange": float(np.mean(sat & (hue >= 15) & (hue < 45))),
        "green": float(np.mean(sat & (hue >= 70) & (hue < 170))),
    }


def test_results_match_the_files(rendered):
    captions = {
        rec["uid"]: rec
        for rec in map(
            json.loads, (list_demo_objects()[0].path.parent / "captions.jsonl").read_text().splitlines()
        )
    }
    for uid, (job, result, _) in rendered.items():
        assert result["status"] == "ok"
        assert [v["azimuth_deg"] for v in job["views"]] == [0.0, 180.0]
        assert result["stats"]["faces"] == captions[uid]["triangles"]
        scene = trimesh.load(Path(job["input_path"]), force="scene")
        assert result["stats"]["materials"] == len(scene.geometry)
        # Normalisation fits the largest extent to 1: the same extent trimesh reads from the file.
        assert result["normalization"]["scale"] == pytest.approx(1.0 / scene.extents.max(), rel=1e-4)


def test_objects_stand_upright(rendered):
    """Tall objects render taller than wide: the glTF Y-up axis became Blender's Z-up."""
    for uid in ("demo-traffic-cone", "demo-potted-cactus"):
        staging = rendered[uid][2]
        for i in (0, 1):
            ys, xs = np.nonzero(_view(staging, i)[..., 3] > 0.5)
            assert len(ys) > 50, f"{uid} view {i} is (nearly) empty"
            aspect = (ys.ptp() + 1) / (xs.ptp() + 1)
            assert aspect > 1.4, f"{uid} view {i}: height/width {aspect:.2f}; lying on its side?"


def test_mug_handle_is_on_plus_x(rendered):
    """Front view (camera on -Y): +X is image right, so the handle's short columns are on the right; the
    back view mirrors it. A handedness flip anywhere (writer, importer) swaps the sides."""
    staging = rendered["demo-mug"][2]
    for i, handle_right in ((0, True), (1, False)):
        cols = (_view(staging, i)[..., 3] > 0.5).sum(axis=0)
        cols = cols[cols > 0]
        left, right = cols[:3].mean(), cols[-3:].mean()
        assert (right < 0.6 * left) if handle_right else (left < 0.6 * right), (i, left, right)


def test_colours_survive_import(rendered):
    mug = _hue_fractions(_view(rendered["demo-mug"][2], 0))
    cone = _hue_fractions(_view(rendered["demo-traffic-cone"][2], 0))
    cactus = _hue_fractions(_view(rendered["demo-potted-cactus"][2], 0))
    assert mug["red"] > 0.7, mug
    assert cone["orange"] > 0.4, cone
    assert cactus["green"] > 0.3 and cactus["orange"] + cactus["red"] > 0.15, cactus
