"""Known-answer scores (mvforge/eval/known_answer.py) on references whose answer is known by construction: a
reference scored against itself, cameras turned about Z compared with the camera convention's own orbit."""

from __future__ import annotations

import numpy as np
import pytest

from mvforge import cameras
from mvforge.errors import UserError
from mvforge.eval.known_answer import (
    KnownAnswerConfig,
    eval_views,
    iou,
    load_references,
    rotate_azimuth,
    score_images,
    silhouette,
)


def test_rotating_about_z_moves_the_camera_along_its_orbit():
    c2w = np.stack([cameras.orbit_c2w(20.0, a, 1.7) for a in (0.0, 90.0, 200.0)])
    for shift in (90.0, 180.0, -30.0):
        want = np.stack([cameras.orbit_c2w(20.0, a + shift, 1.7) for a in (0.0, 90.0, 200.0)])
        np.testing.assert_allclose(rotate_azimuth(c2w, shift), want, atol=1e-9)


def test_eval_views_are_a_quarter_orbit_apart_on_the_first_orbit():
    views = [{"index": i, "orbit": i // 16} for i in range(32)]
    assert eval_views({"views": views}, 4) == [0, 4, 8, 12]
    with pytest.raises(UserError, match="multiple of 3"):
        eval_views({"views": views}, 3)


@pytest.fixture
def shared_reference(reference_dir, tmp_path):
    """The synthetic references with one camera set for all (as `mvdata render --shared-cameras` writes)."""
    import shutil

    root = tmp_path / "shared"
    shutil.copytree(reference_dir, root)
    cams = sorted(root.rglob("cameras.json"))
    for c in cams[1:]:
        c.write_bytes(cams[0].read_bytes())
    return root


def test_references_from_per_object_cameras_are_refused(reference_dir):
    with pytest.raises(UserError, match="--shared-cameras"):
        load_references(reference_dir, KnownAnswerConfig())


def test_each_reference_retrieves_itself_with_full_iou(shared_reference):
    cfg = KnownAnswerConfig()
    refs = load_references(shared_reference, cfg)
    assert len(refs) == 3 and refs[0].rgb.shape == (4, 32, 32, 3)
    for truth in refs:
        s = score_images(truth.rgb, truth, refs, cfg)
        assert s["retrieved"] == truth.uid and s["mse"][truth.uid] == 0.0
        mask = silhouette(truth.rgb, cfg.background, cfg.silhouette_tolerance)
        # The silhouette of a composited reference is its alpha wherever its colour leaves the background grey.
        assert s["iou"] == pytest.approx(iou(mask, truth.alpha > 0.5), abs=1e-4) and s["iou"] > 0.75
        assert s["psnr_object_db"] > 90
    # Flipped views (the azimuth mirrored) score worse against the truth than the truth itself.
    flipped = refs[0].rgb[:, :, ::-1]
    assert score_images(flipped, refs[0], refs, cfg)["mse"][refs[0].uid] > 0


def test_missing_uid_and_empty_directory_are_one_line_errors(shared_reference, tmp_path):
    with pytest.raises(UserError, match="no finished render of nope"):
        load_references(shared_reference, KnownAnswerConfig(), ["nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        load_references(tmp_path / "empty", KnownAnswerConfig())


def test_run_writes_strips_and_scores_with_baselines_through_the_cli(tiny_mv, shared_reference, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    mvtrain = Path(sys.executable).with_name("mvtrain")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), HF_HUB_OFFLINE="1")
    out = tmp_path / "ka"
    args = [str(mvtrain), "eval", "--known-answer", "--model", str(tiny_mv), "--out", str(out)]
    done = subprocess.run(
        [
            *args,
            "--reference",
            str(shared_reference),
            "--device",
            "cpu",
            "--set",
            "steps=2",
            "--max-prompts",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "captions retrieve their own object" in done.stdout
    doc = json.loads((out / "known_answer.json").read_text())
    assert (
        doc["summary"]["captions"] == 2 and len(doc["captions"][0]["mse"]) == 3
    )  # all objects are candidates
    assert doc["summary"]["shifted_cameras_further"].endswith("/4")
    assert 0 <= doc["summary"]["blank_image_retrieves_own"] <= 2
    from PIL import Image

    strip = Image.open(out / "known_answer" / "obj-0000.png")
    assert strip.size == (4 * 32, 4 * 32)  # truth, sample, two shifted rows of 4 views

    refused = subprocess.run([*args[:-1], str(tmp_path / "ka2")], capture_output=True, text=True, env=env)
    assert (
        refused.returncode == 2
        and "--reference" in refused.stderr
        and len(refused.stderr.strip().splitlines()) == 1
    )
