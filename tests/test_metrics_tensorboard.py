"""One metrics format on disk for fit, dreambooth and sds (docs/ecosystem.md §6): metrics.csv plus TensorBoard
events with the same values, read back with TensorBoard's own EventAccumulator. Tiny models on CPU."""

from __future__ import annotations

import pytest
from PIL import Image

from mvforge.metrics import read_rows
from mvforge.sds.loop import run_sds
from mvforge.train.config import OptimConfig
from mvforge.train.dreambooth import dreambooth
from mvforge.train.dreambooth_config import DreamBoothConfig, DreamBoothValidationConfig
from mvforge.train.loop import Runtime
from tests.sds.conftest import tiny_sds_config


def _events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()


def _same(acc, rows, tag: str, column: str) -> None:
    events = acc.Scalars(tag)
    assert [e.step for e in events] == [int(r["step"]) for r in rows], tag
    # Event files hold float32: the CSV's float64 up to float32 rounding.
    assert [e.value for e in events] == pytest.approx([r[column] for r in rows], rel=1e-6, abs=1e-12), tag


def test_dreambooth_writes_tensorboard_beside_metrics_csv(tiny_mv, tmp_path):
    """Fails before: DreamBooth wrote metrics.csv only."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 40), (200, 40, 30)).save(photos / "a.png")
    run = tmp_path / "db"
    cfg = DreamBoothConfig(
        pretrained=str(tiny_mv), images=str(photos), prompt="a photo of xjq toy", out=str(run), resolution=32,
        batch_size=1, max_steps=2, log_every=1, checkpoint_every=2, device="cpu", save_pipeline=False,
        optim=OptimConfig(lr=1e-3, lr_scheduler="constant"),
        validation=DreamBoothValidationConfig(every=2, steps=1, num_views=2, resolution=16),
    )  # fmt: skip
    dreambooth(cfg, Runtime(show_progress=False))
    rows = read_rows(run / "metrics.csv")
    acc = _events(run)
    for tag, col in [
        ("loss", "loss"),
        ("loss/prior", "prior_loss"),
        ("lr", "lr"),
        ("preservation", "preservation"),
    ]:
        _same(acc, rows, tag, col)
    assert [e.step for e in acc.Images("validation/00-a-photo-of-xjq-toy")] == [2]


def test_sds_writes_metrics_csv_and_tensorboard_with_the_timestep_range_and_snapshots(tiny_mv, tmp_path):
    """Fails before: SDS wrote metrics.jsonl only (no TensorBoard, no lr or timestep range)."""
    run = run_sds(tiny_sds_config(tiny_mv, tmp_path, max_steps=2, export=False), show_progress=False)
    rows = read_rows(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(r["t_min"] <= r["t"] <= r["t_max"] for r in rows)
    acc = _events(run)
    for tag, col in [
        ("loss", "loss"),
        ("loss/sds", "loss_sds"),
        ("lr", "lr"),
        ("t", "t"),
        ("t_min", "t_min"),
    ]:
        _same(acc, rows, tag, col)
    snapshot = acc.Images("snapshot")
    assert [e.step for e in snapshot] == [2] and (snapshot[0].width, snapshot[0].height) == (64, 16)
