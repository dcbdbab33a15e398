"""`mvtrain fit` and `mvtrain sample` end to end on tiny synthetic shards with the tiny SD model (CPU)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from mvforge.models import MultiViewDiffusion
from mvforge.models.config import SampleConfig
from mvforge.models.model import MultiViewUNet
from mvforge.models.sample import sample_prompts
from mvforge.shards.config import LoaderConfig
from mvforge.shards.loader import step_is_3d
from mvforge.train.loop import checkpoints, fit, latest_checkpoint

VENV_BIN = Path(sys.executable).parent


def test_fit_resume_equals_uninterrupted_and_checkpoint_loads(make_fit_config, tiny_sd, shards_3d, tmp_path):
    full = fit(make_fit_config(tiny_sd, shards_3d, tmp_path / "full"))
    losses = [r["loss"] for r in full]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert [r["kind"] for r in full] == ["3d"] * 4

    # "Killed" after step 2 (its checkpoint is the last thing it wrote), then resumed to step 4.
    part = fit(make_fit_config(tiny_sd, shards_3d, tmp_path / "cut", max_steps=2))
    rest = fit(make_fit_config(tiny_sd, shards_3d, tmp_path / "cut"))
    assert [r["step"] for r in rest] == [3, 4]
    assert [r["loss"] for r in part + rest] == losses  # bit-exact on CPU

    ckpt = latest_checkpoint(tmp_path / "full")
    assert ckpt.name == "step-000004" and [c.name for c in checkpoints(tmp_path / "full")] == [
        "step-000002",
        "step-000004",
    ]
    assert not list((tmp_path / "full" / "checkpoints").glob("*.tmp"))
    assert json.loads((ckpt / "state.json").read_text())["step"] == 4
    for name in ("optimizer.pt", "lr_scheduler.pt", "loader-rank0.json", "config.toml"):
        assert (ckpt / name).is_file(), name
    # Plain diffusers loads the checkpoint (diffusers format); the resumed run ends with the same weights.
    plain = UNet2DConditionModel.from_pretrained(ckpt, subfolder="unet")
    assert plain.config.class_embed_type == "projection"
    cut = MultiViewUNet.from_pretrained(latest_checkpoint(tmp_path / "cut"), subfolder="unet")
    ema = MultiViewUNet.from_pretrained(ckpt, subfolder="unet_ema")
    sd_full, sd_cut, sd_ema = plain.state_dict(), cut.state_dict(), ema.state_dict()
    assert all(torch.equal(sd_full[k], sd_cut[k]) for k in sd_full)
    assert any(not torch.equal(sd_full[k], sd_ema[k]) for k in sd_full)
    # The camera MLP trained: its zero-initialised last layer moved.
    assert torch.count_nonzero(sd_full["class_embedding.linear_2.weight"]) > 0
    rows = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2", "3", "4"]


def test_fit_mixes_2d_batches_and_v_prediction(make_fit_config, tiny_sd, shards_3d, shards_2d, tmp_path):
    """Also runs with gradient checkpointing (3D and 2D steps: num_views 4 and 1 under recomputation)."""
    sd = tmp_path / "sd-v"

    shutil.copytree(tiny_sd, sd)
    sched = sd / "scheduler" / "scheduler_config.json"
    sched.write_text(sched.read_text().replace('"epsilon"', '"v_prediction"'))
    loader = LoaderConfig(batch_size=2, num_views=4, resolution=32, batches_per_epoch=4, p_3d=0.5, seed=3)
    records = fit(
        make_fit_config(
            sd,
            shards_3d,
            tmp_path / "run",
            shards_2d=shards_2d,
            loader=loader,
            max_steps=4,
            gradient_checkpointing=True,
        )
    )
    kinds = [r["kind"] for r in records]
    assert kinds == ["3d" if step_is_3d(3, s, 0.5) else "2d" for s in range(4)]
    assert {"2d", "3d"} <= set(kinds), "pick a loader seed whose first steps hold both kinds"
    assert all(math.isfinite(r["loss"]) for r in records)


def test_sample_from_a_run_writes_views_and_its_pipeline_reloads_bit_identical(
    make_fit_config, tiny_sd, shards_3d, tmp_path
):
    """`mvtrain sample` from a fit run (its latest checkpoint, EMA weights) and, for a checkpoint:
    save_pretrained -> from_pretrained gives the same images, bit for bit."""
    fit(make_fit_config(tiny_sd, shards_3d, tmp_path / "run", max_steps=1))
    cfg = SampleConfig(steps=2, resolution=32, num_views=4)
    model = MultiViewDiffusion.from_pretrained(tmp_path / "run")
    ema = MultiViewUNet.from_pretrained(latest_checkpoint(tmp_path / "run"), subfolder="unet_ema")
    assert all(torch.equal(w, ema.state_dict()[k]) for k, w in model.unet.state_dict().items())
    (out,) = sample_prompts(model, ["a red chair"], tmp_path / "out", cfg, show_progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png", "sample.json"] + [f"view_{i:02d}.png" for i in range(4)]
    assert Image.open(out / "grid.png").size == (128, 32)
    meta = json.loads((out / "sample.json").read_text())
    assert meta["text"] == "a red chair, 3d asset" and meta["config"]["guidance_scale"] == 10.0
    assert meta["ema"] is True and meta["config"]["use_ema"] is True
    # A sample.json from before "ema" was recorded is still the same settings: a resume keeps its views.
    (out / "sample.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "ema"}))
    stamp = (out / "view_00.png").stat().st_mtime_ns
    sample_prompts(model, ["a red chair"], tmp_path / "out", cfg, show_progress=False, resume=True)
    assert (out / "view_00.png").stat().st_mtime_ns == stamp
    # A checkpoint without an EMA (a run with ema_decay = 0): sample.json records the weights used, not the ask.
    no_ema = tmp_path / "no-ema"
    shutil.copytree(tmp_path / "run", no_ema)
    shutil.rmtree(latest_checkpoint(no_ema) / "unet_ema")
    (out3,) = sample_prompts(no_ema, ["a red chair"], tmp_path / "out3", cfg, show_progress=False)
    assert json.loads((out3 / "sample.json").read_text())["ema"] is False

    again = MultiViewDiffusion.from_pretrained(model.save_pretrained(tmp_path / "pipe"))
    assert again.ema is None  # a pipeline directory holds one UNet
    (out2,) = sample_prompts(again, ["a red chair"], tmp_path / "out2", cfg, show_progress=False)
    for name in ("grid.png", "view_00.png"):
        assert (out / name).read_bytes() == (out2 / name).read_bytes()


def test_mvtrain_help_imports_no_torch():
    code = (
        "import sys\nfrom mvforge.cli.mvtrain import main\nsys.argv = ['mvtrain', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'ray', 'diffusers', 'transformers', 'bpy', 'open_clip', 'webdataset',"
        " 'pandas', 'pyarrow', 'PIL') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "fit" in out and "sample" in out and "HEAVY []" in out


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [str(VENV_BIN / "mvtrain"), "fit", "--model", str(tmp_path / "nope"), "--shards", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "make-tiny-sd" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_bad_fit_config_is_one_line_naming_the_field(tmp_path):
    proc = subprocess.run(
        [str(VENV_BIN / "mvtrain"), "fit", "--grad-accum-steps", "0", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "grad_accum_steps" in proc.stderr
