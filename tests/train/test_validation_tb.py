"""Validation grids and TensorBoard of `mvtrain fit` (docs/train.md), tiny SD model on CPU."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from mvforge.train.config import ValidationConfig
from mvforge.train.loop import fit


def test_validation_grids_at_configured_steps_and_tensorboard_equals_metrics_csv(
    make_fit_config, tiny_sd, shards_3d, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    val = ValidationConfig(every=2, prompts=("a chair",), prompts_2d=("a dog",), steps=2, resolution=32)
    fit(make_fit_config(tiny_sd, shards_3d, run, max_steps=3, checkpoint_every=3, validation=val))

    # Grids at steps 2 (every 2) and 3 (the last step): a 4-view grid per 3D prompt, one image per 2D prompt.
    steps = sorted(p.name for p in (run / "validation").iterdir())
    assert steps == ["step-000002", "step-000003"]
    for name in steps:
        meta = json.loads((run / "validation" / name / "validation.json").read_text())
        assert [(e["prompt"], e["kind"]) for e in meta["prompts"]] == [("a chair", "3d"), ("a dog", "2d")]
        assert Image.open(run / "validation" / name / "00-a-chair" / "grid.png").size == (128, 32)
        assert Image.open(run / "validation" / name / "01-a-dog" / "grid.png").size == (32, 32)

    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    for tag, col in [("loss", "loss"), ("loss/3d", "loss"), ("lr", "lr"), ("grad_norm", "grad_norm")]:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3], tag
        # Event files hold float32: equal to the CSV's float64 up to float32 rounding.
        assert [e.value for e in events] == pytest.approx([float(r[col]) for r in rows], rel=1e-6), tag
    assert {e.step for e in acc.Images("validation/00-a-chair")} == {2, 3}
