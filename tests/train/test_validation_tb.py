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


def test_val_loss_on_held_out_views_leaves_training_as_it_was(make_fit_config, tiny_sd, tmp_path):
    """``validation.loss_batches``: the loss on the views `mvdata shard --val-views` held out, logged at each
    validation, the same inputs every time; the training it watches is bit for bit the run without it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mvforge.errors import UserError
    from mvforge.shards.config import ShardConfig
    from mvforge.shards.writer import run_shard
    from tests.fixtures.synthetic import write_synthetic_render_dir

    write_synthetic_render_dir(tmp_path / "renders", 4, views=8, resolution=32)
    shards = tmp_path / "shards"
    held = ShardConfig(max_count=2, val_fraction=0.0, val_views=(1, 3, 5, 7), workers=0)
    run_shard(tmp_path / "renders", str(shards), held, show_progress=False)
    val = ValidationConfig(every=2, prompts=(), prompts_2d=(), loss_batches=2)
    fit(make_fit_config(tiny_sd, shards, tmp_path / "run", max_steps=3, checkpoint_every=3, validation=val))
    fit(make_fit_config(tiny_sd, shards, tmp_path / "plain", max_steps=3, checkpoint_every=3))

    losses = {}
    for step in (2, 3):
        meta = json.loads(
            (tmp_path / "run" / "validation" / f"step-{step:06d}" / "validation.json").read_text()
        )
        assert meta["prompts"] == [] and 0 < meta["val_loss"] < 10
        losses[step] = meta["val_loss"]
    assert losses[2] != losses[3]  # the weights moved between them; the inputs did not (below)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    assert [e.value for e in acc.Scalars("val/loss")] == pytest.approx([losses[2], losses[3]], rel=1e-6)
    train = [r["loss"] for r in csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines())]
    plain = [r["loss"] for r in csv.DictReader((tmp_path / "plain" / "metrics.csv").read_text().splitlines())]
    assert train == plain

    # Shards without a val split are refused before the first step, naming the fix.
    plain_shards = tmp_path / "no-val"
    run_shard(
        tmp_path / "renders", str(plain_shards), ShardConfig(val_fraction=0.0, workers=0), show_progress=False
    )
    with pytest.raises(UserError, match="--val-views"):
        fit(make_fit_config(tiny_sd, plain_shards, tmp_path / "refused", max_steps=3, validation=val))
    assert not (tmp_path / "refused" / "metrics.csv").exists()
    # So is a val split whose samples hold fewer views than a batch takes (its 4 held-out views, 8 asked for).
    from mvforge.shards.config import LoaderConfig

    eight = LoaderConfig(batch_size=2, num_views=8, resolution=32, batches_per_epoch=3)
    with pytest.raises(UserError, match=r"gives no batch \(too_few_views.*hold out 8 views per orbit"):
        fit(make_fit_config(tiny_sd, shards, tmp_path / "refused", max_steps=3, validation=val, loader=eight))
    # And a damaged val shard (truncated): one line naming it and `mvdata verify`, not a traceback.
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(shards, damaged)
    last_val = sorted(damaged.glob("val-*.tar"))[-1]
    last_val.write_bytes(last_val.read_bytes()[:1000])
    with pytest.raises(UserError, match=rf"^shard {last_val} is unreadable .*`mvdata verify {damaged}`"):
        fit(make_fit_config(tiny_sd, damaged, tmp_path / "refused", max_steps=3, validation=val))


def test_val_loss_sees_the_same_inputs_every_call(make_fit_config, tiny_sd, tmp_path):
    from mvforge.shards.config import ShardConfig
    from mvforge.shards.writer import run_shard
    from mvforge.train.loop import Runtime, load_models
    from mvforge.train.validation import validation_loss
    from tests.fixtures.synthetic import write_synthetic_render_dir

    write_synthetic_render_dir(tmp_path / "renders", 3, views=8, resolution=32)
    held = ShardConfig(val_fraction=0.0, val_views=(0, 2, 4, 6), workers=0)
    run_shard(tmp_path / "renders", str(tmp_path / "s"), held, show_progress=False)
    cfg = make_fit_config(
        tiny_sd, tmp_path / "s", tmp_path / "o", validation=ValidationConfig(every=1, loss_batches=2)
    )
    m = load_models(cfg, Runtime(), None)
    assert validation_loss(m, cfg) == validation_loss(m, cfg)


def test_a_validation_stopped_by_a_damaged_val_shard_is_redone_on_resume(make_fit_config, tiny_sd, tmp_path):
    """The stop checkpoints the step but leaves its validation unfinished: the resume redoes it first, so a
    val shard still damaged stops the run before any step, and a fixed one gives the step its val loss."""
    from mvforge.errors import UserError
    from mvforge.shards.config import ShardConfig
    from mvforge.shards.writer import run_shard
    from tests.fixtures.synthetic import write_synthetic_render_dir
    from tests.shards.test_checksum import _flip_a_camera_byte

    write_synthetic_render_dir(tmp_path / "renders", 4, views=8, resolution=32)
    shards = tmp_path / "shards"
    held = ShardConfig(max_count=2, val_fraction=0.0, val_views=(1, 3, 5, 7), workers=0)
    run_shard(tmp_path / "renders", str(shards), held, show_progress=False)
    val = ValidationConfig(every=2, prompts=(), prompts_2d=(), loss_batches=2)
    clean = make_fit_config(
        tiny_sd, shards, tmp_path / "clean", max_steps=2, checkpoint_every=4, validation=val
    )
    fit(clean)
    first = json.loads((tmp_path / "clean" / "validation" / "step-000002" / "validation.json").read_text())
    val_shard = sorted(shards.glob("val-*.tar"))[0]
    pristine = val_shard.read_bytes()
    _flip_a_camera_byte(val_shard)
    run = tmp_path / "run"
    cfg = make_fit_config(tiny_sd, shards, run, max_steps=4, checkpoint_every=4, validation=val)
    with pytest.raises(UserError, match=rf"^shard {val_shard} does not match the sha256"):
        fit(cfg)  # trains steps 1-2, then stops in the step-2 validation's loss
    done = run / "validation" / "step-000002" / "validation.json"
    steps = lambda: [r.split(",")[0] for r in (run / "metrics.csv").read_text().splitlines()[1:]]  # noqa: E731
    assert not done.exists() and (run / "checkpoints" / "step-000002").is_dir() and steps() == ["1", "2"]
    with pytest.raises(UserError, match=rf"^shard {val_shard} does not match the sha256"):
        fit(cfg)  # unfixed: the redone validation stops it before any step
    assert not done.exists() and steps() == ["1", "2"]
    val_shard.write_bytes(pristine)
    assert [r["step"] for r in fit(cfg)] == [3, 4]
    assert json.loads(done.read_text())["val_loss"] == first["val_loss"]  # redone: the clean run's weights
