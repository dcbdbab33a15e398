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


def test_each_reference_retrieves_itself_with_full_iou(reference_dir):
    cfg = KnownAnswerConfig()
    refs = load_references(reference_dir, cfg)
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


def test_missing_uid_and_empty_directory_are_one_line_errors(reference_dir, tmp_path):
    with pytest.raises(UserError, match="no finished render of nope"):
        load_references(reference_dir, KnownAnswerConfig(), ["nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        load_references(tmp_path / "empty", KnownAnswerConfig())
